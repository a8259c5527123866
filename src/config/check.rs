//! Checking one raw value at a time, collecting every problem with its key.

use std::fmt;
use std::time::Duration;

use super::Problems;
use super::raw::Overrides;

/// Collects problems while checking one value at a time.
pub(super) struct Check<'a> {
    pub(super) problems: &'a mut Problems,
    pub(super) overrides: &'a Overrides,
}

impl Check<'_> {
    pub(super) fn error(&mut self, key: &str, message: impl Into<String>) {
        let mut message = message.into();
        if let Some(var) = self.overrides.by_key.get(key) {
            message.push_str(&format!(" (set by {var})"));
        }
        self.problems.error(key, message);
    }

    pub(super) fn required<'v>(&mut self, key: &str, value: &'v Option<String>) -> Option<&'v str> {
        match value.as_deref().map(str::trim) {
            Some(v) if !v.is_empty() => Some(v),
            Some(_) => {
                self.error(key, "must not be empty");
                None
            }
            None => {
                self.error(key, "is required");
                None
            }
        }
    }

    pub(super) fn duration(
        &mut self,
        key: &str,
        value: &Option<String>,
        default: &str,
        min: Duration,
        max: Duration,
    ) -> Duration {
        let text = value.as_deref().unwrap_or(default);
        match humantime::parse_duration(text.trim()) {
            Ok(d) if d < min => {
                self.error(
                    key,
                    format!(
                        "{text:?} is shorter than the minimum {}",
                        humantime::format_duration(min)
                    ),
                );
                d
            }
            Ok(d) if d > max => {
                self.error(
                    key,
                    format!(
                        "{text:?} is longer than the maximum {}",
                        humantime::format_duration(max)
                    ),
                );
                d
            }
            Ok(d) => d,
            Err(e) => {
                self.error(
                    key,
                    format!("{text:?} is not a duration such as \"30s\", \"15m\" or \"12h\" ({e})"),
                );
                humantime::parse_duration(default).unwrap_or_default()
            }
        }
    }

    pub(super) fn parse<T, E: fmt::Display>(
        &mut self,
        key: &str,
        result: Result<T, E>,
    ) -> Option<T> {
        result.map_err(|e| self.error(key, e.to_string())).ok()
    }
}

pub(super) const MINUTE: Duration = Duration::from_secs(60);
pub(super) const HOUR: Duration = Duration::from_secs(3600);
