//! The rules: durations, secrets, vault keys, the database URL, providers and
//! apps, and the example configuration documenting every key.

use super::*;

#[test]
fn durations_are_checked_for_format_and_range() {
    let f = Fixture::new();
    for (key, value, fragment) in [
        ("chat_token_ttl", "10s", "shorter than the minimum"),
        ("chat_token_ttl", "2days", "longer than the maximum"),
        ("clock_skew", "1h", "longer than the maximum"),
        ("refresh_skew", "soon", "not a duration"),
        ("max_host_token_ttl", "2h", "longer than the maximum"),
    ] {
        let errors = f.errors(&format!("{key} = \"{value}\"\n{MINIMAL}"));
        assert!(
            errors
                .iter()
                .any(|p| p.key == key && p.message.contains(fragment)),
            "{key}={value}: {errors:?}"
        );
    }
    let ok = f
        .load(&format!(
            "chat_token_ttl = \"90s\"\nsession_max = \"1day\"\n{MINIMAL}"
        ))
        .unwrap();
    assert_eq!(ok.config.chat_token_ttl, Duration::from_secs(90));
    assert_eq!(ok.config.session_max, Duration::from_secs(86400));
}

#[test]
fn the_forwarded_header_is_one_of_two() {
    let f = Fixture::new();
    let errors = f.errors(&format!("forwarded_header = \"x-real-ip\"\n{MINIMAL}"));
    assert!(
        errors
            .iter()
            .any(|p| p.key == "forwarded_header" && p.message.contains("must be")),
        "{errors:?}"
    );
    let ok = f
        .load(&format!("forwarded_header = \"forwarded\"\n{MINIMAL}"))
        .unwrap();
    assert_eq!(ok.config.forwarded_header, ForwardedHeader::Forwarded);
}

#[test]
fn secrets_must_resolve() {
    let f = Fixture::new();
    let missing_env = MINIMAL.replace("key_file = \"vault.key\"", "key_env = \"NOPE_UNSET\"");
    let errors = f.errors(&missing_env);
    assert!(
        errors
            .iter()
            .any(|p| p.message.contains("NOPE_UNSET") && p.message.contains("not set")),
        "{errors:?}"
    );

    let missing_file = MINIMAL.replace("vault.key", "nothing-here.key");
    let errors = f.errors(&missing_file);
    assert!(
        errors
            .iter()
            .any(|p| p.message.contains("nothing-here.key")),
        "{errors:?}"
    );

    let both = MINIMAL.replace(
        "key_file = \"vault.key\"",
        "key_file = \"vault.key\", key_env = \"CHATGATE_VAULT_KEY\"",
    );
    let errors = f.errors(&both);
    assert!(
        errors.iter().any(|p| p.message.contains("not both")),
        "{errors:?}"
    );

    std::fs::write(f.path().join("short.key"), "c2hvcnQ=").unwrap();
    let short = MINIMAL.replace("vault.key", "short.key");
    let errors = f.errors(&short);
    assert!(
        errors
            .iter()
            .any(|p| p.key == "vault.keys.2026-11" && p.message.contains("32 bytes")),
        "{errors:?}"
    );

    std::fs::write(f.path().join("bad.pem"), "-----BEGIN NONSENSE-----").unwrap();
    let bad_signing = MINIMAL.replace("signing.pem", "bad.pem");
    let errors = f.errors(&bad_signing);
    assert!(
        errors
            .iter()
            .any(|p| p.key == "signing" && p.message.contains("not a PEM private key")),
        "{errors:?}"
    );
}

#[test]
fn duplicate_vault_key_ids_and_missing_vault_are_errors() {
    let f = Fixture::new();
    let dup = MINIMAL.replace(
        "keys = [{ id = \"2026-11\", key_file = \"vault.key\" }]",
        "keys = [{ id = \"a\", key_file = \"vault.key\" }, { id = \"a\", key_env = \"CHATGATE_VAULT_KEY\" }]",
    );
    let errors = f.errors(&dup);
    assert!(
        errors
            .iter()
            .any(|p| p.key == "vault.keys.a.id" && p.message.contains("twice")),
        "{errors:?}"
    );
    let none = MINIMAL.replace(
        "[vault]\nkeys = [{ id = \"2026-11\", key_file = \"vault.key\" }]\n",
        "",
    );
    assert!(keys_of(&f.errors(&none)).contains(&"vault.keys"));
}

