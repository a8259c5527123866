//! The host page's fetches of the sign-in flow (CORS, with credentials):
//! `POST /v1/authorize` (a silent flow started for a waiting fetch),
//! `POST /v1/flow-binding` (the flow-binding cookie, before a silent flow),
//! `POST /v1/session` (a popup's ticket into this partition) and
//! `POST /v1/session/token` (a renewal in one fetch, a ticket's redemption,
//! or the wait for a silent flow's outcome).

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use tower_sessions::Session;

use super::request::{AuthorizeQuery, AuthorizeRequest};
use super::{BINDING_SILENT, cookie_values, presented_binding, set_binding, success_message};
use crate::domain::{AppId, Origin};
use crate::secret::random_token;
use crate::signin::{
    FlowError, Minted, Mode, PageRenewal, PageRenewalError, SessionSignIn, SessionUpdate, Ticket,
};
use crate::state::AppState;
use crate::web::pages::Message;
use crate::web::session::BrowserSession;
use crate::web::{ApiError, cors, dpop};

#[derive(Deserialize)]
pub(super) struct FlowBindingQuery {
    app: String,
}

/// `POST /v1/flow-binding?app=…`: the silent flows' browser-binding cookie,
/// set from the host page (in its site's cookie partition) before a flow
/// starts, so that the page's fetch holds the very cookie its flow in the
/// hidden frame will be bound to. An existing one is kept. No body: a
/// simple CORS request, which needs no preflight.
pub(super) async fn flow_binding(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<FlowBindingQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    cors::app_and_origin(&state, &headers, &q.app)?;
    let binding = silent_binding(&headers);
    let mut response = crate::web::no_store(StatusCode::NO_CONTENT);
    set_binding(&mut response, Mode::Silent, &binding, state.config.flow_ttl);
    Ok(response)
}

/// The silent flows' binding cookie the request carries, or a new one.
fn silent_binding(headers: &HeaderMap) -> String {
    presented_binding(headers, Mode::Silent).unwrap_or_else(random_token::<32>)
}

