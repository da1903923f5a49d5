//! A call that streams lasts only as long as the key that opened it. The
//! credential check (`auth_layer`) runs once, when the call starts; a
//! stream bound here re-reads its key from the database whenever the key
//! cache is flushed (a key created or deleted, an account deleted, scopes
//! changed, on any replica: PostgreSQL's notification reaches every one),
//! and every [`RECHECK_EVERY`] while this replica cannot trust that it hears
//! those notifications. A key that is gone ends the stream as a new call
//! with it would be refused (UNAUTHENTICATED `TOKEN_INVALID`); an account
//! that lost the scope ends it with PERMISSION_DENIED `MISSING_SCOPE`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_stream::Stream;
use tonic::Status;

use super::auth_layer::service_caller;
use crate::domain::Scope;
use crate::error::{AppError, TokenProblem};
use crate::service::keys::{ServiceIdentity, ServiceKeys};

/// How often a stream re-reads its key while notifications cannot be
/// trusted (the caches are off, or the change listener is lost or late).
pub const RECHECK_EVERY: Duration = Duration::from_secs(1);

pub type BoundStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What a stream needs to watch its key: taken from the request when the
/// call starts.
pub struct KeyGuard {
    keys: ServiceKeys,
    caller: Arc<ServiceIdentity>,
    scope: Scope,
    method: &'static str,
}

impl KeyGuard {
    /// The guard of a call to `method` (needing `scope`) that passed the
    /// credential check with a service key.
    pub fn of<T>(
        request: &tonic::Request<T>,
        keys: &ServiceKeys,
        scope: Scope,
        method: &'static str,
    ) -> Result<Self, Status> {
        Ok(Self {
            keys: keys.clone(),
            caller: service_caller(request)?,
            scope,
            method,
        })
    }

    /// `stream`, ended with the refusal once its key no longer allows it.
    pub fn bind<T: 'static>(self, stream: BoundStream<T>) -> BoundStream<T> {
        let name = self.caller.name.clone();
        let method = self.method;
        let lost = async move {
            let refusal = self.key_lost().await;
            tracing::warn!(
                target: "authd::audit",
                service_account = %name,
                method,
                outcome = "ended",
                reason = %refusal,
                "stream ended: its key no longer allows it"
            );
            Status::from(refusal)
        };
        Box::pin(Bound {
            inner: stream,
            lost: Box::pin(lost),
            done: false,
        })
    }

    /// Returns once the key is gone or lacks the scope; runs as long as the
    /// stream is read. The first read comes once flushes are followed, so a
    /// change between the call's credential check and then is not missed.
    async fn key_lost(self) -> AppError {
        let mut flushes = self.keys.flushes();
        flushes.borrow_and_update();
        let mut due = true;
        loop {
            let mut failed = false;
            if due {
                match self.keys.recheck(&self.caller).await {
                    Ok(None) => return AppError::Token(TokenProblem::Invalid),
                    Ok(Some(now)) if !now.may(self.scope) => return AppError::MissingScope(self.scope),
                    Ok(Some(_)) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, key_id = %self.caller.key_id, "could not re-read a streaming key; trying again");
                        failed = true;
                    }
                }
            }
            tokio::select! {
                changed = flushes.changed() => {
                    if changed.is_err() {
                        // The cache is gone (the server is stopping): fall
                        // back to reading the key on a timer.
                        tokio::time::sleep(RECHECK_EVERY).await;
                    }
                    due = true;
                }
                () = tokio::time::sleep(RECHECK_EVERY) => {
                    due = failed || !self.keys.hears_changes();
                }
            }
        }
    }
}

/// The stream and the future that resolves when its key is lost; the
/// future is polled first, so nothing more is sent once it has resolved.
struct Bound<T> {
    inner: BoundStream<T>,
    lost: Pin<Box<dyn Future<Output = Status> + Send>>,
    done: bool,
}

impl<T> Stream for Bound<T> {
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(status) = this.lost.as_mut().poll(cx) {
            this.done = true;
            return Poll::Ready(Some(Err(status)));
        }
        let next = this.inner.as_mut().poll_next(cx);
        if matches!(next, Poll::Ready(None)) {
            this.done = true;
        }
        next
    }
}
