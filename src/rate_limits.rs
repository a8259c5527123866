//! Per-client-address rate limits for what anyone on the internet can call:
//! the sign-in endpoints and host-page POSTs (every request), and bot
//! authentication (failed attempts only). A client over its budget gets
//! `429` with `Retry-After`.
//!
//! The client address is the peer's, unless the peer is one of
//! `trusted_proxies`: then the nearest untrusted address in its
//! `X-Forwarded-For` (or `Forwarded: for=`) — never a header from anyone else.
//! IPv6 clients are limited per /64 (one host usually holds a whole /64).
//!
//! Memory stays bounded: buckets that have refilled are dropped every minute,
//! and beyond [`MAX_TRACKED`] addresses every client shares one bucket until
//! the table shrinks again (an attack from that many addresses slows everyone
//! a little instead of growing the table without end).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use ipnet::IpNet;

/// How many client addresses are tracked before they share one bucket.
pub const MAX_TRACKED: usize = 100_000;

/// `[rate_limit]` and `trusted_proxies`, from the configuration.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    /// Requests per second per client address; 0 turns limiting off.
    pub per_second: u32,
    pub burst: u32,
    pub trusted_proxies: Vec<IpNet>,
}

/// A client, as rate limits see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    V4([u8; 4]),
    /// The /64 prefix.
    V6([u8; 8]),
    /// Everyone, while more than [`MAX_TRACKED`] addresses are tracked.
    Overflow,
}

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4.octets()),
                None => {
                    let mut prefix = [0; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    Self::V6(prefix)
                }
            },
        }
    }
}

/// The limiters of one chatgate process.
pub struct RateLimits {
    config: RateLimitConfig,
    /// Requests to the unauthenticated endpoints.
    requests: Option<DefaultKeyedRateLimiter<ClientKey>>,
    /// Failed bot authentications.
    auth_failures: Option<DefaultKeyedRateLimiter<ClientKey>>,
    /// Clients whose failed bot authentications ran out, until when: they get
    /// `429` before their secret is even looked up.
    auth_blocked: Mutex<HashMap<ClientKey, Instant>>,
    clock: DefaultClock,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RateLimits {
    pub fn new(config: RateLimitConfig) -> Self {
        let quota = NonZeroU32::new(config.per_second).map(|rate| {
            Quota::per_second(rate)
                .allow_burst(NonZeroU32::new(config.burst).unwrap_or(NonZeroU32::MIN))
        });
        Self {
            requests: quota.map(DefaultKeyedRateLimiter::dashmap),
            auth_failures: quota.map(DefaultKeyedRateLimiter::dashmap),
            auth_blocked: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
            config,
        }
    }

    /// The client's address (see the module documentation).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        client_ip(peer, headers, &self.config.trusted_proxies)
    }

    fn key(&self, limiter: &DefaultKeyedRateLimiter<ClientKey>, ip: IpAddr) -> ClientKey {
        if limiter.len() >= MAX_TRACKED {
            limiter.retain_recent();
            if limiter.len() >= MAX_TRACKED {
                return ClientKey::Overflow;
            }
        }
        ClientKey::from(ip)
    }

