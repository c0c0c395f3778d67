use clap::Parser;
use query_server::{Config, QueryServer};

/// mimalloc instead of the system allocator: every request allocates
/// (messages, strings, futures) on whichever worker thread runs it. Freed
/// memory goes back to the OS after 10 ms ([`hotel_common::allocator`]).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    hotel_common::allocator::configure();
    let config = Config::parse();
    let telemetry =
        hotel_common::telemetry::init(config.log_json, &config.tracing, "query-server")?;
    let server = QueryServer::build(config).await?;
    // Signals are handled from here on: a SIGTERM sent as soon as the
    // address below is read stops the server cleanly.
    let stop = hotel_common::server::shutdown_signal();
    // The one line on stdout: tests and scripts read the real address here.
    println!("query-server listening on {}", server.local_addr());
    let served = server.run_until_stopped(stop).await;
    telemetry.shutdown().await;
    served
}
