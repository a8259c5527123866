//! The verbs: check-config, serve, migrate, vault rekey, bots, events, users,
//! audit, keys, demo.

use crate::chat_token::{SigningAlg, SigningKey};
use crate::config::{self, Config, Loaded};
use crate::domain::UserId;
use crate::events::{SignOutReason, WebhookSecret};
use crate::secret::ExposeSecret as _;
use crate::server::{App, shutdown_signal};
use crate::state::AppState;
use crate::store::{EventFilter, Store};
use crate::user_tokens::Revocation;
use crate::vault::{Vault, VaultKeyRing};
use std::io::Write as _;
use std::ops::ControlFlow;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::*;

pub(super) fn check_config(path: &Path) -> ExitCode {
    match Config::load(path, &config::process_env) {
        Ok(Loaded { config, warnings }) => {
            println!("{}: ok", path.display());
            println!("  public_url  {}", config.public_url.issuer());
            println!(
                "  listen      {}{}",
                config.listen,
                if config.tls.is_some() { " (https)" } else { "" }
            );
            println!("  database    {}", config.database.display);
            let ids: Vec<&str> = config.vault_keys.key_ids().map(|k| k.as_str()).collect();
            println!(
                "  vault keys  {} (new entries sealed with {:?})",
                ids.join(", "),
                ids[0]
            );
            println!(
                "  signing key {} ({})",
                config.signing_key.kid(),
                config.signing_key.alg_name()
            );
            let providers: Vec<&str> = config.providers.iter().map(|p| p.id.as_str()).collect();
            println!(
                "  providers   {}",
                if providers.is_empty() {
                    "(none)".into()
                } else {
                    providers.join(", ")
                }
            );
            let apps: Vec<&str> = config.apps.iter().map(|a| a.id.as_str()).collect();
            println!(
                "  apps        {}",
                if apps.is_empty() {
                    "(none)".into()
                } else {
                    apps.join(", ")
                }
            );
            for w in warnings {
                println!("  warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprint!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `check-config --probe`: discovers every provider as `serve` would, and
/// prints what it found and what to configure at the IdP.
pub(super) async fn probe_providers(path: &Path) -> ExitCode {
    let Ok(Loaded { config, .. }) = Config::load(path, &config::process_env) else {
        return ExitCode::FAILURE;
    };
    let http = match crate::oidc::http::IdpHttp::new(&config.idp_ca_certs) {
        Ok(http) => http,
        Err(e) => return fail(e),
    };
    let public_url = config.public_url.issuer().trim_end_matches('/').to_string();
    let mut ok = true;
    for provider in &config.providers {
        println!("provider {} ({})", provider.id, provider.issuer);
        let scopes: Vec<String> = config
            .apps
            .iter()
            .filter(|a| a.provider.as_ref() == Some(&provider.id))
            .flat_map(|a| a.scopes.clone())
            .collect();
        match crate::oidc::Provider::discover(provider.clone(), http.clone()).await {
            Ok(found) => {
                for line in found.report(&public_url, &scopes) {
                    println!("  {line}");
                }
            }
            Err(e) => {
                ok = false;
                println!("  FAILED: {e}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

pub(super) async fn serve(config: Config) -> ExitCode {
    let app = match App::build(config).await {
        Ok(app) => app,
        Err(e) => return fail(e),
    };
    match app.run_until_stopped(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

pub(super) async fn connect(config: &Config) -> Result<Store, ExitCode> {
    let store = Store::connect(&config.database).await.map_err(|e| {
        fail(format!(
            "cannot open the database {}: {e}",
            config.database.display
        ))
    })?;
    crate::state::migrate(&store, config).await.map_err(fail)?;
    Ok(store)
}

pub(super) async fn migrate(config: Config) -> ExitCode {
    match connect(&config).await {
        Ok(store) => {
            println!(
                "database {} ({}) is up to date",
                config.database.display,
                store.backend()
            );
            store.close().await;
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

pub(super) async fn rekey(config: Config, batch_size: u32) -> ExitCode {
    let store = match connect(&config).await {
        Ok(store) => store,
        Err(code) => return code,
    };
    let vault = Vault::new(store.clone(), config.vault_keys.clone());
    let target = config.vault_keys.current_key_id().clone();
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let interrupted = interrupted.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            eprintln!("interrupt: stopping after the current batch (run again to continue)");
            interrupted.store(true, Ordering::SeqCst);
        });
    }
    eprintln!("re-encrypting vault entries under key {target} in batches of {batch_size}");
    let result = vault
        .rekey(batch_size, crate::time::now(), |r| {
            eprintln!(
                "  scanned {}, moved {}, already current {}",
                r.scanned, r.moved, r.current
            );
            if interrupted.load(Ordering::SeqCst) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .await;
    store.close().await;
    let report = match result {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    println!(
        "moved {} entries to key {target}; {} already under it; {} scanned",
        report.moved, report.current, report.scanned
    );
    if report.changed_meanwhile > 0 {
        println!(
            "{} entries changed while being re-encrypted; run `chatgate vault rekey` again to check them",
            report.changed_meanwhile
        );
    }
    for (app, user, why) in &report.failed {
        eprintln!("  could not re-encrypt ({app}, {user}): {why}");
    }
    if interrupted.load(Ordering::SeqCst) {
        println!("interrupted: run `chatgate vault rekey` again to finish");
        return ExitCode::FAILURE;
    }
    if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        fail(format!(
            "{} entries could not be re-encrypted",
            report.failed.len()
        ))
    }
}

pub(super) async fn bots(config: Config, command: BotsCommand) -> ExitCode {
    let store = match connect(&config).await {
        Ok(store) => store,
        Err(code) => return code,
    };
    let now = crate::time::now();
    let directory =
        crate::bots::BotDirectory::new(store.clone(), &config.vault_keys, Duration::ZERO);
    let code = match command {
        BotsCommand::Create { app, name } => {
            let Some(app) = config.app(&app) else {
                let known: Vec<&str> = config.apps.iter().map(|a| a.id.as_str()).collect();
                return fail(format!(
                    "no app {app:?} in the configuration (apps: {})",
                    known.join(", ")
                ));
            };
            let name = if name.is_empty() {
                app.id.to_string()
            } else {
                name
            };
            match directory.create(&app.id, &name, now).await {
                Ok(bot) => {
                    eprintln!(
                        "created bot {} for app {}; its secret follows and is not shown again",
                        bot.id, app.id
                    );
                    println!("{}", bot.secret.expose_secret());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        BotsCommand::List => match store.list_bots().await {
            Ok(rows) => {
                println!(
                    "{:<18} {:<16} {:<24} {:<22} {:<16} status",
                    "id", "app", "name", "created", "hashed with"
                );
                for b in rows {
                    let status = match b.revoked_at {
                        Some(t) => format!("revoked {}", timestamp(t)),
                        None => "active".to_string(),
                    };
                    // The vault key a bot's secret is hashed under: keep that key
                    // configured until the bot was used after a rotation.
                    let hashed = match (b.hash_format.as_str(), &b.key_id) {
                        ("hmac", Some(key)) => format!("vault key {key}"),
                        _ => "sha256 (old)".to_string(),
                    };
                    println!(
                        "{:<18} {:<16} {:<24} {:<22} {:<16} {status}",
                        b.id,
                        b.app,
                        b.name,
                        timestamp(b.created_at),
                        hashed
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        BotsCommand::Revoke { id } => match directory.revoke(&id, now).await {
            Ok(true) => {
                println!("revoked bot {id}");
                ExitCode::SUCCESS
            }
            Ok(false) => fail(format!("no active bot {id}")),
            Err(e) => fail(e),
        },
    };
    store.close().await;
    code
}

pub(super) async fn audit(
    config: Config,
    user: Option<String>,
    bot: Option<String>,
    limit: u32,
) -> ExitCode {
    let store = match connect(&config).await {
        Ok(store) => store,
        Err(code) => return code,
    };
    let filter = crate::store::AuditFilter {
        user_id: user,
        actor: bot.map(|b| {
            if b.starts_with("bot:") {
                b
            } else {
                format!("bot:{b}")
            }
        }),
        limit,
    };
    let code = match store.list_audit(&filter).await {
        Ok(rows) => {
            // `count`: identical bot reads within one batch of the audit
            // writer (the same second) are one row with their number.
            println!(
                "{:<22} {:>6} {:<22} {:<12} {:<36} {:<16} {:<16} detail",
                "time", "count", "actor", "app", "user", "action", "outcome"
            );
            for r in rows {
                println!(
                    "{:<22} {:>6} {:<22} {:<12} {:<36} {:<16} {:<16} {}",
                    timestamp(r.at),
                    r.count,
                    r.actor,
                    r.app.unwrap_or_default(),
                    r.user_id.unwrap_or_default(),
                    r.action,
                    r.outcome,
                    r.detail.unwrap_or_default()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    };
    store.close().await;
    code
}

pub(super) async fn events(config: Config, command: EventsCommand) -> ExitCode {
    let store = match connect(&config).await {
        Ok(store) => store,
        Err(code) => return code,
    };
    let code = match command {
        EventsCommand::List { failed, limit } => {
            let filter = EventFilter {
                undelivered: failed,
                limit,
            };
            match store.list_events(filter).await {
                Ok(rows) => {
                    println!(
                        "{:<30} {:<22} {:<22} {:<12} {:<36} {:<8} state",
                        "id", "time", "type", "app", "user", "attempts"
                    );
                    for e in rows {
                        let state = match (e.delivered_at, e.dead_at) {
                            (Some(t), _) => format!("delivered {}", timestamp(t)),
                            (None, Some(t)) => format!(
                                "dead {} ({})",
                                timestamp(t),
                                e.last_error.unwrap_or_default()
                            ),
                            (None, None) => match e.last_error {
                                Some(error) => format!(
                                    "retrying at {} ({error})",
                                    timestamp(e.next_attempt_at)
                                ),
                                None => "pending".to_string(),
                            },
                        };
                        println!(
                            "{:<30} {:<22} {:<22} {:<12} {:<36} {:<8} {state}",
                            e.id,
                            timestamp(e.created_at),
                            e.kind,
                            e.app,
                            e.user_id,
                            e.attempts
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        EventsCommand::Redeliver { id } => {
            match store.redeliver_event(&id, crate::time::now()).await {
                Ok(true) => {
                    println!(
                        "queued {id} for delivery; a running chatgate sends it within seconds"
                    );
                    ExitCode::SUCCESS
                }
                Ok(false) => fail(format!("no event {id}")),
                Err(e) => fail(e),
            }
        }
    };
    store.close().await;
    code
}

pub(super) async fn sign_out_user(config: Config, app: String, user: String) -> ExitCode {
    let Some(app_id) = config.app(&app).map(|a| a.id.clone()) else {
        return fail(format!("no app {app:?} in the configuration"));
    };
    let user_id = match UserId::parse(user) {
        Ok(u) => u,
        Err(e) => return fail(e),
    };
    let state = match AppState::build(config).await {
        Ok(state) => state,
        Err(e) => return fail(e),
    };
    let code = match state
        .tokens
        .sign_out(&app_id, &user_id, "admin", SignOutReason::Admin)
        .await
    {
        Ok(done) => {
            println!(
                "{user_id} in {app_id}: tokens {}, {}, {} browser session(s) ended, \
                 {} browser key(s) forgotten",
                if done.deleted {
                    "deleted"
                } else {
                    "not stored"
                },
                match done.revocation {
                    Revocation::Revoked => "revoked at the IdP",
                    Revocation::NoRevocationEndpoint => {
                        "not revoked at the IdP (it has no revocation endpoint: the refresh token stays valid there until it expires)"
                    }
                    Revocation::Failed => "not revoked at the IdP (the revocation failed)",
                    Revocation::NothingStored => "nothing to revoke",
                },
                done.sessions,
                done.keys,
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    };
    state.audit.flush().await;
    state.store.close().await;
    code
}

/// Unix seconds as `2026-11-21T18:30:00Z`.
pub(super) fn timestamp(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| secs.to_string())
}

pub(super) fn keys(command: KeysCommand) -> ExitCode {
    let KeysCommand::Generate { kind } = command;
    match kind {
        GenerateKind::Vault => {
            let key = VaultKeyRing::generate_key();
            println!("{}", key.expose_secret());
            ExitCode::SUCCESS
        }
        GenerateKind::Events => {
            println!("{}", WebhookSecret::generate().expose_secret());
            ExitCode::SUCCESS
        }
        GenerateKind::Signing { out, alg } => {
            let alg = match alg {
                AlgArg::Eddsa => SigningAlg::EdDsa,
                AlgArg::Es256 => SigningAlg::Es256,
            };
            let pem = SigningKey::generate_pem(alg);
            let kid = match SigningKey::from_pem(&pem) {
                Ok(k) => k.kid().to_string(),
                Err(e) => return fail(e),
            };
            match out {
                Some(path) => match write_private_file(&path, pem.expose_secret().as_bytes()) {
                    Ok(()) => {
                        eprintln!("wrote signing key {kid} to {}", path.display());
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(format!("cannot write {}: {e}", path.display())),
                },
                None => {
                    eprintln!("signing key {kid}");
                    print!("{}", pem.expose_secret());
                    let _ = std::io::stdout().flush();
                    ExitCode::SUCCESS
                }
            }
        }
    }
}

/// Creates `path` readable by its owner only; refuses to replace a file.
pub(super) fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// `chatgate demo [idp]` (built with the `demo` feature).
#[cfg(feature = "demo")]
pub(super) fn demo(
    command: Option<DemoCommand>,
    data_dir: PathBuf,
    host_port: u16,
    chatgate_port: u16,
    idp_port: u16,
) -> ExitCode {
    with_runtime(async move {
        match command {
            None => {
                let opts = crate::demo::DemoOptions {
                    data_dir,
                    host_port,
                    chatgate_port,
                    idp_port,
                };
                crate::demo::run(opts, shutdown_signal())
                    .await
                    .map_err(|e| e.to_string())
            }
            Some(DemoCommand::Idp {
                listen,
                issuer,
                client_id,
                client_secret_env,
                redirect_uris,
                access_token_ttl,
                tls_cert,
                tls_key,
            }) => {
                let secret = std::env::var(&client_secret_env)
                    .map_err(|_| format!("environment variable {client_secret_env} is not set"))?;
                let ttl = humantime::parse_duration(&access_token_ttl)
                    .map_err(|e| format!("--access-token-ttl {access_token_ttl:?}: {e}"))?;
                let opts = crate::demo::IdpOnlyOptions {
                    listen,
                    issuer,
                    client_id,
                    client_secret: crate::secret::SecretString::from(secret),
                    redirect_uris,
                    access_token_ttl: ttl,
                    tls: tls_cert.zip(tls_key),
                };
                crate::demo::run_idp(opts, shutdown_signal())
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    })
}
