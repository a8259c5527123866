//! Shutdown that no load balancer notices: on SIGTERM `/readyz` fails at once
//! while every endpoint keeps serving (responses close their connections);
//! after `shutdown_drain` the listener closes. A rolling restart of two
//! replicas under load, behind a balancer that follows readiness and retries
//! nothing, loses no request — on SQLite and PostgreSQL.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common;
use common::{TestConfig, TestDb, spawn_app};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn with_drain(db: &TestDb, drain: &str) -> TestConfig {
    let mut cfg = TestConfig::new(db);
    cfg.toml = cfg.toml.replace(
        "shutdown_drain = \"0s\"",
        &format!("shutdown_drain = \"{drain}\""),
    );
    cfg
}

/// One HTTP/1.1 request on `conn` (kept alive unless the server says not);
/// the response head and body as text.
async fn request(conn: &mut tokio::net::TcpStream, path: &str) -> String {
    conn.write_all(format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 8192];
    let mut text = String::new();
    loop {
        let n = conn.read(&mut buf).await.unwrap();
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if text.len() >= end + 4 + length {
                return text;
            }
        }
        assert!(n > 0, "closed mid-response: {text}");
    }
}

/// During the drain: readiness fails, everything else is served (new
/// connections too), each response closes its connection; afterwards the
/// listener is closed.
#[tokio::test]
async fn a_drain_fails_readiness_and_keeps_serving_until_it_ends() {
    let db = TestDb::sqlite();
    let mut app = spawn_app(&with_drain(&db, "2s")).await;
    let mut kept = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap();
    let before = request(&mut kept, "/healthz").await;
    assert!(before.starts_with("HTTP/1.1 200"), "{before}");
    assert!(!before.to_ascii_lowercase().contains("connection: close"));

    app.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The kept-alive connection is still served, then closed politely.
    let readyz = request(&mut kept, "/readyz").await;
    assert!(readyz.starts_with("HTTP/1.1 503"), "{readyz}");
    assert!(readyz.contains("draining"), "{readyz}");
    assert!(
        readyz.to_ascii_lowercase().contains("connection: close"),
        "{readyz}"
    );
    let mut rest = Vec::new();
    kept.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "nothing after the closing response");
    // New connections are still accepted and served during the drain.
    let r = common::http_client()
        .get(app.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["connection"], "close");
    let metrics = common::http_client()
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("chatgate_draining 1"), "{metrics}");
    // After the drain the listener is closed.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(
        common::http_client()
            .get(app.url("/healthz"))
            .send()
            .await
            .is_err()
    );
    app.stop().await;
}

/// A balancer in front of replicas, as Kubernetes or a cloud load balancer
/// works: it polls each replica's `/readyz` and routes only to ready ones,
/// keeps connections alive to them, and retries nothing.
/// Each upstream's base URL and whether its last readiness probe passed.
type Upstreams = Arc<Mutex<Vec<(String, Arc<AtomicBool>)>>>;

struct Balancer {
    port: u16,
    upstreams: Upstreams,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    async fn start() -> Self {
        use axum::extract::{Request, State};
        use axum::response::{IntoResponse, Response};
        let upstreams: Upstreams = Arc::default();
        let next = Arc::new(AtomicUsize::new(0));
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        async fn forward(
            State((upstreams, next, client)): State<(Upstreams, Arc<AtomicUsize>, reqwest::Client)>,
            request: Request,
        ) -> Response {
            let ready: Vec<String> = upstreams
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, up)| up.load(Ordering::SeqCst))
                .map(|(url, _)| url.clone())
                .collect();
            if ready.is_empty() {
                return (axum::http::StatusCode::BAD_GATEWAY, "no ready upstream").into_response();
            }
            let upstream = &ready[next.fetch_add(1, Ordering::SeqCst) % ready.len()];
            let mut outgoing = client.request(
                request.method().clone(),
                format!("{upstream}{}", request.uri().path_and_query().unwrap()),
            );
            if let Some(auth) = request.headers().get("authorization") {
                outgoing = outgoing.header("authorization", auth);
            }
            match outgoing.send().await {
                Ok(r) => {
                    let status = r.status();
                    let body = r.bytes().await.unwrap_or_default();
                    (status, body).into_response()
                }
                // No retry: the client sees the failure.
                Err(e) => (axum::http::StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
            }
        }
        let router =
            axum::Router::new()
                .fallback(forward)
                .with_state((upstreams.clone(), next, client));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        // Readiness, every 100 ms, on a connection of its own.
        let probing = upstreams.clone();
        tokio::spawn(async move {
            let probe = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_millis(500))
                .build()
                .unwrap();
            loop {
                let targets: Vec<_> = probing.lock().unwrap().clone();
                for (url, up) in targets {
                    let ready = probe
                        .get(format!("{url}/readyz"))
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200);
                    up.store(ready, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self {
            port,
            upstreams,
            task,
        }
    }

    fn add(&self, url: &str) {
        self.upstreams
            .lock()
            .unwrap()
            .push((url.to_string(), Arc::new(AtomicBool::new(false))));
    }

    fn remove(&self, url: &str) {
        self.upstreams.lock().unwrap().retain(|(u, _)| u != url);
    }

    async fn wait_ready(&self, url: &str) {
        for _ in 0..100 {
            let ready = self
                .upstreams
                .lock()
                .unwrap()
                .iter()
                .any(|(u, up)| u == url && up.load(Ordering::SeqCst));
            if ready {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{url} never became ready");
    }
}

/// Two replicas under a steady load of bot lookups through the balancer;
/// each is restarted in turn (SIGTERM, a new one takes its place). Not one
/// request fails.
async fn a_rolling_restart_of_two_replicas_loses_no_request(db: &TestDb) {
    let cfg = with_drain(db, "1s");
    let a = spawn_app(&cfg).await;
    let b = spawn_app(&cfg).await;
    let secret = a.support_bot("load").await;
    let balancer = Balancer::start().await;
    for app in [&a, &b] {
        balancer.add(&app.base_url);
        balancer.wait_ready(&app.base_url).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let mut load = Vec::new();
    for _ in 0..16 {
        let (stop, ok, failed, secret) = (stop.clone(), ok.clone(), failed.clone(), secret.clone());
        let url = format!("http://127.0.0.1:{}/v1/users/idp:alice", balancer.port);
        load.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::SeqCst) {
                match client.get(&url).bearer_auth(&secret).send().await {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) => failed.lock().unwrap().push(format!("{}", r.status())),
                    Err(e) => failed.lock().unwrap().push(e.to_string()),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for old in [a, b] {
        // The replacement comes up; the old replica is told to stop and
        // drains while the balancer notices; then it is gone.
        let new = spawn_app(&cfg).await;
        balancer.add(&new.base_url);
        balancer.wait_ready(&new.base_url).await;
        let url = old.base_url.clone();
        old.stop().await;
        balancer.remove(&url);
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::mem::forget(new); // serves until the test ends
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
    assert!(
        ok.load(Ordering::SeqCst) > 200,
        "a real load: {}",
        ok.load(Ordering::SeqCst)
    );
    balancer.task.abort();
}

backend_tests!(a_rolling_restart_of_two_replicas_loses_no_request);
