//! The development OpenID provider of `chatgate demo`: just enough of a real
//! IdP to try chatgate on one machine with nothing registered anywhere —
//! discovery, JWKS, authorization code flow with PKCE (S256 only) and RFC 9207
//! `iss`, a login form with visible demo users, a consent screen, a session
//! cookie (so `prompt=none` works after the first login), rotating refresh
//! tokens whose reuse revokes the whole grant (as real IdPs do), userinfo and
//! RFC 7009 revocation, and sign-out: RP-initiated logout at `/end-session`
//! and back-channel logout tokens (with `sid`) to every chatgate among its
//! redirect URIs — a redirect URI `{chatgate}/v1/callback` makes
//! `{chatgate}/v1/backchannel-logout` its back-channel logout URI and
//! `{chatgate}/v1/signed-out` a post-logout redirect URI. Everything lives in memory and is gone when the demo
//! stops. Its pages say what it is; it is only reachable through `chatgate demo`
//! and only listens on loopback addresses.
//!
//! Its HTTP endpoints are in `endpoints`.

mod endpoints;

use crate::secret::ExposeSecret as _;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};
use subtle::ConstantTimeEq as _;

use crate::chat_token::{SigningAlg, SigningKey};
use crate::secret::{SecretString, random_token};

/// The demo users; their passwords are shown on the login page.
pub const USERS: &[DemoUser] = &[
    DemoUser {
        username: "alice",
        password: "alice",
        name: "Alice Example",
        email: "alice@example.com",
    },
    DemoUser {
        username: "bob",
        password: "bob",
        name: "Bob Builder",
        email: "bob@example.com",
    },
];

use endpoints::*;

#[derive(Debug, Clone, Copy)]
pub struct DemoUser {
    pub username: &'static str,
    pub password: &'static str,
    pub name: &'static str,
    pub email: &'static str,
}

const SESSION_COOKIE: &str = "demo_idp_session";
/// The same session for first-party requests where `Secure` cookies are
/// dropped (WebKit on http loopback).
const SESSION_COOKIE_LAX: &str = "demo_idp_session_lax";
const CODE_TTL: i64 = 60;
const TX_TTL: i64 = 600;
const REFRESH_TTL: i64 = 24 * 3600;

/// How the development provider is set up.
#[derive(Debug, Clone)]
pub struct DevIdpConfig {
    /// Its issuer URL, e.g. `http://127.0.0.1:8402`.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: SecretString,
    pub redirect_uris: Vec<String>,
    pub access_token_ttl: Duration,
}

/// A pending authorization request (between `/authorize` and the code).
#[derive(Debug, Clone)]
struct Transaction {
    redirect_uri: String,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: String,
    scope: String,
    /// `prompt=login` / `select_account` still to be honoured.
    must_login: bool,
    /// `prompt=consent` still to be honoured.
    must_consent: bool,
    created: i64,
}

#[derive(Debug, Clone)]
struct BrowserSession {
    user: &'static DemoUser,
    auth_time: i64,
    /// The session id ID tokens and logout tokens name (not the cookie).
    sid: String,
}

#[derive(Debug, Clone)]
struct Grant {
    user: &'static DemoUser,
    scope: String,
    auth_time: i64,
    /// All tokens of one authorization share a family; reuse of a spent
    /// refresh token revokes the family.
    family: String,
    /// The browser session it was granted in.
    sid: String,
}

