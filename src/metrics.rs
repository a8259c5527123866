//! Prometheus metrics, served at `GET /metrics` in the OpenMetrics text format.
//!
//! Each `App` owns its registry (no process-global state), so tests can run
//! several servers in one process and read each one's figures.

use std::fmt;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: &'static str,
    route: Route,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: Route,
}

/// A request's route template as a label value: the router's own
/// [`MatchedPath`] (shared, not copied for every request), or a fixed name.
#[derive(Clone, Debug)]
pub enum Route {
    Matched(MatchedPath),
    Named(&'static str),
}

impl Route {
    fn as_str(&self) -> &str {
        match self {
            Self::Matched(path) => path.as_str(),
            Self::Named(name) => name,
        }
    }
}

impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Route {}

impl std::hash::Hash for Route {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl EncodeLabelValue for Route {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: &'static str,
    reason: &'static str,
}

/// Every label value comes from a fixed set: a client must not be able to grow
/// the registry (and `/metrics`) with made-up methods or error codes.
const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// The reasons a flow is counted under: how it started or completed, the
/// OAuth / OpenID Connect error codes (RFC 6749 4.1.2.1, 5.2; OIDC Core 3.1.2.6)
/// and chatgate's own; anything else is `other`.
pub const FLOW_REASONS: &[&str] = &[
    // started / completed
    "silent",
    "popup",
    "session",
    "token_exchange",
    // OAuth 2.0 and OpenID Connect errors
    "invalid_request",
    "unauthorized_client",
    "access_denied",
    "unsupported_response_type",
    "invalid_scope",
    "server_error",
    "temporarily_unavailable",
    "interaction_required",
    "login_required",
    "account_selection_required",
    "consent_required",
    "invalid_request_uri",
    "invalid_request_object",
    "request_not_supported",
    "request_uri_not_supported",
    "registration_not_supported",
    "invalid_grant",
    "invalid_client",
    "unsupported_grant_type",
    // chatgate's own
    "unknown_state",
];

fn fixed(set: &[&'static str], value: &str) -> &'static str {
    set.iter()
        .find(|v| **v == value)
        .copied()
        .unwrap_or("other")
}

fn flow_reason(reason: &str) -> &'static str {
    fixed(FLOW_REASONS, reason)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

/// What happened to a sign-in flow (`chatgate_flows_total{event}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowEvent {
    Started,
    Completed,
    Failed,
}

impl FlowEvent {
    fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }
}

/// A vault operation (`chatgate_vault_operations_total{op}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VaultOp {
    Read,
    Write,
    Delete,
}

/// How it went (`chatgate_vault_operations_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VaultOutcome {
    Ok,
    Absent,
    Error,
}

/// How a refresh at the IdP ended (`chatgate_refresh_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefreshOutcome {
    /// Stored at the first attempt.
    Ok,
    /// Stored after the database failed at least once.
    StoredAfterRetry,
    /// The IdP answered but the answer could not be stored: the rotated
    /// refresh token is gone. Should stay 0.
    Lost,
    /// The IdP refused the refresh token (`invalid_grant`).
    InvalidGrant,
    /// The IdP refused the refresh with another OAuth error, every time of a
    /// few tries (LemonLDAP::NG's `invalid_request` for a dead token, an
    /// `invalid_client`, a bare 400): the user must sign in again.
    Refused,
    /// The refreshed ID token names another user.
    IdentityChanged,
    /// The refreshed ID token is invalid (kept; the user must sign in again).
    IdTokenInvalid,
    /// Stored, but the refreshed ID token waits to be verified (JWKS unreachable).
    IdTokenUnverified,
    /// The IdP was unreachable or failed; the stored refresh token is unused.
    IdpUnavailable,
    /// A newer sign-in replaced the tokens while the refresh ran.
    Superseded,
    /// The user signed out while the refresh ran.
    SignedOut,
}

