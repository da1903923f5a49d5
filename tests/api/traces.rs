//! Traces: an OTLP/gRPC receiver in this process, an authd exporting to it,
//! and a call that carries its caller's W3C trace context. The subscriber
//! with the OpenTelemetry layer is installed for the test's thread only
//! (`set_default`); `#[tokio::test]` runs the server's tasks on that thread,
//! so the rest of the binary keeps the global log capture.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use authd::config::LogFormat;
use authd::pb::auth::v1 as pb;
use authd::telemetry::{OtlpSettings, Telemetry};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tracing_opentelemetry::{OpenTelemetrySpanExt as _, SetParentError};
use tracing_subscriber::EnvFilter;

use crate::helpers::spawn_app;

const CALLER_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";
const JWKS: &str = "auth.v1.AuthService/GetJwks";

/// Every span it is sent, with the `service.name` of its resource.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref()?.value.clone())
                .map(|v| match v {
                    Value::StringValue(s) => s,
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                spans.extend(scope_spans.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    async fn start() -> (Self, SocketAddr) {
        let receiver = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            Server::builder()
                .add_service(TraceServiceServer::new(receiver.clone()))
                .serve_with_incoming(TcpIncoming::from(listener)),
        );
        (receiver, addr)
    }

    fn spans(&self) -> Vec<(String, Span)> {
        self.spans.lock().unwrap().clone()
    }
}

/// JSON log lines written by the test's own subscriber.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn parsed(&self) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    /// A line logged inside GetJwks's `rpc` span (ObserveLayer's, at DEBUG).
    fn jwks_line(&self) -> serde_json::Value {
        let lines = self.parsed();
        lines
            .iter()
            .find(|l| l["span"]["name"] == "rpc" && l["span"]["method"] == format!("/{JWKS}"))
            .unwrap_or_else(|| panic!("no rpc line for GetJwks in {lines:#?}"))
            .clone()
    }
}

fn attribute(span: &Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.clone())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The call a test makes with the caller's trace context.
#[derive(Clone, Copy)]
enum Call {
    /// GetJwks over gRPC.
    Grpc,
    /// `GET /.well-known/jwks.json` on the HTTP face, over HTTP/1.1.
    HttpFace,
}

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: (&str, &str) = ("tracestate", "caller=t61rcWkgMzE");

/// Serves one call carrying the caller's trace context under
/// `telemetry`'s subscriber, then stops the app and the exporter, as
/// authd does at exit.
async fn call_jwks_traced(telemetry: Telemetry, call: Call) -> Lines {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = telemetry.subscriber(LogFormat::Json, EnvFilter::new("info,authd=debug"), move || {
        writer.clone()
    });
    let _thread_only = tracing::subscriber::set_default(subscriber);
    let app = spawn_app().await;
    let parent = format!("00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01");
    match call {
        Call::Grpc => {
            let mut request = tonic::Request::new(pb::GetJwksRequest {});
            request
                .metadata_mut()
                .insert(TRACEPARENT, parent.parse().unwrap());
            request
                .metadata_mut()
                .insert(TRACESTATE.0, TRACESTATE.1.parse().unwrap());
            app.client.clone().get_jwks(request).await.unwrap();
        }
        Call::HttpFace => {
            let response = crate::http1::Request::new("GET", authd::http::JWKS_PATH)
                .header(TRACEPARENT, &parent)
                .header(TRACESTATE.0, TRACESTATE.1)
                .send(app.addr)
                .await;
            assert_eq!(response.status, 200);
        }
    }
    app.stop().await.unwrap();
    // The batch exporter's delay is 5 s: the span only arrives because
    // shutting down flushes it.
    telemetry.shutdown().await;
    lines
}

