//! `GET /v1/widget.js`: the browser library, embedded in the binary.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::state::AppState;

const WIDGET_JS: &str = include_str!("../../static/widget.js");

pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/v1/widget.js", get(widget_js))
}

async fn widget_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        WIDGET_JS,
    )
}
