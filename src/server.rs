//! The server: binds the listener (port 0 allowed), serves the router with
//! connection limits, runs the periodic work, and on shutdown finishes
//! in-flight requests and refreshes. Shared by `main` and the tests.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use tokio::task::JoinHandle;

use crate::chat_token::KEY_HEARTBEAT;
use crate::config::Config;
use crate::state::{AppError, AppState};
use crate::web::conn::{ConnLimits, LimitAcceptor};

/// How often expired rows (flows, tickets, replay cache, sessions) and audit
/// events past `audit_retention` are deleted, and how many per statement.
const SWEEP_EVERY: Duration = Duration::from_secs(300);
const SWEEP_BATCH: u32 = 1000;

/// A built, bound, not yet serving chatgate.
#[derive(Debug)]
pub struct App {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: AppState,
}

impl App {
    /// Builds the app and binds `config.listen` (with `SO_REUSEPORT` when
    /// `listen_reuse_port` is set).
    pub async fn build(config: Config) -> Result<Self, AppError> {
        let addr = config.listen;
        let listener = bind(addr, config.listen_reuse_port)
            .map_err(|source| AppError::Bind { addr, source })?;
        Self::build_on(config, listener).await
    }

    /// Builds the app on a listener the caller bound (tests bind port 0 first so
    /// they know `public_url` before building).
    pub async fn build_on(config: Config, listener: TcpListener) -> Result<Self, AppError> {
        let addr = config.listen;
        let state = AppState::build(config).await?;
        listener
            .set_nonblocking(true)
            .map_err(|source| AppError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| AppError::Bind { addr, source })?;
        Ok(Self {
            listener,
            local_addr,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then stops accepting connections and
    /// gives in-flight requests up to `shutdown_timeout` to finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let Self {
            listener,
            local_addr,
            state,
        } = self;
        let config = state.config.clone();
        let background = spawn_background(&state);
        let router = crate::web::router(state.clone());
        let service = router.into_make_service_with_connect_info::<SocketAddr>();

        let handle: Handle<SocketAddr> = Handle::new();
        let grace = config.shutdown_timeout;
        let drain = config.shutdown_drain;
        let signal_handle = handle.clone();
        let lifecycle = state.lifecycle.clone();
        let tokens = state.tokens.clone();
        let metrics = state.metrics.clone();
        let (deadline_tx, deadline) = tokio::sync::oneshot::channel();
        let report = std::sync::Arc::new(std::sync::Mutex::new(ShutdownReport::default()));
        let reporting = report.clone();
        tokio::spawn(async move {
            shutdown.await;
            let began = tokio::time::Instant::now();
            lifecycle.start_draining();
            metrics.draining();
            {
                let mut r = reporting.lock().expect("report lock");
                r.began = Some(began);
                r.in_flight_at_signal = lifecycle.in_flight();
            }
            tracing::info!(
                drain = ?drain,
                requests_in_flight = lifecycle.in_flight(),
                refreshes_in_flight = tokens.refreshes_in_flight(),
                connections = signal_handle.connection_count(),
                "shutting down: /readyz answers 503; still serving, each response closing its connection, for the drain"
            );
            tokio::time::sleep(drain).await;
            let open = signal_handle.connection_count();
            tracing::info!(
                served_while_draining = lifecycle.served_while_draining(),
                requests_in_flight = lifecycle.in_flight(),
                refreshes_in_flight = tokens.refreshes_in_flight(),
                connections = open,
                grace = ?grace,
                "drained: the listener closes; idle connections close, in-flight requests and refreshes get the grace period"
            );
            let deadline = tokio::time::Instant::now() + grace;
            let _ = deadline_tx.send(deadline);
            signal_handle.graceful_shutdown(Some(grace));
            reporting.lock().expect("report lock").open_at_close = open;
            // Whatever is still open at the deadline is cut.
            tokio::time::sleep_until(deadline).await;
            reporting.lock().expect("report lock").cut = signal_handle.connection_count();
        });

        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!(
            listen = %local_addr,
            scheme,
            public_url = %config.public_url.issuer(),
            database = %config.database.display,
            kid = %state.keys.issuer().key().kid(),
            "chatgate is serving"
        );
        let limits = ConnLimits {
            max_connections: config.max_connections,
            max_connections_per_address: config.max_connections_per_address,
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
            trusted_proxies: config.trusted_proxies.clone(),
        };
        let metrics = state.metrics.clone();
        let served = match &config.tls {
            Some(tls) => {
                let tls = RustlsConfig::from_config(tls.clone());
                axum_server::from_tcp_rustls(listener, tls)
                    .map_err(AppError::Serve)?
                    .map(|tls| LimitAcceptor::new(tls, limits, metrics))
                    .handle(handle)
                    .serve(service)
                    .await
            }
            None => {
                axum_server::from_tcp(listener)
                    .map_err(AppError::Serve)?
                    .map(|plain| LimitAcceptor::new(plain, limits, metrics))
                    .handle(handle)
                    .serve(service)
                    .await
            }
        };
        // Refreshes run in tasks of their own: the ones still in flight get
        // what is left of the grace period to store what the IdP answered.
        let left = deadline
            .await
            .map(|at| at.saturating_duration_since(tokio::time::Instant::now()))
            .unwrap_or(Duration::ZERO);
        state.tokens.drain(left).await;
        for task in background {
            task.abort();
        }
        let left = state.tokens.refreshes_in_flight();
        state.audit.flush().await;
        state.store.close().await;
        let report = report.lock().expect("report lock").clone();
        tracing::info!(
            took = ?report.began.map(|b| b.elapsed()),
            requests_in_flight_at_signal = report.in_flight_at_signal,
            connections_at_listener_close = report.open_at_close,
            connections_closed_politely = report.open_at_close.saturating_sub(report.cut),
            connections_cut = report.cut,
            served_while_draining = state.lifecycle.served_while_draining(),
            refreshes_cut = left,
            "chatgate stopped"
        );
        served.map_err(AppError::Serve)
    }
}

/// Periodic work: the signing-key heartbeat (keeps the JWKS of every replica
/// current), sweeping expired rows, and delivering events.
fn spawn_background(state: &AppState) -> Vec<JoinHandle<()>> {
    let heartbeat = {
        let (keys, store) = (state.keys.clone(), state.store.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(KEY_HEARTBEAT);
            tick.tick().await; // the first tick is immediate; build() already refreshed
            loop {
                tick.tick().await;
                if let Err(e) = keys.refresh(&store, crate::time::now()).await {
                    tracing::warn!(error = %e, "signing-key heartbeat failed; will retry");
                }
            }
        })
    };
    let sweep = {
        let store = state.store.clone();
        let retention = state.config.audit_retention.as_secs() as i64;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tick.tick().await;
                let now = crate::time::now();
                match store.sweep(now, now - retention, SWEEP_BATCH).await {
                    Ok(swept) if swept.total() == 0 => {}
                    Ok(swept) => {
                        let by_table: Vec<String> = swept
                            .rows
                            .iter()
                            .filter(|(_, n)| *n > 0)
                            .map(|(t, n)| format!("{}={n}", t.name()))
                            .collect();
                        tracing::info!(rows = swept.total(), tables = %by_table.join(" "), "swept expired rows");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "sweeping expired rows failed; will retry")
                    }
                }
            }
        })
    };
    let forget = {
        let limits = state.rate_limits.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                limits.forget_idle();
            }
        })
    };
    let discovery = tokio::spawn(state.providers.clone().load_until_ready());
    let mut tasks = vec![heartbeat, sweep, forget, discovery];
    // Every replica delivers its share of the event outbox.
    if let Some(deliverer) = state.deliverer.clone() {
        tasks.push(tokio::spawn(deliverer.run()));
    }
    tasks
}

/// What a shutdown did, for its last log line.
#[derive(Debug, Clone, Default)]
struct ShutdownReport {
    began: Option<tokio::time::Instant>,
    in_flight_at_signal: usize,
    open_at_close: usize,
    cut: usize,
}

/// A listening socket on `addr`; with `reuse_port`, `SO_REUSEPORT` lets a
/// replacement process listen on the same address before this one stops.
fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    if !reuse_port {
        return TcpListener::bind(addr);
    }
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Completes on Ctrl-C or SIGTERM.
///
/// The handlers are installed when this is called, not when the future is
/// first polled: `run_until_stopped` polls it in a task of its own, which may
/// start after the first request is answered, and a SIGTERM in between would
/// otherwise kill the process without its drain (seen as a CI flake).
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let terminate = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
                match s {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(terminate) => {},
                () = wait(interrupt) => {},
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
