//! Config parsing: defaults, environment overrides, unknown keys, inline
//! secrets, and the fixture the rules tests (in `rules`) share.

mod rules;

use crate::secret::ExposeSecret as _;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::chat_token::{SigningAlg, SigningKey};
use crate::vault::VaultKeyRing;

/// A directory with a vault key and a signing key, like a fresh install.
pub(super) struct Fixture {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
}

impl Fixture {
    pub(super) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("vault.key"),
            VaultKeyRing::generate_key().expose_secret(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("signing.pem"),
            SigningKey::generate_pem(SigningAlg::EdDsa).expose_secret(),
        )
        .unwrap();
        let mut env = HashMap::new();
        env.insert(
            "CHATGATE_VAULT_KEY".to_string(),
            VaultKeyRing::generate_key().expose_secret().to_string(),
        );
        env.insert(
            "ENTRA_CLIENT_SECRET".to_string(),
            "entra-secret-value-123".to_string(),
        );
        env.insert(
            "SUPPORT_HOST_SECRET".to_string(),
            "a-host-secret-of-at-least-32-bytes!!".to_string(),
        );
        Self { dir, env }
    }

    fn with_env(mut self, k: &str, v: &str) -> Self {
        self.env.insert(k.to_string(), v.to_string());
        self
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(super) fn load(&self, toml: &str) -> Result<Loaded, ConfigError> {
        let env = self.env.clone();
        let lookup = move |k: &str| env.get(k).cloned();
        Config::from_toml(toml, self.path(), &lookup)
    }

    fn errors(&self, toml: &str) -> Vec<Problem> {
        match self.load(toml) {
            Ok(_) => panic!("expected problems in:\n{toml}"),
            Err(e) => e.problems.errors,
        }
    }
}

pub(super) const MINIMAL: &str = r#"
public_url = "https://auth.example.com"
[vault]
keys = [{ id = "2026-11", key_file = "vault.key" }]
[signing]
key_file = "signing.pem"
"#;

/// A full configuration (as docs/reference.md describes it), with files that
/// exist in the fixture.
pub(super) const FULL: &str = r#"
public_url   = "https://auth.example.com"
listen       = "0.0.0.0:8443"
database_url = "sqlite://chatgate.db?mode=rwc"
chat_token_ttl = "15m"
refresh_skew   = "60s"
session_idle   = "1h"
session_max    = "12h"
max_host_token_ttl = "5m"
clock_skew     = "30s"
log_format = "json"
[vault]
keys = [{ id = "2026-11", key_env = "CHATGATE_VAULT_KEY" }, { id = "2026-05", key_file = "vault.key" }]
[signing]
key_file = "signing.pem"
[[providers]]
id = "entra"
issuer = "https://login.microsoftonline.com/tenant/v2.0"
client_id = "client-1"
client_secret_env = "ENTRA_CLIENT_SECRET"
user_id_claim = "oid"
[[apps]]
id = "support"
origins = ["https://www.contoso.com"]
provider = "entra"
scopes = ["openid", "profile", "email", "offline_access"]
chat_audience = "https://bot.contoso.com"
host_keys = [
  { kid = "2026-11", alg = "HS256", secret_env = "SUPPORT_HOST_SECRET" },
  { kid = "ed-1", alg = "EdDSA", public_key_file = "host-ed.pem", issuer = "https://www.contoso.com" },
]
"#;

pub(super) fn write_host_public_key(f: &Fixture) {
    use ed25519_dalek::pkcs8::EncodePublicKey as _;
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let pem = key
        .verifying_key()
        .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .unwrap();
    std::fs::write(f.path().join("host-ed.pem"), pem).unwrap();
}

