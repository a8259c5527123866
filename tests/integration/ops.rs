//! The running server: operations endpoints, key publication, error shapes and
//! limits, on SQLite and PostgreSQL.

use crate::common;

use chatgate::chat_token::{ChatSubject, VerificationKeys};
use chatgate::domain::{AppId, UserId};
use common::{TestConfig, TestDb, spawn_app};
use serde_json::Value;

async fn healthz_and_readyz_answer(db: &TestDb) {
    let app = spawn_app(&TestConfig::new(db)).await;
    let r = app.get("/healthz").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ok");
    let r = app.get("/readyz").await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["database"], "ok");
    app.stop().await;
}

async fn metrics_count_requests_by_route(db: &TestDb) {
    let app = spawn_app(&TestConfig::new(db)).await;
    for _ in 0..3 {
        app.get("/healthz").await;
    }
    app.get("/no/such/thing").await;
    let r = app.get("/metrics").await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = r.text().await.unwrap();
    assert!(
        text.contains(
            r#"chatgate_http_requests_total{method="GET",route="/healthz",status="200"} 3"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"route="unmatched",status="404""#), "{text}");
    assert!(
        text.contains("chatgate_http_request_duration_seconds_bucket"),
        "{text}"
    );
    // raw paths never become labels
    assert!(!text.contains("/no/such/thing"), "{text}");
    app.stop().await;
}

async fn the_jwks_publishes_the_signing_key_and_verifies_minted_tokens(db: &TestDb) {
    let app = spawn_app(&TestConfig::new(db)).await;
    let r = app.get("/.well-known/jwks.json").await;
    assert_eq!(r.status(), 200);
    let jwks: Value = r.json().await.unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let key = &keys[0];
    let kid = app.state.keys.issuer().key().kid().to_string();
    assert_eq!(key["kid"], kid.as_str());
    assert_eq!(key["alg"], "EdDSA");
    assert_eq!(key["use"], "sig");
    assert!(key.get("d").is_none(), "private key published: {key}");

    let meta: Value = app
        .get("/.well-known/openid-configuration")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(meta["issuer"], app.base_url.as_str());
    assert_eq!(meta["jwks_uri"], app.url("/.well-known/jwks.json").as_str());

    // A token minted by the server verifies with nothing but the published JWKS.
    let (token, _) = app
        .state
        .keys
        .issuer()
        .mint(
            &ChatSubject {
                app: &AppId::parse("support").unwrap(),
                audience: "https://bot.contoso.com",
                user: &chatgate::chat_token::ChatUser {
                    user_id: &UserId::parse("entra:alice").unwrap(),
                    via: chatgate::chat_token::Via::Oidc,
                    auth_time: chatgate::time::now(),
                    name: None,
                    email: None,
                    email_verified: false,
                },
                jkt: None,
            },
            chatgate::time::now(),
        )
        .unwrap();
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).unwrap();
    let claims = VerificationKeys::new(set.keys)
        .verify(
            &token,
            &app.base_url,
            &["https://bot.contoso.com"],
            std::time::Duration::from_secs(30),
        )
        .unwrap();
    assert_eq!(claims.sub, "entra:alice");
    app.stop().await;
}

async fn replicas_with_different_keys_publish_each_other(db: &TestDb) {
    // A rolling key change: two replicas on one database, each signing with its
    // own key. Tokens of either must verify against either's JWKS.
    // Replicas share the vault keys (they read one vault), not the signing key.
    let (cfg_a, cfg_b) = (TestConfig::new(db), TestConfig::new(db));
    std::fs::copy(
        cfg_a.path().join("vault.key"),
        cfg_b.path().join("vault.key"),
    )
    .unwrap();
    let a = spawn_app(&cfg_a).await;
    let b = spawn_app(&cfg_b).await;
    let kid_a = a.state.keys.issuer().key().kid().to_string();
    let kid_b = b.state.keys.issuer().key().kid().to_string();
    assert_ne!(kid_a, kid_b);
    // a's directory was loaded before b existed; the heartbeat refreshes it.
    a.state
        .keys
        .refresh(&a.state.store, chatgate::time::now())
        .await
        .unwrap();
    for app in [&a, &b] {
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
        assert!(
            kids.contains(&kid_a.as_str()) && kids.contains(&kid_b.as_str()),
            "{kids:?}"
        );
        // the replica's own key comes first
        assert_eq!(kids[0], app.state.keys.issuer().key().kid());
    }
    a.stop().await;
    b.stop().await;
}

async fn a_retired_key_leaves_the_jwks_once_its_tokens_expired(db: &TestDb) {
    let app = spawn_app(&TestConfig::new(db)).await;
    let now = chatgate::time::now();
    let old = chatgate::chat_token::SigningKey::from_pem(
        &chatgate::chat_token::SigningKey::generate_pem(chatgate::chat_token::SigningAlg::Es256),
    )
    .unwrap();
    // Last used 10 minutes ago: tokens (15 min TTL) it signed are still valid.
    app.state
        .keys
        .record_key(&app.state.store, &old, now - 600)
        .await
        .unwrap();
    app.state.keys.refresh(&app.state.store, now).await.unwrap();
    assert!(app.state.keys.keys().contains(old.kid()));
    // Last used 20 minutes ago: every token it signed has expired.
    let older = chatgate::chat_token::SigningKey::from_pem(
        &chatgate::chat_token::SigningKey::generate_pem(chatgate::chat_token::SigningAlg::EdDsa),
    )
    .unwrap();
    app.state
        .keys
        .record_key(&app.state.store, &older, now - 20 * 60)
        .await
        .unwrap();
    app.state.keys.refresh(&app.state.store, now).await.unwrap();
    assert!(!app.state.keys.keys().contains(older.kid()));
    let jwks: Value = app
        .get("/.well-known/jwks.json")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    app.stop().await;
}

async fn errors_are_json_and_bodies_are_limited(db: &TestDb) {
    let app = spawn_app(&TestConfig::new(db)).await;
    let r = app.get("/v1/nothing-here").await;
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "not_found");
    assert!(body["error_description"].is_string());
    // A body over the limit is refused from its Content-Length, before it is
    // read. (On a socket of its own that sends the headers only: a client
    // still writing the body when the server answers and closes may see a
    // broken pipe instead of the answer.)
    let status_line = {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
            .await
            .unwrap();
        let head = format!(
            "POST /v1/nothing-here HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            app.port,
            1024 * 1024
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0; 1024];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), socket.read(&mut answer))
            .await
            .expect("an answer before the body")
            .unwrap();
        String::from_utf8_lossy(&answer[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(status_line, "HTTP/1.1 413 Payload Too Large");
    let r = app.get("/healthz").await;
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    app.stop().await;
}

backend_tests!(
    healthz_and_readyz_answer,
    metrics_count_requests_by_route,
    the_jwks_publishes_the_signing_key_and_verifies_minted_tokens,
    replicas_with_different_keys_publish_each_other,
    a_retired_key_leaves_the_jwks_once_its_tokens_expired,
    errors_are_json_and_bodies_are_limited,
);

#[tokio::test]
async fn readyz_fails_when_the_database_goes_away() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let app = spawn_app(&TestConfig::new(&db)).await;
    assert_eq!(app.get("/readyz").await.status(), 200);
    db.cleanup().await; // drops the database under the running server
    let r = app.get("/readyz").await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["checks"]["database"], "unreachable");
    assert_eq!(app.get("/healthz").await.status(), 200);
}

