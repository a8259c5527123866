//! The development OpenID provider of `chatgate demo`, held to what real IdPs
//! do: PKCE, single-use codes, exact redirect URIs, prompt handling with
//! RFC 9207 `iss`, rotating refresh tokens whose reuse revokes the grant,
//! userinfo and revocation. (The browser tests run chatgate's sign-in flows
//! against it too.)

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use chatgate::demo::idp::{DevIdpConfig, router};
use chatgate::secret::SecretString;
use common::browser::{Browser, location};
use serde_json::Value;
use sha2::Digest as _;

const CLIENT: &str = "chatgate-demo";
const SECRET: &str = "dev-idp-test-secret";
const REDIRECT: &str = "http://127.0.0.1:9/v1/callback";

async fn start() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let app = router(DevIdpConfig {
        issuer: issuer.clone(),
        client_id: CLIENT.into(),
        client_secret: SecretString::from(SECRET),
        redirect_uris: vec![REDIRECT.into()],
        access_token_ttl: Duration::from_secs(60),
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    issuer
}

const VERIFIER: &str = "a-pkce-verifier-that-is-long-enough-to-be-valid-0123456789";

fn challenge() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(VERIFIER.as_bytes()))
}

fn authorize_url(issuer: &str, extra: &str) -> String {
    format!(
        "{issuer}/authorize?client_id={CLIENT}&redirect_uri={}&response_type=code&scope=openid%20profile%20email%20offline_access&state=st&nonce=n1&code_challenge={}&code_challenge_method=S256{extra}",
        url::form_urlencoded::byte_serialize(REDIRECT.as_bytes()).collect::<String>(),
        challenge()
    )
}

fn query(url: &str) -> HashMap<String, String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

#[tokio::test]
async fn the_development_provider_answers_only_for_loopback_host_names() {
    let issuer = start().await;
    let get = |host: &'static str| {
        common::http_client()
            .get(format!("{issuer}/.well-known/openid-configuration"))
            .header("host", host)
            .send()
    };
    assert_eq!(get("127.0.0.1").await.unwrap().status(), 200);
    assert_eq!(get("localhost:8402").await.unwrap().status(), 200);
    // DNS rebinding: an attacker's name pointed at 127.0.0.1.
    assert_eq!(get("evil.example.com").await.unwrap().status(), 421);
    assert_eq!(get("evil.example.com:8402").await.unwrap().status(), 421);
}

/// Logs `user` in and consents; returns the code.
async fn sign_in(browser: &mut Browser, issuer: &str, user: &str, password: &str) -> String {
    let page = browser
        .get(&authorize_url(issuer, ""))
        .await
        .text()
        .await
        .unwrap();
    let tx = page
        .split("name=\"tx\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let r = post_form(
        browser,
        &format!("{issuer}/login"),
        &[("tx", &tx), ("username", user), ("password", password)],
    )
    .await;
    let r = browser.get(&format!("{issuer}{}", location(&r))).await;
    assert!(r.text().await.unwrap().contains("id=\"consent\""));
    let r = post_form(
        browser,
        &format!("{issuer}/consent"),
        &[("tx", &tx), ("decision", "allow")],
    )
    .await;
    let back = location(&r);
    let q = query(&back);
    assert_eq!(q["state"], "st");
    assert_eq!(q["iss"], issuer);
    q["code"].clone()
}

async fn post_form(browser: &mut Browser, url: &str, form: &[(&str, &str)]) -> reqwest::Response {
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let host = url::Url::parse(url).unwrap();
    let jar_key = format!("{}:{}", host.host_str().unwrap(), host.port().unwrap());
    let mut req = common::http_client()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(jar) = browser.cookies.get(&jar_key) {
        let cookies: Vec<String> = jar.iter().map(|(k, (v, _))| format!("{k}={v}")).collect();
        req = req.header("cookie", cookies.join("; "));
    }
    let r = req.send().await.unwrap();
    for v in r.headers().get_all("set-cookie") {
        let raw = v.to_str().unwrap().to_string();
        let (pair, _) = raw.split_once(';').unwrap();
        let (k, val) = pair.split_once('=').unwrap();
        browser
            .cookies
            .entry(jar_key.clone())
            .or_default()
            .insert(k.into(), (val.into(), raw.clone()));
    }
    r
}

