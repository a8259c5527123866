//! Database outages a test can cause, with the real database:
//! PostgreSQL behind a [`Proxy`] that is cut (every connection dropped, new
//! ones refused); SQLite with another connection holding the write lock, so
//! chatgate's writes wait out their busy timeout and fail (reads go on: WAL).

use std::time::Duration;

use sqlx::Connection as _;
use tokio::task::JoinHandle;

use super::proxy::Proxy;
use super::{Backend, TestDb};

pub struct DbOutage {
    /// The URL chatgate should use (through the proxy on PostgreSQL).
    pub url: String,
    backend: Backend,
    direct_url: String,
    proxy: Option<Proxy>,
}

impl DbOutage {
    pub async fn new(db: &TestDb) -> Self {
        match db.backend {
            Backend::Sqlite => Self {
                url: db.url.clone(),
                backend: db.backend,
                direct_url: db.url.clone(),
                proxy: None,
            },
            Backend::Postgres => {
                let mut url = url::Url::parse(&db.url).unwrap();
                let target = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
                let target = tokio::net::lookup_host(target)
                    .await
                    .unwrap()
                    .next()
                    .unwrap();
                let proxy = Proxy::start(target).await;
                url.set_host(Some("127.0.0.1")).unwrap();
                url.set_port(Some(proxy.port)).unwrap();
                Self {
                    url: url.to_string(),
                    backend: db.backend,
                    direct_url: db.url.clone(),
                    proxy: Some(proxy),
                }
            }
        }
    }

    /// Starts an outage of `length`; it is under way when this returns, and
    /// over when the handle completes.
    pub async fn begin(&self, length: Duration) -> JoinHandle<()> {
        match self.backend {
            Backend::Postgres => {
                let switch = self.proxy.as_ref().unwrap().switch();
                switch.cut();
                tokio::spawn(async move {
                    tokio::time::sleep(length).await;
                    switch.restore();
                })
            }
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.direct_url)
                    .await
                    .unwrap();
                sqlx::query("BEGIN EXCLUSIVE")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                tokio::spawn(async move {
                    tokio::time::sleep(length).await;
                    sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
                    conn.close().await.unwrap();
                })
            }
        }
    }
}
