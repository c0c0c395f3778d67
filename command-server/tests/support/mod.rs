//! Test support: an in-process command server on a free port, called over
//! real gRPC; the rest lives in `command_server::testing`.

#![allow(dead_code)]

use std::time::Duration;

pub use command_server::testing::*;
use command_server::{CommandServer, Config};
use hotel_common::pb::{
    command_service_client::CommandServiceClient, event_stream_client::EventStreamClient,
};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// A command server running in this process.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start(db: &TestDb) -> Self {
        Self::start_with(Config::for_tests(&db.url)).await
    }

    pub async fn start_with(config: Config) -> Self {
        let server = CommandServer::build(config)
            .await
            .expect("command server builds");
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .expect("valid url")
            .connect()
            .await
            .expect("connect to the test server")
    }

    pub async fn commands(&self) -> CommandServiceClient<Channel> {
        CommandServiceClient::new(self.channel().await)
    }

    pub async fn events(&self) -> EventStreamClient<Channel> {
        EventStreamClient::new(self.channel().await)
    }

    /// Stops the server and waits for it (bounded).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let finished = tokio::time::timeout(Duration::from_secs(15), task).await;
            assert!(
                finished.is_ok(),
                "the server stopped within its grace period"
            );
        }
    }
}
