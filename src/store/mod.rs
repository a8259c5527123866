//! All SQL lives under this module. One schema, two backends: SQLite (the embedded
//! default) and PostgreSQL (several replicas sharing one database).
//!
//! Queries are written once in the SQL both backends understand (`$1` parameters,
//! `ON CONFLICT`, `RETURNING`) and run on whichever pool is configured through the
//! [`with_pool!`] macro; where the dialects differ (migrations, locking) the code
//! says so. Times are Unix seconds.

mod audit;
mod bots;
mod direct_line;
mod flows;
mod idp_signouts;
mod key_bindings;
mod options;
mod outbox;
mod replay;
mod sessions;
mod signing_keys;
mod signout;
mod sweep;
mod vault;

use std::time::Duration;

use sqlx::{
    PgPool, SqlitePool,
    postgres::PgPoolOptions,
    sqlite::{SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

pub use audit::{AuditEvent, AuditFilter, AuditRow};
pub use bots::{BotCredential, BotRow};
pub use flows::{NewFlow, PendingFlowRow};
pub use idp_signouts::IdpSignoutRow;
pub use key_bindings::{KEYS_PER_USER, KeyBindingRow};
pub use options::{DatabaseKind, DatabaseOptions};
pub use outbox::{EventFilter, EventSettlement, OutboxRow, StoredEvent};
pub use sessions::{NewTicket, SessionUser, TakenTicket};
pub use signing_keys::SigningKeyRow;
pub use signout::{Jti, SignOutScope, SignedOutAtIdp, UserSignedOut};
pub use sweep::{Swept, Table};
pub use vault::{
    BULK_ROWS, LeaseTake, RefreshedEntry, Resealed, SealedEntry, SignInRecords, SignInWrite,
    VaultRow,
};

/// The statements on request paths (bot lookups, sign-in, renewal, sign-out,
/// back-channel logout, `/metrics`) and of the background work (event
/// delivery, the sweep) that touch a table growing with users, by name.
/// `tests/integration/query_plans.rs` asks both databases how they would run
/// each: none may scan a whole table.
pub fn hot_queries() -> Vec<(String, &'static str)> {
    let mut all: Vec<(String, &'static str)> = [
        ("bots: authenticate", bots::BY_SECRET_HASH),
        ("vault: read an entry", vault::GET_ENTRY),
        ("vault: sign-in, entry before", vault::UPSERT_BEFORE),
        ("vault: take the refresh lease", vault::TAKE_LEASE),
        ("vault: write refreshed tokens", vault::WRITE_REFRESHED),
        ("sign-out: delete an entry", signout::DELETE_ENTRY),
        ("sign-out: a user's tickets", signout::DELETE_USER_TICKETS),
        ("flows: take by state", flows::TAKE_FLOW),
        ("flows: take a key-bound flow", flows::TAKE_KEY_BOUND_FLOW),
        ("flows: peek", flows::PEEK_FLOW),
        ("sessions: load", sessions::LOAD_SESSION),
        ("sessions: save", sessions::SAVE_SESSION),
        ("sessions: replace users", sessions::DELETE_SESSION_USERS),
        ("replay: remember a jti", replay::REMEMBER_JTI),
        ("direct line: a user's id", direct_line::DL_USER_OF),
        (
            "direct line: record a user's id",
            direct_line::INSERT_DL_USER,
        ),
        ("direct line: whose id", direct_line::USER_OF_DL),
        (
            "sign-out: a user's direct line id",
            direct_line::DELETE_DL_USER,
        ),
        ("key bindings: read", key_bindings::GET_BINDING),
        ("key bindings: confirm", key_bindings::TAKE_PENDING),
        ("key bindings: touch", key_bindings::TOUCH_BINDING),
        (
            "key bindings: trim a user's keys",
            key_bindings::TRIM_USER_KEYS,
        ),
        ("events: claim due (SQLite)", outbox::CLAIM_DUE_SQLITE),
        ("events: claim due (PostgreSQL)", outbox::CLAIM_DUE_POSTGRES),
        ("events: pending count", outbox::PENDING_COUNT),
        ("logout: a user's sessions", signout::END_USER_SESSIONS),
        ("logout: a user's key bindings", signout::END_USER_KEYS),
    ]
    .into_iter()
    .map(|(name, sql)| (name.to_string(), sql))
    .collect();
    for (form, by) in ["sub", "sid", "sub and sid"].iter().enumerate() {
        all.push((
            format!("logout by {by}: entries"),
            signout::DELETE_ENTRIES[form],
        ));
        all.push((
            format!("logout by {by}: sessions"),
            signout::DELETE_SESSIONS[form],
        ));
        all.push((
            format!("logout by {by}: key bindings"),
            signout::DELETE_KEY_BINDINGS[form],
        ));
    }
    for table in Table::ALL {
        all.push((format!("sweep: {}", table.name()), table.sql()));
    }
    all
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// The database is unreachable or too busy right now (connection lost or
    /// refused, pool exhausted, SQLite locked by another writer, PostgreSQL
    /// shutting down or out of connections): worth a `503` and a retry, not a
    /// `500`.
    pub fn is_transient(&self) -> bool {
        let Self::Sqlx(e) = self else { return false };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default();
                if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                    // SQLITE_BUSY (5), SQLITE_LOCKED (6) and their extended codes.
                    code.parse::<i64>().is_ok_and(|n| matches!(n & 0xff, 5 | 6))
                } else {
                    // Class 08 connection exception, 53 insufficient resources,
                    // 57P0x operator intervention, 40001/40P01 retryable conflicts.
                    code.starts_with("08")
                        || code.starts_with("53")
                        || code.starts_with("57P0")
                        || code == "40001"
                        || code == "40P01"
                }
            }
            _ => false,
        }
    }
}

