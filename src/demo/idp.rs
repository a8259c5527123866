//! The development OpenID provider of `chatgate demo`: just enough of a real
//! IdP to try chatgate on one machine with nothing registered anywhere —
//! discovery, JWKS, authorization code flow with PKCE (S256 only) and RFC 9207
//! `iss`, a login form with visible demo users, a consent screen, a session
//! cookie (so `prompt=none` works after the first login), rotating refresh
//! tokens whose reuse revokes the whole grant (as real IdPs do), userinfo and
//! RFC 7009 revocation. Everything lives in memory and is gone when the demo
//! stops. Its pages say what it is; it is only reachable through `chatgate demo`
//! and only listens on loopback addresses.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use askama::Template;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Digest as _;
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

#[derive(Debug, Clone, Copy)]
pub struct DemoUser {
    pub username: &'static str,
    pub password: &'static str,
    pub name: &'static str,
    pub email: &'static str,
}

const SESSION_COOKIE: &str = "demo_idp_session";
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
}

#[derive(Debug, Clone)]
struct Grant {
    user: &'static DemoUser,
    scope: String,
    auth_time: i64,
    /// All tokens of one authorization share a family; reuse of a spent
    /// refresh token revokes the family.
    family: String,
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
}

type Shared = Arc<Idp>;

