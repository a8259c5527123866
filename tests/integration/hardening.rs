//! What an anonymous client, a replayed token or someone with write access to
//! the database (but no vault key) can do — and that it no longer works.

use chatgate::secret::ExposeSecret as _;
use std::time::Duration;

use chatgate::domain::AppId;
use chatgate::store::Store;
use serde_json::{Value, json};

use crate::common::{self, Backend, TestConfig, TestDb, spawn_app};

const USER: &str = "idp:user-123";

/// Runs one statement with binds on either backend.
macro_rules! exec {
    ($store:expr, $sql:expr $(, $bind:expr)*) => {
        match $store {
            Store::Sqlite(p) => { sqlx::query($sql)$(.bind($bind))*.execute(p).await.unwrap(); }
            Store::Postgres(p) => { sqlx::query($sql)$(.bind($bind))*.execute(p).await.unwrap(); }
        }
    };
}

async fn lookup(app: &common::TestApp, secret: &str) -> reqwest::Response {
    app.client
        .get(app.url(&format!("/v1/users/{USER}/token")))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap()
}

fn sha256(secret: &str) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(secret.as_bytes()).to_vec()
}

async fn a_bot_written_into_the_database_without_the_vault_key_is_refused(db: &TestDb) {
    let app = spawn_app(&TestConfig::new(db)).await;
    let store = &app.state.store;
    let secret = "cgb_attacker-chose-this-secret-000000000000000";
    // A row as chatgate stored them before keyed hashes: a plain SHA-256.
    exec!(
        store,
        "INSERT INTO bots (id, app, name, secret_hash, created_at) VALUES ('bot_evil', 'support', 'x', $1, 1)",
        sha256(secret)
    );
    assert_eq!(lookup(&app, secret).await.status(), 401);
    // A keyed-looking row, keyed with a key the attacker made up.
    let forged = {
        use hmac::Mac as _;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"guess").unwrap();
        mac.update(secret.as_bytes());
        mac.finalize().into_bytes().to_vec()
    };
    exec!(
        store,
        "INSERT INTO bots (id, app, name, secret_hash, created_at, hash_format, key_id, mac) \
         VALUES ('bot_evil2', 'support', 'x', $1, 1, 'hmac', 'k1', $2)",
        forged,
        vec![0u8; 32]
    );
    assert_eq!(lookup(&app, secret).await.status(), 401);
    // A genuine bot moved to another app stops working.
    let bot = app
        .state
        .bots
        .create(&AppId::parse("support").unwrap(), "genuine", 1)
        .await
        .unwrap();
    assert_eq!(lookup(&app, bot.secret.expose_secret()).await.status(), 404);
    exec!(
        store,
        "UPDATE bots SET app = 'sales' WHERE id = $1",
        bot.id.clone()
    );
    assert_eq!(lookup(&app, bot.secret.expose_secret()).await.status(), 401);
    app.stop().await;
}

/// `migrations/<backend>` up to and including `last`, in a directory of its own.
fn migrations_up_to(backend: Backend, last: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(match backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        });
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let version: u32 = name[..4].parse().unwrap();
        if version <= last {
            std::fs::copy(&path, dir.path().join(name)).unwrap();
        }
    }
    dir
}

async fn bots_from_before_keyed_hashes_keep_working_and_are_rehashed(db: &TestDb) {
    // A database as the previous version left it, with a bot in it.
    let store = {
        let config =
            chatgate::store::DatabaseOptions::parse(&db.url, std::path::Path::new("/"), 2).unwrap();
        Store::connect(&config).await.unwrap()
    };
    let old = migrations_up_to(db.backend, 3);
    let migrator = sqlx::migrate::Migrator::new(old.path()).await.unwrap();
    match &store {
        Store::Sqlite(p) => migrator.run(p).await.unwrap(),
        Store::Postgres(p) => migrator.run(p).await.unwrap(),
    }
    let secret = "cgb_from-before-keyed-hashes-000000000000000000";
    exec!(
        &store,
        "INSERT INTO bots (id, app, name, secret_hash, created_at) VALUES ('bot_old', 'support', 'old', $1, 1)",
        sha256(secret)
    );
    store.close().await;
    // This version starts: migration 4 runs, and the bot is adopted.
    let cfg = TestConfig::new(db);
    let app = spawn_app(&cfg).await;
    assert_eq!(lookup(&app, secret).await.status(), 404, "authenticated");
    let row = app
        .state
        .store
        .list_bots()
        .await
        .unwrap()
        .into_iter()
        .find(|b| b.id == "bot_old")
        .unwrap();
    assert_eq!(row.hash_format, "hmac", "re-hashed on its first use");
    assert_ne!(row.secret_hash, sha256(secret));
    assert_eq!(lookup(&app, secret).await.status(), 404, "and still works");
    // A plain row written after the migration is not adopted.
    let late = "cgb_written-after-the-migration-0000000000000000";
    exec!(
        &app.state.store,
        "INSERT INTO bots (id, app, name, secret_hash, created_at) VALUES ('bot_late', 'support', 'late', $1, 1)",
        sha256(late)
    );
    let again = spawn_app(&cfg).await; // a restart: no second adoption
    assert_eq!(lookup(&again, late).await.status(), 401);
    again.stop().await;
    app.stop().await;
}

