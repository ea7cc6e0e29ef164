"""Payment methods for phones and WeChat's browser (issue 20), end to end at the HTTP level: the
real binary against fake WeChat Pay (JSAPI and H5 orders checked for signature, appid/mchid,
payer.openid under the AppID, scene_info) and fake Alipay (the wap.pay/page.pay page request's
RSA2 signature and parameters, a cashier that pays), with web authorization on fake_wechat.
Paying goes through the fakes as a user would (the H5 page, the JSAPI control endpoint a stub
WeixinJSBridge calls, the Alipay cashier), and they deliver signed notifications to the daemon.

Daemons (module-scoped; each its own public_url, routed by the fakes to its real address):
  shop      every method on: wechat native/jsapi/h5, alipay precreate/wap/page;
  defaults  no `methods` keys: wechat native + jsapi (the OA main has the merchant's AppID),
            alipay precreate;
  wxonly    wechat ["native"] only, no Alipay;
  recon     every method, reconciliation for orders older than 1 s (missed notifications);
            no trusted proxies (X-Forwarded-For is not believed).
"""

import json
import re
import secrets
import time
from urllib.parse import parse_qsl, quote, urlencode, urlparse

import pytest
import requests

from conftest import OA_MAIN, OA_OTHER
from fake_pay import ALIPAY, WECHAT, request_content, rsa_verify
from test_wechat_oauth import chat_login, chat_uid, me, scan_login

SHOP_URL = "https://shop.example.test"
ALL_WECHAT, ALL_ALIPAY = ["native", "jsapi", "h5"], ["precreate", "wap", "page"]


def started(d):
    d.start()
    return d


def stopped(d):
    code = d.stop()
    assert code == 0, f"daemon exited with {code}: {d.logs()}"


@pytest.fixture(scope="module")
def shop(upstream, inwechat):
    d = started(inwechat.daemon(upstream, public_url=SHOP_URL, wechat_methods=ALL_WECHAT,
                                alipay_methods=ALL_ALIPAY))
    d.fakes = inwechat
    yield d
    stopped(d)


@pytest.fixture(scope="module")
def defaults(upstream, inwechat):
    d = started(inwechat.daemon(upstream, public_url="https://defaults.example.test"))
    d.fakes = inwechat
    yield d
    stopped(d)


@pytest.fixture(scope="module")
def wxonly(upstream, inwechat):
    d = started(inwechat.daemon(upstream, public_url="https://wxonly.example.test", wechat_methods=["native"],
                                alipay=False))
    d.fakes = inwechat
    yield d
    stopped(d)


@pytest.fixture(scope="module")
def recon(upstream, inwechat):
    d = started(inwechat.daemon(upstream, public_url="https://recon.example.test", wechat_methods=ALL_WECHAT,
                                alipay_methods=ALL_ALIPAY, min_age=1, server_toml="trusted_proxies = []"))
    d.fakes = inwechat
    yield d
    stopped(d)


@pytest.fixture(scope="module", autouse=True)
def signed_requests_only(inwechat):
    yield
    assert inwechat.wxpay.bad_auth == 0, f"WeChat Pay refused the daemon's Authorization: {inwechat.wxpay.auth_failures}"
    assert inwechat.alipay.bad_sign == 0, f"Alipay refused the daemon's requests: {inwechat.alipay.sign_failures}"


@pytest.fixture(autouse=True)
def notifications_on(inwechat):
    inwechat.wxpay.drop_notifications = inwechat.alipay.drop_notifications = False
    yield
    inwechat.wxpay.drop_notifications = inwechat.alipay.drop_notifications = False
    inwechat.wechat.clear_phone_user()


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def api(d, method, path, token=None, body=None, headers=None):
    h = dict(headers or {})
    if token:
        h["authorization"] = f"Bearer {token}"
    return requests.request(method, d.url + path, json=body, headers=h, allow_redirects=False, timeout=15)


