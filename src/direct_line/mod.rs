//! Direct Line tokens bound to the verified user (`[apps.direct_line]`): the
//! Bot Framework channel Web Chat talks to. After a sign-in chatgate asks
//! Direct Line 3.0 (`POST /v3/directline/tokens/generate`, with the channel's
//! secret) for a token whose user id is the signed-in user's Direct Line user
//! id and whose trusted origins are the app's origins; the page hands it to
//! `WebChat.createDirectLine`. With Direct Line's Enhanced authentication on,
//! every activity of that conversation reaches the bot with that user id as
//! `from.id`, which `/bf` maps back to the user (the proof `GetToken` wants).
//!
//! The Direct Line user id is `dl_` (the prefix Direct Line reserves for
//! bound ids) and 128 random bits, made at the user's first Direct Line
//! token, kept until they sign out: stable for the bot, unguessable from the
//! user's `sub`, and never the IdP's identifier (Direct Line and the bot's
//! transcripts never see it).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{AppConfig, DirectLineConfig};
use crate::domain::UserId;
use crate::secret::{ExposeSecret as _, SecretString};
use crate::store::{Store, StoreError};

/// How long a sign-in waits for Direct Line before it answers without a
/// Direct Line token (the chat token still comes).
const TIMEOUT: Duration = Duration::from_secs(4);
/// The prefix Direct Line reserves for user ids bound to a token.
pub const USER_ID_PREFIX: &str = "dl_";
/// Largest Direct Line answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A Direct Line token for one user, as the success message carries it.
#[derive(Clone, Serialize)]
pub struct DirectLineGrant {
    /// For `WebChat.createDirectLine({ token, domain })`.
    #[serde(serialize_with = "expose")]
    pub token: SecretString,
    pub conversation_id: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// The Direct Line 3.0 base URL (`{endpoint}/v3/directline`), Web Chat's
    /// `domain` option.
    pub domain: String,
    /// The user id the token is bound to (`activity.from.id` at the bot).
    pub user_id: String,
}

fn expose<S: serde::Serializer>(token: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(token.expose_secret())
}

impl std::fmt::Debug for DirectLineGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectLineGrant")
            .field("token", &"[REDACTED]")
            .field("conversation_id", &self.conversation_id)
            .field("expires_at", &self.expires_at)
            .field("domain", &self.domain)
            .field("user_id", &self.user_id)
            .finish()
    }
}

/// Why no Direct Line token came with a sign-in (the chat token did).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{error}: {error_description}")]
pub struct DirectLineFailure {
    /// `direct_line_unavailable` (unreachable, 5xx, 429, timeout: try again)
    /// or `direct_line_refused` (Direct Line said no: the secret, the
    /// channel's settings).
    pub error: &'static str,
    pub error_description: String,
}

impl DirectLineFailure {
    fn unavailable(description: impl Into<String>) -> Self {
        Self {
            error: "direct_line_unavailable",
            error_description: description.into(),
        }
    }

    fn refused(description: impl Into<String>) -> Self {
        Self {
            error: "direct_line_refused",
            error_description: description.into(),
        }
    }
}

/// What a sign-in got from Direct Line.
pub type DirectLineOutcome = Result<DirectLineGrant, DirectLineFailure>;

/// A sign-in answer's Direct Line fields: `direct_line` or
/// `direct_line_error`, neither for an app without Direct Line (or a renewal
/// that did not ask).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DirectLineFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_line: Option<DirectLineGrant>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_line_error: Option<DirectLineFailure>,
}

impl From<Option<DirectLineOutcome>> for DirectLineFields {
    fn from(outcome: Option<DirectLineOutcome>) -> Self {
        match outcome {
            None => Self::default(),
            Some(Ok(grant)) => Self {
                direct_line: Some(grant),
                direct_line_error: None,
            },
            Some(Err(failure)) => Self {
                direct_line: None,
                direct_line_error: Some(failure),
            },
        }
    }
}

/// Direct Line 3.0's answer to `tokens/generate`.
#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(rename = "conversationId")]
    conversation_id: String,
    token: String,
    expires_in: Option<i64>,
}

/// Asks Direct Line for tokens bound to users; owns `direct_line_users`.
#[derive(Debug, Clone)]
pub struct DirectLine {
    store: Store,
    http: reqwest::Client,
}

impl DirectLine {
    /// `http` trusts the system roots and `idp_ca_file`, follows no redirect.
    pub fn new(store: Store, http: reqwest::Client) -> Self {
        Self { store, http }
    }

    /// A Direct Line token bound to `user`, for an app with
    /// `[apps.direct_line]` (`None` for other apps).
    pub async fn token_for(
        &self,
        app: &AppConfig,
        user: &UserId,
        now: i64,
    ) -> Option<DirectLineOutcome> {
        let config = app.direct_line.as_ref()?;
        Some(self.generate(app, config, user, now).await)
    }

