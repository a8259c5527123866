//! `POST /v1/host-session` and `POST /v1/token-exchange`: one test per row of
//! the attack table of the issue and per validation rule, the happy path of
//! every algorithm, key rotation, and concurrent replays, on SQLite and
//! PostgreSQL.

use crate::common;

use std::process::Command;

use base64::Engine as _;
use chatgate::store::Store;
use common::fake_idp::{FakeIdp, TokenBehavior};
use common::{TestApp, TestConfig, TestDb, spawn_app};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const ORIGIN: &str = "https://www.contoso.com";
const HS_SECRET_1: &str = "test-host-secret-with-32-bytes-or-more";
const HS_SECRET_2: &str = "second-host-secret-with-32-bytes-or-more";

/// The host's signing keys, public halves configured in chatgate.
struct HostKeys {
    rsa: EncodingKey,
    rsa_public_pem: Vec<u8>,
    ec: EncodingKey,
    ed: EncodingKey,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn host_keys(dir: &std::path::Path) -> HostKeys {
    use ed25519_dalek::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
    // RSA: ring/RustCrypto key generation is slow in debug builds; openssl is quick.
    let rsa_pem = openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
    ]);
    let rsa_key = dir.join("rsa.pem");
    std::fs::write(&rsa_key, &rsa_pem).unwrap();
    let rsa_public_pem = openssl(&["pkey", "-in", rsa_key.to_str().unwrap(), "-pubout"]);
    std::fs::write(dir.join("host-rsa.pub.pem"), &rsa_public_pem).unwrap();
    std::fs::remove_file(rsa_key).unwrap();

    let ec = loop {
        if let Ok(k) = p256::SecretKey::from_slice(&chatgate::secret::random_bytes::<32>()) {
            break k;
        }
    };
    let ec_der = p256::pkcs8::EncodePrivateKey::to_pkcs8_der(&ec).unwrap();
    let ec_encoding = EncodingKey::from_ec_der(ec_der.as_bytes());
    // The ES256 key is configured as a JWK, the others as PEM.
    let mut jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&ec_encoding, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("ec-1".into());
    std::fs::write(dir.join("host-ec.jwk"), serde_json::to_vec(&jwk).unwrap()).unwrap();

    let ed = ed25519_dalek::SigningKey::from_bytes(&chatgate::secret::random_bytes::<32>());
    let ed_der = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: ed.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_der()
    .unwrap();
    let ed_pub = ed
        .verifying_key()
        .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .unwrap();
    std::fs::write(dir.join("host-ed.pub.pem"), ed_pub).unwrap();

    HostKeys {
        rsa: EncodingKey::from_rsa_pem(&rsa_pem).unwrap(),
        rsa_public_pem,
        ec: ec_encoding,
        ed: EncodingKey::from_ed_der(ed_der.as_bytes()),
    }
}

struct Setup {
    app: TestApp,
    keys: HostKeys,
    idp: FakeIdp,
    _cfg: TestConfig,
}

async fn setup(db: &TestDb) -> Setup {
    let idp = FakeIdp::start().await;
    let mut cfg = TestConfig::new(db).with_provider(
        &idp,
        "accepted_audiences = [\"spa-client\", \"chatgate-test\"]",
    );
    let keys = host_keys(&cfg.path());
    cfg.toml = cfg.toml.replace(
        "provider = \"idp\"\n",
        "provider = \"idp\"\ntoken_exchange = true\n",
    );
    cfg.env
        .insert("TEST_HOST_SECRET_2".into(), HS_SECRET_2.into());
    cfg.toml = cfg.toml.replace(
        r#"host_keys = [{ kid = "h1", alg = "HS256", secret_env = "TEST_HOST_SECRET" }]"#,
        r#"host_keys = [
  { kid = "h1", alg = "HS256", secret_env = "TEST_HOST_SECRET" },
  { kid = "h2", alg = "HS256", secret_env = "TEST_HOST_SECRET_2" },
  { kid = "rsa-1", alg = "RS256", public_key_file = "host-rsa.pub.pem", issuer = "https://www.contoso.com" },
  { kid = "ec-1", alg = "ES256", public_key_file = "host-ec.jwk" },
  { kid = "ed-1", alg = "EdDSA", public_key_file = "host-ed.pub.pem" },
]"#,
    );
    cfg.toml.push_str(
        r#"
[[apps]]
id = "sales"
origins = ["https://sales.example.com"]
chat_audience = "https://bot.sales.example.com"
host_keys = [{ kid = "s1", alg = "HS256", secret_env = "TEST_HOST_SECRET_2" }]
"#,
    );
    let app = spawn_app(&cfg).await;
    Setup {
        app,
        keys,
        idp,
        _cfg: cfg,
    }
}