/// SIGTERM / Ctrl-C: new connections are refused, but a request already in
/// flight (here: its body still arriving) is finished and answered.
#[tokio::test]
async fn shutdown_finishes_requests_in_flight() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let db = TestDb::sqlite();
    let mut app = spawn_app(&TestConfig::new(&db)).await;
    let body = br#"{"app": "support", "token": "not-a-jwt"}"#;
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/host-session HTTP/1.1\r\nhost: 127.0.0.1\r\norigin: https://www.contoso.com\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body[..10]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    app.begin_shutdown();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // A new connection is no longer served...
    let refused = common::http_client().get(app.url("/healthz")).send().await;
    assert!(refused.is_err(), "the server still accepts new requests");
    // ...but the request in flight completes.
    conn.write_all(&body[10..]).await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("invalid_token"), "{answer}");
    app.stop().await;
}

/// A request that takes longer than `request_timeout` is answered 503.
#[tokio::test]
async fn slow_requests_time_out() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let db = TestDb::sqlite();
    let app = spawn_app(&TestConfig::new(&db).with_top("request_timeout = \"1s\"")).await;
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap();
    conn.write_all(
        b"POST /v1/host-session HTTP/1.1\r\nhost: x\r\norigin: https://www.contoso.com\r\n\
          content-type: application/json\r\ncontent-length: 100\r\nconnection: close\r\n\r\n{\"app\"",
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    app.stop().await;
}
