//! Browser endpoints of the sign-in flow: the navigations `GET /v1/authorize`
//! and `GET /v1/callback` here, the host page's fetches in [`fetches`], and
//! `POST /v1/signout`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_sessions::Session;
use tower_sessions::cookie::{Cookie, SameSite};

use crate::config::AppConfig;
use crate::domain::{AppId, Origin};
use crate::dpop::Jkt;
use crate::secret::random_token;
use crate::signin::{
    CallbackFailure, CallbackParams, CallbackResult, FlowError, FlowTarget, Minted, Mode, Renewal,
    SessionSignIn,
};
use crate::state::AppState;
use crate::web::pages::{Message, MessageUser, frame_ancestors, message_page, plain_page};
use crate::web::session::{self, BrowserSession};
use crate::web::{cors, rate_limit};

mod fetches;
mod request;

use fetches::{flow_binding, redeem_ticket, session_token, start_waited_flow};
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
                .route("/v1/authorize", post(start_waited_flow))
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
    let presented = presented_binding(&headers, req.mode);
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
    response.headers_mut().insert(header::LOCATION, location);
    set_binding(&mut response, req.mode, binding, state.config.flow_ttl);
    response
}

/// The flows' browser-binding cookie of `mode` the request carries.
fn presented_binding(headers: &HeaderMap, mode: Mode) -> Option<String> {
    cookie_values(headers, binding_name(mode))
        .into_iter()
        .find(|v| v.len() == 43)
}

/// Sets the flows' browser-binding cookie of `mode` on `response`.
fn set_binding(response: &mut Response, mode: Mode, value: &str, max_age: std::time::Duration) {
    response
        .headers_mut()
        .append(header::SET_COOKIE, binding_cookie(mode, value, max_age));
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
