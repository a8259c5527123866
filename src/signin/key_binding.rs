//! Sign-ins bound to the browser's key (a DPoP key in the host page's
//! IndexedDB, for every app): what lets the widget renew with every cookie
//! blocked. Whether the chat tokens themselves carry the key (`cnf`) is the
//! app's choice (`bind_chat_tokens = "dpop"`).
//!
//! A flow (or an iframe renewal) started with `dpop_jkt` mints a chat token
//! and records a *pending* binding of that key under the token's `jti`.
//! The token goes only to the app's origin; presenting it back with a proof
//! of the key confirms the binding. Only confirmed bindings renew, so whoever
//! starts a flow with their own key in someone else's browser gains nothing:
//! the token that would confirm it was posted to the app's page. A renewal
//! from chatgate's cookie with a proof binds the key directly (the cookie and
//! the browser-enforced `Origin` already tie the request to the app's page).

use super::{SessionSignIn, SignInService};
use crate::config::AppConfig;
use crate::domain::Origin;
use crate::dpop::Jkt;
use crate::store::{KeyBindingRow, StoreError};

impl SignInService {
    fn binding_row(
        &self,
        app: &AppConfig,
        origin: &Origin,
        jkt: &Jkt,
        signin: &SessionSignIn,
        pending_jti: &str,
        idle_expires_at: i64,
    ) -> KeyBindingRow {
        KeyBindingRow {
            app: app.id.to_string(),
            jkt: jkt.to_string(),
            pending_jti: pending_jti.to_string(),
            origin: origin.to_string(),
            user_id: signin.user_id.to_string(),
            provider: signin.user_id.namespace().to_string(),
            idp_sub: signin.idp_sub.clone(),
            idp_sid: signin.idp_sid.clone(),
            signin: serde_json::to_string(signin).expect("a sign-in serializes"),
            signed_in_at: signin.signed_in_at,
            idle_expires_at,
        }
    }

    fn idle_expiry(&self, now: i64) -> i64 {
        now + self.inner.config.session_idle.as_secs() as i64
    }

    /// After a flow or an iframe renewal minted a chat token bound to `jkt`:
    /// a pending binding that the token confirms until it expires.
    pub async fn bind_pending(
        &self,
        app: &AppConfig,
        origin: &Origin,
        jkt: &Jkt,
        signin: &SessionSignIn,
        minted: &super::Minted,
    ) -> Result<(), StoreError> {
        let until = minted.expires_at + self.inner.config.clock_skew.as_secs() as i64;
        let row = self.binding_row(app, origin, jkt, signin, &minted.jti, until);
        self.inner.store.put_key_binding(&row).await
    }

    /// After a renewal from chatgate's cookie with a proof of `jkt`: the key
    /// renews this sign-in from now on, cookie or not.
    pub async fn bind_confirmed(
        &self,
        app: &AppConfig,
        origin: &Origin,
        jkt: &Jkt,
        signin: &SessionSignIn,
        now: i64,
    ) -> Result<(), StoreError> {
        let row = self.binding_row(app, origin, jkt, signin, "", self.idle_expiry(now));
        self.inner.store.put_key_binding(&row).await
    }

    /// The sign-in `jkt` renews at `origin`, if any: its confirmed binding,
    /// or the pending one that `presented` (the chat token minted with it)
    /// confirms now. Within `session_idle` of the last use and `session_max`
    /// of the sign-in.
    pub async fn bound_signin(
        &self,
        app: &AppConfig,
        origin: &Origin,
        jkt: &Jkt,
        presented: Option<&str>,
        now: i64,
    ) -> Result<Option<SessionSignIn>, StoreError> {
        let store = &self.inner.store;
        let mut row = None;
        if let Some(jti) = presented.and_then(|t| self.confirming_jti(app, jkt, t)) {
            row = store
                .confirm_key_binding(
                    app.id.as_str(),
                    jkt.as_str(),
                    &jti,
                    self.idle_expiry(now),
                    now,
                )
                .await?;
        }
        if row.is_none() {
            row = store
                .key_binding(app.id.as_str(), jkt.as_str(), "", now)
                .await?;
        }
        let Some(row) = row.filter(|r| r.origin == origin.as_str()) else {
            return Ok(None);
        };
        let max = self.inner.config.session_max.as_secs() as i64;
        Ok(serde_json::from_str::<SessionSignIn>(&row.signin)
            .ok()
            .filter(|s| now < s.signed_in_at + max))
    }

    /// The `jti` of `token` if it is a valid chat token of `app` that may
    /// confirm a pending binding of `jkt`: bound to `jkt` when the app binds
    /// tokens to keys, unbound otherwise (the pending row names the key).
    fn confirming_jti(&self, app: &AppConfig, jkt: &Jkt, token: &str) -> Option<String> {
        let keys = self.inner.keys.keys();
        let claims = keys
            .verify(
                token,
                self.inner.keys.issuer().issuer(),
                &[app.chat_audience.as_str()],
                self.inner.config.clock_skew,
            )
            .ok()?;
        let bound = match &claims.cnf {
            Some(cnf) => cnf.jkt == jkt.as_str(),
            None => !app.binds_dpop(),
        };
        (claims.app == app.id.as_str() && bound).then_some(claims.jti)
    }

    /// A renewal by key slides the binding's idle expiry.
    pub async fn touch_binding(
        &self,
        app: &AppConfig,
        jkt: &Jkt,
        now: i64,
    ) -> Result<(), StoreError> {
        self.inner
            .store
            .touch_key_binding(app.id.as_str(), jkt.as_str(), self.idle_expiry(now))
            .await
    }

    /// Sign-out: the key renews nothing any more.
    pub async fn forget_key(&self, app: &AppConfig, jkt: &Jkt) -> Result<bool, StoreError> {
        self.inner
            .store
            .delete_key_bindings(app.id.as_str(), jkt.as_str())
            .await
    }
}
