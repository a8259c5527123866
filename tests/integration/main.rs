//! chatgate's integration tests, one binary (it compiles and links once):
//! the HTTP API against the real server, the storage layer on SQLite and
//! PostgreSQL, the CLI, and faults injected with real components.
//!
//! `common` holds the harness: `spawn_app`, `TestDb`, `backend_tests!`, the
//! in-process fake IdP, the scripted browser, the cuttable TCP proxy.

#[macro_use]
mod common;

mod architecture;
mod bot_api;
mod cli;
mod cookieless;
#[cfg(feature = "demo")]
mod dev_idp;
mod direct_line;
mod docs;
mod dpop;
mod drain;
mod hardening;
mod host_session;
mod idp_signout;
mod ops;
mod query_plans;
mod refresh_faults;
mod signin;
mod signout;
mod storage;
mod waited_flows;
