//! The limits every gRPC server of ours applies, so that no client can make
//! one hold unbounded memory, connections or time (guarantee 9): one set of
//! flags ([`ServerLimits`], flattened into each server's `Config`), the
//! tonic server they configure, the listener's connections and the message
//! size limits of each service.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http_body_util::BodyExt;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::{Instant, Sleep},
};
use tokio_stream::{Stream, StreamExt};
use tonic::{
    Code, Status,
    body::Body,
    codegen::http::{self, HeaderMap, HeaderValue},
    transport::{
        Server,
        server::{Connected, TcpIncoming},
    },
};
use tower_layer::{Identity, Layer, Stack};
use tower_service::Service;
use tracing::Instrument;

use crate::server::PlumbingCall;

/// Connection, stream, size and time limits of a gRPC server.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerLimits {
    /// Largest request message accepted, in bytes; a larger one gets
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "HOTEL_MAX_REQUEST_BYTES", default_value_t = 1024 * 1024)]
    pub max_request_bytes: usize,

    /// Largest reply message sent, in bytes; a larger one fails the call
    /// with RESOURCE_EXHAUSTED. Room for an event stream batch of 5,000
    /// events of the largest kind (query servers accept up to 64 MiB).
    #[arg(long, env = "HOTEL_MAX_REPLY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_reply_bytes: usize,

    /// Milliseconds a call may take to answer (a unary call, or a stream to
    /// start) before it gets DEADLINE_EXCEEDED; a client's shorter deadline
    /// wins.
    #[arg(long, env = "HOTEL_REQUEST_TIMEOUT_MS", default_value_t = 60_000)]
    pub request_timeout_ms: u64,

    /// Most concurrent HTTP/2 streams (calls, including open streams) on one
    /// connection (SETTINGS_MAX_CONCURRENT_STREAMS); clients queue the rest.
    #[arg(long, env = "HOTEL_MAX_CONCURRENT_STREAMS", default_value_t = 1024)]
    pub max_concurrent_streams: u32,

    /// Most calls of one connection being answered at once; more are shed
    /// at once with RESOURCE_EXHAUSTED rather than queued.
    #[arg(long, env = "HOTEL_MAX_CONCURRENT_REQUESTS", default_value_t = 256)]
    pub max_concurrent_requests: usize,

    /// Milliseconds between HTTP/2 pings on a connection, to find dead
    /// peers.
    #[arg(
        long,
        env = "HOTEL_HTTP2_KEEPALIVE_INTERVAL_MS",
        default_value_t = 30_000
    )]
    pub http2_keepalive_interval_ms: u64,

    /// Milliseconds to wait for a ping's answer before closing the
    /// connection.
    #[arg(
        long,
        env = "HOTEL_HTTP2_KEEPALIVE_TIMEOUT_MS",
        default_value_t = 20_000
    )]
    pub http2_keepalive_timeout_ms: u64,

    /// Seconds of silence before the kernel probes a TCP connection
    /// (SO_KEEPALIVE); 0 turns TCP keepalive off.
    #[arg(long, env = "HOTEL_TCP_KEEPALIVE_SECS", default_value_t = 60)]
    pub tcp_keepalive_secs: u64,

    /// Milliseconds a new connection gets to start speaking HTTP/2 (send
    /// its preface); one that stays silent longer is closed.
    #[arg(long, env = "HOTEL_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,

    /// Milliseconds a metrics scrape may take to send its request and read
    /// the reply; slower ones are dropped.
    #[arg(
        long,
        env = "HOTEL_METRICS_REQUEST_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub metrics_request_timeout_ms: u64,
}

/// The flags' defaults, or the `HOTEL_*` variables where set (for tests and
/// tools that build a `Config` by hand).
impl Default for ServerLimits {
    fn default() -> Self {
        <Self as clap::FromArgMatches>::from_arg_matches(
            &<Self as clap::Args>::augment_args(clap::Command::new("limits"))
                .no_binary_name(true)
                .get_matches_from(std::iter::empty::<String>()),
        )
        .expect("the defaults of the limits parse")
    }
}

