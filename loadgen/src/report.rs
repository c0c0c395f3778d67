//! `loadgen report`: turns the results directory of a benchmark run (as
//! scripts/bench.sh fills it) into `BENCHMARKS.md` and its SVG chart.
//!
//! Everything above the notes marker is generated; the hand-written notes
//! below it in an existing `BENCHMARKS.md` are kept across runs.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Context;
use clap::Args;

use crate::{
    catchup::CatchupReport,
    chart::{self, Group, Panel, Series, number},
    stats::{RpcSummary, RunReport},
};

/// The line after which BENCHMARKS.md is written by hand.
const NOTES_MARKER: &str =
    "<!-- Hand-written notes below this line are kept when the benchmark rewrites this file. -->";

// The targets, as ratios or limits: issue 5's, raised by issue 15.
/// Commands at concurrency 64 against sysbench with 16 threads.
const COMMANDS_VS_SYSBENCH: f64 = 1.5;
/// One client's commands against sysbench with one thread.
const ONE_CLIENT_VS_SYSBENCH_ONE: f64 = 2.0;
/// Issue 11: two command servers on one database against one.
const TWO_INSTANCES_VS_ONE: f64 = 0.9;
/// The equal query mix against the echo service.
const QUERY_MIX_VS_ECHO: f64 = 0.7;
/// Each query alone against the echo service.
const QUERY_ALONE_VS_ECHO: f64 = 0.6;
const LAG_P99_MS: f64 = 20.0;
const CATCHUP_EVENTS_PER_SEC: f64 = 100_000.0;
/// 100 MiB, in KiB as /proc reports memory.
const RSS_LIMIT_KIB: f64 = 100.0 * 1024.0;
/// Issue 14: throughput with metrics on against off, and with tracing on
/// (10 % sampled) against metrics alone.
const METRICS_ON_VS_OFF: f64 = 0.97;
const TRACING_ON_VS_OFF: f64 = 0.90;

/// The server variants of the metrics and tracing comparison, as
/// scripts/bench.sh names their result files.
const OBS_VARIANTS: [&str; 3] = ["plain", "metrics", "traced"];

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// Directory holding the results of the benchmark run.
    #[arg(long)]
    pub dir: PathBuf,

    /// The Markdown file to write.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub out: PathBuf,

    /// The SVG chart to write (linked from the Markdown).
    #[arg(long, default_value = "docs/benchmarks.svg")]
    pub chart: PathBuf,
}