fn claims(sub: &str) -> Value {
    let now = chatgate::time::now();
    json!({
        "sub": sub,
        "aud": "support",
        "iat": now,
        "exp": now + 120,
        "jti": chatgate::secret::random_token::<12>(),
        "name": "Harriet Host",
        "email": "harriet@contoso.com",
    })
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn hs(kid: &str, claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        kid,
        &EncodingKey::from_secret(HS_SECRET_1.as_bytes()),
        claims,
    )
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// A token with a hand-made header, HMAC-SHA256-signed with `secret`.
fn with_header(header: &Value, claims: &Value, secret: &[u8]) -> String {
    use hmac::Mac as _;
    let input = format!("{}.{}", b64(header), b64(claims));
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    let sig = mac.finalize().into_bytes();
    format!(
        "{input}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig)
    )
}

impl Setup {
    async fn post(&self, path: &str, origin: &str, body: Value) -> reqwest::Response {
        self.app
            .client
            .post(self.app.url(path))
            .header("origin", origin)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn host(&self, token: &str) -> reqwest::Response {
        self.post(
            "/v1/host-session",
            ORIGIN,
            json!({"app": "support", "token": token}),
        )
        .await
    }

    async fn jti_rows(&self) -> i64 {
        const SQL: &str = "SELECT COUNT(*) FROM host_token_jtis";
        match &self.app.state.store {
            Store::Sqlite(p) => sqlx::query_scalar(SQL).fetch_one(p).await.unwrap(),
            Store::Postgres(p) => sqlx::query_scalar(SQL).fetch_one(p).await.unwrap(),
        }
    }
}

/// The claims of a chat token, decoded without verifying (the tests that
/// verify do so elsewhere).
fn chat_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

async fn error_of(r: reqwest::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    (
        status,
        body["error"].as_str().unwrap().to_string(),
        body["error_description"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// Asserts a refusal with `code` that consumed no jti.
async fn refused(s: &Setup, r: reqwest::Response, code: &str) -> String {
    let before = s.jti_rows().await;
    let (status, error, description) = error_of(r).await;
    assert_eq!(error, code, "{description}");
    assert!(status == 401 || status == 403 || status == 400, "{status}");
    assert_eq!(s.jti_rows().await, before);
    description
}

async fn every_algorithm_signs_in_and_the_chat_token_verifies(db: &TestDb) {
    let s = setup(db).await;
    let mut rsa_claims = claims("u-rsa");
    rsa_claims["iss"] = json!("https://www.contoso.com");
    let tokens = [
        hs("h1", &claims("u-hs")),
        sign(Algorithm::RS256, "rsa-1", &s.keys.rsa, &rsa_claims),
        sign(Algorithm::ES256, "ec-1", &s.keys.ec, &claims("u-ec")),
        sign(Algorithm::EdDSA, "ed-1", &s.keys.ed, &claims("u-ed")),
    ];
    let jwks: jsonwebtoken::jwk::JwkSet = s
        .app
        .get("/.well-known/jwks.json")
        .await
        .json()
        .await
        .unwrap();
    let keys = chatgate::chat_token::VerificationKeys::new(jwks.keys);
    for (token, sub) in tokens.iter().zip(["u-hs", "u-rsa", "u-ec", "u-ed"]) {
        let r = s.host(token).await;
        assert_eq!(r.status(), 200, "{sub}: {}", r.text().await.unwrap());
        assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["user"]["id"], format!("host:support:{sub}"));
        assert_eq!(body["user"]["name"], "Harriet Host");
        let claims = keys
            .verify(
                body["chat_token"].as_str().unwrap(),
                &s.app.base_url,
                &["https://bot.contoso.com"],
                std::time::Duration::from_secs(30),
            )
            .unwrap();
        assert_eq!(claims.sub, format!("host:support:{sub}"));
        assert_eq!(claims.email.as_deref(), Some("harriet@contoso.com"));
        assert_eq!(claims.via, chatgate::chat_token::Via::Host);
        assert_eq!(claims.email_verified, Some(false), "not stated: false");
    }
    // A host that states email_verified has it carried exactly.
    let mut verified = claims("u-verified");
    verified["email_verified"] = json!(true);
    let body: Value = s.host(&hs("h1", &verified)).await.json().await.unwrap();
    assert_eq!(body["user"]["email_verified"], true);
    assert_eq!(
        chat_claims(body["chat_token"].as_str().unwrap())["email_verified"],
        true
    );
    // No IdP tokens exist for host users.
    assert!(
        s.app
            .state
            .store
            .get_vault_entry("support", "host:support:u-hs")
            .await
            .unwrap()
            .is_none()
    );
}

async fn two_kids_live_at_once_let_hosts_rotate(db: &TestDb) {
    let s = setup(db).await;
    let old = hs("h1", &claims("alice"));
    let new = sign(
        Algorithm::HS256,
        "h2",
        &EncodingKey::from_secret(HS_SECRET_2.as_bytes()),
        &claims("alice"),
    );
    assert_eq!(s.host(&old).await.status(), 200);
    assert_eq!(s.host(&new).await.status(), 200);
}

// Row: a malicious system generates a fake token.
async fn a_token_without_the_apps_key_is_refused(db: &TestDb) {
    let s = setup(db).await;
    let forged = sign(
        Algorithm::HS256,
        "h1",
        &EncodingKey::from_secret(b"guessed-secret-guessed-secret-guessed"),
        &claims("alice"),
    );
    refused(&s, s.host(&forged).await, "invalid_token").await;
    // tampering with a genuine token's payload breaks it too
    let genuine = hs("h1", &claims("alice"));
    let mut parts: Vec<String> = genuine.split('.').map(str::to_string).collect();
    parts[1] = b64(&claims("admin"));
    refused(&s, s.host(&parts.join(".")).await, "invalid_token").await;
}

// Row: a stolen token is replayed.
async fn a_replayed_token_is_refused(db: &TestDb) {
    let s = setup(db).await;
    let token = hs("h1", &claims("alice"));
    assert_eq!(s.host(&token).await.status(), 200);
    let (status, error, _) = error_of(s.host(&token).await).await;
    assert_eq!((status, error.as_str()), (401, "token_replayed"));
    let metrics = s.app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"chatgate_host_tokens_total{op="verify",outcome="token_replayed"} 1"#),
        "{metrics}"
    );
    // Failed attempts go through the batched audit writer.
    s.app.state.audit.flush().await;
    let audit = s
        .app
        .state
        .store
        .list_audit(&chatgate::store::AuditFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.action == "host_session" && a.detail.as_deref() == Some("token_replayed"))
    );
}

async fn concurrent_submissions_of_one_token_succeed_once(db: &TestDb) {
    let s = setup(db).await;
    let token = hs("h1", &claims("alice"));
    let url = s.app.url("/v1/host-session");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (url, token) = (url.clone(), token.clone());
            tokio::spawn(async move {
                common::http_client()
                    .post(url)
                    .header("origin", ORIGIN)
                    .json(&json!({"app": "support", "token": token}))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 1);
}

// Row: used after it expired, or issued to last for days.
async fn expiry_and_lifetime_rules(db: &TestDb) {
    let s = setup(db).await;
    let now = chatgate::time::now();
    let mut c = claims("alice");
    c["iat"] = json!(now - 200);
    c["exp"] = json!(now - 60);
    refused(&s, s.host(&hs("h1", &c)).await, "token_expired").await;
    // within the 30 s clock-skew allowance it is still fine
    let mut c = claims("alice");
    c["iat"] = json!(now - 100);
    c["exp"] = json!(now - 10);
    assert_eq!(s.host(&hs("h1", &c)).await.status(), 200);
    let mut c = claims("alice");
    c["exp"] = json!(now + 3 * 86400);
    let why = refused(&s, s.host(&hs("h1", &c)).await, "invalid_token").await;
    assert!(why.contains("max_host_token_ttl"), "{why}");
    let mut c = claims("alice");
    c.as_object_mut().unwrap().remove("exp");
    refused(&s, s.host(&hs("h1", &c)).await, "invalid_token").await;
    let mut c = claims("alice");
    c.as_object_mut().unwrap().remove("iat");
    refused(&s, s.host(&hs("h1", &c)).await, "invalid_token").await;
    let mut c = claims("alice");
    c["iat"] = json!(now + 600);
    c["exp"] = json!(now + 700);
    refused(&s, s.host(&hs("h1", &c)).await, "invalid_token").await;
    let mut c = claims("alice");
    c["nbf"] = json!(now + 600);
    refused(&s, s.host(&hs("h1", &c)).await, "invalid_token").await;
}

// Row: another site embeds the widget and forwards a token.
async fn the_origin_and_audience_must_be_the_apps(db: &TestDb) {
    let s = setup(db).await;
    let token = hs("h1", &claims("alice"));
    let r = s
        .post(
            "/v1/host-session",
            "https://evil.example.com",
            json!({"app": "support", "token": token}),
        )
        .await;
    assert_eq!(r.status(), 403);
    // The widget on that site can read why.
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://evil.example.com"
    );
    refused(&s, r, "origin_not_allowed").await;
    let r = common::http_client()
        .post(s.app.url("/v1/host-session"))
        .json(&json!({"app": "support", "token": token}))
        .send()
        .await
        .unwrap();
    refused(&s, r, "origin_not_allowed").await;
    let mut c = claims("alice");
    c["aud"] = json!("some-other-app");
    refused(&s, s.host(&hs("h1", &c)).await, "invalid_token").await;
    let mut c = claims("alice");
    c.as_object_mut().unwrap().remove("aud");
    refused(&s, s.host(&hs("h1", &c)).await, "invalid_token").await;
    // The untouched token still works from the right origin: nothing was consumed.
    assert_eq!(s.host(&token).await.status(), 200);
}

// Row: alg none, HMAC "signed" with a public key, another algorithm than the kid's.
async fn each_key_is_bound_to_its_algorithm(db: &TestDb) {
    let s = setup(db).await;
    let c = claims("alice");
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": "h1", "typ": "JWT"})),
        b64(&c)
    );
    refused(&s, s.host(&none).await, "invalid_token").await;
    // The RSA public key is public: an attacker HMACs with it under the RSA kid.
    let confused = with_header(
        &json!({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}),
        &c,
        &s.keys.rsa_public_pem,
    );
    refused(&s, s.host(&confused).await, "invalid_token").await;
    // The refusal does not tell which algorithm the kid is for.
    let (_, _, why) = error_of(s.host(&confused).await).await;
    for alg in ["RS256", "RSA", "rsa"] {
        assert!(!why.contains(alg), "{why}");
    }
    // ES256 token under the EdDSA kid; RS256 under an HS256 kid.
    refused(
        &s,
        s.host(&sign(Algorithm::ES256, "ed-1", &s.keys.ec, &c))
            .await,
        "invalid_token",
    )
    .await;
    refused(
        &s,
        s.host(&sign(Algorithm::RS256, "h1", &s.keys.rsa, &c)).await,
        "invalid_token",
    )
    .await;
    // A key's issuer, when configured, must match.
    let mut wrong_iss = claims("alice");
    wrong_iss["iss"] = json!("https://evil.example.com");
    refused(
        &s,
        s.host(&sign(Algorithm::RS256, "rsa-1", &s.keys.rsa, &wrong_iss))
            .await,
        "invalid_token",
    )
    .await;
    refused(
        &s,
        s.host(&sign(
            Algorithm::RS256,
            "rsa-1",
            &s.keys.rsa,
            &claims("alice"),
        ))
        .await,
        "invalid_token",
    )
    .await;
}

// Row: unknown kid, kid with path or SQL fragments, jku/x5u/jwk headers.
async fn keys_come_from_the_configuration_only(db: &TestDb) {
    let s = setup(db).await;
    // A listener that would notice any fetch of a jku/x5u URL.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_url = format!(
        "http://127.0.0.1:{}/keys",
        trap.local_addr().unwrap().port()
    );
    let c = claims("alice");
    for kid in [
        "nope",
        "../../../../etc/passwd",
        "h1' OR '1'='1",
        "h1\u{0}",
        "H1",
        "",
    ] {
        let token = with_header(
            &json!({"alg": "HS256", "kid": kid}),
            &c,
            HS_SECRET_1.as_bytes(),
        );
        refused(&s, s.host(&token).await, "invalid_token").await;
    }
    let no_kid = with_header(&json!({"alg": "HS256"}), &c, HS_SECRET_1.as_bytes());
    refused(&s, s.host(&no_kid).await, "invalid_token").await;
    let jwk = json!({"kty": "oct", "k": b64(&json!("x"))});
    for (name, value) in [
        ("jku", json!(trap_url)),
        ("x5u", json!(trap_url)),
        ("jwk", jwk),
        ("x5c", json!(["MIIB"])),
        ("crit", json!(["exp"])),
    ] {
        let mut header = json!({"alg": "HS256", "kid": "h1"});
        header[name] = value;
        let token = with_header(&header, &c, HS_SECRET_1.as_bytes());
        let why = refused(&s, s.host(&token).await, "invalid_token").await;
        assert!(why.contains(name), "{why}");
    }
    assert!(
        trap.accept().is_err(),
        "chatgate fetched a URL named by the token"
    );
}