pub(super) fn keys_of(problems: &[Problem]) -> Vec<&str> {
    problems.iter().map(|p| p.key.as_str()).collect()
}

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let f = Fixture::new();
    let Loaded { config, warnings } = f.load(MINIMAL).unwrap();
    assert_eq!(config.public_url.issuer(), "https://auth.example.com");
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.chat_token_ttl, Duration::from_secs(900));
    assert_eq!(config.refresh_skew, Duration::from_secs(60));
    assert_eq!(config.session_idle, Duration::from_secs(3600));
    assert_eq!(config.session_max, Duration::from_secs(12 * 3600));
    assert_eq!(config.max_host_token_ttl, Duration::from_secs(300));
    assert_eq!(config.clock_skew, Duration::from_secs(30));
    assert_eq!(config.log.format, LogFormat::Text);
    assert_eq!(config.database.max_connections, 10);
    // the SQLite file sits next to the config
    let expected = format!(
        "sqlite://{}?mode=rwc",
        f.path().join("chatgate.db").display()
    );
    assert_eq!(config.database.display, expected);
    assert!(matches!(
        config.database.kind,
        crate::store::DatabaseKind::Sqlite(_)
    ));
    assert_eq!(keys_of(&warnings), ["apps"]);
}

#[test]
fn the_design_example_parses_into_typed_values() {
    let f = Fixture::new();
    write_host_public_key(&f);
    let Loaded { config, warnings } = f.load(FULL).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.listen.to_string(), "0.0.0.0:8443");
    assert_eq!(config.log.format, LogFormat::Json);
    let ids: Vec<&str> = config.vault_keys.key_ids().map(|k| k.as_str()).collect();
    assert_eq!(ids, ["2026-11", "2026-05"]);
    let entra = config.provider("entra").unwrap();
    assert_eq!(entra.user_id_claim, "oid");
    assert_eq!(entra.client_auth, ClientAuth::ClientSecretBasic);
    assert_eq!(
        entra.client_secret.as_ref().unwrap().expose_secret(),
        "entra-secret-value-123"
    );
    assert_eq!(entra.accepted_audiences, ["client-1"]);
    let app = config.app("support").unwrap();
    assert_eq!(app.origins[0].as_str(), "https://www.contoso.com");
    assert_eq!(app.provider.as_ref().unwrap().as_str(), "entra");
    assert_eq!(app.host_keys.len(), 2);
    assert_eq!(app.host_keys[0].alg, HostKeyAlg::Hs256);
    assert_eq!(app.host_keys[1].alg, HostKeyAlg::EdDsa);
    assert_eq!(
        app.host_keys[1].issuer.as_deref(),
        Some("https://www.contoso.com")
    );
}

