//! Benchmark: does chatgate slow down as its vault grows? Seeds 10 000 and
//! 1 000 000 users (batched multi-row INSERTs of sealed entries, not a million
//! sign-ins) on SQLite and, when a server is given, PostgreSQL, then measures
//! with chatgate's release binary:
//!
//! - bot lookups `GET /v1/users/{id}/token` of users picked at random across
//!   the whole vault (read cache off: every lookup reads the database),
//!   p50 / p99 / throughput;
//! - the sign-in callback `GET /v1/callback` of new users (the code exchange
//!   at an in-process IdP on loopback, ID-token validation, the vault insert,
//!   the session and audit rows), p50 / p99;
//! - the database's size, per million users.
//!
//! ```text
//! cargo bench --bench scale
//! CHATGATE_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench --bench scale
//! ```
//!
//! Environment: `CHATGATE_SCALE_USERS` (default `10000,1000000`),
//! `CHATGATE_BENCH_SECONDS` (lookups per size, default 10),
//! `CHATGATE_BENCH_CONNECTIONS` (default 8), `CHATGATE_SCALE_SIGNINS`
//! (default 200). Figures are printed; nothing passes or fails. The query
//! plans of every hot statement are checked by a test instead
//! (`tests/integration/query_plans.rs`).

#[path = "../tests/integration/common/fake_idp.rs"]
#[allow(dead_code)]
mod fake_idp;
#[path = "../tests/integration/common/tls.rs"]
#[allow(dead_code)]
mod tls;

mod common;

use std::io::Write as _;
use std::time::{Duration, Instant};

use chatgate::domain::{AppId, ProviderId, UserId};
use chatgate::secret::SecretString;
use chatgate::store::Store;
use chatgate::vault::{TokenSet, Vault};
use common::{Figures, env_or, percentile_us, warm_then_load};

/// Users sealed and inserted per call of `Vault::save_many`.
const SEED_CHUNK: usize = 10_000;

struct Measured {
    users: usize,
    seed_secs: f64,
    lookup: Figures,
    callback_p50_ms: f64,
    callback_p99_ms: f64,
    callback_errors: usize,
    db_bytes: u64,
    vault_bytes: Option<u64>,
}

