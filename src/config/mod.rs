//! Configuration: the TOML file of docs/reference.md ("Configuration"), `CHATGATE_<KEY>` environment
//! overrides, secrets from `*_env` / `*_file`, parsed once at start into typed
//! values. Every problem is reported with the key it concerns, all at once.

mod build;
mod check;
mod entries;
mod raw;
mod sources;
mod types;

use std::fmt;
use std::path::{Path, PathBuf};

pub use raw::env_name;
pub use sources::{EnvFn, process_env};
pub use types::{
    AppConfig, ChatTokenBinding, ClientAuth, Config, DirectLineConfig, ForwardedHeader,
    FrontchannelLogoutId, HostKeyAlg, HostKeyConfig, HostKeyMaterial, LogConfig, LogFormat,
    ProviderConfig, PublicUrl,
};

/// The file `--config` points at when it is not given.
pub const DEFAULT_PATH: &str = "chatgate.toml";

/// One thing wrong (or worth a warning) in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key it concerns, e.g. `apps.support.origins` or `vault.keys.2026-11.key_env`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Errors and warnings gathered while loading.
#[derive(Debug, Clone, Default)]
pub struct Problems {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl Problems {
    pub fn error(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    pub fn warn(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }
}

/// The configuration could not be loaded; lists every problem found.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub path: PathBuf,
    pub problems: Problems,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.errors.len();
        writeln!(
            f,
            "{} has {n} problem{}:",
            self.path.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems.errors {
            writeln!(f, "  error: {p}")?;
        }
        for p in &self.problems.warnings {
            writeln!(f, "  warning: {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A loaded configuration and the warnings worth showing.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Problem>,
}

/// Dotted key path as shown in problems: `apps.support.chat_audience`.
pub(crate) fn key_path(segments: &[&str]) -> String {
    segments.join(".")
}

impl Config {
    /// Reads and validates the config file at `path`; relative paths inside it are
    /// relative to its directory.
    pub fn load(path: &Path, env: EnvFn<'_>) -> Result<Loaded, ConfigError> {
        let fail = |message: String| ConfigError {
            path: path.to_path_buf(),
            problems: Problems {
                errors: vec![Problem {
                    key: "(file)".into(),
                    message,
                }],
                warnings: vec![],
            },
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            fail(format!(
                "cannot read the config file: {e} (give another with --config PATH)"
            ))
        })?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        Self::from_toml(&text, &dir, env).map_err(|mut e| {
            e.path = path.to_path_buf();
            e
        })
    }

    /// Parses config text as if it were a file in `dir`.
    pub fn from_toml(text: &str, dir: &Path, env: EnvFn<'_>) -> Result<Loaded, ConfigError> {
        let mut problems = Problems::default();
        let result = (|| {
            let mut table: toml::Table = match text.parse() {
                Ok(t) => t,
                Err(e) => {
                    problems.error("(file)", format!("not valid TOML: {e}"));
                    return None;
                }
            };
            let overrides = raw::apply_env_overrides(&mut table, env, &mut problems);
            let raw = raw::deserialize(table, &mut problems)?;
            let sources = sources::Sources { dir, env };
            build::build(raw, &overrides, sources, &mut problems)
        })();
        match result {
            Some(config) if problems.errors.is_empty() => Ok(Loaded {
                config,
                warnings: problems.warnings,
            }),
            _ => Err(ConfigError {
                path: dir.join("(config)"),
                problems,
            }),
        }
    }
}

#[cfg(test)]
mod tests;
