//! What a run measures: per RPC, a latency histogram of the successful
//! calls and the failed calls by status code; and the summary of a run, as
//! text for people and JSON for scripts.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use hdrhistogram::Histogram;
use hotel_common::server::code_name;
use serde::{Deserialize, Serialize};
use tonic::Code;

/// Longest latency the histograms hold exactly, in microseconds (longer ones
/// are clamped to it).
const MAX_MICROS: u64 = 120_000_000;

/// The name under which projection lag is recorded, beside the RPCs.
pub const LAG: &str = "ProjectionLag";

/// Which figure an RPC counts towards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Command,
    Query,
    Echo,
    Lag,
}

impl Kind {
    pub fn of(rpc: &str) -> Self {
        match rpc {
            "BookRoom" | "CancelReservation" | "CheckIn" | "CheckOut" => Kind::Command,
            LAG => Kind::Lag,
            "Health/Check" => Kind::Echo,
            _ => Kind::Query,
        }
    }

    fn group(self) -> &'static str {
        match self {
            Kind::Command => "commands",
            Kind::Query => "queries",
            Kind::Echo => "echo",
            Kind::Lag => "lag",
        }
    }
}

/// Latencies and errors of one RPC.
#[derive(Clone)]
struct RpcStats {
    /// Latency of each successful call, in microseconds.
    latency: Histogram<u64>,
    /// Failed calls by gRPC status code name.
    errors: BTreeMap<String, u64>,
}

impl RpcStats {
    fn new() -> Self {
        Self {
            latency: Histogram::new_with_bounds(1, MAX_MICROS, 3)
                .expect("the bounds are valid constants"),
            errors: BTreeMap::new(),
        }
    }

    fn merge(&mut self, other: &RpcStats) {
        self.latency
            .add(&other.latency)
            .expect("histograms with the same bounds always add");
        for (code, n) in &other.errors {
            *self.errors.entry(code.clone()).or_default() += n;
        }
    }
}

/// Collects the outcome of calls. Each worker has its own; they are merged
/// at the end, so recording takes no lock.
#[derive(Clone, Default)]
pub struct Recorder {
    rpcs: BTreeMap<&'static str, RpcStats>,
    /// Calls recorded so far, successful or not.
    calls: u64,
    /// Failed calls recorded so far.
    failures: u64,
}

impl Recorder {
    pub fn ok(&mut self, rpc: &'static str, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(MAX_MICROS);
        self.entry(rpc)
            .latency
            .saturating_record(micros.clamp(1, MAX_MICROS));
        self.calls += 1;
    }

    pub fn error(&mut self, rpc: &'static str, code: Code) {
        *self
            .entry(rpc)
            .errors
            .entry(code_name(code).to_owned())
            .or_default() += 1;
        self.calls += 1;
        self.failures += 1;
    }

    /// Records a call's outcome: its latency when it succeeded, its status
    /// code when it failed.
    pub fn outcome<T>(
        &mut self,
        rpc: &'static str,
        latency: Duration,
        outcome: &Result<T, tonic::Status>,
    ) {
        match outcome {
            Ok(_) => self.ok(rpc, latency),
            Err(status) => self.error(rpc, status.code()),
        }
    }

    pub fn calls(&self) -> u64 {
        self.calls
    }

    pub fn failures(&self) -> u64 {
        self.failures
    }

    pub fn merge(&mut self, other: &Recorder) {
        for (rpc, stats) in &other.rpcs {
            self.entry(rpc).merge(stats);
        }
        self.calls += other.calls;
        self.failures += other.failures;
    }

    fn entry(&mut self, rpc: &'static str) -> &mut RpcStats {
        self.rpcs.entry(rpc).or_insert_with(RpcStats::new)
    }

