//! The background tasks: following WatchRevocations (from one token
//! lifetime in the past at start, resuming with the cursor after any
//! failure, starting over from a time when events were lost), and
//! refreshing the keys now and then.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tonic::{Code, Status, Streaming};
use tonic_types::StatusExt;

use crate::claims::unix_now;
use crate::pb::{self, RevocationKind, admin_service_client::AdminServiceClient};
use crate::revocations::Change;
use crate::stream_health::{secs_down, secs_up};
use crate::verifier::{Shared, write};

/// The ErrorInfo reason of a cursor authd no longer has (or never had).
const CURSOR_EXPIRED: &str = "CURSOR_EXPIRED";

/// Where a stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// After the last event applied: coverage continues.
    After(i64),
    /// From a time far enough back that every revocation that can concern
    /// an unexpired token is delivered.
    Since(SystemTime),
    /// From the present, when authd no longer has events from that far
    /// back: tokens issued before are not vouched for.
    Present,
}

/// Follows the stream until the verifier is dropped (the task is aborted).
pub(crate) async fn follow_revocations(shared: Arc<Shared>) {
    let mut backoff = Backoff::default();
    // authd refused to go back as far as a token lifetime (its retention
    // is shorter): the next start without a cursor is from the present.
    let mut since_refused = false;
    loop {
        let start = match shared.health.cursor() {
            0 if since_refused => Start::Present,
            0 => Start::Since(
                SystemTime::now()
                    .checked_sub(shared.config.coverage_lookback())
                    .unwrap_or(UNIX_EPOCH),
            ),
            cursor => Start::After(cursor),
        };
        let ended = match open(&shared, start).await {
            Ok(stream) => {
                match start {
                    Start::Since(since) => shared.health.syncing_from(secs_down(since)),
                    // authd read its head before answering, so nothing it
                    // leaves out committed after this moment.
                    Start::Present => shared.health.syncing_from(secs_up(SystemTime::now())),
                    Start::After(_) => {}
                }
                shared.health.connected();
                tracing::debug!(?start, "revocation stream open");
                backoff.reset();
                let ended = read_stream(&shared, stream).await;
                shared.health.disconnected();
                ended
            }
            Err(refusal) => refusal,
        };
        let delay = match ended {
            Ended::CursorExpired if matches!(start, Start::Since(_)) => {
                tracing::warn!(
                    lookback = ?shared.config.coverage_lookback(),
                    "authd no longer has revocations from one token lifetime ago; \
                     starting from the present, and tokens issued before are stale until they expire"
                );
                since_refused = true;
                shared.health.forget_continuity();
                Duration::ZERO
            }
            Ended::CursorExpired | Ended::Gap => {
                // What was revoked between the cursor and now is unknown:
                // stale until a stream from a token lifetime ago has
                // caught up, which starts at once.
                tracing::warn!(
                    ?start,
                    "authd no longer has the revocation cursor, or events were skipped; \
                     starting again from one token lifetime ago"
                );
                since_refused = false;
                shared.health.forget_continuity();
                backoff.next()
            }
            Ended::Refused(status)
                if matches!(status.code(), Code::Unauthenticated | Code::PermissionDenied) =>
            {
                tracing::error!(
                    %status,
                    "authd refused the revocation stream: the service key needs scope revocations.watch"
                );
                backoff.next_long()
            }
            Ended::Refused(status) => {
                tracing::info!(%status, "revocation stream failed; reconnecting");
                backoff.next()
            }
            Ended::Closed => {
                tracing::info!("revocation stream ended; reconnecting");
                backoff.next()
            }
            Ended::Silent => {
                tracing::warn!("revocation stream silent for longer than max_staleness; reconnecting");
                backoff.next()
            }
        };
        tokio::time::sleep(delay).await;
    }
}

/// Why a stream ended or did not start.
enum Ended {
    CursorExpired,
    /// Event ids skipped some: those events are lost to this stream.
    Gap,
    Refused(Status),
    Closed,
    Silent,
}

fn ended_by(status: Status) -> Ended {
    let expired = status.code() == Code::FailedPrecondition
        && status
            .get_details_error_info()
            .is_some_and(|info| info.reason == CURSOR_EXPIRED);
    if expired {
        Ended::CursorExpired
    } else {
        Ended::Refused(status)
    }
}

/// The request that opens a stream from `start`. Factor changes are asked
/// for: policies that need a second factor refuse proofs from before one.
fn request_for(start: Start) -> pb::WatchRevocationsRequest {
    let (after_event_id, since) = match start {
        Start::After(after_event_id) => (after_event_id, None),
        Start::Since(since) => (
            0,
            Some(prost_types::Timestamp {
                seconds: secs_down(since),
                nanos: 0,
            }),
        ),
        Start::Present => (0, None),
    };
    pb::WatchRevocationsRequest {
        after_event_id,
        since,
        include_factor_changes: true,
    }
}

