//! Accepted connections that the server can cut.
//!
//! tonic's graceful shutdown waits for every stream on every connection to
//! finish, and a stream whose client grants no flow-control window never
//! does: its final status cannot even be sent. Dropping tonic's serve
//! future does not help either, since each connection runs in a task of its
//! own. So every connection is wrapped here, and when the shutdown grace
//! ends the server cuts them all: their reads and writes fail, hyper drops
//! the connection and everything it held. A subscriber's loop can also cut
//! its own connection (see [`ConnectionCut`]) when the client does not take
//! the stream's final status at shutdown, so one such client does not make
//! every shutdown last the whole grace.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{Notify, watch},
};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;

/// Cuts every connection of its `severable` stream at once.
pub struct Cutter(watch::Sender<bool>);

impl Cutter {
    pub fn cut(&self) {
        self.0.send_replace(true);
    }
}

/// Cuts one connection; found in the extensions of each request on it.
#[derive(Clone, Default)]
pub struct ConnectionCut(Arc<Notify>);

impl ConnectionCut {
    pub fn cut(&self) {
        self.0.notify_one();
    }
}

/// What tonic puts in each request's extensions for a [`Severable`]
/// connection: the transport's own information and the connection's cut.
#[derive(Clone)]
pub struct ConnectionInfo<T> {
    pub transport: T,
    pub cut: ConnectionCut,
}

/// Wraps each connection of `incoming` so that the returned [`Cutter`] can
/// end it.
pub fn severable<IO>(
    incoming: impl Stream<Item = io::Result<IO>>,
) -> (Cutter, impl Stream<Item = io::Result<Severable<IO>>>) {
    let (cutter, cut) = watch::channel(false);
    let wrapped = incoming.map(move |accepted| {
        accepted.map(|io| {
            let mut all = cut.clone();
            let own = ConnectionCut::default();
            let notified = own.0.clone();
            Severable {
                io,
                own,
                cut: Some(Box::pin(async move {
                    tokio::select! {
                        _ = all.wait_for(|cut| *cut) => {}
                        () = notified.notified() => {}
                    }
                })),
            }
        })
    });
    (Cutter(cutter), wrapped)
}

/// A connection that fails every read and write once cut.
pub struct Severable<IO> {
    io: IO,
    /// Cuts this connection alone.
    own: ConnectionCut,
    /// Resolves when cut; `None` from then on.
    cut: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl<IO> Severable<IO> {
    fn is_cut(&mut self, cx: &mut Context<'_>) -> bool {
        match self.cut.as_mut().map(|cut| cut.as_mut().poll(cx)) {
            None => true,
            Some(Poll::Ready(())) => {
                self.cut = None;
                true
            }
            Some(Poll::Pending) => false,
        }
    }
}

fn cut_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "cut at the end of the shutdown grace",
    )
}

impl<IO: AsyncRead + Unpin> AsyncRead for Severable<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Severable<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: Connected> Connected for Severable<IO> {
    type ConnectInfo = ConnectionInfo<IO::ConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnectionInfo {
            transport: self.io.connect_info(),
            cut: self.own.clone(),
        }
    }
}
