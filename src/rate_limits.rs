//! Per-client-address rate limits for what anyone on the internet can call:
//! the sign-in endpoints and host-page POSTs (every request), and bot
//! authentication (failed attempts only). A client over its budget gets
//! `429` with `Retry-After`.
//!
//! The client address is the peer's, unless the peer is one of
//! `trusted_proxies`: then the nearest untrusted address in the one header
//! `forwarded_header` names (`X-Forwarded-For`, the default, or `Forwarded:
//! for=`) — never a header from anyone else, and never the other header, which
//! a client could write itself where the proxy only appends to one.
//! IPv6 clients are limited per /64 (one host usually holds a whole /64), and
//! each /48 (one site) at 16 times that, so a client that owns a whole /48
//! cannot multiply its budget by rotating /64s.
//!
//! Back-channel logouts have a budget of their own per identity provider
//! (IdPs send them from a few addresses, in bursts after a mass logout, and
//! most never retry); only requests whose token names no configured issuer
//! count against the sender's address.
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

use crate::config::ForwardedHeader;

/// How many client addresses are tracked before they share one bucket.
pub const MAX_TRACKED: usize = 100_000;

/// How many times one client's budget a whole IPv6 /48 gets.
pub const V6_SITE_FACTOR: u32 = 16;

/// `[rate_limit]`, `trusted_proxies` and `forwarded_header`, from the configuration.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    /// Requests per second per client address; 0 turns limiting off.
    pub per_second: u32,
    pub burst: u32,
    /// Back-channel logouts per second per identity provider; 0: unlimited.
    pub backchannel_per_second: u32,
    pub backchannel_burst: u32,
    pub trusted_proxies: Vec<IpNet>,
    pub forwarded_header: ForwardedHeader,
}

/// A client, as rate limits see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    V4([u8; 4]),
    /// The /64 prefix.
    V6([u8; 8]),
    /// The /48 prefix (a site), for the second, wider limit of IPv6 clients.
    V6Site([u8; 6]),
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

impl ClientKey {
    /// The /48 of an IPv6 client, which shares a wider budget.
    fn site(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                let mut prefix = [0; 6];
                prefix.copy_from_slice(&v6.octets()[..6]);
                Some(Self::V6Site(prefix))
            }
            _ => None,
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
    /// Both of the above, per IPv6 /48, at [`V6_SITE_FACTOR`] times the budget.
    sites: Option<DefaultKeyedRateLimiter<ClientKey>>,
    /// Back-channel logouts, per provider id.
    backchannel: Option<DefaultKeyedRateLimiter<String>>,
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
        let quota = |per_second: u32, burst: u32| {
            NonZeroU32::new(per_second).map(|rate| {
                Quota::per_second(rate)
                    .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
            })
        };
        let client = quota(config.per_second, config.burst);
        let site = quota(
            config.per_second.saturating_mul(V6_SITE_FACTOR),
            config.burst.saturating_mul(V6_SITE_FACTOR),
        );
        Self {
            requests: client.map(DefaultKeyedRateLimiter::dashmap),
            auth_failures: client.map(DefaultKeyedRateLimiter::dashmap),
            sites: site.map(DefaultKeyedRateLimiter::dashmap),
            backchannel: quota(config.backchannel_per_second, config.backchannel_burst)
                .map(DefaultKeyedRateLimiter::dashmap),
            auth_blocked: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
            config,
        }
    }

    /// The client's address (see the module documentation).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        client_ip(
            peer,
            headers,
            &self.config.trusted_proxies,
            self.config.forwarded_header,
        )
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
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))?;
        // An IPv6 client also spends from its /48's wider budget.
        if let (Some(sites), Some(site)) = (&self.sites, ClientKey::site(ip)) {
            let key = if sites.len() >= MAX_TRACKED {
                ClientKey::Overflow
            } else {
                site
            };
            sites
                .check_key(&key)
                .map_err(|not_until| not_until.wait_time_from(self.clock.now()))?;
        }
        Ok(())
    }

    /// Counts one back-channel logout naming `provider`'s issuer (the token's
    /// signature is checked after this); `Err(retry_after)` when over the
    /// provider's budget.
    pub fn backchannel_logout(&self, provider: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.backchannel else {
            return Ok(());
        };
        limiter
            .check_key(&provider.to_string())
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
        for limiter in [&self.requests, &self.auth_failures, &self.sites]
            .into_iter()
            .flatten()
        {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some(limiter) = &self.backchannel {
            limiter.retain_recent();
        }
        let now = Instant::now();
        self.auth_blocked
            .lock()
            .expect("rate limit lock poisoned")
            .retain(|_, until| *until > now);
    }
}

