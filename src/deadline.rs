//! The caller's deadline, available to whatever a call does (the password
//! hasher reads it to refuse work it could not finish in time) without
//! threading it through every signature: a task-local set by the gRPC
//! deadline layer around each call.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

tokio::task_local! {
    static CALL: Arc<Call>;
}

type OnAbandon = (&'static str, Box<dyn FnOnce() + Send>);

/// One call in flight: its deadline, an id that names it to the work it
/// starts elsewhere (PostgreSQL backends), and what to undo if the caller
/// goes away before the answer (the call's future dropped: cancelled by the
/// client, or past its deadline), since dropping a future stops nothing
/// that runs in another process.
pub struct Call {
    deadline: Instant,
    id: u64,
    on_abandon: Mutex<Vec<OnAbandon>>,
}

static NEXT_CALL: AtomicU64 = AtomicU64::new(1);

impl Call {
    pub fn new(deadline: Instant) -> Arc<Self> {
        Arc::new(Self {
            deadline,
            id: NEXT_CALL.fetch_add(1, Ordering::Relaxed),
            on_abandon: Mutex::new(Vec::new()),
        })
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Unique within this process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Runs `call` as this call.
    pub async fn scope<F: Future>(self: &Arc<Self>, call: F) -> F::Output {
        CALL.scope(self.clone(), call).await
    }

    /// The caller went away without its answer: runs what the call
    /// registered with `on_abandon`, once.
    pub fn abandon(&self) {
        let undo = std::mem::take(&mut *self.lock());
        for (_, f) in undo {
            f();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<OnAbandon>> {
        self.on_abandon.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs `call` with `deadline` as its deadline.
pub async fn within<F: Future>(deadline: Instant, call: F) -> F::Output {
    Call::new(deadline).scope(call).await
}

/// The current call's deadline, if this runs inside one.
pub fn current() -> Option<Instant> {
    CALL.try_with(|c| c.deadline).ok()
}

/// The current call's id and the time left before its deadline, if this
/// runs inside one.
pub fn current_call() -> Option<(u64, Duration)> {
    CALL.try_with(|c| (c.id, c.deadline.saturating_duration_since(Instant::now())))
        .ok()
}

/// Registers `undo` to run if the current call is abandoned, unless
/// something was registered under the same `key` already; false outside a
/// call.
pub fn on_abandon_once(key: &'static str, undo: impl FnOnce() + Send + 'static) -> bool {
    CALL.try_with(|c| {
        let mut registered = c.lock();
        if !registered.iter().any(|(k, _)| *k == key) {
            registered.push((key, Box::new(undo)));
        }
    })
    .is_ok()
}

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit
/// (H, M, S, m, u, n), per the gRPC over HTTP/2 spec.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_by_the_spec() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "S", "5", "5s", "-5S", "123456789S", "1.5S", "5 S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_deadline_is_seen_inside_the_call_only() {
        assert!(current().is_none());
        let at = Instant::now() + Duration::from_secs(3);
        let seen = within(at, async { current() }).await;
        assert_eq!(seen, Some(at));
        assert!(current().is_none());
    }

    #[tokio::test]
    async fn an_abandoned_call_undoes_each_kind_of_work_once() {
        use std::sync::atomic::AtomicUsize;
        let undone = Arc::new(AtomicUsize::new(0));
        let call = Call::new(Instant::now() + Duration::from_secs(3));
        let registered = call
            .scope(async {
                for _ in 0..3 {
                    let undone = undone.clone();
                    on_abandon_once("postgres", move || {
                        undone.fetch_add(1, Ordering::Relaxed);
                    });
                }
                current_call().map(|(id, _)| id)
            })
            .await;
        assert_eq!(registered, Some(call.id()));
        assert!(!on_abandon_once("postgres", || {}), "outside a call");
        call.abandon();
        call.abandon();
        assert_eq!(undone.load(Ordering::Relaxed), 1);
    }
}