async fn open(shared: &Shared, start: Start) -> Result<Streaming<pb::WatchRevocationsResponse>, Ended> {
    let mut request = tonic::Request::new(request_for(start));
    request
        .metadata_mut()
        .insert("authorization", shared.service_authorization.clone());
    let mut client = AdminServiceClient::new(shared.channel.clone());
    match tokio::time::timeout(shared.config.max_staleness, client.watch_revocations(request)).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(ended_by(status)),
        Err(_) => Err(Ended::Silent),
    }
}

/// Applies messages until the stream ends, fails, skips events, or says
/// nothing for `max_staleness` (a connection that died without closing).
async fn read_stream(shared: &Shared, mut stream: Streaming<pb::WatchRevocationsResponse>) -> Ended {
    loop {
        match tokio::time::timeout(shared.config.max_staleness, stream.message()).await {
            Ok(Ok(Some(message))) => {
                if apply_message(shared, &message, SystemTime::now()) == Applied::EventsLost {
                    return Ended::Gap;
                }
            }
            Ok(Ok(None)) => return Ended::Closed,
            Ok(Err(status)) => return ended_by(status),
            Err(_) => return Ended::Silent,
        }
    }
}

/// What a message did to the verifier's continuity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    InStep,
    /// Its id skipped events: the stream must start over from a time.
    EventsLost,
}

/// One message: a revocation to remember, or a heartbeat carrying the
/// cursor (which also says the stream has caught up). Event ids increase
/// by one; a gap means events were lost.
pub(crate) fn apply_message(
    shared: &Shared,
    message: &pb::WatchRevocationsResponse,
    wall: SystemTime,
) -> Applied {
    let now = unix_now(wall);
    let cursor = shared.health.cursor();
    let id = message.event_id;
    let kind = RevocationKind::try_from(message.kind).ok();
    if kind == Some(RevocationKind::Heartbeat) {
        if cursor != 0 && id > cursor {
            tracing::warn!(cursor, heartbeat = id, "the revocation stream skipped events");
            return Applied::EventsLost;
        }
        if id > cursor {
            shared.health.set_cursor(id);
        }
        write(&shared.revocations).prune(now);
        shared.health.note_heartbeat(Instant::now());
        return Applied::InStep;
    }
    if cursor != 0 && id <= cursor {
        // Already applied (a replica repeating itself): harmless.
        shared.health.note_message(Instant::now());
        return Applied::InStep;
    }
    let in_step = cursor == 0 || id == cursor + 1;
    // Its second, and the first whole second after it.
    let (occurred_at, occurred_by) = match &message.occurred_at {
        Some(t) if t.nanos > 0 => (t.seconds, t.seconds.saturating_add(1)),
        Some(t) => (t.seconds, t.seconds),
        None => (now, secs_up(wall)),
    };
    let change = match kind {
        Some(RevocationKind::SessionEnded | RevocationKind::UserSessionsEnded) => {
            Some(Change::SessionsEnded(ended_sessions(message)))
        }
        Some(RevocationKind::UserDisabled) => Some(Change::UserDisabled(message.user_id.clone())),
        Some(RevocationKind::UserDeleted) => Some(Change::UserDeleted(message.user_id.clone())),
        Some(RevocationKind::FactorsChanged) if !message.user_id.is_empty() => {
            Some(Change::FactorsChanged(message.user_id.clone()))
        }
        // Names no account: nothing to remember.
        Some(RevocationKind::FactorsChanged) => Some(Change::SessionsEnded(Vec::new())),
        Some(RevocationKind::Heartbeat | RevocationKind::Unspecified) | None => None,
    };
    {
        // Applied even after a gap: it is a revocation all the same.
        let mut state = write(&shared.revocations);
        match change {
            Some(change) => state.apply(change, occurred_at, now),
            None => {
                // A kind this verifier does not know (a newer authd)
                // revokes something it cannot tell: end the sessions it
                // names, and stop vouching for tokens issued up to it.
                // Starting over would only deliver it again.
                tracing::warn!(
                    kind = message.kind,
                    event_id = id,
                    "unknown revocation kind: tokens issued before it are stale until they expire; \
                     upgrade authd-verifier"
                );
                state.apply(Change::SessionsEnded(ended_sessions(message)), occurred_at, now);
                shared.health.not_covered_before(occurred_by);
            }
        }
        state.prune(now);
    }
    if !in_step {
        tracing::warn!(cursor, event_id = id, "the revocation stream skipped events");
        return Applied::EventsLost;
    }
    shared.health.set_cursor(id);
    shared.health.note_message(Instant::now());
    Applied::InStep
}

