//! The user-token API of the Azure Bot Service token service, served under
//! `/bf/`, so a Bot Framework bot (`botbuilder`'s `UserTokenClient`:
//! `getUserToken`, `signOutUser`, `getTokenStatus`) gets its users' tokens
//! from chatgate by pointing `OAuthUrl` at `{public_url}/bf` and sending its
//! chatgate bot secret as `Authorization: Bearer`.
//!
//! - `userId` is the chatgate user id (the `sub` of the user's chat token),
//!   or, for an app with `[apps.direct_line]`, the user's Direct Line user id
//!   (`activity.from.id` in a conversation whose token chatgate had bound to
//!   the user);
//! - `connectionName` is the bot's app id;
//! - `channelId` is echoed back and otherwise ignored.
//!
//! Tokens come from the same `TokenService` as the bot API (refreshed once,
//! never lost). Sign-in cards, magic codes, token exchange (SSO) and AAD
//! tokens for other resources are not served: chatgate signs users in through
//! widget.js. Those calls answer with the `ErrorResponse` shape botbuilder
//! reads, so the bot sees a clear error rather than a parse failure.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::bot_api::BotAuth;
use crate::domain::{AuditAction, AuditOutcome, UserId};
use crate::events::SignOutReason;
use crate::secret::ExposeSecret as _;
use crate::state::AppState;
use crate::user_tokens::{LookupError, RETRY_AFTER_SECS};

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/bf/api/usertoken/GetToken", get(get_token))
        .route("/bf/api/usertoken/SignOut", delete(sign_out))
        .route("/bf/api/usertoken/GetTokenStatus", get(token_status))
        .route("/bf/api/usertoken/GetAadTokens", post(aad_tokens))
        .route("/bf/api/usertoken/exchange", post(exchange))
        .route("/bf/api/botsignin/GetSignInResource", get(sign_in_resource))
        .route("/bf/api/botsignin/GetSignInUrl", get(sign_in_resource))
}

/// An error in the Bot Framework's shape: `{"error": {"code", "message"}}`.
#[derive(Debug)]
struct BfError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn bf_error(status: StatusCode, code: &'static str, message: impl Into<String>) -> BfError {
    BfError {
        status,
        code,
        message: message.into(),
    }
}

/// A Direct Line user id chatgate gave nobody (or forgot at a sign-out):
/// there is no token for it (`404` with no body, as for a user without one).
const NO_TOKEN: &str = "NoToken";

impl IntoResponse for BfError {
    fn into_response(self) -> Response {
        if self.code == NO_TOKEN {
            return super::no_store(StatusCode::NOT_FOUND);
        }
        let mut response = super::no_store((
            self.status,
            Json(json!({ "error": { "code": self.code, "message": self.message } })),
        ));
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            && let Ok(v) = HeaderValue::from_str(&RETRY_AFTER_SECS.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenQuery {
    user_id: Option<String>,
    connection_name: Option<String>,
    channel_id: Option<String>,
    /// botbuilder's magic code: here, the user's chat token, as proof that
    /// the user is present (`getUserToken(userId, connection, channel, chatToken)`).
    code: Option<String>,
}

crate::redacted_debug!(TokenQuery {
    show: [user_id, connection_name, channel_id],
    hide: [code]
});

/// `GetToken` answers only for a user the request shows to be present: the
/// chat token the widget gave that user, as the magic code (verified, this
/// app's, `sub` = `userId`) — unless the app's channel binds user ids
/// itself (`channel_binds_user_ids`). A bot that passes `activity.from.id`
/// alone, which the page chooses, gets nothing.
fn require_presence(
    state: &AppState,
    app: &crate::config::AppConfig,
    user: &UserId,
    code: Option<&str>,
) -> Result<(), BfError> {
    if app.channel_binds_user_ids {
        return Ok(());
    }
    let refused = |why: String| {
        bf_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "chatgate needs proof that {user} is present: pass the user's chat token as the \
                 magic code (getUserToken(userId, connectionName, channelId, chatToken)), or set \
                 channel_binds_user_ids for an app whose channel binds user ids ({why})"
            ),
        )
    };
    let token = code
        .filter(|c| !c.is_empty())
        .ok_or_else(|| refused("no code".into()))?;
    let claims = state
        .keys
        .verify_for_app(
            token,
            &app.id,
            &app.chat_audience,
            app.binds_dpop(),
            state.config.clock_skew,
        )
        .map_err(|e| {
            refused(format!(
                "the code is not a valid chat token of this app: {e}"
            ))
        })?;
    if claims.sub != user.as_str() {
        return Err(refused("the chat token is another user's".into()));
    }
    Ok(())
}

/// Who `userId` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Named {
    /// A chatgate user id (the chat token's `sub`): the bot must show the
    /// user is present.
    UserId,
    /// The user's Direct Line user id (`dl_…`, `[apps.direct_line]`): Direct
    /// Line put it in `activity.from.id` because the conversation's token is
    /// bound to it — the user is present.
    DirectLineUser,
}

