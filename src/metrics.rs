//! Prometheus metrics: per-RPC call counts by gRPC code and latency
//! histograms, served as text on `AUTHD_METRICS_LISTEN` by a deliberately
//! tiny HTTP/1.1 responder (one GET, no keep-alive) so no web framework is
//! pulled in for one page.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 11] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Inner {
    calls: BTreeMap<(String, &'static str), u64>,
    latency: BTreeMap<String, Histogram>,
}

/// Shared, cheap to clone.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Mutex<Inner>>,
}

impl Metrics {
    pub fn record(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        *inner
            .calls
            .entry((method.to_owned(), code_name(code)))
            .or_default() += 1;
        let h = inner.latency.entry(method.to_owned()).or_default();
        let secs = elapsed.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let Ok(inner) = self.inner.lock() else {
            return out;
        };
        out.push_str("# HELP authd_rpc_calls_total Finished RPCs by method and gRPC code.\n");
        out.push_str("# TYPE authd_rpc_calls_total counter\n");
        for ((method, code), n) in &inner.calls {
            let _ = writeln!(
                out,
                "authd_rpc_calls_total{{method=\"{method}\",code=\"{code}\"}} {n}"
            );
        }
        out.push_str("# HELP authd_rpc_duration_seconds RPC latency by method.\n");
        out.push_str("# TYPE authd_rpc_duration_seconds histogram\n");
        for (method, h) in &inner.latency {
            for (bound, count) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "authd_rpc_duration_seconds_bucket{{method=\"{method}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "authd_rpc_duration_seconds_bucket{{method=\"{method}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "authd_rpc_duration_seconds_sum{{method=\"{method}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "authd_rpc_duration_seconds_count{{method=\"{method}\"}} {}",
                h.count
            );
        }
        out
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Serves `GET /metrics` until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Metrics) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
            let Ok(Ok(n)) = read else { return };
            let request = String::from_utf8_lossy(&buf[..n]);
            let response = if request.starts_with("GET /metrics ") {
                let body = metrics.render();
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned()
            };
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    Ok(tokio::net::TcpListener::bind(addr).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.record(
            "/auth.v1.AuthService/Login",
            tonic::Code::Ok,
            Duration::from_millis(30),
        );
        m.record(
            "/auth.v1.AuthService/Login",
            tonic::Code::Unauthenticated,
            Duration::from_millis(3),
        );
        let text = m.render();
        assert!(text.contains(r#"authd_rpc_calls_total{method="/auth.v1.AuthService/Login",code="OK"} 1"#));
        assert!(text.contains(
            r#"authd_rpc_calls_total{method="/auth.v1.AuthService/Login",code="UNAUTHENTICATED"} 1"#
        ));
        assert!(text.contains(
            r#"authd_rpc_duration_seconds_bucket{method="/auth.v1.AuthService/Login",le="0.005"} 1"#
        ));
        assert!(text.contains(
            r#"authd_rpc_duration_seconds_bucket{method="/auth.v1.AuthService/Login",le="0.05"} 2"#
        ));
        assert!(text.contains(r#"authd_rpc_duration_seconds_count{method="/auth.v1.AuthService/Login"} 2"#));
    }
}
