//! `grpc.health.v1.Health`, served by authd itself rather than by
//! tonic-health's server, for two things a load balancer needs at shutdown:
//! NOT_SERVING for good once draining begins (the database probe cannot
//! flip it back), and Watch streams that end when the drain starts, so an
//! open Watch never holds up the exit.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::pb::auth::v1::{admin_service_server, auth_service_server};

/// The names a probe may ask about: the server as a whole and each service.
const KNOWN: [&str; 3] = [
    "",
    auth_service_server::SERVICE_NAME,
    admin_service_server::SERVICE_NAME,
];

/// What the server's health is made of; shared by the probe, the drain and
/// the gate that refuses calls while the database is away.
#[derive(Clone)]
pub struct HealthState {
    inner: Arc<Inner>,
}

struct Inner {
    database_up: AtomicBool,
    draining: AtomicBool,
    serving: watch::Sender<bool>,
    /// Watch streams end when this turns true.
    watches_end: watch::Sender<bool>,
}

impl Default for HealthState {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                database_up: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                serving: watch::Sender::new(false),
                watches_end: watch::Sender::new(false),
            }),
        }
    }
}

impl HealthState {
    /// The probe's latest answer.
    pub fn set_database_up(&self, up: bool) {
        self.inner.database_up.store(up, Ordering::Release);
        self.publish();
    }

    /// Whether the probe last reached the database (false until it has).
    pub fn database_up(&self) -> bool {
        self.inner.database_up.load(Ordering::Acquire)
    }

    /// Shutdown begins: NOT_SERVING from now on, whatever the probe says.
    pub fn begin_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
        self.publish();
    }

    /// Ends every Watch stream (UNAVAILABLE: reconnect elsewhere).
    pub fn end_watches(&self) {
        self.inner.watches_end.send_replace(true);
    }

    pub fn is_serving(&self) -> bool {
        *self.inner.serving.borrow()
    }

    fn publish(&self) {
        let serving = self.database_up() && !self.inner.draining.load(Ordering::Acquire);
        self.inner.serving.send_if_modified(|s| {
            let changed = *s != serving;
            *s = serving;
            changed
        });
    }
}

fn answer(serving: bool) -> HealthCheckResponse {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    HealthCheckResponse {
        status: status.into(),
    }
}

pub struct HealthApi {
    state: HealthState,
}

impl HealthApi {
    pub fn new(state: HealthState) -> Self {
        Self { state }
    }
}

type Watching = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthApi {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        if !KNOWN.contains(&request.get_ref().service.as_str()) {
            return Err(Status::not_found("unknown service"));
        }
        Ok(Response::new(answer(self.state.is_serving())))
    }

    type WatchStream = Watching;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let known = KNOWN.contains(&request.get_ref().service.as_str());
        let mut serving = self.state.inner.serving.subscribe();
        let mut ending = self.state.inner.watches_end.subscribe();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let now = if known {
                    let serving_now = *serving.borrow_and_update();
                    answer(serving_now)
                } else {
                    // The protocol: say so, and keep the call open.
                    HealthCheckResponse {
                        status: ServingStatus::ServiceUnknown.into(),
                    }
                };
                if tx.send(Ok(now)).await.is_err() {
                    return;
                }
                tokio::select! {
                    changed = serving.changed(), if known => if changed.is_err() { return },
                    _ = ending.wait_for(|end| *end) => break,
                    () = tx.closed() => return,
                }
            }
            let _ = tx
                .send(Err(Status::unavailable("authd is shutting down; reconnect")))
                .await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
