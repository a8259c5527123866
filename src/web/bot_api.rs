//! The bot API (docs/reference.md, "Bot API"): a bot looks a user's fresh access token
//! up by user id. Routes and the OpenAPI document served at
//! `/v1/openapi.json` come from the same annotated handlers, so they cannot
//! drift apart.

use crate::events::SignOutReason;
use crate::secret::{ExposeSecret as _, SecretString};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::bots::{Bot, Refused};
use crate::chat_token::ChatClaims;
use crate::config::AppConfig;
use crate::domain::UserId;
use crate::dpop;
use crate::state::AppState;
use crate::user_tokens::{LookupError, RETRY_AFTER_SECS};
use crate::web::ApiError;
use crate::web::error::ErrorBody;
use crate::web::rate_limit::too_many_requests;

/// The bot behind `Authorization: Bearer <bot secret>`.
#[derive(Debug, Clone)]
pub struct BotAuth(pub Bot);

impl FromRequestParts<AppState> for BotAuth {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        // Failed attempts are limited per client address; a client that used
        // its budget up is answered 429 before its secret is looked up.
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| state.rate_limits.client_ip(peer.ip(), &parts.headers));
        if let Some(ip) = ip
            && let Err(wait) = state.rate_limits.auth_allowed(ip)
        {
            state.metrics.rate_limited("bot_auth");
            return Err(too_many_requests(wait));
        }
        let refused = |e: ApiError| {
            if let Some(ip) = ip
                && let Err(wait) = state.rate_limits.auth_failed(ip)
            {
                state.metrics.rate_limited("bot_auth");
                return too_many_requests(wait);
            }
            e.into_response()
        };
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(refused(ApiError::MissingCredentials));
        };
        let Some(secret) = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, secret)| secret.trim())
        else {
            return Err(refused(ApiError::unauthorized(
                "invalid_token",
                "use Authorization: Bearer <bot secret>",
            )));
        };
        match state
            .bots
            .authenticate(secret)
            .await
            .map_err(|e| ApiError::from(e).into_response())?
        {
            Ok(bot) => Ok(Self(bot)),
            Err(Refused::Unknown) => Err(refused(ApiError::unauthorized(
                "invalid_token",
                "unknown bot secret",
            ))),
            Err(Refused::Revoked) => Err(refused(ApiError::unauthorized(
                "invalid_token",
                "this bot secret was revoked",
            ))),
        }
    }
}

impl BotAuth {
    pub(super) fn app<'a>(&self, state: &'a AppState) -> Result<&'a AppConfig, ApiError> {
        state
            .config
            .app(self.0.app.as_str())
            .ok_or_else(|| ApiError::Forbidden {
                code: "access_denied",
                description: format!("the bot's app {} is no longer configured", self.0.app),
            })
    }
}

fn parse_user(user_id: String) -> Result<UserId, ApiError> {
    UserId::parse(user_id).map_err(|e| ApiError::bad_request(format!("user_id {e}")))
}

/// A user's access token, fresh for at least `refresh_skew`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccessTokenResponse {
    /// The IdP access token (written into the answer straight from the
    /// secret: no other copy of it is made).
    #[serde(serialize_with = "expose")]
    #[schema(value_type = String)]
    pub access_token: SecretString,
    /// Usually `Bearer`.
    pub token_type: String,
    /// Unix seconds; `null` when the IdP did not say.
    pub expires_at: Option<i64>,
    /// Space-separated scopes granted.
    pub scope: String,
}

fn expose<S: serde::Serializer>(secret: &SecretString, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(secret.expose_secret())
}

/// What chatgate holds for a user, without secrets.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserStatus {
    pub user_id: String,
    /// chatgate holds usable tokens for this user.
    pub signed_in: bool,
    /// Expiry of the stored access token (Unix seconds).
    pub expires_at: Option<i64>,
    pub scope: Option<String>,
    /// Last change of the stored tokens (Unix seconds).
    pub updated_at: Option<i64>,
    /// The IdP refused the refresh token: the user must sign in again.
    pub needs_reauth: bool,
}

