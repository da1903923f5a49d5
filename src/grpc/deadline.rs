//! Every call ends by its deadline: the caller's `grpc-timeout`, capped by
//! `AUTHD_REQUEST_TIMEOUT`. Past it the call is dropped (work not yet
//! started never starts) and answered DEADLINE_EXCEEDED; tonic's own
//! timeout said CANCELLED "Timeout expired", which clients do not read as
//! a deadline. The deadline is also made available to the call
//! (`crate::deadline`), so the hasher can refuse at once what it could not
//! finish in time, and so that a call that goes unanswered (past its
//! deadline, or cancelled by the client) cancels the statements it left
//! waiting in PostgreSQL.

use std::time::Duration;

use http::Request;
use tokio::time::Instant;
use tower::Service;

use super::middleware::{BoxFuture, HttpResponse, Middleware};
use super::status::ERROR_DOMAIN;
use crate::deadline::{Call, parse_grpc_timeout};
use crate::pb::auth::v1::ErrorReason;

#[derive(Clone)]
pub struct Deadlines {
    longest: Duration,
}

impl Deadlines {
    pub fn new(longest: Duration) -> Self {
        Self { longest }
    }
}

impl Middleware for Deadlines {
    fn call<S, B>(&self, req: Request<B>, mut next: S) -> BoxFuture<HttpResponse, S::Error>
    where
        S: Service<Request<B>, Response = HttpResponse> + Send + 'static,
        S::Future: Send + 'static,
        B: Send + 'static,
    {
        let asked = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let budget = asked.map_or(self.longest, |t| t.min(self.longest));
        let deadline = Instant::now() + budget;
        let call = next.call(req);
        Box::pin(async move {
            let state = Call::new(deadline);
            // Dropped with this future when the client cancels (hyper drops
            // the call on RST_STREAM), or below at the deadline.
            let abandoned = Abandoned(Some(state.clone()));
            match tokio::time::timeout_at(deadline, state.scope(call)).await {
                Ok(answered) => {
                    abandoned.answered();
                    answered
                }
                Err(_) => Ok(deadline_exceeded().into_http()),
            }
        })
    }
}

/// Undoes what an unanswered call left running elsewhere (its statements
/// waiting in PostgreSQL), unless the call was answered.
struct Abandoned(Option<std::sync::Arc<Call>>);

impl Abandoned {
    fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some(call) = self.0.take() {
            call.abandon();
        }
    }
}

fn deadline_exceeded() -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    tonic::Status::with_error_details(
        tonic::Code::DeadlineExceeded,
        "deadline exceeded before authd could answer",
        ErrorDetails::with_error_info(
            ErrorReason::DeadlineExceeded.as_str_name(),
            ERROR_DOMAIN,
            std::collections::HashMap::new(),
        ),
    )
}
