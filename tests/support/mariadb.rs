//! A real replicated MariaDB for the failover tests: a primary and a
//! replica `mariadbd` started by the test, each with a temporary datadir,
//! port and socket of its own, GTID replication from the one to the other,
//! semi-synchronous or asynchronous. Both are killed and their files
//! removed when the pair is dropped, a failed test's included.
//!
//! Needs the server binaries of Debian's `mariadb-server` (`mariadbd`,
//! `mariadb-install-db`), which `scripts/bootstrap-mariadb.sh` and
//! `scripts/test.sh` install when missing. The servers start with
//! `--no-defaults`: nothing of the machine's own MariaDB configuration
//! applies to them, and they never touch its datadir or port.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sqlx::{Connection, Executor, MySqlConnection, MySqlPool, Row};

use super::{TestDb, tcp_proxy::TcpProxy};

/// How a pair replicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replication {
    /// `rpl_semi_sync_master_enabled` with the wait point `AFTER_SYNC` on
    /// the primary: a commit returns, and becomes visible to anyone, only
    /// once the replica has it in its relay log.
    SemiSync,
    /// Plain asynchronous replication: the replica may miss the last commits.
    Async,
}

/// How long a server may take to answer after its start.
const START_PATIENCE: Duration = Duration::from_secs(60);
/// How long a replica may take to apply what it received.
const APPLY_PATIENCE_SECS: u32 = 30;
/// A semi-synchronous commit waits this long for the replica's
/// acknowledgement before the primary falls back to asynchronous
/// replication (which the tests check has not happened).
const SEMI_SYNC_TIMEOUT_MS: u32 = 10_000;

/// The first of `candidates` that exists, or on `PATH` as `name`.
fn find_program(name: &str, candidates: &[&str]) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(candidates.iter().map(PathBuf::from))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found (on PATH or in {candidates:?}): install Debian's mariadb-server \
                 (scripts/test.sh does)"
            )
        })
}

fn mariadbd() -> PathBuf {
    find_program(
        "mariadbd",
        &[
            "/usr/sbin/mariadbd",
            "/usr/sbin/mysqld",
            "/usr/bin/mariadbd",
        ],
    )
}

fn install_db() -> PathBuf {
    find_program(
        "mariadb-install-db",
        &["/usr/bin/mariadb-install-db", "/usr/bin/mysql_install_db"],
    )
}