def order(d, token, product="p10", channel="wechat", method=None, headers=None, expect=200):
    body = {"product_id": product, "channel": channel}
    if method is not None:
        body["method"] = method
    r = api(d, "POST", "/api/orders", token, body, headers)
    assert r.status_code == expect, \
        f"POST /api/orders {body}: HTTP {r.status_code}, expected {expect}: {r.text[:400]!r}\n{d.logs()[-1500:]}"
    return r.json()


def get_order(d, token, oid):
    r = api(d, "GET", f"/api/orders/{oid}", token)
    assert r.status_code == 200, f"GET /api/orders/{oid}: HTTP {r.status_code} {r.text[:300]!r}"
    return r.json()


def wait_status(d, token, oid, want, timeout=20):
    deadline = time.time() + timeout
    while True:
        st = get_order(d, token, oid)["status"]
        if st == want:
            return
        if time.time() > deadline:
            raise AssertionError(f"order {oid}: status {st!r} after {timeout}s, expected {want!r}\n{d.logs()[-1500:]}")
        time.sleep(0.1)


def orders_of(d, uid):
    out = json.loads(d.cli("--json", "order", "list", "--uid", str(uid)).stdout)
    return out["orders"] if isinstance(out, dict) else out


def assert_credited_once(d, uid, token, oid, credits):
    entries = [e for e in d.user(uid)["ledger"] if e["kind"] == "purchase" and e["reference"] == f"order:{oid}"]
    assert len(entries) == 1, f"order {oid}: expected one purchase entry, got {entries}"
    assert entries[0]["paid_delta"] == credits, entries
    paid = me(d, token)["balance"]["paid"]
    assert paid == credits, f"/api/me balance.paid is {paid}, expected {credits}"
    assert get_order(d, token, oid)["status"] == "credited"


def oauth_user(d, account="main"):
    """A user logged in by web authorization (desktop scan, confirmed on the phone; the
    same-browser flow is test_wechat_oauth's) on the main account, or, for `other`, a user of
    the other account (its chat): (openid, uid, token)."""
    openid = f"o_{account}_" + secrets.token_hex(6)
    if account == "other":
        uid, token = chat_login(d, openid, OA_OTHER)
    else:
        uid, token = scan_login(d, openid)
    return openid, uid, token


def verify_jsapi(d, jsapi, prepay_id):
    """The page's getBrandWCPayRequest parameters, as WeixinJSBridge checks them."""
    assert set(jsapi) == {"appId", "timeStamp", "nonceStr", "package", "signType", "paySign"}, jsapi
    assert jsapi["appId"] == WECHAT["app_id"] and jsapi["signType"] == "RSA", jsapi
    assert jsapi["package"] == "prepay_id=" + prepay_id, f"package {jsapi['package']!r}, the fake's id {prepay_id!r}"
    assert isinstance(jsapi["timeStamp"], str) and jsapi["timeStamp"].isdigit(), "timeStamp is a string of seconds"
    assert abs(int(jsapi["timeStamp"]) - time.time()) < 300, jsapi["timeStamp"]
    assert isinstance(jsapi["nonceStr"], str) and 0 < len(jsapi["nonceStr"]) <= 32, jsapi["nonceStr"]
    message = f"{jsapi['appId']}\n{jsapi['timeStamp']}\n{jsapi['nonceStr']}\n{jsapi['package']}\n"
    public = d.fakes.merchant.public_key()
    assert rsa_verify(public, message, jsapi["paySign"]), "paySign does not verify with the merchant public key"
    assert not rsa_verify(public, message.replace(prepay_id, prepay_id + "x"), jsapi["paySign"])


# ---------------------------------------------------------------------------------------------
# Which methods
# ---------------------------------------------------------------------------------------------

def test_products_list_the_configured_methods(shop, defaults, wxonly):
    def methods(d):
        r = api(d, "GET", "/api/products")
        assert r.status_code == 200, r.text
        return {k: sorted(v) for k, v in r.json()["methods"].items()}

    assert methods(shop) == {"wechat": sorted(ALL_WECHAT), "alipay": sorted(ALL_ALIPAY)}
    assert methods(defaults) == {"wechat": ["jsapi", "native"], "alipay": ["precreate"]}
    assert methods(wxonly) == {"wechat": ["native"]}


