//! An in-process OpenID provider for edge cases a real IdP will not produce on
//! demand: it signs real ES256 ID tokens, checks PKCE and client
//! authentication, counts calls, and can be told to misbehave.

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::Digest as _;

pub const CLIENT_ID: &str = "chatgate-test";
pub const CLIENT_SECRET: &str = "fake-idp-client-secret";

/// A key of the fake IdP: chatgate's own key type under a name of the
/// test's choosing (`key-1`, `rogue`, ...).
pub type SigningKey = chatgate::chat_token::SigningKey;

/// A new ES256 key named `kid`.
pub fn signing_key(kid: &str) -> SigningKey {
    SigningKey::generate(chatgate::chat_token::SigningAlg::Es256).with_kid(kid)
}

/// What the next token response should look like.
#[derive(Debug, Clone, Default)]
pub struct TokenBehavior {
    /// Claims to add to (or replace in) the ID token.
    pub claims: serde_json::Map<String, Value>,
    /// Claims to remove from the ID token.
    pub remove_claims: Vec<String>,
    /// Send no refresh token.
    pub no_refresh_token: bool,
    /// Answer with this OAuth error instead of tokens.
    pub error: Option<String>,
    /// Sign the ID token with this key (it need not be published).
    pub sign_with: Option<usize>,
    /// Put this `kid` in the header instead of the signing key's.
    pub header_kid: Option<String>,
    /// Send an unsigned `alg: none` ID token.
    pub alg_none: bool,
    /// Send no ID token at all.
    pub no_id_token: bool,
    /// "Sign" the ID token with HS256 and the client secret.
    pub hmac_with_client_secret: bool,
}

#[derive(Default)]
pub struct IdpState {
    pub issuer: String,
    /// Advertised `issuer` in discovery; defaults to `issuer`.
    pub discovery_issuer: Option<String>,
    pub keys: Vec<SigningKey>,
    /// Indices into `keys` that the JWKS publishes.
    pub published: Vec<usize>,
    /// Index of the key that signs by default.
    pub current: usize,
    /// RFC 9207 `iss` in authorization responses (and advertised in metadata).
    pub iss_param: bool,
    /// `authorize` answers with this error instead of a code.
    pub authorize_error: Option<String>,
    /// Put this `iss` in the authorization response instead of the issuer.
    pub authorize_iss_override: Option<String>,
    /// The subject and extra claims of the signed-in user.
    pub user: serde_json::Map<String, Value>,
    pub next_token: TokenBehavior,
    /// Whether the token endpoint expects `client_secret_post` (else Basic).
    pub expect_client_secret_post: bool,
    pub codes: HashMap<String, CodeGrant>,
    /// Refresh tokens the IdP issued: `true` while unused. Rotation: a refresh
    /// token works once; presenting a used one again (a replay) revokes its
    /// whole grant, as oidc-provider, Auth0, Okta and Entra do.
    pub refresh_tokens: HashMap<String, bool>,
    /// The grant each refresh token belongs to (a token seeded by a test is a
    /// grant of its own).
    pub grant_of: HashMap<String, String>,
    pub revoked_grants: HashSet<String>,
    /// The `sub` of the ID tokens a grant's refreshes carry, when not the
    /// signed-in user's (a benchmark refreshing many users).
    pub subjects: HashMap<String, String>,
    /// Used refresh tokens presented again.
    pub replays: usize,
    /// Refresh grants are processed (the token rotated) at once, but answered
    /// this much later — a slow IdP or a slow network back.
    pub refresh_answer_delay: Option<Duration>,
    /// Refresh grants wait this long before they are processed; a client that
    /// gives up meanwhile leaves the refresh token unused.
    pub refresh_arrival_delay: Option<Duration>,
    /// The JWKS endpoint answers with this HTTP status (an outage), when set.
    pub jwks_status: Option<u16>,
    pub token_calls: usize,
    pub jwks_calls: usize,
    pub revoked: Vec<String>,
    /// Every refresh token the token endpoint processed (not those it turned
    /// away during an outage), in order.
    pub presented_refresh_tokens: Vec<String>,
    /// Discovery names this token endpoint instead of `{issuer}/token`.
    pub token_endpoint_override: Option<String>,
    /// Answer token requests with this HTTP status (an outage), when set.
    pub token_endpoint_status: Option<u16>,
    /// Answer refresh grants with this status and body (an IdP's own way of
    /// refusing: `{"error": "invalid_request"}`, a bare 400, ...), when set.
    pub refresh_answer: Option<(u16, String)>,
    pub last_authorize_query: HashMap<String, String>,
    pub access_token_ttl: i64,
    /// Discovery names no `end_session_endpoint`.
    pub no_end_session: bool,
    /// Discovery names no `revocation_endpoint` (LemonLDAP::NG 2.16).
    pub no_revocation: bool,
    /// The revocation endpoint answers with this status (it fails), when set.
    pub revocation_status: Option<u16>,
    /// The queries `end_session_endpoint` received.
    pub end_session_queries: Vec<HashMap<String, String>>,
    /// ID tokens issued, in order.
    pub issued_id_tokens: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct CodeGrant {
    pub nonce: Option<String>,
    pub code_challenge: String,
    pub redirect_uri: String,
    pub scope: String,
}

#[derive(Clone)]
pub struct FakeIdp {
    pub issuer: String,
    pub state: Arc<Mutex<IdpState>>,
    /// The CA that signed the IdP's certificate (chatgate's `idp_ca_file`).
    pub ca_pem: String,
}

impl FakeIdp {
    /// Serves HTTPS on 127.0.0.1 with a certificate from a fresh test CA.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let issuer = format!("https://127.0.0.1:{port}");
        let ca = super::tls::TestCa::new();
        let tls =
            axum_server::tls_rustls::RustlsConfig::from_config(ca.server_config(&["127.0.0.1"]));
        let mut user = serde_json::Map::new();
        user.insert("sub".into(), json!("user-123"));
        user.insert("name".into(), json!("Alice Example"));
        user.insert("email".into(), json!("alice@example.com"));
        user.insert("oid".into(), json!("00000000-0000-0000-0000-0000000000a1"));
        user.insert("tid".into(), json!("tenant-1"));
        user.insert("sid".into(), json!("idp-session-1"));
        let state = Arc::new(Mutex::new(IdpState {
            issuer: issuer.clone(),
            keys: vec![signing_key("key-1")],
            published: vec![0],
            iss_param: true,
            user,
            access_token_ttl: 3600,
            ..Default::default()
        }));
        let router = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            // Entra ID style: {issuer}/organizations/v2.0/.well-known/...
            .route(
                "/{tenant}/v2.0/.well-known/openid-configuration",
                get(discovery),
            )
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/revoke", post(revoke))
            .route("/end-session", get(end_session))
            .with_state(state.clone());
        let server = axum_server::from_tcp_rustls(listener, tls).unwrap();
        tokio::spawn(async move {
            server.serve(router.into_make_service()).await.unwrap();
        });
        Self {
            issuer,
            state,
            ca_pem: ca.ca_pem,
        }
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut IdpState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    pub fn token_calls(&self) -> usize {
        self.with(|s| s.token_calls)
    }

