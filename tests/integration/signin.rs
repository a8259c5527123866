//! The server-side authorization-code flow against an in-process IdP that
//! signs real tokens, on SQLite and PostgreSQL. Every failure case also checks
//! that nothing was stored.

use crate::common;
use chatgate::secret::ExposeSecret as _;

use chatgate::store::Store;
use common::browser::{Browser, location, posted_message};
use common::fake_idp::{FakeIdp, TokenBehavior};
use common::{TestApp, TestConfig, TestDb, spawn_app};
use serde_json::{Value, json};

const ORIGIN: &str = "https://www.contoso.com";
const USER: &str = "idp:user-123";

pub(crate) struct Setup {
    pub(crate) idp: FakeIdp,
    pub(crate) app: TestApp,
    pub(crate) browser: Browser,
    pub(crate) cfg: TestConfig,
}

async fn setup(db: &TestDb) -> Setup {
    setup_with(db, "", |c| c).await
}

pub(crate) async fn setup_with(
    db: &TestDb,
    provider_extra: &str,
    tweak: impl FnOnce(TestConfig) -> TestConfig,
) -> Setup {
    let idp = FakeIdp::start().await;
    let cfg = tweak(TestConfig::new(db).with_provider(&idp, provider_extra));
    let app = spawn_app(&cfg).await;
    Setup {
        idp,
        app,
        browser: Browser::new(),
        cfg,
    }
}

impl Setup {
    pub(crate) fn authorize_url(&self, mode: &str, extra: &str) -> String {
        let origin = url::form_urlencoded::byte_serialize(ORIGIN.as_bytes()).collect::<String>();
        self.app.url(&format!(
            "/v1/authorize?app=support&origin={origin}&mode={mode}{extra}"
        ))
    }

    /// `/v1/authorize` → the IdP's authorization URL.
    pub(crate) async fn start(&mut self, mode: &str, extra: &str) -> String {
        let url = self.authorize_url(mode, extra);
        let r = self.browser.get(&url).await;
        assert_eq!(
            r.status(),
            302,
            "authorize did not redirect: {}",
            r.text().await.unwrap()
        );
        location(&r)
    }

    /// The IdP's answer: the callback URL it redirects to.
    pub(crate) async fn at_idp(&mut self, idp_url: &str) -> String {
        let r = self.browser.get(idp_url).await;
        location(&r)
    }

    /// A whole flow; returns what the result page posts.
    pub(crate) async fn flow(&mut self, mode: &str) -> Value {
        let idp_url = self.start(mode, "").await;
        let callback = self.at_idp(&idp_url).await;
        let r = self.browser.get(&callback).await;
        posted_message(r)
            .await
            .expect("the result page posts a message")
    }

    async fn stored(&self) -> bool {
        self.app
            .state
            .store
            .get_vault_entry("support", USER)
            .await
            .unwrap()
            .is_some()
    }

    fn next_token(&self, behavior: TokenBehavior) {
        self.idp.with(|s| s.next_token = behavior);
    }
}

fn claims(pairs: &[(&str, Value)]) -> serde_json::Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

pub(crate) async fn exec(store: &Store, sql: &'static str) {
    match store {
        Store::Sqlite(p) => {
            sqlx::query(sql).execute(p).await.unwrap();
        }
        Store::Postgres(p) => {
            sqlx::query(sql).execute(p).await.unwrap();
        }
    }
}

fn assert_error(envelope: &Value, code: &str) {
    assert_eq!(envelope["target_origin"], ORIGIN, "{envelope}");
    assert_eq!(envelope["message"]["type"], "chatgate:error", "{envelope}");
    assert_eq!(envelope["message"]["error"], code, "{envelope}");
    assert_eq!(envelope["message"]["app"], "support");
}