/// What one benchmark run measured; any part may be missing.
#[derive(Default)]
pub struct Results {
    /// Facts about the machine and the run, by name (date, commit, ...).
    meta: Vec<(String, String)>,
    /// sysbench oltp_write_only, 16 threads: transactions/s, avg and p95
    /// latency (ms).
    sysbench: Option<Sysbench>,
    /// The same with one thread: the reference of one client.
    sysbench_one: Option<Sysbench>,
    /// sysbench oltp_insert with one thread: one durable single-row commit
    /// after another, the floor of one client's commands.
    sysbench_insert_one: Option<Sysbench>,
    /// Commands at concurrency 1, 16, 64.
    commands: Vec<(usize, RunReport)>,
    /// Commands at concurrency 64 spread over two command servers.
    commands_two: Option<RunReport>,
    /// One command server at concurrency 64 again, right after the two:
    /// with the first, it brackets them (the log grows with every load).
    commands_one_after: Option<RunReport>,
    queries: Option<RunReport>,
    /// Each query alone at concurrency 64: (RPC name, report).
    query_parts: Vec<(&'static str, RunReport)>,
    echo: Option<RunReport>,
    /// The echo service at concurrency 1: the most one client's calls can
    /// do, whatever the call does.
    echo_one: Option<RunReport>,
    lag: Option<RunReport>,
    catchup: Option<CatchupReport>,
    /// Peak RSS of the command server and the query server, KiB.
    rss_command: Option<u64>,
    rss_query: Option<u64>,
    /// The metrics and tracing comparison: per variant (`OBS_VARIANTS`),
    /// the rounds of commands and of queries.
    obs_commands: Vec<Vec<ObsRun>>,
    obs_queries: Vec<Vec<ObsRun>>,
    /// Spans the counting OTLP sink received from the traced variant.
    obs_spans: Option<u64>,
    /// Clock ticks per second of the CPU times in `ObsRun`.
    obs_clock_ticks: Option<u64>,
}

/// One load of the metrics and tracing comparison.
#[derive(Debug, Clone)]
struct ObsRun {
    report: RunReport,
    /// CPU time (clock ticks) the loaded server used during the load.
    server_cpu_ticks: Option<u64>,
}

impl ObsRun {
    /// The loaded server's CPU time per operation, in microseconds.
    fn cpu_us_per_op(&self, per_sec: f64, clock_ticks: Option<u64>) -> Option<f64> {
        let operations = per_sec * self.report.elapsed_s;
        let ticks = self.server_cpu_ticks? as f64;
        let per_second = clock_ticks? as f64;
        (operations > 0.0 && per_second > 0.0).then(|| ticks / per_second * 1e6 / operations)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sysbench {
    pub tps: f64,
    pub avg_ms: f64,
    pub p95_ms: f64,
    pub threads: Option<u64>,
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let results = Results::load(&args.dir)?;
    let link = relative_link(&args.out, &args.chart);
    let previous = std::fs::read_to_string(&args.out).unwrap_or_default();
    let markdown = results.markdown(&link, kept_notes(&previous));
    if let Some(dir) = args.chart.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.chart, results.chart())
        .with_context(|| format!("writing {}", args.chart.display()))?;
    std::fs::write(&args.out, markdown)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("wrote {} and {}", args.out.display(), args.chart.display());
    Ok(())
}

/// The chart's path as the Markdown file links it.
fn relative_link(out: &Path, chart: &Path) -> String {
    let base = out.parent().unwrap_or(Path::new(""));
    chart
        .strip_prefix(base)
        .unwrap_or(chart)
        .display()
        .to_string()
}

/// The hand-written part of an existing BENCHMARKS.md.
fn kept_notes(previous: &str) -> Option<&str> {
    previous
        .split_once(NOTES_MARKER)
        .map(|(_, notes)| notes.trim_start_matches('\n'))
        .filter(|notes| !notes.trim().is_empty())
}

/// Parses the summary of `sysbench ... run`.
pub fn parse_sysbench(text: &str) -> Option<Sysbench> {
    let field = |name: &str| {
        text.lines()
            .find(|line| line.trim_start().starts_with(name))
            .and_then(|line| line.split(':').nth(1))
            .and_then(|value| value.split_whitespace().next())
            .and_then(|value| value.parse::<f64>().ok())
    };
    let tps = text
        .lines()
        .find(|line| line.trim_start().starts_with("transactions:"))
        .and_then(|line| line.split('(').nth(1))
        .and_then(|rate| rate.split_whitespace().next())
        .and_then(|rate| rate.parse().ok())?;
    Some(Sysbench {
        tps,
        avg_ms: field("avg:")?,
        p95_ms: field("95th percentile:").unwrap_or(0.0),
        threads: field("Number of threads:").map(|n| n as u64),
    })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Option<T>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("{} is not a loadgen result", path.display())),
        Err(_) => Ok(None),
    }
}

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl Results {
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        anyhow::ensure!(dir.is_dir(), "{} is not a directory", dir.display());
        let mut meta = Vec::new();
        for name in [
            "date", "commit", "cpu", "nproc", "memory", "mariadb", "load", "command", "note",
        ] {
            if let Ok(value) = std::fs::read_to_string(dir.join("meta").join(name)) {
                meta.push((name.to_owned(), value.trim_end().to_owned()));
            }
        }
        let mut commands = Vec::new();
        for concurrency in [1, 16, 64] {
            if let Some(report) = read_json(&dir.join(format!("commands-c{concurrency}.json")))? {
                commands.push((concurrency, report));
            }
        }
        let mut query_parts = Vec::new();
        for (file, rpc) in [
            ("get", "GetReservation"),
            ("availability", "GetAvailability"),
            ("search", "SearchAvailability"),
        ] {
            if let Some(report) = read_json(&dir.join(format!("queries-{file}-c64.json")))? {
                query_parts.push((rpc, report));
            }
        }
        let rounds = |kind: &str, variant: &str| -> anyhow::Result<Vec<ObsRun>> {
            let mut runs = Vec::new();
            for round in 1.. {
                let name = format!("obs-{kind}-{variant}-r{round}");
                match read_json(&dir.join(format!("{name}.json")))? {
                    Some(report) => runs.push(ObsRun {
                        report,
                        server_cpu_ticks: read_number(&dir.join(format!("{name}.cpu"))),
                    }),
                    None => break,
                }
            }
            Ok(runs)
        };
        let sysbench = |file: &str| {
            std::fs::read_to_string(dir.join(file))
                .ok()
                .and_then(|text| parse_sysbench(&text))
        };
        Ok(Self {
            meta,
            query_parts,
            sysbench: sysbench("sysbench.txt"),
            sysbench_one: sysbench("sysbench-1.txt"),
            sysbench_insert_one: sysbench("sysbench-insert-1.txt"),
            obs_commands: OBS_VARIANTS
                .iter()
                .map(|variant| rounds("commands", variant))
                .collect::<anyhow::Result<_>>()?,
            obs_queries: OBS_VARIANTS
                .iter()
                .map(|variant| rounds("queries", variant))
                .collect::<anyhow::Result<_>>()?,
            obs_spans: read_number(&dir.join("obs-spans")),
            obs_clock_ticks: read_number(&dir.join("obs-clock-ticks")),
            commands,
            commands_two: read_json(&dir.join("commands-c64-two.json"))?,
            commands_one_after: read_json(&dir.join("commands-c64-after.json"))?,
            queries: read_json(&dir.join("queries-c64.json"))?,
            echo: read_json(&dir.join("echo-c64.json"))?,
            echo_one: read_json(&dir.join("echo-c1.json"))?,
            lag: read_json(&dir.join("lag.json"))?,
            catchup: read_json(&dir.join("catchup.json"))?,
            rss_command: read_number(&dir.join("rss-command-server.kib")),
            rss_query: read_number(&dir.join("rss-query-server.kib")),
        })
    }

    fn meta(&self, name: &str) -> Option<&str> {
        self.meta
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn commands_at(&self, concurrency: usize) -> Option<&RunReport> {
        self.commands
            .iter()
            .find(|(c, _)| *c == concurrency)
            .map(|(_, report)| report)
    }

    /// The summary rows: figure, measured, reference, ratio, target, met.
    fn summary_rows(&self) -> Vec<[String; 6]> {
        let mut rows = Vec::new();
        let missing = || "not measured".to_owned();
        let verdict = |met: bool| if met { "yes" } else { "**no**" }.to_owned();

        // 1. Commands against sysbench: one client against one thread,
        // many against 16 threads.
        for concurrency in [1, 16, 64] {
            let measured = self.commands_at(concurrency).map(|r| r.commands_per_sec);
            let (sysbench, threads, target) = match concurrency {
                1 => (&self.sysbench_one, 1, Some(ONE_CLIENT_VS_SYSBENCH_ONE)),
                64 => (&self.sysbench, 16, Some(COMMANDS_VS_SYSBENCH)),
                _ => (&self.sysbench, 16, None),
            };
            let (reference, ratio, met) = match (sysbench, measured) {
                (Some(s), Some(m)) => (
                    format!(
                        "sysbench oltp_write_only, {threads} thread{}: {} tps",
                        if threads == 1 { "" } else { "s" },
                        number(s.tps)
                    ),
                    format!("{:.2}", m / s.tps),
                    target.map_or("(no target)".to_owned(), |t| verdict(m / s.tps >= t)),
                ),
                _ => (missing(), "-".to_owned(), "-".to_owned()),
            };
            rows.push([
                format!("1. commands/s, concurrency {concurrency}"),
                measured.map_or_else(missing, |m| format!("{}/s", number(m))),
                reference,
                ratio,
                target.map_or("-".to_owned(), |t| format!("≥ {t:.1} × sysbench")),
                met,
            ]);
        }

        // The floor of one client's commands: an acknowledged command is a
        // durable commit, and with one client no two commands can share
        // one; each is also one gRPC call. One durable single-row commit
        // from one thread (sysbench oltp_insert) plus one call that does
        // nothing (echo at concurrency 1), one after the other, is as fast
        // as a command can be; the concurrency-1 target is set beside it.
        if let Some(echo_one) = self.echo_one.as_ref().and_then(|r| r.group("echo")) {
            let needed = self
                .sysbench_one
                .as_ref()
                .map(|s| s.tps * ONE_CLIENT_VS_SYSBENCH_ONE);
            let (figure, floor, parts) = match &self.sysbench_insert_one {
                Some(commit) => (
                    "1. (the floor at concurrency 1) one durable commit, then one empty gRPC call",
                    1.0 / (1.0 / commit.tps + 1.0 / echo_one.per_sec),
                    format!(
                        "sysbench oltp_insert, 1 thread: {}/s; Health/Check, 1 client: {}/s",
                        number(commit.tps),
                        number(echo_one.per_sec)
                    ),
                ),
                None => (
                    "1. (the floor at concurrency 1) one empty gRPC call",
                    echo_one.per_sec,
                    format!("Health/Check, 1 client: {}/s", number(echo_one.per_sec)),
                ),
            };
            rows.push([
                figure.to_owned(),
                format!("{}/s ({parts})", number(floor)),
                needed.map_or_else(missing, |n| {
                    format!("what the target asks of one client: {}/s", number(n))
                }),
                needed.map_or_else(|| "-".to_owned(), |n| format!("{:.2}", floor / n)),
                "-".to_owned(),
                "(context: no command is faster)".to_owned(),
            ]);
        }

        // Two command servers on one database against one (issue 11): one
        // measured before the two and once more after them, so that the
        // log's growth between loads falls on both sides alike.
        if let Some(two) = &self.commands_two {
            let before = self.commands_at(64).map(|r| r.commands_per_sec);
            let after = self.commands_one_after.as_ref().map(|r| r.commands_per_sec);
            let (one, reference) = match (before, after) {
                (Some(before), Some(after)) => (
                    Some((before + after) / 2.0),
                    format!(
                        "one command server, concurrency 64, before and after the two: {}/s and \
                         {}/s, mean {}/s",
                        number(before),
                        number(after),
                        number((before + after) / 2.0)
                    ),
                ),
                (Some(before), None) => (
                    Some(before),
                    format!("one command server, concurrency 64: {}/s", number(before)),
                ),
                _ => (None, missing()),
            };
            let ratio = one.map(|one| two.commands_per_sec / one);
            rows.push([
                "1. commands/s, concurrency 64 over two command servers".to_owned(),
                format!("{}/s", number(two.commands_per_sec)),
                reference,
                ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}")),
                format!("≥ {TWO_INSTANCES_VS_ONE:.1} × one"),
                ratio.map_or_else(|| "-".to_owned(), |r| verdict(r >= TWO_INSTANCES_VS_ONE)),
            ]);
        }

        // 2. Queries against the echo service: the mix, then each alone.
        let echo = self
            .echo
            .as_ref()
            .and_then(|r| r.group("echo"))
            .map(|g| g.per_sec);
        let mut queries = vec![(
            "2. queries/s, concurrency 64, equal mix".to_owned(),
            self.queries.as_ref().map(|r| r.queries_per_sec),
            QUERY_MIX_VS_ECHO,
        )];
        for (rpc, report) in &self.query_parts {
            queries.push((
                format!("2. {rpc} alone/s, concurrency 64"),
                Some(report.queries_per_sec),
                QUERY_ALONE_VS_ECHO,
            ));
        }
        for (figure, measured, target) in queries {
            rows.push([
                figure,
                measured.map_or_else(missing, |q| format!("{}/s", number(q))),
                echo.map_or_else(missing, |e| {
                    format!(
                        "trivial tonic unary (Health/Check), concurrency 64: {}/s",
                        number(e)
                    )
                }),
                match (measured, echo) {
                    (Some(q), Some(e)) => format!("{:.2}", q / e),
                    _ => "-".to_owned(),
                },
                format!("≥ {target} × echo"),
                match (measured, echo) {
                    (Some(q), Some(e)) => verdict(q / e >= target),
                    _ => "-".to_owned(),
                },
            ]);
        }

        // 3. Lag.
        let lag = self
            .lag
            .as_ref()
            .and_then(|r| r.group("lag").map(|g| (r.rate, g)));
        rows.push([
            "3. projection lag, commit to queryable".to_owned(),
            lag.map_or_else(missing, |(_, g)| {
                format!(
                    "p50 {:.2} ms, p99 {:.2} ms",
                    g.latency_ms.p50, g.latency_ms.p99
                )
            }),
            lag.map_or_else(missing, |(rate, _)| {
                format!(
                    "at {}/s bookings (half the concurrency-64 command rate)",
                    number(rate.unwrap_or(0.0))
                )
            }),
            lag.map_or("-".to_owned(), |(_, g)| {
                format!("{:.2}", g.latency_ms.p99 / LAG_P99_MS)
            }),
            format!("p99 ≤ {LAG_P99_MS:.0} ms"),
            lag.map_or("-".to_owned(), |(_, g)| {
                verdict(g.latency_ms.p99 <= LAG_P99_MS)
            }),
        ]);

        // 4. Catch-up.
        let catchup = self.catchup.as_ref();
        rows.push([
            "4. catch-up, fresh query server".to_owned(),
            catchup.map_or_else(missing, |c| {
                format!(
                    "{} events/s ({} events in {:.1} s)",
                    number(c.events_per_sec),
                    number(c.events as f64),
                    c.replay_s
                )
            }),
            "-".to_owned(),
            catchup.map_or("-".to_owned(), |c| {
                format!("{:.2}", c.events_per_sec / CATCHUP_EVENTS_PER_SEC)
            }),
            format!("≥ {} events/s", number(CATCHUP_EVENTS_PER_SEC)),
            catchup.map_or("-".to_owned(), |c| {
                verdict(c.events_per_sec >= CATCHUP_EVENTS_PER_SEC)
            }),
        ]);

        // 5. Memory.
        let replayer = catchup.and_then(|c| c.query_server_peak_rss_kib);
        for (name, kib) in [
            ("command server", self.rss_command),
            ("query server", self.rss_query),
            ("query server replaying (catch-up)", replayer),
        ] {
            rows.push([
                format!("5. peak RSS, {name}"),
                kib.map_or_else(missing, mib),
                "VmHWM over the whole run".to_owned(),
                kib.map_or("-".to_owned(), |k| {
                    format!("{:.2}", k as f64 / RSS_LIMIT_KIB)
                }),
                "≤ 100 MiB".to_owned(),
                kib.map_or("-".to_owned(), |k| verdict(k as f64 <= RSS_LIMIT_KIB)),
            ]);
        }

        // 6. What metrics, then tracing, cost: in throughput, and in the
        // CPU time the loaded server spends per operation (steadier on a
        // shared machine, where the throughput moves with everything else).
        for (kind, rate_name, runs, per_sec) in [
            (
                "commands, concurrency 64",
                "commands/s, concurrency 64",
                &self.obs_commands,
                (|r: &RunReport| r.commands_per_sec) as fn(&RunReport) -> f64,
            ),
            (
                "queries, concurrency 64, equal mix",
                "queries/s, concurrency 64, equal mix",
                &self.obs_queries,
                |r: &RunReport| r.queries_per_sec,
            ),
        ] {
            // Each round's variants ran minutes apart, while the machine
            // and the growing database move the throughput from round to
            // round by more than the costs measured: each cost is the
            // median of the rounds' own ratios (ADR 0005, point 7).
            let rate = |variant: usize, round: usize| {
                runs.get(variant)?.get(round).map(|r| per_sec(&r.report))
            };
            let cpu = |variant: usize, round: usize| {
                let run = runs.get(variant)?.get(round)?;
                run.cpu_us_per_op(per_sec(&run.report), self.obs_clock_ticks)
            };
            let rounds = runs.iter().map(Vec::len).max().unwrap_or(0);
            for (figure, on, off, off_name, target) in [
                ("metrics on", 1, 0, "metrics off", METRICS_ON_VS_OFF),
                (
                    "metrics and tracing (10 % sampled) on",
                    2,
                    1,
                    "metrics on, tracing off",
                    TRACING_ON_VS_OFF,
                ),
            ] {
                // A measure's median for the variant on and the one off,
                // and its (on, off) pairs round by round.
                let medians = |measure: &dyn Fn(usize, usize) -> Option<f64>| {
                    let of =
                        |variant| median((0..rounds).filter_map(|r| measure(variant, r)).collect());
                    let pairs = (0..rounds)
                        .filter_map(|r| Some((measure(on, r)?, measure(off, r)?)))
                        .collect::<Vec<_>>();
                    (of(on), of(off), pairs)
                };
                let (measured, base, pairs) = medians(&rate);
                if measured.is_none() && base.is_none() {
                    continue;
                }
                let ratio = median(pairs.iter().map(|(on, off)| on / off).collect());
                rows.push([
                    format!("6. {rate_name}, {figure} (medians of {rounds} rounds)"),
                    measured.map_or_else(missing, |m| format!("{}/s", number(m))),
                    base.map_or_else(missing, |b| format!("{off_name}: {}/s", number(b))),
                    ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}")),
                    format!("≥ {target:.2} ×"),
                    ratio.map_or_else(|| "-".to_owned(), |r| verdict(r >= target)),
                ]);
                // The same cost as the server's CPU per operation: the
                // ratio is off/on, the throughput a CPU-bound server would
                // keep.
                let (measured, base, pairs) = medians(&cpu);
                let ratio = median(pairs.iter().map(|(on, off)| off / on).collect());
                if let (Some(measured), Some(base), Some(ratio)) = (measured, base, ratio) {
                    rows.push([
                        format!("6. {kind}, {figure}: server CPU per operation"),
                        format!("{measured:.1} µs"),
                        format!("{off_name}: {base:.1} µs"),
                        format!("{ratio:.2}"),
                        format!("≥ {target:.2} ×"),
                        verdict(ratio >= target),
                    ]);
                }
            }
        }
        rows
    }

    pub fn markdown(&self, chart_link: &str, notes: Option<&str>) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Benchmarks\n");
        let _ = writeln!(
            md,
            "<!-- Generated by `loadgen report` (run by scripts/bench.sh) down to the notes marker. -->\n"
        );
        let _ = writeln!(
            md,
            "One run of `scripts/bench.sh` on {}, commit `{}`. Every figure is compared with a \
             reference measured in the same run on the same machine, as DESIGN.md asks: the \
             machine is shared and noisy, so an absolute number alone means little. How each \
             figure is measured: [ADR 0005](docs/decisions/0005-benchmark-method.md).\n",
            self.meta("date").unwrap_or("an unknown date"),
            self.meta("commit").unwrap_or("unknown"),
        );

        let _ = writeln!(
            md,
            "## Against the targets (issue 5, raised by issue 15; issues 11 and 14)\n"
        );
        let _ = writeln!(
            md,
            "| figure | measured | reference (same run) | ratio | target | met |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|");
        for row in self.summary_rows() {
            let _ = writeln!(md, "| {} |", row.join(" | "));
        }
        let _ = writeln!(md, "\n![Throughput and latency]({chart_link})\n");

        let _ = writeln!(md, "## Machine and run\n");
        for (name, label) in [
            ("cpu", "CPU"),
            ("nproc", "nproc"),
            ("mariadb", "MariaDB"),
            ("load", "load average at the start"),
        ] {
            if let Some(value) = self.meta(name) {
                let _ = writeln!(md, "- {label}: {value}");
            }
        }
        if let Some(memory) = self.meta("memory") {
            let _ = writeln!(md, "- memory (`free -h`):\n\n```\n{memory}\n```");
        }
        if let Some(note) = self.meta("note") {
            let _ = writeln!(md, "\n{note}");
        }
        let _ = writeln!(
            md,
            "\nTo reproduce (from a clean clone, after the README set-up):\n"
        );
        let _ = writeln!(
            md,
            "```\n{}\n```\n",
            self.meta("command").unwrap_or("scripts/bench.sh")
        );

        let _ = writeln!(md, "## Details\n");
        if let Some(s) = &self.sysbench {
            let _ = writeln!(
                md,
                "**sysbench oltp_write_only** ({} threads, same MariaDB, database `sbtest`): {} \
                 transactions/s, latency avg {:.2} ms, p95 {:.2} ms.\n",
                s.threads.map_or("16".to_owned(), |t| t.to_string()),
                number(s.tps),
                s.avg_ms,
                s.p95_ms
            );
        }
        if let Some(s) = &self.sysbench_one {
            let _ = writeln!(
                md,
                "**sysbench oltp_write_only, 1 thread**: {} transactions/s, latency avg {:.2} ms, \
                 p95 {:.2} ms.\n",
                number(s.tps),
                s.avg_ms,
                s.p95_ms
            );
        }
        if let Some(s) = &self.sysbench_insert_one {
            let _ = writeln!(
                md,
                "**sysbench oltp_insert, 1 thread** (one single-row INSERT a transaction, each a \
                 durable commit): {} transactions/s, latency avg {:.2} ms, p95 {:.2} ms.\n",
                number(s.tps),
                s.avg_ms,
                s.p95_ms
            );
        }
        for (concurrency, report) in &self.commands {
            details(
                &mut md,
                &format!("Commands, concurrency {concurrency}"),
                report,
            );
        }
        if let Some(report) = &self.commands_two {
            details(
                &mut md,
                "Commands, concurrency 64, over two command servers",
                report,
            );
        }
        if let Some(report) = &self.commands_one_after {
            details(
                &mut md,
                "Commands, concurrency 64, one command server again (after the two)",
                report,
            );
        }
        if let Some(report) = &self.queries {
            details(&mut md, "Queries, concurrency 64", report);
        }
        for (rpc, report) in &self.query_parts {
            details(&mut md, &format!("{rpc} alone, concurrency 64"), report);
        }
        if let Some(report) = &self.echo {
            details(&mut md, "Echo (Health/Check), concurrency 64", report);
        }
        if let Some(report) = &self.echo_one {
            details(&mut md, "Echo (Health/Check), concurrency 1", report);
        }
        self.obs_details(&mut md);
        if let Some(report) = &self.lag {
            details(&mut md, "Projection lag", report);
        }
        if let Some(c) = &self.catchup {
            let _ = writeln!(md, "### Catch-up\n");
            let _ = writeln!(
                md,
                "A new query-server process on an empty SQLite file replayed {} events: start-up \
                 (to its listening line) {:.2} s, caught up after {:.2} s in all: **{} events/s** \
                 including start-up, {} events/s from its first checkpoint to the head. CPU time \
                 of the replaying query server: {}. Peak RSS while replaying: {}.\n",
                number(c.events as f64),
                c.startup_s,
                c.replay_s,
                number(c.events_per_sec),
                number(c.steady_events_per_sec),
                c.query_server_cpu_s
                    .map_or("unknown".to_owned(), |s| format!("{s:.2} s")),
                c.query_server_peak_rss_kib
                    .map_or("unknown".to_owned(), mib)
            );
            if !c.runs.is_empty() {
                let runs: Vec<String> = c
                    .runs
                    .iter()
                    .map(|run| {
                        format!(
                            "{} events/s, {}",
                            number(run.events_per_sec),
                            run.query_server_peak_rss_kib
                                .map_or("unknown".to_owned(), mib)
                        )
                    })
                    .collect();
                let _ = writeln!(
                    md,
                    "The log was replayed {} times, each by a new process on a new file: {}. \
                     The figures above are the median replay's, the peak RSS the highest of all.\n",
                    c.runs.len(),
                    runs.join("; ")
                );
            }
            if let Some(fill) = &c.fill {
                details(&mut md, "Filling the log for the catch-up", fill);
            }
        }

        let _ = writeln!(md, "{NOTES_MARKER}\n");
        match notes {
            Some(notes) => md.push_str(notes),
            None => md.push_str("## Notes\n\n(Analysis of the figures goes here.)\n"),
        }
        if !md.ends_with('\n') {
            md.push('\n');
        }
        md
    }

    pub fn chart(&self) -> String {
        let mut commands = Vec::new();
        let mut queries = Vec::new();
        let mut latency = Vec::new();
        for (concurrency, report) in &self.commands {
            commands.push(Group {
                label: format!("commands\nc{concurrency}"),
                bars: vec![(Series::Measured, report.commands_per_sec)],
            });
            if let Some(g) = report.group("commands") {
                latency.push(percentiles(&format!("commands\nc{concurrency}"), g));
            }
        }
        if let Some(s) = &self.sysbench_one {
            commands.push(Group {
                label: "sysbench write-only\n1 thread (tps)".to_owned(),
                bars: vec![(Series::Reference, s.tps)],
            });
        }
        if let Some(s) = &self.sysbench {
            commands.push(Group {
                label: "sysbench write-only\n16 threads (tps)".to_owned(),
                bars: vec![(Series::Reference, s.tps)],
            });
        }
        if let Some(report) = &self.queries {
            queries.push(Group {
                label: "queries, mix\nc64".to_owned(),
                bars: vec![(Series::Measured, report.queries_per_sec)],
            });
            if let Some(g) = report.group("queries") {
                latency.push(percentiles("queries, mix\nc64", g));
            }
        }
        for (rpc, report) in &self.query_parts {
            queries.push(Group {
                label: format!("{rpc}\nalone, c64"),
                bars: vec![(Series::Measured, report.queries_per_sec)],
            });
        }
        if let Some(g) = self.echo.as_ref().and_then(|r| r.group("echo")) {
            queries.push(Group {
                label: "echo (Health/Check)\nc64".to_owned(),
                bars: vec![(Series::Reference, g.per_sec)],
            });
            latency.push(percentiles("echo\nc64", g));
        }
        if let Some(g) = self.lag.as_ref().and_then(|r| r.group("lag")) {
            latency.push(percentiles("projection lag\nat half max", g));
        }
        let title = format!(
            "hotel-cqrs benchmark, {} (commit {})",
            self.meta("date").unwrap_or("?"),
            self.meta("commit").unwrap_or("?")
        );
        chart::svg(
            &title,
            &[
                Panel {
                    title: "Commands".to_owned(),
                    unit: "per second, against sysbench transactions per second".to_owned(),
                    groups: commands,
                },
                Panel {
                    title: "Queries".to_owned(),
                    unit: "per second, against a trivial tonic service".to_owned(),
                    groups: queries,
                },
                Panel {
                    title: "Latency".to_owned(),
                    unit: "milliseconds".to_owned(),
                    groups: latency,
                },
            ],
        )
    }
}

