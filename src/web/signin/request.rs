//! `GET /v1/authorize`'s query, parsed once into an [`AuthorizeRequest`]
//! whose every field is checked; a refusal is the page to show.

use axum::response::Response;
use serde::Deserialize;

use super::{bad_request, error_page};
use crate::config::AppConfig;
use crate::domain::Origin;
use crate::dpop::Jkt;
use crate::metrics::FlowEvent;
use crate::signin::{FlowError, Mode, StartRequest, TicketHash};
use crate::state::AppState;

/// Longest `login_hint` or `domain_hint` passed on to the IdP.
const MAX_HINT_LEN: usize = 256;

#[derive(Debug, Default, Deserialize)]
pub(super) struct AuthorizeQuery {
    app: Option<String>,
    origin: Option<String>,
    mode: Option<String>,
    login_hint: Option<String>,
    domain_hint: Option<String>,
    prompt: Option<String>,
    dpop_jkt: Option<String>,
    ticket_hash: Option<String>,
}

impl AuthorizeQuery {
    pub fn app(&self) -> Option<&str> {
        self.app.as_deref()
    }
}

/// A sign-in request from an allowed origin of a known app.
#[derive(Debug)]
pub(super) struct AuthorizeRequest<'a> {
    pub app: &'a AppConfig,
    pub origin: Origin,
    pub mode: Mode,
    /// `login`, `consent` or `select_account` (popups only).
    pub prompt: Option<String>,
    pub login_hint: Option<String>,
    pub domain_hint: Option<String>,
    /// The browser key the widget names (required for DPoP apps).
    pub dpop_jkt: Option<Jkt>,
    /// The ticket the page waits for the outcome by (silent, with a key).
    pub ticket_hash: Option<TicketHash>,
}

impl<'a> AuthorizeRequest<'a> {
    /// Checks every parameter. Before the app, origin and mode are known the
    /// refusal is a plain page; after, it is the error message the widget
    /// hears.
    pub fn parse(state: &'a AppState, q: AuthorizeQuery) -> Result<Self, Box<Response>> {
        let Some(app) = q.app.as_deref().and_then(|a| state.config.app(a)) else {
            return Err(bad_request("Unknown app.", &[]).into());
        };
        let Some(origin) = q
            .origin
            .as_deref()
            .and_then(|o| Origin::parse(o).ok())
            .filter(|o| app.allows_origin(o))
        else {
            return Err(bad_request(
                "This origin is not allowed to sign in to this app.",
                &app.origins,
            )
            .into());
        };
        let Some(mode) = q.mode.as_deref().and_then(Mode::parse) else {
            return Err(bad_request("mode must be silent or popup.", &app.origins).into());
        };
        let (req, checked) = Self::checked(app, origin, mode, q);
        match checked {
            Ok(()) => Ok(req),
            Err(e) => Err(req.fail(state, e).into()),
        }
    }

    /// `POST /v1/authorize`'s query: a silent flow whose outcome the page
    /// waits for, from `origin` (the request's `Origin`, an origin of `app`),
    /// which the query must name too; `dpop_jkt` and `ticket_hash` required.
    pub fn parse_waited(
        app: &'a AppConfig,
        origin: Origin,
        q: AuthorizeQuery,
    ) -> Result<Self, FlowError> {
        if q.origin.as_deref() != Some(origin.as_str()) {
            return Err(FlowError::invalid_request(
                "origin must be the page's own origin",
            ));
        }
        if q.mode.as_deref() != Some(Mode::Silent.as_str()) {
            return Err(FlowError::invalid_request(
                "POST /v1/authorize starts silent flows only (mode=silent)",
            ));
        }
        if q.dpop_jkt.as_deref().is_none_or(str::is_empty)
            || q.ticket_hash.as_deref().is_none_or(str::is_empty)
        {
            return Err(FlowError::invalid_request(
                "POST /v1/authorize needs dpop_jkt and ticket_hash",
            ));
        }
        let (req, checked) = Self::checked(app, origin, Mode::Silent, q);
        checked.map(|()| req)
    }