async fn silent_sign_in_stores_tokens_and_posts_a_chat_token(db: &TestDb) {
    let mut s = setup(db).await;
    let envelope = s.flow("silent").await;
    assert_eq!(envelope["mode"], "silent");
    assert_eq!(envelope["target_origin"], ORIGIN);
    let m = &envelope["message"];
    assert_eq!(m["type"], "chatgate:success", "{envelope}");
    assert_eq!(m["user"]["id"], USER);
    assert_eq!(m["user"]["name"], "Alice Example");
    assert_eq!(m["user"]["email"], "alice@example.com");
    assert!(
        m.get("session_ticket").is_none(),
        "silent results carry no ticket"
    );

    // The chat token verifies against the published JWKS.
    let jwks: jsonwebtoken::jwk::JwkSet = s
        .app
        .get("/.well-known/jwks.json")
        .await
        .json()
        .await
        .unwrap();
    let claims = chatgate::chat_token::VerificationKeys::new(jwks.keys)
        .verify(
            m["chat_token"].as_str().unwrap(),
            &s.app.base_url,
            &["https://bot.contoso.com"],
            std::time::Duration::from_secs(30),
        )
        .unwrap();
    assert_eq!(claims.sub, USER);
    assert_eq!(claims.app, "support");
    assert_eq!(claims.exp, m["expires_at"].as_i64().unwrap());
    assert_eq!(claims.name.as_deref(), Some("Alice Example"));

    // The vault holds the tokens, encrypted.
    let entry = s
        .app
        .state
        .store
        .get_vault_entry("support", USER)
        .await
        .unwrap()
        .unwrap();
    assert!(entry.refresh_token.is_some());
    assert_eq!(entry.provider, "idp");
    let audit = s
        .app
        .state
        .store
        .list_audit(&chatgate::store::AuditFilter {
            user_id: Some(USER.into()),
            limit: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (audit[0].action.as_str(), audit[0].outcome.as_str()),
        ("signin", "ok")
    );

    // chatgate's session cookie: __Host-, Secure, HttpOnly, SameSite=None, Partitioned.
    let cookie = s
        .browser
        .set_cookie_line(&s.app.base_url, "__Host-chatgate")
        .expect("session cookie");
    for attr in [
        "Secure",
        "HttpOnly",
        "SameSite=None",
        "Partitioned",
        "Path=/",
    ] {
        assert!(cookie.contains(attr), "{attr} missing: {cookie}");
    }
}

async fn the_authorization_request_carries_pkce_state_nonce_and_prompt_none(db: &TestDb) {
    let mut s = setup(db).await;
    let url = s.authorize_url(
        "silent",
        "&login_hint=alice%40example.com&domain_hint=contoso.com",
    );
    let r = s.browser.get(&url).await;
    assert_eq!(r.status(), 302);
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert_eq!(csp, format!("frame-ancestors {ORIGIN}"));
    assert_eq!(r.headers()["referrer-policy"], "no-referrer");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let binding = s
        .browser
        .set_cookie_line(&s.app.base_url, "__Host-chatgate-flow")
        .expect("binding cookie");
    for attr in [
        "Secure",
        "HttpOnly",
        "SameSite=None",
        "Partitioned",
        "Path=/",
        "Max-Age=600",
    ] {
        assert!(binding.contains(attr), "{attr} missing: {binding}");
    }
    let idp_url = url::Url::parse(&location(&r)).unwrap();
    assert!(
        idp_url
            .as_str()
            .starts_with(&format!("{}/authorize?", s.idp.issuer))
    );
    let q: std::collections::HashMap<_, _> = idp_url.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], common::fake_idp::CLIENT_ID);
    assert_eq!(q["redirect_uri"], s.app.url("/v1/callback"));
    assert_eq!(q["prompt"], "none");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43);
    assert_eq!(q["login_hint"], "alice@example.com");
    assert_eq!(q["domain_hint"], "contoso.com");
    let scopes: Vec<&str> = q["scope"].split(' ').collect();
    for scope in ["openid", "profile", "email", "offline_access"] {
        assert!(scopes.contains(&scope), "{scopes:?}");
    }
    assert!(q["state"].len() >= 43 && q["nonce"].len() >= 43);
    // The state is stored hashed, not as sent.
    let state_param = q["state"].clone();
    let hashed = chatgate::secret::sha256_hex(state_param.as_bytes());
    let n: i64 = match &s.app.state.store {
        Store::Sqlite(p) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM pending_flows WHERE state_hash = $1")
                .bind(&hashed)
                .fetch_one(p)
                .await
                .unwrap()
        }
        Store::Postgres(p) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM pending_flows WHERE state_hash = $1")
                .bind(&hashed)
                .fetch_one(p)
                .await
                .unwrap()
        }
    };
    assert_eq!(n, 1);
}

async fn an_origin_that_is_not_allow_listed_gets_a_page_that_posts_nothing(db: &TestDb) {
    let mut s = setup(db).await;
    for origin in [
        "https://evil.example.com",
        "https://www.contoso.com.evil.com",
        "http://www.contoso.com",
        "https://www.contoso.com:8443",
        "null",
        "*",
    ] {
        let enc: String = url::form_urlencoded::byte_serialize(origin.as_bytes()).collect();
        let r = s
            .browser
            .get(&s.app.url(&format!(
                "/v1/authorize?app=support&origin={enc}&mode=silent"
            )))
            .await;
        assert_eq!(r.status(), 400, "{origin}");
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(csp.ends_with(&format!("frame-ancestors {ORIGIN}")), "{csp}");
        let html = r.text().await.unwrap();
        assert!(
            !html.contains("<script"),
            "{origin}: the page must not script anything:\n{html}"
        );
    }
    let r = s
        .browser
        .get(
            &s.app
                .url("/v1/authorize?app=nope&origin=https%3A%2F%2Fwww.contoso.com&mode=silent"),
        )
        .await;
    assert_eq!(r.status(), 400);
    assert!(
        r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .ends_with("frame-ancestors 'none'")
    );
    assert_eq!(s.idp.token_calls(), 0);
    assert!(!s.stored().await);
}

async fn state_must_exist_be_unused_and_belong_to_this_browser(db: &TestDb) {
    let mut s = setup(db).await;
    let idp_url = s.start("silent", "").await;
    let callback = s.at_idp(&idp_url).await;
    let without_state = callback
        .split('?')
        .next()
        .map(|base| format!("{base}?code=abc"))
        .unwrap();

    // missing state
    let r = s.browser.get(&without_state).await;
    assert_eq!(r.status(), 400);
    assert!(posted_message(r).await.is_none());
    // unknown state
    let r = s
        .browser
        .get(&s.app.url("/v1/callback?state=forged&code=abc"))
        .await;
    assert!(posted_message(r).await.is_none());
    // another browser (no binding cookie, no browser key) can neither use
    // nor burn the flow; its page only learns at once that it cannot finish
    // it (a browser that drops chatgate's cookie in the iframe: the widget
    // need not wait for its timeout)
    let mut stranger = Browser::new();
    let r = stranger.get(&callback).await;
    let envelope = posted_message(r).await.expect("an error is posted");
    assert_error(&envelope, "interaction_required");
    assert!(envelope["message"].get("chat_token").is_none());
    assert_eq!(s.idp.token_calls(), 0);
    assert!(!s.stored().await);
    // the right browser finishes it
    let r = s.browser.get(&callback).await;
    let envelope = posted_message(r).await.unwrap();
    assert_eq!(envelope["message"]["type"], "chatgate:success");
    // and cannot replay it
    let r = s.browser.get(&callback).await;
    assert_eq!(r.status(), 400);
    assert!(posted_message(r).await.is_none());
    assert_eq!(s.idp.token_calls(), 1);
}

