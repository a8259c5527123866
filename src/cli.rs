//! The `chatgate` command line. Parses arguments, loads the config, and hands
//! over to the library; each verb is a small function.

use std::io::Write as _;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::chat_token::{SigningAlg, SigningKey};
use crate::config::{self, Config, Loaded};
use crate::server::{App, shutdown_signal};
use crate::store::Store;
use crate::vault::{Vault, VaultKeyRing};

#[derive(Debug, Parser)]
#[command(
    name = "chatgate",
    version,
    about = "Auth broker for embedded chat widgets"
)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, global = true, env = "CHATGATE_CONFIG", default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (applies pending migrations first).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Check the configuration, print every problem, exit non-zero if any.
    CheckConfig,
    /// Generate key material.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Vault maintenance.
    Vault {
        #[command(subcommand)]
        command: VaultCommand,
    },
    /// Bot credentials.
    Bots {
        #[command(subcommand)]
        command: BotsCommand,
    },
    /// Everything on this machine: a development OpenID provider, chatgate, a
    /// shop page with a support chat, and a sample bot. Prints what to open.
    Demo {
        #[command(subcommand)]
        command: Option<DemoCommand>,
        /// Where the demo keeps its configuration, keys and database.
        #[arg(long, default_value = "chatgate-demo")]
        data_dir: PathBuf,
        /// Port of the shop page (http://localhost:PORT).
        #[arg(long, default_value_t = 8400)]
        host_port: u16,
        /// Port of chatgate (http://127.0.0.1:PORT).
        #[arg(long, default_value_t = 8401)]
        chatgate_port: u16,
        /// Port of the development OpenID provider (http://127.0.0.1:PORT).
        #[arg(long, default_value_t = 8402)]
        idp_port: u16,
    },
    /// Print audit events, newest first.
    Audit {
        /// Events about this user id.
        #[arg(long)]
        user: Option<String>,
        /// Events caused by this bot id.
        #[arg(long)]
        bot: Option<String>,
        /// At most this many events.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// Only the development OpenID provider (loopback only), e.g. to try a real
    /// chatgate configuration against it.
    Idp {
        /// Address to listen on (a loopback address).
        #[arg(long, default_value = "127.0.0.1:8402")]
        listen: std::net::SocketAddr,
        /// The issuer URL, as clients reach it.
        #[arg(long)]
        issuer: String,
        #[arg(long, default_value = "chatgate-demo")]
        client_id: String,
        /// Environment variable holding the client secret.
        #[arg(long)]
        client_secret_env: String,
        /// A registered redirect URI (repeatable).
        #[arg(long = "redirect-uri", required = true)]
        redirect_uris: Vec<String>,
        /// Lifetime of access tokens.
        #[arg(long, default_value = "2m")]
        access_token_ttl: String,
        /// Serve HTTPS with this certificate (PEM)...
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// ...and this private key (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum BotsCommand {
    /// Create a bot for an app. The bot id goes to stderr; the secret, shown
    /// only this once, is the last line of stdout.
    Create {
        /// The app whose users the bot may see.
        #[arg(long)]
        app: String,
        /// A name to recognise the bot by.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List bots (never their secrets).
    List,
    /// Revoke a bot: its secret stops working at once.
    Revoke {
        /// The bot id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate a key.
    Generate {
        #[command(subcommand)]
        kind: GenerateKind,
    },
}

#[derive(Debug, Subcommand)]
pub enum GenerateKind {
    /// A vault key (AES-256), printed in base64 on stdout.
    Vault,
    /// A chat-token signing key (PKCS#8 PEM).
    Signing {
        /// Write the key to this file (created with mode 0600, never overwritten)
        /// instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// The key type.
        #[arg(long, value_enum, default_value_t = AlgArg::Eddsa)]
        alg: AlgArg,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AlgArg {
    /// Ed25519 (EdDSA)
    Eddsa,
    /// P-256 (ES256)
    Es256,
}

#[derive(Debug, Subcommand)]
pub enum VaultCommand {
    /// Re-encrypt every vault entry under the newest vault key. Resumable: each
    /// batch is committed, so an interrupted run (Ctrl-C) can simply be run again.
    Rekey {
        /// Entries per transaction.
        #[arg(long, default_value_t = 500)]
        batch_size: u32,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // One TLS crypto provider for the whole process (ring, like every client here).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Keys { command } => keys(command),
        Command::Demo {
            command,
            data_dir,
            host_port,
            chatgate_port,
            idp_port,
        } => {
            #[cfg(feature = "demo")]
            {
                demo(command, data_dir, host_port, chatgate_port, idp_port)
            }
            #[cfg(not(feature = "demo"))]
            {
                let _ = (command, data_dir, host_port, chatgate_port, idp_port);
                fail(
                    "this chatgate was built without the demo (a development IdP has no place in \
                     a production build); from a checkout: cargo run --release --features demo -- demo",
                )
            }
        }
        command => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fail(format!("cannot start the async runtime: {e}")),
            };
            runtime.block_on(run(command, &cli.config))
        }
    }
}

async fn run(command: Command, config_path: &Path) -> ExitCode {
    if let Command::CheckConfig = command {
        return check_config(config_path);
    }
    let Loaded { config, warnings } = match Config::load(config_path, &config::process_env) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprint!("{e}");
            eprintln!("chatgate did not start; `chatgate check-config` lists the same problems.");
            return ExitCode::FAILURE;
        }
    };
    crate::telemetry::init(&config.log);
    for w in &warnings {
        tracing::warn!(key = %w.key, "{}", w.message);
    }
    match command {
        Command::Serve => serve(config).await,
        Command::Migrate => migrate(config).await,
        Command::Vault {
            command: VaultCommand::Rekey { batch_size },
        } => rekey(config, batch_size).await,
        Command::Bots { command } => bots(config, command).await,
        Command::Audit { user, bot, limit } => audit(config, user, bot, limit).await,
        Command::CheckConfig | Command::Keys { .. } | Command::Demo { .. } => {
            unreachable!("handled above")
        }
    }
}

/// Runs `work` on a fresh runtime; an `Err` is printed and fails the command.
#[cfg(feature = "demo")]
fn with_runtime(work: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => match rt.block_on(work) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Err(e) => fail(format!("cannot start the async runtime: {e}")),
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

fn check_config(path: &Path) -> ExitCode {
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

async fn serve(config: Config) -> ExitCode {
    let app = match App::build(config).await {
        Ok(app) => app,
        Err(e) => return fail(e),
    };
    match app.run_until_stopped(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

async fn connect(config: &Config) -> Result<Store, ExitCode> {
    let store = Store::connect(&config.database).await.map_err(|e| {
        fail(format!(
            "cannot open the database {}: {e}",
            config.database.display
        ))
    })?;
    crate::state::migrate(&store, &config.vault_keys)
        .await
        .map_err(fail)?;
    Ok(store)
}

async fn migrate(config: Config) -> ExitCode {
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

async fn rekey(config: Config, batch_size: u32) -> ExitCode {
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

async fn bots(config: Config, command: BotsCommand) -> ExitCode {
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

async fn audit(config: Config, user: Option<String>, bot: Option<String>, limit: u32) -> ExitCode {
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
            println!(
                "{:<22} {:<22} {:<12} {:<36} {:<16} {:<16} detail",
                "time", "actor", "app", "user", "action", "outcome"
            );
            for r in rows {
                println!(
                    "{:<22} {:<22} {:<12} {:<36} {:<16} {:<16} {}",
                    timestamp(r.at),
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

/// Unix seconds as `2026-11-21T18:30:00Z`.
fn timestamp(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| secs.to_string())
}

fn keys(command: KeysCommand) -> ExitCode {
    let KeysCommand::Generate { kind } = command;
    match kind {
        GenerateKind::Vault => {
            let key = VaultKeyRing::generate_key();
            println!("{}", key.expose_secret());
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
fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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
fn demo(
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
                    client_secret: crate::secret::SecretString::new(secret),
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