def test_method_not_enabled_is_refused(defaults, wxonly, shop, inwechat):
    _, uid, token = oauth_user(defaults)
    before = (len(inwechat.wxpay.h5_calls), len(inwechat.alipay.page_calls))
    for d, tok, channel, method in ((defaults, token, "wechat", "h5"), (defaults, token, "alipay", "wap"),
                                    (defaults, token, "alipay", "page"), (defaults, token, "alipay", "jsapi"),
                                    (defaults, token, "wechat", "wap"), (defaults, token, "wechat", "bogus")):
        r = order(d, tok, channel=channel, method=method, expect=400)
        assert r["error"]["code"] == "method_unavailable", (channel, method, r)
    _, wtoken = wxonly.new_user("wx-only")
    r = order(wxonly, wtoken, channel="wechat", method="jsapi", expect=400)
    assert r["error"]["code"] == "method_unavailable", r
    assert orders_of(defaults, uid) == [], "a refused method must not create an order"
    assert (len(inwechat.wxpay.h5_calls), len(inwechat.alipay.page_calls)) == before


def test_method_absent_is_todays_native_and_precreate(shop):
    _, token = shop.new_user("classic")
    o = order(shop, token)
    assert o.get("method") == "native" and o["code_url"].startswith("weixin://wxpay/bizpayurl"), o
    assert shop.fakes.wxpay.order(o["id"])["trade_type"] == "NATIVE"
    o = order(shop, token, channel="alipay")
    assert o.get("method") == "precreate" and o["code_url"].startswith("https://qr.alipay.com/"), o


# ---------------------------------------------------------------------------------------------
# WeChat Pay JSAPI
# ---------------------------------------------------------------------------------------------

def test_jsapi_order_for_an_oauth_user_pays_and_credits_once(shop, inwechat):
    openid, uid, token = oauth_user(shop)
    o = order(shop, token, method="jsapi")
    oid = o["id"]
    assert o["method"] == "jsapi" and o["status"] == "created", o
    calls = inwechat.wxpay.jsapi_calls_for(oid)
    assert len(calls) == 1, calls
    assert calls[0]["payer"] == {"openid": openid}, calls[0]
    assert calls[0]["appid"] == WECHAT["app_id"] and calls[0]["mchid"] == WECHAT["mch_id"]
    assert calls[0]["amount"] == {"total": 100, "currency": "CNY"}, calls[0]
    assert calls[0]["notify_url"] == f"{SHOP_URL}/pay/wechat/notify"
    prepay_id = inwechat.wxpay.order(oid)["prepay_id"]
    verify_jsapi(shop, o["jsapi"], prepay_id)
    # Polling re-signs with a fresh nonce; still the same prepay_id, no second order at WeChat.
    again = get_order(shop, token, oid)
    verify_jsapi(shop, again["jsapi"], prepay_id)
    assert again["jsapi"]["nonceStr"] != o["jsapi"]["nonceStr"]
    assert len(inwechat.wxpay.jsapi_calls_for(oid)) == 1
    assert get_order(shop, token, oid)["status"] == "created"

    # The stub WeixinJSBridge pays through the control endpoint; the fake notifies the daemon.
    r = requests.post(inwechat.wxpay.url + "/fake/pay", json={"out_trade_no": oid}, timeout=15)
    assert r.status_code == 200 and r.json()["notify_status"] in (200, 204), r.text
    wait_status(shop, token, oid, "credited")
    txn = inwechat.wxpay.transaction(oid, 100, openid=openid, trade_type="JSAPI")
    assert txn["trade_type"] == "JSAPI"
    assert_credited_once(shop, uid, token, oid, 10)
    # WeChat notifies again (it did not see our answer): still one credit.
    st, _ = inwechat.wxpay.deliver(oid)
    assert st in (200, 204), st
    assert_credited_once(shop, uid, token, oid, 10)