async fn an_expired_flow_is_refused(db: &TestDb) {
    let mut s = setup(db).await;
    let idp_url = s.start("silent", "").await;
    let callback = s.at_idp(&idp_url).await;
    exec(
        &s.app.state.store,
        "UPDATE pending_flows SET expires_at = 0",
    )
    .await;
    let envelope = posted_message(s.browser.get(&callback).await)
        .await
        .unwrap();
    assert_error(&envelope, "invalid_request");
    assert_eq!(s.idp.token_calls(), 0);
    assert!(!s.stored().await);
}

async fn the_iss_parameter_must_name_the_issuer(db: &TestDb) {
    // mismatch
    let mut s = setup(db).await;
    s.idp
        .with(|st| st.authorize_iss_override = Some("https://evil.example.com".into()));
    let envelope = s.flow("silent").await;
    assert_error(&envelope, "invalid_request");
    assert_eq!(s.idp.token_calls(), 0);
    assert!(!s.stored().await);
    // missing although the metadata promises it
    let idp_url = s.start("silent", "").await;
    let callback = s.at_idp(&idp_url).await;
    let stripped: Vec<String> = url::Url::parse(&callback)
        .unwrap()
        .query_pairs()
        .filter(|(k, _)| k != "iss")
        .map(|(k, v)| {
            format!(
                "{k}={}",
                url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
            )
        })
        .collect();
    let r = s
        .browser
        .get(&s.app.url(&format!("/v1/callback?{}", stripped.join("&"))))
        .await;
    assert_error(&posted_message(r).await.unwrap(), "invalid_request");
    assert_eq!(s.idp.token_calls(), 0);
    assert!(!s.stored().await);
}

async fn id_tokens_that_fail_validation_store_nothing(db: &TestDb) {
    let mut s = setup(db).await;
    let unpublished = s.idp.with(|st| {
        st.keys.push(common::fake_idp::signing_key("rogue"));
        st.keys.len() - 1
    });
    let now = chatgate::time::now();
    let cases: Vec<(&str, TokenBehavior)> = vec![
        (
            "signature by an unpublished key under a published kid",
            TokenBehavior {
                sign_with: Some(unpublished),
                header_kid: Some("key-1".into()),
                ..Default::default()
            },
        ),
        (
            "wrong audience",
            TokenBehavior {
                claims: claims(&[("aud", json!("someone-else"))]),
                ..Default::default()
            },
        ),
        (
            "wrong azp",
            TokenBehavior {
                claims: claims(&[("azp", json!("someone-else"))]),
                ..Default::default()
            },
        ),
        (
            "wrong nonce",
            TokenBehavior {
                claims: claims(&[("nonce", json!("not-the-nonce"))]),
                ..Default::default()
            },
        ),
        (
            "missing nonce",
            TokenBehavior {
                remove_claims: vec!["nonce".into()],
                ..Default::default()
            },
        ),
        (
            "expired",
            TokenBehavior {
                claims: claims(&[("exp", json!(now - 120)), ("iat", json!(now - 400))]),
                ..Default::default()
            },
        ),
        (
            "issued long ago",
            TokenBehavior {
                claims: claims(&[("iat", json!(now - 3600))]),
                ..Default::default()
            },
        ),
        (
            "issued in the future",
            TokenBehavior {
                claims: claims(&[("iat", json!(now + 3600)), ("exp", json!(now + 7200))]),
                ..Default::default()
            },
        ),
        (
            "wrong issuer",
            TokenBehavior {
                claims: claims(&[("iss", json!("https://evil.example.com"))]),
                ..Default::default()
            },
        ),
        (
            "alg none",
            TokenBehavior {
                alg_none: true,
                ..Default::default()
            },
        ),
        (
            "no ID token",
            TokenBehavior {
                no_id_token: true,
                ..Default::default()
            },
        ),
    ];
    for (name, behavior) in cases {
        s.next_token(behavior);
        let envelope = s.flow("silent").await;
        assert_eq!(
            envelope["message"]["type"], "chatgate:error",
            "{name}: {envelope}"
        );
        assert_eq!(envelope["message"]["error"], "server_error", "{name}");
        assert!(!s.stored().await, "{name}: tokens were stored");
    }
    // HMAC "signed" with the client secret is refused even though the metadata
    // lists HS256: ID tokens must be signed with the IdP's published keys.
    s.next_token(TokenBehavior {
        hmac_with_client_secret: true,
        ..Default::default()
    });
    let envelope = s.flow("silent").await;
    assert_eq!(envelope["message"]["error"], "server_error", "{envelope}");
    assert!(!s.stored().await);
    // The same flow with a proper token works, so the cases above failed for their reason.
    assert_eq!(
        s.flow("silent").await["message"]["type"],
        "chatgate:success"
    );
}

async fn an_unknown_kid_triggers_one_jwks_refetch_then_rotation_works(db: &TestDb) {
    let mut s = setup(db).await;
    let before = s.idp.jwks_calls();
    s.idp.rotate_key("key-2");
    let envelope = s.flow("silent").await;
    assert_eq!(
        envelope["message"]["type"], "chatgate:success",
        "{envelope}"
    );
    assert_eq!(s.idp.jwks_calls(), before + 1);
    assert!(s.stored().await);

    // A flood of tokens with random kids costs no further JWKS fetch.
    for i in 0..3 {
        s.browser.forget_cookies();
        s.next_token(TokenBehavior {
            header_kid: Some(format!("random-{i}")),
            ..Default::default()
        });
        let envelope = s.flow("silent").await;
        assert_eq!(envelope["message"]["error"], "server_error");
    }
    assert_eq!(s.idp.jwks_calls(), before + 1);
}

