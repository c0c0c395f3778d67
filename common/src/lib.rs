//! What the command server and the query servers share.
//!
//! # Layout
//! - [`pb`]: the generated `hotel.v1` code and its file descriptor set.
//! - [`wire`]: the event stream's message as the command server sends it,
//!   stored payloads spliced in, and its `EventStream` server.
//! - [`validate`]: parsing and checking of request fields, collecting every
//!   problem into one `INVALID_ARGUMENT` with `google.rpc.BadRequest` details.
//! - [`dates`]: the calendar-date format of the API (`YYYY-MM-DD`).
//! - [`nights`]: what each event does to the night counts, for everything
//!   that follows the log.
//! - [`allocator`]: how long mimalloc keeps freed memory.
//! - [`server`]: health, reflection, metrics and shutdown plumbing for tonic.
//! - [`process_metrics`]: the standard `process_*` metrics, from `/proc`.
//! - [`limits`]: the flags every server shares for message sizes, timeouts,
//!   streams and connections, and the tonic server they configure.
//! - [`auth`]: bearer tokens mapped to roles; the interceptors that check
//!   them on a server and attach one to our own outgoing calls.
//! - [`tls`]: TLS and mutual TLS settings of the servers and our clients.
//! - [`telemetry`]: structured logs, and the OpenTelemetry span exporter
//!   when tracing is on.
//! - [`trace`]: W3C trace context: a call's `traceparent`, the context an
//!   event carries, the spans that follow it.

pub mod allocator;
pub mod auth;
pub mod dates;
pub mod limits;
pub mod nights;
pub mod process_metrics;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod validate;
pub mod wire;

/// Generated code for package `hotel.v1`.
#[allow(clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod pb {
    tonic::include_proto!("hotel.v1");
    /// Descriptor of every `hotel.v1` file, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("hotel_descriptor");
}

/// Wall-clock now as a protobuf timestamp.
pub fn timestamp_now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}

/// Milliseconds since the Unix epoch as a protobuf timestamp.
pub fn timestamp_from_millis(millis: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
    }
}