#[test]
fn a_database_password_belongs_in_the_environment() {
    let f = Fixture::new();
    let toml =
        format!("database_url = \"postgres://chatgate:hunter2@db.internal/chatgate\"\n{MINIMAL}");
    let errors = f.errors(&toml);
    assert!(
        errors
            .iter()
            .any(|p| p.key == "database_url" && p.message.contains("password")),
        "{errors:?}"
    );
    assert!(errors.iter().all(|p| !p.to_string().contains("hunter2")));

    let f = f.with_env(
        "CHATGATE_DATABASE_URL",
        "postgres://chatgate:hunter2@db.internal/chatgate",
    );
    let config = f.load(MINIMAL).unwrap().config;
    assert!(matches!(
        config.database.kind,
        crate::store::DatabaseKind::Postgres(_)
    ));
    assert!(
        !config.database.display.contains("hunter2"),
        "{}",
        config.database.display
    );
    assert!(!format!("{config:?}").contains("hunter2"));
}

#[test]
fn in_memory_sqlite_is_refused() {
    let f = Fixture::new();
    let errors = f.errors(&format!("database_url = \"sqlite::memory:\"\n{MINIMAL}"));
    assert_eq!(keys_of(&errors), ["database_url"]);
}

#[test]
fn debug_output_holds_no_secret() {
    let f = Fixture::new();
    write_host_public_key(&f);
    let config = f.load(FULL).unwrap().config;
    let printed = format!("{config:?}");
    let vault_file = std::fs::read_to_string(f.path().join("vault.key")).unwrap();
    let signing_file = std::fs::read_to_string(f.path().join("signing.pem")).unwrap();
    for secret in [
        "entra-secret-value-123",
        "a-host-secret-of-at-least-32-bytes!!",
        f.env["CHATGATE_VAULT_KEY"].as_str(),
        vault_file.trim(),
        signing_file.lines().nth(1).unwrap(),
    ] {
        assert!(!printed.contains(secret), "Debug leaks {secret}");
    }
}

#[test]
fn provider_and_app_rules() {
    let f = Fixture::new();
    write_host_public_key(&f);
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "user_id_claim = \"oid\"",
            "user_id_claim = \"preferred_username\"",
            "providers.entra.user_id_claim",
            "not a stable identifier",
        ),
        (
            "id = \"entra\"",
            "id = \"host\"",
            "providers.host.id",
            "reserved",
        ),
        (
            "client_secret_env = \"ENTRA_CLIENT_SECRET\"",
            "client_secret_env = \"ENTRA_CLIENT_SECRET\"\nclient_auth = \"private_key_jwt\"",
            "providers.entra.client_auth",
            "is not client_secret_basic",
        ),
        (
            "secret_env = \"SUPPORT_HOST_SECRET\"",
            "secret_env = \"SHORT\"",
            "apps.support.host_keys.2026-11",
            "at least 32 bytes",
        ),
        (
            "alg = \"EdDSA\", public_key_file = \"host-ed.pem\"",
            "alg = \"EdDSA\", secret_env = \"SUPPORT_HOST_SECRET\"",
            "apps.support.host_keys.ed-1",
            "for HS256",
        ),
        (
            "alg = \"EdDSA\", public_key_file = \"host-ed.pem\"",
            "alg = \"RS256\", public_key_file = \"host-ed.pem\"",
            "apps.support.host_keys.ed-1.public_key_file",
            "RS256",
        ),
        (
            "alg = \"HS256\"",
            "alg = \"none\"",
            "apps.support.host_keys.2026-11.alg",
            "is not HS256",
        ),
        (
            "kid = \"ed-1\"",
            "kid = \"../../etc/passwd\"",
            "apps.support.host_keys.../../etc/passwd.kid",
            "may only contain",
        ),
        (
            "scopes = [\"openid\", \"profile\", \"email\", \"offline_access\"]",
            "scopes = [\"profile\"]",
            "apps.support.scopes",
            "openid",
        ),
        (
            "kid = \"ed-1\"",
            "kid = \"2026-11\"",
            "apps.support.host_keys.2026-11.kid",
            "twice",
        ),
        (
            "scopes = [\"openid\", \"profile\", \"email\", \"offline_access\"]",
            "scopes = [\"openid\", \"profile\", \"email\", \"offline_access\"]\nbind_chat_tokens = \"mtls\"",
            "apps.support.bind_chat_tokens",
            "must be \"none\" or \"dpop\"",
        ),
        (
            "user_id_claim = \"oid\"\n",
            "user_id_claim = \"oid\"\n[[providers]]\nid = \"entra2\"\nissuer = \"https://login.microsoftonline.com/tenant/v2.0/\"\nclient_id = \"client-1\"\nclient_secret_env = \"ENTRA_CLIENT_SECRET\"\n",
            "providers.entra2.client_id",
            "same issuer and client_id",
        ),
    ];
    let f = f.with_env("SHORT", "too-short");
    for (from, to, key, fragment) in cases {
        assert!(FULL.contains(from), "{from}");
        let errors = f.errors(&FULL.replace(from, to));
        assert!(
            errors
                .iter()
                .any(|p| p.key == *key && p.message.contains(fragment)),
            "{to}: expected {key} ~ {fragment} in {errors:#?}"
        );
    }
}

