//! `GET /v1/widget.js`: the browser library, embedded in the binary, told
//! which apps bind chat tokens to the browser's key (only those make and use
//! one).

use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::config::Config;
use crate::state::AppState;

const WIDGET_JS: &str = include_str!("../../static/widget.js");
/// The line of widget.js that lists the key-bound apps; replaced when served.
const KEY_BOUND_APPS: &str = "var KEY_BOUND_APPS = [];";

/// widget.js as served by this configuration.
pub fn script(config: &Config) -> String {
    let apps: Vec<&str> = config
        .apps
        .iter()
        .filter(|a| a.binds_dpop())
        .map(|a| a.id.as_str())
        .collect();
    let list = serde_json::to_string(&apps).expect("app ids serialize");
    WIDGET_JS.replacen(KEY_BOUND_APPS, &format!("var KEY_BOUND_APPS = {list};"), 1)
}

pub fn router(config: &Config) -> axum::Router<AppState> {
    let body: Arc<str> = script(config).into();
    axum::Router::new().route(
        "/v1/widget.js",
        get(move || {
            let body = body.clone();
            async move {
                (
                    [
                        (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                        (header::CACHE_CONTROL, "public, max-age=300"),
                    ],
                    body.to_string(),
                )
                    .into_response()
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_served_line_is_in_the_library() {
        assert_eq!(WIDGET_JS.matches(KEY_BOUND_APPS).count(), 1);
    }
}
