//! Faults during a refresh, injected with real components: an IdP that answers
//! late (after it rotated the refresh token) and detects replays, a database
//! connection that is cut (PostgreSQL behind a TCP proxy) or locked (SQLite),
//! bots that give up, a request timeout, `vault rekey`, a new sign-in, a
//! sign-out, graceful shutdown and `kill -9` of a replica.
//!
//! Each test asserts that nothing was lost: the IdP never sees a refresh token
//! twice, and later lookups answer 200 with the rotated token.

use crate::common::child::ServeChild;
use chatgate::secret::ExposeSecret as _;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use chatgate::domain::{AppId, KeyId, ProviderId, UserId};
use chatgate::secret::SecretString;
use chatgate::vault::{TokenSet, Vault, VaultEntry, VaultKeyRing};
use serde_json::Value;

use crate::bot_api::{concurrent_lookups, expire_access_token};
use crate::common::fake_idp::FakeIdp;
use crate::common::outage::DbOutage;
use crate::common::{self, TestApp, TestConfig, TestDb, spawn_app};

const USER: &str = "idp:user-123";
const SEEDED_RT: &str = "rt-seeded";

struct World {
    idp: FakeIdp,
    app: TestApp,
    cfg: TestConfig,
    secret: String,
    outage: DbOutage,
    /// The vault over a connection of the test's own (never through the proxy).
    direct: Vault,
}

fn support() -> AppId {
    AppId::parse("support").unwrap()
}

fn user() -> UserId {
    UserId::parse(USER).unwrap()
}

/// chatgate with the fake IdP, reaching its database through `DbOutage`'s URL;
/// `top` adds top-level config lines. The user's stored access token has
/// expired, so the next lookup refreshes.
async fn world(db: &TestDb, top: &str) -> World {
    let idp = FakeIdp::start().await;
    let outage = DbOutage::new(db).await;
    let mut cfg = TestConfig::new(db).with_provider(&idp, "").with_top(top);
    cfg.toml = cfg.toml.replace(&db.url, &outage.url);
    let app = spawn_app(&cfg).await;
    let bot = app
        .state
        .bots
        .create(&support(), "helpdesk", 1)
        .await
        .unwrap();
    let direct = Vault::new(db.store().await, app.state.config.vault_keys.clone());
    let w = World {
        idp,
        app,
        cfg,
        secret: bot.secret.expose_secret().to_string(),
        outage,
        direct,
    };
    w.seed(-10, Some(SEEDED_RT), "at-seeded").await;
    w
}

impl World {
    /// Stores tokens as a sign-in would; the IdP knows the refresh token.
    async fn seed(&self, expires_in: i64, rt: Option<&str>, at: &str) {
        if let Some(rt) = rt {
            self.idp
                .with(|s| s.refresh_tokens.insert(rt.to_string(), true));
        }
        let now = chatgate::time::now();
        self.direct
            .save(
                &support(),
                &user(),
                &ProviderId::parse("idp").unwrap(),
                &TokenSet {
                    access_token: SecretString::from(at),
                    refresh_token: rt.map(SecretString::from),
                    token_type: "Bearer".into(),
                    scope: "openid offline_access".into(),
                    expires_at: Some(now + expires_in),
                },
                now,
            )
            .await
            .unwrap();
    }

    fn lookup_on(&self, app: &TestApp) -> reqwest::RequestBuilder {
        app.client
            .get(app.url(&format!("/v1/users/{USER}/token")))
            .bearer_auth(&self.secret)
    }

    async fn lookup(&self) -> reqwest::Response {
        self.lookup_on(&self.app).send().await.unwrap()
    }

    /// `USER`'s entry, read directly.
    async fn entry(&self) -> Option<VaultEntry> {
        self.direct.load(&support(), &user()).await.unwrap()
    }

    async fn stored_rt(&self) -> Option<String> {
        self.entry().await.and_then(|e| {
            e.tokens
                .refresh_token
                .map(|t| t.expose_secret().to_string())
        })
    }