impl RefreshOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::StoredAfterRetry => "stored_after_retry",
            Self::Lost => "lost",
            Self::InvalidGrant => "invalid_grant",
            Self::Refused => "refused",
            Self::IdentityChanged => "identity_changed",
            Self::IdTokenInvalid => "id_token_invalid",
            Self::IdTokenUnverified => "id_token_unverified",
            Self::IdpUnavailable => "idp_unavailable",
            Self::Superseded => "superseded",
            Self::SignedOut => "signed_out",
        }
    }
}

/// 0.25 ms .. ~40 s in steps of 1.5x: fine enough to read the unsaved window.
fn refresh_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00025, 1.5, 30))
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
    refreshes: Family<OutcomeLabels, Counter>,
    refreshes_in_flight: Gauge,
    refreshes_unsaved: Gauge,
    refresh_seconds: Family<PhaseLabels, Histogram, fn() -> Histogram>,
    connections: Gauge,
    connections_refused: Counter,
    connections_timed_out: Family<ReasonLabels, Counter>,
    rate_limited: Family<ReasonLabels, Counter>,
    events: Family<OutcomeLabels, Counter>,
    events_pending: Gauge,
    /// 1 while the process drains before it stops.
    draining: Gauge,
    backchannel_logouts: Family<OutcomeLabels, Counter>,
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
        let refreshes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "refresh",
            "Access-token refreshes at IdPs, by outcome (lost should stay 0)",
            refreshes.clone(),
        );
        // Present from the start, so an alert on them sees a 0, not nothing.
        for outcome in [RefreshOutcome::Lost, RefreshOutcome::StoredAfterRetry] {
            let _ = refreshes.get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            });
        }
        let refreshes_in_flight = Gauge::default();
        registry.register(
            "refreshes_in_flight",
            "Refreshes running now (their own tasks, whatever happens to the requests)",
            refreshes_in_flight.clone(),
        );
        let refreshes_unsaved = Gauge::default();
        registry.register(
            "refreshes_unsaved",
            "Refreshed token sets the IdP has issued that wait in memory for the database",
            refreshes_unsaved.clone(),
        );
        let refresh_seconds =
            Family::<PhaseLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                refresh_histogram as fn() -> Histogram,
            );
        registry.register(
            "refresh_duration_seconds",
            "Refresh phases: idp = the token request, store = from the IdP's answer until it \
             is stored (the window in which a crash loses a rotation)",
            refresh_seconds.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "connections",
            "Open client connections",
            connections.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections closed at once because max_connections were open",
            connections_refused.clone(),
        );
        let connections_timed_out = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_timed_out",
            "Connections closed by header_read_timeout or idle_timeout",
            connections_timed_out.clone(),
        );
        let rate_limited = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests answered 429, by what was limited (request, bot_auth)",
            rate_limited.clone(),
        );
        let events = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "events",
            "Event deliveries to bots, by outcome (delivered, failed = will retry, dead)",
            events.clone(),
        );
        let events_pending = Gauge::default();
        registry.register(
            "events_pending",
            "Events neither delivered nor given up on",
            events_pending.clone(),
        );
        let draining = Gauge::default();
        registry.register(
            "draining",
            "1 while this replica drains before it stops (/readyz answers 503)",
            draining.clone(),
        );
        let backchannel_logouts = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "backchannel_logouts",
            "Logout tokens received, by outcome (ok, invalid, replayed, unavailable)",
            backchannel_logouts.clone(),
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
            refreshes_in_flight,
            refreshes_unsaved,
            refresh_seconds,
            connections,
            connections_refused,
            connections_timed_out,
            rate_limited,
            events,
            events_pending,
            draining,
            backchannel_logouts,
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

    /// `route` is a route template (or `unmatched`); a method outside the
    /// usual ones is counted as `other`.
    pub fn record_http(&self, method: &str, route: Route, status: u16, seconds: f64) {
        let method = fixed(METHODS, method);
        self.http_duration
            .get_or_create(&RouteLabels {
                method,
                route: route.clone(),
            })
            .observe(seconds);
        self.http_requests
            .get_or_create(&HttpLabels {
                method,
                route,
                status,
            })
            .inc();
    }

    /// `event` is `started`, `completed` or `failed`; `reason` says which way or
    /// why. A reason outside [`FLOW_REASONS`] (an IdP error code anyone can put
    /// in a callback URL) is counted as `other`, so the label set stays fixed.
    pub fn flow(&self, event: FlowEvent, reason: &str) {
        self.flows
            .get_or_create(&EventLabels {
                event: event.as_str(),
                reason: flow_reason(reason),
            })
            .inc();
    }

    pub fn refresh(&self, outcome: RefreshOutcome) {
        self.refreshes
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Counts a refresh task for as long as the returned guard lives.
    pub fn refresh_in_flight(self: &Arc<Self>) -> GaugeGuard {
        GaugeGuard::new(self.refreshes_in_flight.clone())
    }

    /// Counts a token set waiting for the database while the guard lives.
    pub fn refresh_unsaved(self: &Arc<Self>) -> GaugeGuard {
        GaugeGuard::new(self.refreshes_unsaved.clone())
    }

    /// Counts an open connection while the guard lives.
    pub fn connection_opened(&self) -> GaugeGuard {
        GaugeGuard::new(self.connections.clone())
    }

    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// `reason`: `header_read` or `idle`.
    pub fn connection_timed_out(&self, reason: &'static str) {
        self.connections_timed_out
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// `what`: `request` or `bot_auth`.
    pub fn rate_limited(&self, what: &'static str) {
        self.rate_limited
            .get_or_create(&ReasonLabels { reason: what })
            .inc();
    }

    /// `outcome`: `delivered`, `failed` (will retry) or `dead`.
    pub fn event(&self, outcome: &'static str) {
        self.events.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// `outcome`: `ok`, `invalid`, `replayed` or `unavailable`.
    pub fn backchannel_logout(&self, outcome: &'static str) {
        self.backchannel_logouts
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// The replica began to drain.
    pub fn draining(&self) {
        self.draining.set(1);
    }

    pub fn events_pending(&self, n: i64) {
        self.events_pending.set(n);
    }

    /// `phase`: `idp` or `store`.
    pub fn refresh_phase(&self, phase: &'static str, seconds: f64) {
        self.refresh_seconds
            .get_or_create(&PhaseLabels { phase })
            .observe(seconds);
    }

    pub fn vault_op(&self, op: VaultOp, outcome: VaultOutcome) {
        self.vault_ops
            .get_or_create(&OpLabels {
                op: match op {
                    VaultOp::Read => "read",
                    VaultOp::Write => "write",
                    VaultOp::Delete => "delete",
                },
                outcome: match outcome {
                    VaultOutcome::Ok => "ok",
                    VaultOutcome::Absent => "absent",
                    VaultOutcome::Error => "error",
                },
            })
            .inc();
    }

    /// `outcome`: `ok` or one of chatgate's own error codes (a fixed set).
    pub fn host_token(&self, outcome: &'static str) {
        self.host_tokens
            .get_or_create(&OpLabels {
                op: "verify",
                outcome,
            })
            .inc();
    }
}

/// Decrements its gauge when dropped.
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Middleware: counts and times every request by its route template (never the
/// raw path, which may hold user ids).
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(Route::Named("unmatched"), |p| Route::Matched(p.clone()));
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.record_http(
        method.as_str(),
        route,
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
        m.record_http("GET", Route::Named("/healthz"), 200, 0.002);
        m.flow(FlowEvent::Failed, "login_required");
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

    #[test]
    fn made_up_methods_and_error_codes_do_not_grow_the_label_set() {
        let m = Metrics::new();
        m.record_http("GET", Route::Named("/healthz"), 200, 0.001);
        m.flow(FlowEvent::Failed, "login_required");
        let before = m.encode().len();
        for i in 0..500 {
            m.record_http(&format!("BREW{i}"), Route::Named("/healthz"), 200, 0.001);
            m.flow(FlowEvent::Failed, &format!("made_up_{i}"));
        }
        let text = m.encode();
        assert!(text.contains(r#"method="other""#), "{text}");
        assert!(text.contains(r#"reason="other"} 500"#), "{text}");
        assert!(
            text.len() < before + 4096,
            "grew by {}",
            text.len() - before
        );
    }
}