    pub fn jwks_calls(&self) -> usize {
        self.with(|s| s.jwks_calls)
    }

    /// Every refresh token presented so far was presented once: nothing was
    /// replayed, no grant was revoked for reuse.
    #[track_caller]
    pub fn assert_no_refresh_token_replayed(&self) {
        self.with(|s| {
            let unique: HashSet<&String> = s.presented_refresh_tokens.iter().collect();
            assert_eq!(
                unique.len(),
                s.presented_refresh_tokens.len(),
                "a refresh token was presented twice: {:?}",
                s.presented_refresh_tokens
            );
            assert_eq!(s.replays, 0, "the IdP detected a replay");
            assert!(s.revoked_grants.is_empty(), "a grant was revoked");
        });
    }

    /// Refresh requests the IdP processed.
    pub fn refreshes(&self) -> usize {
        self.with(|s| s.presented_refresh_tokens.len())
    }

    /// Whether `rt` is a refresh token the IdP would accept now.
    pub fn accepts(&self, rt: &str) -> bool {
        self.with(|s| {
            s.refresh_tokens.get(rt) == Some(&true) && !s.revoked_grants.contains(&grant(s, rt))
        })
    }

    /// Waits until the IdP has processed `n` refresh requests.
    pub async fn wait_for_refreshes(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.refreshes() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "the IdP saw {} refreshes, not {n}",
                self.refreshes()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A logout token (Back-Channel Logout 1.0) signed with the current key:
    /// `iss`, `aud`, `iat`, `exp`, `jti` and the logout event, then `claims`
    /// (a `null` value removes a claim).
    pub fn logout_token(&self, claims: Value) -> String {
        self.with(|s| {
            let key = &s.keys[s.current];
            key.sign_jwt(&logout_claims(s, claims), None)
        })
    }

    /// Adds a key, publishes it, and signs with it from now on.
    pub fn rotate_key(&self, kid: &str) {
        self.with(|s| {
            s.keys.push(signing_key(kid));
            let i = s.keys.len() - 1;
            s.published.push(i);
            s.current = i;
        });
    }
}

async fn discovery(State(state): State<Arc<Mutex<IdpState>>>) -> Json<Value> {
    let s = state.lock().unwrap();
    let iss = s.issuer.clone();
    Json(json!({
        "issuer": s.discovery_issuer.clone().unwrap_or(iss.clone()),
        "authorization_endpoint": format!("{iss}/authorize"),
        "token_endpoint": s.token_endpoint_override.clone().unwrap_or(format!("{iss}/token")),
        "jwks_uri": format!("{iss}/jwks"),
        "revocation_endpoint": (!s.no_revocation).then(|| format!("{iss}/revoke")),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256", "HS256", "none"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": s.iss_param,
        "end_session_endpoint": (!s.no_end_session).then(|| format!("{iss}/end-session")),
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
    }))
}

/// RP-Initiated Logout: records the request and sends the browser back.
async fn end_session(
    State(state): State<Arc<Mutex<IdpState>>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    state.lock().unwrap().end_session_queries.push(q.clone());
    let mut back = url::Url::parse(&q["post_logout_redirect_uri"]).unwrap();
    if let Some(st) = q.get("state") {
        back.query_pairs_mut().append_pair("state", st);
    }
    Redirect::to(back.as_str()).into_response()
}

async fn jwks(State(state): State<Arc<Mutex<IdpState>>>) -> Response {
    let mut s = state.lock().unwrap();
    s.jwks_calls += 1;
    if let Some(status) = s.jwks_status {
        return (StatusCode::from_u16(status).unwrap(), "unavailable").into_response();
    }
    let keys: Vec<&Jwk> = s
        .published
        .iter()
        .map(|i| s.keys[*i].public_jwk())
        .collect();
    Json(json!({ "keys": keys })).into_response()
}

/// The grant a refresh token belongs to.
fn grant(s: &IdpState, rt: &str) -> String {
    s.grant_of
        .get(rt)
        .cloned()
        .unwrap_or_else(|| rt.to_string())
}

async fn authorize(
    State(state): State<Arc<Mutex<IdpState>>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut s = state.lock().unwrap();
    s.last_authorize_query = q.clone();
    let redirect = q.get("redirect_uri").cloned().unwrap_or_default();
    let mut url = url::Url::parse(&redirect).unwrap();
    {
        let mut pairs = url.query_pairs_mut();
        if let Some(st) = q.get("state") {
            pairs.append_pair("state", st);
        }
        if s.iss_param || s.authorize_iss_override.is_some() {
            let iss = s.authorize_iss_override.clone().unwrap_or(s.issuer.clone());
            pairs.append_pair("iss", &iss);
        }
        match &s.authorize_error {
            Some(error) => {
                pairs.append_pair("error", error);
                pairs.append_pair("error_description", "The fake IdP says no");
            }
            None => {
                let code = chatgate::secret::random_token::<16>();
                pairs.append_pair("code", &code);
                s.codes.insert(
                    code,
                    CodeGrant {
                        nonce: q.get("nonce").cloned(),
                        code_challenge: q.get("code_challenge").cloned().unwrap_or_default(),
                        redirect_uri: redirect.clone(),
                        scope: q.get("scope").cloned().unwrap_or_default(),
                    },
                );
            }
        }
    }
    Redirect::to(url.as_str()).into_response()
}

fn oauth_error(code: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": code, "error_description": "fake IdP"})),
    )
        .into_response()
}

fn client_ok(s: &IdpState, headers: &HeaderMap, form: &HashMap<String, String>) -> bool {
    if s.expect_client_secret_post {
        return form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
            && form.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET);
    }
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    );
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(expected.as_str())
}