#[derive(Debug, Clone)]
struct CodeGrant {
    grant: Grant,
    redirect_uri: String,
    nonce: Option<String>,
    code_challenge: String,
    expires: i64,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<String, BrowserSession>,
    consents: HashSet<&'static str>,
    transactions: HashMap<String, Transaction>,
    codes: HashMap<String, CodeGrant>,
    access_tokens: HashMap<String, (Grant, i64)>,
    /// refresh token -> (grant, spent, expires)
    refresh_tokens: HashMap<String, (Grant, bool, i64)>,
    revoked_families: HashSet<String>,
    stats: Stats,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
struct Stats {
    authorization_requests: u64,
    token_requests: u64,
    refresh_requests: u64,
    revocations: u64,
}

struct Idp {
    config: DevIdpConfig,
    key: SigningKey,
    inner: Mutex<Inner>,
    /// Sends back-channel logout tokens.
    http: reqwest::Client,
}

type Shared = Arc<Idp>;

/// The provider's routes.
pub fn router(config: DevIdpConfig) -> Router {
    let idp = Arc::new(Idp {
        config,
        key: SigningKey::generate(SigningAlg::Es256),
        inner: Mutex::new(Inner::default()),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client"),
    });
    Router::new()
        .route("/", get(home))
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/authorize", get(authorize))
        .route("/authorize/continue", get(continue_tx))
        .route("/login", post(login))
        .route("/consent", post(consent))
        .route("/token", post(token))
        .route("/userinfo", get(userinfo).post(userinfo))
        .route("/revoke", post(revoke))
        .route("/sign-out", post(sign_out))
        .route("/end-session", get(end_session))
        .route("/dev/forget-consents", post(forget_consents))
        .route("/dev/stats", get(stats))
        .route("/dev/cookie-probe/set", get(probe_set))
        .route("/dev/cookie-probe/read", get(probe_read))
        .with_state(idp)
        .layer(axum::middleware::from_fn(super::loopback_host_only))
}

fn now() -> i64 {
    crate::time::now()
}

fn page(status: StatusCode, html: Result<String, askama::Error>) -> Response {
    match html {
        Ok(html) => {
            let mut r = (status, Html(html)).into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[derive(Template)]
#[template(path = "demo/idp_error.html")]
struct ErrorPage<'a> {
    message: &'a str,
}

fn error_page(message: &str) -> Response {
    page(StatusCode::BAD_REQUEST, ErrorPage { message }.render())
}

#[derive(Template)]
#[template(path = "demo/idp_login.html")]
struct LoginPage<'a> {
    client_id: &'a str,
    tx: &'a str,
    error: Option<&'a str>,
    users: &'a [DemoUser],
}

#[derive(Template)]
#[template(path = "demo/idp_consent.html")]
struct ConsentPage<'a> {
    client_id: &'a str,
    tx: &'a str,
    user_name: &'a str,
    scopes: Vec<&'a str>,
}

#[derive(Template)]
#[template(path = "demo/idp_home.html")]
struct HomePage<'a> {
    issuer: &'a str,
    signed_in_as: Option<&'a str>,
}

fn session_id(headers: &HeaderMap) -> Option<String> {
    let cookies: Vec<(String, String)> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    [SESSION_COOKIE, SESSION_COOKIE_LAX]
        .iter()
        .find_map(|name| cookies.iter().find(|(k, _)| k == name))
        .map(|(_, v)| v.clone())
}

impl Idp {
    fn session(&self, headers: &HeaderMap) -> Option<BrowserSession> {
        let sid = session_id(headers)?;
        self.inner
            .lock()
            .expect("idp lock")
            .sessions
            .get(&sid)
            .cloned()
    }

    /// The chatgates among the redirect URIs (`{chatgate}/v1/callback`).
    fn chatgates(&self) -> impl Iterator<Item = &str> {
        self.config
            .redirect_uris
            .iter()
            .filter_map(|u| u.strip_suffix("/v1/callback"))
    }