async fn a_signing_key_written_into_the_database_is_not_trusted(db: &TestDb) {
    let app = spawn_app(&TestConfig::new(db)).await;
    let rogue = chatgate::chat_token::SigningKey::from_pem(
        &chatgate::chat_token::SigningKey::generate_pem(chatgate::chat_token::SigningAlg::EdDsa),
    )
    .unwrap();
    let jwk = serde_json::to_string(rogue.public_jwk()).unwrap();
    let now = chatgate::time::now();
    app.state
        .store
        .touch_signing_key(rogue.kid(), "EdDSA", &jwk, "k1", &[7; 32], now)
        .await
        .unwrap();
    app.state.keys.refresh(&app.state.store, now).await.unwrap();
    let jwks: Value = app
        .get("/.well-known/jwks.json")
        .await
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(!kids.contains(&rogue.kid()), "{kids:?}");
    // A chat token the attacker signs does not verify at chatgate.
    let issuer = chatgate::chat_token::ChatTokenIssuer::new(
        app.base_url.clone(),
        std::sync::Arc::new(rogue),
        Duration::from_secs(600),
    );
    let app_id = AppId::parse("support").unwrap();
    let user = chatgate::domain::UserId::parse(USER).unwrap();
    let (forged, _) = issuer
        .mint(
            &chatgate::chat_token::ChatSubject {
                app: &app_id,
                audience: "https://bot.contoso.com",
                user: &chatgate::chat_token::ChatUser {
                    user_id: &user,
                    via: chatgate::chat_token::Via::Oidc,
                    auth_time: now,
                    name: None,
                    email: None,
                    email_verified: false,
                },
                jkt: None,
            },
            now,
        )
        .unwrap();
    let bot = app.state.bots.create(&app_id, "b", 1).await.unwrap();
    let r = app
        .client
        .post(app.url("/v1/chat-tokens/verify"))
        .bearer_auth(bot.secret.expose_secret())
        .json(&json!({ "token": forged }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    app.stop().await;
}

/// Whether the server has closed `conn` (EOF or reset) within `within`.
async fn closed_within(conn: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return false, // still open
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // a response; keep reading
        }
    }
}

async fn connect(app: &common::TestApp) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap()
}

