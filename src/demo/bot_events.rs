//! The sample bot's event endpoint, written the way a bot outside chatgate
//! would write it from the Standard Webhooks specification: check the
//! timestamp, recompute the HMAC-SHA256 signature over `id.timestamp.body`
//! with the `whsec_` secret, compare in constant time, then believe the body.
//! It logs every event it accepts and keeps the last few for `GET /bot/events`.

use std::collections::VecDeque;
use std::sync::Mutex;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::Value;

use crate::secret::{ExposeSecret as _, SecretString};

/// Deliveries older or newer than this are refused (replays).
const TOLERANCE_SECS: i64 = 300;
const KEPT: usize = 20;

pub struct EventInbox {
    key: Vec<u8>,
    recent: Mutex<VecDeque<Value>>,
}

impl std::fmt::Debug for EventInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventInbox").finish_non_exhaustive()
    }
}

impl EventInbox {
    /// `secret`: the app's `whsec_...` events secret.
    pub fn new(secret: &SecretString) -> Result<Self, String> {
        let encoded = secret
            .expose_secret()
            .trim()
            .strip_prefix("whsec_")
            .ok_or("the events secret must start with whsec_")?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| format!("the events secret is not base64: {e}"))?;
        Ok(Self {
            key,
            recent: Mutex::new(VecDeque::new()),
        })
    }

    /// Verifies one delivery (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature` and the raw body) and returns the event.
    pub fn receive(
        &self,
        id: &str,
        timestamp: &str,
        signatures: &str,
        body: &[u8],
        now: i64,
    ) -> Result<Value, String> {
        let ts: i64 = timestamp.parse().map_err(|_| "bad webhook-timestamp")?;
        if (now - ts).abs() > TOLERANCE_SECS {
            return Err("webhook-timestamp too far from now".into());
        }
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&self.key).map_err(|e| e.to_string())?;
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        let signed = signatures.split(' ').any(|candidate| {
            candidate
                .strip_prefix("v1,")
                .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
                .is_some_and(|sig| mac.clone().verify_slice(&sig).is_ok())
        });
        if !signed {
            return Err("the signature does not verify".into());
        }
        let event: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        println!(
            "bot: event {} {} for {} in app {} {}",
            event["id"].as_str().unwrap_or("?"),
            event["type"].as_str().unwrap_or("?"),
            event["user_id"].as_str().unwrap_or("?"),
            event["app"].as_str().unwrap_or("?"),
            event["data"]
        );
        let mut recent = self.recent.lock().expect("inbox lock");
        recent.push_front(event.clone());
        recent.truncate(KEPT);
        Ok(event)
    }

    /// The last events accepted, newest first.
    pub fn recent(&self) -> Vec<Value> {
        self.recent
            .lock()
            .expect("inbox lock")
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_chatgates_signature_and_refuses_tampering_and_old_deliveries() {
        let secret = crate::events::WebhookSecret::generate();
        let inbox = EventInbox::new(&secret).unwrap();
        let parsed = crate::events::WebhookSecret::parse(&secret).unwrap();
        let body = r#"{"id":"evt_1","type":"user.signed_out","app":"shop","user_id":"demo:alice","occurred_at":1,"data":{"reason":"widget"}}"#;
        let sig = crate::events::sign(&parsed, "evt_1", 1000, body);
        assert!(
            inbox
                .receive("evt_1", "1000", &sig, body.as_bytes(), 1010)
                .is_ok()
        );
        assert!(
            inbox
                .receive("evt_2", "1000", &sig, body.as_bytes(), 1010)
                .is_err()
        );
        assert!(inbox.receive("evt_1", "1000", &sig, b"{}", 1010).is_err());
        assert!(
            inbox
                .receive("evt_1", "1000", &sig, body.as_bytes(), 2000)
                .is_err()
        );
        assert_eq!(inbox.recent().len(), 1);
    }
}
