//! The transport's ceiling: a tonic server whose only RPC is the standard
//! `grpc.health.v1.Health/Check` (a unary call that does no work), and a
//! driver for it that loads it exactly as `run` loads the query server.

use std::{net::SocketAddr, time::Instant};

use clap::Args;
use tonic::transport::{Channel, server::TcpIncoming};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    cli::{self, LoadArgs},
    driver::{self, Worker},
    stats::{Recorder, RunReport},
};

#[derive(Debug, Clone, Args)]
pub struct EchoServerArgs {
    /// Address to serve on; port 0 picks a free one. The real address is
    /// printed on stdout ("... listening on ADDR").
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Args)]
pub struct EchoArgs {
    /// URL of the echo server.
    #[arg(long, default_value = "http://127.0.0.1:50059")]
    pub url: String,

    #[command(flatten)]
    pub load: LoadArgs,
}

/// Serves Health/Check until SIGINT or SIGTERM.
pub async fn serve(args: EchoServerArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    // Handled before the port is announced (see `shutdown_signal`).
    let stop = hotel_common::server::shutdown_signal();
    // Scripts and tests read this line to learn the port.
    println!(
        "loadgen echo-server listening on {}",
        listener.local_addr()?
    );
    // The empty service name ("the server") reports SERVING from the start.
    let (_reporter, health) = tonic_health::server::health_reporter();
    // TCP_NODELAY on every accepted connection: without it, a response
    // written in two parts waits for the client's delayed ACK (~40 ms).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(health)
        .serve_with_incoming_shutdown(incoming, stop)
        .await?;
    Ok(())
}

pub async fn run(args: EchoArgs) -> anyhow::Result<()> {
    let channels = cli::connect_channels(
        &args.url,
        args.load.channels(),
        args.load.timeout,
        &Default::default(),
    )
    .await?;
    let workers = (0..args.load.workers())
        .map(|i| Echo {
            client: HealthClient::new(channels[i % channels.len()].clone()),
        })
        .collect();
    let (recorder, elapsed) = driver::drive(&args.load.load("echo"), workers).await;
    RunReport::new(
        "echo",
        args.load.concurrency,
        args.load.rate,
        elapsed,
        &recorder,
    )
    .print(args.load.json)
}

struct Echo {
    client: HealthClient<Channel>,
}

impl Worker for Echo {
    async fn step(&mut self, recorder: &mut Recorder, scheduled: Instant) {
        let reply = self
            .client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await;
        recorder.outcome("Health/Check", scheduled.elapsed(), &reply);
    }
}
