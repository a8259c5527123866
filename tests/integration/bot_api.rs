//! The bot API against an in-process IdP that counts token-endpoint calls, on
//! SQLite and PostgreSQL: single-flight refresh (in one server and across two),
//! rotation, reauth, outages, leases, app isolation, revocation.

use crate::common;
use chatgate::secret::ExposeSecret as _;

use std::time::Duration;

use chatgate::domain::{AppId, ProviderId, UserId};
use chatgate::secret::SecretString;
use chatgate::store::Store;
use chatgate::vault::{RefreshResult, TokenSet};
use common::fake_idp::{FakeIdp, TokenBehavior};
use common::{TestApp, TestConfig, TestDb, spawn_app};
use serde_json::{Value, json};

const USER: &str = "idp:user-123";

struct Setup {
    idp: FakeIdp,
    app: TestApp,
    cfg: TestConfig,
    secret: String,
    bot_id: String,
}

/// Two apps (`support` through the IdP, `sales` host-keys only) and a bot of `support`.
async fn setup(db: &TestDb) -> Setup {
    let idp = FakeIdp::start().await;
    let mut cfg = TestConfig::new(db).with_provider(&idp, "");
    cfg.toml.push_str(
        r#"
[[apps]]
id = "sales"
origins = ["https://sales.example.com"]
chat_audience = "https://bot.sales.example.com"
host_keys = [{ kid = "s1", alg = "HS256", secret_env = "TEST_HOST_SECRET" }]
"#,
    );
    let app = spawn_app(&cfg).await;
    let bot = app
        .state
        .bots
        .create(&AppId::parse("support").unwrap(), "helpdesk", 1)
        .await
        .unwrap();
    Setup {
        idp,
        app,
        cfg,
        secret: bot.secret.expose_secret().to_string(),
        bot_id: bot.id,
    }
}

impl Setup {
    /// Stores tokens for `user` in `app` whose access token expires in
    /// `expires_in` seconds; the IdP knows the refresh token `rt`.
    async fn seed(&self, app: &str, user: &str, expires_in: i64, rt: &str) {
        self.idp
            .with(|s| s.refresh_tokens.insert(rt.to_string(), true));
        let now = chatgate::time::now();
        self.app
            .state
            .vault
            .save(
                &AppId::parse(app).unwrap(),
                &UserId::parse(user).unwrap(),
                &ProviderId::parse("idp").unwrap(),
                &TokenSet {
                    access_token: SecretString::from(format!("at-seed-{rt}")),
                    refresh_token: Some(SecretString::from(rt)),
                    token_type: "Bearer".into(),
                    scope: "openid offline_access".into(),
                    expires_at: Some(now + expires_in),
                },
                now,
            )
            .await
            .unwrap();
    }

    async fn get_token(&self, app: &TestApp, user: &str) -> reqwest::Response {
        app.client
            .get(app.url(&format!("/v1/users/{user}/token")))
            .bearer_auth(&self.secret)
            .send()
            .await
            .unwrap()
    }

    /// `GET /v1/users/{user}` as the bot.
    async fn status(&self, user: &str) -> Value {
        self.app
            .client
            .get(self.app.url(&format!("/v1/users/{user}")))
            .bearer_auth(&self.secret)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn stored_refresh_token(&self) -> Option<String> {
        stored_entry(&self.app).await.and_then(|e| {
            e.tokens
                .refresh_token
                .map(|t| t.expose_secret().to_string())
        })
    }
}

/// `USER`'s vault entry in app `support`, decrypted.
async fn stored_entry(app: &TestApp) -> Option<chatgate::vault::VaultEntry> {
    app.state
        .vault
        .load(
            &AppId::parse("support").unwrap(),
            &UserId::parse(USER).unwrap(),
        )
        .await
        .unwrap()
}

async fn error_of(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    (status, body["error"].as_str().unwrap().to_string())
}

async fn a_valid_token_is_served_without_the_idp(db: &TestDb) {
    let s = setup(db).await;
    s.seed("support", USER, 3600, "rt-a").await;
    let r = s.get_token(&s.app, USER).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["access_token"], "at-seed-rt-a");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "openid offline_access");
    assert!(body["expires_at"].as_i64().unwrap() > chatgate::time::now());
    assert_eq!(s.idp.token_calls(), 0);
    s.app.state.audit.flush().await;
    let audit = s
        .app
        .state
        .store
        .list_audit(&chatgate::store::AuditFilter {
            actor: Some(format!("bot:{}", s.bot_id)),
            limit: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (audit[0].action.as_str(), audit[0].outcome.as_str()),
        ("token.read", "ok")
    );
    assert_eq!(audit[0].user_id.as_deref(), Some(USER));
}

