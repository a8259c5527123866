//! `POST /v1/host-session` (a host-signed userinfo token) and
//! `POST /v1/token-exchange` (an ID token the host page already holds): the
//! ways in for hosts that already know who their user is. Both answer with
//! the same chat token as the sign-in flow; neither stores IdP tokens.
//!
//! CORS: these endpoints take no cookies, so the preflight is answered for any
//! origin and every answer names the requesting origin; whether the origin may
//! sign anyone in is decided on the real request (`origin_not_allowed`), which
//! lets the widget report that code instead of an opaque network error.

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::config::AppConfig;
use crate::dpop::Proof;
use crate::signin::{HostSignIn, HostSignInError};
use crate::state::AppState;
use crate::token_exchange::ExchangeError;
use crate::web::{ApiError, cors, dpop, rate_limit};

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/v1/host-session", post(host_session))
        .route("/v1/token-exchange", post(token_exchange))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            rate_limit::limit,
        ))
        .layer(cors::any_origin())
}

#[derive(Deserialize)]
struct HostSessionRequest {
    app: String,
    token: String,
}

crate::redacted_debug!(HostSessionRequest {
    show: [app],
    hide: [token]
});

#[derive(Deserialize)]
struct ExchangeRequest {
    app: String,
    id_token: String,
}

crate::redacted_debug!(ExchangeRequest {
    show: [app],
    hide: [id_token]
});

#[derive(Debug, Serialize)]
struct ChatTokenResponse {
    chat_token: String,
    expires_at: i64,
    user: User,
    #[serde(flatten)]
    direct_line: crate::direct_line::DirectLineFields,
}

#[derive(Debug, Serialize)]
struct User {
    id: String,
    name: Option<String>,
    email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email_verified: Option<bool>,
}

/// `POST /v1/host-session`: a host-signed userinfo token for a chat token.
async fn host_session(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<HostSessionRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (app, _) = cors::app_and_origin(&state, &headers, &req.app)
        .inspect_err(|e| state.metrics.host_token(e.code()))?;
    let proof = dpop::for_app(&state, app, &headers, "/v1/host-session", None)?;
    let way = HostSignIn::UserinfoToken(&req.token);
    signed_in(&state, app, way, proof.as_ref()).await
}

/// `POST /v1/token-exchange`: see [`crate::token_exchange`].
async fn token_exchange(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<ExchangeRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (app, _) = cors::app_and_origin(&state, &headers, &req.app)?;
    let proof = dpop::for_app(&state, app, &headers, "/v1/token-exchange", None)?;
    let way = HostSignIn::IdToken(&req.id_token);
    signed_in(&state, app, way, proof.as_ref()).await
}

/// The one call both make, and its answer.
async fn signed_in(
    state: &AppState,
    app: &AppConfig,
    way: HostSignIn<'_>,
    proof: Option<&Proof>,
) -> Result<Response, ApiError> {
    let signed_in = state
        .signin
        .host_sign_in(app, way, proof, crate::time::now())
        .await
        .map_err(refused)?;
    Ok(super::no_store(Json(ChatTokenResponse {
        chat_token: signed_in.minted.chat_token,
        expires_at: signed_in.minted.expires_at,
        user: User {
            id: signed_in.user_id.to_string(),
            name: signed_in.name,
            email: signed_in.email,
            email_verified: signed_in.minted.email_verified,
        },
        direct_line: signed_in.minted.direct_line.into(),
    })))
}

/// A refusal as the answer: each check's own code.
fn refused(e: HostSignInError) -> ApiError {
    let description = e.to_string();
    match e {
        HostSignInError::UserinfoToken(e) => ApiError::unauthorized(e.code(), description),
        HostSignInError::IdToken(e) => match e {
            ExchangeError::NotEnabled => ApiError::Forbidden {
                code: "access_denied",
                description,
            },
            ExchangeError::NoProvider => ApiError::bad_request(description),
            ExchangeError::Unavailable(why) => ApiError::Unavailable {
                description: why.into(),
                retry_after_secs: 5,
            },
            ExchangeError::Invalid(why) => ApiError::unauthorized("invalid_token", why),
            ExchangeError::Expired(why) => ApiError::unauthorized("token_expired", why),
            ExchangeError::Replayed => ApiError::unauthorized("token_replayed", description),
            ExchangeError::Store(e) => e.into(),
        },
        HostSignInError::ProofReplayed => dpop::refused(&crate::dpop::DpopError::Replayed),
        HostSignInError::Store(e) => e.into(),
        HostSignInError::Failed(e) => ApiError::Internal(e.description),
    }
}
