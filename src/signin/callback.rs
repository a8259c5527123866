//! Completing a flow at `GET /v1/callback`, step by step: take the flow (once,
//! only by the browser that started it: its cookie, or later a proof of its
//! browser key), check the authorization response
//! (RFC 9207 `iss`, an IdP error, the code), redeem the code (PKCE, ID-token
//! validation), store the tokens, mint the chat token. Nothing is stored
//! unless every check passed.

use crate::metrics::FlowEvent;
use crate::secret::ExposeSecret as _;
use std::sync::Arc;

use super::{
    CallbackParams, DB_RETRY_BUDGET, FlowError, FlowTarget, Minted, Mode, SessionSignIn,
    SignInService, TicketHash, flow_aad,
};
use crate::audit::QueuedEvent;
use crate::config::AppConfig;
use crate::domain::{AppId, AuditAction, AuditOutcome, Origin, UserId};
use crate::dpop::Jkt;
use crate::events::EventType;
use crate::oidc::{IdTokenCheck, Identity, IdpTokens, IssParameter, Provider};
use crate::secret::sha256_hex;
use crate::store::{AuditEvent, PendingFlowRow, retry_transient};
use crate::vault::{SignInIdentity, SignInRecords, TokenSet};

/// How long a callback that handed a waited flow's outcome over waits for
/// the page's fetch to answer before it answers its frame anyway.
const FETCH_ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long after the page's fetch has answered a callback answers its
/// frame: long enough for the page's script to have the outcome first (a
/// frame's `204` ends its navigation, which keeps the browser's main threads
/// busy for several milliseconds: measured, it arriving with the fetch's
/// answer delayed the page's outcome by 5 to 10 ms). widget.js keeps such a
/// frame 1 s for this answer.
const FRAME_ANSWER_GRACE: std::time::Duration = std::time::Duration::from_millis(20);

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

/// A finished sign-in: everything the result page needs.
#[derive(Debug)]
pub struct Completed {
    pub target: FlowTarget,
    pub result: CallbackResult,
}

/// What the result page posts.
#[derive(Debug)]
pub enum CallbackResult {
    /// The browser holds the flow's binding cookie: the chat token itself,
    /// and the sign-in for chatgate's browser session.
    Token {
        signin: Box<SessionSignIn>,
        minted: Minted,
        /// Popup only: the one-time ticket the widget redeems from the host page.
        session_ticket: Option<String>,
    },
    /// The browser dropped the cookie, but the flow was started with a
    /// browser key: a one-time ticket that only a proof of that key redeems
    /// (`POST /v1/session/token`). No token or user data leaves in the page.
    KeyTicket(String),
    /// The page waits for the outcome by fetch and has it now, as the ticket
    /// it picked: the frame gets no page (`204 No Content`).
    Waited,
}

/// How the browser showed that the flow is its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BoundBy {
    /// The binding cookie set when the flow started.
    Cookie,
    /// Nothing yet: the result waits for a proof of the flow's browser key.
    Key,
}

/// A flow taken at the callback, with where its result goes.
struct Taken<'a> {
    flow: PendingFlowRow,
    state_hash: String,
    target: FlowTarget,
    app: &'a AppConfig,
    bound_by: BoundBy,
}

/// What the ID token of the code exchange established.
struct Redeemed {
    tokens: IdpTokens,
    identity: Identity,
    user_id: UserId,
}

