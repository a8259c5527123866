//! The server-side authorization-code flow (DESIGN.md, "The three ways in", 1):
//! start a flow, finish it at the callback, renew from chatgate's session, and
//! hand a popup sign-in over to the embedding page's cookie partition.
//!
//! HTTP concerns (query parsing, cookies, pages) live in `web::signin`; this
//! module decides what is valid and what is stored.

use std::fmt;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::app::AppState;
use crate::audit::QueuedEvent;
use crate::chat_token::{ChatSubject, ChatUser, Via};
use crate::config::AppConfig;
use crate::domain::{AppId, Origin, UserId};
use crate::oidc::{AuthorizationRequest, IdTokenCheck, IssParameter, OidcError};
use crate::secret::{random_token, sha256_hex};
use crate::store::{AuditEvent, NewFlow, retry_transient};
use crate::vault::{Aad, TokenSet};
use crate::web::session::SessionSignIn;

/// How long one sign-in request rides a database blip out before it answers
/// `temporarily_unavailable` (well within the widget's 10 s timeout).
const DB_RETRY_BUDGET: std::time::Duration = std::time::Duration::from_secs(3);

/// Where the result goes: the hidden iframe's parent, or the popup's opener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Silent,
    Popup,
}

impl Mode {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "silent" => Some(Self::Silent),
            "popup" => Some(Self::Popup),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Silent => "silent",
            Self::Popup => "popup",
        }
    }
}

/// An error the widget learns about through `chatgate:error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowError {
    /// The IdP's OAuth error code, or one of `invalid_request`, `access_denied`,
    /// `server_error`, `temporarily_unavailable`.
    pub code: String,
    pub description: String,
}

impl FlowError {
    pub fn new(code: &str, description: impl Into<String>) -> Self {
        Self {
            code: code.to_string(),
            description: description.into(),
        }
    }

    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new("invalid_request", description)
    }

    pub fn server_error() -> Self {
        Self::new(
            "server_error",
            "chatgate could not complete the sign-in; the error has been logged",
        )
    }

    pub fn unavailable(description: impl Into<String>) -> Self {
        Self::new("temporarily_unavailable", description)
    }

    /// A failed database write: `temporarily_unavailable` when the database is
    /// down (the widget may retry), else `server_error`.
    fn database(transient: bool) -> Self {
        if transient {
            Self::unavailable("chatgate's database is unavailable; try again shortly")
        } else {
            Self::server_error()
        }
    }

    /// An error the IdP sent to the callback. Its code is passed on when it looks
    /// like an OAuth error code, its description trimmed to printable text.
    pub fn from_idp(code: &str, description: Option<&str>) -> Self {
        let code_ok = !code.is_empty()
            && code.len() <= 64
            && code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        let description: String = description
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_control())
            .take(300)
            .collect();
        Self {
            code: if code_ok {
                code.to_string()
            } else {
                "server_error".into()
            },
            description,
        }
    }
}

impl fmt::Display for FlowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.description)
    }
}

impl From<OidcError> for FlowError {
    fn from(e: OidcError) -> Self {
        match e {
            OidcError::Unavailable(_) => {
                Self::unavailable("the identity provider is not reachable; try again")
            }
            OidcError::Idp { code, description } => Self::from_idp(&code, description.as_deref()),
            OidcError::Discovery(_)
            | OidcError::InvalidIdToken(_)
            | OidcError::UnknownKey
            | OidcError::ExpiredIdToken(_) => Self::server_error(),
        }
    }
}

/// A validated request to start a flow.
#[derive(Debug)]
pub struct StartRequest<'a> {
    pub app: &'a AppConfig,
    pub origin: &'a Origin,
    pub mode: Mode,
    pub login_hint: Option<&'a str>,
    pub domain_hint: Option<&'a str>,
    /// `login`, `consent` or `select_account` (popup only).
    pub prompt: Option<&'a str>,
}

fn flow_aad<'a>(row: &'a [&'a str; 1], column: &'a str) -> Aad<'a> {
    Aad {
        table: "pending_flows",
        row,
        column,
    }
}

fn redirect_uri(state: &AppState) -> String {
    state.config.public_url.join("/v1/callback")
}