// Row: a token for app A presented for app B.
async fn keys_are_per_app(db: &TestDb) {
    let s = setup(db).await;
    let for_support = hs("h1", &claims("alice"));
    let r = s
        .post(
            "/v1/host-session",
            "https://sales.example.com",
            json!({"app": "sales", "token": for_support}),
        )
        .await;
    refused(&s, r, "invalid_token").await;
    // signed with sales' key but naming support: the aud check catches it
    let mut c = claims("alice");
    c["aud"] = json!("support");
    let sales_key = EncodingKey::from_secret(HS_SECRET_2.as_bytes());
    let r = s
        .post(
            "/v1/host-session",
            "https://sales.example.com",
            json!({"app": "sales", "token": sign(Algorithm::HS256, "s1", &sales_key, &c)}),
        )
        .await;
    refused(&s, r, "invalid_token").await;
}

async fn required_claims_and_request_shape(db: &TestDb) {
    let s = setup(db).await;
    for (claim, value) in [
        ("sub", None),
        ("sub", Some(json!(""))),
        ("sub", Some(json!("a\nb"))),
        ("jti", None),
        ("jti", Some(json!(""))),
    ] {
        let mut c = claims("alice");
        match value {
            Some(v) => c[claim] = v,
            None => {
                c.as_object_mut().unwrap().remove(claim);
            }
        }
        refused(&s, s.host(&hs("h1", &c)).await, "invalid_token").await;
    }
    let r = s
        .post(
            "/v1/host-session",
            ORIGIN,
            json!({"app": "nope", "token": "x"}),
        )
        .await;
    assert_eq!(error_of(r).await.1, "invalid_request");
    let r = s
        .post("/v1/host-session", ORIGIN, json!({"app": "support"}))
        .await;
    assert_eq!(error_of(r).await.1, "invalid_request");
    refused(&s, s.host("not-a-jwt").await, "invalid_token").await;
    let huge = "a".repeat(10_000);
    refused(&s, s.host(&huge).await, "invalid_token").await;
    // Preflight for the endpoint.
    let r = common::http_client()
        .request(reqwest::Method::OPTIONS, s.app.url("/v1/host-session"))
        .header("origin", ORIGIN)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN);
}

