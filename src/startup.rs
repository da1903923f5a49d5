//! Builds the running service: database (external or the private development
//! cluster), migrations, keys, the gRPC server with its layers, health and
//! reflection, background tasks, and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr as _;
use std::time::Duration;

use anyhow::Context as _;
use http::{HeaderName, HeaderValue, Method};
use secrecy::ExposeSecret as _;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic_health::pb::health_server::HealthServer;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::coherence::change_listener::ChangeListener;
use crate::coherence::freshness::Freshness;
use crate::coherence::revocation_feed::RevocationFeed;
use crate::coherence::session_cache::SessionCache;
use crate::config::Config;
use crate::crypto::data_keys::DataKeys;
use crate::crypto::jwt::AccessTokens;
use crate::crypto::keys;
use crate::crypto::passkeys::RelyingParty;
use crate::crypto::password::PasswordHasher;
use crate::db;
use crate::domain::{MfaRequirement, PasswordPolicy};
use crate::grpc::auth_layer::BearerAuth;
use crate::grpc::database_gate::DatabaseGate;
use crate::grpc::deadline::Deadlines;
use crate::grpc::health::{HealthApi, HealthState};
use crate::grpc::middleware::MiddlewareLayer;
use crate::grpc::observe::Observe;
use crate::grpc::rate_limit::PeerRateLimit;
use crate::grpc::{AdminApi, AuthApi};
use crate::http::HttpFaceLayer;
use crate::jobs::cleanup::Cleanup;
use crate::jobs::mail_worker::OutboxWorker;
use crate::local_pg::{Durability, LocalPostgres};
use crate::mail::MailSettings;
use crate::mail::transport::Transport;
use crate::metrics::Metrics;
use crate::pb;
use crate::pb::auth::v1::admin_service_server::AdminServiceServer;
use crate::pb::auth::v1::auth_service_server::AuthServiceServer;
use crate::service::credentials::Credentials;
use crate::service::keys::ServiceKeys;
use crate::service::{Core, CoreParts, FactorSettings, PageTokens, SessionSettings};

/// Largest request authd decodes; its messages are a few hundred bytes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Health is reported for the contract's service and for the server ("").
/// How often the database is probed while it is unreachable.
const PROBE_WHILE_DOWN: Duration = Duration::from_millis(200);
/// How often the revocation log is read while someone watches it, in case
/// a notification was lost: the worst-case delay of an event then.
const REVOCATION_POLL: Duration = Duration::from_secs(1);
/// How long a stopping replica spends numbering the events its last calls
/// recorded.
const FINAL_NUMBERING: Duration = Duration::from_secs(2);

type ServeFuture = Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

/// The database authd talks to, and the private cluster if it runs one.
pub struct Database {
    pub options: PgConnectOptions,
    pub local: Option<LocalPostgres>,
}

/// `DATABASE_URL`, or the private development cluster under the data folder.
pub async fn open_database(config: &Config) -> anyhow::Result<Database> {
    if let Some(url) = &config.database_url {
        let options =
            PgConnectOptions::from_str(url.expose_secret()).context("DATABASE_URL is not a valid URL")?;
        return Ok(Database { options, local: None });
    }
    let root = config.data_dir.join("postgres");
    let local =
        tokio::task::spawn_blocking(move || LocalPostgres::start(&root, Durability::Durable)).await??;
    local.ensure_database("authd").await?;
    tracing::warn!(
        pgdata = %local.data_dir().display(),
        url = %local.url("authd"),
        "DEVELOPMENT SETUP: DATABASE_URL is not set, so authd runs its own PostgreSQL in the data folder \
         and stops it on exit. Set DATABASE_URL for anything but local development."
    );
    Ok(Database {
        options: local.connect_options("authd"),
        local: Some(local),
    })
}

/// The parts start-up wires into the transports and background tasks
/// besides the use cases; clones of what `Core` holds privately.
#[derive(Clone)]
struct Shared {
    pool: PgPool,
    metrics: Metrics,
    tokens: AccessTokens,
    cache: SessionCache,
    service_keys: ServiceKeys,
    freshness: Freshness,
    revocation_feed: RevocationFeed,
    mail_queued: std::sync::Arc<tokio::sync::Notify>,
}

pub struct Application {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    shared: Shared,
    serve: ServeFuture,
    stop_serving: oneshot::Sender<()>,
    health: HealthState,
    background: Background,
    grace: Duration,
    drain: Duration,
    local_pg: Option<LocalPostgres>,
}