async fn slow_and_idle_clients_are_cut_off_and_connections_capped(db: &TestDb) {
    use tokio::io::AsyncWriteExt as _;
    let cfg = TestConfig::new(db)
        .with_top("header_read_timeout = \"1s\"\nidle_timeout = \"2s\"\nmax_connections = 3");
    let app = spawn_app(&cfg).await;
    // Half-sent headers: closed after header_read_timeout, long before
    // request_timeout (30 s).
    let mut slow = connect(&app).await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(closed_within(&mut slow, Duration::from_millis(2500)).await);
    // A connection that sends nothing at all: the same, not idle_timeout.
    let mut silent = connect(&app).await;
    assert!(closed_within(&mut silent, Duration::from_millis(1800)).await);
    // A kept-alive connection doing nothing: closed after idle_timeout...
    let mut idle = connect(&app).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(
        !closed_within(&mut idle, Duration::from_millis(1200)).await,
        "not before idle_timeout (and header_read_timeout does not apply once idle)"
    );
    assert!(closed_within(&mut idle, Duration::from_millis(2000)).await);
    // At most 3 connections: a fourth is closed at once.
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(connect(&app).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fourth = connect(&app).await;
    assert!(closed_within(&mut fourth, Duration::from_millis(500)).await);
    drop(open);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.get("/healthz").await.status(), 200, "room again");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    for line in [
        r#"chatgate_connections_timed_out_total{reason="header_read"} 2"#,
        r#"chatgate_connections_timed_out_total{reason="idle"} 1"#,
        "chatgate_connections_refused_total 1",
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
    app.stop().await;
}

/// One address holding a thousand idle sockets takes only its share of the
/// server's connections: another address is still served.
async fn one_address_cannot_take_every_connection(db: &TestDb) {
    let cfg =
        TestConfig::new(db).with_top("max_connections = 100\nmax_connections_per_address = 20");
    let app = spawn_app(&cfg).await;
    let mut hoarded = Vec::new();
    for _ in 0..1000 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        if let Ok(stream) = socket.connect(([127, 0, 0, 1], app.port).into()).await {
            hoarded.push(stream);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Another address is served, although 127.0.0.2 tried for 1000.
    for _ in 0..5 {
        assert_eq!(app.get("/healthz").await.status(), 200);
    }
    let mut still_open = 0;
    for conn in &mut hoarded {
        if !closed_within(conn, Duration::from_millis(5)).await {
            still_open += 1;
        }
    }
    assert_eq!(still_open, 20, "max_connections_per_address of 127.0.0.2");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("chatgate_connections_refused_total 980"),
        "{metrics}"
    );
    drop(hoarded);
    app.stop().await;
}

/// A request that takes longer than idle_timeout (a refresh at a slow IdP) is
/// not cut: the idle clock runs only while nothing is in flight.
async fn a_slow_request_is_not_cut_by_the_idle_timeout(db: &TestDb) {
    let idp = common::fake_idp::FakeIdp::start().await;
    let cfg = TestConfig::new(db)
        .with_provider(&idp, "")
        .with_top("idle_timeout = \"1s\"\nheader_read_timeout = \"1s\"");
    let app = spawn_app(&cfg).await;
    let bot = app
        .state
        .bots
        .create(&AppId::parse("support").unwrap(), "b", 1)
        .await
        .unwrap();
    idp.with(|st| {
        st.refresh_tokens.insert("rt-1".into(), true);
        st.refresh_answer_delay = Some(Duration::from_millis(2500));
    });
    let now = chatgate::time::now();
    app.state
        .vault
        .save(
            &AppId::parse("support").unwrap(),
            &chatgate::domain::UserId::parse(USER).unwrap(),
            &chatgate::domain::ProviderId::parse("idp").unwrap(),
            &chatgate::vault::TokenSet {
                access_token: chatgate::secret::SecretString::from("at-old"),
                refresh_token: Some(chatgate::secret::SecretString::from("rt-1")),
                token_type: "Bearer".into(),
                scope: "openid".into(),
                expires_at: Some(now - 5),
            },
            now,
        )
        .await
        .unwrap();
    let r = lookup(&app, bot.secret.expose_secret()).await;
    assert_eq!(r.status(), 200);
    app.stop().await;
}

async fn anonymous_endpoints_are_rate_limited_per_client_address(db: &TestDb) {
    let mut cfg = TestConfig::new(db);
    cfg.toml
        .push_str("\n[rate_limit]\nper_second = 1\nburst = 5\n");
    let app = spawn_app(&cfg).await;
    let host = |forwarded: Option<&str>| {
        let mut req = app
            .client
            .post(app.url("/v1/host-session"))
            .header("origin", "https://www.contoso.com")
            .json(&json!({"app": "support", "token": "x"}));
        if let Some(f) = forwarded {
            req = req.header("x-forwarded-for", f);
        }
        req.send()
    };
    for _ in 0..5 {
        assert_eq!(host(None).await.unwrap().status(), 401, "within the burst");
    }
    let limited = host(None).await.unwrap();
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["retry-after"], "1");
    assert_eq!(
        limited.headers()["access-control-allow-origin"],
        "https://www.contoso.com",
        "the widget can read it"
    );
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    // A forwarding header from an untrusted peer changes nothing.
    assert_eq!(host(Some("198.51.100.7")).await.unwrap().status(), 429);
    // Preflights are free; other endpoints and the bot API's successes too.
    let preflight = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/v1/host-session"))
        .header("origin", "https://www.contoso.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(app.get("/healthz").await.status(), 200);
    // After the refill, requests pass again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(host(None).await.unwrap().status(), 401);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"chatgate_rate_limited_total{reason="request"} 2"#),
        "{metrics}"
    );
    app.stop().await;
}

