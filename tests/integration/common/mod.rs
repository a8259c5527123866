//! Test harness shared by the integration tests: fresh databases on SQLite and
//! PostgreSQL, a config builder with generated keys, and `spawn_app`, which runs
//! the real server on a random port.
#![allow(dead_code)]

pub mod browser;
pub mod child;
pub mod fake_idp;
pub mod outage;
pub mod proxy;
pub mod receiver;
pub mod tls;

use chatgate::secret::ExposeSecret as _;
use std::collections::HashMap;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use chatgate::chat_token::{SigningAlg, SigningKey};
use chatgate::config::{Config, Loaded};
use chatgate::server::App;
use chatgate::state::AppState;
use chatgate::store::Store;
use chatgate::vault::VaultKeyRing;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const PG_ENV: &str = "CHATGATE_TEST_POSTGRES_URL";
pub const REQUIRE_PG_ENV: &str = "CHATGATE_TEST_REQUIRE_POSTGRES";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database of its own for one test: a SQLite file in a temporary directory,
/// or a freshly created PostgreSQL database that `cleanup` drops.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>, // (admin url, database name)
}

/// Says loudly, past the test harness's output capture, that PostgreSQL tests
/// did not run; fails instead when CI requires them.
fn skip_postgres(why: &str) {
    if std::env::var(REQUIRE_PG_ENV).is_ok_and(|v| v == "1") {
        panic!("{REQUIRE_PG_ENV}=1 but PostgreSQL is unavailable: {why}");
    }
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED a PostgreSQL test: {why}. Set {PG_ENV}=postgres://postgres@127.0.0.1:5432/test to run it. ***"
    );
}

impl TestDb {
    pub async fn new(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => Some(Self::sqlite()),
            Backend::Postgres => Self::postgres().await,
        }
    }

    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("chatgate.db").display()
        );
        Self {
            backend: Backend::Sqlite,
            url,
            dir: Some(dir),
            pg: None,
        }
    }

    /// `None` (after a loud message) when `CHATGATE_TEST_POSTGRES_URL` is unset.
    pub async fn postgres() -> Option<Self> {
        let Ok(admin) = std::env::var(PG_ENV) else {
            skip_postgres(&format!("{PG_ENV} is not set"));
            return None;
        };
        use sqlx::Connection as _;
        let mut conn = match sqlx::PgConnection::connect(&admin).await {
            Ok(c) => c,
            Err(e) => {
                skip_postgres(&format!("cannot connect to {admin}: {e}"));
                return None;
            }
        };
        let now = chatgate::time::now();
        sweep_stale_databases(&mut conn, now).await;
        let name = format!(
            "chatgate_t_{now}_{}",
            chatgate::secret::random_token::<6>()
                .to_lowercase()
                .replace(['-', '_'], "x")
        );
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let _ = conn.close().await;
        let mut url = url::Url::parse(&admin).expect("postgres url");
        url.set_path(&name);
        Some(Self {
            backend: Backend::Postgres,
            url: url.to_string(),
            dir: None,
            pg: Some((admin, name)),
        })
    }

    /// A connected, migrated store on this database.
    pub async fn store(&self) -> Store {
        let config =
            chatgate::store::DatabaseOptions::parse(&self.url, Path::new("/"), 5).expect("db url");
        let store = Store::connect(&config).await.expect("connect");
        store.migrate().await.expect("migrate");
        store
    }

    /// Drops the PostgreSQL database (the SQLite directory goes with `self`).
    pub async fn cleanup(self) {
        if let Some((admin, name)) = &self.pg {
            use sqlx::Connection as _;
            if let Ok(mut conn) = sqlx::PgConnection::connect(admin).await {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await;
                let _ = conn.close().await;
            }
        }
    }
}

/// Drops test databases left behind by runs that panicked more than an hour ago.
async fn sweep_stale_databases(conn: &mut sqlx::PgConnection, now: i64) {
    let Ok(names) = sqlx::query_scalar::<_, String>(
        "SELECT datname FROM pg_database WHERE datname LIKE 'chatgate_t_%'",
    )
    .fetch_all(&mut *conn)
    .await
    else {
        return;
    };
    for name in names {
        let created: Option<i64> = name.split('_').nth(2).and_then(|t| t.parse().ok());
        if created.is_some_and(|t| now - t > 3600) {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
            )))
            .execute(&mut *conn)
            .await;
        }
    }
}

/// Runs `$name(&TestDb)` once on SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = $crate::common::TestDb::sqlite();
                    super::$name(&db).await;
                    db.cleanup().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(db) = $crate::common::TestDb::postgres().await else { return };
                    super::$name(&db).await;
                    db.cleanup().await;
                }
            )*
        }
    };
}

/// A config directory with freshly generated keys, and the TOML that uses them.
pub struct TestConfig {
    pub dir: tempfile::TempDir,
    pub toml: String,
    pub env: HashMap<String, String>,
}