async fn idp_errors_are_passed_on_without_a_token_request(db: &TestDb) {
    let mut s = setup(db).await;
    for code in [
        "login_required",
        "consent_required",
        "interaction_required",
        "account_selection_required",
        "access_denied",
    ] {
        s.idp.with(|st| st.authorize_error = Some(code.to_string()));
        let envelope = s.flow("silent").await;
        assert_error(&envelope, code);
        assert_eq!(
            envelope["message"]["error_description"],
            "The fake IdP says no"
        );
    }
    s.idp
        .with(|st| st.authorize_error = Some("<script>alert(1)</script>".into()));
    assert_error(&s.flow("silent").await, "server_error");
    assert_eq!(s.idp.token_calls(), 0);
    assert!(!s.stored().await);
    let metrics = s.app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"chatgate_flows_total{event="failed",reason="login_required"} 1"#),
        "{metrics}"
    );
}

async fn a_token_endpoint_error_is_reported_and_stores_nothing(db: &TestDb) {
    let mut s = setup(db).await;
    s.next_token(TokenBehavior {
        error: Some("invalid_grant".into()),
        ..Default::default()
    });
    assert_error(&s.flow("silent").await, "invalid_grant");
    assert!(!s.stored().await);
}

async fn a_new_sign_in_without_refresh_token_keeps_the_stored_one(db: &TestDb) {
    let mut s = setup(db).await;
    assert_eq!(
        s.flow("silent").await["message"]["type"],
        "chatgate:success"
    );
    let vault = s.app.state.vault.clone();
    let app = chatgate::domain::AppId::parse("support").unwrap();
    let user = chatgate::domain::UserId::parse(USER).unwrap();
    let first = vault.load(&app, &user).await.unwrap().unwrap();
    s.next_token(TokenBehavior {
        no_refresh_token: true,
        ..Default::default()
    });
    s.browser.forget_cookies(); // no chatgate session: go to the IdP again
    assert_eq!(
        s.flow("silent").await["message"]["type"],
        "chatgate:success"
    );
    let second = vault.load(&app, &user).await.unwrap().unwrap();
    assert_ne!(
        first.tokens.access_token.expose_secret(),
        second.tokens.access_token.expose_secret()
    );
    assert_eq!(
        first.tokens.refresh_token.unwrap().expose_secret(),
        second.tokens.refresh_token.unwrap().expose_secret()
    );
}

async fn silent_renewal_uses_the_session_without_the_idp(db: &TestDb) {
    let mut s = setup(db).await;
    s.flow("silent").await;
    let calls = s.idp.token_calls();
    let r = s.browser.get(&s.authorize_url("silent", "")).await;
    assert_eq!(r.status(), 200, "renewal should answer directly");
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains(&format!("frame-ancestors {ORIGIN}")), "{csp}");
    let envelope = posted_message(r).await.unwrap();
    assert_eq!(envelope["message"]["type"], "chatgate:success");
    assert_eq!(envelope["message"]["user"]["id"], USER);
    assert_eq!(s.idp.token_calls(), calls);

    // A login_hint naming someone else goes to the IdP.
    let r = s
        .browser
        .get(&s.authorize_url("silent", "&login_hint=bob%40example.com"))
        .await;
    assert_eq!(r.status(), 302);

    // Once the IdP refused the refresh token, the session is not enough.
    exec(
        &s.app.state.store,
        "UPDATE vault_entries SET needs_reauth = TRUE",
    )
    .await;
    let r = s.browser.get(&s.authorize_url("silent", "")).await;
    assert_eq!(r.status(), 302);
}

/// `POST /v1/session/token`: the same renewal in one fetch from the host page.
async fn renewal_by_fetch_answers_the_success_message(db: &TestDb) {
    let mut s = setup(db).await;
    let url = s.app.url("/v1/session/token");
    // No session yet: login_required, and the widget uses the iframe.
    let r = s
        .browser
        .post_json(&url, ORIGIN, &json!({"app": "support"}))
        .await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "login_required");

    let signed_in = s.flow("silent").await;
    let calls = s.idp.token_calls();
    let r = s
        .browser
        .post_json(&url, ORIGIN, &json!({"app": "support"}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN);
    assert_eq!(r.headers()["access-control-allow-credentials"], "true");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "chatgate:success");
    assert_eq!(body["app"], "support");
    assert_eq!(body["user"], signed_in["message"]["user"]);
    assert!(body.get("session_ticket").is_none());
    assert_ne!(body["chat_token"], signed_in["message"]["chat_token"]);
    let claims = s
        .app
        .state
        .keys
        .keys()
        .verify(
            body["chat_token"].as_str().unwrap(),
            s.app.state.keys.issuer().issuer(),
            &["https://bot.contoso.com"],
            std::time::Duration::from_secs(30),
        )
        .unwrap();
    assert_eq!(claims.sub, USER);
    assert_eq!(s.idp.token_calls(), calls, "no IdP round trip");

    // Another app's origin, or none: refused before the session is read.
    let r = s
        .browser
        .post_json(&url, "https://evil.example", &json!({"app": "support"}))
        .await;
    assert_eq!(r.status(), 403);
    // The IdP refused the refresh token: the session is not enough.
    exec(
        &s.app.state.store,
        "UPDATE vault_entries SET needs_reauth = TRUE",
    )
    .await;
    let r = s
        .browser
        .post_json(&url, ORIGIN, &json!({"app": "support"}))
        .await;
    assert_eq!(r.status(), 401);
    // Another browser (no cookie) gets nothing.
    let mut other = Browser::new();
    let r = other
        .post_json(&url, ORIGIN, &json!({"app": "support"}))
        .await;
    assert_eq!(r.status(), 401);
}

