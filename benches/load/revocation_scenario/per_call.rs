//! What the verifier costs a service per call: one tonic service in this
//! process, bare and behind `VerifierLayer`, under the same closed loop.

use std::pin::Pin;
use std::time::{Duration, Instant};

use authd_verifier::{Claims, Verifier, VerifierLayer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::codegen::tokio_stream::Stream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use super::Settings;
use crate::client::{bearer, code_label, connect};
use crate::procfs::{CpuUse, CpuWindow, TICK_US};
use crate::stats::{Row, Stats};

/// The same handler for both: the verified variant's work is the layer's.
struct Serving;

#[tonic::async_trait]
impl Health for Serving {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        // What a handler does with the claims; nothing when there are none.
        let _caller = request.extensions().get::<Claims>().map(Claims::user_id);
        Ok(Response::new(HealthCheckResponse {
            status: ServingStatus::Serving.into(),
        }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(&self, _: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("only Check"))
    }
}

/// A server of [`Serving`] on a free port until the sender is dropped.
async fn serve(verifier: Option<Verifier>) -> (String, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async {
        let _ = stopped.await;
    };
    match verifier {
        Some(verifier) => tokio::spawn(
            Server::builder()
                .layer(VerifierLayer::new(verifier))
                .add_service(HealthServer::new(Serving))
                .serve_with_incoming_shutdown(incoming, shutdown),
        ),
        None => tokio::spawn(
            Server::builder()
                .add_service(HealthServer::new(Serving))
                .serve_with_incoming_shutdown(incoming, shutdown),
        ),
    };
    (addr, stop)
}

/// One variant's totals over its rounds.
#[derive(Default)]
struct Totals {
    stats: Stats,
    elapsed: Duration,
    cpu: Option<CpuUse>,
}

pub struct Comparison {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

pub async fn compare(
    verifier: &Verifier,
    access_token: &str,
    settings: &Settings,
    server_pid: Option<u32>,
) -> Comparison {
    let (bare_addr, _stop_bare) = serve(None).await;
    let (layered_addr, _stop_layered) = serve(Some(verifier.clone())).await;
    let bare_channels = connect(&bare_addr, settings.connections).await;
    let layered_channels = connect(&layered_addr, settings.connections).await;
    let authorization: MetadataValue<Ascii> = format!("Bearer {access_token}").parse().unwrap();
    // Alternating halves, so drift of a noisy machine falls on both.
    let round = settings.duration / 2;
    let (mut bare, mut layered) = (Totals::default(), Totals::default());
    for _ in 0..2 {
        for (channels, totals) in [(&bare_channels, &mut bare), (&layered_channels, &mut layered)] {
            let window = CpuWindow::open(server_pid);
            let (stats, elapsed) = closed_loop(channels, &authorization, settings.concurrency, round).await;
            let cpu = window.close();
            totals.stats.merge(stats);
            totals.elapsed += elapsed;
            totals.cpu = Some(match totals.cpu.take() {
                Some(before) => add(before, cpu),
                None => cpu,
            });
        }
    }
    let own_us_per_call = |t: &Totals| {
        t.cpu.as_ref().map_or(f64::NAN, |c| {
            c.own as f64 * TICK_US / t.stats.latencies_us.len().max(1) as f64
        })
    };
    let (bare_cpu, layered_cpu) = (own_us_per_call(&bare), own_us_per_call(&layered));
    let alone = verify_alone(verifier, access_token).await;
    let row = |name: &str, t: Totals| {
        let mut row = Row::from_stats(name.to_owned(), t.stats, t.elapsed);
        row.cpu = t.cpu;
        row
    };
    let bare_row = row("per call: bare tonic", bare);
    let layered_row = row("per call: VerifierLayer", layered);
    let notes = vec![
        format!(
            "Verifier::verify alone (a known token, fresh stream, one task, no network): {:.2} µs per call \
             over {} calls",
            alone.as_secs_f64() * 1e6,
            VERIFY_ALONE_CALLS
        ),
        format!(
            "VerifierLayer ÷ bare tonic, same service and bearer, in this process (CPU = client + server): \
         CPU µs/call {layered_cpu:.1} ÷ {bare_cpu:.1} = {:.3}; time per call (1 ÷ calls/s) {:.3}; \
         p50 {:.3} ÷ {:.3} ms = {:.3}; p99 {:.3} ÷ {:.3} ms = {:.3}",
            layered_cpu / bare_cpu,
            bare_row.calls_per_sec / layered_row.calls_per_sec,
            layered_row.p50_ms,
            bare_row.p50_ms,
            layered_row.p50_ms / bare_row.p50_ms,
            layered_row.p99_ms,
            bare_row.p99_ms,
            layered_row.p99_ms / bare_row.p99_ms,
        ),
    ];
    Comparison {
        rows: vec![bare_row, layered_row],
        notes,
    }
}

/// `concurrency` tasks calling Check one after another for `duration`;
/// a success must say SERVING.
async fn closed_loop(
    channels: &[Channel],
    authorization: &MetadataValue<Ascii>,
    concurrency: usize,
    duration: Duration,
) -> (Stats, Duration) {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for task in 0..concurrency {
        let mut client = HealthClient::new(channels[task % channels.len()].clone());
        let authorization = authorization.clone();
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            while Instant::now() < deadline {
                let t = Instant::now();
                let outcome = match client
                    .check(bearer(
                        HealthCheckRequest {
                            service: String::new(),
                        },
                        &authorization,
                    ))
                    .await
                {
                    Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => Ok(()),
                    Ok(_) => Err("NOT_SERVING".to_owned()),
                    Err(s) => Err(code_label(&s)),
                };
                stats.record(t, outcome);
            }
            stats
        }));
    }
    let mut all = Stats::default();
    for task in tasks {
        all.merge(task.await.expect("load task panicked"));
    }
    (all, started.elapsed())
}

/// Calls of [`verify_alone`].
const VERIFY_ALONE_CALLS: u32 = 200_000;

/// The mean time of `verify()` on the path every call of a service takes:
/// a token verified before (so its signature is remembered), checked for
/// expiry and revocation.
async fn verify_alone(verifier: &Verifier, access_token: &str) -> Duration {
    verifier
        .verify(access_token)
        .await
        .unwrap_or_else(|e| panic!("revocation scenario: the live token was refused: {e}"));
    let started = Instant::now();
    for _ in 0..VERIFY_ALONE_CALLS {
        if verifier.verify(access_token).await.is_err() {
            panic!("revocation scenario: the live token was refused");
        }
    }
    started.elapsed() / VERIFY_ALONE_CALLS
}

/// Two windows' CPU use as one.
fn add(a: CpuUse, b: CpuUse) -> CpuUse {
    let sum = |x: Option<u64>, y: Option<u64>| x.zip(y).map(|(x, y)| x + y);
    CpuUse {
        server: sum(a.server, b.server),
        own: a.own + b.own,
        rest: sum(a.rest, b.rest),
        busy_percent: (a.busy_percent + b.busy_percent) / 2.0,
        server_rss_kib: b.server_rss_kib,
    }
}