async fn token(issuer: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let r = common::http_client()
        .post(format!("{issuer}/token"))
        .basic_auth(CLIENT, Some(SECRET))
        .form(form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn requests_it_cannot_trust_are_refused_without_a_redirect_or_with_an_error() {
    let issuer = start().await;
    let mut b = Browser::new();
    // Unknown client or unregistered redirect URI: an error page, no redirect.
    let r = b
        .get(&authorize_url(&issuer, "").replace(CLIENT, "someone"))
        .await;
    assert_eq!(r.status(), 400);
    let r = b
        .get(&authorize_url(&issuer, "").replace("127.0.0.1%3A9", "evil.example.com"))
        .await;
    assert_eq!(r.status(), 400);
    // No PKCE: an error back to the client.
    let r = b
        .get(&authorize_url(&issuer, "").replace("S256", "plain"))
        .await;
    assert_eq!(query(&location(&r))["error"], "invalid_request");
    // prompt=none without a session.
    let r = b.get(&authorize_url(&issuer, "&prompt=none")).await;
    let q = query(&location(&r));
    assert_eq!(q["error"], "login_required");
    assert_eq!(q["iss"], issuer);
    let meta: Value = b
        .get(&format!("{issuer}/.well-known/openid-configuration"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(meta["authorization_response_iss_parameter_supported"], true);
    assert_eq!(
        meta["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
}

#[tokio::test]
async fn codes_need_the_pkce_verifier_and_work_once() {
    let issuer = start().await;
    let mut b = Browser::new();
    let code = sign_in(&mut b, &issuer, "alice", "alice").await;
    let (status, body) = token(
        &issuer,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            (
                "code_verifier",
                "wrong-verifier-wrong-verifier-wrong-verifier-0",
            ),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    // Signed in and consented now: the next authorization answers with a code at once.
    let code = query(&location(&b.get(&authorize_url(&issuer, "")).await))["code"].clone();
    let ok = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ];
    let (status, body) = token(&issuer, &ok).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["refresh_token"].is_string() && body["id_token"].is_string());
    let (status, _) = token(&issuer, &ok).await;
    assert_eq!(status, 400, "a code works once");
    // With consent given and a session, prompt=none now answers with a code.
    let r = b.get(&authorize_url(&issuer, "&prompt=none")).await;
    assert!(query(&location(&r)).contains_key("code"));
    // Wrong client secret.
    let r = common::http_client()
        .post(format!("{issuer}/token"))
        .basic_auth(CLIENT, Some("nope"))
        .form(&ok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn refresh_tokens_rotate_and_reuse_revokes_the_grant() {
    let issuer = start().await;
    let mut b = Browser::new();
    let code = sign_in(&mut b, &issuer, "bob", "bob").await;
    let (_, first) = token(
        &issuer,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    let rt1 = first["refresh_token"].as_str().unwrap().to_string();
    let (status, second) = token(
        &issuer,
        &[("grant_type", "refresh_token"), ("refresh_token", &rt1)],
    )
    .await;
    assert_eq!(status, 200);
    let rt2 = second["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt1, rt2);
    // userinfo answers for the new access token.
    let info: Value = common::http_client()
        .get(format!("{issuer}/userinfo"))
        .bearer_auth(second["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["sub"], "bob");
    assert_eq!(info["name"], "Bob Builder");
    // Reusing the spent refresh token revokes the whole grant, rt2 included.
    let (status, _) = token(
        &issuer,
        &[("grant_type", "refresh_token"), ("refresh_token", &rt1)],
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = token(
        &issuer,
        &[("grant_type", "refresh_token"), ("refresh_token", &rt2)],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let r = common::http_client()
        .get(format!("{issuer}/userinfo"))
        .bearer_auth(second["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn revocation_ends_the_grant_and_wrong_passwords_are_refused() {
    let issuer = start().await;
    let mut b = Browser::new();
    let page = b
        .get(&authorize_url(&issuer, ""))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("Development OpenID provider"),
        "its pages say what it is"
    );
    let tx = page
        .split("name=\"tx\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let r = post_form(
        &mut b,
        &format!("{issuer}/login"),
        &[("tx", &tx), ("username", "alice"), ("password", "bob")],
    )
    .await;
    assert_eq!(r.status(), 401);
    let code = sign_in(&mut b, &issuer, "alice", "alice").await;
    let (_, tokens) = token(
        &issuer,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    let rt = tokens["refresh_token"].as_str().unwrap();
    let r = common::http_client()
        .post(format!("{issuer}/revoke"))
        .basic_auth(CLIENT, Some(SECRET))
        .form(&[("token", rt), ("token_type_hint", "refresh_token")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, _) = token(
        &issuer,
        &[("grant_type", "refresh_token"), ("refresh_token", rt)],
    )
    .await;
    assert_eq!(status, 400);
}
