//! CORS for the endpoints a host page calls with `fetch`, from
//! `tower_http::cors::CorsLayer` (never `*` with credentials):
//!
//! - `/v1/session`, `/v1/signout` carry chatgate's cookie: only the origins of
//!   the configured apps, with credentials ([`with_credentials`]).
//! - `/v1/host-session`, `/v1/token-exchange` take no cookie: the requesting
//!   origin is mirrored, so the widget can read `origin_not_allowed` instead
//!   of an opaque network error ([`any_origin`]); whether the origin may sign
//!   anyone in is decided per app on the real request ([`app_and_origin`]).

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::{AppConfig, Config};
use crate::domain::Origin;
use crate::state::AppState;
use crate::web::ApiError;

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

fn post_json() -> CorsLayer {
    CorsLayer::new()
        .allow_methods([Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            header::HeaderName::from_static(crate::dpop::HEADER),
        ])
        .max_age(PREFLIGHT_MAX_AGE)
}

/// The origins of every configured app, with credentials.
pub fn with_credentials(config: &Config) -> CorsLayer {
    let origins: Vec<HeaderValue> = config
        .apps
        .iter()
        .flat_map(|a| a.origins.iter())
        .filter_map(|o| HeaderValue::from_str(o.as_str()).ok())
        .collect();
    post_json()
        .allow_origin(AllowOrigin::list(origins))
        .allow_credentials(true)
}

/// Any origin, mirrored, without credentials.
pub fn any_origin() -> CorsLayer {
    post_json().allow_origin(AllowOrigin::mirror_request())
}

/// The request's `Origin` header, parsed.
pub fn request_origin(headers: &HeaderMap) -> Option<Origin> {
    headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Origin::parse(v).ok())
}

/// The request's origin if `app` allows it; `403 origin_not_allowed` otherwise.
pub fn require_origin(headers: &HeaderMap, app: &AppConfig) -> Result<Origin, ApiError> {
    match request_origin(headers) {
        Some(origin) if app.allows_origin(&origin) => Ok(origin),
        Some(origin) => Err(ApiError::Forbidden {
            code: "origin_not_allowed",
            description: format!("{origin} is not an allowed origin of app {}", app.id),
        }),
        None => Err(ApiError::Forbidden {
            code: "origin_not_allowed",
            description: "the request has no Origin header".into(),
        }),
    }
}

/// The app a host page's request names, and the request's origin, which that
/// app must allow: `400 invalid_request` / `403 origin_not_allowed` otherwise.
pub fn app_and_origin<'a>(
    state: &'a AppState,
    headers: &HeaderMap,
    app: &str,
) -> Result<(&'a AppConfig, Origin), ApiError> {
    let app = state
        .config
        .app(app)
        .ok_or_else(|| ApiError::bad_request("unknown app"))?;
    Ok((app, require_origin(headers, app)?))
}
