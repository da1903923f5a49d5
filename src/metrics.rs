//! Prometheus metrics with the Prometheus project's client library
//! (`prometheus-client`), served at `GET /metrics` on `AUTHD_METRICS_LISTEN`
//! by the axum that tonic's router already brings.
//!
//! Recording never locks and, once a series exists, never allocates: every
//! handle is an `Arc` of atomics, looked up by index (a method's position in
//! a table built once from the descriptor sets, a gRPC code's number). A
//! series is created the first time it is recorded, through a `OnceLock` whose
//! fast path is one atomic load; only that first time takes the `Family`'s
//! lock. Latency histograms are this module's own [`DurationHistogram`]
//! (atomic buckets), because the library's `Histogram` takes a mutex on every
//! observation that all calls of one method would contend on.
//!
//! Values that only matter when someone looks (database pool, hashing pool,
//! outbox backlog) are read at scrape time, so the request path pays nothing
//! for them. The outbox backlog is one indexed query per scrape rather than a
//! periodic task: it is always fresh, costs nothing when nobody scrapes, and
//! concurrent or rapid scrapes share one query per second.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};
use prost::Message as _;
use sqlx::PgPool;

/// Upper bounds of the RPC latency buckets, in seconds; the last ones reach
/// the default request timeout.
pub const RPC_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds of the password-hash queue wait buckets, in seconds: an idle
/// pool answers in microseconds, a saturated one in multiples of one hash.
pub const QUEUE_WAIT_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Scrapes closer together than this share one outbox query.
const OUTBOX_QUERY_EVERY: Duration = Duration::from_secs(1);
/// A scrape does not wait longer than this for the database.
const OUTBOX_QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// What the OpenMetrics encoder produces.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Every gRPC code, by number.
const CODES: usize = 17;
/// The label of calls to paths no service serves, so a client cannot create
/// series at will.
const UNKNOWN_METHOD: &str = "unknown";

/// A histogram of durations with fixed buckets and atomic counts, encoded by
/// the library like its own histogram. A bucket counts only its own
/// observations; the count is their total, so it always equals `+Inf`.
#[derive(Clone, Debug)]
pub struct DurationHistogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug)]
struct HistogramInner {
    bounds: &'static [f64],
    /// One per bound, then the overflow bucket.
    buckets: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl DurationHistogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            inner: Arc::new(HistogramInner {
                bounds,
                buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum_nanos: AtomicU64::new(0),
            }),
        }
    }

    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let bucket = self.inner.bounds.partition_point(|bound| *bound < secs);
        if let Some(count) = self.inner.buckets.get(bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.inner.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &self.inner;
        let buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(inner.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        // Integer nanoseconds, so that adding is one `fetch_add` and never a
        // compare-and-swap loop on an f64.
        let sum = inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A gauge that exists only once it has a value: read at scrape time from
/// something that may be absent (no pool in unit tests, a failed query), so
/// that a missing reading is a missing series, not a stale or false number.
#[derive(Clone, Debug, Default)]
struct SampledGauge {
    inner: Arc<(AtomicU64, AtomicBool)>,
}

impl SampledGauge {
    fn set(&self, value: f64) {
        self.inner.0.store(value.to_bits(), Ordering::Relaxed);
        self.inner.1.store(true, Ordering::Release);
    }

    fn clear(&self) {
        self.inner.1.store(false, Ordering::Release);
    }
}

impl TypedMetric for SampledGauge {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for SampledGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&f64::from_bits(self.inner.0.load(Ordering::Relaxed)))
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }

    fn is_empty(&self) -> bool {
        !self.inner.1.load(Ordering::Acquire)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: Arc<str>,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: Arc<str>,
}

/// Labels of an audited AdminService call: service accounts are few and
/// named by operators, methods and outcomes are fixed sets.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdminCallLabels {
    service_account: String,
    method: &'static str,
    outcome: &'static str,
}

/// One label with a fixed set of values.
type Tag = [(&'static str, &'static str); 1];

/// A method's series, created on first use.
struct MethodSeries {
    name: Arc<str>,
    calls: [OnceLock<Counter>; CODES],
    latency: OnceLock<DurationHistogram>,
}

/// Index of a gRPC path in the method table; resolved once per call, before
/// the call runs, so recording needs neither the path nor a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodId(usize);

/// How a Login ended (the transport classifies its result).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginOutcome {
    Success,
    BadCredentials,
    Throttled,
    InvalidArgument,
    Unavailable,
    /// The right password for a disabled account.
    AccountDisabled,
    /// The right password for an account that must verify its email first.
    EmailNotVerified,
    Error,
}

impl LoginOutcome {
    const ALL: [Self; 8] = [
        Self::Success,
        Self::BadCredentials,
        Self::Throttled,
        Self::InvalidArgument,
        Self::Unavailable,
        Self::AccountDisabled,
        Self::EmailNotVerified,
        Self::Error,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::BadCredentials => "bad_credentials",
            Self::Throttled => "throttled",
            Self::InvalidArgument => "invalid_argument",
            Self::Unavailable => "unavailable",
            Self::AccountDisabled => "account_disabled",
            Self::EmailNotVerified => "email_not_verified",
            Self::Error => "error",
        }
    }
}