    /// Summaries per RPC and per group (commands, queries, ...), rates over
    /// `elapsed`.
    pub fn summarize(&self, elapsed: Duration) -> (Vec<RpcSummary>, BTreeMap<String, RpcSummary>) {
        let mut groups: BTreeMap<Kind, RpcStats> = BTreeMap::new();
        let mut rpcs = Vec::new();
        for (rpc, stats) in &self.rpcs {
            rpcs.push(RpcSummary::from_stats(rpc, stats, elapsed));
            groups
                .entry(Kind::of(rpc))
                .or_insert_with(RpcStats::new)
                .merge(stats);
        }
        let groups = groups
            .into_iter()
            .map(|(kind, stats)| {
                let name = kind.group();
                (
                    name.to_owned(),
                    RpcSummary::from_stats(name, &stats, elapsed),
                )
            })
            .collect();
        (rpcs, groups)
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// One RPC (or group of RPCs) over a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RpcSummary {
    pub rpc: String,
    /// Successful calls.
    pub ok: u64,
    /// Successful calls per second of the run.
    pub per_sec: f64,
    /// Of the successful calls.
    pub latency_ms: Latency,
    /// Failed calls by status code.
    pub errors: BTreeMap<String, u64>,
}

impl RpcSummary {
    fn from_stats(rpc: &str, stats: &RpcStats, elapsed: Duration) -> Self {
        let h = &stats.latency;
        let ms = |micros: u64| micros as f64 / 1000.0;
        let latency = if h.is_empty() {
            Latency::default()
        } else {
            Latency {
                p50: ms(h.value_at_quantile(0.50)),
                p90: ms(h.value_at_quantile(0.90)),
                p99: ms(h.value_at_quantile(0.99)),
                max: ms(h.max()),
                mean: h.mean() / 1000.0,
            }
        };
        Self {
            rpc: rpc.to_owned(),
            ok: h.len(),
            per_sec: h.len() as f64 / elapsed.as_secs_f64().max(1e-9),
            latency_ms: latency,
            errors: stats.errors.clone(),
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// The result of one `run`, `echo` or `lag`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// Which subcommand produced it.
    pub mode: String,
    /// Workers (closed loop), or the cap on calls in flight (open loop).
    pub concurrency: usize,
    /// Target operations per second when the load was open-loop.
    pub rate: Option<f64>,
    /// The operation mix, for `run`.
    pub mix: Option<String>,
    /// Wall time of the measured part.
    pub elapsed_s: f64,
    /// Successful command RPCs per second (0 when none ran): what
    /// scripts/bench.sh halves for the lag run.
    pub commands_per_sec: f64,
    /// Successful query RPCs per second.
    pub queries_per_sec: f64,
    /// Per RPC, by name.
    pub rpcs: Vec<RpcSummary>,
    /// Per group: `commands`, `queries`, `echo`, `lag`.
    pub groups: BTreeMap<String, RpcSummary>,
    /// Notes on how the workload adapted (e.g. cancels that found nothing
    /// to cancel and booked instead).
    #[serde(default)]
    pub notes: Vec<String>,
}

impl RunReport {
    pub fn new(
        mode: &str,
        concurrency: usize,
        rate: Option<f64>,
        elapsed: Duration,
        recorder: &Recorder,
    ) -> Self {
        let (rpcs, groups) = recorder.summarize(elapsed);
        let per_sec = |group: &str| groups.get(group).map_or(0.0, |g| g.per_sec);
        Self {
            mode: mode.to_owned(),
            concurrency,
            rate,
            mix: None,
            elapsed_s: elapsed.as_secs_f64(),
            commands_per_sec: per_sec("commands"),
            queries_per_sec: per_sec("queries"),
            rpcs,
            groups,
            notes: Vec::new(),
        }
    }

    pub fn group(&self, name: &str) -> Option<&RpcSummary> {
        self.groups.get(name)
    }

    /// The human-readable table.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let load = match self.rate {
            Some(rate) => format!("rate {rate:.0}/s (at most {} in flight)", self.concurrency),
            None => format!("concurrency {}", self.concurrency),
        };
        let _ = writeln!(
            out,
            "loadgen {}: {:.1} s, {load}",
            self.mode, self.elapsed_s
        );
        if let Some(mix) = &self.mix {
            let _ = writeln!(out, "mix: {mix}");
        }
        let _ = writeln!(
            out,
            "{:<22} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8}",
            "rpc", "ok", "ok/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors"
        );
        let rows = self.rpcs.iter().chain(self.groups.values().filter(|g| {
            self.rpcs
                .iter()
                .filter(|r| Kind::of(&r.rpc).group() == g.rpc)
                .count()
                > 1
        }));
        for row in rows {
            let name = if self.groups.contains_key(&row.rpc) {
                format!("({} total)", row.rpc)
            } else {
                row.rpc.clone()
            };
            let l = &row.latency_ms;
            let _ = writeln!(
                out,
                "{name:<22} {:>9} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8}",
                row.ok,
                row.per_sec,
                l.p50,
                l.p90,
                l.p99,
                l.max,
                row.error_count()
            );
        }
        let errors: Vec<String> = self
            .rpcs
            .iter()
            .flat_map(|r| {
                r.errors
                    .iter()
                    .map(move |(code, n)| format!("{} {code} x{n}", r.rpc))
            })
            .collect();
        if errors.is_empty() {
            let _ = writeln!(out, "errors: none");
        } else {
            let _ = writeln!(out, "errors: {}", errors.join(", "));
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }

    /// Prints the report as JSON or as the table.
    pub fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string_pretty(self)?);
        } else {
            print!("{}", self.to_text());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_per_rpc_and_group() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        for ms in 1..=100 {
            a.ok("BookRoom", Duration::from_millis(ms));
        }
        b.ok("CancelReservation", Duration::from_millis(5));
        b.error("BookRoom", Code::Unavailable);
        b.ok("GetReservation", Duration::from_micros(300));
        a.merge(&b);
        assert_eq!(a.calls(), 103);
        assert_eq!(a.failures(), 1);

        let report = RunReport::new("run", 4, None, Duration::from_secs(2), &a);
        let book = report
            .rpcs
            .iter()
            .find(|r| r.rpc == "BookRoom")
            .expect("BookRoom");
        assert_eq!(book.ok, 100);
        assert!(
            (book.latency_ms.p50 - 50.0).abs() < 0.5,
            "{:?}",
            book.latency_ms
        );
        assert!((book.latency_ms.p99 - 99.0).abs() < 0.5);
        assert_eq!(book.errors.get("UNAVAILABLE"), Some(&1));
        assert_eq!(report.group("commands").map(|g| g.ok), Some(101));
        assert!((report.commands_per_sec - 50.5).abs() < 1e-9);
        assert!((report.queries_per_sec - 0.5).abs() < 1e-9);

        let json = serde_json::to_string(&report).expect("serializes");
        let back: RunReport = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back.rpcs.len(), 3);
        assert!(report.to_text().contains("(commands total)"));
    }
}
