//! Benchmark: `GET /v1/users/{id}/token` (an unexpired token) against the same
//! server's `/healthz`, at 32 concurrent keep-alive connections, on SQLite and
//! (when a server is given) PostgreSQL, plus chatgate's resident memory idle and
//! under load.
//!
//! Then the refresh window: lookups of expired tokens, each refreshed at an
//! in-process IdP on loopback (the tests' fake IdP, HTTPS), and the time from
//! the IdP's answer until the rotated refresh token is stored — the window in
//! which a killed process loses a rotation — read from chatgate's own
//! `chatgate_refresh_duration_seconds` histogram.
//!
//!     cargo bench --bench token_lookup
//!     CHATGATE_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench --bench token_lookup
//!
//! Environment: `CHATGATE_BENCH_SECONDS` (per endpoint, default 10),
//! `CHATGATE_BENCH_ROUNDS` (the endpoints take turns, default 5 rounds each),
//! `CHATGATE_BENCH_CONNECTIONS` (default 32), `CHATGATE_BENCH_PIN` (`0`: the
//! load generator and chatgate share the CPUs). The load generator runs in
//! this process, on CPU 0, and chatgate (the release binary) in a child
//! process on the other CPUs (see `common::pin_load_generator`).
//! Figures are printed; nothing here passes or fails.

#[path = "../tests/integration/common/fake_idp.rs"]
#[allow(dead_code)]
mod fake_idp;
#[path = "../tests/integration/common/tls.rs"]
#[allow(dead_code)]
mod tls;

mod common;

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatgate::domain::{AppId, ProviderId, UserId};
use chatgate::secret::SecretString;
use chatgate::vault::TokenSet;
use common::{Sample, Server, env_or, join_all, load, load_sample, rss_kib};

const USER: &str = "bench:user-1";

async fn start(database_url: &str) -> Server {
    start_with(database_url, None).await
}

/// chatgate on `database_url` with one user whose token is valid for an
/// hour, and a bot; with `idp`, its app signs in through it and more users
/// have expired tokens the IdP can refresh.
async fn start_with(database_url: &str, idp: Option<&fake_idp::FakeIdp>) -> Server {
    let setup = common::configure(database_url, idp, "", "");
    let (store, vault) = setup.open().await;
    let now = chatgate::time::now();
    let seed = |user: String, rt: String, expires_at: i64| {
        let vault = vault.clone();
        async move {
            vault
                .save(
                    &AppId::parse("support").unwrap(),
                    &UserId::parse(user).unwrap(),
                    &ProviderId::parse("bench").unwrap(),
                    &TokenSet {
                        access_token: SecretString::from("x".repeat(1200)), // a JWT-sized access token
                        refresh_token: Some(SecretString::from(rt)),
                        token_type: "Bearer".into(),
                        scope: "openid profile email offline_access".into(),
                        expires_at: Some(expires_at),
                    },
                    now,
                )
                .await
                .unwrap()
        }
    };
    seed(USER.into(), "r".repeat(400), now + 3600).await;
    // For the refresh window: users whose access token has expired, with
    // refresh tokens the IdP knows.
    if let Some(idp) = idp {
        for i in 0..REFRESH_USERS {
            let rt = format!("rt-bench-{i}-{}", "r".repeat(380));
            idp.with(|s| {
                s.refresh_tokens.insert(rt.clone(), true);
                s.subjects.insert(rt.clone(), format!("refresh-{i}"));
            });
            seed(format!("bench:refresh-{i}"), rt, now - 10).await;
        }
    }
    let secret = setup.create_bot(&store).await;
    store.close().await;
    setup.launch(secret).await
}

async fn bench(label: &str, database_url: &str, connections: usize, seconds: u64, rounds: u32) {
    let server = start(database_url).await;
    let pid = server.child.id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_kib(pid);
    let round = Duration::from_secs(seconds) / rounds;
    let token_url = format!("{}/v1/users/{USER}/token", server.base);
    let healthz_url = format!("{}/healthz", server.base);
    let token = move |_: usize, _: usize| token_url.clone();
    let health = move |_: usize, _: usize| healthz_url.clone();
    // warm-up
    load(health.clone(), None, connections, Duration::from_secs(1)).await;
    load(
        token.clone(),
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
    // Interleaved rounds, so that drift on the machine (another process, the
    // CPU's clock) hits both endpoints alike.
    let (mut healths, mut tokens) = (Sample::default(), Sample::default());
    for _ in 0..rounds {
        healths.merge(load_sample(health.clone(), None, connections, round).await);
        tokens.merge(load_sample(token.clone(), Some(&server.secret), connections, round).await);
    }
    let (health, token) = (healths.figures(), tokens.figures());
    sampler.abort();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);

    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "\n{label}: {connections} connections, {seconds} s per endpoint in {rounds} interleaved rounds"
    );
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
    let throughput = token.rps / health.rps.max(1.0);
    let tail = token.p99_ms / health.p99_ms.max(0.001);
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    println!(
        "  lookup / healthz req/s: {throughput:.2}   (target >= 0.80: {})",
        verdict(throughput >= 0.8)
    );
    println!(
        "  lookup p99 / healthz p99: {tail:.2}   (target <= 1.20: {})",
        verdict(tail <= 1.2)
    );
    println!(
        "  resident memory: idle {:.1} MiB, peak under load {:.1} MiB   (target < 48 MiB: {})",
        mib(idle),
        mib(peak),
        verdict(mib(peak) < 48.0)
    );
    let _ = std::io::stdout().flush();
}

