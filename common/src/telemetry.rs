//! Structured logs through `tracing`.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global subscriber: `RUST_LOG` filters (default `info`), and
/// `json` selects one JSON object per line instead of human-readable text.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr: stdout carries only the "listening on" line that
    // scripts and tests read.
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(true)
        // Colours only on a terminal: not as escape codes in log files.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests that start several servers in one process) is fine.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