impl SignInService {
    /// Completes a flow; see the module documentation for the steps.
    /// `in_frame`: the response goes to a hidden frame (`Sec-Fetch-Dest:
    /// iframe`); a flow whose page waits for its outcome by fetch, finished
    /// by the browser holding its binding cookie, then stores it as the
    /// page's ticket instead ([`CallbackResult::Waited`]), for a fetch with
    /// that cookie.
    pub async fn complete_callback(
        &self,
        params: CallbackParams,
        bindings: &[String],
        in_frame: bool,
        now: i64,
    ) -> Result<Completed, CallbackFailure> {
        let taken = self.take_flow(&params, bindings, now).await?;
        let waiter = taken
            .flow
            .ticket_hash
            .as_deref()
            .filter(|_| in_frame && taken.bound_by == BoundBy::Cookie)
            .and_then(TicketHash::parse);
        match self.finish(&taken, &params, waiter.as_ref(), now).await {
            Ok(result) => Ok(Completed {
                target: taken.target,
                result,
            }),
            Err(error) => {
                self.inner.metrics.flow(FlowEvent::Failed, &error.code);
                // Where the error cannot be stored, the frame's page posts it.
                if let Some(hash) = &waiter
                    && self
                        .store_waited(&taken, hash, Err(&error), now)
                        .await
                        .is_ok()
                {
                    return Ok(Completed {
                        target: taken.target,
                        result: CallbackResult::Waited,
                    });
                }
                Err(CallbackFailure::Flow {
                    target: taken.target,
                    error,
                })
            }
        }
    }

