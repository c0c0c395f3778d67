//! W3C trace context (`traceparent`) across our boundaries, when tracing is
//! on (`--otlp-endpoint`, ADR 0012): read from a call's headers into the
//! call's span, taken from a command's span into each of its events, and
//! turned back into a parent and links by the spans that carry that work
//! on elsewhere (the writer's commit, a query server's projection). With
//! tracing off, every function here is one check of a flag.
//!
//! The sampling decision is taken here, before any span is made: a call
//! whose trace is not sampled gets no span of its own, and the spans its
//! handlers open never reach the OpenTelemetry layer ([`export_filter`]).
//! An unsampled call then costs a random number and a few filter checks,
//! instead of a span built, timed and dropped at every level (ADR 0012).

use std::{
    borrow::Borrow,
    cell::Cell,
    hash::BuildHasher,
    sync::{
        OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use opentelemetry::{
    Context,
    propagation::{Extractor, TextMapPropagator},
    trace::{SpanContext, TraceContextExt, TraceFlags},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::codegen::http::HeaderMap;
use tracing::{Level, Metadata, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{layer::Context as LayerContext, registry::LookupSpan};

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

/// Share of the traces started here that are sampled (an `f64`'s bits).
static SAMPLE_RATIO: AtomicU64 = AtomicU64::new(0);

/// The spans this module's callers start as roots, only ever for a sampled
/// trace: a call ([`request_span`]), a writer's batch and a query server's
/// projection batch ([`follow`] of sampled causes).
const ROOT_SPANS: [&str; 3] = ["grpc request", "commit batch", "apply batch"];

/// Records that spans are exported, by `instance`, and that a share
/// `sample_ratio` of the traces that start here are sampled.
pub(crate) fn set_exporting(instance: String, sample_ratio: f64) {
    let _ = INSTANCE.set(instance);
    SAMPLE_RATIO.store(sample_ratio.to_bits(), Ordering::Relaxed);
    EXPORTING.store(true, Ordering::Release);
}

/// Whether a trace that starts here is sampled: a draw against the ratio.
fn sample_new_trace() -> bool {
    let ratio = f64::from_bits(SAMPLE_RATIO.load(Ordering::Relaxed));
    ratio >= 1.0 || (ratio > 0.0 && random_unit() < ratio)
}

/// A uniform draw from [0, 1): xorshift64 per thread, seeded from the
/// process's random hash keys. Sampling needs no more, and no lock.
fn random_unit() -> f64 {
    thread_local! {
        static STATE: Cell<u64> =
            Cell::new(std::collections::hash_map::RandomState::new().hash_one(0_u8) | 1);
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x >> 11) as f64 / (1_u64 << 53) as f64
    })
}

/// What the OpenTelemetry layer sees: the root spans of sampled traces
/// ([`ROOT_SPANS`], made only once sampled) and, at INFO and above, the
/// spans and events inside them. The spans of an unsampled call are never
/// made into OpenTelemetry spans: they stay the logs' alone.
pub(crate) fn export_filter<S>(metadata: &Metadata<'_>, cx: &LayerContext<'_, S>) -> bool
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
{
    if metadata.level() > &Level::INFO {
        return false;
    }
    (metadata.is_span() && ROOT_SPANS.contains(&metadata.name())) || cx.lookup_current().is_some()
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
/// a valid one. `None` while tracing is off, for health checks and
/// reflection, and for a call whose trace is not sampled: the caller's
/// decision when it sends one (parent-based), else a draw against the
/// sample ratio.
pub fn request_span(headers: &HeaderMap, path: &str) -> Option<tracing::Span> {
    if !exporting() || path.starts_with("/grpc.") {
        return None;
    }
    let parent = headers
        .contains_key(TRACEPARENT)
        .then(|| TraceContextPropagator::new().extract(&Headers(headers)))
        .filter(|parent| parent.span().span_context().is_valid());
    let sampled = match &parent {
        Some(parent) => parent.span().span_context().is_sampled(),
        None => sample_new_trace(),
    };
    if !sampled {
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
    if let Some(parent) = parent {
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
    fn new_traces_are_sampled_at_the_ratio() {
        let share = |ratio: f64| {
            SAMPLE_RATIO.store(ratio.to_bits(), Ordering::Relaxed);
            let draws = 100_000;
            let sampled = (0..draws).filter(|_| sample_new_trace()).count();
            sampled as f64 / draws as f64
        };
        assert_eq!(share(0.0), 0.0);
        assert_eq!(share(1.0), 1.0);
        let tenth = share(0.1);
        // 100,000 draws: the standard deviation is under 0.001.
        assert!((0.095..0.105).contains(&tenth), "{tenth}");
        SAMPLE_RATIO.store(0, Ordering::Relaxed);
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