#[tokio::test]
async fn a_call_continues_the_callers_trace_and_is_exported() {
    let (receiver, addr) = Receiver::start().await;
    let settings = OtlpSettings::from_vars(|name| match name {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(format!("http://{addr}")),
        "OTEL_SERVICE_NAME" => Some("authd-under-test".into()),
        _ => None,
    })
    .unwrap()
    .expect("an endpoint is set");
    let telemetry = Telemetry::new(Some(&settings)).unwrap();
    assert!(telemetry.is_exporting());

    let lines = call_jwks_traced(telemetry, Call::Grpc).await;

    let spans = receiver.spans();
    let (service, rpc) = spans.iter().find(|(_, s)| s.name == JWKS).unwrap_or_else(|| {
        panic!(
            "no {JWKS} span among {:?}",
            spans.iter().map(|(_, s)| &s.name).collect::<Vec<_>>()
        )
    });
    assert_eq!(hex(&rpc.trace_id), CALLER_TRACE_ID, "the caller's trace");
    assert_eq!(
        hex(&rpc.parent_span_id),
        CALLER_SPAN_ID,
        "a child of the caller's span"
    );
    assert_ne!(hex(&rpc.span_id), CALLER_SPAN_ID);
    assert_eq!(rpc.trace_state, "caller=t61rcWkgMzE");
    assert_eq!(rpc.kind, SpanKind::Server as i32);
    assert_eq!(service, "authd-under-test");
    assert_eq!(
        attribute(rpc, "rpc.system"),
        Some(Value::StringValue("grpc".into()))
    );
    assert_eq!(
        attribute(rpc, "rpc.method"),
        Some(Value::StringValue("GetJwks".into()))
    );
    // Spans of the exporter's own gRPC client (h2, hyper, tonic) would be
    // exported in turn, without end.
    for (_, span) in &spans {
        let target = attribute(span, "target");
        assert!(
            matches!(&target, Some(Value::StringValue(t)) if t.starts_with("authd")),
            "{} from {target:?}",
            span.name
        );
    }

    let line = lines.jwks_line();
    assert_eq!(line["trace_id"], CALLER_TRACE_ID, "{line}");
    assert_eq!(line["span_id"], hex(&rpc.span_id), "{line}");
}

#[tokio::test]
async fn an_http_face_request_continues_the_callers_trace_as_an_http_span() {
    let (receiver, addr) = Receiver::start().await;
    let settings = OtlpSettings::from_vars(|name| match name {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(format!("http://{addr}")),
        _ => None,
    })
    .unwrap()
    .expect("an endpoint is set");
    let telemetry = Telemetry::new(Some(&settings)).unwrap();

    call_jwks_traced(telemetry, Call::HttpFace).await;

    let name = format!("GET {}", authd::http::JWKS_PATH);
    let spans = receiver.spans();
    let (_, span) = spans.iter().find(|(_, s)| s.name == name).unwrap_or_else(|| {
        panic!(
            "no {name} span among {:?}",
            spans.iter().map(|(_, s)| &s.name).collect::<Vec<_>>()
        )
    });
    assert_eq!(hex(&span.trace_id), CALLER_TRACE_ID, "the caller's trace");
    assert_eq!(hex(&span.parent_span_id), CALLER_SPAN_ID);
    assert_eq!(span.trace_state, TRACESTATE.1);
    assert_eq!(span.kind, SpanKind::Server as i32);
    assert_eq!(
        attribute(span, "http.request.method"),
        Some(Value::StringValue("GET".into()))
    );
    assert_eq!(
        attribute(span, "http.route"),
        Some(Value::StringValue(authd::http::JWKS_PATH.into()))
    );
    assert_eq!(attribute(span, "rpc.system"), None, "not a gRPC call");
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_exported() {
    // Every other OpenTelemetry variable may be set: the endpoint decides.
    let settings = OtlpSettings::from_vars(|name| match name {
        "OTEL_SERVICE_NAME" => Some("authd".into()),
        "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("grpc".into()),
        "OTEL_TRACES_SAMPLER" => Some("always_on".into()),
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(" ".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(settings, None);
    let telemetry = Telemetry::new(settings.as_ref()).unwrap();
    assert!(!telemetry.is_exporting());

    {
        // Not a disabled OpenTelemetry layer: none at all.
        let subscriber = telemetry.subscriber(LogFormat::Json, EnvFilter::new("info"), std::io::sink);
        let _thread_only = tracing::subscriber::set_default(subscriber);
        let span = tracing::info_span!("probe");
        assert!(matches!(
            span.set_parent(opentelemetry::Context::new()),
            Err(SetParentError::LayerNotFound)
        ));
    }

    let lines = call_jwks_traced(telemetry, Call::Grpc).await;
    let line = lines.jwks_line();
    assert!(line.get("trace_id").is_none(), "{line}");
    assert!(line["span"].get("otel.kind").is_none(), "{line}");
}

#[test]
fn otel_variables_are_read_as_the_sdk_reads_them() {
    let vars = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    let endpoint = |pairs| OtlpSettings::from_vars(vars(pairs)).unwrap().map(|s| s.endpoint);
    assert_eq!(
        endpoint(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
        ]),
        Some("http://traces:4317".into()),
        "the signal's own variable wins"
    );
    assert_eq!(
        endpoint(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_SDK_DISABLED", "true"),
        ]),
        None
    );
    assert_eq!(
        endpoint(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ]),
        None
    );
    // gRPC only: an HTTP collector port would fail every export, silently.
    let error = OtlpSettings::from_vars(vars(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    ]))
    .unwrap_err();
    assert!(
        error.to_string().contains("OTEL_EXPORTER_OTLP_PROTOCOL"),
        "{error}"
    );
}