/// The sign-in of chatgate's session for `(app, origin)` in this browser's
/// cookie, if it is younger than `session_max`.
async fn held_session(
    state: &AppState,
    browser: &BrowserSession,
    app: &AppId,
    origin: &Origin,
    now: i64,
) -> Result<Option<SessionSignIn>, ApiError> {
    let max_age = state.config.session_max.as_secs() as i64;
    browser
        .get(app, origin, now, max_age)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// `POST /v1/authorize?…` (the query of `GET /v1/authorize`, `mode=silent`
/// with `dpop_jkt` and `ticket_hash`): starts a silent flow whose outcome the
/// page waits for, and answers `{"authorize_url"}`, the IdP's URL, so that
/// the hidden frame goes straight there, one hop fewer than through `GET
/// /v1/authorize`. Sets the flows' browser-binding cookie (an existing one is
/// kept) in the page's site's cookie partition: the flow is bound to it, and
/// the fetch that waits for the outcome must hold it. No body: a simple CORS
/// request, which needs no preflight. Where chatgate holds a session for
/// the page it starts nothing and answers `{"session": true}`: the page
/// renews by `POST /v1/session/token`.
pub(super) async fn start_waited_flow(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    query: Result<Query<AuthorizeQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let app = q.app().unwrap_or_default().to_string();
    let (app, origin) = cors::app_and_origin(&state, &headers, &app)?;
    let req = AuthorizeRequest::parse_waited(app, origin, q).map_err(flow_refused)?;
    let now = crate::time::now();
    let browser = BrowserSession(session);
    if held_session(&state, &browser, &app.id, &req.origin, now)
        .await?
        .is_some()
    {
        return Ok(crate::web::no_store(Json(
            serde_json::json!({ "session": true }),
        )));
    }
    let binding = silent_binding(&headers);
    let url = state
        .signin
        .start(req.start(), &binding, now)
        .await
        .map_err(flow_refused)?;
    let mut response = crate::web::no_store(Json(StartedFlow {
        authorize_url: url.to_string(),
    }));
    set_binding(&mut response, Mode::Silent, &binding, state.config.flow_ttl);
    Ok(response)
}

#[derive(serde::Serialize)]
struct StartedFlow {
    authorize_url: String,
}

/// `Retry-After` of a flow that cannot start now (the IdP not loaded yet,
/// a database blip).
const FLOW_RETRY_AFTER_SECS: u64 = 1;

/// A flow that could not start, as the fetch's JSON error.
fn flow_refused(error: FlowError) -> ApiError {
    if error.is_unavailable() {
        ApiError::Unavailable {
            description: error.description,
            retry_after_secs: FLOW_RETRY_AFTER_SECS,
        }
    } else {
        ApiError::bad_request(error.description)
    }
}

#[derive(Deserialize)]
pub(super) struct TicketRequest {
    app: String,
    ticket: String,
}

crate::redacted_debug!(TicketRequest {
    show: [app],
    hide: [ticket]
});

fn unknown_ticket() -> ApiError {
    ApiError::bad_request("the ticket is unknown, used or expired")
}

/// `POST /v1/session`: redeem a popup sign-in's ticket into this cookie
/// partition (and, with a proof of the flow's browser key, bind that key).
pub(super) async fn redeem_ticket(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    body: Result<Json<TicketRequest>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (app, origin) = cors::app_and_origin(&state, &headers, &req.app)?;
    let proof = dpop::browser_key(&state, app, &headers, "/v1/session", None)?;
    if let Some(proof) = &proof {
        dpop::spend(&state, proof).await?;
    }
    let proven = proof.as_ref().map(|p| &p.jkt);
    // A ticket of a flow started with a browser key is redeemed only with a
    // proof of that key; a flow's error is no sign-in.
    let redeemed = match state
        .signin
        .redeem_ticket(
            app,
            &origin,
            &req.ticket,
            proven,
            &cookie_values(&headers, BINDING_SILENT),
            false,
        )
        .await?
    {
        Some(Ticket::SignIn(r)) if r.jkt.is_none() || r.jkt.as_ref() == proven => r,
        _ => return Err(unknown_ticket()),
    };
    BrowserSession(session)
        .put(&app.id, &origin, redeemed.signin)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub(super) struct SessionTokenRequest {
    app: String,
    /// The chat token an iframe or popup sign-in just delivered; with the
    /// proof of the flow's key it confirms that key's binding.
    #[serde(default)]
    chat_token: Option<String>,
    /// The ticket of a `chatgate:ticket` message (a flow the browser finished
    /// without chatgate's cookie); redeemed only with a proof of the flow's key.
    #[serde(default)]
    ticket: Option<String>,
    /// With `ticket`: the ticket the page picked for a silent flow it started
    /// (`ticket_hash`); wait for the flow's outcome.
    #[serde(default)]
    wait: bool,
    /// Ask for a Direct Line token too (apps with `[apps.direct_line]`): the
    /// page holds none that is fresh.
    #[serde(default)]
    direct_line: bool,
}

crate::redacted_debug!(SessionTokenRequest {
    show: [app, wait, direct_line],
    hide: [chat_token, ticket]
});

/// `POST /v1/session/token`: a silent renewal in one fetch from the host page:
/// the `chatgate:success` message as JSON, or `401 login_required` when
/// neither chatgate's session (its cookie in this site's partition) nor, for
/// DPoP apps, the browser key the request proves can stand in for the IdP
/// (the widget then uses the iframe).
pub(super) async fn session_token(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    body: Result<Json<SessionTokenRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (app, origin) = cors::app_and_origin(&state, &headers, &req.app)?;
    let proof = dpop::browser_key(&state, app, &headers, "/v1/session/token", None)?;
    let now = crate::time::now();
    let browser = BrowserSession(session);
    let from_cookie = match req.ticket {
        Some(_) => None,
        None => held_session(&state, &browser, &app.id, &origin, now).await?,
    };
    let renewed = state
        .signin
        .renew_for_page(PageRenewal {
            app,
            origin: &origin,
            from_cookie,
            proof: proof.as_ref(),
            chat_token: req.chat_token.as_deref(),
            ticket: req.ticket.as_deref(),
            wait: req.wait,
            bindings: &cookie_values(&headers, BINDING_SILENT),
            direct_line: req.direct_line,
            now,
        })
        .await;
    let renewed = match renewed {
        Ok(renewed) => renewed,
        Err(PageRenewalError::Flow(error)) => return Ok(flow_failed_json(&app.id, &error)),
        Err(e) => return Err(page_renewal_refused(e)),
    };
    match renewed.session {
        SessionUpdate::Keep => {}
        SessionUpdate::Touch => browser.touch(state.config.session_idle),
        SessionUpdate::Put => {
            if let Err(e) = browser.put(&app.id, &origin, renewed.signin.clone()).await {
                tracing::warn!(error = %e, "cannot record the sign-in in the browser session");
            }
        }
    }
    let answer = success_json(&app.id, &renewed.signin, renewed.minted);
    // A callback waits for this (its frame is answered after the page).
    drop(renewed.answering);
    Ok(answer)
}

/// The error a waited-for flow ended with, as the `chatgate:error` message a
/// result page would have posted: 401 when the IdP wants the user
/// (`login_required`, ...), 503 when it cannot be told now, else 400.
fn flow_failed_json(app: &AppId, error: &FlowError) -> Response {
    let status = match error.code.as_str() {
        _ if error.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
        "login_required"
        | "interaction_required"
        | "consent_required"
        | "account_selection_required" => StatusCode::UNAUTHORIZED,
        _ => StatusCode::BAD_REQUEST,
    };
    let message = Message::Error {
        app: app.to_string(),
        error: error.code.clone(),
        error_description: error.description.clone(),
    };
    crate::web::no_store((status, Json(message)))
}

/// A page renewal's refusal as the fetch's answer.
fn page_renewal_refused(error: PageRenewalError) -> ApiError {
    let description = error.to_string();
    match error {
        PageRenewalError::LoginRequired => ApiError::unauthorized("login_required", description),
        PageRenewalError::ProofRequired => {
            ApiError::unauthorized("invalid_dpop_proof", description)
        }
        PageRenewalError::ProofReplayed => dpop::refused(&crate::dpop::DpopError::Replayed),
        PageRenewalError::UnknownTicket => unknown_ticket(),
        PageRenewalError::Flow(error) => ApiError::Internal(error.description),
        PageRenewalError::Unavailable(description) => ApiError::Unavailable {
            description,
            retry_after_secs: crate::user_tokens::RETRY_AFTER_SECS,
        },
        PageRenewalError::Failed(description) => ApiError::Internal(description),
        PageRenewalError::Store(e) => e.into(),
    }
}

/// The success message as the JSON answer of a fetch.
fn success_json(app: &AppId, signin: &SessionSignIn, minted: Minted) -> Response {
    crate::web::no_store(Json(success_message(app, signin, minted, None)))
}
