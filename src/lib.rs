//! chatgate: signs users of an embedded chat widget in, keeps their IdP tokens in
//! an encrypted vault, and hands out short-lived chat tokens bound to the verified
//! user id. See `docs/reference.md` (the external contract), `docs/architecture.md`
//! and `README.md`.

#![forbid(unsafe_code)]
#![warn(missing_debug_implementations)]

pub mod audit;
pub mod bots;
pub(crate) mod cache;
pub mod chat_token;
pub mod cli;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod direct_line;
pub mod domain;
pub mod dpop;
pub mod events;
pub(crate) mod host_session;
pub mod lifecycle;
pub(crate) mod metrics;
pub mod oidc;
pub(crate) mod rate_limits;
pub mod secret;
pub mod server;
pub(crate) mod signin;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod time;
pub(crate) mod token_exchange;
pub(crate) mod user_tokens;
pub mod vault;
pub(crate) mod web;
