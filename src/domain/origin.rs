//! Web origins (`scheme://host[:port]`), the unit of trust for hosts embedding the
//! widget: allow-lists, `postMessage` target origins, CORS and CSP.

use std::fmt;

use serde::{Deserialize, Serialize};
use url::Url;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("is not a URL ({0})")]
    NotAUrl(String),
    #[error("must use https (http is allowed only for localhost and loopback addresses)")]
    InsecureScheme,
    #[error("must be just scheme://host[:port], without path, query, fragment or user info")]
    NotBare,
    #[error("has no host")]
    NoHost,
}

/// A serialized web origin such as `https://www.contoso.com` or
/// `http://localhost:3000`, normalized the way browsers send it in the `Origin`
/// header (lower-case host, default port omitted). Comparing two `Origin`s is the
/// exact same-origin check.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Origin(String);

impl Origin {
    pub fn parse(value: &str) -> Result<Self, OriginError> {
        let url = Url::parse(value).map_err(|e| OriginError::NotAUrl(e.to_string()))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(OriginError::NotBare);
        }
        if url.query().is_some() || url.fragment().is_some() || url.path() != "/" {
            return Err(OriginError::NotBare);
        }
        // `Url` turns "https://a.com" into path "/"; reject an explicit path too.
        let without_scheme = value.split_once("://").map(|(_, rest)| rest).unwrap_or("");
        if without_scheme.contains('/') {
            return Err(OriginError::NotBare);
        }
        if url.host().is_none() {
            return Err(OriginError::NoHost);
        }
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(&url) => {}
            _ => return Err(OriginError::InsecureScheme),
        }
        Ok(Self(url.origin().ascii_serialization()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Loopback hosts are "potentially trustworthy" for browsers even over http.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

impl TryFrom<String> for Origin {
    type Error = OriginError;
    fn try_from(value: String) -> Result<Self, OriginError> {
        Self::parse(&value)
    }
}

impl From<Origin> for String {
    fn from(value: Origin) -> String {
        value.0
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_a_browser() {
        assert_eq!(
            Origin::parse("https://WWW.Contoso.com").unwrap().as_str(),
            "https://www.contoso.com"
        );
        assert_eq!(
            Origin::parse("https://contoso.com:443").unwrap().as_str(),
            "https://contoso.com"
        );
        assert_eq!(
            Origin::parse("https://contoso.com:8443").unwrap().as_str(),
            "https://contoso.com:8443"
        );
        assert_eq!(
            Origin::parse("http://localhost:3000").unwrap().as_str(),
            "http://localhost:3000"
        );
        assert_eq!(
            Origin::parse("http://127.0.0.1:9").unwrap().as_str(),
            "http://127.0.0.1:9"
        );
    }

    #[test]
    fn different_scheme_host_or_port_is_a_different_origin() {
        let a = Origin::parse("https://contoso.com").unwrap();
        assert_ne!(a, Origin::parse("https://contoso.com:444").unwrap());
        assert_ne!(a, Origin::parse("https://evil-contoso.com").unwrap());
        assert_ne!(a, Origin::parse("https://contoso.com.evil.com").unwrap());
    }

    #[test]
    fn rejects_non_origins() {
        assert_eq!(
            Origin::parse("http://contoso.com"),
            Err(OriginError::InsecureScheme)
        );
        assert!(Origin::parse("javascript:alert(1)").is_err());
        assert_eq!(
            Origin::parse("ftp://contoso.com"),
            Err(OriginError::InsecureScheme)
        );
        assert_eq!(
            Origin::parse("https://contoso.com/"),
            Err(OriginError::NotBare)
        );
        assert_eq!(
            Origin::parse("https://contoso.com/path"),
            Err(OriginError::NotBare)
        );
        assert_eq!(
            Origin::parse("https://contoso.com?x=1"),
            Err(OriginError::NotBare)
        );
        assert_eq!(
            Origin::parse("https://u:p@contoso.com"),
            Err(OriginError::NotBare)
        );
        assert_eq!(
            Origin::parse("null"),
            Err(OriginError::NotAUrl("relative URL without a base".into()))
        );
        assert!(Origin::parse("*").is_err());
    }
}
