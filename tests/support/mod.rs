//! End-to-end support: start the real `command-server` and `query-server`
//! binaries (built by `cargo build --workspace --bins`, which
//! `scripts/test.sh` runs first), learn their ports from the line they
//! print, and stop them with SIGTERM or SIGKILL.

#![allow(dead_code)]

pub mod convergence;
pub mod mariadb;
pub mod tcp_proxy;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

pub use command_server::testing::*;
use hotel_common::pb::{
    command_service_client::CommandServiceClient, event_stream_client::EventStreamClient,
    query_service_client::QueryServiceClient,
};
use tonic::transport::Channel;

/// Path of a workspace binary next to the test executable's target dir.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A running server process, killed when dropped.
pub struct Process {
    pub name: String,
    pub addr: SocketAddr,
    child: Child,
    /// Where the process's stderr (its logs) goes.
    pub log: PathBuf,
}

impl Process {
    /// Starts `binary` with `args` and waits for its "listening on" line.
    pub fn start(name: &str, args: &[String], log_dir: &Path) -> Self {
        Self::start_with_env(name, args, &[], log_dir)
    }

    /// Starts `binary` with `args` and environment changes `env` (a `None`
    /// value removes the variable) and waits for its "listening on" line.
    pub fn start_with_env(
        name: &str,
        args: &[String],
        env: &[(&str, Option<&str>)],
        log_dir: &Path,
    ) -> Self {
        let log = log_dir.join(format!("{name}-{}.log", uuid::Uuid::new_v4().simple()));
        let stderr = std::fs::File::create(&log).expect("create log file");
        let mut command = Command::new(binary(name));
        for (key, value) in env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        let mut child = command
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (found, listening) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent && let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = found.send(addr.trim().to_owned());
                    sent = true;
                }
            }
        });
        let addr = match listening.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr.parse().expect("a socket address"),
            Err(_) => {
                let _ = child.kill();
                let logs = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("{name} did not start within 60 s; its log:\n{logs}");
            }
        };
        Self {
            name: name.to_owned(),
            addr,
            child,
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .expect("valid url")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn commands(&self) -> CommandServiceClient<Channel> {
        CommandServiceClient::new(self.channel().await)
    }

    pub async fn events(&self) -> EventStreamClient<Channel> {
        EventStreamClient::new(self.channel().await)
    }

    pub async fn queries(&self) -> QueryServiceClient<Channel> {
        QueryServiceClient::new(self.channel().await)
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        self.memory_kib("VmRSS:")
    }

    /// Peak resident memory so far (the high-water mark) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.memory_kib("VmHWM:")
    }

    /// A memory figure of /proc/PID/status in KiB (0 if unreadable).
    fn memory_kib(&self, field: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// SIGTERM, then waits (bounded) for a clean exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop within 20 s of SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (at most `patience`) for the process to exit by itself.
    pub async fn exited_within(&mut self, patience: Duration) -> ExitStatus {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} still runs after {patience:?}; its log:\n{}",
                self.name,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command server on a free port against `db`.
pub fn command_server(db: &TestDb, log_dir: &Path) -> Process {
    command_server_on(db, "127.0.0.1:0", log_dir)
}

/// A command server on a given address (to restart one where it was).
pub fn command_server_on(db: &TestDb, listen: &str, log_dir: &Path) -> Process {
    command_server_with(db, listen, &[], log_dir)
}

/// A command server on `listen` with `extra` flags.
pub fn command_server_with(db: &TestDb, listen: &str, extra: &[&str], log_dir: &Path) -> Process {
    command_server_with_env(db, listen, extra, &[], log_dir)
}

/// A command server on `listen` with `extra` flags and environment changes
/// (see [`Process::start_with_env`]).
pub fn command_server_with_env(
    db: &TestDb,
    listen: &str,
    extra: &[&str],
    env: &[(&str, Option<&str>)],
    log_dir: &Path,
) -> Process {
    let mut args: Vec<String> = vec![
        "--listen-addr".into(),
        listen.into(),
        "--database-url".into(),
        db.url.clone(),
        "--metrics-addr".into(),
        "off".into(),
        "--heartbeat-ms".into(),
        "200".into(),
    ];
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    Process::start_with_env("command-server", &args, env, log_dir)
}

/// Sends `signal` (e.g. "STOP", "CONT") to the process.
pub fn signal(process: &Process, signal: &str) {
    let sent = Command::new("kill")
        .args([format!("-{signal}"), process.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -{signal} {}", process.pid());
}

/// A query server following `command_url`, with its read model in `path`.
pub fn query_server(command_url: &str, path: &Path, log_dir: &Path) -> Process {
    query_server_with(command_url, path, &[], log_dir)
}

/// A query server as [`query_server`], with `extra` flags.
pub fn query_server_with(
    command_url: &str,
    path: &Path,
    extra: &[&str],
    log_dir: &Path,
) -> Process {
    query_server_with_env(command_url, path, extra, &[], log_dir)
}

/// A query server as [`query_server`] with `extra` flags and environment
/// changes (see [`Process::start_with_env`]).
pub fn query_server_with_env(
    command_url: &str,
    path: &Path,
    extra: &[&str],
    env: &[(&str, Option<&str>)],
    log_dir: &Path,
) -> Process {
    let mut args: Vec<String> = vec![
        "--listen-addr".into(),
        "127.0.0.1:0".into(),
        "--command-server-url".into(),
        command_url.into(),
        "--database-path".into(),
        path.display().to_string(),
        "--metrics-addr".into(),
        "off".into(),
    ];
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    Process::start_with_env("query-server", &args, env, log_dir)
}

/// Retries `check` until it returns `Some` or `patience` runs out.
pub async fn eventually<T, F, Fut>(patience: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + patience;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {patience:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `loadgen` with `args` to completion. Its environment is this one's
/// without `LOADGEN_TOKEN`, plus `env`.
pub fn loadgen_output(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(binary("loadgen"))
        .args(args)
        .env_remove("LOADGEN_TOKEN")
        .envs(env.iter().copied())
        .output()
        .expect("run loadgen")
}

/// Runs `loadgen` like [`loadgen_output`], checks that it succeeded, and
/// returns its stdout.
pub fn loadgen(args: &[&str], env: &[(&str, &str)]) -> String {
    let output = loadgen_output(args, env);
    assert!(
        output.status.success(),
        "loadgen {args:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("loadgen prints UTF-8")
}

/// The successful calls of `rpc` in a loadgen JSON report, after checking
/// that none failed.
pub fn ok_calls(report: &serde_json::Value, rpc: &str) -> u64 {
    let row = report["rpcs"]
        .as_array()
        .expect("rpcs is a list")
        .iter()
        .find(|row| row["rpc"] == rpc)
        .unwrap_or_else(|| panic!("{rpc} missing from the report:\n{report:#}"));
    assert_eq!(
        row["errors"],
        serde_json::json!({}),
        "{rpc} had errors:\n{report:#}"
    );
    row["ok"].as_u64().expect("ok is a count")
}
