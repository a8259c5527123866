//! `RawConfig` to [`Config`](super::Config): every key checked, every problem
//! collected; the top-level keys, TLS, vault and signing keys here, providers
//! and apps in `entries`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use super::raw::{Overrides, RawConfig};
use super::sources::Sources;
use super::{Problems, key_path};
use crate::chat_token::SigningKey;
use crate::domain::KeyId;
use crate::store::DatabaseOptions;
use crate::vault::VaultKeyRing;

use super::check::{Check, HOUR, MINUTE};
use super::entries::{build_apps, build_providers};
use super::types::*;

/// Every duration key: its default, shortest and longest value. `build`
/// walks this table; a new key is one line here (and its raw field).
macro_rules! durations {
    ($($key:ident: $default:literal, $min:expr, $max:expr;)*) => {
        /// The checked durations, one field per key.
        struct Durations {
            $($key: Duration,)*
        }

        /// The table as data: `(key, default, min, max)`.
        #[cfg(test)]
        pub(super) const DURATION_LIMITS: &[(&str, &str, Duration, Duration)] =
            &[$((stringify!($key), $default, $min, $max),)*];

        fn durations(c: &mut Check<'_>, raw: &RawConfig) -> Durations {
            Durations {
                $($key: c.duration(stringify!($key), &raw.$key, $default, $min, $max),)*
            }
        }
    };
}

const SECOND: Duration = Duration::from_secs(1);
const DAY: Duration = Duration::from_secs(24 * 3600);

durations! {
    chat_token_ttl: "15m", MINUTE, DAY;
    refresh_skew: "60s", Duration::ZERO, HOUR;
    refresh_lease: "30s", Duration::from_secs(2), Duration::from_secs(600);
    session_idle: "1h", MINUTE, Duration::from_secs(30 * 24 * 3600);
    session_max: "12h", MINUTE, Duration::from_secs(90 * 24 * 3600);
    max_host_token_ttl: "5m", Duration::from_secs(10), HOUR;
    max_id_token_age: "5m", MINUTE, DAY;
    clock_skew: "30s", Duration::ZERO, Duration::from_secs(300);
    flow_ttl: "10m", MINUTE, HOUR;
    request_timeout: "30s", SECOND, Duration::from_secs(600);
    shutdown_timeout: "30s", Duration::ZERO, Duration::from_secs(600);
    shutdown_drain: "5s", Duration::ZERO, Duration::from_secs(600);
    read_cache_ttl: "1s", Duration::ZERO, MINUTE;
    audit_retention: "90d", DAY, Duration::from_secs(3650 * 24 * 3600);
    header_read_timeout: "10s", SECOND, Duration::from_secs(300);
    idle_timeout: "60s", SECOND, HOUR;
}

