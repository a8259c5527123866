//! What the benchmarks share: chatgate's release binary as a child process on
//! a fresh database, a keep-alive load generator, PostgreSQL scratch
//! databases, resident memory.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chatgate::chat_token::{SigningAlg, SigningKey};
use chatgate::domain::{AppId, KeyId};
use chatgate::secret::ExposeSecret as _;
use chatgate::store::{DatabaseOptions, Store};
use chatgate::vault::{Vault, VaultKeyRing};

use crate::fake_idp;

pub struct Figures {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: usize,
}

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// `connections` tasks, each with one keep-alive connection, for `duration`;
/// request `i` of a task goes to `url(task, i)`.
pub async fn load(
    url: impl Fn(usize, usize) -> String + Send + Sync + 'static,
    bearer: Option<&str>,
    connections: usize,
    duration: Duration,
) -> Figures {
    load_sample(url, bearer, connections, duration)
        .await
        .figures()
}

/// What one or more [`load_sample`] runs saw: every latency, the errors, the
/// time they took together.
#[derive(Default)]
pub struct Sample {
    latencies_us: Vec<u32>,
    errors: usize,
    duration: Duration,
}

impl Sample {
    /// Adds another run's sample to this one (rounds of one endpoint).
    pub fn merge(&mut self, other: Sample) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        self.duration += other.duration;
    }

    pub fn figures(mut self) -> Figures {
        self.latencies_us.sort_unstable();
        Figures {
            rps: self.latencies_us.len() as f64 / self.duration.as_secs_f64().max(1e-9),
            p50_ms: percentile_us(&self.latencies_us, 0.50),
            p99_ms: percentile_us(&self.latencies_us, 0.99),
            errors: self.errors,
        }
    }
}

