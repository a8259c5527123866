//! The `chatgate` binary as an operator uses it.

use crate::common;
use chatgate::secret::ExposeSecret as _;

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use chatgate::domain::{AppId, KeyId, ProviderId, UserId};
use chatgate::secret::SecretString;
use chatgate::vault::{TokenSet, Vault, VaultKeyRing};
use common::child::ServeChild;
use common::{TestConfig, TestDb};

fn chatgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chatgate"))
        .args(args)
        .env_remove("CHATGATE_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run chatgate")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn keys_generate_vault_prints_a_fresh_base64_key() {
    let a = chatgate(&["keys", "generate", "vault"]);
    assert!(a.status.success(), "{}", stderr(&a));
    let key = stdout(&a);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .unwrap();
    assert_eq!(bytes.len(), 32);
    assert_eq!(key.lines().count(), 1);
    let b = chatgate(&["keys", "generate", "vault"]);
    assert_ne!(stdout(&b), key);
}

#[test]
fn keys_generate_signing_writes_a_private_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signing.pem");
    let p = path.to_str().unwrap();
    let o = chatgate(&["keys", "generate", "signing", "--out", p]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).is_empty(),
        "the key must not go to stdout when --out is given"
    );
    assert!(stderr(&o).contains("wrote signing key"), "{}", stderr(&o));
    let pem = std::fs::read_to_string(&path).unwrap();
    assert!(chatgate::chat_token::SigningKey::from_pem(&SecretString::from(pem.clone())).is_ok());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // Never overwrites an existing key.
    let again = chatgate(&["keys", "generate", "signing", "--out", p]);
    assert!(!again.status.success());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), pem);

    let es = chatgate(&["keys", "generate", "signing", "--alg", "es256"]);
    assert!(es.status.success());
    let key = chatgate::chat_token::SigningKey::from_pem(&SecretString::from(stdout(&es))).unwrap();
    assert_eq!(key.alg_name(), "ES256");
}

#[test]
fn check_config_accepts_a_good_file_with_config_before_or_after_the_verb() {
    let db = TestDb::sqlite();
    let cfg = TestConfig::new(&db);
    let path = cfg.write(8080);
    let p = path.to_str().unwrap();
    for args in [
        vec!["check-config", "--config", p],
        vec!["--config", p, "check-config"],
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatgate"));
        cmd.args(&args).envs(&cfg.env);
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let out = stdout(&o);
        assert!(out.contains(": ok"), "{out}");
        assert!(out.contains("apps        support"), "{out}");
    }
}