/// The claims of a logout token (see [`FakeIdp::logout_token`]).
pub fn logout_claims(s: &IdpState, extra: Value) -> Value {
    let now = chatgate::time::now();
    let mut claims = json!({
        "iss": s.issuer,
        "aud": CLIENT_ID,
        "iat": now,
        "exp": now + 120,
        "jti": chatgate::secret::random_token::<12>(),
        "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

/// Signs an ID token for the current user with the given behaviour.
pub fn id_token(s: &IdpState, nonce: Option<&str>, behavior: &TokenBehavior) -> String {
    let now = chatgate::time::now();
    let mut claims = s.user.clone();
    claims.insert("iss".into(), json!(s.issuer));
    claims.insert("aud".into(), json!(CLIENT_ID));
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now + 300));
    claims.insert("auth_time".into(), json!(now - 5));
    if let Some(n) = nonce {
        claims.insert("nonce".into(), json!(n));
    }
    for (k, v) in &behavior.claims {
        claims.insert(k.clone(), v.clone());
    }
    for k in &behavior.remove_claims {
        claims.remove(k);
    }
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    if behavior.alg_none {
        let header = json!({"alg": "none", "typ": "JWT", "kid": s.keys[s.current].kid()});
        return format!("{}.{}.", b64(&header), b64(&Value::Object(claims)));
    }
    if behavior.hmac_with_client_secret {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(s.keys[s.current].kid().to_string());
        return jsonwebtoken::encode(
            &header,
            &Value::Object(claims),
            &EncodingKey::from_secret(CLIENT_SECRET.as_bytes()),
        )
        .unwrap();
    }
    let key = &s.keys[behavior.sign_with.unwrap_or(s.current)];
    key.sign_jwt(&Value::Object(claims), behavior.header_kid.as_deref())
}

async fn token(
    State(state): State<Arc<Mutex<IdpState>>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let refresh = form.get("grant_type").map(String::as_str) == Some("refresh_token");
    let arrival = refresh
        .then(|| state.lock().unwrap().refresh_arrival_delay)
        .flatten();
    if let Some(delay) = arrival {
        tokio::time::sleep(delay).await;
    }
    let (response, answer_delay) = {
        let mut s = state.lock().unwrap();
        let response = token_now(&mut s, &headers, &form);
        (
            response,
            refresh.then_some(s.refresh_answer_delay).flatten(),
        )
    };
    if let Some(delay) = answer_delay {
        tokio::time::sleep(delay).await;
    }
    response
}

fn token_now(s: &mut IdpState, headers: &HeaderMap, form: &HashMap<String, String>) -> Response {
    s.token_calls += 1;
    if form.get("grant_type").map(String::as_str) == Some("refresh_token")
        && let Some((status, body)) = &s.refresh_answer
    {
        let mut response = (StatusCode::from_u16(*status).unwrap(), body.clone()).into_response();
        if body.starts_with('{') {
            response.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            );
        }
        return response;
    }
    if let Some(status) = s.token_endpoint_status {
        return (
            StatusCode::from_u16(status).unwrap(),
            "<html>down for maintenance</html>",
        )
            .into_response();
    }
    if !client_ok(s, headers, form) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    if let Some(rt) = form.get("refresh_token") {
        s.presented_refresh_tokens.push(rt.clone());
    }
    let mut behavior = std::mem::take(&mut s.next_token);
    if let Some(error) = &behavior.error {
        return oauth_error(error);
    }
    let (nonce, scope, grant_id) = match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let Some(grant) = form.get("code").and_then(|c| s.codes.remove(c)) else {
                return oauth_error("invalid_grant");
            };
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(sha2::Sha256::digest(verifier.as_bytes()));
            if challenge != grant.code_challenge
                || form.get("redirect_uri") != Some(&grant.redirect_uri)
            {
                return oauth_error("invalid_grant");
            }
            (
                grant.nonce,
                grant.scope,
                format!("grant-{}", chatgate::secret::random_token::<8>()),
            )
        }
        Some("refresh_token") => {
            let rt = form.get("refresh_token").cloned().unwrap_or_default();
            let grant_id = grant(s, &rt);
            match s.refresh_tokens.get(&rt) {
                Some(true) if !s.revoked_grants.contains(&grant_id) => {}
                Some(false) => {
                    // Reuse detection: a used refresh token again ends the grant.
                    s.replays += 1;
                    s.revoked_grants.insert(grant_id);
                    return oauth_error("invalid_grant");
                }
                _ => return oauth_error("invalid_grant"),
            }
            s.refresh_tokens.insert(rt, false); // rotation: single use
            if let Some(sub) = s.subjects.get(&grant_id) {
                behavior.claims.entry("sub").or_insert_with(|| json!(sub));
            }
            (None, "openid offline_access".to_string(), grant_id)
        }
        _ => return oauth_error("unsupported_grant_type"),
    };
    let mut body = json!({
        "access_token": format!("at-{}", chatgate::secret::random_token::<12>()),
        "token_type": "Bearer",
        "expires_in": s.access_token_ttl,
        "scope": scope,
    });
    if !behavior.no_refresh_token {
        let rt = format!("rt-{}", chatgate::secret::random_token::<12>());
        s.refresh_tokens.insert(rt.clone(), true);
        s.grant_of.insert(rt.clone(), grant_id);
        body["refresh_token"] = json!(rt);
    }
    if !behavior.no_id_token {
        let token = id_token(s, nonce.as_deref(), &behavior);
        s.issued_id_tokens.push(token.clone());
        body["id_token"] = json!(token);
    }
    Json(body).into_response()
}

async fn revoke(
    State(state): State<Arc<Mutex<IdpState>>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut s = state.lock().unwrap();
    if let Some(status) = s.revocation_status {
        return StatusCode::from_u16(status).unwrap().into_response();
    }
    if !client_ok(&s, &headers, &form) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let token = form.get("token").cloned().unwrap_or_default();
    if s.refresh_tokens.contains_key(&token) {
        // Revoking a refresh token ends its grant.
        let grant_id = grant(&s, &token);
        s.revoked_grants.insert(grant_id);
    }
    s.refresh_tokens.insert(token.clone(), false);
    s.revoked.push(token);
    StatusCode::OK.into_response()
}