/// [`load`], keeping every latency.
pub async fn load_sample(
    url: impl Fn(usize, usize) -> String + Send + Sync + 'static,
    bearer: Option<&str>,
    connections: usize,
    duration: Duration,
) -> Sample {
    let deadline = Instant::now() + duration;
    let url = Arc::new(url);
    let tasks: Vec<_> = (0..connections)
        .map(|task| {
            let url = url.clone();
            let bearer = bearer.map(str::to_string);
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()
                    .unwrap();
                let mut latencies = Vec::with_capacity(100_000);
                let mut errors = 0;
                let mut i = 0;
                while Instant::now() < deadline {
                    let mut req = client.get(url(task, i));
                    i += 1;
                    if let Some(b) = &bearer {
                        req = req.bearer_auth(b);
                    }
                    let started = Instant::now();
                    match req.send().await {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            latencies.push(started.elapsed().as_micros() as u32);
                        }
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut sample = Sample {
        duration,
        ..Sample::default()
    };
    for t in tasks {
        let (l, e) = t.await.unwrap();
        sample.latencies_us.extend(l);
        sample.errors += e;
    }
    sample
}

/// [`load`] for `warm_up` (not counted), then for `duration`.
pub async fn warm_then_load(
    url: impl Fn(usize, usize) -> String + Clone + Send + Sync + 'static,
    bearer: Option<&str>,
    connections: usize,
    warm_up: Duration,
    duration: Duration,
) -> Figures {
    load(url.clone(), bearer, connections, warm_up).await;
    load(url, bearer, connections, duration).await
}

/// Quantile `q` of sorted microsecond latencies, in milliseconds.
pub fn percentile_us(sorted: &[u32], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0) as f64
        / 1000.0
}

/// A configuration directory (vault key, signing key, TOML) for chatgate on
/// `database_url`, app `support`; with `idp`, the app signs in through it.
/// `extra_top` goes at the top of the TOML, `extra_tables` before `[[apps]]`.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub port: u16,
    pub database_url: String,
    pub ring: Arc<VaultKeyRing>,
}

pub fn configure(
    database_url: &str,
    idp: Option<&fake_idp::FakeIdp>,
    extra_top: &str,
    extra_tables: &str,
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let vault_key = VaultKeyRing::generate_key();
    std::fs::write(dir.path().join("vault.key"), vault_key.expose_secret()).unwrap();
    std::fs::write(
        dir.path().join("signing.pem"),
        SigningKey::generate_pem(SigningAlg::EdDsa).expose_secret(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("host.secret"),
        "bench-host-secret-with-at-least-32-bytes",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        r#"{extra_top}
public_url = "http://127.0.0.1:{port}"
listen = "127.0.0.1:{port}"
database_url = "{database_url}"
log_level = "warn"
[vault]
keys = [{{ id = "bench", key_file = "vault.key" }}]
[signing]
key_file = "signing.pem"
{extra_tables}
[[apps]]
id = "support"
origins = ["https://www.contoso.com"]
chat_audience = "https://bot.contoso.com"
host_keys = [{{ kid = "h", alg = "HS256", secret_file = "host.secret" }}]
"#
    );
    let config = match idp {
        Some(idp) => {
            std::fs::write(dir.path().join("idp-ca.pem"), &idp.ca_pem).unwrap();
            std::fs::write(dir.path().join("idp.secret"), fake_idp::CLIENT_SECRET).unwrap();
            format!(
                "idp_ca_file = \"idp-ca.pem\"\n{}\nprovider = \"bench\"\n\n[[providers]]\nid = \"bench\"\n\
                 issuer = \"{}\"\nclient_id = \"{}\"\nclient_secret_file = \"idp.secret\"\n",
                config.trim_end(),
                idp.issuer,
                fake_idp::CLIENT_ID
            )
        }
        None => config,
    };
    let path = dir.path().join("chatgate.toml");
    std::fs::write(&path, config).unwrap();
    let ring = VaultKeyRing::new(vec![(
        KeyId::parse("bench").unwrap(),
        VaultKeyRing::decode_key(&vault_key).unwrap(),
    )])
    .unwrap();
    Setup {
        dir,
        config: path,
        port,
        database_url: database_url.to_string(),
        ring: Arc::new(ring),
    }
}

impl Setup {
    /// The migrated database, and the vault over it.
    pub async fn open(&self) -> (Store, Vault) {
        let db = DatabaseOptions::parse(&self.database_url, self.dir.path(), 5).unwrap();
        let store = Store::connect(&db).await.unwrap();
        store.migrate().await.unwrap();
        let vault = Vault::new(store.clone(), self.ring.clone());
        (store, vault)
    }

    /// A bot of app `support`: its secret.
    pub async fn create_bot(&self, store: &Store) -> String {
        let bot = chatgate::bots::BotDirectory::new(store.clone(), &self.ring, Duration::ZERO)
            .create(
                &AppId::parse("support").unwrap(),
                "bench",
                chatgate::time::now(),
            )
            .await
            .unwrap();
        bot.secret.expose_secret().to_string()
    }

    /// `chatgate serve`, ready (on the CPUs [`pin_load_generator`] left
    /// it, if it was called).
    pub async fn launch(self, secret: String) -> Server {
        let mut command = match SERVER_CPUS.get() {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus, env!("CARGO_BIN_EXE_chatgate")]);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_chatgate")),
        };
        let child = command
            .args(["serve", "--config", self.config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{}", self.port);
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            let ready = client.get(format!("{base}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "chatgate did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Server {
            child,
            base,
            secret,
            _dir: self.dir,
        }
    }
}

pub struct Server {
    pub child: Child,
    pub base: String,
    pub secret: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The admin URL of a PostgreSQL server to bench on, if one is given.
pub fn postgres_admin_url() -> Option<String> {
    std::env::var("CHATGATE_BENCH_POSTGRES_URL")
        .or_else(|_| std::env::var("CHATGATE_TEST_POSTGRES_URL"))
        .ok()
}

pub async fn fresh_postgres_database(admin: &str) -> (String, String) {
    use sqlx::Connection as _;
    let name = format!(
        "chatgate_bench_{}_{}",
        chatgate::time::now(),
        chatgate::secret::random_token::<4>()
            .to_lowercase()
            .replace('-', "_")
    );
    let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap();
    let mut url = url::Url::parse(admin).unwrap();
    url.set_path(&name);
    (url.to_string(), name)
}

pub async fn drop_postgres_database(admin: &str, name: &str) {
    use sqlx::Connection as _;
    if let Ok(mut conn) = sqlx::PgConnection::connect(admin).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
    }
}

/// Awaits every future (a tiny join_all, to need no extra crate).
pub async fn join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// `cargo bench` passes `--bench`; `cargo test --benches` does not: run only
/// when benchmarking.
pub fn benchmarking() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// The CPUs chatgate runs on when the load generator has one of its own.
static SERVER_CPUS: OnceLock<String> = OnceLock::new();

/// Puts this process (the load generator) on CPU 0 and every chatgate it
/// launches afterwards on the other CPUs, so that the two do not take turns
/// on the same cores: sharing them, the OS's time slices, not chatgate, made
/// the latency tail (p99 of 1.2–2 ms, against 0.6 ms apart). Call before the
/// runtime starts (its threads inherit the CPU). Off with
/// `CHATGATE_BENCH_PIN=0`, on a machine of one CPU, or without `taskset`
/// (util-linux). Returns how the CPUs are shared, for the report.
pub fn pin_load_generator() -> String {
    let shared = "the load generator and chatgate share every CPU";
    if std::env::var("CHATGATE_BENCH_PIN").is_ok_and(|v| v == "0") {
        return format!("{shared} (CHATGATE_BENCH_PIN=0)");
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        return format!("{shared} (one CPU)");
    }
    let pinned = Command::new("taskset")
        .args(["-p", "-c", "0", &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !pinned {
        return format!("{shared} (taskset failed)");
    }
    let server = if cpus == 2 {
        "1".to_string()
    } else {
        format!("1-{}", cpus - 1)
    };
    let _ = SERVER_CPUS.set(server.clone());
    format!(
        "the load generator on CPU 0, chatgate on CPU {server} (CHATGATE_BENCH_PIN=0: share them); other processes (PostgreSQL) anywhere"
    )
}