async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget(db: &TestDb) {
    let mut cfg = TestConfig::new(db).with_top("trusted_proxies = [\"127.0.0.1/32\"]");
    cfg.toml
        .push_str("\n[rate_limit]\nper_second = 1\nburst = 2\n");
    let app = spawn_app(&cfg).await;
    let from = |client: &'static str| {
        app.client
            .get(app.url("/v1/authorize?app=nope"))
            .header("x-forwarded-for", format!("{client}, 127.0.0.1"))
            .send()
    };
    for _ in 0..2 {
        assert_eq!(from("203.0.113.1").await.unwrap().status(), 400);
    }
    assert_eq!(from("203.0.113.1").await.unwrap().status(), 429);
    assert_eq!(
        from("203.0.113.2").await.unwrap().status(),
        400,
        "another client behind the same proxy"
    );
    app.stop().await;
}

async fn failed_bot_authentications_are_rate_limited(db: &TestDb) {
    let mut cfg = TestConfig::new(db);
    cfg.toml
        .push_str("\n[rate_limit]\nper_second = 1\nburst = 3\n");
    let app = spawn_app(&cfg).await;
    let bot = app
        .state
        .bots
        .create(&AppId::parse("support").unwrap(), "b", 1)
        .await
        .unwrap();
    // Successes cost nothing.
    for _ in 0..10 {
        assert_eq!(lookup(&app, bot.secret.expose_secret()).await.status(), 404);
    }
    for _ in 0..3 {
        assert_eq!(lookup(&app, "cgb_wrong").await.status(), 401);
    }
    let r = lookup(&app, "cgb_wrong").await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    // While blocked, nothing is looked up — not even a valid secret.
    assert_eq!(lookup(&app, bot.secret.expose_secret()).await.status(), 429);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(lookup(&app, bot.secret.expose_secret()).await.status(), 404);
    app.stop().await;
}

/// Made-up HTTP methods and made-up IdP error codes in callbacks do not grow
/// `/metrics` (every label value comes from a fixed set).
async fn made_up_methods_and_error_codes_do_not_grow_the_metrics(db: &TestDb) {
    let idp = common::fake_idp::FakeIdp::start().await;
    let mut cfg = TestConfig::new(db).with_provider(&idp, "");
    cfg.toml
        .push_str("\n[rate_limit]\nper_second = 1000\nburst = 1000\n");
    let app = spawn_app(&cfg).await;
    let before = app.get("/metrics").await.text().await.unwrap().len();
    for i in 0..300 {
        let method = reqwest::Method::from_bytes(format!("BREW{i}").as_bytes()).unwrap();
        let _ = app
            .client
            .request(method, app.url("/healthz"))
            .send()
            .await
            .unwrap();
    }
    let origin: String = url::form_urlencoded::byte_serialize(b"https://www.contoso.com").collect();
    for i in 0..60 {
        let mut browser = common::browser::Browser::new();
        let r = browser
            .get(&app.url(&format!(
                "/v1/authorize?app=support&origin={origin}&mode=silent"
            )))
            .await;
        let to_idp = common::browser::location(&r);
        let state = url::Url::parse(&to_idp)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "state")
            .unwrap()
            .1
            .into_owned();
        let r = browser
            .get(&app.url(&format!(
                "/v1/callback?state={state}&iss={}&error=made_up_{i}",
                url::form_urlencoded::byte_serialize(idp.issuer.as_bytes()).collect::<String>()
            )))
            .await;
        assert_eq!(r.status(), 200);
    }
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(
        text.len() < before + 8 * 1024,
        "/metrics grew from {before} to {} bytes",
        text.len()
    );
    assert!(text.contains(r#"method="other""#), "{text}");
    assert!(
        text.contains(r#"chatgate_flows_total{event="failed",reason="other"} 60"#),
        "{text}"
    );
    app.stop().await;
}

backend_tests!(
    anonymous_endpoints_are_rate_limited_per_client_address,
    behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget,
    failed_bot_authentications_are_rate_limited,
    made_up_methods_and_error_codes_do_not_grow_the_metrics,
    slow_and_idle_clients_are_cut_off_and_connections_capped,
    a_slow_request_is_not_cut_by_the_idle_timeout,
    one_address_cannot_take_every_connection,
    a_bot_written_into_the_database_without_the_vault_key_is_refused,
    bots_from_before_keyed_hashes_keep_working_and_are_rehashed,
    a_signing_key_written_into_the_database_is_not_trusted,
);
