//! Identifiers: apps, providers, vault keys and users.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("is longer than {max} characters")]
    TooLong { max: usize },
    #[error("may only contain letters, digits, '.', '_' and '-' (found {found:?})")]
    BadChar { found: char },
    #[error("must have the form provider:subject")]
    NotQualified,
    #[error("must not contain control characters")]
    ControlChar,
}

/// The characters allowed in configured identifiers (app, provider, key ids). They
/// are safe in URLs, file names, SQL text and log lines.
fn check_slug(value: &str, max: usize) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty);
    }
    if value.chars().count() > max {
        return Err(IdError::TooLong { max });
    }
    if let Some(found) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(IdError::BadChar { found });
    }
    Ok(())
}

macro_rules! slug_type {
    ($(#[$meta:meta])* $name:ident, $max:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const MAX_LEN: usize = $max;

            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check_slug(&value, $max)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

slug_type!(
    /// The id of an `[[apps]]` entry (`app=` in URLs, `app` claim in chat tokens).
    AppId,
    64
);
slug_type!(
    /// The id of a `[[providers]]` entry; the prefix of every user id it signs in.
    ProviderId,
    64
);
slug_type!(
    /// The id of a vault key; stored beside every ciphertext it sealed.
    KeyId,
    64
);

/// A chatgate user id: `{provider_id}:{subject}` (docs/reference.md, "Chat tokens").
///
/// The subject comes from the IdP (`sub`, `oid`, `tid:oid`) or from a host
/// (`host:{app}:{sub}`), so it may contain any printable character, including `:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    pub const MAX_LEN: usize = 512;

    /// Builds the user id of `subject` at `provider`.
    pub fn new(provider: &ProviderId, subject: &str) -> Result<Self, IdError> {
        Self::parse(format!("{provider}:{subject}"))
    }

    pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        if value.is_empty() {
            return Err(IdError::Empty);
        }
        if value.len() > Self::MAX_LEN {
            return Err(IdError::TooLong { max: Self::MAX_LEN });
        }
        if value.chars().any(char::is_control) {
            return Err(IdError::ControlChar);
        }
        let Some((prefix, subject)) = value.split_once(':') else {
            return Err(IdError::NotQualified);
        };
        check_slug(prefix, ProviderId::MAX_LEN)?;
        if subject.is_empty() {
            return Err(IdError::NotQualified);
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the first `:`: a provider id, or `host` for host-signed users.
    pub fn namespace(&self) -> &str {
        self.0.split_once(':').map(|(p, _)| p).unwrap_or_default()
    }
}

impl TryFrom<String> for UserId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, IdError> {
        Self::parse(value)
    }
}

impl From<UserId> for String {
    fn from(value: UserId) -> String {
        value.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_accept_plain_ids() {
        for ok in ["support", "entra", "2026-11", "a.b_c-d", "A1"] {
            assert!(AppId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn slugs_reject_unsafe_ids() {
        assert_eq!(AppId::parse(""), Err(IdError::Empty));
        assert_eq!(AppId::parse("a b"), Err(IdError::BadChar { found: ' ' }));
        assert_eq!(AppId::parse("../etc"), Err(IdError::BadChar { found: '/' }));
        assert_eq!(KeyId::parse("k'--"), Err(IdError::BadChar { found: '\'' }));
        assert_eq!(
            ProviderId::parse("x".repeat(65)),
            Err(IdError::TooLong { max: 64 })
        );
    }

    #[test]
    fn user_ids_are_provider_qualified() {
        let entra = ProviderId::parse("entra").unwrap();
        let id = UserId::new(&entra, "tid-1:oid-2").unwrap();
        assert_eq!(id.as_str(), "entra:tid-1:oid-2");
        assert_eq!(id.namespace(), "entra");
        assert_eq!(UserId::parse("nocolon"), Err(IdError::NotQualified));
        assert_eq!(UserId::parse("entra:"), Err(IdError::NotQualified));
        assert_eq!(
            UserId::parse("en tra:x"),
            Err(IdError::BadChar { found: ' ' })
        );
        assert_eq!(UserId::parse("entra:a\nb"), Err(IdError::ControlChar));
        assert!(UserId::parse(format!("p:{}", "x".repeat(600))).is_err());
    }

    #[test]
    fn ids_deserialize_through_validation() {
        let ok: AppId = serde_json::from_str("\"support\"").unwrap();
        assert_eq!(ok.as_str(), "support");
        assert!(serde_json::from_str::<AppId>("\"no/slash\"").is_err());
    }
}
