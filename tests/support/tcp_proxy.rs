//! A TCP forwarder standing for what moves a database address from one
//! server to another in a failover (a virtual IP, a DNS name, a proxy such
//! as MaxScale): clients connect to it, it connects them to its current
//! target. [`TcpProxy::point_at`] moves the target and cuts the open
//! connections, as a virtual IP that moved would; [`TcpProxy::pause`]
//! holds every byte in both directions until [`TcpProxy::resume`], as a
//! network that stalls.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
    task::JoinHandle,
};

pub struct TcpProxy {
    pub addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    /// Bumped on every move: connections of an older generation close.
    generation: watch::Sender<u64>,
    /// While true, no byte is passed on.
    paused: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free local port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let target = Arc::new(Mutex::new(target));
        let generation = watch::channel(0).0;
        let paused = watch::channel(false).0;
        let accept = tokio::spawn({
            let target = target.clone();
            let generation = generation.clone();
            let paused = paused.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let to = *target.lock().expect("target lock");
                    let moved = generation.subscribe();
                    tokio::spawn(forward(client, to, moved, paused.subscribe()));
                }
            }
        });
        Self {
            addr,
            target,
            generation,
            paused,
            accept,
        }
    }

    /// From now on connects clients to `target`; open connections are cut.
    pub fn point_at(&self, target: SocketAddr) {
        *self.target.lock().expect("target lock") = target;
        self.generation.send_modify(|generation| *generation += 1);
    }

    /// Holds every byte, both ways, on every connection, until [`Self::resume`].
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    pub fn resume(&self) {
        self.paused.send_replace(false);
    }
}

async fn forward(
    client: TcpStream,
    to: SocketAddr,
    mut moved: watch::Receiver<u64>,
    paused: watch::Receiver<bool>,
) {
    let Ok(server) = TcpStream::connect(to).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        () = pipe(client_read, server_write, paused.clone()) => {}
        () = pipe(server_read, client_write, paused) => {}
        _ = moved.changed() => {}
    }
}

/// Copies `from` to `to`, holding what it read while paused.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut paused: watch::Receiver<bool>) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if paused.wait_for(|paused| !*paused).await.is_err()
            || to.write_all(&buffer[..read]).await.is_err()
        {
            return;
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.generation.send_modify(|generation| *generation += 1);
    }
}