impl Application {
    /// Database, use cases, gRPC server, background tasks: each a step below.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let database = open_database(&config).await?;
        let pool = db::connect_lazy(database.options, config.db_max_connections);
        db::migrate(&pool).await.context("running migrations")?;
        let (core, shared) = build_core(&config, pool).await?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let (stop_serving, stopped) = oneshot::channel::<()>();
        let health = HealthState::default();
        // The migrations just reached the database; the probe takes over.
        health.set_database_up(true);
        let serve = serve(&config, &core, &shared, &health, listener, stopped)?;
        let mut background = start_background_tasks(&config, &core, &shared, &health, local_addr)?;
        let metrics_addr = serve_metrics(&config, shared.metrics.clone(), &mut background.others).await?;
        Ok(Self {
            local_addr,
            metrics_addr,
            shared,
            serve,
            stop_serving,
            health,
            background,
            grace: config.shutdown_grace,
            drain: config.shutdown_drain,
            local_pg: database.local,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The database pool the server uses (tests read what it wrote).
    pub fn database(&self) -> &PgPool {
        &self.shared.pool
    }

    /// Serves until `shutdown` resolves, then shuts down in the order a
    /// load balancer needs: health says NOT_SERVING while calls are still
    /// served for the grace period (so pollers stop sending calls here),
    /// then long-lived streams end (UNAVAILABLE: reconnect elsewhere), the
    /// server stops accepting (GOAWAY) and in-flight calls, and the mail
    /// being sent, finish within the drain time.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr, "authd listening");
        let mut server = tokio::spawn(self.serve);
        let outcome = tokio::select! {
            result = &mut server => Some(result),
            () = shutdown => None,
        };
        let Background {
            probe,
            mail,
            ssf_push,
            mail_stop,
            mut cleanup,
            cleanup_stop,
            others,
        } = self.background;
        let result = match outcome {
            Some(result) => result
                .map_err(anyhow::Error::from)
                .and_then(|r| r.map_err(Into::into)),
            None => {
                // The probe must not report SERVING again.
                probe.abort();
                // A clean-up pass ends after its current batch.
                let _ = cleanup_stop.send(true);
                self.health.begin_draining();
                tracing::info!(grace = ?self.grace, drain = ?self.drain,
                    "shutting down: NOT_SERVING, still serving during the grace period");
                tokio::time::sleep(self.grace).await;
                tracing::info!("draining: streams end, no new calls, in-flight calls finish");
                self.shared.revocation_feed.close();
                self.health.end_watches();
                let _ = mail_stop.send(true);
                let _ = self.stop_serving.send(());
                let drained = async {
                    let served = (&mut server).await;
                    // The message being sent is finished, not abandoned to
                    // its lease.
                    let _ = mail.await;
                    // The SET being pushed is finished and its lease given
                    // back, so another replica takes the stream at once.
                    let _ = ssf_push.await;
                    let _ = (&mut cleanup).await;
                    served
                };
                match tokio::time::timeout(self.drain, drained).await {
                    Ok(joined) => joined
                        .map_err(anyhow::Error::from)
                        .and_then(|r| r.map_err(Into::into)),
                    Err(_) => {
                        tracing::warn!("drain time exceeded; abandoning remaining calls");
                        server.abort();
                        Ok(())
                    }
                }
            }
        };
        cleanup.abort();
        for task in others {
            task.abort();
        }
        // Events the last calls recorded get their ids now: other replicas
        // would number them too, but a lone one must not leave them pending
        // until it starts again.
        let numbering = crate::jobs::event_numbering::EventNumbering::new(
            self.shared.pool.clone(),
            self.shared.revocation_feed.clone(),
        );
        if tokio::time::timeout(FINAL_NUMBERING, numbering.number_all())
            .await
            .is_err()
        {
            tracing::warn!(
                "recorded events left unnumbered at shutdown; the next replica to start numbers them"
            );
        }
        self.shared.pool.close().await;
        if let Some(pg) = self.local_pg {
            tokio::task::spawn_blocking(move || pg.stop()).await?;
        }
        tracing::info!("authd stopped");
        result
    }
}

/// The background tasks, by how shutdown treats them.
struct Background {
    /// The database probe: stopped first, so health stays NOT_SERVING.
    probe: tokio::task::JoinHandle<()>,
    /// The mail worker: told to stop, then awaited within the drain.
    mail: tokio::task::JoinHandle<()>,
    /// Shared Signals push delivery: stopped with the mail worker.
    ssf_push: tokio::task::JoinHandle<()>,
    mail_stop: tokio::sync::watch::Sender<bool>,
    /// The clean-up: told to stop when shutdown begins (a pass ends between
    /// two batches), then awaited within the drain.
    cleanup: tokio::task::JoinHandle<()>,
    cleanup_stop: tokio::sync::watch::Sender<bool>,
    /// Everything else: aborted at the end.
    others: Vec<tokio::task::JoinHandle<()>>,
}

/// Keys, password hashing, mail settings and caches: what the use cases need.
async fn build_core(config: &Config, pool: PgPool) -> anyhow::Result<(Core, Shared)> {
    let signing_keys = keys::load(&config.signing_keys, &config.data_dir)?;
    let tokens = AccessTokens::for_audiences(
        signing_keys,
        &config.issuer,
        &config.audience,
        &config.audiences,
        config.access_token_ttl,
        config.service_token_ttl,
    )?;
    let factors = factor_settings(config)?;
    let hasher = PasswordHasher::new(config.argon2, config.hash_workers)?;
    hasher.run(PasswordPolicy::warm_up).await?;
    let metrics = Metrics::for_service(
        crate::pb::FILE_DESCRIPTOR_SET,
        pool.clone(),
        std::sync::Arc::new(hasher.clone()),
        std::sync::Arc::new(crate::jobs::mail_worker::OutboxBacklog(pool.clone())),
    );
    let freshness = Freshness::new(config.session_cache);
    let shared = Shared {
        pool: pool.clone(),
        metrics: metrics.clone(),
        tokens: tokens.clone(),
        cache: SessionCache::new(freshness.clone()),
        service_keys: ServiceKeys::new(pool.clone(), freshness.clone(), metrics.clone()),
        freshness: freshness.clone(),
        revocation_feed: RevocationFeed::new(config.revocation_heartbeat, config.event_retention),
        mail_queued: Default::default(),
    };
    let core = Core::new(CoreParts {
        db: pool.clone(),
        hasher,
        metrics: metrics.clone(),
        tokens,
        policy: PasswordPolicy {
            min_chars: config.password_min_length,
        },
        sessions: SessionSettings {
            idle_ttl: config.session_idle_ttl,
            max_ttl: config.session_max_ttl,
            reuse_grace: config.refresh_reuse_grace,
            require_verified_email: config.require_verified_email,
        },
        cache: shared.cache.clone(),
        service_keys: shared.service_keys.clone(),
        page_tokens: PageTokens::default(),
        revocation_feed: shared.revocation_feed.clone(),
        ssf: crate::service::ssf::SsfSettings {
            allow_private: config.ssf_allow_private,
        },
        mail: MailSettings {
            reset_url: config.reset_url.clone(),
            reset_ttl: config.reset_token_ttl,
            verify_url: config.verify_url.clone(),
            verify_ttl: config.verify_token_ttl,
            change_ttl: config.email_change_ttl,
            queued: shared.mail_queued.clone(),
            reset_requested: Default::default(),
        },
        factors,
    });
    Ok((core, shared))
}

/// The second-factor settings, with the data keys loaded (or the
/// development key made) and the role names of `AUTHD_REQUIRE_MFA` checked.
pub fn factor_settings(config: &Config) -> anyhow::Result<FactorSettings> {
    let require_mfa = MfaRequirement::parse(&config.require_mfa)
        .map_err(|e| anyhow::anyhow!("invalid configuration:\n  AUTHD_REQUIRE_MFA: {e}"))?;
    let data_keys = DataKeys::load_or_generate(&config.data_keys, &config.data_dir)
        .context("loading the data keys (AUTHD_DATA_KEYS)")?;
    let relying_party = RelyingParty::new(
        &config.webauthn_rp_id,
        &config.totp_issuer(),
        &config.webauthn_origins,
    )
    .map_err(|e| {
        anyhow::anyhow!("invalid configuration:\n  AUTHD_WEBAUTHN_RP_ID / AUTHD_WEBAUTHN_ORIGINS: {e:#}")
    })?;
    Ok(FactorSettings {
        data_keys,
        totp_issuer: config.totp_issuer(),
        reauth_max_age: config.reauth_max_age,
        require_mfa,
        relying_party,
        decoy_key: Default::default(),
    })
}

/// tonic's server with explicit limits: it leaves streams and reset floods
/// unlimited unless told. HTTP/1.1 is accepted for gRPC-Web, which browsers
/// speak.
fn server_with_limits(config: &Config) -> anyhow::Result<Server> {
    let mut server = Server::builder()
        .accept_http1(true)
        .concurrency_limit_per_connection(256)
        .load_shed(true)
        .max_concurrent_streams(128)
        .http2_max_pending_accept_reset_streams(Some(64))
        .http2_max_local_error_reset_streams(Some(256))
        .http2_max_header_list_size(16 * 1024)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .trace_fn(|request| {
            crate::telemetry::call_span(request, crate::http::route_of(request.uri().path()))
        });
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        let cert = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
        let key = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
        server = server.tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))?;
    }
    Ok(server)
}