impl ServerLimits {
    /// A tonic server with these limits: HTTP/2 streams, keepalive,
    /// per-connection concurrency with load shedding, and [`CallLimits`]
    /// (the request timeout and the status codes of size errors).
    pub fn server(&self) -> Server<Stack<CallLimitsLayer, Identity>> {
        Server::builder()
            .max_concurrent_streams(self.max_concurrent_streams)
            .http2_keepalive_interval(Some(millis(self.http2_keepalive_interval_ms)))
            .http2_keepalive_timeout(Some(millis(self.http2_keepalive_timeout_ms)))
            .concurrency_limit_per_connection(self.max_concurrent_requests.max(1))
            .load_shed(true)
            .layer(CallLimitsLayer {
                timeout: millis(self.request_timeout_ms),
                traced: crate::trace::exporting(),
            })
    }

    /// The connections of `listener`: Nagle's algorithm off (small replies
    /// leave at once), TCP keepalive on, and closed when silent for the
    /// handshake timeout.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> impl Stream<Item = io::Result<Handshake<TcpStream>>> + use<> {
        let keepalive =
            (self.tcp_keepalive_secs > 0).then(|| Duration::from_secs(self.tcp_keepalive_secs));
        let timeout = millis(self.handshake_timeout_ms);
        TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(keepalive)
            .map(move |accepted| accepted.map(|stream| Handshake::new(stream, timeout)))
    }

    /// The time a metrics request may take to arrive.
    pub fn metrics_request_timeout(&self) -> Duration {
        millis(self.metrics_request_timeout_ms)
    }
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms.max(1))
}

/// The HTTP/2 connection preface every client sends first (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;

/// A connection that must send its first [`PREFACE_LEN`] bytes within a
/// deadline; reading fails with `TimedOut` after it, which closes the
/// connection. Afterwards HTTP/2 keepalive watches it.
pub struct Handshake<IO> {
    /// The connection.
    inner: IO,
    /// Fires when the preface is late; `None` once it has arrived.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Preface bytes still to come.
    awaited: usize,
}

impl<IO> Handshake<IO> {
    fn new(inner: IO, timeout: Duration) -> Self {
        Self {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep_until(Instant::now() + timeout))),
            awaited: PREFACE_LEN,
        }
    }
}

impl<IO: Connected> Connected for Handshake<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Handshake<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some(deadline) = this.deadline.as_mut() {
            if let Poll::Ready(Ok(())) = read {
                let got = buf.filled().len() - before;
                this.awaited = this.awaited.saturating_sub(got);
                if this.awaited == 0 {
                    this.deadline = None;
                }
            } else if read.is_pending() && deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client did not start speaking HTTP/2 in time",
                )));
            }
        }
        read
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Handshake<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Applies [`ServerLimits`]' message sizes to a generated service.
pub trait MessageLimits: Sized {
    /// The service, refusing larger requests and replies.
    fn with_message_limits(self, limits: &ServerLimits) -> Self;
}

macro_rules! message_limits {
    ($($server:ty => $service:path),* $(,)?) => {$(
        impl<T: $service> MessageLimits for $server {
            fn with_message_limits(self, limits: &ServerLimits) -> Self {
                self.max_decoding_message_size(limits.max_request_bytes)
                    .max_encoding_message_size(limits.max_reply_bytes)
            }
        }
    )*};
}

message_limits! {
    crate::pb::command_service_server::CommandServiceServer<T> =>
        crate::pb::command_service_server::CommandService,
    crate::pb::event_stream_server::EventStreamServer<T> =>
        crate::pb::event_stream_server::EventStream,
    crate::wire::server::event_stream_server::EventStreamServer<T> =>
        crate::wire::server::event_stream_server::EventStream,
    crate::pb::query_service_server::QueryServiceServer<T> =>
        crate::pb::query_service_server::QueryService,
    crate::wire::server::query_service_server::QueryServiceServer<T> =>
        crate::wire::server::query_service_server::QueryService,
    crate::pb::query_admin_service_server::QueryAdminServiceServer<T> =>
        crate::pb::query_admin_service_server::QueryAdminService,
    tonic_health::pb::health_server::HealthServer<T> => tonic_health::pb::health_server::Health,
    tonic_reflection::server::v1::ServerReflectionServer<T> =>
        tonic_reflection::server::v1::ServerReflection,
    tonic_reflection::server::v1alpha::ServerReflectionServer<T> =>
        tonic_reflection::server::v1alpha::ServerReflection,
}