/// Which limit refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleKind {
    /// Per-account back-off after failed password checks (Login,
    /// ChangePassword, ChangeEmail, DeleteMe).
    LoginBackoff,
    /// The in-memory token bucket per client address.
    PeerLimit,
    /// Wrong reset tokens per client address (ResetPassword).
    ResetGuesses,
    /// Wrong verification tokens per client address (VerifyEmail).
    VerifyGuesses,
    /// The hourly cap on verification and email-change mails per account.
    VerificationMails,
    /// Failed service-key checks per client address.
    ServiceAuth,
    /// Failed passkey ceremonies per client address.
    PasskeyFailures,
}

impl ThrottleKind {
    const ALL: [Self; 7] = [
        Self::LoginBackoff,
        Self::PeerLimit,
        Self::ResetGuesses,
        Self::VerifyGuesses,
        Self::VerificationMails,
        Self::ServiceAuth,
        Self::PasskeyFailures,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::LoginBackoff => "login_backoff",
            Self::PeerLimit => "peer_limit",
            Self::ResetGuesses => "reset_guesses",
            Self::VerifyGuesses => "verify_guesses",
            Self::VerificationMails => "verification_mails",
            Self::ServiceAuth => "service_auth",
            Self::PasskeyFailures => "passkey_failures",
        }
    }
}

/// What became of one attempt at a clean-up pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanupOutcome {
    /// This replica ran a whole pass.
    Ran,
    /// Another replica holds the lock: its pass is running.
    Busy,
    /// Another replica (or this one) finished a pass less than an interval ago.
    Recent,
    /// The pass ran, but a table or its bookkeeping failed (logged); or the
    /// database could not be reached.
    Error,
    /// Shutdown began during the pass, which ended between two batches.
    Stopped,
}

impl CleanupOutcome {
    const ALL: [Self; 5] = [Self::Ran, Self::Busy, Self::Recent, Self::Error, Self::Stopped];

    /// The outcome's label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Ran => "ran",
            Self::Busy => "busy",
            Self::Recent => "recent",
            Self::Error => "error",
            Self::Stopped => "stopped",
        }
    }
}

/// Which text format a scraper gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0, which Prometheus asks for.
    OpenMetrics,
    /// The Prometheus text format 0.0.4, for anything else (promtool, curl).
    PrometheusText,
}

impl Format {
    /// OpenMetrics when the `Accept` header names it at all: a client that
    /// lists it can parse it, whatever its preference weights.
    pub fn negotiate(headers: &HeaderMap) -> Self {
        let wants_openmetrics = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("application/openmetrics-text"));
        if wants_openmetrics {
            Self::OpenMetrics
        } else {
            Self::PrometheusText
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Self::PrometheusText => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// Shared, cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    method_index: HashMap<String, usize>,
    /// The known methods, then one entry for unknown paths.
    methods: Box<[MethodSeries]>,
    calls: Family<CallLabels, Counter>,
    admin_calls: Family<AdminCallLabels, Counter>,
    latency: Family<MethodLabels, DurationHistogram, fn() -> DurationHistogram>,
    logins: [Counter; LoginOutcome::ALL.len()],
    throttled: [Counter; ThrottleKind::ALL.len()],
    refresh_rotations: Counter,
    refresh_reuse: Counter,
    mail_failures: Counter,
    cache_hits: Counter,
    cache_misses: Counter,
    cache_enabled: SampledGauge,
    listener_losses: Counter,
    /// Statements that read new revocation events for fan-out, and those a
    /// subscriber ran itself to catch up from the log.
    revocation_feed_reads: Counter,
    revocation_catch_ups: Counter,
    /// WatchRevocations streams with a task serving them, and those cut
    /// off for not reading.
    revocation_streams: Gauge,
    revocation_cut_off: Counter,
    /// Service-key lookups that went to the database: found, unknown.
    key_lookups: [Counter; 2],
    /// Tokens minted for one destination, by grant.
    granted: Family<Tag, Counter>,
    /// Shared Signals: SETs delivered by method (push, poll), and push
    /// attempts by outcome (accepted, rejected, retry, refused).
    ssf_delivered: Family<Tag, Counter>,
    ssf_push: Family<Tag, Counter>,
    /// The HTTP face's requests by route and status, and their latency.
    http_requests: Family<[(&'static str, String); 2], Counter>,
    http_latency: Family<Tag, DurationHistogram, fn() -> DurationHistogram>,
    cleanup: CleanupSeries,
    db: Option<PgPool>,
    hasher: Option<Arc<dyn WorkerPool>>,
    backlog: Option<Arc<dyn Backlog>>,
    scraped: ScrapedGauges,
    /// When the outbox was last queried; also serialises scrapes' queries.
    outbox_queried: tokio::sync::Mutex<Option<Instant>>,
}

/// The clean-up's series: one per outcome, created up front; per table,
/// created when the clean-up names its tables.
struct CleanupSeries {
    passes: [Counter; CleanupOutcome::ALL.len()],
    batches: Family<Tag, Counter>,
    deleted: Family<Tag, Counter>,
    last_duration: SampledGauge,
    running: SampledGauge,
}

#[derive(Default)]
struct ScrapedGauges {
    db_in_use: SampledGauge,
    db_idle: SampledGauge,
    db_max: SampledGauge,
    hash_in_flight: SampledGauge,
    hash_workers: SampledGauge,
    outbox_pending: SampledGauge,
    outbox_oldest_age: SampledGauge,
}

/// A pool of workers read at scrape time (the password hasher's). Metrics
/// names only this, so the modules that report to metrics may import it
/// without metrics importing them back.
pub trait WorkerPool: Send + Sync {
    /// Computations holding a worker now, and the workers there are.
    fn in_flight_and_workers(&self) -> (usize, usize);
    /// The histogram the pool records each job's wait for a worker in.
    fn queue_wait(&self) -> &DurationHistogram;
}

/// The mail backlog, read at scrape time: how many messages wait, and
/// since when the oldest.
pub trait Backlog: Send + Sync {
    fn pending(&self) -> PendingFuture<'_>;
}

pub type PendingFuture<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<(i64, Option<chrono::DateTime<chrono::Utc>>), String>>
            + Send
            + 'a,
    >,
>;

impl Metrics {
    /// Metrics of a running service that serves the RPCs of `services` (a
    /// serialized `FileDescriptorSet`; health and reflection are added):
    /// the pool, `hasher` and `backlog` are read at scrape time.
    pub fn for_service(
        services: &[u8],
        db: PgPool,
        hasher: Arc<dyn WorkerPool>,
        backlog: Arc<dyn Backlog>,
    ) -> Self {
        Self::build(services, Some(db), Some(hasher), Some(backlog))
    }

    /// Metrics of the RPCs of `services` with no database or hashing pool to
    /// read at scrape time.
    pub fn serving(services: &[u8]) -> Self {
        Self::build(services, None, None, None)
    }

    fn build(
        services: &[u8],
        db: Option<PgPool>,
        hasher: Option<Arc<dyn WorkerPool>>,
        backlog: Option<Arc<dyn Backlog>>,
    ) -> Self {
        let mut registry = Registry::with_prefix("authd");
        let names = known_methods(services);
        let method_index = names
            .iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), i))
            .collect();
        let methods = names
            .into_iter()
            .chain(std::iter::once(UNKNOWN_METHOD.to_owned()))
            .map(|name| MethodSeries {
                name: name.into(),
                calls: std::array::from_fn(|_| OnceLock::new()),
                latency: OnceLock::new(),
            })
            .collect();

        let admin_calls = Family::<AdminCallLabels, Counter>::default();
        registry.register(
            "admin_calls",
            "AdminService calls by service account, method and outcome (the audit log has each)",
            admin_calls.clone(),
        );
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "rpc_calls",
            "Finished RPCs by method and gRPC status code",
            calls.clone(),
        );
        let latency: Family<MethodLabels, DurationHistogram, fn() -> DurationHistogram> =
            Family::new_with_constructor(|| DurationHistogram::new(RPC_BUCKETS));
        registry.register_with_unit(
            "rpc_duration",
            "RPC latency by method, until the response headers",
            Unit::Seconds,
            latency.clone(),
        );

