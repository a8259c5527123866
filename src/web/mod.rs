//! HTTP: one module per area, each with its own `router()`, merged here.

mod bot_api;
mod bot_framework;
pub mod conn;
pub mod cors;
mod dpop;
pub mod error;
mod host_session;
mod ops;
pub mod pages;
pub mod rate_limit;
pub mod session;
mod signin;
mod signout;
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

/// Counts the request in flight; while the process drains before it stops,
/// asks HTTP/1 clients to close the connection after the response, so a
/// load balancer's pooled connection is not reused and nothing is dropped
/// when the listener closes (HTTP/2 gets GOAWAY at the graceful shutdown).
async fn drain(
    axum::extract::State(lifecycle): axum::extract::State<
        std::sync::Arc<crate::lifecycle::Lifecycle>,
    >,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let http1 = request.version() < axum::http::Version::HTTP_2;
    let _in_flight = lifecycle.request();
    let mut response = next.run(request).await;
    if http1 && lifecycle.is_draining() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A response no cache may keep (`Cache-Control: no-store`): tokens, and
/// answers about them.
pub(crate) fn no_store(response: impl axum::response::IntoResponse) -> axum::response::Response {
    let mut response = response.into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

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
        .merge(signout::router(&state))
        .fallback(error::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.lifecycle.clone(),
            drain,
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