/// An ID token the host page got from the provider for its own client (each
/// one different: IdPs put a unique `jti`, `nonce` or `sid` in theirs).
fn idp_token(s: &Setup, claims: &[(&str, Value)]) -> String {
    let mut claims: serde_json::Map<String, Value> = claims
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    claims
        .entry("jti")
        .or_insert_with(|| json!(chatgate::secret::random_token::<8>()));
    let behavior = TokenBehavior {
        claims,
        ..Default::default()
    };
    s.idp
        .with(|st| common::fake_idp::id_token(st, None, &behavior))
}

async fn an_id_token_of_the_provider_is_exchanged(db: &TestDb) {
    let s = setup(db).await;
    let exchange = |token: String, origin: &'static str| {
        s.post(
            "/v1/token-exchange",
            origin,
            json!({"app": "support", "id_token": token}),
        )
    };
    let r = exchange(idp_token(&s, &[("aud", json!("spa-client"))]), ORIGIN).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let body: Value = exchange(idp_token(&s, &[("aud", json!("spa-client"))]), ORIGIN)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["user"]["id"], "idp:user-123");
    assert_eq!(body["user"]["email"], "alice@example.com");
    assert_eq!(
        body["user"]["email_verified"], false,
        "the IdP did not say it is verified"
    );
    let claims = chat_claims(body["chat_token"].as_str().unwrap());
    assert_eq!(claims["via"], "id_token");
    assert_eq!(claims["email_verified"], false);
    // Each ID token once: the same one again is a replay.
    let once = idp_token(&s, &[("aud", json!("spa-client"))]);
    assert_eq!(exchange(once.clone(), ORIGIN).await.status(), 200);
    let (status, error, _) = error_of(exchange(once, ORIGIN).await).await;
    assert_eq!((status, error.as_str()), (401, "token_replayed"));
    // No vault entry: chatgate holds no IdP tokens in this mode.
    assert!(
        s.app
            .state
            .store
            .get_vault_entry("support", "idp:user-123")
            .await
            .unwrap()
            .is_none()
    );

    let now = chatgate::time::now();
    for (name, claims, code) in [
        (
            "unaccepted audience",
            vec![("aud", json!("someone-else"))],
            "invalid_token",
        ),
        (
            "an extra untrusted audience",
            vec![("aud", json!(["spa-client", "evil"]))],
            "invalid_token",
        ),
        (
            "wrong issuer",
            vec![
                ("aud", json!("spa-client")),
                ("iss", json!("https://evil.example.com")),
            ],
            "invalid_token",
        ),
        (
            "expired",
            vec![
                ("aud", json!("spa-client")),
                ("exp", json!(now - 120)),
                ("iat", json!(now - 400)),
            ],
            "token_expired",
        ),
        (
            "issued too long ago",
            vec![
                ("aud", json!("spa-client")),
                ("iat", json!(now - 7200)),
                ("exp", json!(now + 600)),
            ],
            "token_expired",
        ),
        (
            "older than max_id_token_age (5 min by default)",
            vec![
                ("aud", json!("spa-client")),
                ("iat", json!(now - 400)),
                ("exp", json!(now + 600)),
            ],
            "token_expired",
        ),
        (
            "an unaccepted azp",
            vec![("aud", json!("spa-client")), ("azp", json!("evil"))],
            "invalid_token",
        ),
    ] {
        let (_, error, why) = error_of(exchange(idp_token(&s, &claims), ORIGIN).await).await;
        assert_eq!(error, code, "{name}: {why}");
    }
    let forged = {
        let rogue = common::fake_idp::signing_key("rogue");
        s.idp.with(|st| {
            st.keys.push(rogue);
            let i = st.keys.len() - 1;
            common::fake_idp::id_token(
                st,
                None,
                &TokenBehavior {
                    sign_with: Some(i),
                    header_kid: Some("key-1".into()),
                    claims: [("aud".to_string(), json!("spa-client"))]
                        .into_iter()
                        .collect(),
                    ..Default::default()
                },
            )
        })
    };
    assert_eq!(
        error_of(exchange(forged, ORIGIN).await).await.1,
        "invalid_token"
    );
    let r = exchange(
        idp_token(&s, &[("aud", json!("spa-client"))]),
        "https://evil.example.com",
    )
    .await;
    assert_eq!(error_of(r).await.1, "origin_not_allowed");
    let r = s
        .post(
            "/v1/token-exchange",
            "https://sales.example.com",
            json!({"app": "sales", "id_token": idp_token(&s, &[])}),
        )
        .await;
    let (status, error, _) = error_of(r).await;
    assert_eq!(
        (status, error.as_str()),
        (403, "access_denied"),
        "token exchange is opt-in per app"
    );
}

backend_tests!(
    every_algorithm_signs_in_and_the_chat_token_verifies,
    two_kids_live_at_once_let_hosts_rotate,
    a_token_without_the_apps_key_is_refused,
    a_replayed_token_is_refused,
    concurrent_submissions_of_one_token_succeed_once,
    expiry_and_lifetime_rules,
    the_origin_and_audience_must_be_the_apps,
    each_key_is_bound_to_its_algorithm,
    keys_come_from_the_configuration_only,
    keys_are_per_app,
    required_claims_and_request_shape,
    an_id_token_of_the_provider_is_exchanged,
);