#[test]
fn environment_overrides_top_level_and_nested_keys() {
    let f = Fixture::new()
        .with_env("CHATGATE_PUBLIC_URL", "https://chat.example.org")
        .with_env("CHATGATE_CHAT_TOKEN_TTL", "5m")
        .with_env("CHATGATE_DATABASE_MAX_CONNECTIONS", "3")
        .with_env("CHATGATE_LOG_FORMAT", "json")
        .with_env("CHATGATE_PROVIDERS_ENTRA_CLIENT_ID", "from-env")
        .with_env(
            "CHATGATE_APPS_SUPPORT_ORIGINS",
            "https://a.example, https://b.example",
        )
        .with_env(
            "CHATGATE_APPS_SUPPORT_CHAT_AUDIENCE",
            "https://bot.example.org",
        )
        .with_env(
            "CHATGATE_APPS_SUPPORT_HOST_KEYS_2026_11_SECRET_ENV",
            "OTHER_SECRET",
        )
        .with_env("OTHER_SECRET", "another-host-secret-of-at-least-32-bytes");
    write_host_public_key(&f);
    let config = f.load(FULL).unwrap().config;
    assert_eq!(config.public_url.issuer(), "https://chat.example.org");
    assert_eq!(config.chat_token_ttl, Duration::from_secs(300));
    assert_eq!(config.database.max_connections, 3);
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(config.provider("entra").unwrap().client_id, "from-env");
    let app = config.app("support").unwrap();
    let origins: Vec<&str> = app.origins.iter().map(|o| o.as_str()).collect();
    assert_eq!(origins, ["https://a.example", "https://b.example"]);
    assert_eq!(app.chat_audience, "https://bot.example.org");
    match &app.host_keys[0].key {
        HostKeyMaterial::Secret(s) => assert_eq!(
            s.expose_secret(),
            b"another-host-secret-of-at-least-32-bytes"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn environment_can_add_a_section_the_file_lacks() {
    let f = Fixture::new().with_env("CHATGATE_SIGNING_KEY_FILE", "signing.pem");
    let toml = MINIMAL.replace("[signing]\nkey_file = \"signing.pem\"\n", "");
    assert!(f.load(&toml).is_ok());
}

#[test]
fn a_bad_override_names_its_variable() {
    let f = Fixture::new()
        .with_env("CHATGATE_DATABASE_MAX_CONNECTIONS", "many")
        .with_env("CHATGATE_CLOCK_SKEW", "forever");
    let errors = f.errors(MINIMAL);
    let text: Vec<String> = errors.iter().map(|p| p.to_string()).collect();
    assert!(
        text.iter()
            .any(|t| t.starts_with("database_max_connections:")
                && t.contains("CHATGATE_DATABASE_MAX_CONNECTIONS")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.starts_with("clock_skew:") && t.contains("(set by CHATGATE_CLOCK_SKEW)")),
        "{text:?}"
    );
}

#[test]
fn every_unknown_key_is_reported() {
    let f = Fixture::new();
    let toml = format!("public_urll = \"x\"\n{MINIMAL}\n[tls]\ncertificate = \"a\"\n");
    let errors = f.errors(&toml);
    let keys = keys_of(&errors);
    assert!(keys.contains(&"public_urll"), "{errors:?}");
    assert!(keys.contains(&"tls.certificate"), "{errors:?}");
}

#[test]
fn an_inline_secret_is_refused_with_the_right_alternative() {
    let f = Fixture::new();
    let toml = FULL.replace(
        "client_secret_env = \"ENTRA_CLIENT_SECRET\"",
        "client_secret = \"s3cr3t-value\"",
    );
    let errors = f.errors(&toml);
    let p = errors
        .iter()
        .find(|p| p.key.ends_with("client_secret"))
        .expect("client_secret reported");
    assert!(
        p.message
            .contains("client_secret_env or client_secret_file"),
        "{p}"
    );
    // and the secret value itself is not echoed anywhere
    assert!(errors.iter().all(|p| !p.to_string().contains("s3cr3t")));
    let toml = MINIMAL.replace("key_file = \"vault.key\"", "key = \"AAAA\"");
    let errors = f.errors(&toml);
    assert!(
        errors
            .iter()
            .any(|p| p.key.ends_with(".key") && p.message.contains("key_env or key_file")),
        "{errors:?}"
    );
}

#[test]
fn all_problems_are_listed_at_once_with_their_keys() {
    let f = Fixture::new();
    let toml = r#"
public_url = "http://auth.example.com"
listen = "everywhere"
database_url = "mysql://x"
chat_token_ttl = "15 parsecs"
session_idle = "13h"
log_format = "yaml"
[vault]
keys = [{ id = "bad id", key_file = "vault.key" }]
[[providers]]
id = "entra"
issuer = "not a url"
user_id_claim = "email"
[[apps]]
id = "support"
origins = ["https://ok.example", "http://insecure.example", "https://ok.example"]
provider = "okta"
scopes = ["profile"]
"#;
    let errors = f.errors(toml);
    let keys = keys_of(&errors);
    for expected in [
        "public_url",
        "listen",
        "database_url",
        "chat_token_ttl",
        "session_idle",
        "log_format",
        "vault.keys.bad id.id",
        "signing",
        "providers.entra.issuer",
        "providers.entra.client_id",
        "providers.entra.user_id_claim",
        "apps.support.origins[1]",
        "apps.support.origins[2]",
        "apps.support.provider",
        "apps.support.chat_audience",
    ] {
        assert!(
            keys.contains(&expected),
            "{expected} missing from {errors:#?}"
        );
    }
    // a ConfigError prints one line per problem
    let err = f.load(toml).unwrap_err();
    let printed = err.to_string();
    assert!(
        printed.contains(&format!("has {} problems", errors.len())),
        "{printed}"
    );
}

/// The duration table `build` walks is the one the reference documents:
/// every key has its row, with its default.
#[test]
fn every_duration_key_is_documented_with_its_default() {
    let reference =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/reference.md")).unwrap();
    assert!(super::build::DURATION_LIMITS.len() >= 16);
    for (key, default, min, max) in super::build::DURATION_LIMITS {
        assert!(min <= max, "{key}: {min:?} > {max:?}");
        let row = format!("| `{key}` | `{default}` |");
        assert!(
            reference.contains(&row),
            "docs/reference.md has no row starting {row}"
        );
    }
}