    /// Ends the browser's session here and tells every chatgate on the back
    /// channel (a logout token naming the user and the session).
    async fn end_session(&self, headers: &HeaderMap) {
        let Some(cookie) = session_id(headers) else {
            return;
        };
        let Some(session) = self
            .inner
            .lock()
            .expect("idp lock")
            .sessions
            .remove(&cookie)
        else {
            return;
        };
        let now = now();
        let claims = json!({
            "iss": self.config.issuer,
            "aud": self.config.client_id,
            "iat": now,
            "exp": now + 120,
            "jti": random_token::<16>(),
            "sub": session.user.username,
            "sid": session.sid,
            "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
        });
        let token = self.key.sign_jwt(&claims, None);
        for chatgate in self.chatgates() {
            let url = format!("{chatgate}/v1/backchannel-logout");
            match self
                .http
                .post(&url)
                .form(&[("logout_token", token.as_str())])
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => eprintln!("dev IdP: {url} answered {} to a logout token", r.status()),
                Err(e) => eprintln!("dev IdP: cannot send a logout token to {url}: {e}"),
            }
        }
    }

    /// A redirect back to the client with `params`, `state` and RFC 9207 `iss`.
    fn back_to_client(&self, tx: &Transaction, params: &[(&str, &str)]) -> Response {
        let Ok(mut url) = url::Url::parse(&tx.redirect_uri) else {
            return error_page("the redirect URI is not a URL");
        };
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in params {
                q.append_pair(k, v);
            }
            if let Some(state) = &tx.state {
                q.append_pair("state", state);
            }
            q.append_pair("iss", &self.config.issuer);
        }
        Redirect::to(url.as_str()).into_response()
    }

    /// Moves a transaction on: login form, consent form, or the code.
    fn proceed(&self, tx_id: &str, headers: &HeaderMap, silent: bool) -> Response {
        let Some(tx) = self
            .inner
            .lock()
            .expect("idp lock")
            .transactions
            .get(tx_id)
            .cloned()
        else {
            return error_page("this sign-in expired; start again from the application");
        };
        if tx.created + TX_TTL < now() {
            return error_page("this sign-in expired; start again from the application");
        }
        let session = self.session(headers);
        let session = match session {
            Some(s) if !tx.must_login => s,
            _ if silent => return self.back_to_client(&tx, &[("error", "login_required")]),
            _ => {
                return page(
                    StatusCode::OK,
                    LoginPage {
                        client_id: &self.config.client_id,
                        tx: tx_id,
                        error: None,
                        users: USERS,
                    }
                    .render(),
                );
            }
        };
        let consented = self
            .inner
            .lock()
            .expect("idp lock")
            .consents
            .contains(session.user.username);
        if !consented || tx.must_consent {
            if silent {
                return self.back_to_client(&tx, &[("error", "consent_required")]);
            }
            return page(
                StatusCode::OK,
                ConsentPage {
                    client_id: &self.config.client_id,
                    tx: tx_id,
                    user_name: session.user.name,
                    scopes: tx.scope.split(' ').collect(),
                }
                .render(),
            );
        }
        let code = random_token::<24>();
        {
            let mut inner = self.inner.lock().expect("idp lock");
            inner.transactions.remove(tx_id);
            inner.codes.insert(
                code.clone(),
                CodeGrant {
                    grant: Grant {
                        user: session.user,
                        scope: tx.scope.clone(),
                        auth_time: session.auth_time,
                        family: random_token::<12>(),
                        sid: session.sid.clone(),
                    },
                    redirect_uri: tx.redirect_uri.clone(),
                    nonce: tx.nonce.clone(),
                    code_challenge: tx.code_challenge.clone(),
                    expires: now() + CODE_TTL,
                },
            );
        }
        self.back_to_client(&tx, &[("code", &code)])
    }

    fn id_token(&self, grant: &Grant, nonce: Option<&str>) -> String {
        let now = now();
        let mut claims = json!({
            "iss": self.config.issuer,
            "sub": grant.user.username,
            "aud": self.config.client_id,
            "azp": self.config.client_id,
            "iat": now,
            "exp": now + 600,
            "auth_time": grant.auth_time,
            "sid": grant.sid,
        });
        if grant.scope.split(' ').any(|s| s == "profile") {
            claims["name"] = json!(grant.user.name);
            claims["preferred_username"] = json!(grant.user.username);
        }
        if grant.scope.split(' ').any(|s| s == "email") {
            claims["email"] = json!(grant.user.email);
            claims["email_verified"] = json!(true);
        }
        if let Some(n) = nonce {
            claims["nonce"] = json!(n);
        }
        self.key.sign_jwt(&claims, None)
    }

    /// Issues an access token, a rotated refresh token and an ID token.
    fn issue(&self, inner: &mut Inner, grant: Grant, nonce: Option<&str>) -> Value {
        let ttl = self.config.access_token_ttl.as_secs() as i64;
        let access = format!("dev-at-{}", random_token::<24>());
        inner
            .access_tokens
            .insert(access.clone(), (grant.clone(), now() + ttl));
        let mut body = json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": ttl,
            "scope": grant.scope,
            "id_token": self.id_token(&grant, nonce),
        });
        if grant.scope.split(' ').any(|s| s == "offline_access") {
            let refresh = format!("dev-rt-{}", random_token::<24>());
            inner
                .refresh_tokens
                .insert(refresh.clone(), (grant, false, now() + REFRESH_TTL));
            body["refresh_token"] = json!(refresh);
        }
        body
    }

    /// Client authentication: `client_secret_basic` or `client_secret_post`.
    fn client_ok(&self, headers: &HeaderMap, form: &HashMap<String, String>) -> bool {
        let secret = self.config.client_secret.expose_secret().as_bytes();
        let check = |id: &str, given: &str| {
            id == self.config.client_id && bool::from(given.as_bytes().ct_eq(secret))
        };
        if let Some(basic) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
        {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(basic)
                .unwrap_or_default();
            let decoded = String::from_utf8(decoded).unwrap_or_default();
            let Some((id, given)) = decoded.split_once(':') else {
                return false;
            };
            let unescape = |v: &str| {
                url::form_urlencoded::parse(format!("v={v}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            return check(&unescape(id), &unescape(given));
        }
        match (form.get("client_id"), form.get("client_secret")) {
            (Some(id), Some(given)) => check(id, given),
            _ => false,
        }
    }

    /// `Some(401 invalid_client)` unless the request authenticates this client.
    fn refuse_unknown_client(
        &self,
        headers: &HeaderMap,
        form: &HashMap<String, String>,
    ) -> Option<Response> {
        (!self.client_ok(headers, form)).then(|| {
            oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            )
        })
    }

    fn revoke_family(inner: &mut Inner, family: &str) {
        inner.revoked_families.insert(family.to_string());
        inner
            .refresh_tokens
            .retain(|_, (g, _, _)| g.family != family);
        inner.access_tokens.retain(|_, (g, _)| g.family != family);
    }
}
