//! The development IdP's endpoints: discovery, JWKS, authorization with its
//! login and consent pages, token, userinfo, revocation and the dev helpers.

use std::collections::HashMap;

use askama::Template;
use axum::Json;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Digest as _;
use subtle::ConstantTimeEq as _;

use crate::secret::random_token;

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

use super::*;

pub(super) async fn home(State(idp): State<Shared>, headers: HeaderMap) -> Response {
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

pub(super) async fn discovery(State(idp): State<Shared>) -> Json<Value> {
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
        "end_session_endpoint": format!("{iss}/end-session"),
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
    }))
}

pub(super) async fn jwks(State(idp): State<Shared>) -> Json<Value> {
    Json(json!({ "keys": [idp.key.public_jwk()] }))
}

#[derive(Debug, Deserialize)]
pub(super) struct AuthorizeParams {
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

pub(super) async fn authorize(
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
pub(super) struct TxParam {
    tx: String,
}

pub(super) async fn continue_tx(
    State(idp): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<TxParam>,
) -> Response {
    idp.proceed(&q.tx, &headers, false)
}

#[derive(Debug, Deserialize)]
pub(super) struct LoginForm {
    tx: String,
    username: String,
    password: String,
}

pub(super) async fn login(State(idp): State<Shared>, Form(form): Form<LoginForm>) -> Response {
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
                sid: random_token::<16>(),
            },
        );
        if let Some(tx) = inner.transactions.get_mut(&form.tx) {
            tx.must_login = false;
        }
    }
    // SameSite=None so chatgate's hidden iframe can use the session (where the
    // browser allows third-party cookies); Chromium and Firefox accept Secure
    // on loopback http. WebKit drops every Secure cookie there, so a second,
    // first-party-only copy without Secure keeps the popup signed in.
    let cookies = [
        format!("{SESSION_COOKIE}={sid}; Path=/; HttpOnly; Secure; SameSite=None"),
        format!("{SESSION_COOKIE_LAX}={sid}; Path=/; HttpOnly; SameSite=Lax"),
    ];
    let mut response = Redirect::to(&format!("/authorize/continue?tx={}", form.tx)).into_response();
    for cookie in cookies {
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

#[derive(Debug, Deserialize)]
pub(super) struct ConsentForm {
    tx: String,
    decision: Option<String>,
}

pub(super) async fn consent(
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

pub(super) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut r = (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub(super) async fn token(
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

pub(super) async fn userinfo(State(idp): State<Shared>, headers: HeaderMap) -> Response {
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

pub(super) async fn revoke(
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

pub(super) async fn sign_out(State(idp): State<Shared>, headers: HeaderMap) -> Response {
    idp.end_session(&headers).await;
    Redirect::to("/").into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct EndSessionQuery {
    post_logout_redirect_uri: Option<String>,
    state: Option<String>,
}

/// RP-Initiated Logout: signs the browser out (no confirmation: this is a
/// development provider) and sends it back to a registered post-logout
/// redirect URI with `state`, or to the home page.
pub(super) async fn end_session(
    State(idp): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<EndSessionQuery>,
) -> Response {
    idp.end_session(&headers).await;
    let registered = q.post_logout_redirect_uri.filter(|uri| {
        idp.chatgates()
            .any(|c| *uri == format!("{c}/v1/signed-out"))
    });
    match registered.and_then(|u| url::Url::parse(&u).ok()) {
        Some(mut url) => {
            if let Some(state) = &q.state {
                url.query_pairs_mut().append_pair("state", state);
            }
            Redirect::to(url.as_str()).into_response()
        }
        None => Redirect::to("/").into_response(),
    }
}

pub(super) async fn forget_consents(State(idp): State<Shared>) -> Response {
    idp.inner.lock().expect("idp lock").consents.clear();
    Redirect::to("/").into_response()
}

/// Counters, for the browser tests and for the curious.
pub(super) async fn stats(State(idp): State<Shared>) -> Json<Value> {
    Json(
        serde_json::to_value(idp.inner.lock().expect("idp lock").stats.clone()).unwrap_or_default(),
    )
}

/// Visit top-level: sets a cookie of this site.
pub(super) async fn probe_set() -> Response {
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
pub(super) async fn probe_read(headers: HeaderMap) -> Response {
    let sent = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.split(';').any(|p| p.trim() == "probe=1"));
    Html(format!(
        "<!doctype html><script>parent.postMessage({{ probeCookieSent: {sent} }}, \"*\")</script>"
    ))
    .into_response()
}
