//! `chatgate demo`: the whole journey on one machine — a development OpenID
//! provider, chatgate itself (SQLite in a data directory), a shop page with a
//! support chat that uses `widget.js`, and a sample bot that reads the signed-in
//! user's access token through the bot API.
//!
//! Three sites, so the chat runs in a real third-party iframe:
//!   shop + bot   http://localhost:{host_port}
//!   chatgate     http://127.0.0.1:{chatgate_port}
//!   IdP          http://127.0.0.1:{idp_port}
//! Chromium and Firefox keep `Secure` cookies on loopback http; WebKit (Safari)
//! drops them, and there the widget's browser key carries the sign-in instead.

pub mod bot;
mod bot_events;
mod host;
pub mod idp;

use crate::secret::ExposeSecret as _;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

use crate::chat_token::{SigningAlg, SigningKey};
use crate::config::{self, Config};
use crate::domain::AppId;
use crate::secret::{SecretString, random_token};
use crate::server::App;
use crate::vault::VaultKeyRing;

pub const APP_ID: &str = "support";
/// Short, so a demo session sees chatgate refresh a token.
const ACCESS_TOKEN_TTL: Duration = Duration::from_secs(120);

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub data_dir: PathBuf,
    pub host_port: u16,
    pub chatgate_port: u16,
    pub idp_port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Io(String),
    #[error(
        "cannot listen on {addr} for the {what}: {source} (choose another port with --{what}-port)"
    )]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    App(#[from] crate::state::AppError),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
}

