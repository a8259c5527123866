//! chatgate's own browser session (cookie `__Host-chatgate`): tower-sessions
//! over the same SQL database, so every replica sees every session.
//!
//! The session remembers, per `(app, origin)`, who signed in and when; a later
//! silent sign-in for the same app and origin mints a chat token from it
//! without an IdP round trip. It holds no token.

use std::collections::BTreeMap;

use async_trait::async_trait;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tower_sessions::cookie::{Cookie, SameSite};
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, SessionStore};
use tower_sessions::{Expiry, Session, SessionManagerLayer};

use crate::domain::{AppId, Origin};
use crate::signin::SessionSignIn;
use crate::store::{SessionUser, Store};

pub const SESSION_COOKIE: &str = "__Host-chatgate";
const SIGNINS_KEY: &str = "chatgate.signins";

/// Typed access to the session's sign-ins.
#[derive(Debug, Clone)]
pub struct BrowserSession(pub Session);

fn key(app: &AppId, origin: &Origin) -> String {
    format!("{app} {origin}")
}

impl BrowserSession {
    async fn signins(&self) -> Result<BTreeMap<String, SessionSignIn>, session_store::Error> {
        Ok(self
            .0
            .get::<BTreeMap<String, SessionSignIn>>(SIGNINS_KEY)
            .await
            .map_err(|e| session_store::Error::Backend(e.to_string()))?
            .unwrap_or_default())
    }

    /// The sign-in for `(app, origin)` if it is younger than `max_age` seconds.
    pub async fn get(
        &self,
        app: &AppId,
        origin: &Origin,
        now: i64,
        max_age: i64,
    ) -> Result<Option<SessionSignIn>, session_store::Error> {
        Ok(self
            .signins()
            .await?
            .remove(&key(app, origin))
            .filter(|s| now < s.signed_in_at + max_age))
    }

    /// Records a sign-in, and gives the session a new id (so an id planted
    /// before sign-in is worthless afterwards).
    pub async fn put(
        &self,
        app: &AppId,
        origin: &Origin,
        signin: SessionSignIn,
    ) -> Result<(), session_store::Error> {
        let mut all = self.signins().await?;
        all.insert(key(app, origin), signin);
        self.0
            .insert(SIGNINS_KEY, all)
            .await
            .map_err(|e| session_store::Error::Backend(e.to_string()))?;
        self.0
            .cycle_id()
            .await
            .map_err(|e| session_store::Error::Backend(e.to_string()))
    }

    /// Marks the session used now: it is saved again, so `session_idle` counts
    /// from here (tower-sessions saves only sessions it sees modified).
    pub fn touch(&self, idle: std::time::Duration) {
        self.0
            .set_expiry(Some(Expiry::OnInactivity(time::Duration::seconds(
                idle.as_secs() as i64,
            ))));
    }

    /// Forgets the sign-in for `(app, origin)` and returns it; ends the session
    /// when no sign-in is left.
    pub async fn remove(
        &self,
        app: &AppId,
        origin: &Origin,
    ) -> Result<Option<SessionSignIn>, session_store::Error> {
        let mut all = self.signins().await?;
        let removed = all.remove(&key(app, origin));
        if all.is_empty() {
            self.0
                .flush()
                .await
                .map_err(|e| session_store::Error::Backend(e.to_string()))?;
        } else if removed.is_some() {
            self.0
                .insert(SIGNINS_KEY, all)
                .await
                .map_err(|e| session_store::Error::Backend(e.to_string()))?;
        }
        Ok(removed)
    }
}

/// The session layer: `__Host-chatgate`, `Secure; HttpOnly; SameSite=None;
/// Path=/`, expiring after `idle` without use. `Partitioned` (and the
/// attributes of its removal) are added by [`partition_cookies`].
pub fn layer(store: Store, idle: std::time::Duration) -> SessionManagerLayer<SqlSessionStore> {
    let idle = time::Duration::seconds(idle.as_secs() as i64);
    SessionManagerLayer::new(SqlSessionStore { store })
        .with_name(SESSION_COOKIE)
        .with_secure(true)
        .with_http_only(true)
        .with_same_site(SameSite::None)
        .with_path("/")
        .with_expiry(Expiry::OnInactivity(idle))
}