async fn fifty_concurrent_lookups_of_an_expired_token_cause_one_refresh(db: &TestDb) {
    let s = setup(db).await;
    s.seed("support", USER, -10, "rt-a").await;
    let stored_sub = async || {
        let row = s.app.state.store.get_vault_entry("support", USER).await;
        row.unwrap().unwrap().idp_sub
    };
    assert_eq!(stored_sub().await, None, "seeded without the IdP's sub");
    let urls = vec![s.app.url(&format!("/v1/users/{USER}/token")); 50];
    let responses = concurrent_lookups(urls, &s.secret).await;
    let mut tokens = std::collections::HashSet::new();
    for r in responses {
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        tokens.insert(body["access_token"].as_str().unwrap().to_string());
    }
    assert_eq!(tokens.len(), 1, "all 50 get the same new token: {tokens:?}");
    assert!(!tokens.contains("at-seed-rt-a"));
    // The refreshed ID token's sub is kept: a back-channel logout finds the user.
    assert_eq!(stored_sub().await.as_deref(), Some("user-123"));
    assert_eq!(s.idp.token_calls(), 1, "exactly one refresh at the IdP");
    let metrics = s.app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"chatgate_refresh_total{outcome="ok"} 1"#),
        "{metrics}"
    );
}

async fn two_servers_on_one_database_refresh_once(db: &TestDb) {
    let s = setup(db).await;
    let second = spawn_app(&s.cfg).await;
    s.seed("support", USER, -10, "rt-a").await;
    let urls = (0..50)
        .map(|i| {
            let app = if i % 2 == 0 { &s.app } else { &second };
            app.url(&format!("/v1/users/{USER}/token"))
        })
        .collect();
    let responses = concurrent_lookups(urls, &s.secret).await;
    let mut tokens = std::collections::HashSet::new();
    for r in responses {
        assert_eq!(r.status(), 200);
        tokens.insert(
            r.json::<Value>().await.unwrap()["access_token"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(
        s.idp.token_calls(),
        1,
        "exactly one refresh across both replicas"
    );
    second.stop().await;
}

async fn rotated_refresh_tokens_are_used_and_old_ones_never_again(db: &TestDb) {
    let s = setup(db).await;
    s.seed("support", USER, -10, "rt-a").await;
    assert_eq!(s.get_token(&s.app, USER).await.status(), 200);
    let rotated = s.stored_refresh_token().await.unwrap();
    assert_ne!(rotated, "rt-a");
    // Expire the new access token and look it up again.
    expire_access_token(&s.app.state.store).await;
    assert_eq!(s.get_token(&s.app, USER).await.status(), 200);
    let presented = s.idp.with(|st| st.presented_refresh_tokens.clone());
    assert_eq!(presented, vec!["rt-a".to_string(), rotated]);
    // A response without a refresh token keeps the stored one.
    let before = s.stored_refresh_token().await.unwrap();
    s.idp.with(|st| {
        st.next_token = TokenBehavior {
            no_refresh_token: true,
            ..Default::default()
        }
    });
    expire_access_token(&s.app.state.store).await;
    assert_eq!(s.get_token(&s.app, USER).await.status(), 200);
    assert_eq!(s.stored_refresh_token().await.unwrap(), before);
}

pub(crate) async fn expire_access_token(store: &Store) {
    const SQL: &str = "UPDATE vault_entries SET access_expires_at = 0";
    match store {
        Store::Sqlite(p) => sqlx::query(SQL).execute(p).await.map(|_| ()).unwrap(),
        Store::Postgres(p) => sqlx::query(SQL).execute(p).await.map(|_| ()).unwrap(),
    }
}

async fn invalid_grant_means_reauth_and_no_further_refresh(db: &TestDb) {
    let s = setup(db).await;
    s.seed("support", USER, -10, "rt-a").await;
    s.idp
        .with(|st| st.refresh_tokens.insert("rt-a".into(), false)); // the IdP revoked it
    assert_eq!(
        error_of(s.get_token(&s.app, USER).await).await,
        (401, "reauth_required".into())
    );
    let r = s.get_token(&s.app, USER).await;
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("reauth_required")
    );
    assert_eq!(
        s.idp.token_calls(),
        1,
        "the refused refresh token is not tried again"
    );
    let status: Value = s.status(USER).await;
    assert_eq!(status["needs_reauth"], true);
    assert_eq!(status["signed_in"], false);
}

/// A 4xx OAuth error other than invalid_grant is no outage: real IdPs answer
/// a dead refresh token that way too (LemonLDAP::NG: `invalid_request`).
/// After a few tries the user must sign in again (401 reauth_required, the
/// status says so, `user.reauth_required`), never an endless 503; 5xx, 429
/// and temporarily_unavailable stay transient.
async fn any_refusal_of_a_refresh_means_reauth_not_an_endless_503(db: &TestDb) {
    let s = setup(db).await;
    for (n, (status, body)) in [
        (400, r#"{"error":"invalid_request"}"#),
        (400, r#"{"error":"unauthorized_client"}"#),
        (401, r#"{"error":"invalid_client"}"#),
        (400, "Bad Request"),
    ]
    .into_iter()
    .enumerate()
    {
        let user = format!("idp:refused-{n}");
        s.seed("support", &user, -10, &format!("rt-refused-{n}"))
            .await;
        s.idp
            .with(|st| st.refresh_answer = Some((status, body.to_string())));
        let calls = s.idp.token_calls();
        assert_eq!(
            error_of(s.get_token(&s.app, &user).await).await,
            (401, "reauth_required".into()),
            "{body}"
        );
        assert_eq!(
            s.idp.token_calls() - calls,
            3,
            "{body}: asked three times, then decided"
        );
        assert_eq!(
            error_of(s.get_token(&s.app, &user).await).await,
            (401, "reauth_required".into())
        );
        assert_eq!(s.idp.token_calls() - calls, 3, "{body}: and not again");
        let status: Value = s.status(&user).await;
        assert_eq!(status["needs_reauth"], true, "{body}");
    }
    // What says "not now" stays transient: the entry is left as it is.
    for (status, body) in [
        (400, r#"{"error":"temporarily_unavailable"}"#),
        (500, r#"{"error":"server_error"}"#),
        (429, "slow down"),
        (502, "<html>bad gateway</html>"),
    ] {
        let user = "idp:transient";
        s.seed("support", user, -10, "rt-transient").await;
        s.idp
            .with(|st| st.refresh_answer = Some((status, body.to_string())));
        assert_eq!(s.get_token(&s.app, user).await.status(), 503, "{body}");
        let st: Value = s.status(user).await;
        assert_eq!(st["needs_reauth"], false, "{body}");
    }
    let metrics = s.app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"chatgate_refresh_total{outcome="refused"} 4"#),
        "{metrics}"
    );
}

async fn an_idp_outage_serves_a_still_valid_token_or_answers_503(db: &TestDb) {
    let s = setup(db).await;
    // 30 s left: within refresh_skew (60 s) so a refresh is due, but still valid.
    s.seed("support", USER, 30, "rt-a").await;
    s.idp.with(|st| st.token_endpoint_status = Some(503));
    let r = s.get_token(&s.app, USER).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["access_token"],
        "at-seed-rt-a"
    );
    // Expired: nothing to serve.
    expire_access_token(&s.app.state.store).await;
    let r = s.get_token(&s.app, USER).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    assert_eq!(error_of(r).await.1, "temporarily_unavailable");
    // The refresh token survived the outage: once the IdP is back, it works.
    s.idp.with(|st| st.token_endpoint_status = None);
    assert_eq!(s.get_token(&s.app, USER).await.status(), 200);
}

async fn a_lease_left_by_a_dead_replica_does_not_block(db: &TestDb) {
    let s = setup(db).await;
    s.seed("support", USER, -10, "rt-a").await;
    // A lease of an older chatgate, without a lease id.
    set_lease(
        &s.app.state.store,
        "replica-that-died",
        "",
        chatgate::time::now() - 1,
    )
    .await;
    let r = s.get_token(&s.app, USER).await;
    assert_eq!(r.status(), 200);
    assert_eq!(s.idp.token_calls(), 1);
}

async fn a_lookup_waits_for_another_replicas_refresh_and_uses_its_result(db: &TestDb) {
    let s = setup(db).await;
    s.seed("support", USER, -10, "rt-a").await;
    // Another replica holds a live lease...
    set_lease(
        &s.app.state.store,
        "replica-b",
        "lease-b",
        chatgate::time::now() + 30,
    )
    .await;
    let app = &s.app;
    let lookup = s.get_token(app, USER);
    let other_replica = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // ...and stores its refreshed tokens.
        let now = chatgate::time::now();
        let written = app
            .state
            .vault
            .save_refreshed(
                &AppId::parse("support").unwrap(),
                &UserId::parse(USER).unwrap(),
                &RefreshResult {
                    lease_id: "lease-b",
                    tokens: &TokenSet {
                        access_token: SecretString::from("at-from-replica-b"),
                        refresh_token: Some(SecretString::from("rt-b")),
                        token_type: "Bearer".into(),
                        scope: "openid".into(),
                        expires_at: Some(now + 3600),
                    },
                    pending_id_token: None,
                    needs_reauth: false,
                    id_token: None,
                    idp_sub: None,
                    event: None,
                },
                now,
            )
            .await
            .unwrap();
        assert!(written);
    };
    let (r, ()) = tokio::join!(lookup, other_replica);
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["access_token"],
        "at-from-replica-b"
    );
    assert_eq!(s.idp.token_calls(), 0);
}

/// Gives every vault row a lease, as another replica would hold it.
async fn set_lease(store: &Store, owner: &str, id: &str, until: i64) {
    const SQL: &str = "UPDATE vault_entries SET refresh_lease_owner = $1, \
         refresh_lease_id = NULLIF($2, ''), refresh_lease_until = $3";
    match store {
        Store::Sqlite(p) => sqlx::query(SQL)
            .bind(owner)
            .bind(id)
            .bind(until)
            .execute(p)
            .await
            .map(|_| ())
            .unwrap(),
        Store::Postgres(p) => sqlx::query(SQL)
            .bind(owner)
            .bind(id)
            .bind(until)
            .execute(p)
            .await
            .map(|_| ())
            .unwrap(),
    }
}

async fn a_refreshed_id_token_for_someone_else_is_rejected(db: &TestDb) {
    let s = setup(db).await;
    s.seed("support", USER, -10, "rt-a").await;
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), json!("mallory"));
    s.idp.with(|st| {
        st.next_token = TokenBehavior {
            claims,
            ..Default::default()
        }
    });
    assert_eq!(
        error_of(s.get_token(&s.app, USER).await).await,
        (401, "reauth_required".into())
    );
    // Mallory's tokens were not stored as this user's.
    let entry = stored_entry(&s.app).await.unwrap();
    assert_eq!(entry.tokens.access_token.expose_secret(), "at-seed-rt-a");
    assert!(entry.needs_reauth);
}

async fn a_bot_sees_only_its_own_apps_users(db: &TestDb) {
    let s = setup(db).await;
    s.seed("sales", USER, 3600, "rt-sales").await;
    assert_eq!(
        error_of(s.get_token(&s.app, USER).await).await,
        (404, "not_found".into())
    );
    // the same user in the bot's own app is visible
    s.seed("support", USER, 3600, "rt-a").await;
    assert_eq!(s.get_token(&s.app, USER).await.status(), 200);
}

async fn bot_credentials_are_checked(db: &TestDb) {
    let s = setup(db).await;
    s.seed("support", USER, 3600, "rt-a").await;
    let url = s.app.url(&format!("/v1/users/{USER}/token"));
    let r = s.app.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"chatgate\"");
    for bad in ["cgb_not-a-real-secret", "Basic abc", "", "cgb_"] {
        let r = s
            .app
            .client
            .get(&url)
            .header("authorization", format!("Bearer {bad}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{bad}");
        assert!(
            r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
        let body = r.text().await.unwrap();
        assert!(
            !body.contains("cgb_not-a-real-secret"),
            "the secret is echoed: {body}"
        );
    }
    assert!(s.app.state.bots.revoke(&s.bot_id, 2).await.unwrap());
    let r = s.get_token(&s.app, USER).await;
    assert_eq!(error_of(r).await, (401, "invalid_token".into()));
}

async fn delete_revokes_at_the_idp_and_is_idempotent(db: &TestDb) {
    let s = setup(db).await;
    s.seed("support", USER, 3600, "rt-a").await;
    let url = s.app.url(&format!("/v1/users/{USER}/token"));
    let r = s
        .app
        .client
        .delete(&url)
        .bearer_auth(&s.secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let revoked = s.idp.with(|st| st.revoked.clone());
    assert_eq!(
        revoked,
        vec!["rt-a".to_string(), "at-seed-rt-a".to_string()],
        "refresh token first"
    );
    assert_eq!(
        error_of(s.get_token(&s.app, USER).await).await,
        (404, "not_found".into())
    );
    let r = s
        .app
        .client
        .delete(&url)
        .bearer_auth(&s.secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        s.idp.with(|st| st.revoked.len()),
        2,
        "nothing left to revoke"
    );
}

async fn status_and_chat_token_verification(db: &TestDb) {
    let s = setup(db).await;
    s.seed("support", USER, 3600, "rt-a").await;
    let status: Value = s.status(USER).await;
    assert_eq!(status["signed_in"], true);
    assert_eq!(status["needs_reauth"], false);
    assert!(status.get("access_token").is_none());
    let text = status.to_string();
    assert!(
        !text.contains("at-seed") && !text.contains("rt-a"),
        "{text}"
    );
    let unknown: Value = s.status("idp:nobody").await;
    assert_eq!(unknown["signed_in"], false);

    // verify: a chat token for this bot's app verifies; one for another app does not.
    let mint = |app: &str, aud: &str| mint_chat_token(&s.app, app, aud, USER);
    let verify = |token: String| {
        s.app
            .client
            .post(s.app.url("/v1/chat-tokens/verify"))
            .bearer_auth(&s.secret)
            .json(&json!({ "token": token }))
            .send()
    };
    let r = verify(mint("support", "https://bot.contoso.com"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let claims: Value = r.json().await.unwrap();
    assert_eq!(claims["sub"], USER);
    assert_eq!(claims["name"], "Alice");
    let r = verify(mint("sales", "https://bot.sales.example.com"))
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (401, "invalid_token".into()));
    let r = verify("not.a.token".into()).await.unwrap();
    assert_eq!(error_of(r).await, (401, "invalid_token".into()));
}

async fn host_users_have_no_idp_tokens(db: &TestDb) {
    let s = setup(db).await;
    let r = s.get_token(&s.app, "host:support:42").await;
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 404);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("host-signed"),
        "{body}"
    );
    let r = s.get_token(&s.app, "not-a-user-id").await;
    assert_eq!(error_of(r).await, (400, "invalid_request".into()));
}

async fn the_openapi_document_describes_the_bot_api(db: &TestDb) {
    let s = setup(db).await;
    let spec: Value = s.app.get("/v1/openapi.json").await.json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let paths = spec["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/users/{user_id}/token", "get"),
        ("/v1/users/{user_id}/token", "delete"),
        ("/v1/users/{user_id}", "get"),
        ("/v1/chat-tokens/verify", "post"),
    ] {
        assert!(paths[path].get(method).is_some(), "{method} {path} missing");
    }
    assert_eq!(
        spec["components"]["securitySchemes"]["bot_secret"]["scheme"],
        "bearer"
    );
    assert!(spec["components"]["schemas"]["AccessTokenResponse"].is_object());
}

/// GETs every URL at the same time (one task each) with the bot secret.
pub(crate) async fn concurrent_lookups(urls: Vec<String>, secret: &str) -> Vec<reqwest::Response> {
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(urls.len()));
    let tasks: Vec<_> = urls
        .into_iter()
        .map(|url| {
            let (secret, start) = (secret.to_string(), start.clone());
            tokio::spawn(async move {
                let client = common::http_client();
                start.wait().await;
                client.get(url).bearer_auth(secret).send().await.unwrap()
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

async fn with_a_read_cache_revocations_and_deletions_show_within_the_ttl(db: &TestDb) {
    let idp = FakeIdp::start().await;
    let mut cfg = TestConfig::new(db).with_provider(&idp, "");
    cfg.toml = cfg
        .toml
        .replace("read_cache_ttl = \"0s\"", "read_cache_ttl = \"1s\"");
    let app = spawn_app(&cfg).await;
    let bot = app
        .state
        .bots
        .create(&AppId::parse("support").unwrap(), "b", 1)
        .await
        .unwrap();
    let s = Setup {
        idp,
        app,
        cfg,
        secret: bot.secret.expose_secret().to_string(),
        bot_id: bot.id,
    };
    s.seed("support", USER, 3600, "rt-a").await;
    assert_eq!(s.get_token(&s.app, USER).await.status(), 200);
    // Another replica (here: the database directly) deletes the user and revokes the bot.
    match &s.app.state.store {
        Store::Sqlite(p) => sqlx::query("DELETE FROM vault_entries")
            .execute(p)
            .await
            .map(|_| ())
            .unwrap(),
        Store::Postgres(p) => sqlx::query("DELETE FROM vault_entries")
            .execute(p)
            .await
            .map(|_| ())
            .unwrap(),
    }
    assert!(s.app.state.bots.revoke(&s.bot_id, 2).await.unwrap());
    // Within the TTL the cached answers may still be used...
    // ...but after it, both changes are seen.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        error_of(s.get_token(&s.app, USER).await).await,
        (401, "invalid_token".into())
    );
    // A write through this server invalidates its cache at once.
    let second = s
        .app
        .state
        .bots
        .create(&AppId::parse("support").unwrap(), "c", 3)
        .await
        .unwrap();
    s.seed("support", USER, 3600, "rt-b").await;
    let lookup = || {
        s.app
            .client
            .get(s.app.url(&format!("/v1/users/{USER}/token")))
            .bearer_auth(second.secret.expose_secret())
            .send()
    };
    assert_eq!(lookup().await.unwrap().status(), 200);
    let url = s.app.url(&format!("/v1/users/{USER}/token"));
    let r = s
        .app
        .client
        .delete(&url)
        .bearer_auth(second.secret.expose_secret())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        lookup().await.unwrap().status(),
        404,
        "the deleting server forgets at once"
    );
}

/// A chat token of `app` (audience `aud`) for `user`, as the widget would get one.
fn mint_chat_token(app: &TestApp, app_id: &str, aud: &str, user: &str) -> String {
    app.state
        .keys
        .issuer()
        .mint(
            &chatgate::chat_token::ChatSubject {
                app: &AppId::parse(app_id).unwrap(),
                audience: aud,
                user: &chatgate::chat_token::ChatUser {
                    user_id: &UserId::parse(user).unwrap(),
                    via: chatgate::chat_token::Via::Oidc,
                    auth_time: chatgate::time::now(),
                    name: Some("Alice"),
                    email: None,
                    email_verified: false,
                },
                jkt: None,
            },
            chatgate::time::now(),
        )
        .unwrap()
        .0
}

/// The Azure Bot Service user-token API under `/bf/`, as botbuilder calls it
/// (the user's chat token as the magic code: proof that the user is present).
async fn the_bot_framework_token_api_serves_the_same_tokens(db: &TestDb) {
    let s = setup(db).await;
    let bf = |method: reqwest::Method, path: &str| {
        s.app
            .client
            .request(method, s.app.url(&format!("/bf/api/{path}")))
            .bearer_auth(&s.secret)
    };
    let get_token = |user: &str, connection: &str| {
        let code = mint_chat_token(&s.app, "support", "https://bot.contoso.com", user);
        bf(
            reqwest::Method::GET,
            &format!(
                "usertoken/GetToken?userId={user}&connectionName={connection}&channelId=webchat&code={code}"
            ),
        )
        .send()
    };
    // Expired: GetToken refreshes first, once, like the bot API.
    s.seed("support", USER, -10, "rt-bf").await;
    let r = get_token(USER, "support").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["channelId"], "webchat");
    assert_eq!(body["connectionName"], "support");
    let token = body["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("at-"), "{body}");
    assert_ne!(token, "at-seed-rt-bf", "refreshed first");
    assert_eq!(s.idp.refreshes(), 1);
    let expiration = body["expiration"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(expiration).is_ok(),
        "{expiration}"
    );
    let again: Value = get_token(USER, "support")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["token"], token.as_str());
    assert_eq!(s.idp.refreshes(), 1);

    // No token: 404 without a body (botbuilder returns no token).
    let r = get_token("idp:nobody", "support").await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().is_empty());
    // Another app's connection, a user id that is not one, no secret.
    let (status, body) = {
        let r = get_token(USER, "sales").await.unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "NotFound");
    let r = bf(
        reqwest::Method::GET,
        "usertoken/GetToken?userId=not%20a%20user%20id&connectionName=support",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let r = s
        .app
        .client
        .get(s.app.url(&format!(
            "/bf/api/usertoken/GetToken?userId={USER}&connectionName=support"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let status = |include: &str| {
        bf(
            reqwest::Method::GET,
            &format!("usertoken/GetTokenStatus?userId={USER}&channelId=webchat{include}"),
        )
        .send()
    };
    let st: Value = status("").await.unwrap().json().await.unwrap();
    assert_eq!(
        st,
        json!([{"channelId": "webchat", "connectionName": "support", "hasToken": true,
                "serviceProviderDisplayName": "idp"}])
    );
    let none: Value = status("&include=other")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(none, json!([]));

    // SignOut revokes at the IdP and deletes; GetToken then has nothing.
    let r = bf(
        reqwest::Method::DELETE,
        &format!("usertoken/SignOut?userId={USER}&connectionName=support&channelId=webchat"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert!(stored_entry(&s.app).await.is_none());
    assert!(!s.idp.with(|i| i.revoked.is_empty()), "revoked at the IdP");
    assert_eq!(get_token(USER, "support").await.unwrap().status(), 404);
    let st: Value = status("").await.unwrap().json().await.unwrap();
    assert_eq!(st[0]["hasToken"], false);

    // What chatgate does not serve says so in botbuilder's error shape.
    for (method, path) in [
        (
            reqwest::Method::POST,
            "usertoken/GetAadTokens?userId=u&connectionName=support",
        ),
        (
            reqwest::Method::POST,
            "usertoken/exchange?userId=u&connectionName=support&channelId=c",
        ),
        (reqwest::Method::GET, "botsignin/GetSignInResource?state=x"),
    ] {
        let r = bf(method, path).json(&json!({})).send().await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "NotSupported", "{path}");
    }
}

/// `/bf` `GetToken` answers only for a user the request shows to be present:
/// that user's chat token of this app as the magic code. A bot wired the
/// obvious way (`activity.from.id`, which the page chooses, and no code) gets
/// nothing; an app whose channel binds user ids says so in its config.
async fn the_bot_framework_api_wants_proof_that_the_user_is_present(db: &TestDb) {
    for binds in [false, true] {
        let idp = FakeIdp::start().await;
        let mut cfg = TestConfig::new(db).with_provider(&idp, "");
        if binds {
            cfg.toml = cfg.toml.replace(
                "provider = \"idp\"\n",
                "provider = \"idp\"\nchannel_binds_user_ids = true\n",
            );
        }
        let app = spawn_app(&cfg).await;
        let secret = app
            .state
            .bots
            .create(&AppId::parse("support").unwrap(), "helpdesk", 1)
            .await
            .unwrap()
            .secret;
        let s = Setup {
            idp,
            app,
            cfg,
            secret: secret.expose_secret().to_string(),
            bot_id: String::new(),
        };
        s.seed("support", USER, 3600, "rt-p").await;
        let get_token = |code: Option<String>| {
            let code = code.map(|c| format!("&code={c}")).unwrap_or_default();
            s.app
                .client
                .get(s.app.url(&format!(
                    "/bf/api/usertoken/GetToken?userId={USER}&connectionName=support&channelId=webchat{code}"
                )))
                .bearer_auth(&s.secret)
                .send()
        };
        let own = mint_chat_token(&s.app, "support", "https://bot.contoso.com", USER);
        let r = get_token(Some(own)).await.unwrap();
        assert_eq!(r.status(), 200, "binds: {binds}");
        let refused = [
            None,
            Some(mint_chat_token(
                &s.app,
                "support",
                "https://bot.contoso.com",
                "idp:mallory",
            )),
            Some(mint_chat_token(
                &s.app,
                "sales",
                "https://bot.contoso.com",
                USER,
            )),
            Some("not-a-chat-token".to_string()),
        ];
        for code in refused {
            let r = get_token(code.clone()).await.unwrap();
            if binds {
                assert_eq!(r.status(), 200, "the channel binds user ids: {code:?}");
                continue;
            }
            assert_eq!(r.status(), 403, "{code:?}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "Forbidden");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains("magic code"), "{message}");
            assert!(!message.contains("at-seed"), "no token in the message");
        }
        if !binds {
            s.app.state.audit.flush().await;
            let refusals = s
                .app
                .state
                .store
                .list_audit(&chatgate::store::AuditFilter {
                    user_id: Some(USER.into()),
                    actor: None,
                    limit: 100,
                })
                .await
                .unwrap()
                .into_iter()
                .filter(|e| e.outcome == "refused")
                .map(|e| e.count)
                .sum::<i64>();
            assert_eq!(refusals, 4, "every refusal is audited (counted)");
        }
    }
}

backend_tests!(
    the_bot_framework_api_wants_proof_that_the_user_is_present,
    the_bot_framework_token_api_serves_the_same_tokens,
    with_a_read_cache_revocations_and_deletions_show_within_the_ttl,
    a_valid_token_is_served_without_the_idp,
    fifty_concurrent_lookups_of_an_expired_token_cause_one_refresh,
    two_servers_on_one_database_refresh_once,
    rotated_refresh_tokens_are_used_and_old_ones_never_again,
    invalid_grant_means_reauth_and_no_further_refresh,
    any_refusal_of_a_refresh_means_reauth_not_an_endless_503,
    an_idp_outage_serves_a_still_valid_token_or_answers_503,
    a_lease_left_by_a_dead_replica_does_not_block,
    a_lookup_waits_for_another_replicas_refresh_and_uses_its_result,
    a_refreshed_id_token_for_someone_else_is_rejected,
    a_bot_sees_only_its_own_apps_users,
    bot_credentials_are_checked,
    delete_revokes_at_the_idp_and_is_idempotent,
    status_and_chat_token_verification,
    host_users_have_no_idp_tokens,
    the_openapi_document_describes_the_bot_api,
);
