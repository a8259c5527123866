//! A TCP proxy a test can cut and restore: the database connection that
//! breaks in the middle of a refresh, with the real database behind it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards 127.0.0.1:`port` to `target` until cut.
pub struct Proxy {
    pub port: u16,
    switch: Switch,
    task: tokio::task::JoinHandle<()>,
}

/// Cuts and restores a [`Proxy`]; cheap to clone and to move into a task.
#[derive(Clone)]
pub struct Switch {
    /// Bumped on every cut: connections of an older generation are dropped.
    generation: watch::Sender<u64>,
    up: Arc<AtomicBool>,
}

impl Switch {
    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (generation, _) = watch::channel(0u64);
        let up = Arc::new(AtomicBool::new(true));
        let (gen_tx, up_flag) = (generation.clone(), up.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !up_flag.load(Ordering::SeqCst) {
                    drop(client); // refused: the connection closes at once
                    continue;
                }
                let mut cut = gen_tx.subscribe();
                cut.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self {
            port,
            switch: Switch { generation, up },
            task,
        }
    }

    pub fn switch(&self) -> Switch {
        self.switch.clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.switch.generation.send_modify(|g| *g += 1);
    }
}