/// An account disabled at the IdP is noticed within one access-token
/// lifetime: once the stored access token expired, renewal refreshes first,
/// and a refused refresh sends the browser to the IdP instead of minting.
async fn renewal_refreshes_an_expired_access_token_first(db: &TestDb) {
    let mut s = setup(db).await;
    s.flow("silent").await;
    exec(
        &s.app.state.store,
        "UPDATE vault_entries SET access_expires_at = 0",
    )
    .await;
    let calls = s.idp.token_calls();
    // Still enabled: refreshed once, then the chat token.
    let r = s.browser.get(&s.authorize_url("silent", "")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        posted_message(r).await.unwrap()["message"]["type"],
        "chatgate:success"
    );
    assert_eq!(s.idp.token_calls(), calls + 1, "refreshed first");
    // Disabled at the IdP: the refresh is refused, the session is not enough.
    exec(
        &s.app.state.store,
        "UPDATE vault_entries SET access_expires_at = 0",
    )
    .await;
    s.idp.with(|st| {
        for valid in st.refresh_tokens.values_mut() {
            *valid = false;
        }
        st.replays = 0;
    });
    let r = s.browser.get(&s.authorize_url("silent", "")).await;
    assert_eq!(
        r.status(),
        302,
        "to the IdP, which will answer login_required"
    );
    assert!(
        s.app
            .state
            .vault
            .load(
                &chatgate::domain::AppId::parse("support").unwrap(),
                &chatgate::domain::UserId::parse(USER).unwrap()
            )
            .await
            .unwrap()
            .unwrap()
            .needs_reauth
    );
}

/// `session_idle` slides: a renewal saves the session again, so it counts
/// from the last use, not from the sign-in.
async fn renewals_extend_the_session(db: &TestDb) {
    let mut s = setup(db).await;
    s.flow("silent").await;
    let expiry = |store: Store| async move {
        let rows: Vec<(i64,)> = match &store {
            Store::Sqlite(p) => sqlx::query_as("SELECT expires_at FROM browser_sessions")
                .fetch_all(p)
                .await
                .unwrap(),
            Store::Postgres(p) => sqlx::query_as("SELECT expires_at FROM browser_sessions")
                .fetch_all(p)
                .await
                .unwrap(),
        };
        rows.into_iter().map(|(e,)| e).max().unwrap()
    };
    let before = expiry(s.app.state.store.clone()).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = s.browser.get(&s.authorize_url("silent", "")).await;
    assert_eq!(r.status(), 200);
    let set_cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .any(|v| v.to_str().unwrap().starts_with("__Host-chatgate="));
    assert!(set_cookie, "the cookie is sent again with a new max-age");
    let after = expiry(s.app.state.store.clone()).await;
    assert!(after > before, "idle expiry moved from {before} to {after}");
}

async fn a_session_older_than_session_max_needs_the_idp(db: &TestDb) {
    let mut s = setup_with(db, "", |c| c.with_top("session_max = \"1h\"")).await;
    s.flow("silent").await;
    // Age the stored sign-in by rewriting the session row's JSON.
    let store = &s.app.state.store;
    let rows: Vec<(String, Vec<u8>)> = match store {
        Store::Sqlite(p) => sqlx::query_as("SELECT id_hash, data FROM browser_sessions")
            .fetch_all(p)
            .await
            .unwrap(),
        Store::Postgres(p) => sqlx::query_as("SELECT id_hash, data FROM browser_sessions")
            .fetch_all(p)
            .await
            .unwrap(),
    };
    assert_eq!(rows.len(), 1);
    let mut data: Value = serde_json::from_slice(&rows[0].1).unwrap();
    for (_, signin) in data["data"]["chatgate.signins"].as_object_mut().unwrap() {
        signin["signed_in_at"] = json!(chatgate::time::now() - 7200);
    }
    let bytes = serde_json::to_vec(&data).unwrap();
    store
        .save_session(&rows[0].0, &bytes, chatgate::time::now() + 3600, &[])
        .await
        .unwrap();
    let r = s.browser.get(&s.authorize_url("silent", "")).await;
    assert_eq!(r.status(), 302);
}

async fn sign_out_ends_the_session_and_revoke_deletes_the_vault_entry(db: &TestDb) {
    let mut s = setup(db).await;
    s.flow("silent").await;
    let signout = s.app.url("/v1/signout");
    // Not from an allowed origin: refused, without CORS headers.
    let r = s
        .browser
        .post_json(
            &signout,
            "https://evil.example.com",
            &json!({"app": "support"}),
        )
        .await;
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    // Preflight from the allowed origin.
    let r = common::http_client()
        .request(reqwest::Method::OPTIONS, &signout)
        .header("origin", ORIGIN)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN);
    assert_eq!(r.headers()["access-control-allow-credentials"], "true");

    let r = s
        .browser
        .post_json(&signout, ORIGIN, &json!({"app": "support"}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, json!({"signed_out": true, "revoked": false}));
    assert!(s.stored().await, "plain sign-out keeps the vault entry");
    // The next silent sign-in goes to the IdP.
    assert_eq!(
        s.browser.get(&s.authorize_url("silent", "")).await.status(),
        302
    );

    // Sign in again, then sign out with revoke.
    s.flow("silent").await;
    let refresh = {
        let app = chatgate::domain::AppId::parse("support").unwrap();
        let user = chatgate::domain::UserId::parse(USER).unwrap();
        let e = s.app.state.vault.load(&app, &user).await.unwrap().unwrap();
        e.tokens.refresh_token.unwrap().expose_secret().to_string()
    };
    let r = s
        .browser
        .post_json(&signout, ORIGIN, &json!({"app": "support", "revoke": true}))
        .await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, json!({"signed_out": true, "revoked": true}));
    assert!(!s.stored().await);
    // The refresh token first, then the access token.
    let revoked = s.idp.with(|st| st.revoked.clone());
    assert_eq!(revoked.len(), 2, "{revoked:?}");
    assert_eq!(revoked[0], refresh);
}