fn bind(what: &'static str, host: &str, port: u16) -> Result<TcpListener, DemoError> {
    let addr = format!("{host}:{port}");
    let listener = TcpListener::bind(&addr).map_err(|source| DemoError::Bind {
        what,
        addr: addr.clone(),
        source,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| DemoError::Bind { what, addr, source })?;
    Ok(listener)
}

fn port_of(listener: &TcpListener) -> u16 {
    listener.local_addr().map(|a| a.port()).unwrap_or_default()
}

/// Writes `path` with `make()` unless it exists (mode 0600).
fn ensure_secret_file(path: &Path, make: impl FnOnce() -> SecretString) -> Result<(), DemoError> {
    if path.exists() {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    use std::io::Write as _;
    options
        .open(path)
        .and_then(|mut f| f.write_all(make().expose_secret().as_bytes()))
        .map_err(|e| DemoError::Io(format!("cannot write {}: {e}", path.display())))
}

fn read_secret(path: &Path) -> Result<SecretString, DemoError> {
    std::fs::read_to_string(path)
        .map(|s| SecretString::from(s.trim()))
        .map_err(|e| DemoError::Io(format!("cannot read {}: {e}", path.display())))
}

/// The chatgate configuration of the demo, written next to its data.
fn demo_config(host: &str, chatgate: &str, idp: &str, chatgate_addr: SocketAddr) -> String {
    format!(
        r#"# Written by `chatgate demo` at every start; edit the real thing from chatgate.example.toml.
public_url = "{chatgate}"
listen = "{chatgate_addr}"
database_url = "sqlite://chatgate.db?mode=rwc"
refresh_skew = "10s"
log_level = "warn,chatgate=info"
# One process on one machine: nothing to drain on Ctrl-C.
shutdown_drain = "0s"

[vault]
keys = [{{ id = "demo", key_file = "vault.key" }}]

[signing]
key_file = "signing.pem"

[[providers]]
id = "demo"
issuer = "{idp}"
client_id = "chatgate-demo"
client_secret_file = "idp-client.secret"

[[apps]]
id = "{APP_ID}"
origins = ["{host}"]
provider = "demo"
chat_audience = "{host}/bot"
# The sample bot's event endpoint (user.signed_in, user.signed_out, ...).
events_url = "{host}/bot/events"
events_secret_file = "events.secret"
"#
    )
}

/// Runs the demo until `shutdown` completes.
pub async fn run(
    opts: DemoOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DemoError> {
    let dir = &opts.data_dir;
    std::fs::create_dir_all(dir)
        .map_err(|e| DemoError::Io(format!("cannot create {}: {e}", dir.display())))?;
    let dir = std::path::absolute(dir).map_err(|e| DemoError::Io(e.to_string()))?;
    ensure_secret_file(&dir.join("vault.key"), VaultKeyRing::generate_key)?;
    ensure_secret_file(&dir.join("signing.pem"), || {
        SigningKey::generate_pem(SigningAlg::EdDsa)
    })?;
    ensure_secret_file(&dir.join("idp-client.secret"), || {
        SecretString::from(random_token::<32>())
    })?;
    ensure_secret_file(
        &dir.join("events.secret"),
        crate::events::WebhookSecret::generate,
    )?;

    // Bind first, so port 0 works and a taken port fails before anything starts.
    let idp_listener = bind("idp", "127.0.0.1", opts.idp_port)?;
    let chatgate_listener = bind("chatgate", "127.0.0.1", opts.chatgate_port)?;
    let host_listener = bind("host", "127.0.0.1", opts.host_port)?;
    let idp_url = format!("http://127.0.0.1:{}", port_of(&idp_listener));
    let chatgate_url = format!("http://127.0.0.1:{}", port_of(&chatgate_listener));
    let host_url = format!("http://localhost:{}", port_of(&host_listener));
    let chatgate_addr = chatgate_listener
        .local_addr()
        .map_err(|e| DemoError::Io(e.to_string()))?;

    let config_path = dir.join("chatgate.toml");
    std::fs::write(
        &config_path,
        demo_config(&host_url, &chatgate_url, &idp_url, chatgate_addr),
    )
    .map_err(|e| DemoError::Io(format!("cannot write {}: {e}", config_path.display())))?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let idp_router = idp::router(idp::DevIdpConfig {
        issuer: idp_url.clone(),
        client_id: "chatgate-demo".into(),
        client_secret: read_secret(&dir.join("idp-client.secret"))?,
        redirect_uris: vec![format!("{chatgate_url}/v1/callback")],
        access_token_ttl: ACCESS_TOKEN_TTL,
    });
    let idp_task = tokio::spawn(serve(idp_listener, idp_router, stopped(stop_rx.clone())));

    let ignored = ignored_overrides();
    if !ignored.is_empty() {
        eprintln!(
            "warning: chatgate demo ignores {} (it uses only its own configuration in {})",
            ignored.join(", "),
            dir.display()
        );
    }
    let no_environment = |_: &str| None;
    let config::Loaded { config, .. } = Config::load(&config_path, &no_environment)?;
    crate::telemetry::init(&config.log);
    let app = App::build_on(config, chatgate_listener).await?;
    let state = app.state().clone();
    let bot_secret = ensure_bot(&state, &dir.join("bot.secret")).await?;
    let chatgate_task = tokio::spawn(app.run_until_stopped(stopped(stop_rx.clone())));

    let bot = bot::Bot::new(bot::BotConfig {
        chatgate_url: chatgate_url.clone(),
        audience: format!("{host_url}/bot"),
        bot_secret,
        idp_issuer: idp_url.clone(),
    });
    let inbox = bot_events::EventInbox::new(&read_secret(&dir.join("events.secret"))?)
        .map_err(DemoError::Io)?;
    let host_task = tokio::spawn(serve(
        host_listener,
        host::router(&chatgate_url, APP_ID, bot, inbox),
        stopped(stop_rx.clone()),
    ));

    println!("{}", banner(&host_url, &chatgate_url, &idp_url, &dir));
    shutdown.await;
    println!("stopping the demo…");
    let _ = stop_tx.send(true);
    let _ = idp_task.await;
    let _ = host_task.await;
    if let Ok(result) = chatgate_task.await {
        result?;
    }
    Ok(())
}

/// Middleware of the demo's own servers (IdP, shop, bot): only requests for a
/// loopback host name are served. A web page whose domain an attacker points
/// at 127.0.0.1 (DNS rebinding) sends its own name as `Host` and is refused.
pub async fn loopback_host_only(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let host = request
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    if host.is_some_and(is_loopback_host) {
        next.run(request).await
    } else {
        (
            axum::http::StatusCode::MISDIRECTED_REQUEST,
            "this development server only answers requests for localhost or a loopback address",
        )
            .into_response()
    }
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Environment variables the demo ignores: it writes and uses its own
/// configuration, and must not touch a real deployment's database or keys.
fn ignored_overrides() -> Vec<String> {
    let mut names: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("CHATGATE_") && k != "CHATGATE_CONFIG")
        .collect();
    names.sort();
    names
}

/// The demo bot's secret: reused while the database knows it, else a new bot.
async fn ensure_bot(
    state: &crate::state::AppState,
    path: &Path,
) -> Result<SecretString, DemoError> {
    if let Ok(secret) = read_secret(path)
        && state
            .bots
            .authenticate(secret.expose_secret())
            .await?
            .is_ok()
    {
        return Ok(secret);
    }
    let app = AppId::parse(APP_ID).expect("a valid app id");
    let bot = state
        .bots
        .create(&app, "demo bot", crate::time::now())
        .await?;
    let _ = std::fs::remove_file(path);
    ensure_secret_file(path, || bot.secret.clone())?;
    Ok(bot.secret)
}

async fn serve(
    listener: TcpListener,
    router: axum::Router,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "a demo server failed");
    }
}

fn banner(host: &str, chatgate: &str, idp: &str, dir: &Path) -> String {
    let users: Vec<String> = idp::USERS
        .iter()
        .map(|u| format!("{} / {}", u.username, u.password))
        .collect();
    format!(
        r#"
chatgate demo is running — everything on this machine, nothing registered anywhere.

  the shop (open this)   {host}
  chatgate               {chatgate}    config and data in {dir}
  development IdP        {idp}    users: {users}

What to try:
  1. Open the shop. The chat tries a silent sign-in; the first time the IdP needs
     you, so click "Sign in to chat" and sign in as alice in the popup.
  2. Reload the page: you are signed in silently, without a popup.
  3. Send a message. The bot verifies your chat token against chatgate's JWKS, looks
     your access token up through the bot API, and asks the IdP who you are.
  4. Wait two minutes and send another: the bot says chatgate refreshed the token.
  5. "Sign out" revokes your tokens at the IdP. "Sign out everywhere" also signs you
     out at the IdP (in a popup). Signing out on the IdP's own page ({idp}) reaches
     chatgate on the back channel: the chat's next silent sign-in says
     login_required. The IdP's page can also forget consents (consent_required).
  6. Watch this terminal: the bot prints every event chatgate sends it
     (user.signed_in, user.signed_out with its reason, ...), signature checked.

Works in a stock Chromium, Firefox or Safari/WebKit. Press Ctrl-C to stop.
"#,
        dir = dir.display(),
        users = users.join(", "),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_loopback_host_names_are_served() {
        for ok in [
            "localhost:8400",
            "127.0.0.1:8402",
            "127.0.0.2",
            "[::1]:8401",
            "LOCALHOST",
        ] {
            assert!(super::is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example.com",
            "evil.example.com:8402",
            "localhost.evil.com",
            "10.0.0.1:80",
            "",
        ] {
            assert!(!super::is_loopback_host(bad), "{bad}");
        }
    }
}

/// `chatgate demo idp`: the development provider alone, e.g. to run a real
/// chatgate against it, or for the browser tests.
#[derive(Debug, Clone)]
pub struct IdpOnlyOptions {
    pub listen: SocketAddr,
    pub issuer: String,
    pub client_id: String,
    pub client_secret: SecretString,
    pub redirect_uris: Vec<String>,
    pub access_token_ttl: Duration,
    pub tls: Option<(PathBuf, PathBuf)>,
}

pub async fn run_idp(
    opts: IdpOnlyOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DemoError> {
    if !opts.listen.ip().is_loopback() {
        return Err(DemoError::Io(
            "the development provider only listens on loopback addresses; it is not for real users"
                .into(),
        ));
    }
    let router = idp::router(idp::DevIdpConfig {
        issuer: opts.issuer.clone(),
        client_id: opts.client_id,
        client_secret: opts.client_secret,
        redirect_uris: opts.redirect_uris,
        access_token_ttl: opts.access_token_ttl,
    });
    let listener = bind("idp", &opts.listen.ip().to_string(), opts.listen.port())?;
    let handle: axum_server::Handle<SocketAddr> = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    println!(
        "development OpenID provider at {} (Ctrl-C to stop)",
        opts.issuer
    );
    let result = match opts.tls {
        Some((cert, key)) => {
            let tls = axum_server::tls_rustls::RustlsConfig::from_config(tls_config(&cert, &key)?);
            axum_server::from_tcp_rustls(listener, tls)
                .map_err(|e| DemoError::Io(e.to_string()))?
                .handle(handle)
                .serve(router.into_make_service())
                .await
        }
        None => {
            axum_server::from_tcp(listener)
                .map_err(|e| DemoError::Io(e.to_string()))?
                .handle(handle)
                .serve(router.into_make_service())
                .await
        }
    };
    result.map_err(|e| DemoError::Io(e.to_string()))
}

fn tls_config(cert: &Path, key: &Path) -> Result<std::sync::Arc<rustls::ServerConfig>, DemoError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let io = |e: &dyn std::fmt::Display| DemoError::Io(format!("TLS: {e}"));
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| io(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io(&e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| io(&e))?;
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| io(&e))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| io(&e))?;
    Ok(std::sync::Arc::new(config))
}