        let login_family = Family::<Tag, Counter>::default();
        let logins = LoginOutcome::ALL.map(|o| login_family.get_or_create_owned(&[("outcome", o.label())]));
        registry.register("logins", "Login calls by outcome", login_family);

        let refresh_rotations = Counter::default();
        registry.register(
            "refresh_rotations",
            "Refresh calls that rotated a refresh token",
            refresh_rotations.clone(),
        );
        let refresh_reuse = Counter::default();
        registry.register(
            "refresh_reuse_detections",
            "Refresh calls that presented an already used refresh token",
            refresh_reuse.clone(),
        );

        let throttle_family = Family::<Tag, Counter>::default();
        let throttled =
            ThrottleKind::ALL.map(|k| throttle_family.get_or_create_owned(&[("kind", k.label())]));
        registry.register(
            "throttled",
            "Calls refused with RESOURCE_EXHAUSTED, by the limit that refused them",
            throttle_family,
        );

        let scraped = ScrapedGauges::default();
        if let Some(hasher) = &hasher {
            registry.register_with_unit(
                "password_hash_queue_wait",
                "Time jobs waited for a worker of the password hashing pool",
                Unit::Seconds,
                hasher.queue_wait().clone(),
            );
        }
        registry.register(
            "password_hash_in_flight",
            "Jobs running on the password hashing pool (argon2, strength estimates)",
            scraped.hash_in_flight.clone(),
        );
        registry.register(
            "password_hash_workers",
            "Password hashes that may run at once (AUTHD_HASH_WORKERS)",
            scraped.hash_workers.clone(),
        );

        registry.register(
            "outbox_pending",
            "Mails in the outbox waiting for delivery",
            scraped.outbox_pending.clone(),
        );
        registry.register_with_unit(
            "outbox_oldest_pending_age",
            "Age of the oldest mail waiting for delivery, 0 when none waits",
            Unit::Seconds,
            scraped.outbox_oldest_age.clone(),
        );
        let mail_failures = Counter::default();
        registry.register(
            "outbox_delivery_failures",
            "Mail delivery attempts that failed and will be retried",
            mail_failures.clone(),
        );