#[test]
fn events_need_an_https_or_loopback_url_and_a_whsec_secret() {
    let secret = crate::events::WebhookSecret::generate();
    let f = Fixture::new()
        .with_env("EVENTS_SECRET", secret.expose_secret())
        .with_env("NOT_WHSEC", "plain-secret-without-prefix");
    write_host_public_key(&f);
    let with = |lines: &str| {
        FULL.replace(
            "chat_audience = \"https://bot.contoso.com\"\n",
            &format!("chat_audience = \"https://bot.contoso.com\"\n{lines}\n"),
        )
    };
    let cases = [
        (
            "events_url = \"http://bot.contoso.com/events\"\nevents_secret_env = \"EVENTS_SECRET\"",
            "apps.support.events_url",
            "https",
        ),
        (
            "events_url = \"https://bot.contoso.com/events\"",
            "apps.support.events_url",
            "needs events_secret_env or events_secret_file",
        ),
        (
            "events_secret_env = \"EVENTS_SECRET\"",
            "apps.support.events_url",
            "required",
        ),
        (
            "events_url = \"https://bot.contoso.com/events\"\nevents_secret_env = \"NOT_WHSEC\"",
            "apps.support.events_secret_env",
            "whsec_",
        ),
    ];
    for (lines, key, fragment) in cases {
        let errors = f.errors(&with(lines));
        assert!(
            errors
                .iter()
                .any(|p| p.key.starts_with(key) && p.message.contains(fragment)),
            "{lines}: expected {key} ~ {fragment} in {errors:#?}"
        );
    }
    for url in [
        "https://bot.contoso.com/events",
        "http://127.0.0.1:9000/events",
        "http://localhost:9000/events",
    ] {
        let loaded = f
            .load(&with(&format!(
                "events_url = \"{url}\"\nevents_secret_env = \"EVENTS_SECRET\""
            )))
            .unwrap();
        let target = loaded.config.apps[0].events.as_ref().unwrap();
        assert_eq!(target.url.as_str(), url);
        assert!(!format!("{:?}", loaded.config).contains(secret.expose_secret()));
    }
}

#[test]
fn a_type_error_names_its_key() {
    let f = Fixture::new();
    let errors = f.errors(&format!("listen = 8443\n{MINIMAL}"));
    assert_eq!(keys_of(&errors), ["listen"], "{errors:?}");
    assert!(errors[0].message.contains("string"), "{errors:?}");
}

