//! A replica's one LISTEN connection: evictions for the session and key
//! caches, wake-ups for the WatchRevocations feed's reader, and the beats that
//! prove the connection is keeping up (`freshness`). A second task sends
//! those beats and reports when the proof lapses.
//!
//! Both run on a thread and a runtime of their own
//! ([`ChangeListener::spawn_on_own_thread`]): a flood that keeps every
//! worker of the request runtime busy would otherwise delay the beat and
//! the listener, and switch the caches off exactly when they save the most.
//! The operating system schedules that thread fairly whatever the request
//! runtime's queues hold.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{Connection as _, PgConnection, PgPool};
use uuid::Uuid;

use crate::coherence::freshness::{BEAT, Freshness};
use crate::coherence::revocation_feed::RevocationFeed;
use crate::coherence::session_cache::SessionCache;
use crate::metrics::Metrics;
use std::sync::Arc;

const SESSION_ENDED: &str = "authd_session_ended";
const USER_CHANGED: &str = "authd_user_changed";
const SERVICE_KEYS_CHANGED: &str = "authd_service_keys_changed";
/// Numbering announces the log's new head here.
const REVOCATION: &str = "authd_revocation";
/// Each transaction that recorded events, at its commit: they wait for ids.
const PENDING: &str = "authd_revocation_pending";
/// Every replica's beats, `<replica>:<stamp>`; each listens for its own.
const BEAT_CHANNEL: &str = "authd_listener_beat";

/// A cache of credentials kept elsewhere (the service-key cache, a use
/// case's) that a change notification must empty on every replica. The
/// listener knows only this, so the layer below never names the one above.
pub trait FlushOnChange: Send + Sync {
    fn flush(&self);
}

#[derive(Clone)]
pub struct ChangeListener {
    pub cache: SessionCache,
    pub keys: Arc<dyn FlushOnChange>,
    pub revocations: RevocationFeed,
    pub freshness: Freshness,
    pub metrics: Metrics,
    /// Tells this replica's beats from the others'.
    replica: Uuid,
}

impl ChangeListener {
    pub fn new(
        cache: SessionCache,
        keys: Arc<dyn FlushOnChange>,
        revocations: RevocationFeed,
        freshness: Freshness,
        metrics: Metrics,
    ) -> Self {
        Self {
            cache,
            keys,
            revocations,
            freshness,
            metrics,
            replica: Uuid::new_v4(),
        }
    }

    /// Runs [`Self::run`] and [`Self::beat`] on a new thread with a
    /// single-threaded runtime and connections of their own, made on that
    /// runtime so their sockets are polled there. The returned task, on the
    /// caller's runtime, stops them when it is aborted or dropped with
    /// that runtime.
    pub fn spawn_on_own_thread(self, pool: &PgPool) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let options = pool.connect_options().as_ref().clone();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("authd-coherence".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        tracing::error!(error = %e, "no runtime for the change listener; caches off");
                        return;
                    }
                };
                runtime.block_on(async move {
                    // The listener's connection (detached from this pool
                    // once listening) and room for one reconnect.
                    let pool = sqlx::postgres::PgPoolOptions::new()
                        .max_connections(2)
                        .connect_lazy_with(options);
                    tokio::select! {
                        () = self.clone().run(pool.clone()) => {}
                        () = self.beat(pool) => {}
                        _ = &mut stopped => {}
                    }
                });
            })?;
        Ok(tokio::spawn(async move {
            let _stop = stop;
            std::future::pending::<()>().await;
        }))
    }

    /// Follows the notifications until aborted, reconnecting with backoff.
    pub async fn run(self, pool: PgPool) {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.listen_once(&pool).await {
                Ok(()) => {
                    tracing::warn!("change listener connection closed; caches off until it is back");
                    delay = Duration::from_millis(100);
                }
                Err(e) => tracing::warn!(error = %e, "change listener failed; caches off until it is back"),
            }
            self.freshness.forget();
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Returns when the notification connection is lost.
    async fn listen_once(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener
            .listen_all([
                SESSION_ENDED,
                USER_CHANGED,
                SERVICE_KEYS_CHANGED,
                REVOCATION,
                PENDING,
                BEAT_CHANNEL,
            ])
            .await?;
        // Whatever was committed while nobody listened is unknown: start
        // empty. The caches stay silent until the first beat is heard.
        // Events recorded meanwhile may wait for their ids.
        self.cache.flush();
        self.keys.flush();
        self.revocations.events_pending();
        let mine = format!("{}:", self.replica);
        while let Some(notification) = listener.try_recv().await? {
            let payload = notification.payload();
            match notification.channel() {
                BEAT_CHANNEL => {
                    let Some(stamp) = payload.strip_prefix(&mine).and_then(|s| s.parse().ok()) else {
                        continue;
                    };
                    if !self.freshness.is_fresh() {
                        self.cache.flush();
                        self.keys.flush();
                    }
                    self.freshness.heard(stamp);
                }
                SERVICE_KEYS_CHANGED => self.keys.flush(),
                // Not a cache matter: wake this replica's revocation reader. A
                // payload that does not parse cannot happen; the feed's
                // poll would catch up anyway.
                REVOCATION => {
                    if let Ok(id) = payload.parse() {
                        self.revocations.announce(id);
                    }
                }
                PENDING => self.revocations.events_pending(),
                channel => match (channel, Uuid::parse_str(payload)) {
                    (SESSION_ENDED, Ok(id)) => self.cache.evict_session(id),
                    (USER_CHANGED, Ok(id)) => self.cache.evict_user(id),
                    _ => self.cache.flush(),
                },
            }
        }
        Ok(())
    }

    /// Sends a beat every [`BEAT`] and reports (log, metric) when the
    /// caches go silent or answer again.
    pub async fn beat(self, pool: PgPool) {
        if self.freshness.is_disabled() {
            tracing::info!(
                "session and key caches off (AUTHD_SESSION_CACHE=off): every check reads the database"
            );
            self.metrics.set_session_cache_enabled(false);
            return;
        }
        let mut tick = tokio::time::interval(BEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_fresh = false;
        // The beat has a connection of its own, not one from the pool: a
        // flood that holds every pooled connection would otherwise silence
        // it and switch the caches off exactly when the database is
        // busiest. What it proves (the listener hears notifications) does
        // not depend on the pool.
        let options = pool.connect_options().as_ref().clone();
        drop(pool);
        let mut own: Option<PgConnection> = None;
        loop {
            tick.tick().await;
            let payload = format!("{}:{}", self.replica, self.freshness.stamp());
            let sent = async {
                if own.is_none() {
                    own = Some(PgConnection::connect_with(&options).await?);
                }
                let Some(conn) = own.as_mut() else {
                    return Ok(());
                };
                sqlx::query!("SELECT pg_notify($1, $2)", BEAT_CHANNEL, payload)
                    .execute(conn)
                    .await
                    .map(drop)
            };
            // A hung database must not stop the reports below.
            match tokio::time::timeout(BEAT * 2, sent).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    own = None;
                    tracing::debug!(error = %e, "listener beat not sent");
                }
                Err(_) => {
                    own = None;
                    tracing::debug!("listener beat timed out");
                }
            }
            let fresh = self.freshness.is_fresh();
            if fresh != was_fresh {
                if fresh {
                    tracing::info!("change listener keeps up; caches on");
                } else {
                    tracing::warn!(
                        bound = ?crate::coherence::freshness::BOUND,
                        "change listener has not proven it keeps up; caches off"
                    );
                    self.metrics.change_listener_lost();
                }
                self.metrics.set_session_cache_enabled(fresh);
                was_fresh = fresh;
            }
        }
    }
}