/// Users whose expired token the refresh-window run refreshes, one each.
const REFRESH_USERS: usize = 300;
/// Refreshes in flight at a time in the refresh-window run.
const REFRESH_CONCURRENCY: usize = 8;

/// Quantile `q` of a Prometheus histogram, as the upper bound of its bucket,
/// and the mean, in milliseconds.
fn histogram_ms(metrics: &str, name: &str, phase: &str) -> (f64, f64, f64, u64) {
    let label = format!("phase=\"{phase}\"");
    let mut buckets = Vec::new();
    let (mut sum, mut count) = (0.0, 0u64);
    for line in metrics.lines().filter(|l| l.contains(&label)) {
        let value = line.rsplit(' ').next().unwrap_or("0");
        if line.starts_with(&format!("{name}_bucket")) {
            let le = line
                .split("le=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("+Inf");
            let le = le.parse::<f64>().unwrap_or(f64::INFINITY);
            buckets.push((le, value.parse::<u64>().unwrap_or(0)));
        } else if line.starts_with(&format!("{name}_sum")) {
            sum = value.parse().unwrap_or(0.0);
        } else if line.starts_with(&format!("{name}_count")) {
            count = value.parse().unwrap_or(0);
        }
    }
    let quantile = |q: f64| {
        let target = (count as f64 * q).ceil() as u64;
        buckets
            .iter()
            .find(|(_, n)| *n >= target.max(1))
            .map(|(le, _)| le * 1000.0)
            .unwrap_or(f64::NAN)
    };
    let mean = if count > 0 {
        sum / count as f64 * 1000.0
    } else {
        f64::NAN
    };
    (mean, quantile(0.5), quantile(0.99), count)
}

/// Lookups of expired tokens: each is refreshed once at the IdP.
async fn bench_refresh(label: &str, database_url: &str) {
    let idp = fake_idp::FakeIdp::start().await;
    let server = start_with(database_url, Some(&idp)).await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for chunk in (0..REFRESH_USERS)
        .collect::<Vec<_>>()
        .chunks(REFRESH_CONCURRENCY)
    {
        let lookups = chunk.iter().map(|i| {
            let req = client
                .get(format!("{}/v1/users/bench:refresh-{i}/token", server.base))
                .bearer_auth(&server.secret);
            async move {
                let t = Instant::now();
                let ok = req.send().await.is_ok_and(|r| r.status().is_success());
                (ok, t.elapsed())
            }
        });
        for (ok, took) in join_all(lookups).await {
            if ok {
                latencies.push(took.as_secs_f64() * 1000.0);
            } else {
                errors += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    if latencies.is_empty() {
        println!("\n{label}: refresh window — every lookup failed ({errors})");
        return;
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let metrics = client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let name = "chatgate_refresh_duration_seconds";
    println!(
        "\n{label}: refresh window — {REFRESH_USERS} expired tokens, {REFRESH_CONCURRENCY} lookups at a time, IdP on loopback"
    );
    println!(
        "  lookups that refreshed: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, errors {errors}",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99)
    );
    println!(
        "  {:<44} {:>9} {:>9} {:>9} {:>6}",
        "phase (chatgate's histogram)", "mean ms", "p50 ≤ ms", "p99 ≤ ms", "n"
    );
    for (phase, what) in [
        ("idp", "IdP token request (round trip)"),
        ("store", "IdP answer -> stored (the unsaved window)"),
    ] {
        let (mean, p50, p99, n) = histogram_ms(&metrics, name, phase);
        println!("  {what:<44} {mean:>9.2} {p50:>9.2} {p99:>9.2} {n:>6}");
    }
    let _ = std::io::stdout().flush();
}

fn main() {
    if !common::benchmarking() {
        return;
    }
    let connections = env_or("CHATGATE_BENCH_CONNECTIONS", 32usize);
    let seconds = env_or("CHATGATE_BENCH_SECONDS", 10u64);
    let rounds = env_or("CHATGATE_BENCH_ROUNDS", 5u32).max(1);
    println!("{}", common::pin_load_generator());
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
        bench("SQLite", &sqlite, connections, seconds, rounds).await;
        let refresh_db = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("refresh.db").display()
        );
        bench_refresh("SQLite", &refresh_db).await;
        match common::postgres_admin_url() {
            Some(admin) => {
                let (url, name) = common::fresh_postgres_database(&admin).await;
                bench("PostgreSQL", &url, connections, seconds, rounds).await;
                common::drop_postgres_database(&admin, &name).await;
                let (url, name) = common::fresh_postgres_database(&admin).await;
                bench_refresh("PostgreSQL", &url).await;
                common::drop_postgres_database(&admin, &name).await;
            }
            None => {
                println!("\nPostgreSQL: skipped (set CHATGATE_BENCH_POSTGRES_URL to an admin URL)")
            }
        }
    });
}
