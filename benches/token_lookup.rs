//! Benchmark: `GET /v1/users/{id}/token` (an unexpired token) against the same
//! server's `/healthz`, at 32 concurrent keep-alive connections, on SQLite and
//! (when a server is given) PostgreSQL, plus chatgate's resident memory idle and
//! under load.
//!
//!     cargo bench --bench token_lookup
//!     CHATGATE_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench --bench token_lookup
//!
//! Environment: `CHATGATE_BENCH_SECONDS` (per measurement, default 10),
//! `CHATGATE_BENCH_CONNECTIONS` (default 32). The load generator runs in this
//! process and chatgate (the release binary) in a child process, on the same
//! machine: both share its cores, as with any single-machine load test.
//! Figures are printed; nothing here passes or fails.

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatgate::chat_token::{SigningAlg, SigningKey};
use chatgate::config::DatabaseConfig;
use chatgate::domain::{AppId, KeyId, ProviderId, UserId};
use chatgate::secret::SecretString;
use chatgate::store::Store;
use chatgate::vault::{TokenSet, Vault, VaultKeyRing};

const USER: &str = "bench:user-1";

struct Figures {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(pid: u32) -> u64 {
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

/// `connections` tasks, each with one keep-alive connection, for `duration`.
async fn load(url: &str, bearer: Option<&str>, connections: usize, duration: Duration) -> Figures {
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let url = url.to_string();
            let bearer = bearer.map(str::to_string);
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()
                    .unwrap();
                let mut latencies = Vec::with_capacity(100_000);
                let mut errors = 0;
                while Instant::now() < deadline {
                    let mut req = client.get(&url);
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
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    Figures {
        rps: all.len() as f64 / duration.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        errors,
    }
}

struct Server {
    child: Child,
    base: String,
    secret: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(database_url: &str) -> Server {
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
        r#"
public_url = "http://127.0.0.1:{port}"
listen = "127.0.0.1:{port}"
database_url = "{database_url}"
log_level = "warn"
[vault]
keys = [{{ id = "bench", key_file = "vault.key" }}]
[signing]
key_file = "signing.pem"
[[apps]]
id = "support"
origins = ["https://www.contoso.com"]
chat_audience = "https://bot.contoso.com"
host_keys = [{{ kid = "h", alg = "HS256", secret_file = "host.secret" }}]
"#
    );
    let path = dir.path().join("chatgate.toml");
    std::fs::write(&path, config).unwrap();

    // Seed one user with a token valid for an hour, and a bot.
    let db = DatabaseConfig::parse(database_url, dir.path(), 5).unwrap();
    let store = Store::connect(&db).await.unwrap();
    store.migrate().await.unwrap();
    let ring = VaultKeyRing::new(vec![(
        KeyId::parse("bench").unwrap(),
        VaultKeyRing::decode_key(&vault_key).unwrap(),
    )])
    .unwrap();
    let now = chatgate::time::now();
    Vault::new(store.clone(), Arc::new(ring))
        .save(
            &AppId::parse("support").unwrap(),
            &UserId::parse(USER).unwrap(),
            &ProviderId::parse("bench").unwrap(),
            &TokenSet {
                access_token: SecretString::new("x".repeat(1200)), // a JWT-sized access token
                refresh_token: Some(SecretString::new("r".repeat(400))),
                token_type: "Bearer".into(),
                scope: "openid profile email offline_access".into(),
                expires_at: Some(now + 3600),
            },
            now,
        )
        .await
        .unwrap();
    let bot = chatgate::bots::create(&store, &AppId::parse("support").unwrap(), "bench", now)
        .await
        .unwrap();
    store.close().await;

    let child = Command::new(env!("CARGO_BIN_EXE_chatgate"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let ready = client.get(format!("{base}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "chatgate did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Server {
        child,
        base,
        secret: bot.secret.expose_secret().to_string(),
        _dir: dir,
    }
}

async fn fresh_postgres_database(admin: &str) -> (String, String) {
    use sqlx::Connection as _;
    let name = format!("chatgate_bench_{}", chatgate::time::now());
    let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap();
    let mut url = url::Url::parse(admin).unwrap();
    url.set_path(&name);
    (url.to_string(), name)
}

async fn drop_postgres_database(admin: &str, name: &str) {
    use sqlx::Connection as _;
    if let Ok(mut conn) = sqlx::PgConnection::connect(admin).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
    }
}

async fn bench(label: &str, database_url: &str, connections: usize, seconds: u64) {
    let server = start(database_url).await;
    let pid = server.child.id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_kib(pid);
    let duration = Duration::from_secs(seconds);
    let token_url = format!("{}/v1/users/{USER}/token", server.base);
    let healthz_url = format!("{}/healthz", server.base);
    // warm-up
    load(
        &token_url,
        Some(&server.secret),
        connections,
        Duration::from_secs(1),
    )
    .await;

    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let health = load(&healthz_url, None, connections, duration).await;
    let token = load(&token_url, Some(&server.secret), connections, duration).await;
    sampler.abort();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);

    let mib = |kib: u64| kib as f64 / 1024.0;
    println!("\n{label}: {connections} connections, {seconds} s per endpoint");
    println!(
        "  {:<28} {:>10} {:>9} {:>9} {:>7}",
        "endpoint", "req/s", "p50 ms", "p99 ms", "errors"
    );
    for (name, f) in [
        ("GET /healthz", &health),
        ("GET /v1/users/{id}/token", &token),
    ] {
        println!(
            "  {:<28} {:>10.0} {:>9.2} {:>9.2} {:>7}",
            name, f.rps, f.p50_ms, f.p99_ms, f.errors
        );
    }
    println!(
        "  token lookup / healthz throughput: {:.0}%   (target >= 40%, p99 < 10 ms)",
        100.0 * token.rps / health.rps.max(1.0)
    );
    println!(
        "  resident memory: idle {:.1} MiB, peak under load {:.1} MiB   (target < 64 MiB)",
        mib(idle),
        mib(peak)
    );
    let _ = std::io::stdout().flush();
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would too: run only
    // when benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let connections = env_or("CHATGATE_BENCH_CONNECTIONS", 32usize);
    let seconds = env_or("CHATGATE_BENCH_SECONDS", 10u64);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let sqlite = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("bench.db").display()
        );
        bench("SQLite", &sqlite, connections, seconds).await;
        match std::env::var("CHATGATE_BENCH_POSTGRES_URL")
            .or_else(|_| std::env::var("CHATGATE_TEST_POSTGRES_URL"))
        {
            Ok(admin) => {
                let (url, name) = fresh_postgres_database(&admin).await;
                bench("PostgreSQL", &url, connections, seconds).await;
                drop_postgres_database(&admin, &name).await;
            }
            Err(_) => {
                println!("\nPostgreSQL: skipped (set CHATGATE_BENCH_POSTGRES_URL to an admin URL)")
            }
        }
    });
}
