//! The `chatgate` command line. Parses arguments, loads the config, and hands
//! over to the library; each verb is a small function.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{self, Config, Loaded};

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
    CheckConfig {
        /// Also fetch each provider's discovery document and JWKS, and say
        /// what was found and what to configure at the IdP.
        #[arg(long)]
        probe: bool,
    },
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
    /// Events for bots (the outbox): list, redeliver.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Users' stored tokens.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
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
pub enum EventsCommand {
    /// Print events, newest first, with their delivery state.
    List {
        /// Only events not delivered (pending or given up on).
        #[arg(long)]
        failed: bool,
        /// At most this many events.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Queue an event for delivery again (with the same id, so a receiver that
    /// has it already can tell), for 24 more hours of retries.
    Redeliver {
        /// The event id (`evt_...`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Sign a user out of an app: revoke the refresh token at the IdP, delete
    /// the vault entry, end the user's chatgate browser sessions, and send
    /// `user.signed_out` (reason `admin`).
    SignOut {
        #[arg(long)]
        app: String,
        /// The user id (`provider:subject`).
        #[arg(long)]
        user: String,
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
    /// An events secret (`whsec_...`, Standard Webhooks), printed on stdout:
    /// the app's `events_secret_*` and the bot's verification key.
    Events,
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
    if let Command::CheckConfig { probe } = command {
        let code = check_config(config_path);
        if !probe || code != ExitCode::SUCCESS {
            return code;
        }
        return probe_providers(config_path).await;
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
        Command::Events { command } => events(config, command).await,
        Command::Users {
            command: UsersCommand::SignOut { app, user },
        } => sign_out_user(config, app, user).await,
        Command::CheckConfig { .. } | Command::Keys { .. } | Command::Demo { .. } => {
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

pub(crate) fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

mod commands;

use commands::*;

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// Every verb (and sub-verb) of the CLI is in the reference.
    #[test]
    fn the_reference_documents_every_verb() {
        const REFERENCE: &str = include_str!("../../docs/reference.md");
        fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
            for sub in cmd.get_subcommands() {
                let full = format!("{path} {}", sub.get_name()).trim().to_string();
                out.push(full.clone());
                walk(sub, &full, out);
            }
        }
        let mut verbs = Vec::new();
        walk(&super::Cli::command(), "", &mut verbs);
        assert!(verbs.len() > 10, "{verbs:?}");
        for verb in verbs
            .iter()
            .filter(|v| *v != "help" && !v.ends_with(" help"))
        {
            let last = verb.rsplit(' ').next().unwrap();
            assert!(
                REFERENCE.contains(&format!("chatgate {verb}"))
                    || REFERENCE.contains(&format!("{last} ")),
                "docs/reference.md does not document `chatgate {verb}`"
            );
        }
    }
}
