//! Sign-out that reaches everyone: `POST /v1/backchannel-logout` (the IdP
//! says a session ended), and the IdP sign-out the widget starts with
//! `POST /v1/signout {"idp": true}`: `GET /v1/idp-signout` (the popup, on to
//! the IdP) and `GET /v1/signed-out` (back from the IdP, to the host page).

use axum::Form;
use axum::extract::rejection::FormRejection;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tower_http::set_header::SetResponseHeaderLayer;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use tower_sessions::Session;

use crate::domain::Origin;
use crate::oidc::unverified_issuer;
use crate::signin::{IdpSignoutError, Mode};
use crate::signin::{PageSignOut, PageSignedOut};
use crate::state::AppState;
use crate::user_tokens::Revocation;
use crate::user_tokens::{LogoutRequestError, RETRY_AFTER_SECS};
use crate::web::pages::{Message, message_page, plain_page};
use crate::web::session::BrowserSession;
use crate::web::{ApiError, rate_limit};
use crate::web::{cors, dpop};

pub fn router(state: &AppState) -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/idp-signout", get(idp_signout))
        .route("/v1/signed-out", get(signed_out))
        .route("/v1/frontchannel-logout", get(frontchannel_logout))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            rate_limit::limit,
        ))
        // Not behind the per-address limit: an IdP's mass logout comes from a
        // few addresses and is never retried. Its budget is the provider's
        // (see `backchannel_logout`).
        .merge(
            axum::Router::new()
                .route("/v1/backchannel-logout", post(backchannel_logout))
                // Section 2.8: the answer must not be cached, errors included.
                .layer(SetResponseHeaderLayer::overriding(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("no-store"),
                )),
        )
}

#[derive(Deserialize)]
struct LogoutForm {
    logout_token: Option<String>,
}

crate::redacted_debug!(LogoutForm {
    show: [],
    hide: [logout_token]
});

/// `POST /v1/backchannel-logout`: 200 when the sessions the logout token
/// names are ended (or there were none), 400 `invalid_request` when the token
/// is not valid or was used before, 503 when it cannot be acted on now, 429
/// when over budget: the named provider's (`[rate_limit]
/// backchannel_per_second`) for a token whose unverified `iss` and `aud` name
/// a configured provider, else the sender address's.
async fn backchannel_logout(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<LogoutForm>, FormRejection>,
) -> Result<StatusCode, Response> {
    let token = form
        .ok()
        .and_then(|Form(f)| f.logout_token)
        .filter(|t| !t.is_empty());
    let provider = token
        .as_deref()
        .and_then(unverified_issuer)
        .and_then(|claimed| state.providers.for_token(&claimed));
    let budget = match &provider {
        Some(p) => state
            .rate_limits
            .backchannel_logout(p.config().id.as_str())
            .map_err(|wait| (wait, "backchannel_logout")),
        None => {
            let ip = state.rate_limits.client_ip(peer.ip(), &headers);
            state
                .rate_limits
                .request(ip)
                .map_err(|wait| (wait, "request"))
        }
    };
    if let Err((wait, reason)) = budget {
        state.metrics.rate_limited(reason);
        return Err(rate_limit::too_many_requests(wait));
    }
    let token = token.ok_or_else(|| {
        ApiError::bad_request("logout_token (form-encoded) is required").into_response()
    })?;
    match state.tokens.backchannel_logout(&token).await {
        Ok(_) => Ok(StatusCode::OK),
        Err(e @ (LogoutRequestError::Invalid(_) | LogoutRequestError::Replayed)) => {
            tracing::info!(reason = %e, "logout token refused");
            Err(ApiError::bad_request(e.to_string()).into_response())
        }
        Err(LogoutRequestError::Unavailable(description)) => Err(ApiError::Unavailable {
            description,
            retry_after_secs: RETRY_AFTER_SECS,
        }
        .into_response()),
    }
}

#[derive(Deserialize)]
struct FrontchannelQuery {
    iss: Option<String>,
    sid: Option<String>,
}

crate::redacted_debug!(FrontchannelQuery {
    show: [iss],
    hide: [sid]
});

/// `GET /v1/frontchannel-logout?iss=&sid=` (OpenID Connect Front-Channel
/// Logout 1.0): the IdP's logout page frames this in the user's browser; the
/// sessions and tokens of IdP session `sid` end, no cookie needed. Answers a
/// page that only the configured IdPs may frame.
async fn frontchannel_logout(
    State(state): State<AppState>,
    query: Result<Query<FrontchannelQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = query.map(|Query(q)| q).unwrap_or(FrontchannelQuery {
        iss: None,
        sid: None,
    });
    let ancestors = idp_origins(&state, q.iss.as_deref());
    let page = |status: StatusCode, title: &str, message: &str| {
        super::no_store(plain_page(status, title, message, &ancestors))
    };
    let Some(sid) = q.sid.as_deref().filter(|s| !s.is_empty() && s.len() <= 512) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Sign-out refused",
            "A front-channel logout needs the IdP session's sid (register the URL with session required).",
        );
    };
    match state
        .tokens
        .frontchannel_logout(q.iss.as_deref(), sid)
        .await
    {
        Ok(_) => page(
            StatusCode::OK,
            "Signed out",
            "chatgate has ended this sign-in.",
        ),
        Err(LogoutRequestError::Unavailable(_)) => page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-out failed",
            "chatgate is unavailable; the sign-out did not reach it.",
        ),
        Err(e) => page(StatusCode::BAD_REQUEST, "Sign-out refused", &e.to_string()),
    }
}

