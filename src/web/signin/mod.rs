//! Browser endpoints of the sign-in flow: `GET /v1/authorize`,
//! `GET /v1/callback`, `POST /v1/session`, `POST /v1/session/token` and
//! `POST /v1/signout`.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tower_sessions::Session;
use tower_sessions::cookie::{Cookie, SameSite};

use crate::config::AppConfig;
use crate::domain::{AppId, Origin};
use crate::dpop::Jkt;
use crate::secret::random_token;
use crate::signin::{
    CallbackFailure, CallbackParams, CallbackResult, FlowError, FlowTarget, Minted, Mode,
    PageRenewal, PageRenewalError, Renewal, SessionSignIn, SessionUpdate, Ticket,
};
use crate::state::AppState;
use crate::web::pages::{Message, MessageUser, frame_ancestors, message_page, plain_page};
use crate::web::session::{self, BrowserSession};
use crate::web::{ApiError, cors, dpop, rate_limit};

mod request;

use request::{AuthorizeQuery, AuthorizeRequest};

/// The browser-binding cookie of pending flows, per mode: partitioned for the
/// third-party iframe, Lax for the first-party popup.
const BINDING_SILENT: &str = "__Host-chatgate-flow";
const BINDING_POPUP: &str = "__Host-chatgate-flow-popup";

pub fn router(state: &AppState) -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/authorize", get(authorize))
        .route("/v1/callback", get(callback))
        .merge(
            axum::Router::new()
                .route("/v1/session", post(redeem_ticket))
                .route("/v1/flow-binding", post(flow_binding))
                .route("/v1/session/token", post(session_token))
                .route("/v1/signout", post(super::signout::page_signout))
                .layer(cors::with_credentials(&state.config)),
        )
        .layer(session::layer(
            state.store.clone(),
            state.config.session_idle,
        ))
        .layer(axum::middleware::from_fn(session::partition_cookies))
        // Outermost: a limited request costs no session read.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            rate_limit::limit,
        ))
}

fn bad_request(message: &str, ancestors: &[Origin]) -> Response {
    plain_page(
        StatusCode::BAD_REQUEST,
        "Sign-in request refused",
        message,
        ancestors,
    )
}

/// `ancestors`: who may frame the page (the app's origins before a flow
/// exists, the flow's own origin after a callback).
fn error_page(
    mode: Mode,
    app: &AppId,
    origin: &Origin,
    ancestors: &[Origin],
    error: &FlowError,
) -> Response {
    message_page(
        mode,
        origin,
        ancestors,
        &Message::Error {
            app: app.to_string(),
            error: error.code.clone(),
            error_description: error.description.clone(),
        },
    )
}

/// `ancestors`: who may frame the page (the app's origins for a renewal, the
/// flow's own origin after a callback).
fn success_page(
    mode: Mode,
    app: &AppId,
    origin: &Origin,
    ancestors: &[Origin],
    signin: &SessionSignIn,
    minted: Minted,
    session_ticket: Option<String>,
) -> Response {
    message_page(
        mode,
        origin,
        ancestors,
        &success_message(app, signin, minted, session_ticket),
    )
}

/// The `chatgate:success` message, posted by a result page or answered by
/// `POST /v1/session/token`.
fn success_message(
    app: &AppId,
    signin: &SessionSignIn,
    minted: Minted,
    session_ticket: Option<String>,
) -> Message {
    Message::Success {
        app: app.to_string(),
        chat_token: minted.chat_token,
        expires_at: minted.expires_at,
        direct_line: Box::new(minted.direct_line.into()),
        user: MessageUser {
            id: signin.user_id.to_string(),
            name: signin.name.clone(),
            email: signin.email.clone(),
            email_verified: signin.email.as_ref().map(|_| signin.email_verified),
        },
        session_ticket,
    }
}

fn cookie_values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| {
            Cookie::split_parse(v.to_string())
                .filter_map(Result::ok)
                .collect::<Vec<_>>()
        })
        .filter(|c| c.name() == name)
        .map(|c| c.value().to_string())
        .collect()
}

