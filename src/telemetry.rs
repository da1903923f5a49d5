//! Logging and tracing: tracing-subscriber, human-readable or JSON, filtered
//! by RUST_LOG; and, when the standard OpenTelemetry variables name a
//! collector, authd's spans exported over OTLP/gRPC, each call continuing its
//! caller's W3C trace, and JSON lines carrying the trace id.

mod json_ids;
mod trace_context;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Key, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _, Registry};

use crate::config::LogFormat;

const DEFAULT_FILTER: &str = "info,sqlx=warn,h2=warn,tower=warn";
const SERVICE_NAME: &str = "service.name";

/// Installs the global subscriber and, when the OpenTelemetry variables ask
/// for it, the span exporter. Safe to call twice (the second call is a
/// no-op), which tests rely on. Call [`Telemetry::shutdown`] before exiting.
///
/// A bad OpenTelemetry setting is logged and authd runs without exporting:
/// an unreachable or misnamed collector must not take authentication down.
pub fn init(format: LogFormat) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let (telemetry, problem) = match OtlpSettings::from_env().and_then(|s| Telemetry::new(s.as_ref())) {
        Ok(telemetry) => (telemetry, None),
        Err(e) => (Telemetry::disabled(), Some(e)),
    };
    if telemetry
        .subscriber(format, filter, std::io::stdout)
        .try_init()
        .is_err()
    {
        // Another subscriber is installed; this provider would never see a span.
        return Telemetry::disabled();
    }
    if let Some(e) = problem {
        tracing::error!(error = format!("{e:#}"), "traces are NOT exported");
    } else if let Some(endpoint) = &telemetry.endpoint {
        tracing::info!(%endpoint, "exporting traces over OTLP/gRPC");
    }
    telemetry
}

/// Where spans go, read from the standard OpenTelemetry variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpSettings {
    /// The collector's OTLP/gRPC address, e.g. `http://otel-collector:4317`.
    pub endpoint: String,
    /// `OTEL_SERVICE_NAME`; without it, a `service.name` from
    /// `OTEL_RESOURCE_ATTRIBUTES`, else `authd`.
    pub service_name: Option<String>,
}

impl OtlpSettings {
    /// `None` (nothing exported, no exporter built) unless
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
    /// is set.
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`Self::from_env`] over any source of variables.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<Self>> {
        let set = |name: &str| var(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match set("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => anyhow::bail!("OTEL_TRACES_EXPORTER={other}: authd exports `otlp` or `none`"),
        }
        let Some(endpoint) =
            set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))
        else {
            return Ok(None);
        };
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(protocol) = set(name) {
                // The exporter would quietly speak gRPC to an HTTP port.
                anyhow::ensure!(
                    protocol == "grpc",
                    "{name}={protocol}: authd exports over gRPC only; set it to `grpc` (or unset it) \
                     and point the endpoint at the collector's OTLP/gRPC port, usually 4317"
                );
                break;
            }
        }
        Ok(Some(Self {
            endpoint,
            service_name: set("OTEL_SERVICE_NAME"),
        }))
    }
}

/// The span exporter, if any, and what the subscriber needs to feed it.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    endpoint: Option<String>,
}

impl Telemetry {
    /// Logs only: no exporter, no OpenTelemetry layer.
    pub fn disabled() -> Self {
        Self {
            provider: None,
            endpoint: None,
        }
    }