async fn popup_results_carry_a_ticket_that_moves_the_session_to_the_host_partition(db: &TestDb) {
    let mut s = setup(db).await;
    let idp_url = s.start("popup", "&prompt=consent").await;
    let q: std::collections::HashMap<_, _> = url::Url::parse(&idp_url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    assert_eq!(q["prompt"], "consent");
    let popup_cookie = s
        .browser
        .set_cookie_line(&s.app.base_url, "__Host-chatgate-flow-popup")
        .unwrap();
    assert!(
        popup_cookie.contains("SameSite=Lax") && !popup_cookie.contains("Partitioned"),
        "{popup_cookie}"
    );
    let callback = s.at_idp(&idp_url).await;
    let envelope = posted_message(s.browser.get(&callback).await)
        .await
        .unwrap();
    assert_eq!(envelope["mode"], "popup");
    let ticket = envelope["message"]["session_ticket"]
        .as_str()
        .expect("ticket")
        .to_string();

    // The host page (its own cookie partition: a fresh jar) redeems the ticket.
    let mut host_partition = Browser::new();
    let redeem = s.app.url("/v1/session");
    let r = host_partition
        .post_json(
            &redeem,
            "https://evil.example.com",
            &json!({"app": "support", "ticket": ticket}),
        )
        .await;
    assert_eq!(r.status(), 403);
    let r = host_partition
        .post_json(
            &redeem,
            ORIGIN,
            &json!({"app": "support", "ticket": ticket}),
        )
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN);
    // single use
    let r = host_partition
        .post_json(
            &redeem,
            ORIGIN,
            &json!({"app": "support", "ticket": ticket}),
        )
        .await;
    assert_eq!(r.status(), 400);
    // Silent sign-in in that partition now needs no IdP.
    let calls = s.idp.token_calls();
    let r = host_partition.get(&s.authorize_url("silent", "")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        posted_message(r).await.unwrap()["message"]["user"]["id"],
        USER
    );
    assert_eq!(s.idp.token_calls(), calls);
}

async fn the_session_id_changes_at_every_sign_in(db: &TestDb) {
    let mut s = setup(db).await;
    s.flow("silent").await;
    let cookie = |b: &Browser, url: &str| {
        b.cookies
            .get(&url.replace("http://", ""))
            .and_then(|j| j.get("__Host-chatgate"))
            .map(|(v, _)| v.clone())
    };
    let first = cookie(&s.browser, &s.app.base_url).expect("session cookie");
    // A popup sign-in always goes to the IdP, and records the sign-in afresh.
    let envelope = s.flow("popup").await;
    assert_eq!(envelope["message"]["type"], "chatgate:success");
    let second = cookie(&s.browser, &s.app.base_url).expect("session cookie");
    assert_ne!(first, second, "the session id must be rotated at sign-in");
    // The old id is worthless now.
    let mut attacker = Browser::new();
    let host = s.app.base_url.replace("http://", "");
    attacker
        .cookies
        .entry(host)
        .or_default()
        .insert("__Host-chatgate".into(), (first, String::new()));
    assert_eq!(
        attacker.get(&s.authorize_url("silent", "")).await.status(),
        302
    );
}

async fn bad_prompts_and_modes_are_refused(db: &TestDb) {
    let mut s = setup(db).await;
    let r = s
        .browser
        .get(&s.authorize_url("silent", "&prompt=login"))
        .await;
    assert_error(&posted_message(r).await.unwrap(), "invalid_request");
    let r = s
        .browser
        .get(&s.authorize_url("popup", "&prompt=none"))
        .await;
    assert_error(&posted_message(r).await.unwrap(), "invalid_request");
    let r = s.browser.get(&s.authorize_url("sideways", "")).await;
    assert_eq!(r.status(), 400);
    assert!(posted_message(r).await.is_none());
}

async fn user_ids_come_from_the_configured_claim(db: &TestDb) {
    let mut s = setup_with(db, "user_id_claim = \"oid\"\nmulti_tenant = true", |c| c).await;
    let envelope = s.flow("silent").await;
    assert_eq!(
        envelope["message"]["user"]["id"],
        "idp:tenant-1:00000000-0000-0000-0000-0000000000a1"
    );
    // A token without the claim is refused.
    s.next_token(TokenBehavior {
        remove_claims: vec!["oid".into()],
        ..Default::default()
    });
    s.browser.forget_cookies();
    assert_error(&s.flow("silent").await, "server_error");
}

async fn client_secret_post_is_supported(db: &TestDb) {
    let mut s = setup_with(db, "client_auth = \"client_secret_post\"", |c| c).await;
    s.idp.with(|st| st.expect_client_secret_post = true);
    assert_eq!(
        s.flow("silent").await["message"]["type"],
        "chatgate:success"
    );
}