    fn check(
        &self,
        limiter: &Option<DefaultKeyedRateLimiter<ClientKey>>,
        ip: IpAddr,
    ) -> Result<(), Duration> {
        let Some(limiter) = limiter else {
            return Ok(());
        };
        limiter
            .check_key(&self.key(limiter, ip))
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Counts one request of `ip`; `Err(retry_after)` when over the limit.
    pub fn request(&self, ip: IpAddr) -> Result<(), Duration> {
        self.check(&self.requests, ip)
    }

    /// Before a bot secret is looked up: `Err(retry_after)` while `ip`'s
    /// failed attempts are used up.
    pub fn auth_allowed(&self, ip: IpAddr) -> Result<(), Duration> {
        let key = ClientKey::from(ip);
        let mut blocked = self.auth_blocked.lock().expect("rate limit lock poisoned");
        match blocked.get(&key) {
            Some(until) if *until > Instant::now() => Err(*until - Instant::now()),
            Some(_) => {
                blocked.remove(&key);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Counts a failed bot authentication of `ip`; `Err(retry_after)` when
    /// that used its budget up.
    pub fn auth_failed(&self, ip: IpAddr) -> Result<(), Duration> {
        let result = self.check(&self.auth_failures, ip);
        if let Err(wait) = result {
            let mut blocked = self.auth_blocked.lock().expect("rate limit lock poisoned");
            if blocked.len() >= MAX_TRACKED {
                let now = Instant::now();
                blocked.retain(|_, until| *until > now);
            }
            if blocked.len() < MAX_TRACKED {
                blocked.insert(ClientKey::from(ip), Instant::now() + wait);
            }
        }
        result
    }

    /// Drops the buckets that have refilled (run every minute).
    pub fn forget_idle(&self) {
        for limiter in [&self.requests, &self.auth_failures].into_iter().flatten() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        let now = Instant::now();
        self.auth_blocked
            .lock()
            .expect("rate limit lock poisoned")
            .retain(|_, until| *until > now);
    }
}

/// The client's address: the peer's, or — when the peer is a trusted proxy —
/// the nearest address in the forwarding chain that is not a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    // The chain, nearest hop last: X-Forwarded-For, else Forwarded's for=.
    let chain: Vec<IpAddr> = {
        let xff: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|part| parse_forwarded_addr(part.trim()))
            .collect();
        if !xff.is_empty() {
            xff
        } else {
            headers
                .get_all(header::FORWARDED)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|element| {
                    element.split(';').find_map(|pair| {
                        let (name, value) = pair.trim().split_once('=')?;
                        name.trim()
                            .eq_ignore_ascii_case("for")
                            .then(|| parse_forwarded_addr(value.trim().trim_matches('"')))
                            .flatten()
                    })
                })
                .collect()
        }
    };
    chain
        .iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .or(chain.first())
        .copied()
        .unwrap_or(peer)
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:443`.
fn parse_forwarded_addr(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sock) = text.parse::<SocketAddr>() {
        return Some(sock.ip());
    }
    text.strip_prefix('[')
        .and_then(|rest| rest.split(']').next())
        .and_then(|inner| inner.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let xff = headers(&[("x-forwarded-for", "203.0.113.7, 10.1.1.1")]);
        // Anyone else's header is ignored: a client cannot pick its address.
        assert_eq!(
            client_ip(ip("198.51.100.2"), &xff, &trusted),
            ip("198.51.100.2")
        );
        // From a trusted proxy, the nearest untrusted hop.
        assert_eq!(client_ip(ip("10.0.0.5"), &xff, &trusted), ip("203.0.113.7"));
        // A spoofed leftmost entry does not win over the real client.
        let spoofed = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.7")]);
        assert_eq!(
            client_ip(ip("10.0.0.5"), &spoofed, &trusted),
            ip("203.0.113.7")
        );
        // Forwarded (RFC 7239), with a port and IPv6 brackets.
        let fwd = headers(&[(
            "forwarded",
            r#"for="[2001:db8::1]:4711";proto=https, for=10.2.2.2"#,
        )]);
        assert_eq!(client_ip(ip("10.0.0.5"), &fwd, &trusted), ip("2001:db8::1"));
        // No header: the proxy itself.
        assert_eq!(
            client_ip(ip("10.0.0.5"), &HeaderMap::new(), &trusted),
            ip("10.0.0.5")
        );
        // Nobody trusted: always the peer.
        assert_eq!(client_ip(ip("10.0.0.5"), &xff, &[]), ip("10.0.0.5"));
    }

    #[test]
    fn ipv6_clients_share_their_64_and_mapped_v4_is_v4() {
        assert_eq!(
            ClientKey::from(ip("2001:db8:1:2::1")),
            ClientKey::from(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            ClientKey::from(ip("2001:db8:1:2::1")),
            ClientKey::from(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            ClientKey::from(ip("::ffff:192.0.2.1")),
            ClientKey::from(ip("192.0.2.1"))
        );
    }

    #[test]
    fn a_burst_is_allowed_then_requests_wait() {
        let limits = RateLimits::new(RateLimitConfig {
            per_second: 1,
            burst: 3,
            trusted_proxies: vec![],
        });
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert!(limits.request(a).is_ok());
        }
        let wait = limits.request(a).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(limits.request(ip("192.0.2.2")).is_ok(), "per address");
        // Failed bot authentications: their own budget, then blocked.
        assert!(limits.auth_allowed(a).is_ok());
        for _ in 0..3 {
            assert!(limits.auth_failed(a).is_ok());
        }
        assert!(limits.auth_failed(a).is_err());
        assert!(limits.auth_allowed(a).is_err());
    }

    #[test]
    fn zero_per_second_turns_limiting_off() {
        let limits = RateLimits::new(RateLimitConfig {
            per_second: 0,
            burst: 0,
            trusted_proxies: vec![],
        });
        for _ in 0..1000 {
            assert!(limits.request(ip("192.0.2.1")).is_ok());
        }
    }
}