    /// Builds the exporter and its batching provider (within a Tokio runtime:
    /// the gRPC channel lives on it). The rest of the SDK's variables
    /// (`OTEL_EXPORTER_OTLP_HEADERS`, `…_TIMEOUT`, `…_COMPRESSION`,
    /// `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, `OTEL_RESOURCE_ATTRIBUTES`) are
    /// read by the SDK itself.
    pub fn new(otlp: Option<&OtlpSettings>) -> anyhow::Result<Self> {
        let Some(otlp) = otlp else {
            return Ok(Self::disabled());
        };
        tokio::runtime::Handle::try_current().context("the OTLP exporter needs a Tokio runtime")?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(otlp.endpoint.clone())
            .build()
            .with_context(|| format!("OTLP exporter for {}", otlp.endpoint))?;
        let detected = Resource::builder()
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let service_name = otlp.service_name.clone().unwrap_or_else(|| {
            detected
                .get(&Key::from_static_str(SERVICE_NAME))
                .map(|name| name.to_string())
                .filter(|name| !name.starts_with("unknown_service"))
                .unwrap_or_else(|| "authd".to_owned())
        });
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(detected)
            .with_resource(Resource::builder_empty().with_service_name(service_name).build())
            .build();
        Ok(Self {
            provider: Some(provider),
            endpoint: Some(otlp.endpoint.clone()),
        })
    }

    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// The subscriber authd logs through, writing to `writer`; tests build
    /// one per app and install it with `tracing::subscriber::set_default`.
    /// Without an exporter it has no OpenTelemetry layer at all.
    pub fn subscriber<W>(
        &self,
        format: LogFormat,
        filter: EnvFilter,
        writer: W,
    ) -> impl Subscriber + Send + Sync + 'static
    where
        W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        let otel = self.provider.as_ref().map(|provider| {
            // Only authd's own spans: those of the exporter's HTTP/2 client
            // (h2, hyper, tonic) would be exported in turn, forever.
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer(env!("CARGO_PKG_NAME")))
                .with_filter(Targets::new().with_target(env!("CARGO_CRATE_NAME"), LevelFilter::TRACE))
        });
        let exporting = otel.is_some();
        let fmt = tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_writer(writer);
        let fmt = match format {
            LogFormat::Pretty => fmt.boxed(),
            LogFormat::Json => {
                let json = fmt
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false);
                if exporting {
                    json.map_event_format(json_ids::WithTraceIds).boxed()
                } else {
                    json.boxed()
                }
            }
        };
        // ErrorLayer lets an unexpected error capture the spans it happened
        // in (use case, query, RPC) for its log line.
        Registry::default()
            .with(filter)
            .with(otel)
            .with(fmt)
            .with(tracing_error::ErrorLayer::default())
    }

    /// Exports what is still queued and stops the exporter, so the last
    /// spans before exit are not lost. Waits at most five seconds.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The SDK exports from its own thread through a channel served by
        // this runtime, which must keep running meanwhile.
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing traces at exit failed"),
            Err(e) => tracing::warn!(error = %e, "flushing traces at exit failed"),
        }
    }
}

/// The span of one call, given to tonic's `trace_fn`. With an exporter it
/// continues the caller's trace (`traceparent`, `tracestate`) and is a server
/// span named after the method, as OpenTelemetry's RPC conventions have it;
/// a request for `http_route` (a path of the HTTP face, not a gRPC method)
/// follows its HTTP conventions instead: `POST /oauth2/token`, with the
/// request's method and route.
pub fn call_span(request: &http::Request<()>, http_route: Option<&'static str>) -> tracing::Span {
    let method = request.uri().path();
    let span = tracing::info_span!("rpc", method = %method, otel.name = Empty, otel.kind = Empty);
    // Fails unless an OpenTelemetry layer sees the span: then log lines stay
    // as they were, without the OpenTelemetry fields.
    if span
        .set_parent(trace_context::remote_parent(request.headers()))
        .is_ok()
    {
        span.record("otel.kind", "server");
        if let Some(route) = http_route {
            let verb = request.method().as_str().to_owned();
            span.record("otel.name", format!("{verb} {route}"));
            span.set_attribute("http.request.method", verb);
            span.set_attribute("http.route", route);
            return span;
        }
        let name = method.trim_start_matches('/');
        span.record("otel.name", name);
        span.set_attribute("rpc.system", "grpc");
        if let Some((service, method)) = name.split_once('/') {
            span.set_attribute("rpc.service", service.to_owned());
            span.set_attribute("rpc.method", method.to_owned());
        }
    }
    span
}