async fn a_provider_whose_discovery_names_another_issuer_is_never_ready(db: &TestDb) {
    let idp = FakeIdp::start().await;
    idp.with(|st| st.discovery_issuer = Some("https://evil.example.com".into()));
    let cfg = TestConfig::new(db).with_provider(&idp, "");
    let app = spawn_app(&cfg).await;
    let r = app.get("/readyz").await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    // Which check failed, not the error text (that is in the log).
    assert_eq!(body["checks"]["providers"]["idp"], "loading", "{body}");
    assert!(!body.to_string().contains("evil.example.com"), "{body}");
    let mut browser = Browser::new();
    let origin: String = url::form_urlencoded::byte_serialize(ORIGIN.as_bytes()).collect();
    let r = browser
        .get(&app.url(&format!(
            "/v1/authorize?app=support&origin={origin}&mode=silent"
        )))
        .await;
    assert_error(&posted_message(r).await.unwrap(), "temporarily_unavailable");
}

async fn a_database_outage_is_posted_as_temporarily_unavailable(db: &TestDb) {
    let outage = common::outage::DbOutage::new(db).await;
    let url = outage.url.clone();
    let mut s = setup_with(db, "", |mut c| {
        c.toml = c.toml.replace(&db.url, &url);
        c
    })
    .await;
    // PostgreSQL cut; SQLite's write lock held past its 5 s busy timeout.
    let length = match db.backend {
        common::Backend::Postgres => std::time::Duration::from_secs(4),
        common::Backend::Sqlite => std::time::Duration::from_secs(7),
    };
    let during = outage.begin(length).await;
    let started = std::time::Instant::now();
    let r = s.browser.get(&s.authorize_url("silent", "")).await;
    assert_eq!(r.status(), 200);
    let envelope = posted_message(r).await.expect("the page posts the error");
    assert_error(&envelope, "temporarily_unavailable");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(7),
        "answered before the widget's timeout would"
    );
    during.await.unwrap();
    // Back: the same browser signs in, and nothing half-written is in the way.
    let message = s.flow("silent").await;
    assert_eq!(message["message"]["type"], "chatgate:success", "{message}");
    assert!(s.stored().await);
}

/// Entra ID multi-tenant: the metadata names `.../{tenantid}/v2.0`, the
/// authorization response's `iss` the user's tenant. It must be the issuer of
/// the ID token (checked against its `tid`), never a constant mismatch.
async fn a_multi_tenant_iss_parameter_is_checked_against_the_users_tenant(db: &TestDb) {
    let idp = FakeIdp::start().await;
    let base = idp.issuer.clone();
    let template = format!("{base}/{{tenantid}}/v2.0");
    let tenant_1 = format!("{base}/tenant-1/v2.0");
    idp.with(|st| {
        st.discovery_issuer = Some(template.clone());
        st.authorize_iss_override = Some(tenant_1.clone());
    });
    let cfg =
        TestConfig::new(db).with_provider(&idp, "user_id_claim = \"oid\"\nmulti_tenant = true");
    let mut cfg = cfg;
    cfg.toml = cfg.toml.replace(
        &format!("issuer = \"{base}\""),
        &format!("issuer = \"{base}/organizations/v2.0\""),
    );
    let app = spawn_app(&cfg).await;
    let mut s = Setup {
        idp,
        app,
        browser: Browser::new(),
        cfg,
    };
    let tenant_token = |iss: &str| TokenBehavior {
        claims: claims(&[("iss", json!(iss)), ("tid", json!("tenant-1"))]),
        ..Default::default()
    };
    s.next_token(tenant_token(&tenant_1));
    let envelope = s.flow("silent").await;
    assert_eq!(
        envelope["message"]["type"], "chatgate:success",
        "{envelope}"
    );
    assert_eq!(
        envelope["message"]["user"]["id"],
        "idp:tenant-1:00000000-0000-0000-0000-0000000000a1"
    );
    // The response names tenant-2 while the ID token is tenant-1's: a mix-up.
    s.idp
        .with(|st| st.authorize_iss_override = Some(format!("{base}/tenant-2/v2.0")));
    s.next_token(tenant_token(&tenant_1));
    s.browser.forget_cookies();
    assert_error(&s.flow("silent").await, "invalid_request");
    // And something that is no tenant of this template at all.
    s.idp
        .with(|st| st.authorize_iss_override = Some("https://evil.example.com/t/v2.0".into()));
    s.browser.forget_cookies();
    assert_error(&s.flow("silent").await, "invalid_request");
}

/// Discovery that names a plain-http token endpoint for an https issuer.
async fn a_provider_with_an_http_token_endpoint_is_never_ready(db: &TestDb) {
    let idp = FakeIdp::start().await;
    idp.with(|st| st.token_endpoint_override = Some("http://127.0.0.1:9/token".into()));
    let app = spawn_app(&TestConfig::new(db).with_provider(&idp, "")).await;
    let r = app.get("/readyz").await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["checks"]["providers"]["idp"], "loading");
}

/// The sign-in path's chat token says how the user came in and carries
/// `email_verified` exactly as the IdP stated it.
async fn a_sign_in_chat_token_has_via_oidc_and_the_idps_email_verified(db: &TestDb) {
    let mut s = setup(db).await;
    let chat_claims = |envelope: &Value| -> Value {
        use base64::Engine as _;
        let token = envelope["message"]["chat_token"].as_str().unwrap();
        let payload = token.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    };
    let envelope = s.flow("silent").await;
    assert_eq!(envelope["message"]["user"]["email_verified"], false);
    let c = chat_claims(&envelope);
    assert_eq!(
        (c["via"].as_str(), c["email_verified"].as_bool()),
        (Some("oidc"), Some(false))
    );
    s.next_token(TokenBehavior {
        claims: claims(&[("email_verified", json!(true))]),
        ..Default::default()
    });
    s.browser.forget_cookies();
    let envelope = s.flow("silent").await;
    assert_eq!(envelope["message"]["user"]["email_verified"], true);
    assert_eq!(chat_claims(&envelope)["email_verified"], true);
}