def test_jsapi_for_a_chat_user_uses_the_chat_openid(shop, inwechat):
    openid = "o_chatpay_" + secrets.token_hex(6)
    uid = chat_uid(shop, openid)
    inwechat.wxpay.register_openid(openid)
    token = shop.cli("token", "create", str(uid)).stdout.strip()
    o = order(shop, token, method="jsapi")
    assert inwechat.wxpay.jsapi_calls_for(o["id"])[0]["payer"] == {"openid": openid}


@pytest.mark.parametrize("who", ["no_identity", "other_appid"])
def test_jsapi_without_an_openid_for_the_appid_is_409(shop, inwechat, who):
    if who == "no_identity":
        uid, token = shop.new_user("no-openid")
    else:
        _, uid, token = oauth_user(shop, "other")  # an openid, but of another AppID
    jsapi_before = len(inwechat.wxpay.jsapi_calls)
    r = order(shop, token, method="jsapi", expect=409)
    assert r["error"]["code"] == "openid_required", r
    assert r["error"].get("message"), r
    login_url = r["error"]["login_url"]
    assert login_url.startswith("/auth/wechat/main"), f"login_url must run OAuth on the merchant's account: {login_url}"
    assert len(inwechat.wxpay.jsapi_calls) == jsapi_before, "no order may reach WeChat Pay"
    assert orders_of(shop, uid) == [], "no order may be created"
    # Following login_url works and then the order goes through.
    openid = "o_after409_" + secrets.token_hex(6)
    shop.fakes.wechat.set_phone_user(openid)
    start = requests.get(shop.url + login_url, allow_redirects=False, timeout=10)
    assert start.status_code == 302 and OA_MAIN["app_id"] in start.headers["location"], start.headers


# ---------------------------------------------------------------------------------------------
# WeChat Pay H5
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("xff,expected", [("203.0.113.9", "203.0.113.9"), (None, "127.0.0.1"),
                                          ("198.51.100.1, 203.0.113.50", "203.0.113.50")])
def test_h5_order_carries_the_client_address_and_pays(shop, inwechat, xff, expected):
    uid, token = shop.new_user("h5-buyer")
    o = order(shop, token, method="h5", headers={"X-Forwarded-For": xff} if xff else None)
    oid = o["id"]
    assert o["method"] == "h5", o
    calls = inwechat.wxpay.h5_calls_for(oid)
    assert len(calls) == 1, calls
    assert calls[0]["scene_info"] == {"payer_client_ip": expected, "h5_info": {"type": "Wap"}}, calls[0]
    assert "payer" not in calls[0]
    assert o["pay_url"].startswith(inwechat.wxpay.url + "/fake/h5?prepay_id="), o["pay_url"]
    # The page appends redirect_url; WeChat's H5 cashier pays, then sends the browser back.
    back = f"{SHOP_URL}/?order={oid}"
    r = requests.get(o["pay_url"] + "&redirect_url=" + quote(back, safe=""), allow_redirects=False, timeout=15)
    assert r.status_code == 302 and r.headers["location"] == f"{shop.url}/?order={oid}", (r.status_code, r.headers)
    assert inwechat.wxpay.deliveries_for(oid) and inwechat.wxpay.deliveries_for(oid)[0][0] in (200, 204)
    wait_status(shop, token, oid, "credited")
    assert_credited_once(shop, uid, token, oid, 10)
    page = requests.get(f"{shop.url}/?order={oid}", timeout=10)
    assert page.status_code == 200


def test_h5_ignores_forwarded_for_without_a_trusted_proxy(recon, inwechat):
    _, token = recon.new_user("h5-spoof")
    o = order(recon, token, method="h5", headers={"X-Forwarded-For": "203.0.113.66"})
    ip = inwechat.wxpay.h5_calls_for(o["id"])[0]["scene_info"]["payer_client_ip"]
    assert ip == "127.0.0.1", f"an untrusted peer's X-Forwarded-For was believed: {ip}"