#[test]
fn every_overridable_key_is_a_real_key() {
    // Build a file that sets every key named in the override tables; none of
    // them may be reported as unknown.
    use super::raw::*;
    let mut toml = String::new();
    let value = |kind: Kind| match kind {
        Kind::Str => "\"x\"".to_string(),
        Kind::Int => "1".to_string(),
        Kind::Bool => "true".to_string(),
        Kind::StrList => "[\"x\"]".to_string(),
        Kind::StrMap => "{ a = \"b\" }".to_string(),
    };
    for (k, kind) in TOP_KEYS {
        toml.push_str(&format!("{k} = {}\n", value(*kind)));
    }
    for (section, keys) in [
        ("tls", TLS_KEYS),
        ("signing", SIGNING_KEYS),
        ("rate_limit", RATE_LIMIT_KEYS),
    ] {
        toml.push_str(&format!("[{section}]\n"));
        for (k, kind) in keys {
            toml.push_str(&format!("{k} = {}\n", value(*kind)));
        }
    }
    let entry = |keys: &[(&str, Kind)], id: &str| {
        let fields: Vec<String> = keys
            .iter()
            .map(|(k, kind)| format!("{k} = {}", value(*kind)))
            .collect();
        format!("{id}, {}", fields.join(", "))
    };
    toml.push_str(&format!(
        "[vault]\nkeys = [{{ {} }}]\n",
        entry(VAULT_KEY_KEYS, "id = \"v\"")
    ));
    toml.push_str(&format!(
        "[[providers]]\n{}\n",
        entry(PROVIDER_KEYS, "id = \"p\"").replace(", ", "\n")
    ));
    toml.push_str(&format!(
        "[[apps]]\n{}\nhost_keys = [{{ {} }}]\n",
        entry(APP_KEYS, "id = \"a\"").replace(", ", "\n"),
        entry(HOST_KEY_KEYS, "kid = \"k\"")
    ));
    let f = Fixture::new();
    let errors = f.errors(&toml);
    let unknown: Vec<&Problem> = errors
        .iter()
        .filter(|p| p.message.contains("unknown key"))
        .collect();
    assert!(unknown.is_empty(), "{unknown:#?}\n{toml}");
    assert!(errors.iter().all(|p| p.key != "(file)"), "{errors:#?}");
}

#[test]
fn env_names_follow_the_key_path() {
    assert_eq!(env_name(&["public_url"]), "CHATGATE_PUBLIC_URL");
    assert_eq!(
        env_name(&["apps", "support", "chat_audience"]),
        "CHATGATE_APPS_SUPPORT_CHAT_AUDIENCE"
    );
    assert_eq!(
        env_name(&["vault", "keys", "2026-11", "key_file"]),
        "CHATGATE_VAULT_KEYS_2026_11_KEY_FILE"
    );
}

#[test]
fn load_reports_a_missing_file_clearly() {
    let err = Config::load(Path::new("/nonexistent/chatgate.toml"), &|_| None).unwrap_err();
    assert!(
        err.to_string().contains("cannot read the config file"),
        "{err}"
    );
}

#[test]
fn relative_paths_are_relative_to_the_config_file() {
    let f = Fixture::new();
    let sub = f.path().join("etc");
    std::fs::create_dir(&sub).unwrap();
    std::fs::rename(f.path().join("vault.key"), sub.join("vault.key")).unwrap();
    std::fs::rename(f.path().join("signing.pem"), sub.join("signing.pem")).unwrap();
    let path = sub.join("chatgate.toml");
    std::fs::write(&path, MINIMAL).unwrap();
    let loaded = Config::load(&path, &|_| None).unwrap();
    assert!(
        loaded.config.database.display.contains("/etc/chatgate.db"),
        "{}",
        loaded.config.database.display
    );
}

#[test]
fn the_example_config_loads_and_documents_every_key() {
    const EXAMPLE: &str = include_str!("../../../chatgate.example.toml");
    let f = Fixture::new();
    let loaded = f.load(EXAMPLE).unwrap();
    assert_eq!(loaded.config.public_url.issuer(), "http://localhost:8080");
    use super::raw::*;
    let tables = [
        TOP_KEYS,
        TLS_KEYS,
        SIGNING_KEYS,
        RATE_LIMIT_KEYS,
        VAULT_KEY_KEYS,
        PROVIDER_KEYS,
        APP_KEYS,
        HOST_KEY_KEYS,
    ];
    for (key, _) in tables.iter().flat_map(|t| t.iter()) {
        assert!(
            EXAMPLE.contains(&format!("{key} =")) || EXAMPLE.contains(&format!("{key}=")),
            "chatgate.example.toml does not document {key}"
        );
    }
}

#[test]
fn the_reference_documents_every_key() {
    const REFERENCE: &str = include_str!("../../../docs/reference.md");
    use super::super::raw::*;
    for (section, keys) in [
        ("", TOP_KEYS),
        ("[tls] ", TLS_KEYS),
        ("[signing] ", SIGNING_KEYS),
        ("[rate_limit] ", RATE_LIMIT_KEYS),
        ("[vault] keys ", VAULT_KEY_KEYS),
        ("[[providers]] ", PROVIDER_KEYS),
        ("[[apps]] ", APP_KEYS),
        ("host_keys ", HOST_KEY_KEYS),
    ] {
        for (key, _) in keys {
            assert!(
                REFERENCE.contains(&format!("`{key}`")),
                "docs/reference.md does not document {section}{key}"
            );
        }
    }
}