    /// Steps 2 to 5 of a taken flow; with `waiter`, the sign-in is stored as
    /// the ticket the page waits for.
    async fn finish(
        &self,
        taken: &Taken<'_>,
        params: &CallbackParams,
        waiter: Option<&TicketHash>,
        now: i64,
    ) -> Result<CallbackResult, FlowError> {
        let provider = self
            .inner
            .providers
            .get(&taken.flow.provider)
            .ok_or_else(|| {
                FlowError::unavailable("the identity provider is not loaded; try again")
            })?;
        let (code, iss_to_match) = match self.check_response(params, &provider) {
            Ok(checked) => checked,
            Err(error) => {
                self.audit_failure(&taken.target, &error).await;
                return Err(error);
            }
        };
        let redeemed = self
            .redeem_code(taken, &provider, code, iss_to_match, now)
            .await?;
        // The profile (userinfo, when the ID token lacks it) only goes into
        // the chat token: it is asked for while the tokens are stored.
        let mut identity = redeemed.identity.clone();
        let (_, generation) = tokio::join!(
            provider.complete_profile(&mut identity, &redeemed.tokens.access_token),
            self.store_tokens(taken, &provider, &redeemed, now),
        );
        let generation = generation?;
        self.inner
            .metrics
            .flow(FlowEvent::Completed, taken.target.mode.as_str());
        let signin = SessionSignIn {
            user_id: redeemed.user_id,
            name: identity.name.or(identity.preferred_username),
            email: identity.email,
            email_verified: identity.email_verified,
            auth_time: identity.auth_time.unwrap_or(now),
            signed_in_at: now,
            idp_sub: Some(identity.sub),
            idp_sid: identity.sid,
            generation,
        };
        let jkt = taken.flow.dpop_jkt.as_deref().and_then(Jkt::parse);
        if let Some(hash) = waiter {
            self.store_waited(taken, hash, Ok((&signin, jkt.as_ref())), now)
                .await?;
            return Ok(CallbackResult::Waited);
        }
        if taken.bound_by == BoundBy::Key {
            let ticket = self
                .issue_ticket(&taken.target, &signin, jkt.as_ref(), now)
                .await?;
            return Ok(CallbackResult::KeyTicket(ticket));
        }
        let minted = self.mint(taken.app, &signin, jkt.as_ref(), now)?;
        if let Some(jkt) = &jkt
            && let Err(e) = self
                .bind_pending(taken.app, &taken.target.origin, jkt, &signin, &minted)
                .await
        {
            // The sign-in stands; only renewal without chatgate's cookie fails.
            tracing::warn!(error = %e, "cannot record the browser key of a sign-in");
        }
        let session_ticket = match taken.target.mode {
            Mode::Popup => match self
                .issue_ticket(&taken.target, &signin, jkt.as_ref(), now)
                .await
            {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(error = %e, "no session ticket for this popup sign-in");
                    None
                }
            },
            Mode::Silent => None,
        };
        let minted = self
            .with_direct_line(taken.app, &signin.user_id, minted, now)
            .await;
        Ok(CallbackResult::Token {
            signin: Box::new(signin),
            minted,
            session_ticket,
        })
    }

    /// A waited flow's outcome, as the page's ticket, for the browser
    /// holding the flow's binding cookie. A sign-in handed to the page's
    /// fetch in this process returns only once that fetch has answered (at
    /// most [`FETCH_ANSWER_WAIT`]) and [`FRAME_ANSWER_GRACE`] more: the
    /// frame's `204` ends its navigation, which keeps the browser busy for
    /// several milliseconds, so it comes after the page has the sign-in. An
    /// error is answered at once (the widget takes its frame down at once).
    async fn store_waited(
        &self,
        taken: &Taken<'_>,
        hash: &TicketHash,
        outcome: Result<(&SessionSignIn, Option<&Jkt>), &FlowError>,
        now: i64,
    ) -> Result<(), FlowError> {
        let binding_hash = Some(taken.flow.binding_hash.as_str());
        let signed_in = outcome.is_ok();
        let answered = self
            .store_outcome(&taken.target, hash, binding_hash, outcome, now)
            .await?;
        if let Some(answered) = answered.filter(|_| signed_in) {
            answered.wait(FETCH_ANSWER_WAIT).await;
            tokio::time::sleep(FRAME_ANSWER_GRACE).await;
        }
        Ok(())
    }

    fn failed(&self, target: &FlowTarget, error: FlowError) -> CallbackFailure {
        self.inner.metrics.flow(FlowEvent::Failed, &error.code);
        CallbackFailure::Flow {
            target: target.clone(),
            error,
        }
    }

    /// Step 1: the pending flow of `state`, consumed once: by the browser
    /// holding its binding cookie, or — where the browser dropped the cookie
    /// and the flow was started with a browser key — by anyone, since then
    /// only a proof of that key redeems the result. A flow with neither is
    /// left in place, and its page is only told that this browser cannot
    /// finish it (`interaction_required`, or the IdP's own error), so the
    /// widget need not wait for its timeout.
    async fn take_flow(
        &self,
        params: &CallbackParams,
        bindings: &[String],
        now: i64,
    ) -> Result<Taken<'_>, CallbackFailure> {
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
        let store = &self.inner.store;
        let database_down = |e: crate::store::StoreError| {
            tracing::error!(error = %e, "cannot read pending flows");
            CallbackFailure::Untied(
                "chatgate's database is unavailable, so the sign-in could not be finished; \
                 close this window and try again.",
            )
        };
        let mut found = None;
        for binding in bindings {
            let binding_hash = sha256_hex(binding.as_bytes());
            let taken = retry_transient(DB_RETRY_BUDGET, || {
                store.take_flow(&state_hash, &binding_hash)
            })
            .await
            .map_err(database_down)?;
            if let Some(flow) = taken {
                found = Some((flow, BoundBy::Cookie));
                break;
            }
        }
        if found.is_none() {
            found = retry_transient(DB_RETRY_BUDGET, || store.take_key_bound_flow(&state_hash))
                .await
                .map_err(database_down)?
                .map(|flow| (flow, BoundBy::Key));
        }
        let (flow, bound_by) = match found {
            Some(found) => found,
            None => {
                let peeked = retry_transient(DB_RETRY_BUDGET, || store.peek_flow(&state_hash))
                    .await
                    .map_err(database_down)?;
                let untied = CallbackFailure::Untied(
                    "This sign-in is unknown, was already used, or was started in another browser.",
                );
                let Some(flow) = peeked else {
                    self.inner.metrics.flow(FlowEvent::Failed, "unknown_state");
                    return Err(untied);
                };
                let (target, _) = self.target_of(&flow, now)?;
                let error = match params.error.as_deref() {
                    Some(code) => FlowError::from_idp(code, params.error_description.as_deref()),
                    None => FlowError::new(
                        "interaction_required",
                        "this browser did not keep chatgate's sign-in cookie; sign in with the popup",
                    ),
                };
                return Err(self.failed(&target, error));
            }
        };
        let (target, app) = self.target_of(&flow, now)?;
        Ok(Taken {
            flow,
            state_hash,
            target,
            app,
            bound_by,
        })
    }

    /// Where a flow's result goes, if it may still go there.
    fn target_of(
        &self,
        flow: &PendingFlowRow,
        now: i64,
    ) -> Result<(FlowTarget, &AppConfig), CallbackFailure> {
        let target = match (
            AppId::parse(&flow.app),
            Origin::parse(&flow.origin),
            Mode::parse(&flow.mode),
        ) {
            (Ok(app), Ok(origin), Some(mode)) => FlowTarget { app, origin, mode },
            _ => return Err(CallbackFailure::Untied("The stored sign-in is damaged.")),
        };
        if flow.expires_at <= now {
            return Err(self.failed(
                &target,
                FlowError::invalid_request("the sign-in took too long; start again"),
            ));
        }
        // The configuration may have changed since the flow started: an origin
        // no longer allowed cannot be trusted with a message.
        let Some(app) = self.allowed(&target) else {
            return Err(CallbackFailure::Untied(
                "This app or origin is no longer configured.",
            ));
        };
        Ok((target, app))
    }

    /// Step 2: the authorization response — its issuer (RFC 9207: another
    /// issuer is a mix-up attack), an IdP error, or the code. Returns the code
    /// and, for a multi-tenant provider, the `iss` the ID token must have.
    fn check_response<'p>(
        &self,
        params: &'p CallbackParams,
        provider: &Provider,
    ) -> Result<(&'p str, Option<&'p str>), FlowError> {
        let another_issuer =
            || FlowError::invalid_request("the authorization response names another issuer");
        let iss_to_match = match params.iss.as_deref() {
            Some(iss) => match provider.check_iss_parameter(iss) {
                IssParameter::Matches => None,
                IssParameter::IfIdTokenIssuer => Some(iss),
                IssParameter::Mismatch => return Err(another_issuer()),
            },
            None if provider.sends_iss_parameter() => {
                return Err(FlowError::invalid_request(
                    "the authorization response lacks the iss parameter its issuer promises",
                ));
            }
            None => None,
        };
        if let Some(code) = params.error.as_deref() {
            return Err(FlowError::from_idp(
                code,
                params.error_description.as_deref(),
            ));
        }
        let code = params
            .code
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                FlowError::invalid_request("the authorization response has neither code nor error")
            })?;
        Ok((code, iss_to_match))
    }

    /// Step 3: the code, redeemed with the flow's PKCE verifier; the ID token
    /// validated against the flow's nonce; the user id derived.
    async fn redeem_code(
        &self,
        taken: &Taken<'_>,
        provider: &Arc<Provider>,
        code: &str,
        iss_to_match: Option<&str>,
        now: i64,
    ) -> Result<Redeemed, FlowError> {
        let row = [taken.state_hash.as_str()];
        let keys = self.inner.vault.keys();
        let opened = keys
            .open(&flow_aad(&row, "nonce"), &taken.flow.nonce)
            .and_then(|n| {
                keys.open(&flow_aad(&row, "pkce_verifier"), &taken.flow.pkce_verifier)
                    .map(|v| (n, v))
            });
        let (nonce, verifier) = match opened {
            Ok((n, v)) => (
                String::from_utf8_lossy(n.expose_secret()).into_owned(),
                String::from_utf8_lossy(v.expose_secret()).into_owned(),
            ),
            Err(e) => {
                tracing::error!(error = %e, "cannot open a pending flow's secrets");
                return Err(FlowError::server_error());
            }
        };
        let provider_id = &taken.flow.provider;
        let tokens = provider
            .exchange_code(code, &verifier, &self.redirect_uri())
            .await
            .map_err(|e| {
                tracing::warn!(provider = %provider_id, error = %e, "code exchange failed");
                FlowError::from(e)
            })?;
        let Some(id_token) = &tokens.id_token else {
            tracing::warn!(provider = %provider_id, "token response without an ID token");
            return Err(FlowError::server_error());
        };
        let identity = provider
            .verify_id_token(
                id_token,
                &IdTokenCheck::ours(Some(&nonce)),
                now,
                self.inner.config.clock_skew,
            )
            .await
            .map_err(|e| {
                tracing::warn!(provider = %provider_id, error = %e, "ID token rejected");
                FlowError::from(e)
            })?;
        if let Some(iss) = iss_to_match
            && iss != identity.issuer
        {
            return Err(FlowError::invalid_request(
                "the authorization response names another issuer",
            ));
        }
        if tokens.refresh_token.is_none() && taken.app.scopes.iter().any(|s| s == "offline_access")
        {
            provider.report_once(
                "no_refresh_token",
                "the identity provider issued no refresh token although offline_access was asked \
                 for: bots lose access when the access token expires. Allow offline access (and \
                 refresh tokens) for this client at the IdP — LemonLDAP::NG: \"Allow offline \
                 access\" with consent bypassed; Google: access_type=offline and a consent prompt",
            );
        }
        if identity.email.is_some() && !identity.email_verified_stated {
            provider.report_once(
                "no_email_verified",
                "the identity provider sends email without email_verified: chat tokens say \
                 email_verified=false, and bots must key users on sub, never on the email",
            );
        }
        let user_id = UserId::new(&provider.config().id, &identity.subject).map_err(|e| {
            tracing::warn!(provider = %provider_id, error = %e, "the ID token's subject is not a usable user id");
            FlowError::server_error()
        })?;
        Ok(Redeemed {
            tokens,
            identity,
            user_id,
        })
    }

    /// Step 4: the tokens, into the vault, with the sign-in's event and
    /// audit row in the same transaction. A blip is ridden out; a longer
    /// outage fails the sign-in as a whole (nothing half-written) and the
    /// widget learns it may try again. Returns the entry's sign-in generation.
    async fn store_tokens(
        &self,
        taken: &Taken<'_>,
        provider: &Provider,
        redeemed: &Redeemed,
        now: i64,
    ) -> Result<Option<String>, FlowError> {
        let app = taken.app;
        let tokens = &redeemed.tokens;
        let token_set = TokenSet {
            access_token: tokens.access_token.clone(),
            refresh_token: tokens.refresh_token.clone(),
            token_type: tokens.token_type.clone(),
            scope: tokens.scope.clone().unwrap_or_else(|| app.scopes.join(" ")),
            expires_at: tokens.expires_in.map(|d| now + d.as_secs() as i64),
        };
        // Kept for back-channel logout (`sub`, `sid`) and as the IdP sign-out's
        // `id_token_hint`.
        let id_token = tokens.id_token_text();
        let identity = SignInIdentity {
            sub: Some(&redeemed.identity.sub),
            sid: redeemed.identity.sid.as_deref(),
            id_token: id_token.as_ref(),
        };
        let signed_in = self.inner.tokens.events().row(
            &app.id,
            &redeemed.user_id,
            EventType::SignedIn,
            serde_json::json!({ "via": "oidc" }),
            now,
        );
        let saved = retry_transient(DB_RETRY_BUDGET, || {
            self.inner.vault.save_signin(
                &app.id,
                &redeemed.user_id,
                &provider.config().id,
                &token_set,
                &identity,
                now,
                SignInRecords {
                    signed_in: signed_in.as_ref(),
                    audit: Some(AuditEvent {
                        actor: "user",
                        app: Some(&app.id),
                        user_id: Some(&redeemed.user_id),
                        action: AuditAction::SignIn,
                        outcome: AuditOutcome::Ok,
                        detail: Some(taken.target.mode.as_str()),
                    }),
                },
            )
        })
        .await;
        match saved {
            Ok(written) => Ok(written.generation),
            Err(e) => {
                tracing::error!(error = %e, "cannot store tokens in the vault");
                Err(FlowError::database(e.is_transient()))
            }
        }
    }

    /// A failed sign-in goes through the batched writer: anyone can cause one.
    async fn audit_failure(&self, target: &FlowTarget, error: &FlowError) {
        self.inner
            .audit
            .record(QueuedEvent {
                at: crate::time::now(),
                actor: "user".into(),
                app: Some(target.app.clone()),
                user_id: None,
                action: AuditAction::SignIn,
                outcome: AuditOutcome::Failed,
                detail: Some(
                    crate::metrics::FLOW_REASONS
                        .iter()
                        .find(|r| **r == error.code)
                        .copied()
                        .unwrap_or("other")
                        .to_string(),
                ),
            })
            .await;
    }
}
