//! Chat tokens bound to the browser's DPoP key (`bind_chat_tokens = "dpop"`),
//! on SQLite and PostgreSQL: renewal with every cookie gone, the checks of
//! each proof (replay, wrong key, wrong URL, old `iat`), a flow started with
//! somebody else's key, sign-out, and `POST /v1/chat-tokens/verify`.

use crate::common;
use crate::signin::{Setup, exec, setup_with};

use chatgate::dpop::ProofSigner;
use common::browser::{Browser, posted_message};
use common::{TestDb, claims_of, error_of};
use serde_json::{Value, json};

const ORIGIN: &str = "https://www.contoso.com";
const USER: &str = "idp:user-123";

async fn setup(db: &TestDb) -> Setup {
    setup_with(db, "", |mut c| {
        c.toml = c.toml.replace(
            "provider = \"idp\"\n",
            "provider = \"idp\"\nbind_chat_tokens = \"dpop\"\n",
        );
        c
    })
    .await
}

impl Setup {
    /// A silent sign-in through the IdP started with `dpop_jkt` = `key`'s:
    /// the chat token the result page posts.
    async fn signed_in_with(&mut self, key: &ProofSigner) -> String {
        let idp_url = self
            .start("silent", &format!("&dpop_jkt={}", key.jkt()))
            .await;
        let callback = self.at_idp(&idp_url).await;
        let r = self.browser.get(&callback).await;
        let posted = posted_message(r).await.expect("a result page");
        assert_eq!(posted["message"]["type"], "chatgate:success", "{posted}");
        posted["message"]["chat_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Whether `key` has a confirmed binding.
    async fn bound(&self, key: &ProofSigner) -> bool {
        let store = &self.app.state.store;
        let now = chatgate::time::now();
        store
            .key_binding("support", key.jkt().as_str(), "", now)
            .await
            .unwrap()
            .is_some()
    }

    /// A sign-in in a new browser whose key the page then confirmed.
    async fn confirmed_key(&mut self) -> ProofSigner {
        self.browser = Browser::new();
        let key = ProofSigner::generate();
        let token = self.signed_in_with(&key).await;
        let r = self.renew(&mut Browser::new(), &key, Some(&token)).await;
        assert_eq!(r.status(), 200);
        key
    }

    fn token_url(&self) -> String {
        self.app.url("/v1/session/token")
    }

    /// `POST /v1/session/token` from `browser` with a fresh proof of `key`.
    async fn renew(
        &self,
        browser: &mut Browser,
        key: &ProofSigner,
        chat_token: Option<&str>,
    ) -> reqwest::Response {
        let url = self.token_url();
        let proof = key.proof("POST", &url, None);
        let mut body = json!({"app": "support"});
        if let Some(t) = chat_token {
            body["chat_token"] = t.into();
        }
        browser.post_json_dpop(&url, ORIGIN, &body, &proof).await
    }
}

/// Sign in once, lose every cookie, and renewals still work with the key;
/// without the key (or with a proof that fails a check) they do not.
async fn renewal_works_without_cookies_with_a_proof_of_the_bound_key(db: &TestDb) {
    let mut s = setup(db).await;
    let key = ProofSigner::generate();

    // A DPoP app needs the key's thumbprint to start a flow.
    let r = s.browser.get(&s.authorize_url("silent", "")).await;
    let posted = posted_message(r).await.unwrap();
    assert_eq!(posted["message"]["error"], "invalid_request");
    assert!(
        posted["message"]["error_description"]
            .as_str()
            .unwrap()
            .contains("dpop_jkt")
    );

    let first = s.signed_in_with(&key).await;
    assert_eq!(claims_of(&first)["cnf"]["jkt"], key.jkt().as_str());

    // Every cookie gone: the binding is pending until the page presents the
    // token it was posted, with a proof of the key.
    let mut cookieless = Browser::new();
    let r = s.renew(&mut cookieless, &key, None).await;
    assert_eq!(error_of(r).await, (401, "login_required".into()));
    let r = s.renew(&mut cookieless, &key, Some(&first)).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "chatgate:success");
    assert_eq!(body["user"]["id"], USER);
    let renewed = body["chat_token"].as_str().unwrap();
    assert_eq!(claims_of(renewed)["cnf"]["jkt"], key.jkt().as_str());
    assert_eq!(claims_of(renewed)["sub"], USER);

    // Confirmed: the key alone renews now, in any cookie-less browser.
    let calls = s.idp.token_calls();
    for _ in 0..3 {
        let r = s.renew(&mut Browser::new(), &key, None).await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(s.idp.token_calls(), calls, "no IdP round trip");

    // Without a proof, a DPoP app renews nothing, cookie or not.
    let r = s
        .browser
        .post_json(&s.token_url(), ORIGIN, &json!({"app": "support"}))
        .await;
    assert_eq!(error_of(r).await, (401, "invalid_dpop_proof".into()));

    // A proof is good for one request.
    let url = s.token_url();
    let proof = key.proof("POST", &url, None);
    let body = json!({"app": "support"});
    let r = cookieless.post_json_dpop(&url, ORIGIN, &body, &proof).await;
    assert_eq!(r.status(), 200);
    let r = cookieless.post_json_dpop(&url, ORIGIN, &body, &proof).await;
    assert_eq!(error_of(r).await, (401, "invalid_dpop_proof".into()));

    // Another key, even with the token bound to the right one: nothing.
    let thief = ProofSigner::generate();
    let r = s.renew(&mut Browser::new(), &thief, Some(&first)).await;
    assert_eq!(error_of(r).await, (401, "login_required".into()));

    // A proof for another URL or method, or an old one, is refused.
    let now = chatgate::time::now();
    for proof in [
        key.proof("POST", &s.app.url("/v1/signout"), None),
        key.proof("GET", &url, None),
        key.proof_at("POST", &url, now - 600, None),
        key.proof_at("POST", &url, now + 600, None),
    ] {
        let r = cookieless.post_json_dpop(&url, ORIGIN, &body, &proof).await;
        assert_eq!(error_of(r).await, (401, "invalid_dpop_proof".into()));
    }

    // Another origin of the app's is not the one the key was bound at.
    let r = Browser::new()
        .post_json_dpop(
            &url,
            "https://evil.example",
            &body,
            &key.proof("POST", &url, None),
        )
        .await;
    assert_eq!(r.status(), 403);

    // The IdP refused the refresh token: the key is not enough either.
    exec(
        &s.app.state.store,
        "UPDATE vault_entries SET needs_reauth = TRUE",
    )
    .await;
    let r = s.renew(&mut Browser::new(), &key, None).await;
    assert_eq!(error_of(r).await, (401, "login_required".into()));
}

/// Somebody who starts a flow with their own key in the victim's browser
/// (a popup or link to /v1/authorize) gets no binding: the token that would
/// confirm it was posted to the app's page, not to them.
async fn a_flow_started_with_someone_elses_key_binds_nothing(db: &TestDb) {
    let mut s = setup(db).await;
    let attacker = ProofSigner::generate();
    let posted_to_the_page = s.signed_in_with(&attacker).await;
    assert_eq!(
        claims_of(&posted_to_the_page)["cnf"]["jkt"],
        attacker.jkt().as_str()
    );
    let r = s.renew(&mut Browser::new(), &attacker, None).await;
    assert_eq!(error_of(r).await, (401, "login_required".into()));
    // A forged token (a bad signature) confirms nothing either.
    let (head, _) = posted_to_the_page.rsplit_once('.').unwrap();
    let forged = format!("{head}.AAAA");
    let r = s.renew(&mut Browser::new(), &attacker, Some(&forged)).await;
    assert_eq!(error_of(r).await, (401, "login_required".into()));
}

/// A renewal with chatgate's cookie and a proof binds that key directly (the
/// page's storage was cleared and it made a new key).
async fn a_cookie_renewal_with_a_proof_binds_the_key(db: &TestDb) {
    let mut s = setup(db).await;
    let old = ProofSigner::generate();
    s.signed_in_with(&old).await;
    let new = ProofSigner::generate();
    let mut browser = s.browser.clone();
    let r = s.renew(&mut browser, &new, None).await;
    assert_eq!(r.status(), 200);
    let token: Value = r.json().await.unwrap();
    assert_eq!(
        claims_of(token["chat_token"].as_str().unwrap())["cnf"]["jkt"],
        new.jkt().as_str()
    );
    let r = s.renew(&mut Browser::new(), &new, None).await;
    assert_eq!(r.status(), 200);
}

/// Sign-out forgets the key; a binding past `session_idle` renews nothing;
/// ending the user's sessions (CLI, back-channel logout) forgets their keys.
async fn sign_out_idle_expiry_and_logout_forget_the_key(db: &TestDb) {
    let mut s = setup(db).await;
    let key = s.confirmed_key().await;

    // Sign-out without any cookie, by the proof alone.
    let url = s.app.url("/v1/signout");
    let r = Browser::new()
        .post_json_dpop(
            &url,
            ORIGIN,
            &json!({"app": "support"}),
            &key.proof("POST", &url, None),
        )
        .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["signed_out"], true);
    assert!(!s.bound(&key).await);
    let r = s.renew(&mut Browser::new(), &key, None).await;
    assert_eq!(error_of(r).await, (401, "login_required".into()));

    // Past session_idle.
    let key = s.confirmed_key().await;
    s.app
        .state
        .store
        .touch_key_binding("support", key.jkt().as_str(), chatgate::time::now() - 1)
        .await
        .unwrap();
    let r = s.renew(&mut Browser::new(), &key, None).await;
    assert_eq!(error_of(r).await, (401, "login_required".into()));

    // The user's sessions ended (chatgate users sign-out, or the IdP).
    let key = s.confirmed_key().await;
    s.app
        .state
        .store
        .end_user_sessions("support", USER)
        .await
        .unwrap();
    let r = s.renew(&mut Browser::new(), &key, None).await;
    assert_eq!(error_of(r).await, (401, "login_required".into()));
    assert!(!s.bound(&key).await, "the binding itself is gone");

    // The IdP's back-channel logout of the user.
    let key = s.confirmed_key().await;
    let logout_token = s.idp.logout_token(json!({"sub": "user-123"}));
    let r = s.app.backchannel_logout(&logout_token).await;
    assert_eq!(r.status(), 200);
    let r = s.renew(&mut Browser::new(), &key, None).await;
    assert_eq!(error_of(r).await, (401, "login_required".into()));
    assert!(!s.bound(&key).await, "the binding itself is gone");
}

/// A bound chat token is not a bearer token: `/v1/chat-tokens/verify`
/// wants a proof of its key for the request it came with.
async fn verify_wants_an_unused_proof_of_the_tokens_key(db: &TestDb) {
    let mut s = setup(db).await;
    let secret = s.app.support_bot("helpdesk").await;
    let key = ProofSigner::generate();
    let token = s.signed_in_with(&key).await;
    let backend = "https://chat.contoso.com/api/messages";
    let verify = |body: Value| {
        s.app
            .client
            .post(s.app.url("/v1/chat-tokens/verify"))
            .bearer_auth(&secret)
            .json(&body)
            .send()
    };

    // The token alone (a copy used without the key) is refused.
    let r = verify(json!({"token": token})).await.unwrap();
    assert_eq!(error_of(r).await, (401, "invalid_dpop_proof".into()));

    let proof = key.proof("POST", backend, Some(&token));
    let good = json!({"token": token, "proof": proof, "htm": "POST", "htu": backend});
    let r = verify(good.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    let claims: Value = r.json().await.unwrap();
    assert_eq!(claims["sub"], USER);
    assert_eq!(claims["cnf"]["jkt"], key.jkt().as_str());
    // Once.
    let r = verify(good).await.unwrap();
    assert_eq!(error_of(r).await, (401, "invalid_dpop_proof".into()));

    let thief = ProofSigner::generate();
    let now = chatgate::time::now();
    for (what, proof, htu) in [
        (
            "another key",
            thief.proof("POST", backend, Some(&token)),
            backend,
        ),
        (
            "another URL",
            key.proof("POST", "https://chat.contoso.com/other", Some(&token)),
            backend,
        ),
        ("no ath", key.proof("POST", backend, None), backend),
        (
            "ath of another token",
            key.proof("POST", backend, Some("another.token.x")),
            backend,
        ),
        (
            "old iat",
            key.proof_at("POST", backend, now - 600, Some(&token)),
            backend,
        ),
    ] {
        let body = json!({"token": token, "proof": proof, "htm": "POST", "htu": htu});
        let r = verify(body).await.unwrap();
        assert_eq!(
            error_of(r).await,
            (401, "invalid_dpop_proof".into()),
            "{what}"
        );
    }
}

/// Host-signed sign-ins of a DPoP app need a proof too, and are bound to it.
async fn host_sessions_of_a_dpop_app_are_bound(db: &TestDb) {
    let s = setup(db).await;
    let now = chatgate::time::now();
    let host_token = |jti: &str| {
        let claims = json!({
            "sub": "harriet", "aud": "support", "iat": now, "exp": now + 120, "jti": jti,
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("h1".into());
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"test-host-secret-with-32-bytes-or-more"),
        )
        .unwrap()
    };
    let url = s.app.url("/v1/host-session");
    let r = Browser::new()
        .post_json(
            &url,
            ORIGIN,
            &json!({"app": "support", "token": host_token("h-1")}),
        )
        .await;
    assert_eq!(error_of(r).await, (401, "invalid_dpop_proof".into()));
    let key = ProofSigner::generate();
    let r = Browser::new()
        .post_json_dpop(
            &url,
            ORIGIN,
            &json!({"app": "support", "token": host_token("h-2")}),
            &key.proof("POST", &url, None),
        )
        .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        claims_of(body["chat_token"].as_str().unwrap())["cnf"]["jkt"],
        key.jkt().as_str()
    );
}

/// widget.js makes a key only for the apps that bind chat tokens to one:
/// chatgate names them in the copy it serves.
async fn the_served_widget_names_the_key_bound_apps(db: &TestDb) {
    let bound = setup(db).await;
    let plain = setup_with(db, "", |c| c).await;
    for (s, list) in [(&bound, "[\"support\"]"), (&plain, "[]")] {
        let script = s
            .app
            .client
            .get(s.app.url("/v1/widget.js"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            script.contains(&format!("var KEY_BOUND_APPS = {list};")),
            "{list}"
        );
    }
}

backend_tests!(
    the_served_widget_names_the_key_bound_apps,
    renewal_works_without_cookies_with_a_proof_of_the_bound_key,
    a_flow_started_with_someone_elses_key_binds_nothing,
    a_cookie_renewal_with_a_proof_binds_the_key,
    sign_out_idle_expiry_and_logout_forget_the_key,
    verify_wants_an_unused_proof_of_the_tokens_key,
    host_sessions_of_a_dpop_app_are_bound,
);