# ---------------------------------------------------------------------------------------------
# Alipay wap / page
# ---------------------------------------------------------------------------------------------

def pay_url_params(d, url):
    u = urlparse(url)
    assert f"{u.scheme}://{u.netloc}{u.path}" == d.fakes.alipay.gateway, url
    pairs = parse_qsl(u.query, keep_blank_values=True)
    params = dict(pairs)
    assert len(params) == len(pairs), f"a parameter given twice: {url}"
    return params


@pytest.mark.parametrize("method,alipay_method,product_code", [
    ("wap", "alipay.trade.wap.pay", "QUICK_WAP_WAY"), ("page", "alipay.trade.page.pay", "FAST_INSTANT_TRADE_PAY")])
def test_alipay_page_payment(shop, inwechat, method, alipay_method, product_code):
    uid, token = shop.new_user(f"ali-{method}")
    o = order(shop, token, channel="alipay", method=method)
    oid = o["id"]
    assert o["method"] == method and o["status"] == "created", o
    p = pay_url_params(shop, o["pay_url"])
    assert rsa_verify(inwechat.app.public_key(), request_content(p), p["sign"]), \
        "pay_url's sign does not verify with the app public key over the sorted parameters"
    assert p["method"] == alipay_method and p["app_id"] == ALIPAY["app_id"] and p["sign_type"] == "RSA2", p
    assert p["notify_url"] == f"{SHOP_URL}/pay/alipay/notify", p
    assert p["return_url"] == f"{SHOP_URL}/?order={oid}", p
    biz = json.loads(p["biz_content"])
    assert biz["product_code"] == product_code and biz["out_trade_no"] == oid, biz
    assert biz["total_amount"] == "1.00" and biz["subject"], biz
    assert inwechat.alipay.calls_for(alipay_method) == [], "page payments are not server-to-server calls"

    # A tampered link (another amount) is refused by Alipay's gateway.
    failures = len(inwechat.alipay.page_failures)
    forged = dict(p, biz_content=json.dumps(dict(biz, total_amount="0.01"), ensure_ascii=False))
    r = requests.get(inwechat.alipay.gateway + "?" + urlencode(forged), timeout=10)
    assert r.status_code == 200 and "invalid-signature" in r.text
    assert len(inwechat.alipay.page_failures) == failures + 1
    assert inwechat.alipay.trade(oid) is None

    # The browser follows pay_url; the cashier pays; Alipay notifies and sends the browser back.
    r = requests.get(o["pay_url"], timeout=10)
    assert r.status_code == 200 and "确认付款" in r.text, r.text[:500]
    assert len(inwechat.alipay.page_failures) == failures + 1, inwechat.alipay.page_failures[-1:]
    cashier = re.search(r'name="cashier_id" value="(\w+)"', r.text).group(1)
    r = requests.post(inwechat.alipay.base + "/fake/alipay/cashier", data={"cashier_id": cashier},
                      allow_redirects=False, timeout=15)
    assert r.status_code == 302 and r.headers["location"].startswith(f"{shop.url}/?order={oid}&"), r.headers
    assert inwechat.alipay.deliveries_for(oid) == [(200, b"success")], inwechat.alipay.deliveries_for(oid)
    wait_status(shop, token, oid, "credited")
    assert_credited_once(shop, uid, token, oid, 10)
    back = requests.get(r.headers["location"], timeout=10)
    assert back.status_code == 200
    # Alipay retries the notification: one credit.
    assert inwechat.alipay.deliver(oid) == (200, b"success")
    assert_credited_once(shop, uid, token, oid, 10)
    assert inwechat.alipay.trade(oid)["status"] == "TRADE_SUCCESS"