    /// Waits until the stored refresh token is no longer `old`.
    async fn wait_until_rotated_away_from(&self, old: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(rt) = self.stored_rt().await
                && rt != old
            {
                return rt;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the rotated refresh token was never stored"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The end state every test wants: a lookup answers 200 with an access
    /// token the IdP issued by refreshing, the stored refresh token is one the
    /// IdP accepts, and no refresh token was presented twice. Then one more
    /// expiry: the rotated refresh token works.
    async fn assert_nothing_lost(&self) {
        let r = self.lookup().await;
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
        let body: Value = r.json().await.unwrap();
        assert_ne!(body["access_token"], "at-seeded");
        let rt = self.stored_rt().await.expect("a refresh token is stored");
        assert!(self.idp.accepts(&rt), "the stored refresh token is live");
        self.idp.assert_no_refresh_token_replayed();
        let before = self.idp.refreshes();
        expire_access_token(&self.app.state.store).await;
        let r = self.lookup().await;
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
        assert_eq!(self.idp.refreshes(), before + 1);
        self.idp.assert_no_refresh_token_replayed();
    }

    async fn metrics(&self) -> String {
        self.app.get("/metrics").await.text().await.unwrap()
    }
}

fn slow_idp(idp: &FakeIdp, answer_after: Duration) {
    idp.with(|s| s.refresh_answer_delay = Some(answer_after));
}

async fn status_and_error(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or_default();
    (status, body["error"].as_str().unwrap_or("").to_string())
}

async fn a_bot_that_gives_up_mid_refresh_loses_nothing(db: &TestDb) {
    let w = world(db, "").await;
    slow_idp(&w.idp, Duration::from_secs(2));
    // The bot gives up after 300 ms; the IdP has rotated the token by then.
    let gave_up = w
        .lookup_on(&w.app)
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(gave_up.is_err_and(|e| e.is_timeout()));
    w.idp.wait_for_refreshes(1).await;
    w.wait_until_rotated_away_from(SEEDED_RT).await;
    assert_eq!(w.idp.refreshes(), 1);
    w.idp.with(|s| s.refresh_answer_delay = None);
    w.assert_nothing_lost().await;
    assert!(
        w.metrics()
            .await
            .contains(r#"chatgate_refresh_total{outcome="ok"} 2"#)
    );
}

async fn a_request_timeout_mid_refresh_loses_nothing(db: &TestDb) {
    let w = world(db, r#"request_timeout = "1s""#).await;
    slow_idp(&w.idp, Duration::from_secs(2));
    let (status, error) = status_and_error(w.lookup().await).await;
    assert_eq!((status, error.as_str()), (503, "temporarily_unavailable"));
    w.wait_until_rotated_away_from(SEEDED_RT).await;
    w.idp.with(|s| s.refresh_answer_delay = None);
    w.assert_nothing_lost().await;
}

async fn vault_rekey_during_a_refresh_loses_nothing(db: &TestDb) {
    let w = world(db, "").await;
    slow_idp(&w.idp, Duration::from_millis(1500));
    let lookup = tokio::spawn(w.lookup_on(&w.app).send());
    w.idp.wait_for_refreshes(1).await;
    // `chatgate vault rekey` in another process, with a new key first.
    let k1 = SecretString::from(std::fs::read_to_string(w.cfg.path().join("vault.key")).unwrap());
    let decode = |k: &SecretString| VaultKeyRing::decode_key(k).unwrap();
    let ring = Arc::new(
        VaultKeyRing::new(vec![
            (
                KeyId::parse("k2").unwrap(),
                decode(&VaultKeyRing::generate_key()),
            ),
            (KeyId::parse("k1").unwrap(), decode(&k1)),
        ])
        .unwrap(),
    );
    let rekeyed = Vault::new(db.store().await, ring)
        .rekey(10, chatgate::time::now(), |_| ControlFlow::Continue(()))
        .await
        .unwrap();
    assert_eq!(rekeyed.moved, 1, "{rekeyed:?}");
    let r = lookup.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    w.idp.with(|s| s.refresh_answer_delay = None);
    w.assert_nothing_lost().await;
}

async fn a_database_outage_while_the_idp_answers_loses_nothing(db: &TestDb) {
    let w = world(db, "").await;
    slow_idp(&w.idp, Duration::from_millis(800));
    let lookup = tokio::spawn(w.lookup_on(&w.app).send());
    w.idp.wait_for_refreshes(1).await;
    // The IdP has rotated; its answer arrives while the database is away:
    // PostgreSQL cut for 6 s, SQLite locked past its 5 s busy timeout.
    let length = match db.backend {
        common::Backend::Postgres => Duration::from_secs(6),
        common::Backend::Sqlite => Duration::from_secs(8),
    };
    let outage = w.outage.begin(length).await;
    let r = lookup.await.unwrap().unwrap();
    assert!(r.headers().contains_key("retry-after"));
    let (status, error) = status_and_error(r).await;
    assert_eq!(
        (status, error.as_str()),
        (503, "temporarily_unavailable"),
        "never a 500"
    );
    if db.backend == common::Backend::Postgres {
        let ready = w.app.get("/readyz").await;
        assert_eq!(ready.status(), 503);
        // A lookup during the outage: 503, not 500.
        let (status, _) = status_and_error(w.lookup().await).await;
        assert_eq!(status, 503);
    }
    outage.await.unwrap();
    w.wait_until_rotated_away_from(SEEDED_RT).await;
    assert_eq!(w.app.get("/readyz").await.status(), 200, "ready again");
    assert!(
        w.metrics()
            .await
            .contains(r#"chatgate_refresh_total{outcome="stored_after_retry"} 1"#)
    );
    w.idp.with(|s| s.refresh_answer_delay = None);
    w.assert_nothing_lost().await;
    let metrics = w.metrics().await;
    assert!(
        metrics.contains(r#"chatgate_refresh_total{outcome="lost"} 0"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("chatgate_refreshes_unsaved 0"),
        "{metrics}"
    );
}

async fn a_refreshed_id_token_that_cannot_be_verified_now_is_kept(db: &TestDb) {
    let w = world(db, "").await;
    // The IdP signs with a key chatgate has not seen, and its JWKS is down.
    w.idp.rotate_key("key-2");
    w.idp.with(|s| s.jwks_status = Some(503));
    let (status, error) = status_and_error(w.lookup().await).await;
    assert_eq!((status, error.as_str()), (503, "temporarily_unavailable"));
    let entry = w.entry().await.unwrap();
    assert!(
        !entry.needs_reauth,
        "a transient failure is no identity change"
    );
    assert!(entry.pending_id_token.is_some());
    let rotated = w.stored_rt().await.unwrap();
    assert_ne!(rotated, SEEDED_RT, "the rotated refresh token is kept");
    // Still unverifiable: still 503, and no second refresh.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(w.lookup().await.status(), 503);
    // The JWKS is back: the kept ID token is verified, the token served.
    w.idp.with(|s| s.jwks_status = None);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = w.lookup().await;
    assert_eq!(r.status(), 200);
    assert_eq!(w.idp.refreshes(), 1, "verified later, not refreshed again");
    assert!(w.entry().await.unwrap().pending_id_token.is_none());
    w.assert_nothing_lost().await;
}

async fn a_refreshed_id_token_for_someone_else_verified_later_means_reauth(db: &TestDb) {
    let w = world(db, "").await;
    w.idp.rotate_key("key-2");
    w.idp.with(|s| {
        s.jwks_status = Some(503);
        s.next_token.claims.insert("sub".into(), "mallory".into());
    });
    assert_eq!(w.lookup().await.status(), 503);
    w.idp.with(|s| s.jwks_status = None);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, error) = status_and_error(w.lookup().await).await;
    assert_eq!((status, error.as_str()), (401, "reauth_required"));
    assert!(w.entry().await.unwrap().needs_reauth);
}

async fn a_new_sign_in_during_a_refresh_wins(db: &TestDb) {
    let w = world(db, "").await;
    slow_idp(&w.idp, Duration::from_millis(1500));
    let lookup = tokio::spawn(w.lookup_on(&w.app).send());
    w.idp.wait_for_refreshes(1).await;
    // The user signs in again meanwhile: a newer grant with its own refresh token.
    w.seed(3600, Some("rt-signin"), "at-signin").await;
    let r = lookup.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["access_token"], "at-signin", "the newer grant wins");
    assert_eq!(w.stored_rt().await.unwrap(), "rt-signin");
    assert!(
        w.metrics()
            .await
            .contains(r#"chatgate_refresh_total{outcome="superseded"} 1"#)
    );
    w.idp.with(|s| s.refresh_answer_delay = None);
    expire_access_token(&w.app.state.store).await;
    assert_eq!(w.lookup().await.status(), 200);
    let presented = w.idp.with(|s| s.presented_refresh_tokens.clone());
    assert_eq!(presented, vec![SEEDED_RT.to_string(), "rt-signin".into()]);
    w.idp.assert_no_refresh_token_replayed();
}

async fn a_sign_in_without_a_refresh_token_keeps_the_rotated_one(db: &TestDb) {
    let w = world(db, "").await;
    slow_idp(&w.idp, Duration::from_millis(1500));
    let lookup = tokio::spawn(w.lookup_on(&w.app).send());
    w.idp.wait_for_refreshes(1).await;
    // IdPs often omit the refresh token on a later sign-in: the stored one
    // (just used by the refresh) must not be kept over the rotated one.
    w.seed(3600, None, "at-signin").await;
    assert_eq!(lookup.await.unwrap().unwrap().status(), 200);
    let rt = w.stored_rt().await.unwrap();
    assert_ne!(rt, SEEDED_RT);
    assert!(w.idp.accepts(&rt));
    w.idp.with(|s| s.refresh_answer_delay = None);
    w.assert_nothing_lost().await;
}

async fn a_sign_out_during_a_refresh_revokes_what_the_refresh_got(db: &TestDb) {
    let w = world(db, "").await;
    slow_idp(&w.idp, Duration::from_millis(1500));
    let lookup = tokio::spawn(w.lookup_on(&w.app).send());
    w.idp.wait_for_refreshes(1).await;
    let r = w
        .app
        .client
        .delete(w.app.url(&format!("/v1/users/{USER}/token")))
        .bearer_auth(&w.secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (status, _) = status_and_error(lookup.await.unwrap().unwrap()).await;
    assert_eq!(status, 404);
    assert!(
        w.entry().await.is_none(),
        "the refresh did not bring it back"
    );
    let revoked = w.idp.with(|s| s.revoked.clone());
    assert_eq!(
        revoked.len(),
        4,
        "the stored tokens at sign-out, then the refreshed ones: {revoked:?}"
    );
    assert_eq!(w.idp.refreshes(), 1);
    assert_eq!(w.idp.with(|s| s.replays), 0);
}

async fn graceful_shutdown_finishes_a_refresh_in_flight(db: &TestDb) {
    let mut w = world(db, "").await;
    slow_idp(&w.idp, Duration::from_millis(1500));
    // The bot gave up, so no request keeps the server up: only the refresh.
    let gave_up = w
        .lookup_on(&w.app)
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(gave_up.is_err());
    w.idp.wait_for_refreshes(1).await;
    let app = std::mem::replace(&mut w.app, spawn_app(&w.cfg).await);
    app.stop().await;
    // Stopped, and the answer the IdP gave is stored.
    let rt = w.stored_rt().await.unwrap();
    assert_ne!(rt, SEEDED_RT);
    assert!(w.idp.accepts(&rt));
    w.idp.with(|s| s.refresh_answer_delay = None);
    w.assert_nothing_lost().await;
}

/// `chatgate serve` as a child process on the same database.
async fn spawn_replica(w: &World) -> ServeChild {
    ServeChild::start(&w.cfg, "warn,chatgate::server=info").await
}

async fn wait_ready(url: &str) {
    let client = common::http_client();
    for _ in 0..200 {
        if let Ok(r) = client.get(format!("{url}/readyz")).send().await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the replica at {url} never became ready");
}

/// A replica killed after the IdP rotated but before it stored the answer:
/// the one window chatgate cannot close alone. Another replica takes over
/// after the lease lapses, the IdP sees the old refresh token again and ends
/// the grant, and chatgate says so — `reauth_required`, never a false 200.
async fn a_replica_killed_after_the_idp_rotated_is_reported_honestly(db: &TestDb) {
    let w = world(db, "").await;
    slow_idp(&w.idp, Duration::from_secs(30));
    let replica = spawn_replica(&w).await;
    let url = replica.url();
    wait_ready(&url).await;
    let client = common::http_client();
    let doomed = client
        .get(format!("{url}/v1/users/{USER}/token"))
        .bearer_auth(&w.secret)
        .send();
    let doomed = tokio::spawn(doomed);
    w.idp.wait_for_refreshes(1).await;
    replica.kill().await;
    assert!(doomed.await.unwrap().is_err());
    w.idp.with(|s| s.refresh_answer_delay = None);
    // refresh_lease = 3s: the survivor takes over within about 5 s.
    let (status, error) = status_and_error(w.lookup().await).await;
    assert_eq!((status, error.as_str()), (401, "reauth_required"));
    let status: Value = w
        .app
        .client
        .get(w.app.url(&format!("/v1/users/{USER}")))
        .bearer_auth(&w.secret)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["signed_in"], false);
    assert_eq!(status["needs_reauth"], true);
    assert_eq!(w.idp.with(|s| s.replays), 1, "the documented window");
}

/// A replica killed while its refresh request had not been processed yet:
/// the survivor takes over after the lease and refreshes; nothing is lost.
async fn a_replica_killed_before_the_idp_answered_is_taken_over(db: &TestDb) {
    let w = world(db, "").await;
    w.idp
        .with(|s| s.refresh_arrival_delay = Some(Duration::from_secs(30)));
    let replica = spawn_replica(&w).await;
    let url = replica.url();
    wait_ready(&url).await;
    let client = common::http_client();
    let doomed = tokio::spawn(
        client
            .get(format!("{url}/v1/users/{USER}/token"))
            .bearer_auth(&w.secret)
            .send(),
    );
    // Wait until the replica holds the lease.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while w.entry().await.unwrap().lease.is_none() {
        assert!(std::time::Instant::now() < deadline, "no lease taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    replica.kill().await;
    assert!(doomed.await.unwrap().is_err());
    w.idp.with(|s| s.refresh_arrival_delay = None);
    let r = w.lookup().await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    assert_eq!(w.idp.refreshes(), 1);
    w.assert_nothing_lost().await;
}

async fn two_hundred_lookups_on_two_replicas_during_a_database_blip(db: &TestDb) {
    let w = world(db, "").await;
    let second = spawn_app(&w.cfg).await;
    slow_idp(&w.idp, Duration::from_millis(500));
    let urls = (0..200)
        .map(|i| {
            let app = if i % 2 == 0 { &w.app } else { &second };
            app.url(&format!("/v1/users/{USER}/token"))
        })
        .collect();
    let lookups = tokio::spawn({
        let secret = w.secret.clone();
        async move { concurrent_lookups(urls, &secret).await }
    });
    w.idp.wait_for_refreshes(1).await;
    let outage = w.outage.begin(Duration::from_secs(2)).await;
    let mut statuses = std::collections::BTreeMap::new();
    for r in lookups.await.unwrap() {
        *statuses.entry(r.status().as_u16()).or_insert(0) += 1;
    }
    eprintln!(
        "200 lookups during a database blip on {:?}: {statuses:?}",
        db.backend
    );
    assert!(
        statuses.keys().all(|s| *s == 200 || *s == 503),
        "only 200 or 503, never a 500: {statuses:?}"
    );
    outage.await.unwrap();
    w.wait_until_rotated_away_from(SEEDED_RT).await;
    assert_eq!(w.idp.refreshes(), 1, "exactly one refresh: {statuses:?}");
    w.idp.with(|s| s.refresh_answer_delay = None);
    let on_second = w.lookup_on(&second).send().await.unwrap();
    assert_eq!(on_second.status(), 200);
    let first: Value = w.lookup().await.json().await.unwrap();
    let second_body: Value = on_second.json().await.unwrap();
    assert_eq!(first["access_token"], second_body["access_token"]);
    w.assert_nothing_lost().await;
    second.stop().await;
}

/// An IdP slower than the lease: the holder's heartbeat keeps the lease, so
/// the other replica waits for the answer instead of refreshing a second time.
async fn an_idp_slower_than_the_lease_is_not_asked_twice(db: &TestDb) {
    let w = world(db, "").await;
    let second = spawn_app(&w.cfg).await;
    // refresh_lease = 3s; the IdP takes 7 s.
    slow_idp(&w.idp, Duration::from_secs(7));
    let first = tokio::spawn(w.lookup_on(&w.app).send());
    w.idp.wait_for_refreshes(1).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let on_second = w.lookup_on(&second).send().await.unwrap();
    assert_eq!(on_second.status(), 200, "{:?}", on_second.text().await);
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    assert_eq!(w.idp.refreshes(), 1);
    w.idp.with(|s| s.refresh_answer_delay = None);
    w.assert_nothing_lost().await;
    second.stop().await;
}

backend_tests!(
    an_idp_slower_than_the_lease_is_not_asked_twice,
    a_bot_that_gives_up_mid_refresh_loses_nothing,
    a_request_timeout_mid_refresh_loses_nothing,
    vault_rekey_during_a_refresh_loses_nothing,
    a_database_outage_while_the_idp_answers_loses_nothing,
    a_refreshed_id_token_that_cannot_be_verified_now_is_kept,
    a_refreshed_id_token_for_someone_else_verified_later_means_reauth,
    a_new_sign_in_during_a_refresh_wins,
    a_sign_in_without_a_refresh_token_keeps_the_rotated_one,
    a_sign_out_during_a_refresh_revokes_what_the_refresh_got,
    graceful_shutdown_finishes_a_refresh_in_flight,
    a_replica_killed_after_the_idp_rotated_is_reported_honestly,
    a_replica_killed_before_the_idp_answered_is_taken_over,
    two_hundred_lookups_on_two_replicas_during_a_database_blip,
);