/// Layer of [`CallLimits`].
#[derive(Debug, Clone)]
pub struct CallLimitsLayer {
    /// The server's longest time to answer.
    timeout: Duration,
    /// Whether calls get a span of their own (tracing is on).
    traced: bool,
}

impl<S> Layer<S> for CallLimitsLayer {
    type Service = CallLimits<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallLimits {
            inner,
            timeout: self.timeout,
            traced: self.traced,
        }
    }
}

/// Around every call: answers `DEADLINE_EXCEEDED` when the call takes longer
/// than the server's timeout or the client's deadline (tonic's own timeout
/// says `CANCELLED`), and turns tonic's `OUT_OF_RANGE` for an over-size
/// message into `RESOURCE_EXHAUSTED` (this API keeps `OUT_OF_RANGE` for
/// positions beyond the head). With tracing on, each call runs in its span
/// ([`crate::trace::request_span`]), the child of the caller's
/// `traceparent`.
#[derive(Debug, Clone)]
pub struct CallLimits<S> {
    /// The routes.
    inner: S,
    /// The server's longest time to answer.
    timeout: Duration,
    /// Whether calls get a span of their own (tracing is on).
    traced: bool,
}

impl<S, B, RB> Service<http::Request<B>> for CallLimits<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: http_body::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    RB::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let timeout = client_deadline(request.headers())
            .map_or(self.timeout, |client| client.min(self.timeout));
        // Fixed now, before tonic's own timer for the client's deadline, so
        // this one fires first and the answer says DEADLINE_EXCEEDED.
        let deadline = Instant::now() + timeout;
        // Health and reflection have no handler of ours: counted here.
        let plumbing = PlumbingCall::start(request.uri().path());
        let span = self
            .traced
            .then(|| crate::trace::request_span(request.headers(), request.uri().path()))
            .flatten();
        match span {
            None => Box::pin(answer_within(
                self.inner.call(request),
                deadline,
                timeout,
                plumbing,
            )),
            Some(span) => {
                let call = span.in_scope(|| self.inner.call(request));
                Box::pin(
                    async move {
                        let answer = answer_within(call, deadline, timeout, plumbing).await;
                        if let Ok(response) = &answer {
                            record_status(response.headers());
                        }
                        answer
                    }
                    .instrument(span),
                )
            }
        }
    }
}

/// The call's answer, or `DEADLINE_EXCEEDED` at `deadline`; size errors
/// as `RESOURCE_EXHAUSTED`; a plumbing call counted by how it ends.
async fn answer_within<F, RB, E>(
    call: F,
    deadline: Instant,
    timeout: Duration,
    mut plumbing: Option<PlumbingCall>,
) -> Result<http::Response<Body>, E>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
    RB: http_body::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    RB::Error: Into<tonic::codegen::StdError>,
{
    match tokio::time::timeout_at(deadline, call).await {
        Ok(Ok(response)) => Ok(size_errors_exhaust_resources(response, plumbing)),
        Ok(Err(error)) => {
            if let Some(call) = &mut plumbing {
                call.ended(Code::Unknown);
            }
            Err(error)
        }
        Err(_) => {
            if let Some(call) = &mut plumbing {
                call.ended(Code::DeadlineExceeded);
            }
            Ok(
                Status::deadline_exceeded(format!("no answer within {} ms", timeout.as_millis()))
                    .into_http(),
            )
        }
    }
}

/// Marks the call's span with the status of a call that failed at once
/// (`grpc-status` in the headers; a call that answers has it in trailers).
fn record_status(headers: &HeaderMap) {
    let Some(code) = headers
        .get(Status::GRPC_STATUS)
        .and_then(|code| code.to_str().ok()?.parse::<i32>().ok())
    else {
        return;
    };
    let span = tracing::Span::current();
    span.record("rpc.grpc.status_code", code);
    if code != Code::Ok as i32 {
        span.record("otel.status_code", "ERROR");
    }
}