/// The user and connection of a request, checked against the bot's app.
async fn target<'a>(
    bot: &BotAuth,
    state: &'a AppState,
    q: &TokenQuery,
) -> Result<(&'a crate::config::AppConfig, UserId, Named), BfError> {
    let app = bot
        .app(state)
        .map_err(|e| bf_error(StatusCode::FORBIDDEN, "Forbidden", e.to_string()))?;
    let named = q
        .user_id
        .as_deref()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| bf_error(StatusCode::BAD_REQUEST, "BadArgument", "userId is required"))?;
    if let Some(connection) = &q.connection_name
        && connection != app.id.as_str()
    {
        return Err(bf_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!(
                "connectionName {connection:?} is not this bot's app; use {:?}",
                app.id.as_str()
            ),
        ));
    }
    let by_direct_line = state.direct_line.user_of(app, named).await.map_err(|e| {
        tracing::warn!(error = %e, "cannot resolve a Direct Line user id");
        bf_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the database is unavailable; retry",
        )
    })?;
    if let Some(user) = by_direct_line {
        return Ok((app, user, Named::DirectLineUser));
    }
    if app.direct_line.is_some() && crate::direct_line::is_user_id(named) {
        return Err(bf_error(
            StatusCode::NOT_FOUND,
            NO_TOKEN,
            "no user has this Direct Line user id",
        ));
    }
    let user = UserId::parse(named).map_err(|e| {
        bf_error(
            StatusCode::BAD_REQUEST,
            "BadArgument",
            format!("userId must be a chatgate user id (the chat token's sub): {e}"),
        )
    })?;
    Ok((app, user, Named::UserId))
}

/// `GET api/usertoken/GetToken`: `200 {channelId, connectionName, token,
/// expiration}`, or `404` with no body when chatgate holds no usable token
/// (botbuilder then returns no token).
async fn get_token(
    bot: BotAuth,
    State(state): State<AppState>,
    Query(q): Query<TokenQuery>,
) -> Result<Response, BfError> {
    let (app, user, named) = target(&bot, &state, &q).await?;
    let present = match named {
        Named::DirectLineUser => Ok(()),
        Named::UserId => require_presence(&state, app, &user, q.code.as_deref()),
    };
    if let Err(refused) = present {
        let actor = bot.0.actor();
        let (action, outcome) = (AuditAction::TokenRead, AuditOutcome::Refused);
        state
            .tokens
            .audit_read(&app.id, &user, &actor, action, outcome)
            .await;
        return Err(refused);
    }
    let result = state
        .tokens
        .read_for_bot(&app.id, &user, &bot.0.actor())
        .await;
    token_answer(&q, app, result)
}