/// Creates the pending flow and returns the IdP authorization URL.
/// `binding` is the browser-binding cookie value.
pub async fn start(
    state: &AppState,
    req: StartRequest<'_>,
    binding: &str,
    now: i64,
) -> Result<Url, FlowError> {
    let Some(provider_id) = &req.app.provider else {
        return Err(FlowError::invalid_request(
            "this app has no identity provider; use a host-signed token (POST /v1/host-session)",
        ));
    };
    let provider = state.providers.get(provider_id.as_str()).ok_or_else(|| {
        FlowError::unavailable("the identity provider is still being contacted; try again shortly")
    })?;

    let flow_state = random_token::<32>();
    let nonce = random_token::<32>();
    let verifier = random_token::<32>(); // 43 characters: a valid PKCE verifier
    let state_hash = sha256_hex(flow_state.as_bytes());
    let row = [state_hash.as_str()];
    let keys = state.vault.keys();
    let prompt = match req.mode {
        Mode::Silent => Some("none"),
        Mode::Popup => req.prompt,
    };
    let url = provider
        .authorization_url(&AuthorizationRequest {
            redirect_uri: &redirect_uri(state),
            scopes: &req.app.scopes,
            state: &flow_state,
            nonce: &nonce,
            pkce_verifier: &verifier,
            prompt,
            login_hint: req.login_hint,
            domain_hint: req.domain_hint,
        })
        .map_err(FlowError::from)?;
    let binding_hash = sha256_hex(binding.as_bytes());
    let sealed_nonce = keys.seal(&flow_aad(&row, "nonce"), nonce.as_bytes());
    let sealed_verifier = keys.seal(&flow_aad(&row, "pkce_verifier"), verifier.as_bytes());
    retry_transient(DB_RETRY_BUDGET, || {
        state.store.insert_flow(NewFlow {
            state_hash: &state_hash,
            binding_hash: &binding_hash,
            app: req.app.id.as_str(),
            provider: provider_id.as_str(),
            origin: req.origin.as_str(),
            mode: req.mode.as_str(),
            nonce: sealed_nonce.clone(),
            pkce_verifier: sealed_verifier.clone(),
            created_at: now,
            expires_at: now + state.config.flow_ttl.as_secs() as i64,
        })
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "cannot store a pending flow");
        FlowError::database(e.is_transient())
    })?;
    state.metrics.flow("started", req.mode.as_str());
    Ok(url)
}

/// The query of `GET /v1/callback`.
#[derive(Debug, Default, Deserialize)]
pub struct CallbackParams {
    pub state: Option<String>,
    pub code: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
    pub iss: Option<String>,
}

/// The flow a callback belongs to: where its result goes.
#[derive(Debug, Clone)]
pub struct FlowTarget {
    pub app: AppId,
    pub origin: Origin,
    pub mode: Mode,
}