    /// The request, and whether its parameters pass the checks whose refusal
    /// the widget hears.
    fn checked(
        app: &'a AppConfig,
        origin: Origin,
        mode: Mode,
        q: AuthorizeQuery,
    ) -> (Self, Result<(), FlowError>) {
        let nonempty = |v: Option<String>| v.filter(|v| !v.is_empty());
        let mut req = Self {
            app,
            origin,
            mode,
            prompt: nonempty(q.prompt),
            login_hint: nonempty(q.login_hint),
            domain_hint: nonempty(q.domain_hint),
            dpop_jkt: None,
            ticket_hash: None,
        };
        let dpop_jkt = nonempty(q.dpop_jkt);
        let checked = req.check(dpop_jkt.as_deref()).and_then(|jkt| {
            let ticket_hash = req.check_ticket_hash(nonempty(q.ticket_hash), jkt.is_some())?;
            Ok((jkt, ticket_hash))
        });
        let checked = checked.map(|(jkt, ticket_hash)| {
            req.dpop_jkt = jkt;
            req.ticket_hash = ticket_hash;
        });
        (req, checked)
    }

    /// `ticket_hash`: only a silent flow started with a browser key (whose
    /// proof alone redeems the ticket) may have its outcome waited for.
    fn check_ticket_hash(
        &self,
        ticket_hash: Option<String>,
        has_key: bool,
    ) -> Result<Option<TicketHash>, FlowError> {
        let Some(hex) = ticket_hash else {
            return Ok(None);
        };
        if self.mode != Mode::Silent || !has_key {
            return Err(FlowError::invalid_request(
                "ticket_hash is only for mode=silent with dpop_jkt",
            ));
        }
        TicketHash::parse(&hex).map(Some).ok_or_else(|| {
            FlowError::invalid_request("ticket_hash must be 64 lowercase hex digits (SHA-256)")
        })
    }

    /// The checks whose refusal the widget hears; returns the browser key.
    fn check(&self, dpop_jkt: Option<&str>) -> Result<Option<Jkt>, FlowError> {
        match (self.mode, self.prompt.as_deref()) {
            (Mode::Silent, Some(_)) => {
                return Err(FlowError::invalid_request(
                    "prompt is only for mode=popup; silent sign-in uses prompt=none",
                ));
            }
            (Mode::Popup, Some(p)) if !matches!(p, "login" | "consent" | "select_account") => {
                return Err(FlowError::invalid_request(
                    "prompt must be login, consent or select_account",
                ));
            }
            _ => {}
        }
        if self
            .login_hint
            .iter()
            .chain(self.domain_hint.iter())
            .any(|h| h.len() > MAX_HINT_LEN || h.chars().any(char::is_control))
        {
            return Err(FlowError::invalid_request(
                "login_hint and domain_hint must be short printable text",
            ));
        }
        // Every app's widget names its browser key, which renews the sign-in
        // where the browser keeps no cookie; DPoP apps must.
        match (self.app.binds_dpop(), dpop_jkt) {
            (_, Some(jkt)) => Jkt::parse(jkt)
                .map(Some)
                .ok_or_else(|| FlowError::invalid_request("dpop_jkt is not a JWK thumbprint")),
            (false, None) => Ok(None),
            (true, None) => Err(FlowError::invalid_request(
                "this app binds chat tokens to the browser's key: dpop_jkt is required",
            )),
        }
    }

    /// What [`crate::signin::SignInService::start`] takes.
    pub fn start(&self) -> StartRequest<'_> {
        StartRequest {
            app: self.app,
            origin: &self.origin,
            mode: self.mode,
            login_hint: self.login_hint.as_deref(),
            domain_hint: self.domain_hint.as_deref(),
            prompt: self.prompt.as_deref(),
            dpop_jkt: self.dpop_jkt.as_ref(),
            ticket_hash: self.ticket_hash.as_ref(),
        }
    }

    /// The failed flow's page (the message the widget hears), counted.
    pub fn fail(&self, state: &AppState, e: FlowError) -> Response {
        state.metrics.flow(FlowEvent::Failed, &e.code);
        error_page(self.mode, &self.app.id, &self.origin, &self.app.origins, &e)
    }
}
