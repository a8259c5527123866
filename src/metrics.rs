//! Prometheus metrics, served at `GET /metrics` in the OpenMetrics text format.
//!
//! Each `App` owns its registry (no process-global state), so tests can run
//! several servers in one process and read each one's figures.

use std::fmt;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: String,
    outcome: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// All of chatgate's metrics.
pub struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    flows: Family<EventLabels, Counter>,
    refreshes: Family<OpLabels, Counter>,
    vault_ops: Family<OpLabels, Counter>,
    host_tokens: Family<OpLabels, Counter>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("chatgate");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            http_requests.clone(),
        );
        let http_duration =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route and method",
            http_duration.clone(),
        );
        let flows = Family::<EventLabels, Counter>::default();
        registry.register(
            "flows",
            "Sign-in flows started, completed and failed, by reason",
            flows.clone(),
        );
        let refreshes = Family::<OpLabels, Counter>::default();
        registry.register(
            "token_refreshes",
            "Access-token refreshes at IdPs, by outcome",
            refreshes.clone(),
        );
        let vault_ops = Family::<OpLabels, Counter>::default();
        registry.register(
            "vault_operations",
            "Vault reads, writes and deletes, by outcome",
            vault_ops.clone(),
        );
        let host_tokens = Family::<OpLabels, Counter>::default();
        registry.register(
            "host_tokens",
            "Host-signed token checks, by outcome",
            host_tokens.clone(),
        );
        Self {
            registry,
            http_requests,
            http_duration,
            flows,
            refreshes,
            vault_ops,
            host_tokens,
        }
    }

    /// The registry in OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding metrics into a String cannot fail");
        out
    }

    pub fn record_http(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.http_requests
            .get_or_create(&HttpLabels {
                method: method.into(),
                route: route.into(),
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels {
                method: method.into(),
                route: route.into(),
            })
            .observe(seconds);
    }

    /// `event` is `started`, `completed` or `failed`; `reason` says which way or why.
    pub fn flow(&self, event: &str, reason: &str) {
        self.flows
            .get_or_create(&EventLabels {
                event: event.into(),
                reason: reason.into(),
            })
            .inc();
    }

    pub fn refresh(&self, outcome: &str) {
        self.refreshes
            .get_or_create(&OpLabels {
                op: "refresh".into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn vault_op(&self, op: &str, outcome: &str) {
        self.vault_ops
            .get_or_create(&OpLabels {
                op: op.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn host_token(&self, outcome: &str) {
        self.host_tokens
            .get_or_create(&OpLabels {
                op: "verify".into(),
                outcome: outcome.into(),
            })
            .inc();
    }
}

/// Middleware: counts and times every request by its route template (never the
/// raw path, which may hold user ids).
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.record_http(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_up_in_the_text() {
        let m = Metrics::new();
        m.record_http("GET", "/healthz", 200, 0.002);
        m.flow("failed", "login_required");
        let text = m.encode();
        assert!(
            text.contains(
                "chatgate_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("chatgate_flows_total{event=\"failed\",reason=\"login_required\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("chatgate_http_request_duration_seconds_bucket"),
            "{text}"
        );
    }
}