        let cache_hits = Counter::default();
        registry.register(
            "session_cache_hits",
            "Session lookups answered from memory",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "session_cache_misses",
            "Session lookups that went to the database",
            cache_misses.clone(),
        );
        let cache_enabled = SampledGauge::default();
        registry.register(
            "session_cache_enabled",
            "1 while the session and key caches answer (their change listener proved within 1 s that it keeps up), else 0",
            cache_enabled.clone(),
        );
        let listener_losses = Counter::default();
        registry.register(
            "change_listener_losses",
            "Times the change listener was lost or stalled, switching the caches off",
            listener_losses.clone(),
        );
        let revocation_feed_reads = Counter::default();
        registry.register(
            "revocation_feed_reads",
            "Reads of new revocation events, each shared by every WatchRevocations subscriber of this replica",
            revocation_feed_reads.clone(),
        );
        let revocation_catch_ups = Counter::default();
        registry.register(
            "revocation_catch_ups",
            "Reads of the revocation log by one WatchRevocations subscriber: resuming, or fallen behind the in-memory buffer",
            revocation_catch_ups.clone(),
        );

        let revocation_streams = Gauge::default();
        registry.register(
            "revocation_streams",
            "WatchRevocations streams open on this replica (each has a task until it ends)",
            revocation_streams.clone(),
        );
        let revocation_cut_off = Counter::default();
        registry.register(
            "revocation_streams_cut_off",
            "WatchRevocations streams ended because their subscriber took no message for two heartbeat intervals with its buffers full",
            revocation_cut_off.clone(),
        );

        let key_lookup_family = Family::<Tag, Counter>::default();
        let key_lookups =
            ["found", "unknown"].map(|r| key_lookup_family.get_or_create_owned(&[("result", r)]));
        registry.register(
            "service_key_lookups",
            "Service-key checks that read the database (not answered from memory), by whether the key exists",
            key_lookup_family,
        );