impl Results {
    /// The metrics and tracing comparison, round by round.
    fn obs_details(&self, md: &mut String) {
        if self.obs_commands.iter().all(Vec::is_empty) && self.obs_queries.iter().all(Vec::is_empty)
        {
            return;
        }
        let _ = writeln!(md, "### The cost of metrics and of tracing\n");
        let _ = writeln!(
            md,
            "Three servers of each kind on the same database: metrics and tracing off (the \
             servers of the figures above), metrics on (`--metrics-addr`), and metrics on with \
             tracing sampled at 10 % (`--otlp-endpoint` to `loadgen otlp-sink`, which counts \
             and drops; it received {} spans). The loads alternate between them round after \
             round, each round starting with the next variant; per second, with the CPU time \
             the loaded server used per operation. The throughput falls from round to round as \
             the database grows (by more than the costs measured), so each cost in the table \
             above is the median of the rounds' own ratios, not the ratio of the medians:\n",
            self.obs_spans
                .map_or("an unknown number of".to_owned(), |n| number(n as f64))
        );
        let _ = writeln!(
            md,
            "| load | metrics off | metrics on | metrics and tracing on |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|");
        for (kind, runs, per_sec) in [
            (
                "commands",
                &self.obs_commands,
                (|r: &RunReport| r.commands_per_sec) as fn(&RunReport) -> f64,
            ),
            ("queries", &self.obs_queries, |r: &RunReport| {
                r.queries_per_sec
            }),
        ] {
            let per_sec = |run: &ObsRun| {
                let rate = per_sec(&run.report);
                match run.cpu_us_per_op(rate, self.obs_clock_ticks) {
                    Some(cpu) => format!("{} ({cpu:.0} µs CPU/op)", number(rate)),
                    None => number(rate),
                }
            };
            let rounds = runs.iter().map(Vec::len).max().unwrap_or(0);
            for round in 0..rounds {
                let cells: Vec<String> = runs
                    .iter()
                    .map(|reports| reports.get(round).map_or("-".to_owned(), per_sec))
                    .collect();
                let _ = writeln!(
                    md,
                    "| {kind}, round {} | {} |",
                    round + 1,
                    cells.join(" | ")
                );
            }
        }
        let _ = writeln!(md);
    }
}

