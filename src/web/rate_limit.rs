//! The HTTP side of rate limits (see [`crate::rate_limits`]): the middleware
//! of the anonymous endpoints and the `429` answer.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::state::AppState;
use crate::web::error::ErrorBody;

/// `429 rate_limited` with `Retry-After` (the CORS layer of the route makes it
/// readable by a host page).
pub fn too_many_requests(wait: Duration) -> Response {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let body = ErrorBody {
        error: "rate_limited",
        error_description: format!("too many requests from this address; retry in {secs} s"),
    };
    let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    let h = response.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Middleware for the unauthenticated endpoints: one request from the
/// client's budget (CORS preflights are free).
pub async fn limit(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != axum::http::Method::OPTIONS {
        let ip = state.rate_limits.client_ip(peer.ip(), request.headers());
        if let Err(wait) = state.rate_limits.request(ip) {
            state.metrics.rate_limited("request");
            return too_many_requests(wait);
        }
    }
    next.run(request).await
}
