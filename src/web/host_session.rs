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
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::audit::QueuedEvent;
use crate::chat_token::{ChatSubject, ChatUser, Via};
use crate::config::AppConfig;
use crate::domain::{AuditAction, AuditOutcome, UserId};
use crate::dpop::Proof;
use crate::host_session::{self, HostTokenError, Limits};
use crate::metrics::FlowEvent;
use crate::state::AppState;
use crate::store::AuditEvent;
use crate::token_exchange::{self, ExchangeError};
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
}

#[derive(Debug, Serialize)]
struct User {
    id: String,
    name: Option<String>,
    email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email_verified: Option<bool>,
}

fn token_error(e: &HostTokenError) -> ApiError {
    ApiError::unauthorized(e.code(), e.to_string())
}

/// A successful way in, written directly.
async fn audit_ok(state: &AppState, app: &AppConfig, user: &UserId, action: AuditAction) {
    state
        .store
        .audit(AuditEvent {
            actor: "user",
            app: Some(&app.id),
            user_id: Some(user),
            action,
            outcome: AuditOutcome::Ok,
            detail: None,
        })
        .await;
}

/// A failed attempt, which anyone can cause: through the batched writer.
async fn audit_failed(
    state: &AppState,
    app: &AppConfig,
    action: AuditAction,
    detail: &'static str,
) {
    state
        .audit
        .record(QueuedEvent {
            at: crate::time::now(),
            actor: "user".into(),
            app: Some(app.id.clone()),
            user_id: None,
            action,
            outcome: AuditOutcome::Failed,
            detail: Some(detail),
        })
        .await;
}

/// Mints the chat token; for a DPoP app, bound to the proof's key (the
/// proof is spent here, after the request's token was accepted).
async fn mint(
    state: &AppState,
    app: &AppConfig,
    user: &ChatUser<'_>,
    proof: Option<&Proof>,
) -> Result<Response, ApiError> {
    if let Some(proof) = proof {
        dpop::spend(state, proof).await?;
    }
    let (chat_token, claims) = state
        .keys
        .issuer()
        .mint(
            &ChatSubject {
                app: &app.id,
                audience: &app.chat_audience,
                user,
                jkt: proof.map(|p| &p.jkt),
            },
            crate::time::now(),
        )
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut response = Json(ChatTokenResponse {
        chat_token,
        expires_at: claims.exp,
        user: User {
            id: user.user_id.to_string(),
            name: user.name.map(str::to_string),
            email: user.email.map(str::to_string),
            email_verified: claims.email_verified,
        },
    })
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
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
    let limits = Limits {
        clock_skew: state.config.clock_skew,
        max_ttl: state.config.max_host_token_ttl,
    };
    match host_session::verify(&state.store, app, &req.token, limits, crate::time::now()).await? {
        Ok(user) => {
            state.metrics.host_token("ok");
            audit_ok(&state, app, &user.user_id, AuditAction::HostSession).await;
            mint(
                &state,
                app,
                &ChatUser {
                    user_id: &user.user_id,
                    via: Via::Host,
                    auth_time: user.issued_at,
                    name: user.name.as_deref(),
                    email: user.email.as_deref(),
                    email_verified: user.email_verified,
                },
                proof.as_ref(),
            )
            .await
        }
        Err(e) => {
            state.metrics.host_token(e.code());
            audit_failed(&state, app, AuditAction::HostSession, e.code()).await;
            Err(token_error(&e))
        }
    }
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
    let now = crate::time::now();
    let exchanged = token_exchange::exchange(
        &state.store,
        &state.providers,
        app,
        &req.id_token,
        state.config.max_id_token_age,
        state.config.clock_skew,
        now,
    )
    .await;
    let user = match exchanged {
        Ok(user) => user,
        Err(e) => {
            if !matches!(e, ExchangeError::NotEnabled | ExchangeError::NoProvider) {
                state.metrics.flow(FlowEvent::Failed, "token_exchange");
                audit_failed(&state, app, AuditAction::TokenExchange, e.audit_detail()).await;
            }
            return Err(match e {
                ExchangeError::NotEnabled => ApiError::Forbidden {
                    code: "access_denied",
                    description: e.to_string(),
                },
                ExchangeError::NoProvider => ApiError::bad_request(e.to_string()),
                ExchangeError::Unavailable(why) => ApiError::Unavailable {
                    description: why.into(),
                    retry_after_secs: 5,
                },
                ExchangeError::Invalid(why) => ApiError::unauthorized("invalid_token", why),
                ExchangeError::Expired(why) => ApiError::unauthorized("token_expired", why),
                ExchangeError::Replayed => ApiError::unauthorized("token_replayed", e.to_string()),
                ExchangeError::Store(e) => e.into(),
            });
        }
    };
    state.metrics.flow(FlowEvent::Completed, "token_exchange");
    audit_ok(&state, app, &user.user_id, AuditAction::TokenExchange).await;
    mint(
        &state,
        app,
        &ChatUser {
            user_id: &user.user_id,
            via: Via::IdToken,
            auth_time: user.auth_time.unwrap_or(now),
            name: user.name.as_deref(),
            email: user.email.as_deref(),
            email_verified: user.email_verified,
        },
        proof.as_ref(),
    )
    .await
}