/// The services behind the layers (outermost first: browsers' CORS and
/// gRPC-Web, logs and metrics, the per-client limit, the bearer check),
/// served on `listener` until `stopped`; with the handle of the health
/// service.
fn serve(
    config: &Config,
    core: &Core,
    shared: &Shared,
    health: &HealthState,
    listener: tokio::net::TcpListener,
    stopped: oneshot::Receiver<()>,
) -> anyhow::Result<ServeFuture> {
    let auth = AuthServiceServer::new(AuthApi::new(core.clone(), config.trusted_proxy_header.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(1024 * 1024);
    let bearer_auth = BearerAuth::new(Credentials::new(
        shared.tokens.clone(),
        shared.service_keys.clone(),
    ))
    .with_failure_limit(
        config.service_auth_failure_limit,
        config.trusted_proxy_header.clone(),
        shared.metrics.clone(),
    );
    let router = server_with_limits(config)?
        .layer(cors_layer(&config.cors_origins))
        .layer(HttpFaceLayer::new(
            core.clone(),
            bearer_auth.clone(),
            &config.issuer,
            config.request_timeout,
        ))
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(MiddlewareLayer(Observe::new(shared.metrics.clone())))
        .layer(MiddlewareLayer(Deadlines::new(config.request_timeout)))
        .layer(MiddlewareLayer(DatabaseGate::new(health.clone())))
        .layer(MiddlewareLayer(
            PeerRateLimit::new(config.peer_rate_limit, config.trusted_proxy_header.clone())
                .with_metrics(shared.metrics.clone()),
        ))
        .layer(MiddlewareLayer(bearer_auth))
        .add_service(HealthServer::new(HealthApi::new(health.clone())))
        .add_service(reflection_builder().build_v1()?)
        .add_service(reflection_builder().build_v1alpha()?)
        .add_service(auth)
        .add_service(
            AdminServiceServer::new(AdminApi::new(core.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES)
                .max_encoding_message_size(4 * 1024 * 1024),
        );
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    let serving = router.serve_with_incoming_shutdown(incoming, async {
        let _ = stopped.await;
    });
    Ok(Box::pin(serving))
}

/// Reflection describes authd's contract and the health service (grpcurl
/// 1.8 asks for both by name).
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Health probing, clean-up, the cache's change listener, mail delivery.
fn start_background_tasks(
    config: &Config,
    core: &Core,
    shared: &Shared,
    health: &HealthState,
    local_addr: SocketAddr,
) -> anyhow::Result<Background> {
    let mail_from = config
        .mail_from
        .parse()
        .context("AUTHD_MAIL_FROM is not a mail address like `authd <no-reply@example.com>`")?;
    let mail_transport = Transport::from_url(config.smtp_url.as_ref())?;
    let pool = &shared.pool;
    let listener = ChangeListener::new(
        shared.cache.clone(),
        std::sync::Arc::new(shared.service_keys.clone()),
        shared.revocation_feed.clone(),
        shared.freshness.clone(),
        shared.metrics.clone(),
    );
    let worker = OutboxWorker::new(
        pool.clone(),
        mail_transport,
        mail_from,
        shared.mail_queued.clone(),
        config.mail_poll_interval,
        config.mail_retry_base,
    )
    .with_metrics(shared.metrics.clone())
    .with_lease(config.mail_lease);
    let (mail_stop, mail_stopping) = tokio::sync::watch::channel(false);
    let push = crate::jobs::ssf_worker::PushWorker::new(
        core.clone(),
        pool.clone(),
        crate::jobs::ssf_push::PushClient::new(
            Duration::from_secs(5),
            config.ssf_push_timeout,
            config.ssf_allow_private,
        )?,
        crate::jobs::ssf_worker::PushSettings {
            retry_max: config.ssf_retry_max,
            ..Default::default()
        },
    );
    let cleanup = Cleanup::new(
        pool,
        config.cleanup_interval,
        config.cleanup_batch_size,
        config.event_retention,
        crate::jobs::cleanup::replica_name(local_addr),
        shared.metrics.clone(),
    );
    let (cleanup_stop, cleanup_stopping) = tokio::sync::watch::channel(false);
    Ok(Background {
        probe: tokio::spawn(monitor_database(
            pool.clone(),
            health.clone(),
            config.health_check_interval,
        )),
        ssf_push: tokio::spawn(push.run(mail_stopping.clone())),
        mail: tokio::spawn(worker.run(mail_stopping)),
        mail_stop,
        cleanup: tokio::spawn(cleanup.run(cleanup_stopping)),
        cleanup_stop,
        others: vec![
            tokio::spawn(core.clone().resolve_reset_requests(config.mail_poll_interval)),
            listener
                .spawn_on_own_thread(pool)
                .context("starting the change listener's thread")?,
            tokio::spawn(
                shared
                    .revocation_feed
                    .clone()
                    .poll_periodically(pool.clone(), REVOCATION_POLL),
            ),
            tokio::spawn(
                shared
                    .revocation_feed
                    .clone()
                    .fan_out(pool.clone(), shared.metrics.clone()),
            ),
            tokio::spawn(
                crate::jobs::event_numbering::EventNumbering::new(
                    pool.clone(),
                    shared.revocation_feed.clone(),
                )
                .run(),
            ),
        ],
    })
}

/// The Prometheus endpoint, when configured; returns its address.
async fn serve_metrics(
    config: &Config,
    metrics: Metrics,
    background: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(addr) = config.metrics_listen else {
        return Ok(None);
    };
    let listener = crate::metrics::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener {addr}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "Prometheus metrics at /metrics");
    background.push(tokio::spawn(crate::metrics::serve(listener, metrics)));
    Ok(Some(bound))
}

/// Which browser origins may call authd with gRPC-Web. With none configured
/// no origin is allowed, so a page elsewhere cannot use a visitor's browser
/// against authd; native gRPC and REST clients send no `Origin` and are
/// unaffected.
fn cors_layer(origins: &[String]) -> CorsLayer {
    let allow = if origins.len() == 1 && origins[0] == "*" {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let header = HeaderName::from_static;
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header("authorization"),
            header("content-type"),
            header("x-grpc-web"),
            header("x-user-agent"),
            header("grpc-timeout"),
        ])
        .expose_headers([
            header("grpc-status"),
            header("grpc-message"),
            header("grpc-status-details-bin"),
        ])
        .max_age(Duration::from_secs(24 * 3600))
}

/// Reports NOT_SERVING while PostgreSQL does not answer, SERVING once it does.
async fn monitor_database(pool: PgPool, health: HealthState, every: Duration) {
    // A connection of the probe's own, outside the pool: a pool exhausted by
    // slow calls (lock waits, a load spike) must not read as "database down",
    // which would make the gate refuse every call.
    let options = pool.connect_options().as_ref().clone();
    let mut probe: Option<sqlx::PgConnection> = None;
    let mut up = health.database_up();
    loop {
        let ok = tokio::time::timeout(Duration::from_secs(2), async {
            if probe.is_none() {
                probe = Some(<sqlx::PgConnection as sqlx::Connection>::connect_with(&options).await?);
            }
            match probe.as_mut() {
                Some(connection) => sqlx::query("SELECT 1").execute(connection).await.map(drop),
                None => Ok(()),
            }
        })
        .await
        .is_ok_and(|r: Result<(), sqlx::Error>| r.is_ok());
        if !ok {
            // Reconnect next time rather than trust a connection that failed.
            probe = None;
        }
        if ok != up {
            if ok {
                tracing::info!("database reachable: SERVING");
            } else {
                tracing::warn!("database unreachable: NOT_SERVING, calls that need it refused at once");
            }
            up = ok;
        }
        health.set_database_up(ok);
        // While the database is away calls are refused without trying, so
        // notice its return quickly.
        let wait = if ok { every } else { every.min(PROBE_WHILE_DOWN) };
        tokio::time::sleep(wait).await;
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled: a process manager may send
/// SIGTERM as soon as authd says it listens, and a signal that came before
/// the handler would kill the process outright (exit by signal 15, no
/// drain), which a load generator saw once in four warm starts.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    let (interrupt, terminate) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(interrupt) => tracing::info!("SIGINT received"),
                () = wait(terminate) => tracing::info!("SIGTERM received"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("Ctrl-C received");
        }
    }
}
