//! Fails fast while the database is known to be away. Without this, every
//! call waits out the pool's acquire timeout (3 s) before UNAVAILABLE, and
//! a caller with a shorter deadline sees DEADLINE_EXCEEDED instead of the
//! answer that tells it to go elsewhere. The probe (`startup`) decides;
//! methods that need no database (GetJwks, health, reflection) pass.

use http::Request;
use tower::Service;

use super::health::HealthState;
use super::middleware::{BoxFuture, HttpResponse, Middleware, answer};
use super::policy::needs_database;
use crate::error::AppError;

#[derive(Clone)]
pub struct DatabaseGate {
    health: HealthState,
}

impl DatabaseGate {
    pub fn new(health: HealthState) -> Self {
        Self { health }
    }
}

impl Middleware for DatabaseGate {
    fn call<S, B>(&self, req: Request<B>, mut next: S) -> BoxFuture<HttpResponse, S::Error>
    where
        S: Service<Request<B>, Response = HttpResponse> + Send + 'static,
        S::Future: Send + 'static,
        B: Send + 'static,
    {
        if !self.health.database_up() && needs_database(req.uri().path()) {
            return answer(
                AppError::Unavailable(anyhow::anyhow!(
                    "the database probe failed; refused without trying"
                ))
                .into(),
            );
        }
        Box::pin(next.call(req))
    }
}