/// The origins of the IdPs (the one `iss` names, else all): who may frame the
/// front-channel logout page.
fn idp_origins(state: &AppState, iss: Option<&str>) -> Vec<Origin> {
    state
        .config
        .providers
        .iter()
        .filter(|p| {
            iss.is_none_or(|iss| iss.trim_end_matches('/') == p.issuer.trim_end_matches('/'))
                || p.multi_tenant
        })
        .filter_map(|p| url::Url::parse(&p.issuer).ok())
        .filter_map(|u| Origin::parse(&u.origin().ascii_serialization()).ok())
        .collect()
}

#[derive(Deserialize)]
struct TicketQuery {
    ticket: Option<String>,
}

crate::redacted_debug!(TicketQuery {
    show: [],
    hide: [ticket]
});

/// `GET /v1/idp-signout?ticket=`: on to the IdP's `end_session_endpoint`.
async fn idp_signout(
    State(state): State<AppState>,
    query: Result<Query<TicketQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let ticket = query.ok().and_then(|Query(q)| q.ticket).unwrap_or_default();
    match state
        .signin
        .idp_signout_redirect(&ticket, crate::time::now())
        .await
    {
        Ok(url) => {
            let mut response = super::no_store(StatusCode::SEE_OTHER);
            let headers = response.headers_mut();
            if let Ok(location) = HeaderValue::from_str(url.as_str()) {
                headers.insert(header::LOCATION, location);
            }
            // The URL carries the id_token_hint: for the IdP only.
            headers.insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            response
        }
        Err(e) => signout_failed(&e),
    }
}

#[derive(Deserialize)]
struct StateQuery {
    state: Option<String>,
}

crate::redacted_debug!(StateQuery {
    show: [],
    hide: [state]
});

/// `GET /v1/signed-out?state=`: posts `chatgate:signed_out` to the exact
/// origin that asked, and closes the popup.
async fn signed_out(
    State(state): State<AppState>,
    query: Result<Query<StateQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let value = query.ok().and_then(|Query(q)| q.state).unwrap_or_default();
    match state
        .signin
        .finish_idp_signout(&value, crate::time::now())
        .await
    {
        Ok(done) => message_page(
            Mode::Popup,
            &done.origin,
            &[],
            &Message::SignedOut {
                app: done.app.to_string(),
            },
        ),
        Err(e) => signout_failed(&e),
    }
}

fn signout_failed(e: &IdpSignoutError) -> Response {
    let status = match e {
        IdpSignoutError::Unknown | IdpSignoutError::Unsupported => StatusCode::BAD_REQUEST,
        IdpSignoutError::ProviderNotLoaded | IdpSignoutError::Store(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    if let IdpSignoutError::Store(e) = e {
        tracing::warn!(error = %e, "IdP sign-out failed");
    }
    let message = match e {
        IdpSignoutError::Store(_) => "chatgate is unavailable; try again shortly.".to_string(),
        e => format!("{e}. You can close this window."),
    };
    plain_page(status, "Sign-out did not complete", &message, &[])
}

#[derive(Debug, Deserialize)]
pub(super) struct SignOutRequest {
    app: String,
    #[serde(default)]
    revoke: bool,
    /// Also sign out at the IdP (RP-initiated logout, in a popup).
    #[serde(default)]
    idp: bool,
}

/// `POST /v1/signout`: ends chatgate's session for the calling origin (and,
/// with a proof, the page's browser key); with `revoke` signs the user out
/// of the app everywhere; with `idp` answers the URL of the popup that signs
/// out at the IdP (`idp_signout_url`), or why there is none.
pub(super) async fn page_signout(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    body: Result<Json<SignOutRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (app, origin) = cors::app_and_origin(&state, &headers, &req.app)?;
    // A proof is optional here: a page that lost its key can still sign out.
    let proof = match headers.contains_key(dpop::HEADER_NAME) {
        true => dpop::browser_key(&state, app, &headers, "/v1/signout", None)?,
        false => None,
    };
    if let Some(proof) = &proof {
        dpop::spend(&state, proof).await?;
    }
    let from_cookie = BrowserSession(session)
        .remove(&app.id, &origin)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let done = state
        .signin
        .sign_out_page(PageSignOut {
            app,
            origin: &origin,
            from_cookie,
            key: proof.as_ref().map(|p| &p.jkt),
            revoke: req.revoke,
            idp: req.idp,
            now: crate::time::now(),
        })
        .await?;
    Ok(Json(signout_answer(done)))
}

/// `POST /v1/signout`'s answer.
fn signout_answer(done: PageSignedOut) -> serde_json::Value {
    let mut answer = serde_json::json!({
        "signed_out": done.signed_out,
        "revoked": done.revocation == Some(Revocation::Revoked),
    });
    if let Some(code) = done.revocation.and_then(Revocation::error_code) {
        answer["revocation_error"] = code.into();
    }
    match done.idp_signout {
        None => {}
        Some(Ok(url)) => answer["idp_signout_url"] = url.into(),
        Some(Err(e)) => {
            if let IdpSignoutError::Store(e) = &e {
                tracing::warn!(error = %e, "cannot start an IdP sign-out");
            }
            answer["idp_signout_error"] = e.code().into();
            answer["idp_signout_error_description"] = e.public_description().into();
        }
    }
    answer
}