/// Why a callback failed.
#[derive(Debug)]
pub enum CallbackFailure {
    /// Not tied to any flow this browser started: nothing may be posted.
    Untied(&'static str),
    /// Tied to a flow: the error is posted to the flow's origin.
    Flow {
        target: FlowTarget,
        error: FlowError,
    },
}

/// A finished sign-in, stored in the vault.
#[derive(Debug)]
pub struct Completed {
    pub target: FlowTarget,
    pub signin: SessionSignIn,
}

/// Finishes a flow: single-use state bound to this browser, `iss` (RFC 9207),
/// code exchange with the PKCE verifier, ID-token validation, and the vault
/// write. Nothing is stored unless every check passed.
pub async fn finish(
    state: &AppState,
    params: CallbackParams,
    bindings: &[String],
    now: i64,
) -> Result<Completed, CallbackFailure> {
    let Some(flow_state) = params
        .state
        .as_deref()
        .filter(|s| !s.is_empty() && s.len() <= 512)
    else {
        return Err(CallbackFailure::Untied(
            "The sign-in response has no state.",
        ));
    };
    let state_hash = sha256_hex(flow_state.as_bytes());
    let mut flow = None;
    for binding in bindings {
        let binding_hash = sha256_hex(binding.as_bytes());
        let taken = retry_transient(DB_RETRY_BUDGET, || {
            state.store.take_flow(&state_hash, &binding_hash)
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot read pending flows");
            CallbackFailure::Untied(
                "chatgate's database is unavailable, so the sign-in could not be finished; \
                     close this window and try again.",
            )
        })?;
        if taken.is_some() {
            flow = taken;
            break;
        }
    }
    let Some(flow) = flow else {
        state.metrics.flow("failed", "unknown_state");
        return Err(CallbackFailure::Untied(
            "This sign-in is unknown, was already used, or was started in another browser.",
        ));
    };
    let target = match (
        AppId::parse(&flow.app),
        Origin::parse(&flow.origin),
        Mode::parse(&flow.mode),
    ) {
        (Ok(app), Ok(origin), Some(mode)) => FlowTarget { app, origin, mode },
        _ => return Err(CallbackFailure::Untied("The stored sign-in is damaged.")),
    };
    let fail = |error: FlowError| {
        state.metrics.flow("failed", &error.code);
        CallbackFailure::Flow {
            target: target.clone(),
            error,
        }
    };
    if flow.expires_at <= now {
        return Err(fail(FlowError::invalid_request(
            "the sign-in took too long; start again",
        )));
    }
    let Some(app) = state
        .config
        .app(target.app.as_str())
        .filter(|a| a.allows_origin(&target.origin))
    else {
        // The configuration changed since the flow started: the origin can no
        // longer be trusted with a message.
        return Err(CallbackFailure::Untied(
            "This app or origin is no longer configured.",
        ));
    };
    let Some(provider) = state.providers.get(&flow.provider) else {
        return Err(fail(FlowError::unavailable(
            "the identity provider is not loaded; try again",
        )));
    };

    // RFC 9207: an authorization response from another issuer is a mix-up attack.
    let another_issuer = || {
        fail(FlowError::invalid_request(
            "the authorization response names another issuer",
        ))
    };
    let iss_to_match = match params.iss.as_deref() {
        Some(iss) => match provider.check_iss_parameter(iss) {
            IssParameter::Matches => None,
            IssParameter::IfIdTokenIssuer => Some(iss),
            IssParameter::Mismatch => return Err(another_issuer()),
        },
        None if provider.sends_iss_parameter() => {
            return Err(fail(FlowError::invalid_request(
                "the authorization response lacks the iss parameter its issuer promises",
            )));
        }
        None => None,
    };
    if let Some(code) = params.error.as_deref() {
        let error = FlowError::from_idp(code, params.error_description.as_deref());
        audit_failure(state, &target, &error).await;
        return Err(fail(error));
    }
    let Some(code) = params.code.as_deref().filter(|c| !c.is_empty()) else {
        return Err(fail(FlowError::invalid_request(
            "the authorization response has neither code nor error",
        )));
    };

    let row = [state_hash.as_str()];
    let keys = state.vault.keys();
    let opened = keys
        .open(&flow_aad(&row, "nonce"), &flow.nonce)
        .and_then(|n| {
            keys.open(&flow_aad(&row, "pkce_verifier"), &flow.pkce_verifier)
                .map(|v| (n, v))
        });
    let (nonce, verifier) = match opened {
        Ok((n, v)) => (
            String::from_utf8_lossy(n.expose_secret()).into_owned(),
            String::from_utf8_lossy(v.expose_secret()).into_owned(),
        ),
        Err(e) => {
            tracing::error!(error = %e, "cannot open a pending flow's secrets");
            return Err(fail(FlowError::server_error()));
        }
    };

    let tokens = provider
        .exchange_code(code, &verifier, &redirect_uri(state))
        .await
        .map_err(|e| {
            tracing::warn!(provider = %flow.provider, error = %e, "code exchange failed");
            fail(e.into())
        })?;
    let Some(id_token) = &tokens.id_token else {
        tracing::warn!(provider = %flow.provider, "token response without an ID token");
        return Err(fail(FlowError::server_error()));
    };
    let mut identity = provider
        .verify_id_token(
            id_token,
            &IdTokenCheck::ours(Some(&nonce)),
            now,
            state.config.clock_skew,
        )
        .await
        .map_err(|e| {
            tracing::warn!(provider = %flow.provider, error = %e, "ID token rejected");
            fail(e.into())
        })?;
    if let Some(iss) = iss_to_match
        && iss != identity.issuer
    {
        return Err(another_issuer());
    }
    provider
        .complete_profile(&mut identity, &tokens.access_token)
        .await;
    let user_id = UserId::new(&provider.config().id, &identity.subject).map_err(|e| {
        tracing::warn!(provider = %flow.provider, error = %e, "the ID token's subject is not a usable user id");
        fail(FlowError::server_error())
    })?;

    let token_set = TokenSet {
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        token_type: tokens.token_type,
        scope: tokens.scope.unwrap_or_else(|| app.scopes.join(" ")),
        expires_at: tokens.expires_in.map(|d| now + d.as_secs() as i64),
    };
    // A blip is ridden out; a longer outage fails the sign-in as a whole
    // (nothing half-written: the vault write is one statement) and the widget
    // learns it may try again.
    if let Err(e) = retry_transient(DB_RETRY_BUDGET, || {
        state
            .vault
            .save(&app.id, &user_id, &provider.config().id, &token_set, now)
    })
    .await
    {
        state.metrics.vault_op("write", "error");
        tracing::error!(error = %e, "cannot store tokens in the vault");
        return Err(fail(FlowError::database(e.is_transient())));
    }
    state.metrics.vault_op("write", "ok");
    state
        .store
        .audit(AuditEvent {
            actor: "user",
            app: Some(app.id.as_str()),
            user_id: Some(user_id.as_str()),
            action: "signin",
            outcome: "ok",
            detail: Some(target.mode.as_str()),
        })
        .await;
    state.metrics.flow("completed", target.mode.as_str());
    Ok(Completed {
        target,
        signin: SessionSignIn {
            user_id: user_id.to_string(),
            name: identity.name.or(identity.preferred_username),
            email: identity.email,
            email_verified: identity.email_verified,
            auth_time: identity.auth_time.unwrap_or(now),
            signed_in_at: now,
        },
    })
}

/// A failed sign-in goes through the batched writer: anyone can cause one.
async fn audit_failure(state: &AppState, target: &FlowTarget, error: &FlowError) {
    state
        .audit
        .record(QueuedEvent {
            at: crate::time::now(),
            actor: "user".into(),
            app: Some(target.app.to_string()),
            user_id: None,
            action: "signin",
            outcome: "failed",
            detail: Some(
                crate::metrics::FLOW_REASONS
                    .iter()
                    .find(|r| **r == error.code)
                    .copied()
                    .unwrap_or("other"),
            ),
        })
        .await;
}

/// A minted chat token.
#[derive(Debug, Clone)]
pub struct Minted {
    pub chat_token: String,
    pub expires_at: i64,
}

/// Mints the chat token of a signed-in user.
pub fn mint(
    state: &AppState,
    app: &AppConfig,
    signin: &SessionSignIn,
    now: i64,
) -> Result<Minted, FlowError> {
    let user_id = UserId::parse(signin.user_id.clone()).map_err(|_| FlowError::server_error())?;
    let (chat_token, claims) = state
        .keys
        .issuer()
        .mint(
            &ChatSubject {
                app: &app.id,
                audience: &app.chat_audience,
                user: &ChatUser {
                    user_id: &user_id,
                    via: Via::Oidc,
                    auth_time: signin.auth_time,
                    name: signin.name.as_deref(),
                    email: signin.email.as_deref(),
                    email_verified: signin.email_verified,
                },
            },
            now,
        )
        .map_err(|e| {
            tracing::error!(error = %e, "cannot sign a chat token");
            FlowError::server_error()
        })?;
    Ok(Minted {
        chat_token,
        expires_at: claims.exp,
    })
}

/// How long a session ticket may wait to be redeemed.
const TICKET_TTL: i64 = 60;

/// After a popup sign-in, a one-time ticket the widget redeems from the host
/// page (`POST /v1/session`), so chatgate's session also exists in the host
/// site's cookie partition and later silent sign-ins need no IdP round trip,
/// even where the browser blocks third-party cookies.
pub async fn issue_ticket(
    state: &AppState,
    target: &FlowTarget,
    signin: &SessionSignIn,
    now: i64,
) -> Result<String, FlowError> {
    let ticket = random_token::<32>();
    let json = serde_json::to_vec(signin).map_err(|_| FlowError::server_error())?;
    state
        .store
        .insert_session_ticket(
            &sha256_hex(ticket.as_bytes()),
            target.app.as_str(),
            target.origin.as_str(),
            &json,
            now + TICKET_TTL,
        )
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot store a session ticket");
            FlowError::server_error()
        })?;
    Ok(ticket)
}

/// Redeems a ticket for `(app, origin)`; `None` when unknown, used or expired.
pub async fn redeem_ticket(
    state: &AppState,
    app: &AppId,
    origin: &Origin,
    ticket: &str,
    now: i64,
) -> Result<Option<SessionSignIn>, crate::store::StoreError> {
    let json = state
        .store
        .take_session_ticket(
            &sha256_hex(ticket.as_bytes()),
            app.as_str(),
            origin.as_str(),
            now,
        )
        .await?;
    Ok(json.and_then(|j| serde_json::from_slice(&j).ok()))
}
