//! Where the database is and how to connect: parsed from `database_url` by
//! the configuration, used by [`super::Store::connect`].

use std::fmt;
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use url::Url;

#[derive(Clone)]
pub enum DatabaseKind {
    Sqlite(SqliteConnectOptions),
    Postgres(PgConnectOptions),
}

/// `database_url` and pool settings. `Debug` never shows a password.
#[derive(Clone)]
pub struct DatabaseOptions {
    pub kind: DatabaseKind,
    /// The URL without its password, for logs.
    pub display: String,
    pub max_connections: u32,
}

impl fmt::Debug for DatabaseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // PgConnectOptions' own Debug would print the password.
        match self {
            Self::Sqlite(o) => f.debug_tuple("Sqlite").field(&o.get_filename()).finish(),
            Self::Postgres(_) => f.write_str("Postgres"),
        }
    }
}

impl fmt::Debug for DatabaseOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseOptions")
            .field("url", &self.display)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl DatabaseOptions {
    /// Parses a database URL; relative SQLite paths are relative to `dir`.
    pub fn parse(url: &str, dir: &std::path::Path, max_connections: u32) -> Result<Self, String> {
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let rest = rest.strip_prefix("//").unwrap_or(rest);
            let (path, query) = match rest.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (rest, None),
            };
            if path.is_empty() || path.contains(":memory:") || path.starts_with("file:") {
                return Err(
                    "must name a database file (in-memory SQLite would lose everything on restart)"
                        .into(),
                );
            }
            let abs = {
                let p = std::path::Path::new(path);
                if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    dir.join(p)
                }
            };
            let full = match query {
                Some(q) => format!("sqlite://{}?{q}", abs.display()),
                None => format!("sqlite://{}", abs.display()),
            };
            let options = SqliteConnectOptions::from_str(&full)
                .map_err(|e| format!("is not a valid SQLite URL: {e}"))?;
            Ok(Self {
                kind: DatabaseKind::Sqlite(options),
                display: full,
                max_connections,
            })
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url)
                .map_err(|e| format!("is not a valid PostgreSQL URL: {e}"))?;
            let mut shown = Url::parse(url).map_err(|e| format!("is not a URL: {e}"))?;
            if shown.password().is_some() {
                let _ = shown.set_password(Some("[redacted]"));
            }
            Ok(Self {
                kind: DatabaseKind::Postgres(options),
                display: shown.to_string(),
                max_connections,
            })
        } else {
            Err("must start with sqlite:// or postgres://".into())
        }
    }

    pub fn has_password(url: &str) -> bool {
        Url::parse(url)
            .map(|u| u.password().is_some())
            .unwrap_or(false)
    }
}