impl TestConfig {
    /// Listens on 127.0.0.1 (the port is set by `spawn_app`), uses `db`.
    pub fn new(db: &TestDb) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("vault.key"),
            VaultKeyRing::generate_key().expose_secret(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("signing.pem"),
            SigningKey::generate_pem(SigningAlg::EdDsa).expose_secret(),
        )
        .unwrap();
        let toml = format!(
            r#"
public_url = "http://127.0.0.1:{{PORT}}"
listen = "127.0.0.1:{{PORT}}"
database_url = "{url}"
# Tests change rows behind the server's back: read everything fresh.
read_cache_ttl = "0s"
# Tests stop their servers at once (the drain has tests of its own).
shutdown_drain = "0s"
# A replica that died holding a refresh lease is replaced after 1.5 x this.
refresh_lease = "3s"
[vault]
keys = [{{ id = "k1", key_file = "vault.key" }}]
[signing]
key_file = "signing.pem"
[[apps]]
id = "support"
origins = ["https://www.contoso.com"]
chat_audience = "https://bot.contoso.com"
host_keys = [{{ kid = "h1", alg = "HS256", secret_env = "TEST_HOST_SECRET" }}]
"#,
            url = db.url
        );
        let mut env = HashMap::new();
        env.insert(
            "TEST_HOST_SECRET".into(),
            "test-host-secret-with-32-bytes-or-more".into(),
        );
        Self { dir, toml, env }
    }

    /// Adds `[[providers]] id = "idp"` at `issuer` (the fake IdP's client
    /// credentials) and makes app `support` sign in through it. `extra` lines go
    /// into the provider table.
    pub fn with_provider(mut self, idp: &fake_idp::FakeIdp, extra: &str) -> Self {
        let issuer = &idp.issuer;
        std::fs::write(self.dir.path().join("idp-ca.pem"), &idp.ca_pem).unwrap();
        self.toml = format!("idp_ca_file = \"idp-ca.pem\"\n{}", self.toml);
        self.toml = self.toml.replace(
            "id = \"support\"\n",
            "id = \"support\"\nprovider = \"idp\"\n",
        );
        self.toml.push_str(&format!(
            "\n[[providers]]\nid = \"idp\"\nissuer = \"{issuer}\"\nclient_id = \"{}\"\nclient_secret_env = \"TEST_IDP_SECRET\"\n{extra}\n",
            fake_idp::CLIENT_ID
        ));
        self.env
            .insert("TEST_IDP_SECRET".into(), fake_idp::CLIENT_SECRET.into());
        self
    }

    /// Adds `line` at the top level of the config.
    pub fn with_top(mut self, line: &str) -> Self {
        self.toml = format!("{line}\n{}", self.toml);
        self
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Writes the TOML (with `port` substituted) next to the keys and returns its path.
    pub fn write(&self, port: u16) -> PathBuf {
        let path = self.dir.path().join("chatgate.toml");
        std::fs::write(&path, self.toml.replace("{PORT}", &port.to_string())).unwrap();
        path
    }

    pub fn load(&self, port: u16) -> Config {
        let env = self.env.clone();
        let lookup = move |k: &str| env.get(k).cloned();
        let text = self.toml.replace("{PORT}", &port.to_string());
        match Config::from_toml(&text, self.dir.path(), &lookup) {
            Ok(Loaded { config, .. }) => config,
            Err(e) => panic!("test config does not load: {e}"),
        }
    }
}

/// A running chatgate.
pub struct TestApp {
    pub port: u16,
    pub base_url: String,
    pub client: reqwest::Client,
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), chatgate::state::AppError>>>,
}

/// The unverified claims of a JWT (the tests' own tokens).
pub fn claims_of(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let part = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// An answer's status and its JSON body's `error` (`""` when it has none).
pub async fn error_of(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap();
    (
        status,
        body["error"].as_str().unwrap_or_default().to_string(),
    )
}

pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // The test "browser" trusts the throw-away CAs of the fake IdPs.
        .tls_danger_accept_invalid_certs(true)
        .build()
        .expect("http client")
}

/// Starts chatgate with `config` on a free port of 127.0.0.1.
pub async fn spawn_app(config: &TestConfig) -> TestApp {
    // CHATGATE_TEST_LOG=debug shows the server's logs while debugging a test.
    if let Ok(level) = std::env::var("CHATGATE_TEST_LOG") {
        chatgate::telemetry::init(&chatgate::config::LogConfig {
            format: chatgate::config::LogFormat::Text,
            level,
        });
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let app = App::build_on(config.load(port), listener)
        .await
        .expect("app builds");
    let state = app.state().clone();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    TestApp {
        port,
        base_url: format!("http://127.0.0.1:{port}"),
        client: http_client(),
        state,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    /// A new bot of app `support` named `name`: its secret.
    pub async fn support_bot(&self, name: &str) -> String {
        let app = chatgate::domain::AppId::parse("support").unwrap();
        let bot = self.state.bots.create(&app, name, 1).await.unwrap();
        bot.secret.expose_secret().to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    /// The IdP's back-channel logout: `POST /v1/backchannel-logout` with
    /// `logout_token`.
    pub async fn backchannel_logout(&self, logout_token: &str) -> reqwest::Response {
        self.client
            .post(self.url("/v1/backchannel-logout"))
            .form(&[("logout_token", logout_token)])
            .send()
            .await
            .expect("request")
    }

    /// Signals shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Signals shutdown and waits for the server to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("server task")
                .expect("server ran cleanly");
        }
    }
}