# ---------------------------------------------------------------------------------------------
# Reconciliation: a dropped notification
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["jsapi", "h5", "wap"])
def test_reconciliation_credits_an_order_whose_notification_was_dropped(recon, inwechat, method):
    if method == "jsapi":
        _, uid, token = oauth_user(recon)
    else:
        uid, token = recon.new_user(f"recon-{method}")
    channel = "alipay" if method == "wap" else "wechat"
    o = order(recon, token, channel=channel, method=method)
    oid = o["id"]
    fake = inwechat.alipay if channel == "alipay" else inwechat.wxpay
    fake.drop_notifications = True
    if method == "wap":
        page = requests.get(o["pay_url"], timeout=10)
        cashier = re.search(r'name="cashier_id" value="(\w+)"', page.text).group(1)
        requests.post(inwechat.alipay.base + "/fake/alipay/cashier", data={"cashier_id": cashier},
                      allow_redirects=False, timeout=15)
    else:
        assert fake.pay_and_notify(oid) is None
    assert fake.deliveries_for(oid) == [], "the notification must have been dropped"
    wait_status(recon, token, oid, "credited", timeout=30)
    if channel == "wechat":
        assert inwechat.wxpay.queries_for(oid) >= 1
    else:
        assert inwechat.alipay.calls_for("alipay.trade.query", oid)
    assert_credited_once(recon, uid, token, oid, 10)
    assert recon.audit()["mismatches"] == []


# ---------------------------------------------------------------------------------------------
# Reuse, polling, admin views and refunds for the new methods
# ---------------------------------------------------------------------------------------------

def test_open_orders_are_reused_per_method_never_for_h5(shop, inwechat):
    openid, uid, token = oauth_user(shop)
    a = order(shop, token, "p50", method="jsapi")
    b = order(shop, token, "p50", method="jsapi")
    assert a["id"] == b["id"], "an open JSAPI order for the same product is reused"
    assert len(inwechat.wxpay.jsapi_calls_for(a["id"])) == 1, "a reused order is not created at WeChat Pay again"
    assert b["jsapi"]["package"] == a["jsapi"]["package"], "the same prepay_id"
    n = order(shop, token, "p50")
    assert n["id"] != a["id"] and n["method"] == "native", "another method, another order"
    h1 = order(shop, token, "p50", method="h5")
    h2 = order(shop, token, "p50", method="h5")
    assert h1["id"] != h2["id"], "an H5 page lives 5 minutes: never reused"
    for o in (h1, h2):
        got = get_order(shop, token, o["id"])
        assert got["method"] == "h5" and got["pay_url"] == o["pay_url"], got
    w = order(shop, token, "p50", channel="alipay", method="wap")
    got = get_order(shop, token, w["id"])
    assert got["method"] == "wap" and got.get("pay_url"), got
    p = pay_url_params(shop, got["pay_url"])
    assert rsa_verify(inwechat.app.public_key(), request_content(p), p["sign"]), "GET's pay_url must verify too"


@pytest.mark.parametrize("method", ["jsapi", "wap"])
def test_admin_views_and_refund_work_for_the_new_methods(shop, inwechat, method):
    if method == "jsapi":
        _, uid, token = oauth_user(shop)
        o = order(shop, token, method="jsapi")
        inwechat.wxpay.pay_and_notify(o["id"])
        fake = inwechat.wxpay
    else:
        uid, token = shop.new_user("refund-wap")
        o = order(shop, token, channel="alipay", method="wap")
        page = requests.get(o["pay_url"], timeout=10)
        cashier = re.search(r'name="cashier_id" value="(\w+)"', page.text).group(1)
        requests.post(inwechat.alipay.base + "/fake/alipay/cashier", data={"cashier_id": cashier},
                      allow_redirects=False, timeout=15)
        fake = inwechat.alipay
    oid = o["id"]
    wait_status(shop, token, oid, "credited")
    shown = shop.cli("--json", "order", "show", oid).stdout
    assert f'"{method}"' in shown, f"order show does not tell the method {method}: {shown[:600]}"
    shop.cli("order", "refund", oid, "--reason", "e2e refund")
    assert len(fake.refunds_for(oid)) == 1, fake.refund_attempts_for(oid)
    assert get_order(shop, token, oid)["status"] == "refunded"
    assert me(shop, token)["balance"]["paid"] == 0
