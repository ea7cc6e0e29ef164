//! The admin API under `/admin` (bearer = `server.admin_token`) and its client, the admin
//! CLI. The daemon owns the database, so this is the only way to change users from outside.
//!
//! - [`paths`]: every admin path, written once for the routes and the CLI.
//! - one auth layer ([`routes`] puts it in front of every route): no handler checks the
//!   token itself.
//! - the routes by resource: `users` (find, show, create, ban, identities, groups),
//!   `credits` (grant, revoke), `tokens`, `orders` (list, CSV, show, refund), `zsxq`
//!   (groups: pause, resume, token), `codes` (redemption code batches), `ops` (stats, audit, backup, reload, hits, upstreams).
//! - `changes`: the change log: a layer recording every change made through this API
//!   (when, who, from where, what, why) and its listing.
//! - [`cli`]: `chatrelay admin ...` (commands, HTTP client, human renderers).

mod changes;
pub mod cli;
mod codes;
mod common;
mod credits;
mod ops;
mod orders;
pub mod paths;
pub mod state;
mod tokens;
mod usage;
mod users;
mod zsxq;

pub use common::AdminError;
use common::require_admin;
use state::AppState;

/// The `/admin` routes, every one behind the admin token (checked against the live
/// configuration, so a reload that changes the token applies at once).
pub fn routes(state: AppState) -> axum::Router<AppState> {
    use axum::routing::{delete, get, post};
    axum::Router::new()
        .route(
            paths::USERS,
            post(users::create_user).get(users::find_users),
        )
        .route(paths::USER, get(users::show_user))
        .route(paths::BAN, post(users::ban))
        .route(paths::IDENTITIES, post(users::link_identity))
        .route(paths::IDENTITY, delete(users::unlink_identity))
        .route(paths::GROUPS, post(users::change_groups))
        .route(paths::USER_USAGE, get(usage::user_usage))
        .route(paths::GRANT, post(credits::grant))
        .route(paths::REVOKE, post(credits::revoke_credits))
        .route(paths::USER_TOKENS, post(tokens::create_token))
        .route(paths::TOKEN_REVOKE, post(tokens::revoke_token))
        .route(paths::ORDERS, get(orders::list_orders))
        .route(paths::ORDERS_CSV, get(orders::export_orders))
        .route(paths::ORDER, get(orders::show_order))
        .route(paths::REFUND, post(orders::refund_order))
        .route(paths::ZSXQ, get(zsxq::zsxq_list))
        .route(
            paths::ZSXQ_PAUSE,
            post(|st, id| zsxq::set_paused(st, id, true)),
        )
        .route(
            paths::ZSXQ_RESUME,
            post(|st, id| zsxq::set_paused(st, id, false)),
        )
        .route(paths::ZSXQ_TOKEN, post(zsxq::zsxq_token))
        .route(
            paths::CODES,
            post(codes::create_batch).get(codes::list_codes),
        )
        .route(paths::CODES_REVOKE, post(codes::revoke_batch))
        .route(paths::STATS, get(ops::stats))
        .route(paths::AUDIT, get(ops::audit))
        .route(paths::BACKUP, get(ops::backup))
        .route(paths::RELOAD, post(ops::reload))
        .route(paths::CONFIG, get(ops::running_config))
        .route(paths::HITS, get(ops::content_hits))
        .route(paths::UPSTREAMS, get(ops::upstreams))
        .route(paths::CHANGES, get(changes::list_changes))
        .route(paths::USER_LEDGER, get(users::user_ledger))
        // Inside the auth layer (added after it, so it runs after it): refused requests
        // are not recorded.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            changes::record_changes,
        ))
        .route_layer(axum::middleware::from_fn_with_state(state, require_admin))
}

#[cfg(test)]
mod tests;
