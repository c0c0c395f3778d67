//! `loadgen catchup`: how fast a fresh query server replays the log. Fills
//! the event log up to `--events` with the booking workload (when it holds
//! fewer), then starts a new query-server process on an empty SQLite file
//! and polls GetProjectionStatus until its checkpoint reaches the head.

use std::{
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Args;
use hotel_common::pb::{
    self, event_stream_client::EventStreamClient, query_service_client::QueryServiceClient,
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::{
    cli::{self, AuthArgs, Conn, parse_duration},
    driver::{self, Load, Stop},
    hotels::{HotelArgs, Hotels},
    mix::Mix,
    setup::{self, SetupArgs},
    stats::RunReport,
    workload::{Clients, HotelWorker, Shared},
};

#[derive(Debug, Clone, Args)]
pub struct CatchupArgs {
    /// URL of the command server.
    #[arg(
        long,
        env = "LOADGEN_COMMAND_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub command_url: String,

    #[command(flatten)]
    pub auth: AuthArgs,

    /// Events the log must hold before the replay; bookings and
    /// cancellations are written until it does.
    #[arg(long, default_value_t = 200_000)]
    pub events: i64,

    /// The query-server binary to start (default: the one next to this
    /// loadgen binary).
    #[arg(long)]
    pub query_server_bin: Option<PathBuf>,

    #[command(flatten)]
    pub hotels: HotelArgs,

    /// Rooms per room type, should setup have to create the hotels.
    #[arg(long, default_value_t = 50)]
    pub inventory: i32,

    /// Workers writing the events.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,

    /// Bookings while filling start up to this many days ahead (a wide
    /// window keeps waiting lists short).
    #[arg(long, default_value_t = 700)]
    pub days: i64,

    /// Give up when the replay takes longer than this.
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Replays of the same log, each by a new query server on a new file:
    /// the report is the median one by events/s, with the highest peak RSS
    /// of them all (one replay's figure moves by 10-20 % on a shared host).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub runs: u32,

    /// Print the results as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One replay of several (`--runs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayRun {
    pub events_per_sec: f64,
    pub replay_s: f64,
    pub query_server_peak_rss_kib: Option<u64>,
    pub query_server_cpu_s: Option<f64>,
}

/// The result of a catch-up measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatchupReport {
    /// Events replayed: the head when the query server started.
    pub events: i64,
    /// The load that filled the log, when one was needed.
    pub fill: Option<RunReport>,
    /// From starting the process to its "listening" line.
    pub startup_s: f64,
    /// From starting the process to a checkpoint at the head.
    pub replay_s: f64,
    /// `events / replay_s`: start-up included.
    pub events_per_sec: f64,
    /// Events per second from the first checkpoint seen above 0 to the
    /// head: the replay alone.
    pub steady_events_per_sec: f64,
    /// Peak resident memory of the replaying query server (VmHWM).
    pub query_server_peak_rss_kib: Option<u64>,
    /// CPU time (user + system) the replaying query server used, in
    /// seconds: with `replay_s`, tells whether it was short of CPU.
    #[serde(default)]
    pub query_server_cpu_s: Option<f64>,
    /// Every replay, in order, when there were several (`--runs`): the
    /// figures above are the median one's, the peak RSS the highest.
    #[serde(default)]
    pub runs: Vec<ReplayRun>,
}

pub async fn run(args: CatchupArgs) -> anyhow::Result<()> {
    let binary = match &args.query_server_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("loadgen has no parent directory")?
            .join("query-server"),
    };
    if !binary.exists() {
        bail!(
            "{} does not exist: build it (cargo build --release --bins) or pass --query-server-bin",
            binary.display()
        );
    }

    let fill = fill(&args).await?;
    let mut events = EventStreamClient::new(connect(&args.command_url, &args.auth).await?);
    let head = events
        .get_head(pb::GetHeadRequest {})
        .await
        .context("GetHead")?
        .into_inner()
        .head;

    let mut replays = Vec::new();
    for _ in 0..args.runs {
        let dir =
            std::env::temp_dir().join(format!("loadgen-catchup-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let measured = replay(&args, &binary, &dir, head).await;
        if measured.is_ok() {
            let _ = std::fs::remove_dir_all(&dir);
        } else {
            eprintln!(
                "loadgen: the query server's files and log are kept in {}",
                dir.display()
            );
        }
        replays.push(measured?);
    }
    let mut report = median_replay(replays);
    report.fill = fill;

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        if !report.runs.is_empty() {
            let rates: Vec<String> = report
                .runs
                .iter()
                .map(|run| format!("{:.0}", run.events_per_sec))
                .collect();
            println!(
                "{} replays: {} events/s; the median one, with the highest peak RSS:",
                report.runs.len(),
                rates.join(", ")
            );
        }
        println!(
            "catch-up: {} events in {:.2} s = {:.0} events/s ({:.0}/s after start-up of {:.2} s); query server CPU {}; peak RSS {}",
            report.events,
            report.replay_s,
            report.events_per_sec,
            report.steady_events_per_sec,
            report.startup_s,
            report
                .query_server_cpu_s
                .map_or("unknown".to_owned(), |s| format!("{s:.2} s")),
            report
                .query_server_peak_rss_kib
                .map_or("unknown".to_owned(), |kib| format!(
                    "{:.1} MiB",
                    kib as f64 / 1024.0
                )),
        );
    }
    Ok(())
}

/// The median replay by events/s (the lower middle one of an even
/// number), carrying the highest peak RSS of all and every run.
fn median_replay(mut replays: Vec<CatchupReport>) -> CatchupReport {
    if replays.len() == 1 {
        return replays.remove(0);
    }
    let runs: Vec<ReplayRun> = replays
        .iter()
        .map(|r| ReplayRun {
            events_per_sec: r.events_per_sec,
            replay_s: r.replay_s,
            query_server_peak_rss_kib: r.query_server_peak_rss_kib,
            query_server_cpu_s: r.query_server_cpu_s,
        })
        .collect();
    let highest_rss = replays
        .iter()
        .filter_map(|r| r.query_server_peak_rss_kib)
        .max();
    replays.sort_by(|a, b| a.events_per_sec.total_cmp(&b.events_per_sec));
    let mut median = replays.swap_remove((replays.len() - 1) / 2);
    median.query_server_peak_rss_kib = highest_rss;
    median.runs = runs;
    median
}

async fn connect(url: &str, auth: &AuthArgs) -> anyhow::Result<Conn> {
    Ok(cli::connect(url, 1, Duration::from_secs(30), auth)
        .await?
        .remove(0))
}

/// Writes bookings and cancellations until the log holds `args.events`.
async fn fill(args: &CatchupArgs) -> anyhow::Result<Option<RunReport>> {
    let setup_args = SetupArgs {
        command_url: args.command_url.clone(),
        auth: args.auth.clone(),
        hotels: args.hotels.clone(),
        inventory: args.inventory,
    };
    setup::setup(&setup_args)
        .await
        .context("setup before filling the log")?;

    let mut events = EventStreamClient::new(connect(&args.command_url, &args.auth).await?);
    let head = events
        .get_head(pb::GetHeadRequest {})
        .await?
        .into_inner()
        .head;
    if head >= args.events {
        return Ok(None);
    }
    eprintln!(
        "loadgen: the log holds {head} events; writing until it holds {}",
        args.events
    );

    let mix = Mix::parse("book=85,cancel=15").expect("a valid literal mix");
    let shared = Arc::new(Shared::new(
        Hotels::new(&args.hotels),
        &mix,
        0.0,
        args.days.clamp(1, 700),
    ));
    let workers = args.concurrency.max(1);
    let clients = Clients::connect(
        &args.command_url,
        None,
        cli::channel_count(workers, 16),
        Duration::from_secs(30),
        &args.auth,
    )
    .await?;
    let fillers = (0..workers)
        .map(|i| HotelWorker::new(shared.clone(), mix.clone(), &clients, i))
        .collect();

    let full = Arc::new(AtomicBool::new(false));
    let watcher = {
        let full = full.clone();
        let target = args.events;
        tokio::spawn(async move {
            while !full.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(250)).await;
                match events.get_head(pb::GetHeadRequest {}).await {
                    Ok(reply) if reply.get_ref().head >= target => {
                        full.store(true, Ordering::Relaxed)
                    }
                    Ok(_) => {}
                    Err(status) => eprintln!("loadgen: GetHead failed while filling: {status}"),
                }
            }
        })
    };
    let load = Load {
        rate: None,
        stop: Stop::When(full.clone()),
        label: "fill".into(),
        progress: true,
    };
    let (recorder, elapsed) = driver::drive(&load, fillers).await;
    full.store(true, Ordering::Relaxed);
    let _ = watcher.await;
    let mut report = RunReport::new("fill", workers, None, elapsed, &recorder);
    report.mix = Some(mix.to_string());
    Ok(Some(report))
}

