//! The vocabulary of the audit log: what happened (action) and how it ended
//! (outcome). A fixed set, so `chatgate audit` output and queries are stable.

/// What happened to a user's tokens or to a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditAction {
    /// A sign-in through the IdP (detail: `silent` / `popup`, or the error).
    SignIn,
    /// A host-signed userinfo token turned into a chat token.
    HostSession,
    /// An ID token exchanged for a chat token.
    TokenExchange,
    /// A bot read a user's access token.
    TokenRead,
    /// A bot read a user's status.
    StatusRead,
    /// A refresh at the IdP.
    TokenRefresh,
    /// A sign-out (tokens revoked and deleted).
    SignOut,
    /// The IdP ended the user's session (back-channel logout): tokens
    /// deleted, browser sessions ended.
    IdpSignOut,
    BotCreate,
    BotRevoke,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SignIn => "signin",
            Self::HostSession => "host_session",
            Self::TokenExchange => "token_exchange",
            Self::TokenRead => "token.read",
            Self::StatusRead => "status.read",
            Self::TokenRefresh => "token.refresh",
            Self::SignOut => "signout",
            Self::IdpSignOut => "idp_logout",
            Self::BotCreate => "bot.create",
            Self::BotRevoke => "bot.revoke",
        }
    }
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditOutcome {
    Ok,
    /// Served after a refresh this lookup caused.
    OkRefreshed,
    /// There was nothing to act on.
    Absent,
    Failed,
    NotFound,
    ReauthRequired,
    Unavailable,
    /// Refused: the request lacked what the rule asks for (e.g. proof that
    /// the user is present).
    Refused,
    Error,
}

impl AuditOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::OkRefreshed => "ok_refreshed",
            Self::Absent => "absent",
            Self::Failed => "failed",
            Self::NotFound => "not_found",
            Self::ReauthRequired => "reauth_required",
            Self::Unavailable => "unavailable",
            Self::Refused => "refused",
            Self::Error => "error",
        }
    }
}