fn binding_cookie(mode: Mode, value: &str, max_age: std::time::Duration) -> HeaderValue {
    let (name, same_site, partitioned) = match mode {
        Mode::Silent => (BINDING_SILENT, SameSite::None, true),
        Mode::Popup => (BINDING_POPUP, SameSite::Lax, false),
    };
    let cookie = Cookie::build((name, value.to_string()))
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(same_site)
        .partitioned(partitioned)
        .max_age(time::Duration::seconds(max_age.as_secs() as i64))
        .build();
    HeaderValue::from_str(&cookie.to_string()).expect("a cookie of base64 text is a valid header")
}

fn flow_headers(response: &mut Response, app: &AppConfig) {
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "frame-ancestors {}",
        frame_ancestors(&app.origins)
    )) {
        headers.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// `GET /v1/authorize`: renew from chatgate's session, or start a flow at the IdP.
async fn authorize(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    query: Result<Query<AuthorizeQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return bad_request("The sign-in request is malformed.", &[]);
    };
    let req = match AuthorizeRequest::parse(&state, q) {
        Ok(req) => req,
        Err(page) => return *page,
    };
    let now = crate::time::now();
    if req.mode == Mode::Silent
        && let Some(response) = renew(
            &state,
            &session,
            req.app,
            &req.origin,
            req.login_hint.as_deref(),
            req.dpop_jkt.as_ref(),
            now,
        )
        .await
    {
        return response;
    }
    let presented = cookie_values(&headers, binding_name(req.mode))
        .into_iter()
        .find(|v| v.len() == 43);
    let mut req = req;
    if presented.is_none() {
        // A flow's outcome goes to a waiting fetch only with the binding
        // cookie the page's browser held before the flow (`POST
        // /v1/flow-binding`); without it, the result page posts it.
        req.ticket_hash = None;
    }
    let binding = presented.unwrap_or_else(random_token::<32>);
    match state.signin.start(req.start(), &binding, now).await {
        Ok(url) => to_the_idp(&state, &req, &url, &binding),
        Err(e) => req.fail(&state, e),
    }
}

/// The redirect to the IdP, with the flow's browser-binding cookie.
fn to_the_idp(
    state: &AppState,
    req: &AuthorizeRequest<'_>,
    url: &url::Url,
    binding: &str,
) -> Response {
    let Ok(location) = HeaderValue::from_str(url.as_str()) else {
        return req.fail(state, FlowError::server_error());
    };
    let mut response = StatusCode::FOUND.into_response();
    flow_headers(&mut response, req.app);
    let h = response.headers_mut();
    h.insert(header::LOCATION, location);
    h.append(
        header::SET_COOKIE,
        binding_cookie(req.mode, binding, state.config.flow_ttl),
    );
    response
}

#[derive(Deserialize)]
struct FlowBindingQuery {
    app: String,
}

/// `POST /v1/flow-binding?app=…`: the silent flows' browser-binding cookie,
/// set from the host page (in its site's cookie partition) before a flow
/// starts, so that the page's fetch holds the very cookie its flow in the
/// hidden frame will be bound to. An existing one is kept. No body: a
/// simple CORS request, which needs no preflight.
async fn flow_binding(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<FlowBindingQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    cors::app_and_origin(&state, &headers, &q.app)?;
    let binding = cookie_values(&headers, BINDING_SILENT)
        .into_iter()
        .find(|v| v.len() == 43)
        .unwrap_or_else(random_token::<32>);
    let mut response = super::no_store(StatusCode::NO_CONTENT);
    response.headers_mut().append(
        header::SET_COOKIE,
        binding_cookie(Mode::Silent, &binding, state.config.flow_ttl),
    );
    Ok(response)
}

fn binding_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Silent => BINDING_SILENT,
        Mode::Popup => BINDING_POPUP,
    }
}