pub(super) fn build(
    raw: RawConfig,
    overrides: &Overrides,
    src: Sources<'_>,
    problems: &mut Problems,
) -> Option<Config> {
    let mut c = Check {
        problems,
        overrides,
    };

    let public_url = c
        .required("public_url", &raw.public_url)
        .and_then(|v| c.parse("public_url", PublicUrl::parse(v)));
    let listen_text = raw.listen.as_deref().unwrap_or("127.0.0.1:8080");
    let listen = c.parse(
        "listen",
        listen_text
            .parse::<SocketAddr>()
            .map_err(|_| format!("{listen_text:?} is not an address such as 0.0.0.0:8443")),
    );

    let max_connections = raw.database_max_connections.unwrap_or(10);
    if !(1..=1000).contains(&max_connections) {
        c.error("database_max_connections", "must be between 1 and 1000");
    }
    let db_url = raw
        .database_url
        .as_deref()
        .unwrap_or("sqlite://chatgate.db?mode=rwc");
    if DatabaseOptions::has_password(db_url) && !overrides.by_key.contains_key("database_url") {
        c.error(
            "database_url",
            "contains a password; secrets are never written in the config file: set the whole URL \
             in CHATGATE_DATABASE_URL, or the password in PGPASSWORD",
        );
    }
    let database = c.parse(
        "database_url",
        DatabaseOptions::parse(db_url, src.dir, max_connections.max(1)),
    );

    let d = durations(&mut c, &raw);
    if d.session_idle > d.session_max {
        c.error("session_idle", "must not be longer than session_max");
    }
    let max_connections = raw.max_connections.unwrap_or(4096);
    if !(1..=1_000_000).contains(&max_connections) {
        c.error("max_connections", "must be between 1 and 1000000");
    }
    let max_connections_per_address = raw.max_connections_per_address.unwrap_or(256);
    if !(1..=1_000_000).contains(&max_connections_per_address) {
        c.error(
            "max_connections_per_address",
            "must be between 1 and 1000000",
        );
    }
    let forwarded_header = match raw.forwarded_header.as_deref() {
        None | Some("x-forwarded-for") => super::ForwardedHeader::XForwardedFor,
        Some("forwarded") => super::ForwardedHeader::Forwarded,
        Some(other) => {
            c.error(
                "forwarded_header",
                format!("must be \"x-forwarded-for\" or \"forwarded\", not {other:?}"),
            );
            super::ForwardedHeader::XForwardedFor
        }
    };
    let mut trusted_proxies = Vec::new();
    for entry in &raw.trusted_proxies {
        let parsed = entry
            .parse::<ipnet::IpNet>()
            .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => trusted_proxies.push(net),
            Err(_) => c.error(
                "trusted_proxies",
                format!("{entry:?} is not an address or CIDR such as 10.0.0.0/8"),
            ),
        }
    }
    let rate = raw.rate_limit.as_ref();
    let rate_limit_per_second = rate.and_then(|r| r.per_second).unwrap_or(10);
    let rate_limit_burst = rate.and_then(|r| r.burst).unwrap_or(50);
    if rate_limit_per_second > 0 && rate_limit_burst == 0 {
        c.error("rate_limit.burst", "must be at least 1");
    }
    let rate_limit_backchannel_per_second =
        rate.and_then(|r| r.backchannel_per_second).unwrap_or(100);
    let rate_limit_backchannel_burst = rate.and_then(|r| r.backchannel_burst).unwrap_or(1000);
    if rate_limit_backchannel_per_second > 0 && rate_limit_backchannel_burst == 0 {
        c.error("rate_limit.backchannel_burst", "must be at least 1");
    }
    let max_body_bytes = raw.max_body_bytes.unwrap_or(64 * 1024);
    if !(1024..=16 * 1024 * 1024).contains(&max_body_bytes) {
        c.error("max_body_bytes", "must be between 1024 and 16777216");
    }

    let format = match raw.log_format.as_deref().unwrap_or("text") {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            c.error(
                "log_format",
                format!("{other:?} is not \"text\" or \"json\""),
            );
            LogFormat::Text
        }
    };
    let level = raw.log_level.clone().unwrap_or_else(|| "info".into());
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
        c.error(
            "log_level",
            format!("{level:?} is not a tracing filter: {e}"),
        );
    }

    let idp_ca_certs = match &raw.idp_ca_file {
        Some(file) => load_certs(&mut c, "idp_ca_file", src, file),
        None => Vec::new(),
    };

    let tls = raw.tls.as_ref().and_then(|tls| {
        let cert = c.required("tls.cert_file", &tls.cert_file);
        let key = c.required("tls.key_file", &tls.key_file);
        let (cert, key) = (cert?, key?);
        let certs = load_certs(&mut c, "tls.cert_file", src, cert);
        let key = src
            .read_file(key)
            .and_then(|pem| {
                PrivateKeyDer::from_pem_slice(&pem)
                    .map_err(|e| format!("{key} holds no PEM private key: {e}"))
            })
            .map_err(|e| c.error("tls.key_file", e))
            .ok()?;
        if certs.is_empty() {
            return None;
        }
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| {
            c.error(
                "tls",
                format!("certificate and key do not form a usable pair: {e}"),
            )
        })
        .ok()?;
        Some(Arc::new(server))
    });

    let vault_keys = build_vault_keys(&mut c, &raw, src);
    let signing_key = build_signing_key(&mut c, &raw, src);

    let providers = build_providers(&mut c, &raw.providers, src);
    let apps = build_apps(&mut c, &raw.apps, &providers, src);
    if apps.is_empty() {
        c.problems.warn(
            "apps",
            "no [[apps]] are configured: no widget can sign anyone in",
        );
    }

    Some(Config {
        public_url: public_url?,
        listen: listen?,
        database: database?,
        chat_token_ttl: d.chat_token_ttl,
        refresh_skew: d.refresh_skew,
        refresh_lease: d.refresh_lease,
        session_idle: d.session_idle,
        session_max: d.session_max,
        max_host_token_ttl: d.max_host_token_ttl,
        max_id_token_age: d.max_id_token_age,
        clock_skew: d.clock_skew,
        flow_ttl: d.flow_ttl,
        request_timeout: d.request_timeout,
        shutdown_timeout: d.shutdown_timeout,
        shutdown_drain: d.shutdown_drain,
        listen_reuse_port: raw.listen_reuse_port.unwrap_or(false),
        read_cache_ttl: d.read_cache_ttl,
        audit_retention: d.audit_retention,
        max_body_bytes: max_body_bytes as usize,
        header_read_timeout: d.header_read_timeout,
        idle_timeout: d.idle_timeout,
        max_connections: max_connections as usize,
        max_connections_per_address: max_connections_per_address as usize,
        trusted_proxies,
        forwarded_header,
        rate_limit_per_second,
        rate_limit_burst,
        rate_limit_backchannel_per_second,
        rate_limit_backchannel_burst,
        log: LogConfig { format, level },
        idp_ca_certs,
        tls,
        vault_keys: vault_keys?,
        signing_key: signing_key?,
        providers,
        apps,
    })
}

