//! Events for bots, per the Standard Webhooks specification: an app with
//! `events_url` receives one signed JSON POST per event — `user.signed_in`,
//! `user.signed_out`, `user.reauth_required`, `token.refresh_failing` — with
//! the body `{id, type, app, user_id, occurred_at, data}` (never a token).
//!
//! Durable and at least once: an event is a row of `event_outbox` written in
//! the same transaction as the change it reports; [`deliver`] sends it, one
//! replica per event, retrying with exponential backoff for 24 hours.

pub mod deliver;
mod sign;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};
use url::Url;

pub use sign::{WebhookSecret, sign};

use crate::domain::{AppId, UserId};
use crate::store::OutboxRow;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// A first sign-in, or a sign-in after the IdP refused the refresh token.
    SignedIn,
    /// `data.reason`: see [`SignOutReason`].
    SignedOut,
    /// The IdP refused the refresh token; the user must sign in again.
    ReauthRequired,
    /// Refreshes have failed for a passing reason for longer than
    /// [`REFRESH_FAILING_AFTER`].
    RefreshFailing,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SignedIn => "user.signed_in",
            Self::SignedOut => "user.signed_out",
            Self::ReauthRequired => "user.reauth_required",
            Self::RefreshFailing => "token.refresh_failing",
        }
    }
}

/// Why a user was signed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignOutReason {
    /// The host page (`POST /v1/signout` with `revoke`).
    Widget,
    /// A bot (`DELETE /v1/users/{id}/token`).
    Bot,
    /// The IdP (back-channel logout).
    IdpSignOut,
    /// An operator (`chatgate users sign-out`).
    Admin,
}

impl SignOutReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Widget => "widget",
            Self::Bot => "bot",
            Self::IdpSignOut => "idp_logout",
            Self::Admin => "admin",
        }
    }
}

/// `token.refresh_failing` goes out once refreshes have failed this long.
pub const REFRESH_FAILING_AFTER: std::time::Duration = std::time::Duration::from_secs(300);

/// Where an app's events go.
#[derive(Debug, Clone)]
pub struct EventTarget {
    pub url: Url,
    pub secret: WebhookSecret,
}

/// Which apps receive events; makes the outbox rows of the ones that do.
#[derive(Debug, Clone, Default)]
pub struct Events {
    targets: Arc<HashMap<AppId, EventTarget>>,
}

impl Events {
    pub fn new(targets: impl IntoIterator<Item = (AppId, EventTarget)>) -> Self {
        Self {
            targets: Arc::new(targets.into_iter().collect()),
        }
    }

    pub fn target(&self, app: &str) -> Option<&EventTarget> {
        self.targets
            .iter()
            .find(|(id, _)| id.as_str() == app)
            .map(|(_, t)| t)
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The outbox row of an event, or `None` when `app` has no `events_url`
    /// (nothing is stored for it).
    pub fn row(
        &self,
        app: &AppId,
        user_id: &UserId,
        kind: EventType,
        data: Value,
        now: i64,
    ) -> Option<OutboxRow> {
        self.targets.get(app)?;
        let id = format!("evt_{}", crate::secret::random_token::<16>());
        let payload = json!({
            "id": id,
            "type": kind.as_str(),
            "app": app.as_str(),
            "user_id": user_id.as_str(),
            "occurred_at": now,
            "data": data,
        });
        Some(OutboxRow {
            id,
            app: app.to_string(),
            kind: kind.as_str().to_string(),
            user_id: user_id.to_string(),
            payload: payload.to_string(),
            created_at: now,
        })
    }

    /// `user.signed_out` with its reason.
    pub fn signed_out(
        &self,
        app: &AppId,
        user_id: &UserId,
        reason: SignOutReason,
        now: i64,
    ) -> Option<OutboxRow> {
        self.row(
            app,
            user_id,
            EventType::SignedOut,
            json!({ "reason": reason.as_str() }),
            now,
        )
    }
}