/// Errors that may go away on their own (a database blip).
pub trait Transient {
    fn is_transient(&self) -> bool;
}

impl Transient for StoreError {
    fn is_transient(&self) -> bool {
        StoreError::is_transient(self)
    }
}

/// Runs `op` again while it fails transiently and `budget` is not spent,
/// pausing 200 ms, 400 ms, ... in between: for the writes a request should
/// ride a short database blip out for (a sign-in's flow and tokens). An
/// attempt itself may take up to the pool's acquire timeout.
pub async fn retry_transient<T, E, F>(budget: Duration, mut op: impl FnMut() -> F) -> Result<T, E>
where
    E: Transient + std::fmt::Display,
    F: Future<Output = Result<T, E>>,
{
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(200);
    loop {
        match op().await {
            Err(e) if e.is_transient() && started.elapsed() + pause < budget => {
                tracing::warn!(error = %e, "the database is unavailable; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            other => return other,
        }
    }
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a query waits for a pooled connection (or a new one) before it
/// fails as unavailable: short, so an outage answers `503` quickly instead of
/// holding requests.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// `/readyz` says "unreachable" when a round trip takes longer.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a SQLite writer waits for another writer's lock.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection pool to one of the two supported databases.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the concrete pool. The body is compiled
/// once per backend, so it must be SQL both understand.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            $crate::store::Store::Sqlite($pool) => $body,
            $crate::store::Store::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

/// Starts a transaction that will write. SQLite takes the write lock up front
/// (`BEGIN IMMEDIATE`), so two writers queue on the busy timeout instead of one
/// failing with `SQLITE_BUSY` when it upgrades a read lock.
trait BeginWrite {
    type Db: sqlx::Database;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Self::Db>>;
}

impl BeginWrite for SqlitePool {
    type Db = sqlx::Sqlite;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.begin_with("BEGIN IMMEDIATE").await?)
    }
}

impl BeginWrite for PgPool {
    type Db = sqlx::Postgres;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        Ok(self.begin().await?)
    }
}

impl Store {
    /// Opens the pool. SQLite runs in WAL mode with a busy timeout, so readers never
    /// block the writer and concurrent writers wait instead of failing.
    pub async fn connect(config: &DatabaseOptions) -> Result<Self> {
        match &config.kind {
            DatabaseKind::Sqlite(options) => {
                let options = options
                    .clone()
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(SQLITE_BUSY_TIMEOUT)
                    .foreign_keys(true);
                let pool = SqlitePoolOptions::new()
                    .max_connections(config.max_connections)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(options)
                    .await?;
                Ok(Self::Sqlite(pool))
            }
            DatabaseKind::Postgres(options) => {
                let pool = PgPoolOptions::new()
                    .max_connections(config.max_connections)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(options.clone())
                    .await?;
                Ok(Self::Postgres(pool))
            }
        }
    }

    /// Applies the embedded migrations that have not run yet. Safe to call from
    /// several replicas at once (sqlx takes a lock).
    /// Returns the versions this call applied (empty when the database was
    /// up to date), so a step that must follow a migration exactly once (see
    /// `crate::state::migrate`) knows when to run.
    pub async fn migrate(&self) -> Result<Vec<i64>> {
        let before = self.applied_migrations().await;
        match self {
            Self::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await?,
            Self::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await?,
        }
        let after = self.applied_migrations().await;
        Ok(after.into_iter().filter(|v| !before.contains(v)).collect())
    }

    /// Versions recorded by sqlx; none before the first migration.
    async fn applied_migrations(&self) -> Vec<i64> {
        const SQL: &str = "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version";
        let versions = with_pool!(self, pool => {
            sqlx::query_scalar::<_, i64>(SQL).fetch_all(pool).await
        });
        versions.unwrap_or_default()
    }

    /// A cheap round trip, for `/readyz`; gives up after `PING_TIMEOUT`.
    pub async fn ping(&self) -> Result<()> {
        let ping = async {
            with_pool!(self, pool => {
                sqlx::query("SELECT 1").execute(pool).await?;
            });
            Ok(())
        };
        tokio::time::timeout(PING_TIMEOUT, ping)
            .await
            .unwrap_or(Err(StoreError::Sqlx(sqlx::Error::PoolTimedOut)))
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    pub async fn close(&self) {
        with_pool!(self, pool => pool.close().await)
    }
}