    async fn generate(
        &self,
        app: &AppConfig,
        config: &DirectLineConfig,
        user: &UserId,
        now: i64,
    ) -> DirectLineOutcome {
        let dl_user = self.user_id_of(app, user, now).await.map_err(|e| {
            tracing::warn!(error = %e, "cannot read the user's Direct Line user id");
            DirectLineFailure::unavailable("chatgate's database is unavailable; try again")
        })?;
        let domain = domain_of(&config.endpoint);
        let origins: Vec<String> = app.origins.iter().map(|o| o.to_string()).collect();
        let body = serde_json::json!({
            "user": { "id": dl_user },
            "trustedOrigins": origins,
        });
        let answer = self
            .http
            .post(format!("{domain}/tokens/generate"))
            .bearer_auth(config.secret.expose_secret())
            .json(&body)
            .timeout(TIMEOUT)
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(app = %app.id, error = %e.without_url(), "Direct Line is unreachable");
                DirectLineFailure::unavailable("Direct Line is unreachable; try again")
            })?;
        let status = answer.status();
        let bytes = answer.bytes().await.map_err(|e| {
            tracing::warn!(app = %app.id, error = %e.without_url(), "Direct Line's answer broke off");
            DirectLineFailure::unavailable("Direct Line's answer broke off; try again")
        })?;
        if !status.is_success() {
            tracing::warn!(app = %app.id, status = status.as_u16(), "Direct Line refused a token");
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                DirectLineFailure::unavailable(format!(
                    "Direct Line answered HTTP {status}; try again"
                ))
            } else {
                DirectLineFailure::refused(format!(
                    "Direct Line answered HTTP {status} (check the app's Direct Line secret)"
                ))
            });
        }
        if bytes.len() > MAX_ANSWER_BYTES {
            return Err(DirectLineFailure::refused(
                "Direct Line's answer is too large",
            ));
        }
        let answer: TokenAnswer = serde_json::from_slice(&bytes).map_err(|e| {
            tracing::warn!(app = %app.id, error = %e, "Direct Line's answer is not a token");
            DirectLineFailure::refused("Direct Line's answer is not a token")
        })?;
        Ok(DirectLineGrant {
            token: SecretString::from(answer.token),
            conversation_id: answer.conversation_id,
            expires_at: now + answer.expires_in.unwrap_or(3600).clamp(0, 86_400),
            domain,
            user_id: dl_user,
        })
    }

    /// The user's Direct Line user id, made now if they have none.
    pub async fn user_id_of(
        &self,
        app: &AppConfig,
        user: &UserId,
        now: i64,
    ) -> Result<String, StoreError> {
        let candidate = new_user_id();
        self.store
            .direct_line_user(app.id.as_str(), user.as_str(), &candidate, now)
            .await
    }

    /// Whose Direct Line user id `dl_user` is, in `app`: `None` when it is
    /// not a Direct Line user id, or nobody's (any more: a sign-out forgets it).
    pub async fn user_of(
        &self,
        app: &AppConfig,
        dl_user: &str,
    ) -> Result<Option<UserId>, StoreError> {
        if app.direct_line.is_none() || !is_user_id(dl_user) {
            return Ok(None);
        }
        let user = self
            .store
            .user_of_direct_line(app.id.as_str(), dl_user)
            .await?;
        Ok(user.and_then(|u| UserId::parse(&u).ok()))
    }
}

/// A fresh Direct Line user id: `dl_` and 128 random bits.
fn new_user_id() -> String {
    format!("{USER_ID_PREFIX}{}", crate::secret::random_token::<16>())
}

/// Looks like one of chatgate's Direct Line user ids.
pub fn is_user_id(id: &str) -> bool {
    id.strip_prefix(USER_ID_PREFIX).is_some_and(|rest| {
        rest.len() == 22
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// `{endpoint}/v3/directline`, without a doubled slash.
fn domain_of(endpoint: &url::Url) -> String {
    format!("{}/v3/directline", endpoint.as_str().trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_prefixed_random_and_recognised() {
        let (a, b) = (new_user_id(), new_user_id());
        assert_ne!(a, b);
        assert!(a.starts_with("dl_") && a.len() == 25, "{a}");
        assert!(is_user_id(&a));
        for not in [
            "dl_",
            "user-1",
            "dl_short",
            "DL_AAAAAAAAAAAAAAAAAAAAAA",
            "dl_AAAAAAAAAAAAAAAAAAAA/A",
        ] {
            assert!(!is_user_id(not), "{not}");
        }
    }

    #[test]
    fn the_domain_is_the_endpoint_and_the_v3_path() {
        for (endpoint, domain) in [
            (
                "https://directline.botframework.com",
                "https://directline.botframework.com/v3/directline",
            ),
            (
                "https://europe.directline.botframework.com/",
                "https://europe.directline.botframework.com/v3/directline",
            ),
            (
                "http://127.0.0.1:9000/base/",
                "http://127.0.0.1:9000/base/v3/directline",
            ),
        ] {
            assert_eq!(domain_of(&url::Url::parse(endpoint).unwrap()), domain);
        }
    }

    #[test]
    fn debug_output_of_a_grant_holds_no_token() {
        let grant = DirectLineGrant {
            token: SecretString::from("the-direct-line-token"),
            conversation_id: "c1".into(),
            expires_at: 1,
            domain: "https://d/v3/directline".into(),
            user_id: "dl_x".into(),
        };
        let printed = format!("{grant:?}");
        assert!(!printed.contains("the-direct-line-token") && printed.contains("[REDACTED]"));
        // The payload does carry it: that is what the page needs.
        assert!(
            serde_json::to_string(&grant)
                .unwrap()
                .contains("the-direct-line-token")
        );
    }
}