fn load_certs(
    c: &mut Check<'_>,
    key: &str,
    src: Sources<'_>,
    file: &str,
) -> Vec<CertificateDer<'static>> {
    let pem = match src.read_file(file) {
        Ok(pem) => pem,
        Err(e) => {
            c.error(key, e);
            return Vec::new();
        }
    };
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    match certs {
        Ok(certs) if !certs.is_empty() => certs,
        Ok(_) => {
            c.error(key, format!("{file} holds no PEM certificate"));
            Vec::new()
        }
        Err(e) => {
            c.error(key, format!("{file} is not valid PEM: {e}"));
            Vec::new()
        }
    }
}

fn build_vault_keys(
    c: &mut Check<'_>,
    raw: &RawConfig,
    src: Sources<'_>,
) -> Option<Arc<VaultKeyRing>> {
    let Some(vault) = &raw.vault else {
        c.error(
            "vault.keys",
            "is required: at least one key, e.g. keys = [{ id = \"2026-11\", key_env = \"CHATGATE_VAULT_KEY\" }] \
             (make one with `chatgate keys generate vault`)",
        );
        return None;
    };
    if vault.keys.is_empty() {
        c.error(
            "vault.keys",
            "must list at least one key (make one with `chatgate keys generate vault`)",
        );
        return None;
    }
    let mut keys = Vec::new();
    let mut seen = HashSet::new();
    let mut ok = true;
    for (i, k) in vault.keys.iter().enumerate() {
        let idx = i.to_string();
        let name = k.id.clone().unwrap_or(idx);
        let base = key_path(&["vault", "keys", &name]);
        let id = match c.required(&format!("{base}.id"), &k.id).map(KeyId::parse) {
            Some(Ok(id)) => id,
            Some(Err(e)) => {
                c.error(&format!("{base}.id"), e.to_string());
                ok = false;
                continue;
            }
            None => {
                ok = false;
                continue;
            }
        };
        if !seen.insert(id.clone()) {
            c.error(&format!("{base}.id"), "appears twice");
            ok = false;
        }
        match src.secret(
            (&format!("{base}.key_env"), k.key_env.as_ref()),
            (&format!("{base}.key_file"), k.key_file.as_ref()),
        ) {
            Ok(Some(text)) => match VaultKeyRing::decode_key(&text) {
                Ok(bytes) => keys.push((id, bytes)),
                Err(e) => {
                    c.error(&base, format!("the key {e}"));
                    ok = false;
                }
            },
            Ok(None) => {
                c.error(&base, "needs key_env or key_file");
                ok = false;
            }
            Err(e) => {
                c.error(&base, e);
                ok = false;
            }
        }
    }
    if !ok {
        return None;
    }
    VaultKeyRing::new(keys)
        .map(Arc::new)
        .map_err(|e| c.error("vault.keys", e))
        .ok()
}

fn build_signing_key(
    c: &mut Check<'_>,
    raw: &RawConfig,
    src: Sources<'_>,
) -> Option<Arc<SigningKey>> {
    let Some(signing) = &raw.signing else {
        c.error(
            "signing",
            "is required: key_file = \"signing.pem\" or key_env (make one with `chatgate keys generate signing`)",
        );
        return None;
    };
    match src.secret(
        ("signing.key_env", signing.key_env.as_ref()),
        ("signing.key_file", signing.key_file.as_ref()),
    ) {
        Ok(Some(pem)) => SigningKey::from_pem(&pem)
            .map(Arc::new)
            .map_err(|e| c.error("signing", format!("the key {e}")))
            .ok(),
        Ok(None) => {
            c.error(
                "signing",
                "needs key_file or key_env (make one with `chatgate keys generate signing`)",
            );
            None
        }
        Err(e) => {
            c.error("signing", e);
            None
        }
    }
}