/// The median of some figures (the mean of the middle two for an even
/// count); `None` for none.
fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    })
}

fn percentiles(label: &str, g: &RpcSummary) -> Group {
    Group {
        label: label.to_owned(),
        bars: vec![
            (Series::P50, g.latency_ms.p50),
            (Series::P99, g.latency_ms.p99),
        ],
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// A run's per-RPC table.
fn details(md: &mut String, title: &str, report: &RunReport) {
    let _ = writeln!(md, "### {title}\n");
    let load = match report.rate {
        Some(rate) => format!(
            "open loop at {}/s, at most {} in flight",
            number(rate),
            report.concurrency
        ),
        None => format!("closed loop, {} workers", report.concurrency),
    };
    let _ = write!(md, "{:.1} s, {load}", report.elapsed_s);
    if let Some(mix) = &report.mix {
        let _ = write!(md, ", mix `{mix}`");
    }
    let _ = writeln!(md, ".\n");
    let _ = writeln!(
        md,
        "| rpc | ok | ok/s | p50 ms | p90 ms | p99 ms | max ms | errors |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---|");
    for row in report.rpcs.iter().chain(report.groups.values().filter(|g| {
        // A group row only where it sums several RPCs.
        report.rpcs.len() > 1 && g.rpc != "lag" && g.rpc != "echo"
    })) {
        let name = if report.groups.contains_key(&row.rpc) {
            format!("*all {}*", row.rpc)
        } else {
            row.rpc.clone()
        };
        let errors = if row.errors.is_empty() {
            "-".to_owned()
        } else {
            row.errors
                .iter()
                .map(|(code, n)| format!("{code} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let l = &row.latency_ms;
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {errors} |",
            row.ok,
            number(row.per_sec),
            l.p50,
            l.p90,
            l.p99,
            l.max
        );
    }
    for note in &report.notes {
        let _ = writeln!(md, "\nNote: {note}");
    }
    let _ = writeln!(md);
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSBENCH: &str = "\
Number of threads: 16
SQL statistics:
    transactions:                        23745  (2373.94 per sec.)
    queries:                             142470 (14243.63 per sec.)
Latency (ms):
         min:                                    1.52
         avg:                                    6.73
         max:                                  111.47
         95th percentile:                       11.65
";

    #[test]
    fn parses_the_sysbench_summary() {
        assert_eq!(
            parse_sysbench(SYSBENCH),
            Some(Sysbench {
                tps: 2373.94,
                avg_ms: 6.73,
                p95_ms: 11.65,
                threads: Some(16),
            })
        );
        assert_eq!(parse_sysbench("nothing"), None);
    }

    #[test]
    fn server_cpu_per_operation() {
        let report = RunReport::new(
            "run",
            64,
            None,
            std::time::Duration::from_secs(10),
            &crate::stats::Recorder::default(),
        );
        let run = ObsRun {
            report,
            // 2.5 s of CPU at 100 ticks a second.
            server_cpu_ticks: Some(250),
        };
        // 2,500 operations a second for 10 s: 100 µs each.
        let cpu = run.cpu_us_per_op(2_500.0, Some(100)).expect("a figure");
        assert!((cpu - 100.0).abs() < 1e-9, "{cpu}");
        assert_eq!(run.cpu_us_per_op(2_500.0, None), None);
        assert_eq!(run.cpu_us_per_op(0.0, Some(100)), None);
        let unmeasured = ObsRun {
            server_cpu_ticks: None,
            ..run
        };
        assert_eq!(unmeasured.cpu_us_per_op(2_500.0, Some(100)), None);
    }

    #[test]
    fn notes_survive_a_rewrite() {
        let results = Results::default();
        let first = results.markdown("docs/benchmarks.svg", None);
        let edited = format!("{first}\nWhat limits commands/s: the head lock.\n");
        let second = results.markdown("docs/benchmarks.svg", kept_notes(&edited));
        assert!(second.contains("What limits commands/s: the head lock."));
        assert_eq!(second.matches(NOTES_MARKER).count(), 1);
        assert!(second.contains("| 4. catch-up, fresh query server | not measured |"));
    }

    #[test]
    fn the_floor_of_one_client_is_a_commit_then_an_empty_call() {
        // One client's echo calls: 3,000 in 1 s, 0.3 ms each.
        let mut recorder = crate::stats::Recorder::default();
        for _ in 0..3_000 {
            recorder.ok("Health/Check", std::time::Duration::from_micros(300));
        }
        let echo_one = RunReport::new(
            "echo",
            1,
            None,
            std::time::Duration::from_secs(1),
            &recorder,
        );
        let floor_row = |results: &Results| {
            results
                .summary_rows()
                .into_iter()
                .find(|row| row[0].contains("floor at concurrency 1"))
        };
        let mut results = Results {
            sysbench_one: parse_sysbench(&SYSBENCH.replace("2373.94", "1000.00")),
            echo_one: Some(echo_one),
            ..Results::default()
        };
        // The echo alone: 3,000/s against the 2 x 1,000/s the target asks.
        let row = floor_row(&results).expect("a floor row");
        assert!(row[0].ends_with("one empty gRPC call"), "{row:?}");
        assert!(row[1].starts_with("3,000/s"), "{row:?}");
        assert!(row[2].ends_with("2,000/s"), "{row:?}");
        assert_eq!(row[3], "1.50");
        // With a commit of 1/6,000 s before each call: 1/(1/6,000 + 1/3,000)
        // = 2,000/s, exactly what is asked.
        results.sysbench_insert_one = parse_sysbench(&SYSBENCH.replace("2373.94", "6000.00"));
        let row = floor_row(&results).expect("a floor row");
        assert!(row[0].contains("one durable commit"), "{row:?}");
        assert!(
            row[1].starts_with("2,000/s (sysbench oltp_insert"),
            "{row:?}"
        );
        assert_eq!(row[3], "1.00");
        // Without the echo at one client, no such row.
        assert!(floor_row(&Results::default()).is_none());
    }

    #[test]
    fn two_command_servers_are_set_against_the_one_before_and_after_them() {
        let at = |commands_per_sec: f64| {
            let mut report = RunReport::new(
                "run",
                64,
                None,
                std::time::Duration::from_secs(10),
                &crate::stats::Recorder::default(),
            );
            report.commands_per_sec = commands_per_sec;
            report
        };
        let two_row = |results: &Results| {
            results
                .summary_rows()
                .into_iter()
                .find(|row| row[0].contains("two command servers"))
                .expect("a row for two servers")
        };
        let mut results = Results {
            commands: vec![(64, at(1_000.0))],
            commands_two: Some(at(720.0)),
            ..Results::default()
        };
        // Against the one before alone: 0.72, missed.
        let row = two_row(&results);
        assert_eq!(row[3], "0.72");
        assert_eq!(row[5], "**no**");
        // The one after ran on a larger log, slower: against the mean of
        // 1,000 and 600, 720 is 0.90, met.
        results.commands_one_after = Some(at(600.0));
        let row = two_row(&results);
        assert!(row[2].ends_with("1,000/s and 600/s, mean 800/s"), "{row:?}");
        assert_eq!(row[3], "0.90");
        assert_eq!(row[5], "yes");
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn the_chart_links_relative_to_the_markdown() {
        assert_eq!(
            relative_link(Path::new("BENCHMARKS.md"), Path::new("docs/benchmarks.svg")),
            "docs/benchmarks.svg"
        );
        assert_eq!(
            relative_link(Path::new("/r/BENCHMARKS.md"), Path::new("/r/docs/b.svg")),
            "docs/b.svg"
        );
    }
}
