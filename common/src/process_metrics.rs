//! The standard `process_*` metrics every Prometheus client library exports
//! (CPU seconds, memory, file descriptors, start time, threads), read from
//! `/proc/self` at scrape time and rendered as Prometheus text.
//!
//! Rendered by hand rather than through the `metrics` recorder: its counters
//! are integers, and `process_cpu_seconds_total` is a float counter by
//! convention. Off Linux (no `/proc`) nothing is rendered.

use std::fmt::Write as _;

/// Clock ticks per second of `/proc/<pid>/stat` times: `USER_HZ`, which the
/// kernel fixes at 100 for user space on every architecture we run on
/// (reading `sysconf(_SC_CLK_TCK)` would need `unsafe`).
const TICKS_PER_SECOND: f64 = 100.0;

/// What `/proc/self` says about this process.
#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    /// User plus system CPU time.
    cpu_seconds: Option<f64>,
    resident_bytes: Option<u64>,
    virtual_bytes: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
    /// Seconds since the Unix epoch.
    start_time_seconds: Option<f64>,
    threads: Option<u64>,
}

/// The `process_*` families as Prometheus text (empty off Linux).
pub fn render() -> String {
    let stats = read();
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, value: Option<f64>| {
        if let Some(value) = value {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
            );
        }
    };
    family(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        stats.cpu_seconds,
    );
    family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        stats.resident_bytes.map(|v| v as f64),
    );
    family(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        stats.virtual_bytes.map(|v| v as f64),
    );
    family(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        stats.open_fds.map(|v| v as f64),
    );
    family(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        stats.max_fds.map(|v| v as f64),
    );
    family(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        stats.start_time_seconds,
    );
    family(
        "process_threads",
        "gauge",
        "Number of OS threads in the process.",
        stats.threads.map(|v| v as f64),
    );
    out
}

fn read() -> ProcessStats {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let mut stats = read("/proc/self/stat")
        .map(|stat| parse_stat(&stat, read("/proc/stat").as_deref().and_then(boot_time)))
        .unwrap_or_default();
    if let Some(status) = read("/proc/self/status") {
        stats.resident_bytes = status_kib(&status, "VmRSS:").map(|kib| kib * 1024);
        stats.virtual_bytes = status_kib(&status, "VmSize:").map(|kib| kib * 1024);
    }
    stats.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|entries| entries.count() as u64);
    stats.max_fds = read("/proc/self/limits")
        .as_deref()
        .and_then(max_open_files);
    stats
}

/// CPU time, threads and start time from `/proc/self/stat`; `boot_time` is
/// the system's boot time in seconds since the epoch.
fn parse_stat(stat: &str, boot_time: Option<u64>) -> ProcessStats {
    // The command name (field 2) is in parentheses and may hold spaces:
    // fields are counted from after its closing parenthesis, field 3 first.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return ProcessStats::default();
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |number: usize| -> Option<f64> { fields.get(number - 3)?.parse().ok() };
    let cpu_seconds = match (field(14), field(15)) {
        (Some(user), Some(system)) => Some((user + system) / TICKS_PER_SECOND),
        _ => None,
    };
    let start_time_seconds = match (boot_time, field(22)) {
        (Some(boot), Some(ticks)) => Some(boot as f64 + ticks / TICKS_PER_SECOND),
        _ => None,
    };
    ProcessStats {
        cpu_seconds,
        start_time_seconds,
        threads: field(20).map(|threads| threads as u64),
        ..ProcessStats::default()
    }
}

/// `btime` of `/proc/stat`.
fn boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// A `kB` line of `/proc/self/status`.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The soft limit of open files in `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with spaces and a parenthesis, as the kernel allows.
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 2000 0 0 0 \
                    250 50 0 0 20 0 7 0 12345 1000000 500 18446744073709551615";
        let stats = parse_stat(stat, Some(1_700_000_000));
        assert_eq!(stats.cpu_seconds, Some(3.0), "(250 + 50) ticks");
        assert_eq!(stats.threads, Some(7));
        let started = stats.start_time_seconds.expect("a start time");
        assert!((started - 1_700_000_123.45).abs() < 1e-3, "{started}");
    }

    #[test]
    fn status_limits_and_boot_time_parse() {
        let status = "Name:\tx\nVmSize:\t  123456 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(2048));
        assert_eq!(status_kib(status, "VmSize:"), Some(123_456));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_rendered_with_help_and_type() {
        let text = render();
        for family in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(&format!("# HELP {family} ")), "{text}");
            assert!(text.contains(&format!("\n{family} ")), "{text}");
        }
        assert!(text.contains("# TYPE process_cpu_seconds_total counter"));
    }
}