#[derive(Deserialize, ToSchema)]
pub struct VerifyRequest {
    /// A chat token.
    pub token: String,
    /// A DPoP proof the browser made for the request it presented the token
    /// with (`ChatGate.proof`); required for a token with `cnf`.
    #[serde(default)]
    pub proof: Option<String>,
    /// That request's method (`POST`) and URL, which the proof must name.
    #[serde(default)]
    pub htm: Option<String>,
    #[serde(default)]
    pub htu: Option<String>,
}

crate::redacted_debug!(VerifyRequest {
    show: [htm, htu],
    hide: [token, proof]
});

/// A user's fresh access token.
///
/// Served from the vault while it is valid for longer than `refresh_skew`, else
/// refreshed at the IdP first — once, however many lookups arrive at the same
/// time on however many replicas.
#[utoipa::path(
    get,
    path = "/v1/users/{user_id}/token",
    tag = "bot",
    params(("user_id" = String, Path, description = "chatgate user id, e.g. `entra:00000000-...`")),
    responses(
        (status = 200, description = "The access token", body = AccessTokenResponse),
        (status = 401, description = "`invalid_token`: bad bot secret; `reauth_required`: the IdP refused the refresh token, the user must sign in again", body = ErrorBody),
        (status = 404, description = "`not_found`: no token for this user in the bot's app", body = ErrorBody),
        (status = 503, description = "`temporarily_unavailable`: the IdP is unreachable and the stored token expired; see `Retry-After`", body = ErrorBody),
    ),
    security(("bot_secret" = []))
)]
async fn get_token(
    bot: BotAuth,
    State(state): State<AppState>,
    Path(user_id): Path<String>,
) -> Result<Response, ApiError> {
    let app = bot.app(&state)?;
    let user = parse_user(user_id)?;
    let result = state
        .tokens
        .read_for_bot(&app.id, &user, &bot.0.actor())
        .await;
    let token = result.map_err(|e| match e {
        LookupError::NotFound(d) => ApiError::NotFound(d),
        LookupError::ReauthRequired(d) => ApiError::unauthorized("reauth_required", d),
        LookupError::Unavailable(d) => ApiError::Unavailable {
            description: d,
            retry_after_secs: RETRY_AFTER_SECS,
        },
        LookupError::Failed(e) => ApiError::Internal(e.to_string()),
    })?;
    let mut response = Json(AccessTokenResponse {
        access_token: token.access_token,
        token_type: token.token_type,
        expires_at: token.expires_at,
        scope: token.scope,
    })
    .into_response();
    no_store(&mut response);
    Ok(response)
}

fn no_store(response: &mut Response) {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// Signs the user out: revokes the refresh token (then the access token) at the
/// IdP when it has a revocation endpoint, and deletes the vault entry.
/// Idempotent.
#[utoipa::path(
    delete,
    path = "/v1/users/{user_id}/token",
    tag = "bot",
    params(("user_id" = String, Path, description = "chatgate user id")),
    responses(
        (status = 204, description = "Signed out (or was not signed in)"),
        (status = 401, description = "Bad bot secret", body = ErrorBody),
    ),
    security(("bot_secret" = []))
)]
async fn delete_token(
    bot: BotAuth,
    State(state): State<AppState>,
    Path(user_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let app = bot.app(&state)?;
    let user = parse_user(user_id)?;
    state
        .tokens
        .sign_out(&app.id, &user, &bot.0.actor(), SignOutReason::Bot)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What chatgate holds for a user, without any secret.
#[utoipa::path(
    get,
    path = "/v1/users/{user_id}",
    tag = "bot",
    params(("user_id" = String, Path, description = "chatgate user id")),
    responses(
        (status = 200, description = "Status (`signed_in: false` when chatgate holds nothing)", body = UserStatus),
        (status = 401, description = "Bad bot secret", body = ErrorBody),
    ),
    security(("bot_secret" = []))
)]
async fn user_status(
    bot: BotAuth,
    State(state): State<AppState>,
    Path(user_id): Path<String>,
) -> Result<Json<UserStatus>, ApiError> {
    let app = bot.app(&state)?;
    let user = parse_user(user_id)?;
    let status = state
        .tokens
        .status_for_bot(&app.id, &user, &bot.0.actor())
        .await?;
    Ok(Json(match status {
        Some(grant) => UserStatus {
            user_id: user.to_string(),
            signed_in: !grant.needs_reauth,
            expires_at: grant.access_expires_at,
            scope: Some(grant.scope),
            updated_at: Some(grant.updated_at),
            needs_reauth: grant.needs_reauth,
        },
        None => UserStatus {
            user_id: user.to_string(),
            signed_in: false,
            expires_at: None,
            scope: None,
            updated_at: None,
            needs_reauth: false,
        },
    }))
}