/// The provider's routes.
pub fn router(config: DevIdpConfig) -> Router {
    let idp = Arc::new(Idp {
        config,
        key: SigningKey::generate(SigningAlg::Es256),
        inner: Mutex::new(Inner::default()),
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
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_string())
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

async fn home(State(idp): State<Shared>, headers: HeaderMap) -> Response {
    let session = idp.session(&headers);
    page(
        StatusCode::OK,
        HomePage {
            issuer: &idp.config.issuer,
            signed_in_as: session.as_ref().map(|s| s.user.name),
        }
        .render(),
    )
}

async fn discovery(State(idp): State<Shared>) -> Json<Value> {
    let iss = &idp.config.issuer;
    Json(json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/authorize"),
        "token_endpoint": format!("{iss}/token"),
        "userinfo_endpoint": format!("{iss}/userinfo"),
        "jwks_uri": format!("{iss}/jwks"),
        "revocation_endpoint": format!("{iss}/revoke"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "prompt_values_supported": ["none", "login", "consent", "select_account"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "name", "preferred_username", "email"],
        "authorization_response_iss_parameter_supported": true,
    }))
}

async fn jwks(State(idp): State<Shared>) -> Json<Value> {
    Json(json!({ "keys": [idp.key.public_jwk()] }))
}

#[derive(Debug, Deserialize)]
struct AuthorizeParams {
    client_id: Option<String>,
    redirect_uri: Option<String>,
    response_type: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    prompt: Option<String>,
}

async fn authorize(
    State(idp): State<Shared>,
    headers: HeaderMap,
    Query(p): Query<AuthorizeParams>,
) -> Response {
    idp.inner
        .lock()
        .expect("idp lock")
        .stats
        .authorization_requests += 1;
    // Until client and redirect URI are known good, errors go to the user, not
    // to a redirect (RFC 6749 4.1.2.1).
    if p.client_id.as_deref() != Some(idp.config.client_id.as_str()) {
        return error_page("unknown client_id");
    }
    let Some(redirect_uri) = p
        .redirect_uri
        .filter(|r| idp.config.redirect_uris.contains(r))
    else {
        return error_page("redirect_uri is not registered for this client");
    };
    let prompts: Vec<&str> = p
        .prompt
        .as_deref()
        .unwrap_or("")
        .split(' ')
        .filter(|s| !s.is_empty())
        .collect();
    let mut tx = Transaction {
        redirect_uri,
        state: p.state,
        nonce: p.nonce,
        code_challenge: p.code_challenge.clone().unwrap_or_default(),
        scope: p.scope.unwrap_or_default(),
        must_login: prompts.contains(&"login") || prompts.contains(&"select_account"),
        must_consent: prompts.contains(&"consent"),
        created: now(),
    };
    let fail = |tx: &Transaction, error: &str| idp.back_to_client(tx, &[("error", error)]);
    if p.response_type.as_deref() != Some("code") {
        return fail(&tx, "unsupported_response_type");
    }
    if !tx.scope.split(' ').any(|s| s == "openid") {
        return fail(&tx, "invalid_scope");
    }
    if p.code_challenge_method.as_deref() != Some("S256") || tx.code_challenge.len() < 43 {
        return fail(&tx, "invalid_request");
    }
    let silent = prompts.contains(&"none");
    if silent && prompts.len() > 1 {
        return fail(&tx, "invalid_request");
    }
    if silent {
        tx.must_login = false;
        tx.must_consent = false;
    }
    let tx_id = random_token::<16>();
    {
        let mut inner = idp.inner.lock().expect("idp lock");
        let t = now();
        inner.transactions.retain(|_, tx| tx.created + TX_TTL > t);
        inner.transactions.insert(tx_id.clone(), tx);
    }
    idp.proceed(&tx_id, &headers, silent)
}

#[derive(Debug, Deserialize)]
struct TxParam {
    tx: String,
}

async fn continue_tx(
    State(idp): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<TxParam>,
) -> Response {
    idp.proceed(&q.tx, &headers, false)
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    tx: String,
    username: String,
    password: String,
}

async fn login(State(idp): State<Shared>, Form(form): Form<LoginForm>) -> Response {
    let user = USERS.iter().find(|u| {
        u.username == form.username
            && bool::from(u.password.as_bytes().ct_eq(form.password.as_bytes()))
    });
    let Some(user) = user else {
        return page(
            StatusCode::UNAUTHORIZED,
            LoginPage {
                client_id: &idp.config.client_id,
                tx: &form.tx,
                error: Some("Unknown user or wrong password."),
                users: USERS,
            }
            .render(),
        );
    };
    let sid = random_token::<24>();
    {
        let mut inner = idp.inner.lock().expect("idp lock");
        inner.sessions.insert(
            sid.clone(),
            BrowserSession {
                user,
                auth_time: now(),
            },
        );
        if let Some(tx) = inner.transactions.get_mut(&form.tx) {
            tx.must_login = false;
        }
    }
    // SameSite=None so chatgate's hidden iframe can use the session (where the
    // browser allows third-party cookies); Secure is accepted on loopback http.
    let cookie = format!("{SESSION_COOKIE}={sid}; Path=/; HttpOnly; Secure; SameSite=None");
    let mut response = Redirect::to(&format!("/authorize/continue?tx={}", form.tx)).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

#[derive(Debug, Deserialize)]
struct ConsentForm {
    tx: String,
    decision: Option<String>,
}

async fn consent(
    State(idp): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<ConsentForm>,
) -> Response {
    let Some(session) = idp.session(&headers) else {
        return error_page("you are not signed in");
    };
    let tx = idp
        .inner
        .lock()
        .expect("idp lock")
        .transactions
        .get(&form.tx)
        .cloned();
    let Some(tx) = tx else {
        return error_page("this sign-in expired; start again from the application");
    };
    if form.decision.as_deref() != Some("allow") {
        idp.inner
            .lock()
            .expect("idp lock")
            .transactions
            .remove(&form.tx);
        return idp.back_to_client(&tx, &[("error", "access_denied")]);
    }
    {
        let mut inner = idp.inner.lock().expect("idp lock");
        inner.consents.insert(session.user.username);
        if let Some(tx) = inner.transactions.get_mut(&form.tx) {
            tx.must_consent = false;
        }
    }
    idp.proceed(&form.tx, &headers, false)
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut r = (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn token(
    State(idp): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(refused) = idp.refuse_unknown_client(&headers, &form) {
        return refused;
    }
    let mut inner = idp.inner.lock().expect("idp lock");
    inner.stats.token_requests += 1;
    let body = match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let code = form.get("code").cloned().unwrap_or_default();
            let Some(grant) = inner.codes.remove(&code) else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown or used code",
                );
            };
            if grant.expires < now() {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "the code expired");
            }
            if form.get("redirect_uri") != Some(&grant.redirect_uri) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "redirect_uri mismatch",
                );
            }
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(sha2::Sha256::digest(verifier.as_bytes()));
            if !bool::from(challenge.as_bytes().ct_eq(grant.code_challenge.as_bytes())) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "PKCE verification failed",
                );
            }
            idp.issue(&mut inner, grant.grant, grant.nonce.as_deref())
        }
        Some("refresh_token") => {
            inner.stats.refresh_requests += 1;
            let rt = form.get("refresh_token").cloned().unwrap_or_default();
            let Some((grant, spent, expires)) = inner.refresh_tokens.get(&rt).cloned() else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown or revoked refresh token",
                );
            };
            if spent {
                // Reuse of a rotated refresh token: someone has a copy. Like real
                // IdPs, revoke everything issued under this grant.
                Idp::revoke_family(&mut inner, &grant.family);
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "refresh token reused; grant revoked",
                );
            }
            if expires < now() {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "the refresh token expired",
                );
            }
            if let Some(entry) = inner.refresh_tokens.get_mut(&rt) {
                entry.1 = true;
            }
            idp.issue(&mut inner, grant, None)
        }
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "use authorization_code or refresh_token",
            );
        }
    };
    let mut r = Json(body).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn userinfo(State(idp): State<Shared>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let found = idp
        .inner
        .lock()
        .expect("idp lock")
        .access_tokens
        .get(token)
        .cloned();
    match found {
        Some((grant, expires)) if expires > now() => Json(json!({
            "sub": grant.user.username,
            "name": grant.user.name,
            "preferred_username": grant.user.username,
            "email": grant.user.email,
            "email_verified": true,
        }))
        .into_response(),
        _ => {
            let mut r = oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "unknown or expired access token",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            r
        }
    }
}