/// The client's address: the peer's, or — when the peer is a trusted proxy —
/// the nearest address in the forwarding chain of `header` that is not a
/// trusted proxy.
pub fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
    header: ForwardedHeader,
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    // The chain, nearest hop last, from the one header the proxy writes.
    let chain: Vec<IpAddr> = match header {
        ForwardedHeader::XForwardedFor => headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|part| parse_forwarded_addr(part.trim()))
            .collect(),
        ForwardedHeader::Forwarded => headers
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
            .collect(),
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

    const XFF: ForwardedHeader = ForwardedHeader::XForwardedFor;
    const FWD: ForwardedHeader = ForwardedHeader::Forwarded;

    fn config(per_second: u32, burst: u32) -> RateLimitConfig {
        RateLimitConfig {
            per_second,
            burst,
            backchannel_per_second: 2,
            backchannel_burst: 5,
            trusted_proxies: vec![],
            forwarded_header: XFF,
        }
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let xff = headers(&[("x-forwarded-for", "203.0.113.7, 10.1.1.1")]);
        // Anyone else's header is ignored: a client cannot pick its address.
        assert_eq!(
            client_ip(ip("198.51.100.2"), &xff, &trusted, XFF),
            ip("198.51.100.2")
        );
        // From a trusted proxy, the nearest untrusted hop.
        assert_eq!(
            client_ip(ip("10.0.0.5"), &xff, &trusted, XFF),
            ip("203.0.113.7")
        );
        // A spoofed leftmost entry does not win over the real client.
        let spoofed = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.7")]);
        assert_eq!(
            client_ip(ip("10.0.0.5"), &spoofed, &trusted, XFF),
            ip("203.0.113.7")
        );
        // Forwarded (RFC 7239), with a port and IPv6 brackets.
        let fwd = headers(&[(
            "forwarded",
            r#"for="[2001:db8::1]:4711";proto=https, for=10.2.2.2"#,
        )]);
        assert_eq!(
            client_ip(ip("10.0.0.5"), &fwd, &trusted, FWD),
            ip("2001:db8::1")
        );
        // Only the configured header counts: a client that writes the other
        // one itself (the proxy only appends to its own) chooses nothing.
        let both = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("forwarded", "for=203.0.113.7"),
        ]);
        assert_eq!(
            client_ip(ip("10.0.0.5"), &both, &trusted, FWD),
            ip("203.0.113.7")
        );
        assert_eq!(
            client_ip(ip("10.0.0.5"), &both, &trusted, XFF),
            ip("1.1.1.1")
        );
        assert_eq!(
            client_ip(ip("10.0.0.5"), &fwd, &trusted, XFF),
            ip("10.0.0.5"),
            "no X-Forwarded-For: the proxy itself"
        );
        // No header: the proxy itself.
        assert_eq!(
            client_ip(ip("10.0.0.5"), &HeaderMap::new(), &trusted, XFF),
            ip("10.0.0.5")
        );
        // Nobody trusted: always the peer.
        assert_eq!(client_ip(ip("10.0.0.5"), &xff, &[], XFF), ip("10.0.0.5"));
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
        let limits = RateLimits::new(config(1, 3));
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
    fn an_ipv6_site_cannot_multiply_its_budget_by_rotating_64s() {
        let limits = RateLimits::new(config(1, 2));
        // 16 /64s of one /48 each spend their own 2 and the site's 32 ...
        for n in 0..16 {
            for _ in 0..2 {
                assert!(limits.request(ip(&format!("2001:db8:1:{n:x}::1"))).is_ok());
            }
        }
        // ... so a 17th /64 of the same /48 is turned away, another /48 is not.
        assert!(limits.request(ip("2001:db8:1:99::1")).is_err());
        assert!(limits.request(ip("2001:db8:2:99::1")).is_ok());
    }

    #[test]
    fn backchannel_logouts_have_a_budget_per_provider() {
        let limits = RateLimits::new(config(1, 1));
        for _ in 0..5 {
            assert!(limits.backchannel_logout("entra").is_ok());
        }
        assert!(limits.backchannel_logout("entra").is_err());
        assert!(limits.backchannel_logout("okta").is_ok(), "per provider");
        assert!(
            limits.request(ip("192.0.2.1")).is_ok(),
            "apart from the addresses' budget"
        );
    }

    #[test]
    fn zero_per_second_turns_limiting_off() {
        let limits = RateLimits::new(config(0, 0));
        for _ in 0..1000 {
            assert!(limits.request(ip("192.0.2.1")).is_ok());
        }
    }
}