/// Verifies a chat token issued for the bot's app and returns its claims, for
/// bots that prefer not to verify locally against the JWKS.
#[utoipa::path(
    post,
    path = "/v1/chat-tokens/verify",
    tag = "bot",
    request_body = VerifyRequest,
    responses(
        (status = 200, description = "The verified claims", body = ChatClaims),
        (status = 401, description = "`invalid_token`: bad bot secret, or a chat token that does not verify; `invalid_dpop_proof`: a token bound to a key (`cnf`) without a valid, unused proof of that key", body = ErrorBody),
    ),
    security(("bot_secret" = []))
)]
async fn verify_chat_token(
    bot: BotAuth,
    State(state): State<AppState>,
    body: Result<Json<VerifyRequest>, JsonRejection>,
) -> Result<Json<ChatClaims>, ApiError> {
    let app = bot.app(&state)?;
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let claims = state
        .keys
        .verify_for_app(
            &req.token,
            &app.id,
            &app.chat_audience,
            app.binds_dpop(),
            state.config.clock_skew,
        )
        .map_err(|e| ApiError::unauthorized("invalid_token", e.to_string()))?;
    if let Some(cnf) = &claims.cnf {
        check_proof(&state, &req, &cnf.jkt).await?;
    }
    Ok(Json(claims))
}

/// A bound token is not a bearer token: the browser must have signed a
/// proof of its key for the request it came with, naming this token (`ath`).
async fn check_proof(state: &AppState, req: &VerifyRequest, jkt: &str) -> Result<(), ApiError> {
    let refused = |why: String| ApiError::unauthorized("invalid_dpop_proof", why);
    let (Some(proof), Some(htm), Some(htu)) = (&req.proof, &req.htm, &req.htu) else {
        return Err(refused(
            "the chat token is bound to a browser key (cnf): send proof, htm and htu".into(),
        ));
    };
    let proof = dpop::verify(
        proof,
        &dpop::Expected {
            htm,
            htu,
            access_token: Some(&req.token),
            now: crate::time::now(),
            clock_skew: state.config.clock_skew,
        },
    )
    .map_err(|e| refused(e.to_string()))?;
    if proof.jkt.as_str() != jkt {
        return Err(refused(dpop::DpopError::WrongKey.to_string()));
    }
    crate::web::dpop::spend(state, &proof).await
}

struct BotSecurity;

impl Modify for BotSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bot_secret",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A bot secret (`cgb_...`) from `chatgate bots create --app ID`",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "chatgate bot API",
        description = "Bots look the fresh IdP access token of a signed-in user up by user id. \
            Errors are JSON `{\"error\", \"error_description\"}`."
    ),
    modifiers(&BotSecurity),
    tags((name = "bot", description = "For bots, authenticated by their bot secret"))
)]
struct BotApiDoc;

/// The bot API routes and `GET /v1/openapi.json`.
pub fn router() -> Router<AppState> {
    let (router, mut api) = OpenApiRouter::with_openapi(BotApiDoc::openapi())
        .routes(routes!(get_token, delete_token))
        .routes(routes!(user_status))
        .routes(routes!(verify_chat_token))
        .split_for_parts();
    api.info.version = env!("CARGO_PKG_VERSION").to_string();
    let spec = Arc::new(api.to_json().expect("the OpenAPI document serializes"));
    router.route(
        "/v1/openapi.json",
        axum::routing::get(move || {
            let spec = spec.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    (*spec).clone(),
                )
            }
        }),
    )
}