/// Starts a query server on an empty file in `dir` and times its replay up
/// to `head`.
async fn replay(
    args: &CatchupArgs,
    binary: &std::path::Path,
    dir: &std::path::Path,
    head: i64,
) -> anyhow::Result<CatchupReport> {
    let log = std::fs::File::create(dir.join("query-server.log"))?;
    let started = Instant::now();
    let mut command = Command::new(binary);
    // It checks no tokens and serves plain text itself, whatever this
    // shell's environment says, and subscribes with loadgen's token and TLS
    // files, which it takes from its environment (not its command line,
    // which `ps` shows).
    for name in [
        "HOTEL_AUTH_TOKENS",
        "HOTEL_COMMAND_SERVER_TOKEN",
        "HOTEL_TLS_CERT",
        "HOTEL_TLS_KEY",
        "HOTEL_TLS_CLIENT_CA",
        "HOTEL_COMMAND_SERVER_CA",
        "HOTEL_COMMAND_SERVER_CLIENT_CERT",
        "HOTEL_COMMAND_SERVER_CLIENT_KEY",
    ] {
        command.env_remove(name);
    }
    if let Some(token) = args.auth.token.token() {
        command.env("HOTEL_COMMAND_SERVER_TOKEN", token);
    }
    let tls = [
        ("HOTEL_COMMAND_SERVER_CA", &args.auth.tls_ca),
        ("HOTEL_COMMAND_SERVER_CLIENT_CERT", &args.auth.tls_cert),
        ("HOTEL_COMMAND_SERVER_CLIENT_KEY", &args.auth.tls_key),
    ];
    for (name, file) in tls {
        if let Some(file) = file {
            command.env(name, file);
        }
    }
    let mut child = command
        .args(["--listen-addr", "127.0.0.1:0", "--metrics-addr", "off"])
        .arg("--command-server-url")
        .arg(&args.command_url)
        .arg("--database-path")
        .arg(dir.join("read-model.db"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let result = follow(&mut child, args, head, started).await;
    stop(&mut child).await;
    result
}

async fn follow(
    child: &mut Child,
    args: &CatchupArgs,
    head: i64,
    started: Instant,
) -> anyhow::Result<CatchupReport> {
    let stdout = child.stdout.take().context("the child's stdout is piped")?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(addr) = line.split("listening on ").nth(1) {
                return Ok(addr.trim().to_owned());
            }
        }
        bail!("the query server exited before listening")
    })
    .await
    .context("the query server did not start listening within 60 s")??;
    let startup = started.elapsed();
    // Keep its stdout drained, should it print more.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let pid = child.id();
    // The replaying server checks no tokens and serves plain text.
    let mut queries =
        QueryServiceClient::new(connect(&format!("http://{addr}"), &AuthArgs::default()).await?);
    let mut first: Option<(Instant, i64)> = None;
    loop {
        if started.elapsed() > args.timeout {
            bail!(
                "the replay did not reach position {head} within {:?}",
                args.timeout
            );
        }
        if let Some(status) = child.try_wait()? {
            bail!("the query server exited during the replay: {status}");
        }
        let checkpoint = match queries
            .get_projection_status(pb::GetProjectionStatusRequest {})
            .await
        {
            Ok(reply) => reply.into_inner().checkpoint,
            Err(status) => {
                eprintln!("loadgen: GetProjectionStatus: {status}");
                0
            }
        };
        let now = Instant::now();
        if checkpoint > 0 && first.is_none() {
            first = Some((now, checkpoint));
        }
        if checkpoint >= head {
            let replay = now - started;
            let steady = match first {
                Some((at, from)) if now > at && checkpoint > from => {
                    (checkpoint - from) as f64 / (now - at).as_secs_f64()
                }
                _ => head as f64 / replay.as_secs_f64(),
            };
            return Ok(CatchupReport {
                events: head,
                fill: None,
                startup_s: startup.as_secs_f64(),
                replay_s: replay.as_secs_f64(),
                events_per_sec: head as f64 / replay.as_secs_f64(),
                steady_events_per_sec: steady,
                query_server_peak_rss_kib: pid.and_then(peak_rss_kib),
                query_server_cpu_s: pid.and_then(cpu_seconds),
                runs: Vec::new(),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// SIGTERM, a bounded wait, then SIGKILL.
async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

/// Peak resident memory of a process (VmHWM), in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time (user + system) a process has used, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields 14 and 15 (utime,
    // stime) count from after its closing parenthesis.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(ticks as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_peak_rss_and_cpu() {
        let kib = super::peak_rss_kib(std::process::id()).expect("VmHWM on Linux");
        assert!(kib > 100);
        let busy = std::time::Instant::now();
        while busy.elapsed() < std::time::Duration::from_millis(50) {}
        let cpu = super::cpu_seconds(std::process::id()).expect("stat on Linux");
        assert!(cpu > 0.0);
    }

    fn replay(events_per_sec: f64, rss_kib: u64) -> CatchupReport {
        CatchupReport {
            events: 1_000,
            fill: None,
            startup_s: 0.01,
            replay_s: 1_000.0 / events_per_sec,
            events_per_sec,
            steady_events_per_sec: events_per_sec,
            query_server_peak_rss_kib: Some(rss_kib),
            query_server_cpu_s: Some(1.0),
            runs: Vec::new(),
        }
    }

    #[test]
    fn several_replays_report_the_median_rate_and_the_highest_peak_rss() {
        let report = median_replay(vec![
            replay(60_000.0, 70_000),
            replay(50_000.0, 90_000),
            replay(70_000.0, 80_000),
        ]);
        assert_eq!(report.events_per_sec, 60_000.0);
        assert_eq!(report.query_server_peak_rss_kib, Some(90_000));
        let rates: Vec<f64> = report.runs.iter().map(|r| r.events_per_sec).collect();
        assert_eq!(rates, [60_000.0, 50_000.0, 70_000.0], "every run, in order");
    }

    #[test]
    fn one_replay_is_reported_as_it_is() {
        let report = median_replay(vec![replay(60_000.0, 70_000)]);
        assert_eq!(report.events_per_sec, 60_000.0);
        assert!(report.runs.is_empty());
    }
}