#[test]
fn check_config_lists_every_problem_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chatgate.toml");
    std::fs::write(
        &path,
        r#"
public_url = "ftp://nope"
chat_token_ttl = "forever"
mystery = 1
[[apps]]
id = "support"
origins = ["http://not-https.example"]
chat_audience = "x"
provider = "ghost"
"#,
    )
    .unwrap();
    let o = chatgate(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    for key in [
        "public_url:",
        "chat_token_ttl:",
        "mystery: unknown key",
        "vault.keys:",
        "signing:",
        "apps.support.origins[0]:",
        "apps.support.provider:",
    ] {
        assert!(err.contains(key), "{key} missing from:\n{err}");
    }
    // serve refuses to start on the same problems
    let o = chatgate(&["serve", "--config", path.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("mystery: unknown key"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_missing_config_file_is_named() {
    let o = chatgate(&["check-config", "--config", "/nonexistent/chatgate.toml"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("/nonexistent/chatgate.toml"),
        "{}",
        stderr(&o)
    );
}

async fn migrate_creates_the_schema(db: &TestDb) {
    let cfg = TestConfig::new(db);
    let path = cfg.write(8080);
    let o = Command::new(env!("CARGO_BIN_EXE_chatgate"))
        .args(["migrate", "--config", path.to_str().unwrap()])
        .envs(&cfg.env)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("is up to date"), "{}", stdout(&o));
    // The tables exist: the store works without migrating again.
    let store = db.store().await;
    assert!(
        store
            .get_vault_entry("support", "entra:x")
            .await
            .unwrap()
            .is_none()
    );
}

async fn vault_rekey_moves_entries_to_the_newest_key(db: &TestDb) {
    let mut cfg = TestConfig::new(db);
    // Entries written under the configured key "k1"...
    let old_key = SecretString::from(
        std::fs::read_to_string(cfg.path().join("vault.key"))
            .unwrap()
            .trim(),
    );
    let ring = Arc::new(
        VaultKeyRing::new(vec![(
            KeyId::parse("k1").unwrap(),
            VaultKeyRing::decode_key(&old_key).unwrap(),
        )])
        .unwrap(),
    );
    let vault = Vault::new(db.store().await, ring);
    for i in 0..3 {
        vault
            .save(
                &AppId::parse("support").unwrap(),
                &UserId::parse(format!("entra:u{i}")).unwrap(),
                &ProviderId::parse("entra").unwrap(),
                &TokenSet {
                    access_token: SecretString::from(format!("at{i}")),
                    refresh_token: Some(SecretString::from("rt")),
                    token_type: "Bearer".into(),
                    scope: "openid".into(),
                    expires_at: None,
                },
                1,
            )
            .await
            .unwrap();
    }
    // ...then the operator puts a new key in front.
    let new_key = VaultKeyRing::generate_key();
    cfg.env
        .insert("NEW_VAULT_KEY".into(), new_key.expose_secret().into());
    cfg.toml = cfg.toml.replace(
        r#"keys = [{ id = "k1", key_file = "vault.key" }]"#,
        r#"keys = [{ id = "k2", key_env = "NEW_VAULT_KEY" }, { id = "k1", key_file = "vault.key" }]"#,
    );
    let path = cfg.write(8080);
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_chatgate"))
            .args([
                "vault",
                "rekey",
                "--batch-size",
                "2",
                "--config",
                path.to_str().unwrap(),
            ])
            .envs(&cfg.env)
            .output()
            .unwrap()
    };
    let first = run();
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stdout(&first).contains("moved 3 entries to key k2"),
        "{}",
        stdout(&first)
    );
    let second = run();
    assert!(second.status.success());
    assert!(
        stdout(&second).contains("moved 0 entries to key k2; 3 already under it"),
        "{}",
        stdout(&second)
    );
}

/// `users sign-out` deletes the tokens, ends the user's browser sessions and
/// records `user.signed_out` (reason `admin`); `events list` shows it pending
/// (the receiver is not running), `events redeliver` queues it again.
async fn users_sign_out_and_events_from_the_cli(db: &TestDb) {
    let mut cfg = TestConfig::new(db);
    cfg.toml = cfg.toml.replace(
        "chat_audience = \"https://bot.contoso.com\"\n",
        "chat_audience = \"https://bot.contoso.com\"\nevents_url = \"http://127.0.0.1:9/events\"\nevents_secret_env = \"TEST_EVENTS_SECRET\"\n",
    );
    let secret = chatgate::events::WebhookSecret::generate();
    cfg.env.insert(
        "TEST_EVENTS_SECRET".into(),
        secret.expose_secret().to_string(),
    );
    let path = cfg.write(8080);
    let p = path.to_str().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_chatgate"))
            .args(args)
            .args(["--config", p])
            .envs(&cfg.env)
            .env("RUST_LOG", "error")
            .output()
            .unwrap()
    };
    assert!(run(&["migrate"]).status.success());
    let store = db.store().await;
    let vault = Vault::new(store.clone(), cfg.load(0).vault_keys.clone());
    let (app, user) = (
        AppId::parse("support").unwrap(),
        UserId::parse("idp:alice").unwrap(),
    );
    let tokens = TokenSet {
        access_token: SecretString::from("at-alice-secret"),
        refresh_token: Some(SecretString::from("rt-alice-secret")),
        token_type: "Bearer".into(),
        scope: "openid".into(),
        expires_at: None,
    };
    vault
        .save(&app, &user, &ProviderId::parse("idp").unwrap(), &tokens, 1)
        .await
        .unwrap();
    let alice = chatgate::store::SessionUser {
        app: "support".into(),
        user_id: "idp:alice".into(),
        provider: "idp".into(),
        idp_sub: Some("alice".into()),
        idp_sid: None,
    };
    store
        .insert_session("alices-browser", b"{}", i64::MAX / 2, &[alice])
        .await
        .unwrap();
    store
        .insert_session("someone-elses", b"{}", i64::MAX / 2, &[])
        .await
        .unwrap();

    let out = run(&[
        "users",
        "sign-out",
        "--app",
        "support",
        "--user",
        "idp:alice",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("tokens deleted")
            && stdout(&out).contains("1 browser session(s) ended"),
        "{}",
        stdout(&out)
    );
    assert!(vault.load(&app, &user).await.unwrap().is_none());
    assert!(
        store
            .load_session("alices-browser", 0)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .load_session("someone-elses", 0)
            .await
            .unwrap()
            .is_some()
    );
    let unknown = run(&["users", "sign-out", "--app", "nope", "--user", "idp:alice"]);
    assert!(!unknown.status.success());

    let list = stdout(&run(&["events", "list", "--failed"]));
    let line = list
        .lines()
        .find(|l| l.contains("user.signed_out"))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(
        line.contains("idp:alice") && line.contains("pending"),
        "{line}"
    );
    let id = line.split_whitespace().next().unwrap().to_string();
    assert!(id.starts_with("evt_"), "{id}");
    let event = store
        .list_events(chatgate::store::EventFilter {
            undelivered: true,
            limit: 5,
        })
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.id == id)
        .unwrap();
    let payload: serde_json::Value = serde_json::from_str(&event.payload).unwrap();
    assert_eq!(payload["data"]["reason"], "admin");
    assert!(
        !event.payload.contains("alice-secret"),
        "no token in an event"
    );
    let redeliver = run(&["events", "redeliver", &id]);
    assert!(redeliver.status.success(), "{}", stderr(&redeliver));
    assert!(!run(&["events", "redeliver", "evt_nope"]).status.success());
}

backend_tests!(
    migrate_creates_the_schema,
    vault_rekey_moves_entries_to_the_newest_key,
    bots_are_created_listed_and_revoked_from_the_cli,
    users_sign_out_and_events_from_the_cli,
);

#[test]
fn keys_generate_events_prints_a_standard_webhooks_secret() {
    let out = chatgate(&["keys", "generate", "events"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let secret = stdout(&out).trim().to_string();
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert!(chatgate::events::WebhookSecret::parse(&SecretString::from(secret.clone())).is_ok());
    assert_ne!(
        stdout(&chatgate(&["keys", "generate", "events"])).trim(),
        secret
    );
}

/// Runs `chatgate serve` until it is ready, sends SIGTERM, returns its output.
async fn serve_then_sigterm(cfg: &TestConfig) -> Output {
    let served = ServeChild::start(cfg, "info").await;
    let r = common::http_client()
        .get(format!("{}/readyz", served.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, log) = served.terminate().await;
    Output {
        status,
        stdout: Vec::new(),
        stderr: log.into_bytes(),
    }
}

#[tokio::test]
async fn serve_stops_cleanly_on_sigterm() {
    let db = TestDb::sqlite();
    let cfg = TestConfig::new(&db);
    let output = serve_then_sigterm(&cfg).await;
    assert!(output.status.success(), "exit: {:?}", output.status);
    let log = stderr(&output);
    assert!(log.contains("chatgate is serving"), "{log}");
    assert!(log.contains("shutting down"), "{log}");
    assert!(log.contains("chatgate stopped"), "{log}");
    // the log names no secret
    let vault_key = std::fs::read_to_string(cfg.path().join("vault.key")).unwrap();
    assert!(!log.contains(vault_key.trim()));
    assert!(!log.contains("PRIVATE KEY"));
}

#[tokio::test]
async fn log_format_json_writes_one_json_object_per_line() {
    let db = TestDb::sqlite();
    let cfg = TestConfig::new(&db).with_top("log_format = \"json\"");
    let output = serve_then_sigterm(&cfg).await;
    assert!(output.status.success());
    let log = stderr(&output);
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "{log}");
    for line in lines {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            event["level"].is_string() && event["timestamp"].is_string(),
            "{line}"
        );
    }
    assert!(log.contains("\"message\":\"chatgate is serving\""), "{log}");
}

async fn bots_are_created_listed_and_revoked_from_the_cli(db: &TestDb) {
    let cfg = TestConfig::new(db);
    let path = cfg.write(8080);
    let p = path.to_str().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_chatgate"))
            .args(args)
            .args(["--config", p])
            .envs(&cfg.env)
            .output()
            .unwrap()
    };
    let created = run(&["bots", "create", "--app", "support", "--name", "helpdesk"]);
    assert!(created.status.success(), "{}", stderr(&created));
    let secret = stdout(&created).lines().last().unwrap().to_string();
    assert!(secret.starts_with("cgb_") && secret.len() > 40, "{secret}");
    let err = stderr(&created);
    let id = err
        .split_whitespace()
        .find(|w| w.starts_with("bot_"))
        .expect("the bot id on stderr")
        .to_string();
    assert!(!err.contains(&secret));

    let unknown_app = run(&["bots", "create", "--app", "nope"]);
    assert!(!unknown_app.status.success());
    assert!(stderr(&unknown_app).contains("no app \"nope\""));

    let list = run(&["bots", "list"]);
    let out = stdout(&list);
    assert!(
        out.contains(&id) && out.contains("helpdesk") && out.contains("active"),
        "{out}"
    );
    assert!(!out.contains(&secret[4..]), "list shows no secret");

    let store = db.store().await;
    let bots = chatgate::bots::BotDirectory::new(store, &cfg.load(0).vault_keys, Duration::ZERO);
    assert!(bots.authenticate(&secret).await.unwrap().is_ok());
    let revoked = run(&["bots", "revoke", &id]);
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    assert!(bots.authenticate(&secret).await.unwrap().is_err());
    assert!(
        !run(&["bots", "revoke", &id]).status.success(),
        "revoking twice is an error"
    );
    assert!(stdout(&run(&["bots", "list"])).contains("revoked"));

    // The audit trail names the credential changes, never the secret.
    let audit = run(&["audit", "--limit", "10"]);
    let out = stdout(&audit);
    assert!(
        out.contains("bot.create") && out.contains("bot.revoke"),
        "{out}"
    );
    assert!(!out.contains(&secret[4..]));
    let by_user = run(&["audit", "--user", "idp:nobody"]);
    assert_eq!(stdout(&by_user).lines().count(), 1, "only the header");
}

#[cfg(feature = "demo")]
#[test]
fn the_development_provider_refuses_to_listen_beyond_loopback() {
    let o = Command::new(env!("CARGO_BIN_EXE_chatgate"))
        .args([
            "demo",
            "idp",
            "--listen",
            "0.0.0.0:0",
            "--issuer",
            "http://example.com",
            "--client-secret-env",
            "DEV_IDP_SECRET",
            "--redirect-uri",
            "http://127.0.0.1:1/v1/callback",
        ])
        .env("DEV_IDP_SECRET", "x")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("only listens on loopback"),
        "{}",
        stderr(&o)
    );
}

/// `chatgate demo` uses only its own configuration: a `CHATGATE_*` variable
/// left in the shell (a real deployment's database, say) is ignored, loudly.
#[cfg(feature = "demo")]
#[test]
fn the_demo_ignores_chatgate_variables_from_the_shell() {
    use std::io::{BufRead as _, BufReader};
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = dir.path().join("production.db");
    let data = dir.path().join("demo");
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatgate"))
        .args(["demo", "--data-dir", data.to_str().unwrap()])
        .args([
            "--host-port",
            "0",
            "--chatgate-port",
            "0",
            "--idp-port",
            "0",
        ])
        .env(
            "CHATGATE_DATABASE_URL",
            format!("sqlite://{}?mode=rwc", elsewhere.display()),
        )
        .env("CHATGATE_LOG_LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("chatgate demo is running") {
                let _ = tx.send(());
            }
        }
    });
    let started = rx.recv_timeout(Duration::from_secs(60)).is_ok();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(started, "the demo did not start: {err}");
    assert!(
        err.contains("ignores CHATGATE_DATABASE_URL, CHATGATE_LOG_LEVEL"),
        "{err}"
    );
    assert!(!elsewhere.exists(), "the demo used the shell's database");
    assert!(data.join("chatgate.db").exists());
}
