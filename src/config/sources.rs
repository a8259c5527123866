//! Where values come from: the environment (injected, so tests need not touch the
//! process environment) and files relative to the config file's directory.

use std::path::{Path, PathBuf};

use crate::secret::SecretString;

/// Read access to environment variables.
pub type EnvFn<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, for `main`.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[derive(Clone, Copy)]
pub struct Sources<'a> {
    pub dir: &'a Path,
    pub env: EnvFn<'a>,
}

impl<'a> Sources<'a> {
    /// A path from the config file, relative to the file's directory.
    pub fn path(&self, value: &str) -> PathBuf {
        let p = Path::new(value);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    pub fn read_file(&self, value: &str) -> Result<Vec<u8>, String> {
        let path = self.path(value);
        std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    }

    /// A secret given as `<name>_env` or `<name>_file` (exactly one of them).
    /// Text is trimmed of surrounding whitespace (a trailing newline in a file).
    pub fn secret(
        &self,
        env_key: (&str, Option<&String>),
        file_key: (&str, Option<&String>),
    ) -> Result<Option<SecretString>, String> {
        match (env_key.1, file_key.1) {
            (Some(_), Some(_)) => Err(format!(
                "give either {} or {}, not both",
                env_key.0, file_key.0
            )),
            (Some(var), None) => match (self.env)(var) {
                Some(v) if !v.trim().is_empty() => Ok(Some(SecretString::from(v.trim()))),
                Some(_) => Err(format!(
                    "environment variable {var} (from {}) is empty",
                    env_key.0
                )),
                None => Err(format!(
                    "environment variable {var} (from {}) is not set",
                    env_key.0
                )),
            },
            (None, Some(file)) => {
                let bytes = self.read_file(file)?;
                let text = String::from_utf8(bytes)
                    .map_err(|_| format!("{} ({file}) is not UTF-8 text", file_key.0))?;
                if text.trim().is_empty() {
                    return Err(format!("{} ({file}) is empty", file_key.0));
                }
                Ok(Some(SecretString::from(text.trim())))
            }
            (None, None) => Ok(None),
        }
    }
}
