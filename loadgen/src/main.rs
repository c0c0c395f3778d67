//! `loadgen`: the load tool and benchmark driver of the hotel CQRS services.
//!
//! It drives the real servers over gRPC, as a user's load-testing script
//! would, and measures them against references taken in the same run (see
//! `scripts/bench.sh` and `docs/decisions/0005-benchmark-method.md`).
//!
//! # Layout
//! - [`setup`]: registers the hotels and room types a run books into.
//! - [`hotels`]: the shape of that data set (ids, cities, dates), shared by
//!   `setup` and the workloads.
//! - [`mix`]: the operation mix (`book=70,cancel=10,...`) and its weighted
//!   choice.
//! - [`workload`]: the hotel workload of `run`: commands on the command
//!   server, queries on the query server, and the reservations they share.
//! - [`driver`]: runs any workload at a concurrency or a rate, for a
//!   duration or a count, with the progress bar.
//! - [`stats`]: per-RPC latency histograms and error counts, and the report
//!   of a run (text and JSON).
//! - [`echo`]: the trivial unary service (`grpc.health.v1.Health/Check`) and
//!   its driver: the transport's ceiling.
//! - [`otlp_sink`]: an OTLP trace receiver that only counts, for runs
//!   with tracing on.
//! - [`lag`]: projection lag, commit to queryable.
//! - [`catchup`]: replay speed of a fresh query server.
//! - [`report`] and [`chart`]: `BENCHMARKS.md` and its SVG chart from the
//!   results of a benchmark run.
//! - [`cli`]: flag types shared by the subcommands (durations, URLs).

mod catchup;
mod chart;
mod cli;
mod driver;
mod echo;
mod hotels;
mod lag;
mod mix;
mod otlp_sink;
mod report;
mod setup;
mod stats;
mod workload;

use clap::{Parser, Subcommand};

/// mimalloc, as in the servers: the load tool allocates for every call it
/// makes and every reply it decodes, and shares the cores with them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load tool for the hotel CQRS services: drives the command and query
/// servers over gRPC and reports throughput, latency percentiles and errors.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Registers the hotels and room types that `run` books into (hotels and
    /// room types that already exist are left as they are).
    Setup(setup::SetupArgs),
    /// Drives a mix of commands and queries and reports per-RPC throughput,
    /// latency and errors.
    Run(workload::RunArgs),
    /// Serves the trivial unary RPC `grpc.health.v1.Health/Check` (the
    /// transport-ceiling reference) until SIGINT or SIGTERM.
    EchoServer(echo::EchoServerArgs),
    /// Drives `Health/Check` on an echo server (or any gRPC server with the
    /// standard health service).
    Echo(echo::EchoArgs),
    /// Receives OpenTelemetry trace exports (OTLP/gRPC) and only counts
    /// them: the endpoint for servers run with tracing on in a benchmark.
    OtlpSink(otlp_sink::OtlpSinkArgs),
    /// Measures projection lag: from a command's reply until the query
    /// server can answer at its position.
    Lag(lag::LagArgs),
    /// Fills the event log up to N events, then times a fresh query server
    /// replaying all of it.
    Catchup(catchup::CatchupArgs),
    /// Writes BENCHMARKS.md and its SVG chart from a benchmark's results
    /// directory (as scripts/bench.sh leaves it).
    Report(report::ReportArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup(args) => setup::run(args).await,
        Command::Run(args) => workload::run(args).await,
        Command::EchoServer(args) => echo::serve(args).await,
        Command::Echo(args) => echo::run(args).await,
        Command::OtlpSink(args) => otlp_sink::serve(args).await,
        Command::Lag(args) => lag::run(args).await,
        Command::Catchup(args) => catchup::run(args).await,
        Command::Report(args) => report::run(args),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn every_flag_has_help() {
        Cli::command().debug_assert();
        for sub in Cli::command().get_subcommands() {
            for arg in sub.get_arguments() {
                assert!(
                    arg.get_help().is_some() || arg.get_id() == "help",
                    "loadgen {} --{} has no help line",
                    sub.get_name(),
                    arg.get_id()
                );
            }
        }
    }
}
