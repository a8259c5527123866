//! HTTP: one module per area, each with its own `router()`, merged here.

mod bot_api;
mod bot_framework;
pub mod conn;
pub mod cors;
mod dpop;
pub mod error;
mod host_session;
mod logout;
mod ops;
pub mod pages;
pub mod rate_limit;
pub mod session;
mod signin;
mod well_known;
mod widget;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use error::ApiError;

use crate::state::AppState;

/// The whole HTTP surface with its middleware.
pub fn router(state: AppState) -> Router {
    let config = state.config.clone();
    Router::new()
        .merge(ops::router())
        .merge(well_known::router())
        .merge(signin::router(&state))
        .merge(widget::router(&config))
        .merge(bot_api::router())
        .merge(bot_framework::router())
        .merge(host_session::router(&state))
        .merge(logout::router(&state))
        .fallback(error::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track,
        ))
        .layer(TraceLayer::new_for_http().make_span_with(crate::telemetry::request_span))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            config.request_timeout,
        ))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(RequestBodyLimitLayer::new(config.max_body_bytes))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .with_state(state)
}
