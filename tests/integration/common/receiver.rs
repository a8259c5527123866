//! A bot's event endpoint: receives chatgate's events, checks each signature
//! the way the Standard Webhooks specification says (its own HMAC code, not
//! chatgate's), and records what arrived. It sits behind a [`Proxy`] the
//! test can cut, to play a receiver that is down.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::Value;

use super::proxy::{Proxy, Switch};

/// One delivery that arrived.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub timestamp: i64,
    pub event: Value,
    /// Whether `webhook-signature` verified with the secret.
    pub signature_ok: bool,
    /// Whether the receiver answered 2xx (the delivery counts).
    pub accepted: bool,
}

#[derive(Default)]
struct Inner {
    deliveries: Vec<Delivery>,
    /// Answer every delivery with this status (the bot is failing).
    status: Option<u16>,
}

pub struct Receiver {
    /// `events_url` for chatgate's configuration (through the proxy).
    pub url: String,
    /// The `whsec_...` secret, as chatgate's configuration takes it.
    pub secret: String,
    inner: Arc<Mutex<Inner>>,
    proxy: Proxy,
}

impl Receiver {
    pub async fn start() -> Self {
        let secret = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD
                .encode(chatgate::secret::random_bytes::<32>())
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(&secret["whsec_".len()..])
            .unwrap();
        let inner = Arc::new(Mutex::new(Inner::default()));
        let router = Router::new()
            .route("/events", post(receive))
            .with_state((inner.clone(), Arc::new(key)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        let proxy = Proxy::start(addr).await;
        Self {
            url: format!("http://127.0.0.1:{}/events", proxy.port),
            secret,
            inner,
            proxy,
        }
    }

    /// The lines that make app `app` send its events here.
    pub fn app_config(&self) -> String {
        format!(
            "events_url = \"{}\"\nevents_secret_env = \"TEST_EVENTS_SECRET\"\n",
            self.url
        )
    }

    /// Takes connections or refuses them (a receiver that is down).
    pub fn switch(&self) -> Switch {
        self.proxy.switch()
    }

    /// Answers with `status` (None: 204).
    pub fn answer_with(&self, status: Option<u16>) {
        self.inner.lock().unwrap().status = status;
    }

    /// The deliveries the receiver accepted (answered 2xx).
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.inner
            .lock()
            .unwrap()
            .deliveries
            .iter()
            .filter(|d| d.accepted)
            .cloned()
            .collect()
    }

    /// Every attempt that reached the receiver, accepted or not.
    pub fn attempts(&self) -> usize {
        self.inner.lock().unwrap().deliveries.len()
    }

    /// Deliveries of events of `kind` (`user.signed_in`, ...).
    pub fn of_type(&self, kind: &str) -> Vec<Delivery> {
        self.deliveries()
            .into_iter()
            .filter(|d| d.event["type"] == kind)
            .collect()
    }

    /// Waits until `done(deliveries)` holds, for up to `within`.
    pub async fn wait_for(
        &self,
        within: Duration,
        done: impl Fn(&[Delivery]) -> bool,
    ) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let now = self.deliveries();
            if done(&now) {
                return now;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("events did not arrive in {within:?}; got {now:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

type ReceiverState = (Arc<Mutex<Inner>>, Arc<Vec<u8>>);

async fn receive(
    State((inner, key)): State<ReceiverState>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (id, timestamp, signatures) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    // Standard Webhooks: HMAC-SHA256 over "{id}.{timestamp}.{body}", base64,
    // listed as "v1,<sig>" (space-separated when there are several).
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let signature_ok = signatures
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()));
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut inner = inner.lock().unwrap();
    let status = match inner.status {
        Some(status) => StatusCode::from_u16(status).unwrap(),
        None => StatusCode::NO_CONTENT,
    };
    inner.deliveries.push(Delivery {
        id,
        timestamp: timestamp.parse().unwrap_or(0),
        event,
        signature_ok,
        accepted: status.is_success(),
    });
    status
}
