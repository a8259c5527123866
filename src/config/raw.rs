//! The configuration file as written: TOML deserialized into plain structs, with
//! the `CHATGATE_<KEY>` environment overrides applied to the TOML tree first.
//! Nothing here is validated beyond its TOML type; `super::build` does that.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::{Table, Value};

use super::Problems;

#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    pub public_url: Option<String>,
    pub listen: Option<String>,
    pub database_url: Option<String>,
    pub database_max_connections: Option<u32>,
    pub chat_token_ttl: Option<String>,
    pub refresh_skew: Option<String>,
    pub refresh_lease: Option<String>,
    pub session_idle: Option<String>,
    pub session_max: Option<String>,
    pub max_host_token_ttl: Option<String>,
    pub max_id_token_age: Option<String>,
    pub clock_skew: Option<String>,
    pub flow_ttl: Option<String>,
    pub request_timeout: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub shutdown_drain: Option<String>,
    pub listen_reuse_port: Option<bool>,
    pub read_cache_ttl: Option<String>,
    pub audit_retention: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_connections: Option<u64>,
    pub max_connections_per_address: Option<u64>,
    pub forwarded_header: Option<String>,
    pub log_format: Option<String>,
    pub log_level: Option<String>,
    pub idp_ca_file: Option<String>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    pub rate_limit: Option<RawRateLimit>,
    pub tls: Option<RawTls>,
    pub vault: Option<RawVault>,
    pub signing: Option<RawSigning>,
    #[serde(default)]
    pub providers: Vec<RawProvider>,
    #[serde(default)]
    pub apps: Vec<RawApp>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRateLimit {
    pub per_second: Option<u32>,
    pub burst: Option<u32>,
    pub backchannel_per_second: Option<u32>,
    pub backchannel_burst: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawTls {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawVault {
    #[serde(default)]
    pub keys: Vec<RawVaultKey>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawVaultKey {
    pub id: Option<String>,
    pub key_env: Option<String>,
    pub key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawSigning {
    pub key_file: Option<String>,
    pub key_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawProvider {
    pub id: Option<String>,
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub client_secret_env: Option<String>,
    pub client_secret_file: Option<String>,
    pub client_auth: Option<String>,
    pub user_id_claim: Option<String>,
    pub frontchannel_logout_id: Option<String>,
    pub multi_tenant: Option<bool>,
    pub accepted_audiences: Option<Vec<String>>,
    pub extra_auth_params: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawApp {
    pub id: Option<String>,
    #[serde(default)]
    pub origins: Vec<String>,
    pub provider: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub chat_audience: Option<String>,
    pub token_exchange: Option<bool>,
    pub bind_chat_tokens: Option<String>,
    pub channel_binds_user_ids: Option<bool>,
    pub events_url: Option<String>,
    pub events_secret_env: Option<String>,
    pub events_secret_file: Option<String>,
    #[serde(default)]
    pub host_keys: Vec<RawHostKey>,
    pub direct_line: Option<RawDirectLine>,
}

/// `[apps.direct_line]`: Direct Line tokens bound to the verified user.
#[derive(Debug, Default, Deserialize)]
pub struct RawDirectLine {
    pub secret_env: Option<String>,
    pub secret_file: Option<String>,
    pub endpoint: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawHostKey {
    pub kid: Option<String>,
    pub alg: Option<String>,
    pub secret_env: Option<String>,
    pub secret_file: Option<String>,
    pub public_key_file: Option<String>,
    pub issuer: Option<String>,
}

/// The TOML type of a configuration key, used to read its environment override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    Bool,
    /// A list of strings: a TOML array (`["a", "b"]`) or comma-separated text.
    StrList,
    /// A table of strings, written as a TOML inline table.
    StrMap,
}

use Kind::*;

pub const TOP_KEYS: &[(&str, Kind)] = &[
    ("public_url", Str),
    ("listen", Str),
    ("database_url", Str),
    ("database_max_connections", Int),
    ("chat_token_ttl", Str),
    ("refresh_skew", Str),
    ("refresh_lease", Str),
    ("session_idle", Str),
    ("session_max", Str),
    ("max_host_token_ttl", Str),
    ("max_id_token_age", Str),
    ("clock_skew", Str),
    ("flow_ttl", Str),
    ("request_timeout", Str),
    ("shutdown_timeout", Str),
    ("shutdown_drain", Str),
    ("listen_reuse_port", Bool),
    ("read_cache_ttl", Str),
    ("audit_retention", Str),
    ("max_body_bytes", Int),
    ("header_read_timeout", Str),
    ("idle_timeout", Str),
    ("max_connections", Int),
    ("max_connections_per_address", Int),
    ("log_format", Str),
    ("log_level", Str),
    ("idp_ca_file", Str),
    ("trusted_proxies", StrList),
    ("forwarded_header", Str),
];
pub const TLS_KEYS: &[(&str, Kind)] = &[("cert_file", Str), ("key_file", Str)];
pub const RATE_LIMIT_KEYS: &[(&str, Kind)] = &[
    ("per_second", Int),
    ("burst", Int),
    ("backchannel_per_second", Int),
    ("backchannel_burst", Int),
];
pub const SIGNING_KEYS: &[(&str, Kind)] = &[("key_file", Str), ("key_env", Str)];
pub const VAULT_KEY_KEYS: &[(&str, Kind)] = &[("key_env", Str), ("key_file", Str)];
pub const PROVIDER_KEYS: &[(&str, Kind)] = &[
    ("issuer", Str),
    ("client_id", Str),
    ("client_secret_env", Str),
    ("client_secret_file", Str),
    ("client_auth", Str),
    ("user_id_claim", Str),
    ("frontchannel_logout_id", Str),
    ("multi_tenant", Bool),
    ("accepted_audiences", StrList),
    ("extra_auth_params", StrMap),
];
pub const APP_KEYS: &[(&str, Kind)] = &[
    ("origins", StrList),
    ("provider", Str),
    ("scopes", StrList),
    ("chat_audience", Str),
    ("token_exchange", Bool),
    ("bind_chat_tokens", Str),
    ("channel_binds_user_ids", Bool),
    ("events_url", Str),
    ("events_secret_env", Str),
    ("events_secret_file", Str),
];
pub const DIRECT_LINE_KEYS: &[(&str, Kind)] =
    &[("secret_env", Str), ("secret_file", Str), ("endpoint", Str)];
pub const HOST_KEY_KEYS: &[(&str, Kind)] = &[
    ("alg", Str),
    ("secret_env", Str),
    ("secret_file", Str),
    ("public_key_file", Str),
    ("issuer", Str),
];

/// Keys that would hold a secret inline. They are refused with a pointer to the
/// `_env` / `_file` form instead of the generic "unknown key".
const INLINE_SECRET_KEYS: &[(&str, &str)] = &[
    ("client_secret", "client_secret_env or client_secret_file"),
    ("secret", "secret_env or secret_file"),
    ("key", "key_env or key_file"),
    ("private_key", "key_env or key_file"),
    ("password", "an environment variable or a file"),
];

/// The environment variable that overrides a key path such as
/// `["apps", "support", "chat_audience"]`: `CHATGATE_APPS_SUPPORT_CHAT_AUDIENCE`.
pub fn env_name(path: &[&str]) -> String {
    let mut name = String::from("CHATGATE");
    for segment in path {
        name.push('_');
        name.extend(segment.chars().map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        }));
    }
    name
}

/// Where an environment override came from, for error messages.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// key path (as printed in problems) -> environment variable name
    pub by_key: BTreeMap<String, String>,
}

/// Applies every `CHATGATE_<KEY>` variable that names a configuration key to the
/// TOML tree. Array entries (`providers`, `apps`, `vault.keys`, `host_keys`) are
/// addressed by their `id` / `kid`, so they must exist in the file.
pub fn apply_env_overrides(
    root: &mut Table,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Problems,
) -> Overrides {
    let mut overrides = Overrides::default();
    let mut set = |table: &mut Table, path: Vec<String>, keys: &[(&str, Kind)]| {
        for (key, kind) in keys {
            let mut full: Vec<&str> = path.iter().map(String::as_str).collect();
            full.push(key);
            let var = env_name(&full);
            let Some(text) = env(&var) else { continue };
            let shown = super::key_path(&full);
            match parse_env_value(&text, *kind) {
                Ok(value) => {
                    table.insert((*key).to_string(), value);
                    overrides.by_key.insert(shown, var);
                }
                Err(why) => problems.error(shown, format!("{why} (set by {var})")),
            }
        }
    };

    set(root, vec![], TOP_KEYS);
    for (section, keys) in [
        ("tls", TLS_KEYS),
        ("signing", SIGNING_KEYS),
        ("rate_limit", RATE_LIMIT_KEYS),
    ] {
        let wanted = keys
            .iter()
            .any(|(k, _)| env(&env_name(&[section, k])).is_some());
        if !root.contains_key(section) && !wanted {
            continue;
        }
        let entry = root
            .entry(section.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        if let Value::Table(t) = entry {
            set(t, vec![section.to_string()], keys);
        }
    }
    if let Some(Value::Table(vault)) = root.get_mut("vault") {
        for_each_entry(vault, "keys", "id", |id, entry| {
            set(
                entry,
                vec!["vault".into(), "keys".into(), id],
                VAULT_KEY_KEYS,
            )
        });
    }
    for_each_entry(root, "providers", "id", |id, entry| {
        set(entry, vec!["providers".into(), id], PROVIDER_KEYS)
    });
    for_each_entry(root, "apps", "id", |id, app| {
        set(app, vec!["apps".into(), id.clone()], APP_KEYS);
        if let Some(Value::Table(direct_line)) = app.get_mut("direct_line") {
            set(
                direct_line,
                vec!["apps".into(), id.clone(), "direct_line".into()],
                DIRECT_LINE_KEYS,
            );
        }
        for_each_entry(app, "host_keys", "kid", |kid, key| {
            set(
                key,
                vec!["apps".into(), id.clone(), "host_keys".into(), kid],
                HOST_KEY_KEYS,
            )
        });
    });
    overrides
}

/// Calls `f(id, entry)` for each table in the array `table[array]` that has a
/// string `id_key`.
fn for_each_entry(
    table: &mut Table,
    array: &str,
    id_key: &str,
    mut f: impl FnMut(String, &mut Table),
) {
    if let Some(Value::Array(items)) = table.get_mut(array) {
        for item in items.iter_mut() {
            if let Value::Table(entry) = item
                && let Some(Value::String(id)) = entry.get(id_key)
            {
                let id = id.clone();
                f(id, entry);
            }
        }
    }
}

fn parse_env_value(text: &str, kind: Kind) -> Result<Value, String> {
    match kind {
        Str => Ok(Value::String(text.to_string())),
        Int => text
            .trim()
            .parse::<i64>()
            .map(Value::Integer)
            .map_err(|_| format!("expected a whole number, found {text:?}")),
        Bool => match text.trim() {
            "true" | "1" | "yes" => Ok(Value::Boolean(true)),
            "false" | "0" | "no" => Ok(Value::Boolean(false)),
            _ => Err(format!("expected true or false, found {text:?}")),
        },
        StrList => {
            let trimmed = text.trim();
            if trimmed.starts_with('[') {
                parse_toml_value(trimmed).and_then(|v| match v {
                    Value::Array(items) if items.iter().all(Value::is_str) => {
                        Ok(Value::Array(items))
                    }
                    _ => Err("expected a list of strings".to_string()),
                })
            } else {
                Ok(Value::Array(
                    trimmed
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| Value::String(s.to_string()))
                        .collect(),
                ))
            }
        }
        StrMap => parse_toml_value(text.trim()).and_then(|v| match v {
            Value::Table(t) if t.values().all(Value::is_str) => Ok(Value::Table(t)),
            _ => Err(
                "expected an inline table of strings such as { access_type = \"offline\" }".into(),
            ),
        }),
    }
}

fn parse_toml_value(text: &str) -> Result<Value, String> {
    let doc: Table = format!("v = {text}")
        .parse()
        .map_err(|e: toml::de::Error| format!("not a TOML value: {}", e.message()))?;
    doc.get("v")
        .cloned()
        .ok_or_else(|| "not a TOML value".to_string())
}

/// Deserializes the (overridden) TOML tree, reporting every unknown key and the
/// first type error with its key path.
pub fn deserialize(root: Table, problems: &mut Problems) -> Option<RawConfig> {
    let mut unknown = Vec::new();
    let result: Result<RawConfig, _> =
        serde_ignored::deserialize(Value::Table(root.clone()), |path| {
            unknown.push(path.to_string())
        });
    for path in unknown {
        // serde_ignored writes "?" for an `Option` layer; it is not part of the key.
        let path = path
            .split('.')
            .filter(|s| *s != "?")
            .collect::<Vec<_>>()
            .join(".");
        let last = path.rsplit('.').next().unwrap_or(&path).to_string();
        match INLINE_SECRET_KEYS.iter().find(|(k, _)| *k == last) {
            Some((_, instead)) => problems.error(
                path,
                format!("secrets are never written in the config file; use {instead}"),
            ),
            None => problems.error(path, "unknown key".to_string()),
        }
    }
    match result {
        Ok(raw) => Some(raw),
        Err(first) => {
            // Once more, to learn which key holds the value of the wrong type.
            match serde_path_to_error::deserialize::<_, RawConfig>(Value::Table(root)) {
                Err(e) => {
                    let path = e.path().to_string();
                    problems.error(path, e.into_inner().message().to_string());
                }
                Ok(_) => problems.error("(file)".to_string(), first.message().to_string()),
            }
            None
        }
    }
}