/// The sessions an event ended: `session_ids`, and `session_id` too in case
/// a server sends only that.
fn ended_sessions(message: &pb::WatchRevocationsResponse) -> Vec<String> {
    let mut sessions = message.session_ids.clone();
    if !message.session_id.is_empty() && !sessions.contains(&message.session_id) {
        sessions.push(message.session_id.clone());
    }
    sessions
}

/// Fetches the keys every `jwks_refresh_interval`, so a key authd stopped
/// publishing stops verifying even if no token names an unknown one.
pub(crate) async fn refresh_keys_periodically(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.config.jwks_refresh_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate, and start() has just fetched.
    tick.tick().await;
    loop {
        tick.tick().await;
        match tokio::time::timeout(shared.config.call_timeout, shared.fetch_keys()).await {
            Ok(Ok(keys)) => shared.install_keys(keys),
            Ok(Err(status)) => tracing::warn!(%status, "refreshing authd's keys failed"),
            Err(_) => tracing::warn!("refreshing authd's keys timed out"),
        }
    }
}

/// Reconnection delays: 100 ms doubling to 5 s (30 s when authd refuses the
/// key, which only an operator can fix), each with up to a fifth of jitter so
/// services restarted together do not reconnect in step.
#[derive(Default)]
struct Backoff {
    failures: u32,
}

const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(5);
const MAX_DELAY_REFUSED: Duration = Duration::from_secs(30);

impl Backoff {
    fn reset(&mut self) {
        self.failures = 0;
    }

    fn next(&mut self) -> Duration {
        self.grow(MAX_DELAY)
    }

    fn next_long(&mut self) -> Duration {
        self.grow(MAX_DELAY_REFUSED)
    }

    fn grow(&mut self, max: Duration) -> Duration {
        let base = FIRST_DELAY.saturating_mul(1u32 << self.failures.min(10)).min(max);
        self.failures = self.failures.saturating_add(1);
        base + jitter(base / 5)
    }
}

/// A pseudo-random share of `up_to`, from the clock's nanoseconds: enough
/// to spread reconnections, not meant for anything else.
fn jitter(up_to: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let fraction = f64::from(nanos % 1000) / 1000.0;
    up_to.mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_bound_and_starts_over_after_a_success() {
        let mut backoff = Backoff::default();
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next()).collect();
        assert!(delays[0] >= FIRST_DELAY && delays[0] <= FIRST_DELAY * 6 / 5);
        assert!(delays[1] >= FIRST_DELAY * 2);
        assert!(delays.iter().all(|d| *d <= MAX_DELAY * 6 / 5));
        assert!(delays[9] >= MAX_DELAY);
        backoff.reset();
        assert!(backoff.next() <= FIRST_DELAY * 6 / 5);
        let long: Vec<Duration> = (0..12).map(|_| backoff.next_long()).collect();
        assert!(long[11] >= MAX_DELAY_REFUSED);
    }

    #[test]
    fn only_cursor_expired_starts_over() {
        let info = tonic_types::ErrorDetails::with_error_info(
            CURSOR_EXPIRED,
            "authd",
            std::collections::HashMap::new(),
        );
        let expired = Status::with_error_details(Code::FailedPrecondition, "cursor expired", info);
        assert!(matches!(ended_by(expired), Ended::CursorExpired));
        let other = Status::failed_precondition("something else");
        assert!(matches!(ended_by(other), Ended::Refused(_)));
        assert!(matches!(
            ended_by(Status::unavailable("shutting down")),
            Ended::Refused(_)
        ));
    }

    #[test]
    fn every_stream_asks_for_factor_changes() {
        let starts = [
            Start::After(7),
            Start::Since(UNIX_EPOCH + Duration::from_secs(1_900_000_000)),
            Start::Present,
        ];
        for start in starts {
            assert!(request_for(start).include_factor_changes, "{start:?}");
        }
        assert_eq!(request_for(Start::After(7)).after_event_id, 7);
        assert_eq!(
            request_for(starts[1]).since.map(|t| t.seconds),
            Some(1_900_000_000)
        );
    }

    #[test]
    fn a_session_ended_event_names_its_session_either_way() {
        let only_id = pb::WatchRevocationsResponse {
            session_id: "s".into(),
            ..Default::default()
        };
        assert_eq!(ended_sessions(&only_id), vec!["s".to_owned()]);
        let both = pb::WatchRevocationsResponse {
            session_id: "s".into(),
            session_ids: vec!["s".into()],
            ..Default::default()
        };
        assert_eq!(ended_sessions(&both), vec!["s".to_owned()]);
    }
}
