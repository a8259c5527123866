//! `chatgate serve` as a child process, for tests of the binary itself.
//!
//! The child listens on port 0 and the test reads the port from its "serving"
//! log line: a port picked by the test and freed again could be taken by
//! another test's server before the child binds it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::TestConfig;

pub struct ServeChild {
    pub child: Child,
    pub port: u16,
    log: JoinHandle<String>,
}

impl ServeChild {
    /// Starts `chatgate serve` on `cfg` and waits for its "serving" line.
    /// `rust_log` must let `chatgate::server`'s info lines through.
    pub async fn start(cfg: &TestConfig, rust_log: &str) -> Self {
        let path = cfg.write(0);
        let mut child = Command::new(env!("CARGO_BIN_EXE_chatgate"))
            .args(["serve", "--config", path.to_str().unwrap()])
            .envs(&cfg.env)
            .env_remove("CHATGATE_CONFIG")
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run chatgate serve");
        let (lines_tx, lines) = mpsc::channel::<String>();
        let err = child.stderr.take().unwrap();
        let log = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let _ = lines_tx.send(line.clone());
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let port = tokio::task::spawn_blocking(move || lines.iter().find_map(|l| serving_port(&l)));
        let port = tokio::time::timeout(Duration::from_secs(30), port)
            .await
            .expect("chatgate serve did not come up in 30 s")
            .unwrap();
        let Some(port) = port else {
            let _ = child.wait();
            panic!(
                "chatgate serve exited before serving:\n{}",
                log.join().unwrap()
            );
        };
        Self { child, port, log }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Sends SIGTERM and waits for the exit.
    pub async fn terminate(self) -> (ExitStatus, String) {
        let kill = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        self.wait().await
    }

    /// SIGKILL, the way a machine dies.
    pub async fn kill(self) -> (ExitStatus, String) {
        let mut this = self;
        this.child.kill().unwrap();
        this.wait().await
    }

    async fn wait(self) -> (ExitStatus, String) {
        let Self { mut child, log, .. } = self;
        tokio::task::spawn_blocking(move || {
            let status = child.wait().unwrap();
            (status, log.join().unwrap())
        })
        .await
        .unwrap()
    }
}

/// The port of a "chatgate is serving" log line, text or JSON.
fn serving_port(line: &str) -> Option<u16> {
    if !line.contains("chatgate is serving") {
        return None;
    }
    let after = &line[line.find("listen")?..];
    let addr = &after[after.find("127.0.0.1:")? + "127.0.0.1:".len()..];
    let digits: String = addr.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}