/// A fresh chat token from chatgate's own session, when it and the vault allow.
async fn renew(
    state: &AppState,
    session: &Session,
    app: &AppConfig,
    origin: &Origin,
    login_hint: Option<&str>,
    jkt: Option<&Jkt>,
    now: i64,
) -> Option<Response> {
    let max_age = state.config.session_max.as_secs() as i64;
    let browser = BrowserSession(session.clone());
    let signin = match browser.get(&app.id, origin, now, max_age).await {
        Ok(Some(s)) => s,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the browser session");
            return None;
        }
    };
    let renewal = state
        .signin
        .renew_in_frame(app, origin, &signin, login_hint, jkt, now)
        .await;
    match renewal {
        Renewal::AskTheIdp => None,
        Renewal::Failed(error) => Some(error_page(
            Mode::Silent,
            &app.id,
            origin,
            &app.origins,
            &error,
        )),
        Renewal::Minted(minted) => {
            // The session slides: idle time counts from this renewal.
            browser.touch(state.config.session_idle);
            Some(success_page(
                Mode::Silent,
                &app.id,
                origin,
                &app.origins,
                &signin,
                minted,
                None,
            ))
        }
    }
}

/// `GET /v1/callback`: the one redirect URI.
async fn callback(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    query: Result<Query<CallbackParams>, QueryRejection>,
) -> Response {
    let Ok(Query(params)) = query else {
        return bad_request("The sign-in response is malformed.", &[]);
    };
    let mut bindings = cookie_values(&headers, BINDING_SILENT);
    bindings.extend(cookie_values(&headers, BINDING_POPUP));
    // A hidden frame's navigation (every engine sends Sec-Fetch-Dest now; one
    // that does not gets the result page, as a window does).
    let in_frame = headers
        .get("sec-fetch-dest")
        .is_some_and(|v| v.as_bytes() == b"iframe");
    let now = crate::time::now();
    let completed = match state
        .signin
        .complete_callback(params, &bindings, in_frame, now)
        .await
    {
        Ok(c) => c,
        Err(CallbackFailure::Untied(message)) => {
            return plain_page(StatusCode::BAD_REQUEST, "Sign-in failed", message, &[]);
        }
        Err(CallbackFailure::Flow { target, error }) => {
            let ancestors = std::slice::from_ref(&target.origin);
            return error_page(target.mode, &target.app, &target.origin, ancestors, &error);
        }
    };
    let FlowTarget { app, origin, mode } = &completed.target;
    let ancestors = std::slice::from_ref(origin);
    match completed.result {
        CallbackResult::Token {
            signin,
            minted,
            session_ticket,
        } => {
            if let Err(e) = BrowserSession(session)
                .put(app, origin, (*signin).clone())
                .await
            {
                // The sign-in itself succeeded; only silent renewal will need the IdP.
                tracing::warn!(error = %e, "cannot record the sign-in in the browser session");
            }
            success_page(
                *mode,
                app,
                origin,
                ancestors,
                &signin,
                minted,
                session_ticket,
            )
        }
        CallbackResult::Waited => {
            // No page: the navigation ends here and the frame loads nothing.
            let mut response = StatusCode::NO_CONTENT.into_response();
            let h = response.headers_mut();
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            response
        }
        CallbackResult::KeyTicket(ticket) => message_page(
            *mode,
            origin,
            ancestors,
            &Message::Ticket {
                app: app.to_string(),
                ticket,
            },
        ),
    }
}

#[derive(Deserialize)]
struct TicketRequest {
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
async fn redeem_ticket(
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
struct SessionTokenRequest {
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
async fn session_token(
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
        None => browser
            .get(
                &app.id,
                &origin,
                now,
                state.config.session_max.as_secs() as i64,
            )
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?,
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
    Ok(success_json(&app.id, &renewed.signin, renewed.minted))
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
    super::no_store((status, Json(message)))
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
    super::no_store(Json(success_message(app, signin, minted, None)))
}