/// GetToken's answer to a lookup.
fn token_answer(
    q: &TokenQuery,
    app: &crate::config::AppConfig,
    result: Result<crate::user_tokens::FreshToken, LookupError>,
) -> Result<Response, BfError> {
    match result {
        Ok(token) => {
            let expiration = token
                .expires_at
                .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            Ok(super::no_store(Json(json!({
                "channelId": q.channel_id,
                "connectionName": app.id.as_str(),
                "token": token.access_token.expose_secret(),
                "expiration": expiration,
            }))))
        }
        // The user must sign in (again) through the widget.
        Err(LookupError::NotFound(_) | LookupError::ReauthRequired(_)) => {
            Ok(super::no_store(StatusCode::NOT_FOUND))
        }
        Err(LookupError::Unavailable(d)) => Err(bf_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            d,
        )),
        Err(LookupError::Failed(e)) => {
            tracing::error!(error = %e, "Bot Framework token lookup failed");
            Err(bf_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceError",
                "chatgate could not read the token",
            ))
        }
    }
}

/// `DELETE api/usertoken/SignOut`: revokes at the IdP and deletes, like the
/// bot API's `DELETE /v1/users/{id}/token` (`user.signed_out`, reason `bot`).
async fn sign_out(
    bot: BotAuth,
    State(state): State<AppState>,
    Query(q): Query<TokenQuery>,
) -> Result<Json<Value>, BfError> {
    let (app, user) = match target(&bot, &state, &q).await {
        Ok((app, user, _)) => (app, user),
        // Nobody's (any more): nothing to sign out.
        Err(e) if e.code == NO_TOKEN => return Ok(Json(json!({}))),
        Err(e) => return Err(e),
    };
    state
        .tokens
        .sign_out(&app.id, &user, &bot.0.actor(), SignOutReason::Bot)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "Bot Framework sign-out failed");
            bf_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "chatgate could not sign the user out; retry",
            )
        })?;
    Ok(Json(json!({})))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusQuery {
    user_id: Option<String>,
    channel_id: Option<String>,
    include: Option<String>,
}

/// `GET api/usertoken/GetTokenStatus`: one entry, the bot's app.
async fn token_status(
    bot: BotAuth,
    State(state): State<AppState>,
    Query(q): Query<StatusQuery>,
) -> Result<Json<Value>, BfError> {
    let query = TokenQuery {
        user_id: q.user_id.clone(),
        connection_name: None,
        channel_id: q.channel_id.clone(),
        code: None,
    };
    let (app, user, _) = target(&bot, &state, &query).await?;
    let included = q.include.as_deref().is_none_or(|list| {
        list.trim().is_empty() || list.split(',').any(|c| c.trim() == app.id.as_str())
    });
    if !included {
        return Ok(Json(json!([])));
    }
    let status = state
        .tokens
        .status_for_bot(&app.id, &user, &bot.0.actor())
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "Bot Framework token status failed");
            bf_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the database is unavailable; retry",
            )
        })?;
    Ok(Json(json!([{
        "channelId": q.channel_id,
        "connectionName": app.id.as_str(),
        "hasToken": status.is_some_and(|s| !s.needs_reauth),
        "serviceProviderDisplayName": app.provider.as_ref().map(|p| p.as_str()),
    }])))
}

/// Not served: chatgate holds one IdP grant per user and app, not tokens for
/// arbitrary AAD resources.
async fn aad_tokens(_bot: BotAuth, _body: Option<Json<Value>>) -> BfError {
    bf_error(
        StatusCode::BAD_REQUEST,
        "NotSupported",
        "chatgate does not serve GetAadTokens; use GetToken for the app's connection",
    )
}

/// Not served: single sign-on token exchange (Teams SSO). botbuilder's
/// OAuthPrompt answers the channel "unable to exchange token" on this error.
async fn exchange(_bot: BotAuth, _body: Option<Json<Value>>) -> BfError {
    bf_error(
        StatusCode::BAD_REQUEST,
        "NotSupported",
        "chatgate does not serve token exchange; users sign in through widget.js",
    )
}

/// Not served: sign-in cards. Users sign in through widget.js in the host page.
async fn sign_in_resource(_bot: BotAuth) -> BfError {
    bf_error(
        StatusCode::BAD_REQUEST,
        "NotSupported",
        "chatgate does not serve sign-in cards; users sign in through widget.js (ChatGate.signIn / signInWithPopup)",
    )
}
