//! W3C trace context (`traceparent`) across our boundaries, when tracing is
//! on (`--otlp-endpoint`, ADR 0012): read from a call's headers into the
//! call's span, taken from a command's span into each of its events, and
//! turned back into a parent and links by the spans that carry that work
//! on elsewhere (the writer's commit, a query server's projection). With
//! tracing off, every function here is one check of a flag.

use std::{
    borrow::Borrow,
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

use opentelemetry::{
    Context,
    propagation::{Extractor, TextMapPropagator},
    trace::{SpanContext, TraceContextExt, TraceFlags},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::codegen::http::HeaderMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use opentelemetry::KeyValue;

/// The W3C header (and event field) that carries a span's context.
pub const TRACEPARENT: &str = "traceparent";

/// Most links one span gets: a catch-up batch of thousands of events links
/// to the first few commands only (the SDK would keep 128 anyway).
pub const MAX_LINKS: usize = 32;

/// Set once spans are exported (the OpenTelemetry layer is installed).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// This process's `service.instance.id`, once tracing is on.
static INSTANCE: OnceLock<String> = OnceLock::new();

/// Records that spans are exported, by `instance`.
pub(crate) fn set_exporting(instance: String) {
    let _ = INSTANCE.set(instance);
    EXPORTING.store(true, Ordering::Release);
}

/// Whether this process exports spans: when not, nothing here does any work.
#[inline]
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Acquire)
}

/// This process's `service.instance.id` (empty while tracing is off): the
/// `replica` a query server's spans name.
pub fn instance() -> &'static str {
    INSTANCE.get().map_or("", String::as_str)
}

/// The context of a sampled span, with its `traceparent` text: what a
/// command hands to its events and what later spans follow. Unsampled
/// contexts are never kept: no span of their trace is exported, so there
/// would be nothing to link to.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceParent {
    /// The span's ids and flags.
    context: SpanContext,
    /// `00-{trace id}-{span id}-01`, as stored with events.
    header: String,
}

impl TraceParent {
    /// The current span's context, when tracing is on and it is sampled.
    pub fn current() -> Option<Self> {
        if !exporting() {
            return None;
        }
        let context = tracing::Span::current().context();
        Self::sampled(context.span().span_context().clone())
    }

    /// A `traceparent` value, when well-formed and sampled.
    pub fn parse(header: &str) -> Option<Self> {
        if header.is_empty() {
            return None;
        }
        let context = TraceContextPropagator::new().extract(&OneHeader(header));
        Self::sampled(context.span().span_context().clone())
    }

    fn sampled(context: SpanContext) -> Option<Self> {
        if !context.is_valid() || !context.is_sampled() {
            return None;
        }
        let header = format!(
            "00-{}-{}-{:02x}",
            context.trace_id(),
            context.span_id(),
            (context.trace_flags() & TraceFlags::SAMPLED).to_u8()
        );
        Some(Self { context, header })
    }

    /// The `traceparent` text.
    pub fn header(&self) -> &str {
        &self.header
    }

    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        self.context.trace_id().to_string()
    }
}

/// The span of one incoming call, named after its method (the OpenTelemetry
/// gRPC conventions), the child of the caller's `traceparent` when it sends
/// one; `None` while tracing is off, and for health checks and reflection.
pub fn request_span(headers: &HeaderMap, path: &str) -> Option<tracing::Span> {
    if !exporting() || path.starts_with("/grpc.") {
        return None;
    }
    let method = path.trim_start_matches('/');
    let (service, rpc) = method.split_once('/').unwrap_or((method, ""));
    let span = tracing::info_span!(
        parent: None,
        "grpc request",
        otel.name = method,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = rpc,
        rpc.grpc.status_code = tracing::field::Empty,
    );
    if headers.contains_key(TRACEPARENT) {
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        let _ = span.set_parent(parent);
    }
    Some(span)
}

/// Makes `span` carry on the work of `causes` (in order, at most
/// [`MAX_LINKS`]): the child of the first, so that it joins that trace and
/// its sampling decision, and linked to each with its attributes (a batch
/// serves several commands, each in its own trace). Call it before the
/// span is first entered.
pub fn follow<T: Borrow<TraceParent>>(
    span: &tracing::Span,
    causes: impl IntoIterator<Item = (T, Vec<KeyValue>)>,
) {
    for (index, (cause, attributes)) in causes.into_iter().take(MAX_LINKS).enumerate() {
        let cause = cause.borrow();
        if index == 0 {
            let parent = Context::new().with_remote_span_context(cause.context.clone());
            let _ = span.set_parent(parent);
        }
        span.add_link_with_attributes(cause.context.clone(), attributes);
    }
}

/// A `traceparent` alone, to extract.
struct OneHeader<'a>(&'a str);

impl Extractor for OneHeader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

/// A call's headers, to extract from.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sampled_traceparent_round_trips_and_others_are_dropped() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(header).expect("a valid sampled traceparent");
        assert_eq!(parsed.header(), header);
        assert_eq!(parsed.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        // Not sampled: no span of that trace is exported, nothing to follow.
        assert_eq!(
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
            None
        );
        for broken in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        ] {
            assert_eq!(TraceParent::parse(broken), None, "{broken:?}");
        }
    }

    #[test]
    fn nothing_is_traced_while_tracing_is_off() {
        // This test binary never installs the layer.
        assert!(!exporting());
        assert_eq!(TraceParent::current(), None);
        let headers = HeaderMap::new();
        assert!(request_span(&headers, "/hotel.v1.CommandService/BookRoom").is_none());
    }
}
