//! Structured logs with `tracing`: human-readable by default, JSON with
//! `log_format = "json"`. `RUST_LOG` overrides `log_level`.
//!
//! Request spans carry the method and the route template only: never the raw
//! URI, whose query string may hold an authorization code or a state.

use axum::extract::MatchedPath;
use axum::http::Request;
use tracing::Span;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. Safe to call more than once (later calls do
/// nothing), so tests can start many servers.
pub fn init(log: &LogConfig) {
    // An empty RUST_LOG (exported but blank) is unset, not "errors only".
    let filter = std::env::var(EnvFilter::DEFAULT_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The span of one HTTP request (for `TraceLayer::make_span_with`).
pub fn request_span<B>(request: &Request<B>) -> Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str())
        .unwrap_or("unmatched");
    tracing::info_span!("request", method = %request.method(), route = %route)
}
