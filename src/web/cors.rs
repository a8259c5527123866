//! CORS for the endpoints a host page calls with `fetch` (`/v1/signout`,
//! `/v1/session`, `/v1/host-session`, ...): only an allow-listed origin, echoed
//! exactly, with credentials; never `*`.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::config::AppConfig;
use crate::domain::Origin;
use crate::state::AppState;
use crate::web::ApiError;

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

/// Adds the CORS headers that let `origin` read the response.
pub fn allow(mut response: Response, origin: &Origin) -> Response {
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(origin.as_str()) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    response
}

/// CORS headers for an endpoint that takes no cookies.
pub fn allow_without_credentials(mut response: Response, origin: &Origin) -> Response {
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(origin.as_str()) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    response
}

/// The preflight headers of chatgate's `POST` endpoints, added to `response`.
pub fn with_preflight_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    response
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

/// `OPTIONS` preflight: allowed when the origin belongs to any app (the app is
/// in the body, which a preflight does not carry; the real request checks it).
pub async fn preflight(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(origin) =
        request_origin(&headers).filter(|o| state.config.apps.iter().any(|a| a.allows_origin(o)))
    else {
        return StatusCode::FORBIDDEN.into_response();
    };
    with_preflight_headers(allow(StatusCode::NO_CONTENT.into_response(), &origin))
}