/// A key the IdP withdrew is trusted only until the loaded keys' cache time
/// (the IdP's `max-age`, 5 min to 24 h) runs out; then they are fetched again.
async fn a_key_the_idp_withdrew_stops_being_trusted_after_the_cache_time(db: &TestDb) {
    let mut s = setup(db).await;
    assert_eq!(
        s.flow("silent").await["message"]["type"],
        "chatgate:success"
    );
    // The IdP rotates to key-2 and withdraws key-1 (say it leaked).
    s.idp.rotate_key("key-2");
    s.idp.with(|st| st.published = vec![1]);
    let signed_with_key_1 = || TokenBehavior {
        sign_with: Some(0),
        ..Default::default()
    };
    s.next_token(signed_with_key_1());
    s.browser.forget_cookies();
    assert_eq!(
        s.flow("silent").await["message"]["type"],
        "chatgate:success",
        "within the cache time the loaded keys are used"
    );
    let fetches = s.idp.jwks_calls();
    s.app.state.providers.get("idp").unwrap().expire_jwks();
    s.next_token(signed_with_key_1());
    s.browser.forget_cookies();
    assert_error(&s.flow("silent").await, "server_error");
    assert!(s.idp.jwks_calls() > fetches, "the keys were fetched again");
    // key-2 works.
    s.browser.forget_cookies();
    assert_eq!(
        s.flow("silent").await["message"]["type"],
        "chatgate:success"
    );
}

backend_tests!(
    renewal_by_fetch_answers_the_success_message,
    a_key_the_idp_withdrew_stops_being_trusted_after_the_cache_time,
    a_multi_tenant_iss_parameter_is_checked_against_the_users_tenant,
    a_provider_with_an_http_token_endpoint_is_never_ready,
    a_sign_in_chat_token_has_via_oidc_and_the_idps_email_verified,
    a_database_outage_is_posted_as_temporarily_unavailable,
    silent_sign_in_stores_tokens_and_posts_a_chat_token,
    the_authorization_request_carries_pkce_state_nonce_and_prompt_none,
    an_origin_that_is_not_allow_listed_gets_a_page_that_posts_nothing,
    state_must_exist_be_unused_and_belong_to_this_browser,
    an_expired_flow_is_refused,
    the_iss_parameter_must_name_the_issuer,
    id_tokens_that_fail_validation_store_nothing,
    an_unknown_kid_triggers_one_jwks_refetch_then_rotation_works,
    idp_errors_are_passed_on_without_a_token_request,
    a_token_endpoint_error_is_reported_and_stores_nothing,
    a_new_sign_in_without_refresh_token_keeps_the_stored_one,
    silent_renewal_uses_the_session_without_the_idp,
    renewal_refreshes_an_expired_access_token_first,
    renewals_extend_the_session,
    a_session_older_than_session_max_needs_the_idp,
    sign_out_ends_the_session_and_revoke_deletes_the_vault_entry,
    popup_results_carry_a_ticket_that_moves_the_session_to_the_host_partition,
    bad_prompts_and_modes_are_refused,
    the_session_id_changes_at_every_sign_in,
    user_ids_come_from_the_configured_claim,
    client_secret_post_is_supported,
    a_provider_whose_discovery_names_another_issuer_is_never_ready,
);

/// Collects everything logged on this thread.
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs on one thread so the server's tasks log into the thread-local subscriber.
#[tokio::test(flavor = "current_thread")]
async fn no_secret_reaches_the_logs() {
    let buffer = LogBuffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let db = TestDb::sqlite();
    let mut s = setup(&db).await;
    let idp_url = s.start("silent", "").await;
    let callback = s.at_idp(&idp_url).await;
    let q: std::collections::HashMap<_, _> = url::Url::parse(&callback)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    let envelope = posted_message(s.browser.get(&callback).await)
        .await
        .unwrap();
    let chat_token = envelope["message"]["chat_token"]
        .as_str()
        .unwrap()
        .to_string();
    // renewal, a failed flow with an IdP error, and a revoking sign-out
    s.browser.get(&s.authorize_url("silent", "")).await;
    let entry = s
        .app
        .state
        .vault
        .load(
            &chatgate::domain::AppId::parse("support").unwrap(),
            &chatgate::domain::UserId::parse(USER).unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    s.browser
        .post_json(
            &s.app.url("/v1/signout"),
            ORIGIN,
            &json!({"app": "support", "revoke": true}),
        )
        .await;
    s.browser.forget_cookies();
    s.idp
        .with(|st| st.authorize_error = Some("login_required".into()));
    s.flow("silent").await;

    let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("provider discovered"),
        "the capture works: {logs}"
    );
    let session_cookie = s
        .browser
        .cookies
        .values()
        .flat_map(|j| j.values())
        .map(|(v, _)| v.clone())
        .collect::<Vec<_>>();
    let mut secrets = vec![
        q["code"].clone(),
        q["state"].clone(),
        chat_token,
        entry.tokens.access_token.expose_secret().to_string(),
        entry
            .tokens
            .refresh_token
            .as_ref()
            .unwrap()
            .expose_secret()
            .to_string(),
        common::fake_idp::CLIENT_SECRET.to_string(),
    ];
    secrets.extend(session_cookie);
    for secret in secrets {
        assert!(
            !logs.contains(&secret),
            "a secret reached the logs: {secret}"
        );
    }
}