/// The client's `grpc-timeout`, if it sent a valid one.
fn client_deadline(headers: &HeaderMap) -> Option<Duration> {
    parse_grpc_timeout(headers.get("grpc-timeout")?.to_str().ok()?)
}

/// A `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Rewrites the size errors in the response's headers (a refused request)
/// and trailers (a refused reply); counts a plumbing call by the status it
/// ends with.
fn size_errors_exhaust_resources<RB>(
    response: http::Response<RB>,
    mut plumbing: Option<PlumbingCall>,
) -> http::Response<Body>
where
    RB: http_body::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    RB::Error: Into<tonic::codegen::StdError>,
{
    let (mut parts, body) = response.into_parts();
    rewrite_size_error(&mut parts.headers);
    if let Some(call) = &mut plumbing {
        call.saw(&parts.headers);
    }
    // The call is counted when its trailers pass, or when the body is
    // dropped without them (the closure owns it).
    let body = body.map_frame(move |mut frame| {
        if let Some(trailers) = frame.trailers_mut() {
            rewrite_size_error(trailers);
            if let Some(call) = &mut plumbing {
                call.saw(trailers);
            }
        }
        frame
    });
    http::Response::from_parts(parts, Body::new(body))
}

/// How tonic's message size errors begin (tonic::codec, decode and encode).
const SIZE_ERRORS: [&str; 2] = [
    "Error, decoded message length too large",
    "Error, encoded message length too large",
];

fn rewrite_size_error(headers: &mut HeaderMap) {
    // Every answer passes here: look at the code before parsing a status
    // (11 is OUT_OF_RANGE on the wire).
    const OUT_OF_RANGE: &[u8] = b"11";
    if headers
        .get(Status::GRPC_STATUS)
        .is_none_or(|code| code.as_bytes() != OUT_OF_RANGE)
    {
        return;
    }
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    if status.code() == Code::OutOfRange
        && SIZE_ERRORS
            .iter()
            .any(|prefix| status.message().starts_with(prefix))
    {
        headers.insert(
            Status::GRPC_STATUS,
            HeaderValue::from(Code::ResourceExhausted as i32),
        );
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        limits: ServerLimits,
    }

    #[test]
    fn defaults_are_those_of_the_flags() {
        let parsed = Flags::parse_from(["server"]).limits;
        let default = ServerLimits::default();
        assert_eq!(parsed.max_request_bytes, 1024 * 1024);
        assert_eq!(default.max_request_bytes, parsed.max_request_bytes);
        assert_eq!(default.request_timeout_ms, 60_000);
        let set = Flags::parse_from(["server", "--handshake-timeout-ms", "300"]).limits;
        assert_eq!(set.handshake_timeout_ms, 300);
    }

    #[test]
    fn only_size_errors_become_resource_exhausted() {
        let mut headers = HeaderMap::new();
        Status::out_of_range(
            "Error, decoded message length too large: found 2000000 bytes, the limit is: 1048576 bytes",
        )
        .add_header(&mut headers)
        .expect("headers");
        rewrite_size_error(&mut headers);
        let status = Status::from_header_map(&headers).expect("a status");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("too large"));

        let mut headers = HeaderMap::new();
        Status::out_of_range("from_position 9 is beyond the head 3")
            .add_header(&mut headers)
            .expect("headers");
        rewrite_size_error(&mut headers);
        let status = Status::from_header_map(&headers).expect("a status");
        assert_eq!(status.code(), Code::OutOfRange);
    }

    #[test]
    fn client_deadlines_parse() {
        let mut headers = HeaderMap::new();
        assert_eq!(client_deadline(&headers), None);
        headers.insert("grpc-timeout", HeaderValue::from_static("250m"));
        assert_eq!(client_deadline(&headers), Some(Duration::from_millis(250)));
        headers.insert("grpc-timeout", HeaderValue::from_static("2S"));
        assert_eq!(client_deadline(&headers), Some(Duration::from_secs(2)));
        headers.insert("grpc-timeout", HeaderValue::from_static("123456789S"));
        assert_eq!(client_deadline(&headers), None);
    }
}