/// mariadbd refuses to run as root unless told to (CI runs as root).
fn as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// One `mariadbd` of the pair, killed when dropped.
pub struct Server {
    pub name: &'static str,
    pub server_id: u32,
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Server {
    /// Starts mariadbd on the datadir `dir/data` (already initialised) with
    /// `options` beside the common ones, and waits until it answers.
    async fn start(name: &'static str, dir: &Path, server_id: u32, options: &[String]) -> Self {
        for _attempt in 0..3 {
            let port = free_port();
            let mut command = Command::new(mariadbd());
            command.arg("--no-defaults");
            if as_root() {
                command.arg("--user=root");
            }
            command
                .arg(format!("--datadir={}", dir.join("data").display()))
                .arg(format!("--port={port}"))
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
                .arg(format!("--tmpdir={}", private_tmpdir(dir).display()))
                .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
                .arg(format!("--log-error={}", dir.join("error.log").display()))
                .arg(format!("--server-id={server_id}"))
                .args([
                    "--skip-name-resolve",
                    "--log-bin=mariadb-bin",
                    "--binlog-format=ROW",
                    "--log-slave-updates=ON",
                    "--gtid-strict-mode=ON",
                    "--skip-slave-start",
                    "--character-set-server=utf8mb4",
                    "--collation-server=utf8mb4_general_ci",
                    "--max-connections=300",
                    "--performance-schema=OFF",
                    // Small and quick to start: a test's data is tiny.
                    "--innodb-buffer-pool-size=64M",
                    "--innodb-log-file-size=16M",
                    "--innodb-use-native-aio=OFF",
                    // The tests kill the process, never the machine: what
                    // was written stays in the page cache. Production keeps
                    // the default 1 (docs/failover.md).
                    "--innodb-flush-log-at-trx-commit=2",
                ])
                .args(options)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let child = command
                .spawn()
                .unwrap_or_else(|e| panic!("start mariadbd ({name}): {e}"));
            let mut server = Self {
                name,
                server_id,
                port,
                dir: dir.to_owned(),
                child: Some(child),
            };
            if server.answers().await {
                return server;
            }
            let log = server.error_log();
            server.kill9();
            if !log.contains("Bind on TCP/IP port") {
                panic!("mariadbd ({name}) did not start; its log:\n{log}");
            }
            // Someone took the port meanwhile: another one.
        }
        panic!("mariadbd ({name}) found no free port in 3 tries");
    }

    /// Waits until the server answers a query; false once it has exited.
    async fn answers(&mut self) -> bool {
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            if let Ok(mut conn) = MySqlConnection::connect(&self.url("")).await
                && conn.execute("SELECT 1").await.is_ok()
            {
                return true;
            }
            let exited = self
                .child
                .as_mut()
                .is_none_or(|child| child.try_wait().ok().flatten().is_some());
            if exited {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd ({}) did not answer within {START_PATIENCE:?}; its log:\n{}",
                self.name,
                self.error_log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// URL of `database` on this server, as root (no password).
    pub fn url(&self, database: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{database}", self.port)
    }

    /// An administrator's connection.
    pub async fn admin(&self) -> MySqlConnection {
        MySqlConnection::connect(&self.url(""))
            .await
            .unwrap_or_else(|e| panic!("connect to mariadbd ({}): {e}", self.name))
    }

    /// `database` on this server as a [`TestDb`] (its pool connects on
    /// first use). Never call its `cleanup`: that is for the shared server.
    pub fn test_db(&self, database: &str) -> TestDb {
        TestDb {
            name: database.to_owned(),
            url: self.url(database),
            pool: MySqlPool::connect_lazy(&self.url(database)).expect("a valid URL"),
        }
    }

    /// `SIGKILL`: the server dies mid-commit, as a machine would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `sql` (one statement, unprepared: replication statements cannot
/// be prepared) on `conn`.
pub async fn admin_sql(conn: &mut MySqlConnection, sql: &str) {
    conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A global status variable's value (`SHOW GLOBAL STATUS`).
pub async fn status_variable(conn: &mut MySqlConnection, name: &str) -> String {
    let row = conn
        .fetch_one(sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "SHOW GLOBAL STATUS LIKE '{name}'"
        ))))
        .await
        .unwrap_or_else(|e| panic!("status {name}: {e}"));
    row.try_get::<String, _>(1).expect("a value")
}

/// A column of the replica's `SHOW SLAVE STATUS` (empty when not a replica).
pub async fn slave_status(conn: &mut MySqlConnection, column: &str) -> String {
    let row = conn
        .fetch_optional(sqlx::raw_sql(sqlx::AssertSqlSafe(
            "SHOW SLAVE STATUS".to_owned(),
        )))
        .await
        .expect("SHOW SLAVE STATUS");
    row.map(|row| {
        row.try_get::<String, _>(column)
            .unwrap_or_else(|e| panic!("{column}: {e}"))
    })
    .unwrap_or_default()
}

/// A primary and its replica, with their files; all removed when dropped.
pub struct ReplicatedPair {
    pub replication: Replication,
    pub primary: Server,
    pub replica: Server,
    /// The replica's connection to the primary goes through it: paused,
    /// the replica falls behind, as over a stalled network.
    pub link: TcpProxy,
    /// Declared last: removed once both servers are dead.
    _dir: tempfile::TempDir,
}

impl ReplicatedPair {
    /// Initialises one datadir, copies it for the replica, starts both and
    /// the replication, and (semi-synchronous) waits until the primary
    /// counts the replica as its semi-synchronous client.
    pub async fn start(replication: Replication) -> Self {
        let started = Instant::now();
        let dir = tempfile::tempdir().expect("temp dir");
        let primary_dir = dir.path().join("primary");
        let replica_dir = dir.path().join("replica");
        std::fs::create_dir_all(&primary_dir).expect("primary dir");
        std::fs::create_dir_all(&replica_dir).expect("replica dir");
        initialise(&primary_dir.join("data"));
        let copied = Command::new("cp")
            .arg("-a")
            .arg(primary_dir.join("data"))
            .arg(replica_dir.join("data"))
            .status()
            .expect("run cp");
        assert!(copied.success(), "copy the datadir");

        // Both can take either role; only the primary's role is on now.
        let semi_sync = replication == Replication::SemiSync;
        let on = |yes: bool| if yes { "ON" } else { "OFF" };
        let primary = Server::start(
            "primary",
            &primary_dir,
            1,
            &[
                format!("--rpl-semi-sync-master-enabled={}", on(semi_sync)),
                "--rpl-semi-sync-master-wait-point=AFTER_SYNC".to_owned(),
                format!("--rpl-semi-sync-master-timeout={SEMI_SYNC_TIMEOUT_MS}"),
                format!("--rpl-semi-sync-slave-enabled={}", on(semi_sync)),
            ],
        )
        .await;
        let replica = Server::start(
            "replica",
            &replica_dir,
            2,
            &[
                "--read-only=ON".to_owned(),
                // The master side turns on when it gets a replica of its own
                // (docs/failover.md): with none, each commit would wait the
                // whole timeout.
                "--rpl-semi-sync-master-enabled=OFF".to_owned(),
                "--rpl-semi-sync-master-wait-point=AFTER_SYNC".to_owned(),
                format!("--rpl-semi-sync-slave-enabled={}", on(semi_sync)),
            ],
        )
        .await;

        let link = TcpProxy::start(primary.addr()).await;
        let mut conn = replica.admin().await;
        admin_sql(
            &mut conn,
            &format!(
                "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {}, \
                 MASTER_USER = 'root', MASTER_PASSWORD = '', MASTER_USE_GTID = slave_pos, \
                 MASTER_CONNECT_RETRY = 1",
                link.addr.port()
            ),
        )
        .await;
        admin_sql(&mut conn, "START SLAVE").await;
        let pair = Self {
            replication,
            primary,
            replica,
            link,
            _dir: dir,
        };
        pair.wait_for(|pair| async move {
            let mut conn = pair.replica.admin().await;
            slave_status(&mut conn, "Slave_IO_Running").await == "Yes"
                && slave_status(&mut conn, "Slave_SQL_Running").await == "Yes"
        })
        .await;
        if semi_sync {
            pair.wait_for(|pair| async move {
                let mut conn = pair.primary.admin().await;
                status_variable(&mut conn, "Rpl_semi_sync_master_clients").await == "1"
                    && status_variable(&mut conn, "Rpl_semi_sync_master_status").await == "ON"
            })
            .await;
        }
        eprintln!(
            "replicated MariaDB ({replication:?}) up in {:?}: primary :{}, replica :{}",
            started.elapsed(),
            pair.primary.port,
            pair.replica.port
        );
        pair
    }

    async fn wait_for<'a, F, Fut>(&'a self, check: F)
    where
        F: Fn(&'a Self) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + START_PATIENCE;
        while !check(self).await {
            assert!(
                Instant::now() < deadline,
                "replication did not start; primary's log:\n{}\nreplica's log:\n{}",
                self.primary.error_log(),
                self.replica.error_log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates a database of its own on the primary (and so the replica).
    pub async fn create_database(&self) -> String {
        let name = format!("hotel_f_{}", uuid::Uuid::new_v4().simple());
        let mut conn = self.primary.admin().await;
        admin_sql(&mut conn, &format!("CREATE DATABASE `{name}`")).await;
        name
    }

    /// Waits until the replica has applied everything the primary has
    /// written so far.
    pub async fn replica_caught_up(&self) {
        let mut primary = self.primary.admin().await;
        let position: String = sqlx::query_scalar("SELECT @@gtid_binlog_pos")
            .fetch_one(&mut primary)
            .await
            .expect("the primary's GTID position");
        let mut replica = self.replica.admin().await;
        wait_until_applied(&mut replica, &position).await;
    }

    /// Stops replication on the replica (both threads): from now on it
    /// misses what the primary commits.
    pub async fn stop_replication(&self) {
        let mut conn = self.replica.admin().await;
        admin_sql(&mut conn, "STOP SLAVE").await;
    }

    /// Promotes the replica, as docs/failover.md says, but for the last
    /// step (`SET GLOBAL read_only = OFF`, [`Self::open_for_writes`]): no
    /// more from the old primary, apply every transaction received (its
    /// relay log), forget the old primary. Returns the GTID position the
    /// new primary starts from.
    pub async fn promote_replica(&self) -> String {
        let mut conn = self.replica.admin().await;
        admin_sql(&mut conn, "STOP SLAVE IO_THREAD").await;
        admin_sql(&mut conn, "START SLAVE SQL_THREAD").await;
        let received = slave_status(&mut conn, "Gtid_IO_Pos").await;
        wait_until_applied(&mut conn, &received).await;
        admin_sql(&mut conn, "STOP SLAVE").await;
        admin_sql(&mut conn, "RESET SLAVE ALL").await;
        sqlx::query_scalar("SELECT @@gtid_current_pos")
            .fetch_one(&mut conn)
            .await
            .expect("the new primary's GTID position")
    }

    /// The promotion's last step: the new primary takes writes.
    pub async fn open_for_writes(&self) {
        let mut conn = self.replica.admin().await;
        admin_sql(&mut conn, "SET GLOBAL read_only = OFF").await;
    }

    /// The primary's semi-synchronous counters: (status, transactions
    /// acknowledged by the replica, transactions that were not).
    pub async fn semi_sync_counters(&self) -> (String, u64, u64) {
        let mut conn = self.primary.admin().await;
        let status = status_variable(&mut conn, "Rpl_semi_sync_master_status").await;
        let yes = status_variable(&mut conn, "Rpl_semi_sync_master_yes_tx").await;
        let no = status_variable(&mut conn, "Rpl_semi_sync_master_no_tx").await;
        (
            status,
            yes.parse().expect("a count"),
            no.parse().expect("a count"),
        )
    }
}

/// Waits until `conn`'s server (a replica) has applied GTID `position`.
async fn wait_until_applied(conn: &mut MySqlConnection, position: &str) {
    if position.is_empty() {
        return;
    }
    let waited: Option<i64> = sqlx::query_scalar("SELECT MASTER_GTID_WAIT(?, ?)")
        .bind(position)
        .bind(APPLY_PATIENCE_SECS)
        .fetch_one(conn)
        .await
        .expect("MASTER_GTID_WAIT");
    assert_eq!(
        waited,
        Some(0),
        "the replica did not apply {position} within {APPLY_PATIENCE_SECS} s"
    );
}

/// The instance's own directory for temporary files, made if missing. The
/// shared /tmp once failed an install beside a parallel test: "Error on
/// delete of '/tmp/#sql-temptable-…'".
fn private_tmpdir(dir: &Path) -> PathBuf {
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).expect("create the instance's tmpdir");
    tmp
}

/// `mariadb-install-db` into `datadir`: the system tables, root without a
/// password over TCP, nothing else.
fn initialise(datadir: &Path) {
    let mut command = Command::new(install_db());
    command.arg("--no-defaults");
    if as_root() {
        command.arg("--user=root");
    }
    let dir = datadir
        .parent()
        .expect("the datadir is inside the instance's directory");
    let output = command
        .arg(format!("--datadir={}", datadir.display()))
        .arg(format!("--tmpdir={}", private_tmpdir(dir).display()))
        .args([
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=64M",
            "--innodb-log-file-size=16M",
            "--innodb-use-native-aio=OFF",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run mariadb-install-db");
    assert!(
        output.status.success(),
        "mariadb-install-db failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