async fn revoke(
    State(idp): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(refused) = idp.refuse_unknown_client(&headers, &form) {
        return refused;
    }
    let token = form.get("token").cloned().unwrap_or_default();
    let mut inner = idp.inner.lock().expect("idp lock");
    inner.stats.revocations += 1;
    if let Some((grant, _, _)) = inner.refresh_tokens.get(&token).cloned() {
        Idp::revoke_family(&mut inner, &grant.family);
    } else {
        inner.access_tokens.remove(&token);
    }
    // RFC 7009: 200 also for unknown tokens.
    StatusCode::OK.into_response()
}

async fn sign_out(State(idp): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(sid) = session_id(&headers) {
        idp.inner.lock().expect("idp lock").sessions.remove(&sid);
    }
    Redirect::to("/").into_response()
}

async fn forget_consents(State(idp): State<Shared>) -> Response {
    idp.inner.lock().expect("idp lock").consents.clear();
    Redirect::to("/").into_response()
}

/// Counters, for the browser tests and for the curious.
async fn stats(State(idp): State<Shared>) -> Json<Value> {
    Json(
        serde_json::to_value(idp.inner.lock().expect("idp lock").stats.clone()).unwrap_or_default(),
    )
}

/// Visit top-level: sets a cookie of this site.
async fn probe_set() -> Response {
    (
        [(
            header::SET_COOKIE,
            "probe=1; Path=/; Secure; SameSite=None; Max-Age=3600",
        )],
        "probe cookie set",
    )
        .into_response()
}

/// Frame it from another site: posts whether the browser sent the cookie.
async fn probe_read(headers: HeaderMap) -> Response {
    let sent = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.split(';').any(|p| p.trim() == "probe=1"));
    Html(format!(
        "<!doctype html><script>parent.postMessage({{ probeCookieSent: {sent} }}, \"*\")</script>"
    ))
    .into_response()
}