/// A stable pseudo-random number for request `i` of task `task` (SplitMix64).
fn pick(task: usize, i: usize) -> u64 {
    let mut z = (task as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(i as u64)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `users` entries with JWT-sized tokens, valid for a day.
async fn seed(vault: &Vault, users: usize) -> f64 {
    let started = Instant::now();
    let now = chatgate::time::now();
    let app = AppId::parse("support").unwrap();
    let provider = ProviderId::parse("bench").unwrap();
    let tokens = TokenSet {
        access_token: SecretString::from("x".repeat(1200)),
        refresh_token: Some(SecretString::from("r".repeat(400))),
        token_type: "Bearer".into(),
        scope: "openid profile email offline_access".into(),
        expires_at: Some(now + 86_400),
    };
    for start in (0..users).step_by(SEED_CHUNK) {
        let chunk: Vec<_> = (start..(start + SEED_CHUNK).min(users))
            .map(|i| {
                (
                    app.clone(),
                    UserId::parse(format!("bench:user-{i}")).unwrap(),
                    provider.clone(),
                    tokens.clone(),
                )
            })
            .collect();
        vault.save_many(&chunk, now).await.unwrap();
    }
    started.elapsed().as_secs_f64()
}

/// What a database that has been running for a while has done after a bulk
/// load: statistics gathered, and on PostgreSQL the new rows vacuumed (hint
/// bits and visibility map set), so the first read of each row does not
/// write.
async fn settle(store: &Store) {
    match store {
        Store::Sqlite(pool) => {
            sqlx::query("ANALYZE").execute(pool).await.unwrap();
        }
        Store::Postgres(pool) => {
            sqlx::query("VACUUM (ANALYZE) vault_entries")
                .execute(pool)
                .await
                .unwrap();
        }
    }
}

/// The database's size in bytes, and the vault table's where the database
/// can tell.
async fn sizes(store: &Store, database_url: &str) -> (u64, Option<u64>) {
    match store {
        Store::Sqlite(pool) => {
            let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(pool)
                .await;
            let path = database_url
                .trim_start_matches("sqlite://")
                .split('?')
                .next()
                .unwrap();
            let file = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            let wal = std::fs::metadata(format!("{path}-wal"))
                .map(|m| m.len())
                .unwrap_or(0);
            (file + wal, None)
        }
        Store::Postgres(pool) => {
            let (db, vault): (i64, i64) = sqlx::query_as(
                "SELECT pg_database_size(current_database()), \
                 pg_total_relation_size('vault_entries')",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            (db as u64, Some(vault as u64))
        }
    }
}

/// Sign-ins of new users, one at a time: the callback's latency.
async fn callbacks(
    server: &common::Server,
    idp: &fake_idp::FakeIdp,
    n: usize,
) -> (Vec<u32>, usize) {
    let no_redirects = || reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    let chatgate = no_redirects().build().unwrap();
    let to_idp = no_redirects()
        .add_root_certificate(reqwest::Certificate::from_pem(idp.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let location = |r: &reqwest::Response| {
        r.headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let authorize = format!(
        "{}/v1/authorize?app=support&origin=https%3A%2F%2Fwww.contoso.com&mode=popup",
        server.base
    );
    let (mut latencies, mut errors) = (Vec::with_capacity(n), 0);
    for k in 0..n {
        let sub = format!("new-{k}-{}", chatgate::secret::random_token::<6>());
        idp.with(|s| {
            s.user.insert("sub".into(), serde_json::json!(sub));
        });
        let started = chatgate.get(&authorize).send().await.unwrap();
        let cookie: String = started
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next())
            .collect::<Vec<_>>()
            .join("; ");
        let at_idp = to_idp.get(location(&started)).send().await.unwrap();
        let callback = location(&at_idp);
        let t = Instant::now();
        let done = chatgate
            .get(&callback)
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        let ok = done.status().is_success();
        let page = done.text().await.unwrap_or_default();
        if ok && page.contains("chatgate:success") {
            latencies.push(t.elapsed().as_micros() as u32);
        } else {
            errors += 1;
        }
    }
    latencies.sort_unstable();
    (latencies, errors)
}

async fn measure(database_url: &str, users: usize) -> Measured {
    let connections = env_or("CHATGATE_BENCH_CONNECTIONS", 8usize);
    let seconds = env_or("CHATGATE_BENCH_SECONDS", 10u64);
    let signins = env_or("CHATGATE_SCALE_SIGNINS", 200usize);
    let idp = fake_idp::FakeIdp::start().await;
    // Read cache off: every lookup reads the database. The sign-ins all come
    // from one address: no rate limit.
    let setup = common::configure(
        database_url,
        Some(&idp),
        "read_cache_ttl = \"0s\"",
        "[rate_limit]\nper_second = 1000000\nburst = 1000000",
    );
    let (store, vault) = setup.open().await;
    let seed_secs = seed(&vault, users).await;
    settle(&store).await;
    let (db_bytes, vault_bytes) = sizes(&store, database_url).await;
    let secret = setup.create_bot(&store).await;
    store.close().await;
    let server = setup.launch(secret).await;

    let base = server.base.clone();
    let url = move |task: usize, i: usize| {
        let user = pick(task, i) % users as u64;
        format!("{base}/v1/users/bench:user-{user}/token")
    };
    // After a warm-up of the server's pools and the database's caches.
    let lookup = warm_then_load(
        url,
        Some(&server.secret),
        connections,
        Duration::from_secs(2),
        Duration::from_secs(seconds),
    )
    .await;
    let (latencies, callback_errors) = callbacks(&server, &idp, signins).await;
    Measured {
        users,
        seed_secs,
        lookup,
        callback_p50_ms: percentile_us(&latencies, 0.50),
        callback_p99_ms: percentile_us(&latencies, 0.99),
        callback_errors,
        db_bytes,
        vault_bytes,
    }
}

fn report(label: &str, results: &[Measured]) {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!("\n{label}");
    println!(
        "  {:>9} {:>9} {:>11} {:>9} {:>9} {:>7} {:>10} {:>10} {:>7} {:>10} {:>12}",
        "users",
        "seed s",
        "lookups/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "callback",
        "callback",
        "errors",
        "db MiB",
        "MiB per 1 M"
    );
    println!(
        "  {:>9} {:>9} {:>11} {:>9} {:>9} {:>7} {:>10} {:>10} {:>7} {:>10} {:>12}",
        "", "", "", "", "", "", "p50 ms", "p99 ms", "", "", ""
    );
    for m in results {
        println!(
            "  {:>9} {:>9.1} {:>11.0} {:>9.2} {:>9.2} {:>7} {:>10.2} {:>10.2} {:>7} {:>10.1} {:>12.0}",
            m.users,
            m.seed_secs,
            m.lookup.rps,
            m.lookup.p50_ms,
            m.lookup.p99_ms,
            m.lookup.errors,
            m.callback_p50_ms,
            m.callback_p99_ms,
            m.callback_errors,
            mib(m.db_bytes),
            mib(m.db_bytes) * 1e6 / m.users as f64,
        );
        if let Some(v) = m.vault_bytes {
            println!(
                "  {:>9} vault_entries alone: {:.1} MiB ({:.0} MiB per million users)",
                "",
                mib(v),
                mib(v) * 1e6 / m.users as f64
            );
        }
    }
    if let (Some(small), Some(large)) = (results.first(), results.last())
        && results.len() > 1
    {
        println!(
            "  {} / {} users: lookup p50 x{:.2} (target <= 1.2), p99 x{:.2}, callback p50 x{:.2}",
            large.users,
            small.users,
            large.lookup.p50_ms / small.lookup.p50_ms.max(f64::EPSILON),
            large.lookup.p99_ms / small.lookup.p99_ms.max(f64::EPSILON),
            large.callback_p50_ms / small.callback_p50_ms.max(f64::EPSILON),
        );
    }
    let _ = std::io::stdout().flush();
}

fn main() {
    if !common::benchmarking() {
        return;
    }
    let sizes: Vec<usize> = std::env::var("CHATGATE_SCALE_USERS")
        .unwrap_or_else(|_| "10000,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().replace('_', "").parse().ok())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let mut results = Vec::new();
        for &users in &sizes {
            let url = format!(
                "sqlite://{}?mode=rwc",
                dir.path().join(format!("scale-{users}.db")).display()
            );
            results.push(measure(&url, users).await);
            let _ = std::fs::remove_file(dir.path().join(format!("scale-{users}.db")));
        }
        report("SQLite", &results);
        match common::postgres_admin_url() {
            Some(admin) => {
                let mut results = Vec::new();
                for &users in &sizes {
                    let (url, name) = common::fresh_postgres_database(&admin).await;
                    results.push(measure(&url, users).await);
                    common::drop_postgres_database(&admin, &name).await;
                }
                report("PostgreSQL", &results);
            }
            None => {
                println!("\nPostgreSQL: skipped (set CHATGATE_BENCH_POSTGRES_URL to an admin URL)")
            }
        }
    });
}