        let granted = Family::<Tag, Counter>::default();
        registry.register(
            "tokens_granted",
            "Tokens minted for one destination, by grant (client_credentials, token_exchange, impersonation)",
            granted.clone(),
        );
        let ssf_delivered = Family::<Tag, Counter>::default();
        registry.register(
            "ssf_sets_delivered",
            "Shared Signals SETs delivered, by method (push: accepted by the receiver; poll: handed out)",
            ssf_delivered.clone(),
        );
        let ssf_push = Family::<Tag, Counter>::default();
        registry.register(
            "ssf_push_attempts",
            "Shared Signals push attempts, by outcome (accepted, rejected, retry, refused)",
            ssf_push.clone(),
        );
        let http_requests = Family::<[(&'static str, String); 2], Counter>::default();
        registry.register(
            "http_requests",
            "Requests to the HTTP face (discovery, JWKS, token, introspection) by route and HTTP status",
            http_requests.clone(),
        );
        let http_latency: Family<Tag, DurationHistogram, fn() -> DurationHistogram> =
            Family::new_with_constructor(|| DurationHistogram::new(RPC_BUCKETS));
        registry.register_with_unit(
            "http_request_duration",
            "HTTP face latency by route, until the response headers",
            Unit::Seconds,
            http_latency.clone(),
        );

        let cleanup = CleanupSeries::register(&mut registry);

        registry.register(
            "db_pool_connections_in_use",
            "Database connections lent out to queries",
            scraped.db_in_use.clone(),
        );
        registry.register(
            "db_pool_connections_idle",
            "Open database connections waiting in the pool",
            scraped.db_idle.clone(),
        );
        registry.register(
            "db_pool_connections_max",
            "Most database connections the pool opens (AUTHD_DB_MAX_CONNECTIONS)",
            scraped.db_max.clone(),
        );

        registry.register(
            "build",
            "The running authd",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );

        Self {
            inner: Arc::new(Inner {
                registry,
                method_index,
                methods,
                calls,
                admin_calls,
                latency,
                logins,
                throttled,
                refresh_rotations,
                refresh_reuse,
                mail_failures,
                cache_hits,
                cache_misses,
                cache_enabled,
                listener_losses,
                revocation_feed_reads,
                revocation_catch_ups,
                revocation_streams,
                revocation_cut_off,
                key_lookups,
                granted,
                ssf_delivered,
                ssf_push,
                http_requests,
                http_latency,
                cleanup,
                db,
                hasher,
                backlog,
                scraped,
                outbox_queried: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// The method of a gRPC path; paths no service serves share one id.
    pub fn method_id(&self, path: &str) -> MethodId {
        let unknown = self.inner.methods.len() - 1;
        MethodId(self.inner.method_index.get(path).copied().unwrap_or(unknown))
    }

    /// The label of a method, for logs.
    pub fn method_name(&self, method: MethodId) -> &str {
        self.inner
            .methods
            .get(method.0)
            .map_or(UNKNOWN_METHOD, |m| &m.name)
    }

    /// One finished call: atomic increments only, once its series exist.
    pub fn record(&self, method: MethodId, code: tonic::Code, elapsed: Duration) {
        let inner = &*self.inner;
        let Some(series) = inner.methods.get(method.0) else {
            return;
        };
        let code = code_index(code);
        if let Some(calls) = series.calls.get(code) {
            calls
                .get_or_init(|| {
                    inner.calls.get_or_create_owned(&CallLabels {
                        method: series.name.clone(),
                        code: CODE_NAMES[code],
                    })
                })
                .inc();
        }
        series
            .latency
            .get_or_init(|| {
                inner.latency.get_or_create_owned(&MethodLabels {
                    method: series.name.clone(),
                })
            })
            .observe(elapsed);
    }

    /// Counts a Login by how it ended, and its throttling if it was.
    pub fn login(&self, outcome: LoginOutcome) {
        if let Some(counter) = LoginOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .and_then(|i| self.inner.logins.get(i))
        {
            counter.inc();
        }
        if outcome == LoginOutcome::Throttled {
            self.throttled(ThrottleKind::LoginBackoff);
        }
    }

    /// A WatchRevocations stream's task started; it counts until the
    /// returned guard is dropped.
    pub fn revocation_stream(&self) -> OpenStream {
        self.inner.revocation_streams.inc();
        OpenStream(self.inner.revocation_streams.clone())
    }

    /// A WatchRevocations subscriber was cut off for not reading.
    pub fn revocation_stream_cut_off(&self) {
        self.inner.revocation_cut_off.inc();
    }

    /// A Refresh rotated its token.
    pub fn refresh_rotated(&self) {
        self.inner.refresh_rotations.inc();
    }

    /// A Refresh presented a consumed token and ended its session.
    pub fn refresh_reuse_detected(&self) {
        self.inner.refresh_reuse.inc();
    }

    /// One call refused by `kind`.
    pub fn throttled(&self, kind: ThrottleKind) {
        let i = ThrottleKind::ALL.iter().position(|k| *k == kind);
        if let Some(counter) = i.and_then(|i| self.inner.throttled.get(i)) {
            counter.inc();
        }
    }

    /// One mail delivery attempt failed (it will be retried).
    pub fn mail_delivery_failed(&self) {
        self.inner.mail_failures.inc();
    }

    /// One audited AdminService call.
    pub fn admin_call(&self, service_account: &str, method: &'static str, outcome: &'static str) {
        self.inner
            .admin_calls
            .get_or_create(&AdminCallLabels {
                service_account: service_account.to_owned(),
                method,
                outcome,
            })
            .inc();
    }

    /// A session lookup answered from the cache.
    pub fn session_cache_hit(&self) {
        self.inner.cache_hits.inc();
    }

    /// A session lookup that went to the database.
    pub fn session_cache_miss(&self) {
        self.inner.cache_misses.inc();
    }

    /// Whether the session cache is in use; until first called, the gauge is
    /// not exported at all.
    pub fn set_session_cache_enabled(&self, on: bool) {
        self.inner.cache_enabled.set(if on { 1.0 } else { 0.0 });
    }

    /// A service key looked up in the database; `found`: it exists.
    pub fn service_key_lookup(&self, found: bool) {
        let [found_series, unknown_series] = &self.inner.key_lookups;
        if found { found_series } else { unknown_series }.inc();
    }

    /// A token minted by `grant`.
    /// `n` SETs delivered by `method` (push, poll).
    pub fn ssf_delivered(&self, method: &'static str, n: usize) {
        self.inner
            .ssf_delivered
            .get_or_create(&[("method", method)])
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// One push attempt ended with `outcome`.
    pub fn ssf_push(&self, outcome: &'static str) {
        self.inner.ssf_push.get_or_create(&[("outcome", outcome)]).inc();
    }

    pub fn token_granted(&self, grant: &'static str) {
        self.inner.granted.get_or_create(&[("grant", grant)]).inc();
    }

    /// A finished request to the HTTP face's `route`.
    pub fn http_request(&self, route: &'static str, status: u16, took: Duration) {
        self.inner
            .http_requests
            .get_or_create(&[("route", route.to_owned()), ("code", status.to_string())])
            .inc();
        self.inner
            .http_latency
            .get_or_create(&[("route", route)])
            .observe(took);
    }

    /// New revocation events were read once for every subscriber.
    pub fn revocation_feed_read(&self) {
        self.inner.revocation_feed_reads.inc();
    }

    /// A subscriber read the revocation log for itself.
    pub fn revocation_catch_up(&self) {
        self.inner.revocation_catch_ups.inc();
    }

    /// The change listener was lost or stalled.
    pub fn change_listener_lost(&self) {
        self.inner.listener_losses.inc();
    }

    /// The tables the clean-up deletes from, so that each one's series
    /// reads 0 before its first batch.
    pub fn cleanup_tables(&self, tables: &[&'static str]) {
        let series = &self.inner.cleanup;
        for &table in tables {
            series.batches.get_or_create_owned(&[("table", table)]);
            series.deleted.get_or_create_owned(&[("table", table)]);
        }
    }

    /// One clean-up batch (one short transaction) on `table`. (The clean-up
    /// runs a few batches a second at most: the family's lock is no cost.)
    pub fn cleanup_batch(&self, table: &'static str, deleted: u64) {
        let series = &self.inner.cleanup;
        series.batches.get_or_create(&[("table", table)]).inc();
        series.deleted.get_or_create(&[("table", table)]).inc_by(deleted);
    }

    /// How an attempt at a clean-up pass ended.
    pub fn cleanup_attempt(&self, outcome: CleanupOutcome) {
        let i = CleanupOutcome::ALL.iter().position(|o| *o == outcome);
        if let Some(counter) = i.and_then(|i| self.inner.cleanup.passes.get(i)) {
            counter.inc();
        }
    }

    /// How long the latest clean-up pass of this replica took.
    pub fn cleanup_pass_took(&self, elapsed: Duration) {
        self.inner.cleanup.last_duration.set(elapsed.as_secs_f64());
    }

    /// Whether this replica is running a clean-up pass; until first called
    /// (clean-up off), the gauge is not exported at all.
    pub fn set_cleanup_running(&self, running: bool) {
        self.inner.cleanup.running.set(if running { 1.0 } else { 0.0 });
    }

    /// Reads the scrape-time values, then encodes everything in `format`.
    pub async fn render(&self, format: Format) -> Result<String, std::fmt::Error> {
        self.read_pools();
        self.read_outbox().await;
        let mut out = String::with_capacity(16 * 1024);
        match format {
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)?,
            Format::PrometheusText => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.inner.registry)?;
            }
        }
        Ok(out)
    }

    fn read_pools(&self) {
        let scraped = &self.inner.scraped;
        if let Some(db) = &self.inner.db {
            let open = db.size();
            let idle = u32::try_from(db.num_idle()).unwrap_or(u32::MAX);
            scraped.db_in_use.set(f64::from(open.saturating_sub(idle)));
            scraped.db_idle.set(f64::from(idle));
            scraped.db_max.set(f64::from(db.options().get_max_connections()));
        }
        if let Some(hasher) = &self.inner.hasher {
            let (in_flight, workers) = hasher.in_flight_and_workers();
            scraped.hash_in_flight.set(in_flight as f64);
            scraped.hash_workers.set(workers as f64);
        }
    }

    #[allow(clippy::disallowed_methods)] // telemetry: the backlog's age is measured at the scrape
    async fn read_outbox(&self) {
        let Some(backlog) = &self.inner.backlog else {
            return;
        };
        let mut queried = self.inner.outbox_queried.lock().await;
        if queried.is_some_and(|at| at.elapsed() < OUTBOX_QUERY_EVERY) {
            return;
        }
        *queried = Some(Instant::now());
        let now = chrono::Utc::now();
        let scraped = &self.inner.scraped;
        match tokio::time::timeout(OUTBOX_QUERY_TIMEOUT, backlog.pending()).await {
            Ok(Ok((count, oldest_created_at))) => {
                scraped.outbox_pending.set(count as f64);
                let age = oldest_created_at.map_or(0.0, |oldest| {
                    (now - oldest).num_milliseconds().max(0) as f64 / 1000.0
                });
                scraped.outbox_oldest_age.set(age);
            }
            failed => {
                // No number rather than a stale one: the series disappears
                // until the database answers again.
                scraped.outbox_pending.clear();
                scraped.outbox_oldest_age.clear();
                match failed {
                    Ok(Err(e)) => tracing::debug!(error = %e, "metrics: outbox query failed"),
                    _ => tracing::debug!("metrics: outbox query timed out"),
                }
            }
        }
    }
}

impl CleanupSeries {
    fn register(registry: &mut Registry) -> Self {
        let passes = Family::<Tag, Counter>::default();
        let batches = Family::<Tag, Counter>::default();
        let deleted = Family::<Tag, Counter>::default();
        let series = Self {
            passes: CleanupOutcome::ALL.map(|o| passes.get_or_create_owned(&[("outcome", o.label())])),
            batches: batches.clone(),
            deleted: deleted.clone(),
            last_duration: SampledGauge::default(),
            running: SampledGauge::default(),
        };
        registry.register(
            "cleanup_passes",
            "Attempts at a clean-up pass by outcome: ran, busy (another replica's pass is running), \
             recent (one finished less than AUTHD_CLEANUP_INTERVAL ago), error, stopped (at shutdown)",
            passes,
        );
        registry.register(
            "cleanup_batches",
            "Clean-up batches (each one short transaction) this replica ran, by table",
            batches,
        );
        registry.register(
            "cleanup_deleted_rows",
            "Rows the clean-up of this replica deleted, by table",
            deleted,
        );
        registry.register_with_unit(
            "cleanup_last_pass_duration",
            "How long the latest clean-up pass this replica ran took",
            Unit::Seconds,
            series.last_duration.clone(),
        );
        registry.register(
            "cleanup_pass_running",
            "1 while this replica runs a clean-up pass, else 0; absent while its clean-up is off",
            series.running.clone(),
        );
        series
    }
}

/// `/package.Service/Method` of every RPC authd serves, from the descriptor
/// sets of its services (`services`, handed in at start-up, and health and
/// reflection), so a new RPC gets its own label without a list to keep in
/// step.
fn known_methods(services: &[u8]) -> Vec<String> {
    let sets = [
        services,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut paths = Vec::new();
    for bytes in sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(bytes) else {
            tracing::warn!("metrics: a descriptor set does not decode; its methods count as unknown");
            continue;
        };
        for file in &set.file {
            let package = file.package();
            for service in &file.service {
                let prefix = if package.is_empty() {
                    service.name().to_owned()
                } else {
                    format!("{package}.{}", service.name())
                };
                for method in &service.method {
                    paths.push(format!("/{prefix}/{}", method.name()));
                }
            }
        }
    }
    paths.sort();
    paths.dedup();
    paths
}

const CODE_NAMES: [&str; CODES] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A code's number is its index in [`CODE_NAMES`] (gRPC fixes them).
fn code_index(code: tonic::Code) -> usize {
    let number = code as i32;
    usize::try_from(number).map_or(2, |n| n.min(CODES - 1))
}

/// Serves `GET /metrics` until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Metrics) {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(metrics);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "metrics listener stopped");
    }
}

async fn scrape(State(metrics): State<Metrics>, headers: HeaderMap) -> Response {
    let format = Format::negotiate(&headers);
    match metrics.render(format).await {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    Ok(tokio::net::TcpListener::bind(addr).await?)
}

/// Counts one open stream while it lives.
pub struct OpenStream(Gauge);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::pb::paths::auth_service as auth;

    const LOGIN: &str = auth::LOGIN;

    fn render(m: &Metrics, format: Format) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(m.render(format)).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_rpc_of_the_contract_has_its_own_label() {
        let m = Metrics::serving(crate::pb::FILE_DESCRIPTOR_SET);
        for path in [
            LOGIN,
            auth::INTROSPECT_TOKEN,
            &format!("/{}/Check", tonic_health::pb::health_server::SERVICE_NAME),
            &format!(
                "/{}/ServerReflectionInfo",
                tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME
            ),
            &format!(
                "/{}/ServerReflectionInfo",
                tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME
            ),
        ] {
            assert_eq!(m.method_name(m.method_id(path)), path);
        }
        assert_eq!(
            m.method_name(m.method_id("/evil/a-new-path-each-time")),
            UNKNOWN_METHOD
        );
        assert_eq!(
            m.method_name(m.method_id(&format!("{LOGIN}Nope"))),
            UNKNOWN_METHOD
        );
    }

    #[test]
    fn counts_calls_by_code_and_cumulates_buckets() {
        let m = Metrics::serving(crate::pb::FILE_DESCRIPTOR_SET);
        let login = m.method_id(LOGIN);
        m.record(login, tonic::Code::Ok, Duration::from_millis(30));
        m.record(login, tonic::Code::Unauthenticated, Duration::from_millis(3));
        m.record(
            m.method_id("/x/y"),
            tonic::Code::Unimplemented,
            Duration::from_micros(10),
        );
        let text = render(&m, Format::OpenMetrics);
        assert!(text.contains("# TYPE authd_rpc_calls counter"), "{text}");
        assert!(text.contains(&format!(
            r#"authd_rpc_calls_total{{method="{LOGIN}",code="OK"}} 1"#
        )));
        assert!(text.contains(&format!(
            r#"authd_rpc_calls_total{{method="{LOGIN}",code="UNAUTHENTICATED"}} 1"#
        )));
        assert!(text.contains(r#"authd_rpc_calls_total{method="unknown",code="UNIMPLEMENTED"} 1"#));
        assert!(
            text.contains("# UNIT authd_rpc_duration_seconds seconds"),
            "{text}"
        );
        assert!(text.contains(&format!(
            r#"authd_rpc_duration_seconds_bucket{{le="0.005",method="{LOGIN}"}} 1"#
        )));
        assert!(text.contains(&format!(
            r#"authd_rpc_duration_seconds_bucket{{le="0.05",method="{LOGIN}"}} 2"#
        )));
        assert!(text.contains(&format!(
            r#"authd_rpc_duration_seconds_bucket{{le="+Inf",method="{LOGIN}"}} 2"#
        )));
        assert!(text.contains(&format!(
            r#"authd_rpc_duration_seconds_count{{method="{LOGIN}"}} 2"#
        )));
        assert!(text.contains(&format!(
            r#"authd_rpc_duration_seconds_sum{{method="{LOGIN}"}} 0.033"#
        )));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn outcomes_come_from_the_handlers_results() {
        let m = Metrics::serving(crate::pb::FILE_DESCRIPTOR_SET);
        m.login(LoginOutcome::Success);
        m.login(LoginOutcome::BadCredentials);
        m.login(LoginOutcome::BadCredentials);
        m.login(LoginOutcome::Throttled);
        m.login(LoginOutcome::Unavailable);
        m.refresh_rotated();
        m.refresh_reuse_detected();
        m.throttled(ThrottleKind::ResetGuesses);
        m.throttled(ThrottleKind::PeerLimit);
        m.mail_delivery_failed();
        let text = render(&m, Format::OpenMetrics);
        for line in [
            r#"authd_logins_total{outcome="success"} 1"#,
            r#"authd_logins_total{outcome="bad_credentials"} 2"#,
            r#"authd_logins_total{outcome="throttled"} 1"#,
            r#"authd_logins_total{outcome="invalid_argument"} 0"#,
            r#"authd_logins_total{outcome="unavailable"} 1"#,
            r#"authd_logins_total{outcome="error"} 0"#,
            "authd_refresh_rotations_total 1",
            "authd_refresh_reuse_detections_total 1",
            r#"authd_throttled_total{kind="login_backoff"} 1"#,
            r#"authd_throttled_total{kind="peer_limit"} 1"#,
            r#"authd_throttled_total{kind="reset_guesses"} 1"#,
            "authd_outbox_delivery_failures_total 1",
            concat!(
                r#"authd_build_info{version=""#,
                env!("CARGO_PKG_VERSION"),
                r#""} 1"#
            ),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn scrape_time_gauges_exist_only_with_a_reading() {
        let m = Metrics::serving(crate::pb::FILE_DESCRIPTOR_SET);
        let text = render(&m, Format::OpenMetrics);
        assert!(!text.contains("authd_session_cache_enabled"), "{text}");
        assert!(!text.contains("authd_db_pool_connections_in_use"), "{text}");
        assert!(text.contains("authd_session_cache_hits_total 0"), "{text}");
        m.set_session_cache_enabled(true);
        m.session_cache_hit();
        m.session_cache_miss();
        let text = render(&m, Format::OpenMetrics);
        assert!(text.contains("authd_session_cache_enabled 1"), "{text}");
        assert!(text.contains("authd_session_cache_hits_total 1"), "{text}");
        assert!(text.contains("authd_session_cache_misses_total 1"), "{text}");
    }

    #[test]
    fn the_clean_up_is_counted_by_outcome_and_by_table() {
        let m = Metrics::serving(crate::pb::FILE_DESCRIPTOR_SET);
        let text = render(&m, Format::OpenMetrics);
        assert!(!text.contains("authd_cleanup_pass_running"), "{text}");
        assert!(!text.contains("authd_cleanup_last_pass_duration"), "{text}");
        m.set_cleanup_running(true);
        m.cleanup_attempt(CleanupOutcome::Busy);
        m.cleanup_attempt(CleanupOutcome::Recent);
        m.cleanup_tables(&["sessions", "refresh_tokens", "revocation_events", "email_outbox"]);
        m.cleanup_batch("refresh_tokens", 100);
        m.cleanup_batch("sessions", 40);
        m.cleanup_batch("sessions", 7);
        m.cleanup_batch("revocation_events", 0);
        m.cleanup_pass_took(Duration::from_millis(1500));
        m.set_cleanup_running(false);
        m.cleanup_attempt(CleanupOutcome::Ran);
        let text = render(&m, Format::OpenMetrics);
        for line in [
            r#"authd_cleanup_passes_total{outcome="ran"} 1"#,
            r#"authd_cleanup_passes_total{outcome="busy"} 1"#,
            r#"authd_cleanup_passes_total{outcome="recent"} 1"#,
            r#"authd_cleanup_passes_total{outcome="error"} 0"#,
            r#"authd_cleanup_passes_total{outcome="stopped"} 0"#,
            r#"authd_cleanup_batches_total{table="sessions"} 2"#,
            r#"authd_cleanup_deleted_rows_total{table="sessions"} 47"#,
            r#"authd_cleanup_batches_total{table="refresh_tokens"} 1"#,
            r#"authd_cleanup_deleted_rows_total{table="refresh_tokens"} 100"#,
            r#"authd_cleanup_batches_total{table="revocation_events"} 1"#,
            r#"authd_cleanup_deleted_rows_total{table="revocation_events"} 0"#,
            r#"authd_cleanup_batches_total{table="email_outbox"} 0"#,
            "authd_cleanup_last_pass_duration_seconds 1.5",
            "authd_cleanup_pass_running 0.0",
            "# UNIT authd_cleanup_last_pass_duration_seconds seconds",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn the_prometheus_text_format_for_clients_that_do_not_ask_for_openmetrics() {
        let m = Metrics::serving(crate::pb::FILE_DESCRIPTOR_SET);
        m.record(m.method_id(LOGIN), tonic::Code::Ok, Duration::from_millis(1));
        let text = render(&m, Format::PrometheusText);
        assert!(text.contains("# TYPE authd_rpc_calls_total counter"), "{text}");
        assert!(text.contains("# TYPE authd_build_info gauge"), "{text}");
        assert!(!text.contains("# EOF"));
        let mut accept = HeaderMap::new();
        assert_eq!(Format::negotiate(&accept), Format::PrometheusText);
        accept.insert(
            header::ACCEPT,
            HeaderValue::from_static(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            ),
        );
        assert_eq!(Format::negotiate(&accept), Format::OpenMetrics);
    }

    #[test]
    fn a_histogram_counts_each_observation_in_one_bucket() {
        let h = DurationHistogram::new(&[0.01, 0.1]);
        h.observe(Duration::from_millis(10));
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_secs(3));
        let counts: Vec<u64> = h
            .inner
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts, [1, 1, 1], "a bound is inclusive (le)");
        assert_eq!(h.count(), 3);
        assert_eq!(h.inner.sum_nanos.load(Ordering::Relaxed), 3_060_000_000);
    }

    /// Threads recording one series at once lose no increment (atomics,
    /// not a lock, keep them consistent).
    #[test]
    fn concurrent_recording_loses_nothing() {
        let m = Metrics::serving(crate::pb::FILE_DESCRIPTOR_SET);
        let login = m.method_id(LOGIN);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        m.record(login, tonic::Code::Ok, Duration::from_micros(100));
                    }
                });
            }
        });
        let text = render(&m, Format::PrometheusText);
        assert!(
            text.contains(&format!(
                r#"authd_rpc_calls_total{{method="{LOGIN}",code="OK"}} 40000"#
            )),
            "{text}"
        );
        assert!(text.contains(&format!(
            r#"authd_rpc_duration_seconds_count{{method="{LOGIN}"}} 40000"#
        )));
    }
}
