//! The values of the sign-in flow: where a result goes, what a browser
//! session remembers, and the errors the widget learns about.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::domain::{AppId, Origin, UserId};
use crate::oidc::OidcError;

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

    /// It cannot be told now (the IdP or the database is unavailable): the
    /// widget may retry.
    pub fn is_unavailable(&self) -> bool {
        self.code == "temporarily_unavailable"
    }

    /// A failed database write: `temporarily_unavailable` when the database is
    /// down (the widget may retry), else `server_error`.
    pub(super) fn database(transient: bool) -> Self {
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

/// A sign-in remembered by chatgate's browser session (no token in it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSignIn {
    pub user_id: UserId,
    pub name: Option<String>,
    pub email: Option<String>,
    /// As the IdP stated it; sessions recorded before it existed say `false`.
    #[serde(default)]
    pub email_verified: bool,
    /// When the user authenticated at the IdP (Unix seconds).
    pub auth_time: i64,
    /// When chatgate recorded this sign-in; `session_max` counts from here.
    pub signed_in_at: i64,
    /// The IdP's `sub` and session id, which a back-channel logout names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp_sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp_sid: Option<String>,
    /// The vault entry's sign-in generation when this sign-in was recorded:
    /// it renews only while the entry still has it (a sign-out and a new
    /// sign-in elsewhere end it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<String>,
}

/// The flow a callback belongs to: where its result goes.
#[derive(Debug, Clone)]
pub struct FlowTarget {
    pub app: AppId,
    pub origin: Origin,
    pub mode: Mode,
}

/// The query of `GET /v1/callback`.
#[derive(Default, Deserialize)]
pub struct CallbackParams {
    pub state: Option<String>,
    pub code: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
    pub iss: Option<String>,
}

crate::redacted_debug!(CallbackParams {
    show: [error, error_description, iss],
    hide: [state, code]
});

#[cfg(test)]
mod tests {
    use super::CallbackParams;

    #[test]
    fn debug_output_of_a_callback_holds_no_code_or_state() {
        let params = CallbackParams {
            state: Some("the-state-value".into()),
            code: Some("the-authorization-code".into()),
            error: None,
            error_description: None,
            iss: Some("https://idp.example".into()),
        };
        let printed = format!("{params:?}");
        assert!(
            !printed.contains("the-state-value") && !printed.contains("the-authorization-code")
        );
        assert!(printed.contains("[REDACTED]") && printed.contains("https://idp.example"));
    }
}

/// A minted chat token.
#[derive(Debug, Clone)]
pub struct Minted {
    pub chat_token: String,
    pub expires_at: i64,
    /// The token's `jti` (what confirms a pending key binding).
    pub jti: String,
    /// The token's `email_verified` claim.
    pub email_verified: Option<bool>,
    /// For an app with `[apps.direct_line]`: a Direct Line token bound to the
    /// user, or why there is none (see [`SignInService::with_direct_line`]).
    ///
    /// [`SignInService::with_direct_line`]: super::SignInService::with_direct_line
    pub direct_line: Option<crate::direct_line::DirectLineOutcome>,
}