/// Middleware: gives every `Set-Cookie` of the session cookie the attributes
/// its `__Host-` prefix and the third-party iframe need — `Secure; Path=/`,
/// `HttpOnly`, `SameSite=None` and `Partitioned` (CHIPS, so it keeps working
/// inside a third-party iframe where the browser blocks third-party
/// cookies). tower-sessions cannot set `Partitioned`, and writes its removal
/// cookie (sign-out) with none of them, which browsers reject for the prefix.
pub async fn partition_cookies(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let cookies: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .cloned()
        .collect();
    if cookies.is_empty() {
        return response;
    }
    headers.remove(header::SET_COOKIE);
    for value in cookies {
        headers.append(header::SET_COOKIE, with_session_attributes(value));
    }
    response
}

fn with_session_attributes(value: HeaderValue) -> HeaderValue {
    let Some(mut cookie) = value
        .to_str()
        .ok()
        .and_then(|text| Cookie::parse(text.to_string()).ok())
        .filter(|c| c.name() == SESSION_COOKIE)
    else {
        return value;
    };
    cookie.set_secure(true);
    cookie.set_http_only(true);
    cookie.set_same_site(SameSite::None);
    cookie.set_path("/");
    cookie.set_partitioned(true);
    HeaderValue::from_str(&cookie.to_string()).unwrap_or(value)
}

/// tower-sessions records in the `browser_sessions` table. Rows are keyed by a
/// SHA-256 of the session id: the table alone does not hand out sessions.
#[derive(Debug, Clone)]
pub struct SqlSessionStore {
    store: Store,
}

#[derive(Serialize, Deserialize)]
struct StoredRecord {
    data: std::collections::HashMap<String, serde_json::Value>,
    expiry_date: OffsetDateTime,
}

fn id_hash(id: &Id) -> String {
    crate::secret::sha256_hex(id.to_string().as_bytes())
}

fn encode(record: &Record) -> session_store::Result<Vec<u8>> {
    serde_json::to_vec(&StoredRecord {
        data: record.data.clone(),
        expiry_date: record.expiry_date,
    })
    .map_err(|e| session_store::Error::Encode(e.to_string()))
}

/// Who the record is signed in as at an IdP (host-signed users have no IdP
/// session to end), for the `browser_session_users` rows.
fn users(record: &Record) -> Vec<SessionUser> {
    let Some(value) = record.data.get(SIGNINS_KEY) else {
        return Vec::new();
    };
    let Ok(signins) = serde_json::from_value::<BTreeMap<String, SessionSignIn>>(value.clone())
    else {
        return Vec::new();
    };
    signins
        .into_iter()
        .filter(|(_, s)| s.user_id.namespace() != "host")
        .filter_map(|(key, s)| {
            let (app, _origin) = key.split_once(' ')?;
            Some(SessionUser {
                app: app.to_string(),
                provider: s.user_id.namespace().to_string(),
                user_id: s.user_id.to_string(),
                idp_sub: s.idp_sub,
                idp_sid: s.idp_sid,
            })
        })
        .collect()
}

fn backend(e: impl std::fmt::Display) -> session_store::Error {
    session_store::Error::Backend(e.to_string())
}

#[async_trait]
impl SessionStore for SqlSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        loop {
            let data = encode(record)?;
            let inserted = self
                .store
                .insert_session(
                    &id_hash(&record.id),
                    &data,
                    record.expiry_date.unix_timestamp(),
                    &users(record),
                )
                .await
                .map_err(backend)?;
            if inserted {
                return Ok(());
            }
            record.id = Id::default();
        }
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let data = encode(record)?;
        self.store
            .save_session(
                &id_hash(&record.id),
                &data,
                record.expiry_date.unix_timestamp(),
                &users(record),
            )
            .await
            .map_err(backend)
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let Some(bytes) = self
            .store
            .load_session(&id_hash(id), crate::time::now())
            .await
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let stored: StoredRecord = serde_json::from_slice(&bytes)
            .map_err(|e| session_store::Error::Decode(e.to_string()))?;
        Ok(Some(Record {
            id: *id,
            data: stored.data,
            expiry_date: stored.expiry_date,
        }))
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.store
            .delete_session(&id_hash(id))
            .await
            .map_err(backend)
    }
}
