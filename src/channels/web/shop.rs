//! The web page's shop API (`GET /api/products`, `POST /api/orders`, `GET /api/orders/{id}`,
//! `GET /api/orders/{id}/qr.svg`). The providers' payment notifications are billing's
//! ([`crate::billing::notify`]).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chatrelay_storage::Order;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::warn;

use super::error;
use crate::billing::{Billing, BillingError, PayAction, Payer};
use crate::channels::web::state::WebState;

/// The shop routes.
pub fn routes() -> axum::Router<WebState> {
    axum::Router::new()
        .route("/api/products", get(products))
        .route("/api/orders", post(create_order))
        .route("/api/orders/{id}", get(order))
        .route("/api/orders/{id}/qr.svg", get(order_qr))
}

/// The order as the web page sees it: what it is, and how to pay it by its method (a QR
/// code, JSAPI's parameters, or a page to go to).
#[must_use]
pub fn order_json(billing: &Billing, o: &Order) -> Value {
    let mut v = json!({
        "id": o.id,
        "status": o.status.as_str(),
        "product_id": o.product_id,
        "product_name": o.product_name,
        "channel": o.channel,
        "method": crate::billing::PayMethod::of(o).map(|m| m.as_str()),
        "amount_fen": o.amount_fen,
        "credits": o.credits,
        "created_at": o.created_at_ms / 1000,
        "expires_at": o.expires_at_ms / 1000,
    });
    if let Some(plan) = &o.plan {
        v["plan"] = json!({"id": plan.id, "name": plan.name, "days": plan.days, "daily_credits": plan.daily_credits});
    }
    // Only an open order is still to be paid.
    let action = if o.status == chatrelay_storage::OrderStatus::Created {
        billing.pay_action(o).unwrap_or_else(|e| {
            warn!(order = %o.id, error = %e, "preparing the payment parameters failed");
            None
        })
    } else {
        None
    };
    match action {
        Some(PayAction::Qr(code_url)) => {
            v["code_url"] = json!(code_url);
            v["qr_svg"] = json!(format!("/api/orders/{}/qr.svg", o.id));
        }
        Some(PayAction::Jsapi(params)) => v["jsapi"] = json!(params),
        Some(PayAction::Redirect(url)) => v["pay_url"] = json!(url),
        None => {}
    }
    v
}

async fn products(State(st): State<WebState>) -> Response {
    let billing = st.parts().billing.clone();
    let products: Vec<Value> = billing
        .products()
        .iter()
        .map(|p| {
            let mut v =
                json!({"id": p.id, "name": p.name, "price_fen": p.price_fen, "credits": p.credits});
            // A plan product says what the plan gives (credit packs keep their four keys).
            if let Some(g) = billing.plan_of(&p.id) {
                v["plan"] = json!({"id": g.id, "name": g.name, "days": g.days, "daily_credits": g.daily_credits});
            }
            v
        })
        .collect();
    let methods: serde_json::Map<String, Value> = billing
        .channels()
        .into_iter()
        .map(|c| (c.to_owned(), json!(billing.methods(c))))
        .collect();
    Json(json!({"products": products, "channels": billing.channels(), "methods": methods}))
        .into_response()
}

#[derive(Deserialize)]
struct CreateOrder {
    product_id: String,
    channel: String,
    #[serde(default)]
    method: Option<String>,
}

async fn create_order(
    State(st): State<WebState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (uid, req) = match super::authed_json::<CreateOrder>(
        &st,
        &headers,
        body,
        "send {\"product_id\": \"…\", \"channel\": \"wechat\"|\"alipay\", \"method\": \"…\"}",
    )
    .await
    {
        Ok(got) => got,
        Err(refused) => return *refused,
    };
    let billing = st.parts().billing.clone();
    let payer = Payer {
        uid,
        client_ip: st.client_ip(peer, &headers),
    };
    match billing
        .create_order(payer, &req.product_id, &req.channel, req.method.as_deref())
        .await
    {
        Ok(order) => Json(order_json(&billing, &order)).into_response(),
        Err(BillingError::UnknownProduct(_)) => {
            error(StatusCode::NOT_FOUND, "unknown_product", "没有这个商品")
        }
        Err(BillingError::ChannelUnavailable(_)) => error(
            StatusCode::BAD_REQUEST,
            "channel_unavailable",
            "这个支付方式暂不可用",
        ),
        Err(BillingError::MethodUnavailable(_)) => error(
            StatusCode::BAD_REQUEST,
            "method_unavailable",
            "这个支付方式在这里不可用",
        ),
        Err(BillingError::OpenidRequired { account }) => {
            // The page runs web authorization and comes back (no order was made).
            let login_url = account.map(|a| format!("/auth/wechat/{a}?next=/"));
            (
                StatusCode::CONFLICT,
                Json(json!({"error": {
                    "code": "openid_required",
                    "message": "请先在微信中授权登录，再用微信支付",
                    "login_url": login_url,
                }})),
            )
                .into_response()
        }
        Err(BillingError::Provider(e)) => {
            warn!(error = %e, "order creation failed at the provider");
            error(
                StatusCode::BAD_GATEWAY,
                "provider_error",
                "支付服务暂时不可用，请稍后再试",
            )
        }
        Err(e) => {
            warn!(error = %e, "order creation failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "服务暂时不可用",
            )
        }
    }
}

/// The order if it exists and belongs to the caller.
async fn own_order(st: &WebState, headers: &HeaderMap, id: &str) -> Result<Order, Box<Response>> {
    let uid = super::v1::authenticate(st, headers)
        .await
        .map_err(|e| Box::new(e.into_response()))?;
    let billing = st.parts().billing.clone();
    match billing.order(id).await {
        Ok(Some(o)) if o.uid == uid => Ok(o),
        Ok(_) => Err(Box::new(error(
            StatusCode::NOT_FOUND,
            "not_found",
            "没有这个订单",
        ))),
        Err(e) => {
            warn!(error = %e, "reading an order failed");
            Err(Box::new(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "服务暂时不可用",
            )))
        }
    }
}

async fn order(State(st): State<WebState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    match own_order(&st, &headers, &id).await {
        Ok(o) => Json(order_json(&st.parts().billing, &o)).into_response(),
        Err(r) => *r,
    }
}

async fn order_qr(
    State(st): State<WebState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let order = match own_order(&st, &headers, &id).await {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let qr_method = matches!(
        crate::billing::PayMethod::of(&order),
        Some(crate::billing::PayMethod::Native | crate::billing::PayMethod::Precreate)
    );
    let Some(code_url) = order.code_url.filter(|_| qr_method) else {
        return error(StatusCode::NOT_FOUND, "no_code", "这个订单没有二维码");
    };
    qr_svg(&code_url)
}

/// `text` as a QR code (SVG).
pub(super) fn qr_svg(text: &str) -> Response {
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => {
            let svg = code
                .render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(240, 240)
                .quiet_zone(true)
                .build();
            (
                [
                    (header::CONTENT_TYPE, "image/svg+xml"),
                    (header::CACHE_CONTROL, "private, max-age=600"),
                ],
                svg,
            )
                .into_response()
        }
        Err(e) => {
            warn!(error = %e, "rendering a QR code failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "qr_failed",
                "二维码生成失败",
            )
        }
    }
}
