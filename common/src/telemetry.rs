//! Structured logs through `tracing`, and, when asked for, traces exported
//! with OpenTelemetry (ADR 0012, docs/tracing.md).

use std::io::IsTerminal;

use anyhow::Context;
use opentelemetry::{Key, KeyValue, trace::TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    resource::ResourceBuilder,
    trace::{Sampler, SdkTracerProvider},
};
use tracing::subscriber::Interest;
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::{self, LevelFilter},
    fmt,
    prelude::*,
};

use crate::trace;

/// Share of new traces kept unless `--trace-sample-ratio` says otherwise.
pub const DEFAULT_SAMPLE_RATIO: f64 = 0.1;

/// Tracing with OpenTelemetry: off unless an endpoint is given.
#[derive(Debug, Clone, clap::Args)]
pub struct TracingArgs {
    /// OTLP/gRPC endpoint of an OpenTelemetry collector (or Jaeger) to send
    /// spans to, e.g. http://127.0.0.1:4317 (plain text). Unset, the
    /// default, turns tracing off: no spans are made for it, no cost.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Share of the traces that start here which are kept, 0 to 1. The
    /// sampler is parent-based: a call with a W3C `traceparent` follows its
    /// caller's decision (sampled or not), and an event's projection
    /// follows its command's.
    #[arg(long, env = "HOTEL_TRACE_SAMPLE_RATIO", default_value_t = DEFAULT_SAMPLE_RATIO,
          value_parser = sample_ratio)]
    pub trace_sample_ratio: f64,
}

fn sample_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!("{text:?} is not a ratio from 0 to 1")),
    }
}

/// Tracing off (the flags' default), whatever the environment says.
impl Default for TracingArgs {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            trace_sample_ratio: DEFAULT_SAMPLE_RATIO,
        }
    }
}

impl TracingArgs {
    /// The endpoint, when tracing is on.
    pub fn endpoint(&self) -> Option<&str> {
        self.otlp_endpoint
            .as_deref()
            .map(str::trim)
            .filter(|endpoint| !endpoint.is_empty())
    }
}

/// What must outlive the server: the span exporter, flushed at the end.
#[must_use = "spans still buffered are lost unless `shutdown` is called"]
pub struct Telemetry {
    /// The span pipeline; `None` while tracing is off.
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered (within the SDK's own bound).
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The export runs on the SDK's thread over a tonic channel driven by
        // this runtime: wait for it off the runtime's worker threads.
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "spans not exported at shutdown"),
            Err(error) => tracing::warn!(%error, "flushing spans failed"),
        }
    }
}

/// Installs the global subscriber: `RUST_LOG` filters the logs (default
/// `info`), and `json` selects one JSON object per line instead of
/// human-readable text. With an OTLP endpoint in `tracing`, spans at INFO
/// and above (whatever `RUST_LOG` says) also go to it as `service`. Must run
/// inside the Tokio runtime (the exporter's channel lives there).
pub fn init(json: bool, tracing: &TracingArgs, service: &'static str) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let Some(endpoint) = tracing.endpoint() else {
        // Logs go to stderr: stdout carries only the "listening on" line
        // that scripts and tests read.
        let builder = fmt()
            .with_env_filter(filter)
            .with_target(true)
            // Colours only on a terminal: not as escape codes in log files.
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr);
        // A second init (tests that start several servers in one process) is fine.
        let _ = if json {
            builder.json().try_init()
        } else {
            builder.try_init()
        };
        return Ok(Telemetry { provider: None });
    };

    let (provider, instance) = span_pipeline(endpoint, service)?;
    // What the layer records costs: no busy/idle timings, no thread names,
    // no source locations (three attributes a span), and no OpenTelemetry
    // context made current at every poll of a traced future (nothing here
    // reads it: the trace context is taken from the `tracing` span); and
    // it sees sampled traces only (the decision is taken in `trace`).
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_context_activation(false)
        .with_filter(
            filter::dynamic_filter_fn(trace::export_filter)
                // Below INFO, never asked again per call site: the
                // dependencies' debug and trace events cost nothing here.
                .with_callsite_filter(|metadata| {
                    if metadata.level() <= &tracing::Level::INFO {
                        Interest::sometimes()
                    } else {
                        Interest::never()
                    }
                })
                .with_max_level_hint(LevelFilter::INFO),
        );
    let logs = fmt::layer()
        .with_target(true)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(spans);
    let installed = if json {
        registry.with(logs.json().with_filter(filter)).try_init()
    } else {
        registry.with(logs.with_filter(filter)).try_init()
    };
    if installed.is_ok() {
        trace::set_exporting(instance.clone(), tracing.trace_sample_ratio);
    }
    tracing::info!(
        endpoint,
        sample_ratio = tracing.trace_sample_ratio,
        instance,
        "tracing on: exporting spans with OTLP"
    );
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// The OTLP/gRPC exporter behind a batching processor (a bounded queue on
/// its own thread: a slow or absent collector costs dropped spans, never a
/// wait; the `OTEL_BSP_*` and `OTEL_EXPORTER_OTLP_TIMEOUT` variables tune
/// it), and this process's resource. The sampler keeps every root it is
/// given: the ratio is drawn before a root span is made (`trace`), and
/// everything else follows its parent.
/// Returns the provider and the `service.instance.id`.
fn span_pipeline(
    endpoint: &str,
    service: &'static str,
) -> anyhow::Result<(SdkTracerProvider, String)> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .with_context(|| format!("the OTLP endpoint {endpoint:?}"))?;
    // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, when set, win; each
    // process is otherwise its own instance (a replica, for a query server).
    let named = |builder: ResourceBuilder| {
        if std::env::var_os("OTEL_SERVICE_NAME").is_some() {
            builder
        } else {
            builder.with_service_name(service)
        }
    };
    let instance_key = Key::from_static_str("service.instance.id");
    let detected = named(Resource::builder()).build();
    let (resource, instance) = match detected.get(&instance_key) {
        Some(instance) => (detected, instance.to_string()),
        None => {
            let instance = uuid::Uuid::new_v4().to_string();
            let resource = named(Resource::builder())
                .with_attribute(KeyValue::new(instance_key, instance.clone()))
                .build();
            (resource, instance)
        }
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_resource(resource)
        .build();
    Ok((provider, instance))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_ratio_is_a_share() {
        assert_eq!(sample_ratio("0.1"), Ok(0.1));
        assert_eq!(sample_ratio("1"), Ok(1.0));
        assert_eq!(sample_ratio("0"), Ok(0.0));
        for wrong in ["1.5", "-0.1", "ten", "NaN"] {
            assert!(sample_ratio(wrong).is_err(), "{wrong}");
        }
    }

    #[test]
    fn an_empty_endpoint_is_off() {
        let args = |endpoint: Option<&str>| TracingArgs {
            otlp_endpoint: endpoint.map(str::to_owned),
            trace_sample_ratio: 0.1,
        };
        assert_eq!(args(None).endpoint(), None);
        assert_eq!(args(Some(" ")).endpoint(), None);
        assert_eq!(
            args(Some("http://127.0.0.1:4317")).endpoint(),
            Some("http://127.0.0.1:4317")
        );
    }
}
