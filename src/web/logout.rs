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

use crate::domain::Origin;
use crate::oidc::unverified_issuer;
use crate::signin::{IdpSignoutError, Mode};
use crate::state::AppState;
use crate::user_tokens::{LogoutError, RETRY_AFTER_SECS};
use crate::web::pages::{Message, message_page, plain_page};
use crate::web::{ApiError, rate_limit};

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
        Err(e @ (LogoutError::Invalid(_) | LogoutError::Replayed)) => {
            tracing::info!(reason = %e, "logout token refused");
            Err(ApiError::bad_request(e.to_string()).into_response())
        }
        Err(LogoutError::Unavailable(description)) => Err(ApiError::Unavailable {
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
        let mut response = plain_page(status, title, message, &ancestors);
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
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
        Err(LogoutError::Unavailable(_)) => page(
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
            let mut response = StatusCode::SEE_OTHER.into_response();
            let headers = response.headers_mut();
            if let Ok(location) = HeaderValue::from_str(url.as_str()) {
                headers.insert(header::LOCATION, location);
            }
            // The URL carries the id_token_hint: for the IdP only.
            headers.insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
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
