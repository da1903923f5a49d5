//! The verifier: local checks of a token, then what the revocation stream
//! says about it, then the configured fallback when the stream cannot say.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime};

use authd_token_rules::{Leeway, MAX_TOKEN_BYTES, PinnedKey, Rules};
use tokio::task::JoinHandle;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::claims::{Caller, Claims, ServiceClaims, unix_now};
use crate::config::{OnStale, VerifierConfig};
use crate::error::{Revocation, StartError, VerifyError};
use crate::jwks::KeySet;
use crate::pb;
use crate::pb::auth_service_client::AuthServiceClient;
use crate::policy::{Admits, Policy};
use crate::revocations::RevocationState;
use crate::stream_health::{StreamHealth, Vouch};
use crate::token::{self, AccessRules, TokenDigest, VerifiedTokens};
use crate::watcher;

/// Verifies authd's access tokens in a service: locally against authd's
/// published keys, and against the revocations authd pushes over
/// `AdminService.WatchRevocations`, which a background task follows.
///
/// Cheap to clone; every clone shares one key set, one stream and one
/// revocation state. The background tasks stop when the last clone is
/// dropped. Must be started inside a tokio runtime.
#[derive(Clone)]
pub struct Verifier {
    shared: Arc<Shared>,
    _tasks: Arc<BackgroundTasks>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("config", &self.shared.config)
            .field("status", &self.status())
            .finish()
    }
}

/// What [`Verifier::status`] reports about the revocation stream, for
/// health checks, metrics and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStatus {
    /// The verifier vouches for revocation state now: the stream caught up
    /// and said something (an event or a heartbeat) within `max_staleness`.
    pub fresh: bool,
    /// A WatchRevocations stream is open right now.
    pub connected: bool,
    /// The last event id applied; the stream resumes after it. 0 until the
    /// first event or heartbeat.
    pub cursor: i64,
    /// Time since the stream's last message or start; `None` before the
    /// first, or after continuity was lost.
    pub last_message_age: Option<Duration>,
    /// Tokens issued from then on (within the leeway) are vouched for: the
    /// start of the stream that caught up, normally one token lifetime
    /// before it was opened, so every unexpired token. `None` while no
    /// stream has caught up since the verifier started or lost events.
    pub covered_since: Option<SystemTime>,
    /// Ended sessions, disabled or deleted accounts and accounts' last
    /// factor changes remembered now.
    pub remembered_revocations: usize,
}

/// Aborts the background tasks with the last clone of the verifier.
struct BackgroundTasks(Vec<JoinHandle<()>>);

impl Drop for BackgroundTasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Everything the requests and the background tasks share.
pub(crate) struct Shared {
    pub(crate) config: VerifierConfig,
    rules: AccessRules,
    /// `Bearer sk_…`, parsed once.
    pub(crate) service_authorization: MetadataValue<Ascii>,
    pub(crate) channel: Channel,
    keys: RwLock<Arc<KeySet>>,
    /// When an unknown `kid` last caused a refetch; held across the
    /// refetch, so simultaneous requests with a new `kid` share one.
    last_kid_refetch: tokio::sync::Mutex<Option<Instant>>,
    verified: VerifiedTokens,
    pub(crate) revocations: RwLock<RevocationState>,
    pub(crate) health: StreamHealth,
}

/// A lock whose holder panicked still holds consistent data here (every
/// update is a single map operation), so poisoning is ignored.
pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Verifier {
    /// Fetches authd's keys over `channel` (failing if that fails), then
    /// starts following WatchRevocations in the background, from one token
    /// lifetime in the past. Until the stream has delivered those
    /// revocations, the verifier is stale (see [`OnStale`]); call
    /// [`Verifier::wait_until_fresh`] to wait for it.
    pub async fn start(channel: Channel, config: VerifierConfig) -> Result<Self, StartError> {
        config.validate()?;
        let service_authorization = format!("Bearer {}", config.service_key)
            .parse()
            .map_err(|_| StartError::Config("the service key is not printable ASCII"))?;
        let leeway =
            Leeway::new(config.leeway).ok_or(StartError::Config("the leeway is longer than 30 s"))?;
        let retention = i64::try_from(config.revocation_retention().as_secs()).unwrap_or(i64::MAX);
        let shared = Arc::new(Shared {
            rules: access_rules(&config, leeway),
            service_authorization,
            channel,
            keys: RwLock::new(Arc::new(KeySet::default())),
            last_kid_refetch: tokio::sync::Mutex::new(None),
            verified: VerifiedTokens::default(),
            revocations: RwLock::new(RevocationState::new(retention)),
            health: StreamHealth::new(config.max_staleness),
            config,
        });
        let keys = shared.fetch_keys().await.map_err(StartError::Jwks)?;
        if keys.is_empty() {
            return Err(StartError::NoUsableKeys);
        }
        shared.install_keys(keys);
        let tasks = BackgroundTasks(vec![
            tokio::spawn(watcher::follow_revocations(Arc::clone(&shared))),
            tokio::spawn(watcher::refresh_keys_periodically(Arc::clone(&shared))),
        ]);
        Ok(Self {
            shared,
            _tasks: Arc::new(tasks),
        })
    }

    /// [`Verifier::start`] with a channel to `endpoint` (`http://authd:50051`),
    /// connected on first use and reconnected as needed.
    pub async fn connect(endpoint: impl Into<String>, config: VerifierConfig) -> Result<Self, StartError> {
        let endpoint = Endpoint::from_shared(endpoint.into())
            .map_err(|_| StartError::Config("the endpoint is not a valid URI"))?;
        Self::start(endpoint.connect_lazy(), config).await
    }

    /// Verifies a user's access token (the part after `Bearer `): signature
    /// with a key pinned to its algorithm, `typ`, `iss`, `aud` (the
    /// configured audience), `exp`, `nbf`, then whether its session ended
    /// or its account was disabled or deleted, then [`Policy::default`] (a
    /// token whose account must first enrol a second factor is refused). A
    /// service's own token is refused (TOKEN_INVALID). Awaits only when
    /// authd must be asked: an unknown `kid` (one key refetch), or the
    /// [`OnStale::Introspect`] fallback.
    pub async fn verify(&self, token: &str) -> Result<Claims, VerifyError> {
        self.verify_with(token, &Policy::default()).await
    }

    /// [`Verifier::verify`] for the audience `policy` names (if any), then
    /// what it requires of the token's assurance (`acr`, `amr`,
    /// `auth_time`, no factor change since). Only users' tokens: a
    /// service's own is refused (TOKEN_INVALID) whatever the policy admits
    /// (see [`Verifier::verify_caller`]).
    pub async fn verify_with(&self, token: &str, policy: &Policy) -> Result<Claims, VerifyError> {
        match self.verify_admitting(token, policy, Admits::Users).await? {
            Caller::User(claims) => Ok(claims),
            Caller::Service(_) => Err(VerifyError::Invalid),
        }
    }

    /// Verifies a service's own token (client credentials): signature,
    /// `typ`, `iss`, `exp`, `nbf`, the shape of a service's token, the
    /// audience `policy` names (or the configured one), then the scopes it
    /// requires (PERMISSION_DENIED `MISSING_SCOPE`). A user's token is
    /// refused (TOKEN_INVALID) whatever the policy admits.
    ///
    /// The revocation stream does not concern such a token (it has no
    /// session): it is accepted until its `exp`, also while the stream is
    /// down, and also after authd deleted the key that obtained it.
    pub async fn verify_service(&self, token: &str, policy: &Policy) -> Result<ServiceClaims, VerifyError> {
        match self.verify_admitting(token, policy, Admits::Services).await? {
            Caller::Service(claims) => Ok(claims),
            Caller::User(_) => Err(VerifyError::Invalid),
        }
    }

    /// Verifies a token of either kind `policy` admits (users' by default,
    /// services' with [`Policy::services`] or [`Policy::allow_services`]),
    /// as [`Verifier::verify_with`] or [`Verifier::verify_service`] would.
    /// This is what [`VerifierLayer`](crate::VerifierLayer) does.
    pub async fn verify_caller(&self, token: &str, policy: &Policy) -> Result<Caller, VerifyError> {
        self.verify_admitting(token, policy, policy.admits()).await
    }

    async fn verify_admitting(
        &self,
        token: &str,
        policy: &Policy,
        admits: Admits,
    ) -> Result<Caller, VerifyError> {
        self.shared
            .verify_caller(token, policy, admits, SystemTime::now(), Instant::now())
            .await
    }

    /// Whether tokens for `audience` can pass here: the configured audience
    /// or an additional one.
    pub(crate) fn accepts_audience(&self, audience: &str) -> bool {
        self.shared.config.audiences().contains(&audience)
    }

    /// Whether the verifier vouches for revocation state right now.
    pub fn is_fresh(&self) -> bool {
        self.shared.health.is_fresh(Instant::now())
    }

    /// The last event id applied (0 before the first event or heartbeat).
    pub fn cursor(&self) -> i64 {
        self.shared.health.cursor()
    }

    /// The stream's state, for health checks and tests.
    pub fn status(&self) -> StreamStatus {
        let health = &self.shared.health;
        let now = Instant::now();
        StreamStatus {
            fresh: health.is_fresh(now),
            connected: health.is_connected(),
            cursor: health.cursor(),
            last_message_age: health.last_message_age(now),
            covered_since: health.covered_since(),
            remembered_revocations: read(&self.shared.revocations).len(),
        }
    }

    /// Waits until the verifier is fresh, at most `timeout`; says whether
    /// it is. A service can call this before it reports itself ready.
    pub async fn wait_until_fresh(&self, timeout: Duration) -> bool {
        let give_up = Instant::now() + timeout;
        loop {
            if self.is_fresh() {
                return true;
            }
            if Instant::now() >= give_up {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The rules of `config`: its issuer, every audience it accepts (each
/// route then requires one), and each kind's longest lifetime.
fn access_rules(config: &VerifierConfig, leeway: Leeway) -> AccessRules {
    let audiences = config.audiences();
    AccessRules {
        users: Rules::for_audiences(&config.issuer, &audiences, leeway)
            .with_max_lifetime(config.max_token_lifetime),
        services: Rules::for_audiences(&config.issuer, &audiences, leeway)
            .with_max_lifetime(config.max_service_token_lifetime),
    }
}

impl Shared {
    /// A token `admits` lets in, for `policy`'s audience: valid (signature,
    /// claims), of the right kind and audience, then for a user's token
    /// not revoked, vouched for by the stream, and what `policy` asks of
    /// its proof; for a service's, the scopes `policy` asks for.
    pub(crate) async fn verify_caller(
        &self,
        token: &str,
        policy: &Policy,
        admits: Admits,
        wall: SystemTime,
        now: Instant,
    ) -> Result<Caller, VerifyError> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(VerifyError::Invalid);
        }
        let now_secs = unix_now(wall);
        let digest = token::digest(token);
        let (caller, introspected_for) = match self.verified.get(&digest) {
            Some(known) => {
                if token::is_expired(known.caller.exp_secs(), now_secs, self.rules.leeway()) {
                    return Err(VerifyError::Expired);
                }
                (known.caller, known.introspected_for)
            }
            None => (self.verify_signed(token, digest, now_secs).await?, None),
        };
        // Before anything is asked of the stream or of authd: a token that
        // is not for this route is invalid here, whatever its state.
        policy.admit(&caller, admits, &self.config.audience)?;
        match &caller {
            Caller::User(claims) => {
                self.vouch(token, &digest, claims, introspected_for, now).await?;
                let factors_changed_at = read(&self.revocations).factors_changed_at(claims.user_id());
                policy.judge(claims, now_secs, factors_changed_at, self.rules.leeway().secs())?;
            }
            // No session: nothing on the stream can end it before `exp`.
            Caller::Service(claims) => policy.judge_service(claims)?,
        }
        Ok(caller)
    }

    /// A user's token of the default route, as [`Verifier::verify`] judges
    /// it.
    #[cfg(test)]
    pub(crate) async fn verify(
        &self,
        token: &str,
        wall: SystemTime,
        now: Instant,
    ) -> Result<Claims, VerifyError> {
        self.verify_with(token, &Policy::default(), wall, now).await
    }

    /// A user's token, as [`Verifier::verify_with`] judges it.
    #[cfg(test)]
    pub(crate) async fn verify_with(
        &self,
        token: &str,
        policy: &Policy,
        wall: SystemTime,
        now: Instant,
    ) -> Result<Claims, VerifyError> {
        match self
            .verify_caller(token, policy, Admits::Users, wall, now)
            .await?
        {
            Caller::User(claims) => Ok(claims),
            Caller::Service(_) => Err(VerifyError::Invalid),
        }
    }

    /// Whether a valid user's token still holds: not revoked as far as the
    /// stream has said, and the stream can say (or authd, asked instead).
    async fn vouch(
        &self,
        token: &str,
        digest: &TokenDigest,
        claims: &Claims,
        introspected_for: Option<u64>,
        now: Instant,
    ) -> Result<(), VerifyError> {
        read(&self.revocations)
            .check(claims)
            .map_err(VerifyError::Revoked)?;
        match (
            self.health
                .vouch(claims.iat_secs(), self.rules.leeway().secs(), now),
            self.config.on_stale,
        ) {
            (Vouch::Fresh, _) => Ok(()),
            // The stream cannot say whether such a token was revoked
            // (authd no longer had the revocations from its issue on, or
            // sent one this version cannot read): stale, never valid on
            // its signature alone.
            (Vouch::IssuedBeforeCoverage(_), OnStale::FailClosed) => Err(VerifyError::Unavailable),
            (Vouch::IssuedBeforeCoverage(coverage), OnStale::Introspect) => {
                if introspected_for != Some(coverage) {
                    self.introspect(token).await?;
                    // Asked during this coverage: what ends the token later
                    // arrives by the stream, unless coverage restarted
                    // while the answer was on its way.
                    if self.health.coverage_is(coverage) {
                        self.verified.mark_introspected(digest, coverage);
                    }
                }
                Ok(())
            }
            (Vouch::Stale, OnStale::FailClosed) => Err(VerifyError::Unavailable),
            (Vouch::Stale, OnStale::Introspect) => self.introspect(token).await,
        }
    }

    /// The checks that need a key: header, signature, claims.
    async fn verify_signed(&self, token: &str, digest: TokenDigest, now: i64) -> Result<Caller, VerifyError> {
        let header = token::read_header(&self.rules, token)?;
        let (set, key) = self.key_for(&header.kid).await.ok_or(VerifyError::Invalid)?;
        let caller = token::check_with_key(&self.rules, token, &header, &key, now)?;
        // Remembered only if the key set it was checked against is still
        // the current one: a key dropped meanwhile must not live on here.
        if Arc::ptr_eq(&set, &self.current_keys()) {
            self.verified
                .insert(digest, caller.clone(), now, self.rules.leeway());
        }
        Ok(caller)
    }

    fn current_keys(&self) -> Arc<KeySet> {
        Arc::clone(&read(&self.keys))
    }

    /// The key named `kid`, refetching the set once if it is unknown (at
    /// once the first time, then at most every `jwks_refetch_interval`).
    async fn key_for(&self, kid: &str) -> Option<(Arc<KeySet>, Arc<PinnedKey>)> {
        let keys = self.current_keys();
        if let Some(key) = keys.get(kid) {
            return Some((keys, key));
        }
        let mut last_refetch = self.last_kid_refetch.lock().await;
        // Another request may have refetched while this one waited.
        let keys = self.current_keys();
        if let Some(key) = keys.get(kid) {
            return Some((keys, key));
        }
        if last_refetch.is_some_and(|at| at.elapsed() < self.config.jwks_refetch_interval) {
            return None;
        }
        *last_refetch = Some(Instant::now());
        match tokio::time::timeout(self.config.call_timeout, self.fetch_keys()).await {
            Ok(Ok(fetched)) => {
                self.install_keys(fetched);
            }
            Ok(Err(status)) => tracing::warn!(%status, "refetching authd's keys for an unknown kid failed"),
            Err(_) => tracing::warn!("refetching authd's keys for an unknown kid timed out"),
        }
        drop(last_refetch);
        let keys = self.current_keys();
        let key = keys.get(kid)?;
        Some((keys, key))
    }

    pub(crate) async fn fetch_keys(&self) -> Result<KeySet, tonic::Status> {
        let response = AuthServiceClient::new(self.channel.clone())
            .get_jwks(pb::GetJwksRequest {})
            .await?
            .into_inner();
        Ok(KeySet::from_jwks(&response.keys))
    }

    /// Makes `fetched` the key set. An empty answer keeps the old set (a
    /// deployment without keys cannot have issued anything worth refusing
    /// wholesale); a changed set forgets every remembered verification.
    pub(crate) fn install_keys(&self, fetched: KeySet) {
        if fetched.is_empty() {
            tracing::warn!("authd published no usable key; keeping the keys fetched before");
            return;
        }
        let mut keys = write(&self.keys);
        if keys.same_kids(&fetched) {
            return;
        }
        *keys = Arc::new(fetched);
        self.verified.clear();
        tracing::info!("authd's signing keys changed");
    }

    /// Asks authd whether the token is active right now.
    async fn introspect(&self, token: &str) -> Result<(), VerifyError> {
        let mut request = tonic::Request::new(pb::IntrospectTokenRequest {
            access_token: token.to_owned(),
        });
        request
            .metadata_mut()
            .insert("authorization", self.service_authorization.clone());
        request.set_timeout(self.config.call_timeout);
        let mut client = AuthServiceClient::new(self.channel.clone());
        match tokio::time::timeout(self.config.call_timeout, client.introspect_token(request)).await {
            Ok(Ok(answer)) if answer.get_ref().active => {
                tracing::debug!("IntrospectToken: active");
                Ok(())
            }
            Ok(Ok(_)) => {
                tracing::debug!("IntrospectToken: inactive");
                Err(VerifyError::Revoked(Revocation::Inactive))
            }
            Ok(Err(status)) => {
                tracing::warn!(%status, "IntrospectToken failed; refusing with UNAVAILABLE");
                Err(VerifyError::Unavailable)
            }
            Err(_) => {
                tracing::warn!("IntrospectToken timed out; refusing with UNAVAILABLE");
                Err(VerifyError::Unavailable)
            }
        }
    }
}

#[cfg(test)]
impl Verifier {
    /// A verifier over `shared`, without background tasks: tests drive the
    /// stream state by hand.
    pub(crate) fn without_tasks(shared: Shared) -> Self {
        Self {
            shared: Arc::new(shared),
            _tasks: Arc::new(BackgroundTasks(Vec::new())),
        }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
/// A verifier's state with `key` installed and no background task; its
/// channel points nowhere, so any call to authd fails.
pub(crate) fn test_shared(key: &crate::test_keys::TestKey, on_stale: OnStale) -> Shared {
    let config = VerifierConfig::new("https://authd.test", "svc", "sk_test")
        .with_additional_audience("svc-admin")
        .with_on_stale(on_stale)
        .with_max_token_lifetime(Duration::from_secs(900));
    let channel = Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
    let shared = Shared {
        rules: access_rules(&config, Leeway::DEFAULT),
        service_authorization: "Bearer sk_test".parse().expect("ASCII"),
        channel,
        keys: RwLock::new(Arc::new(KeySet::default())),
        last_kid_refetch: tokio::sync::Mutex::new(None),
        verified: VerifiedTokens::default(),
        revocations: RwLock::new(RevocationState::new(905)),
        health: StreamHealth::new(config.max_staleness),
        config,
    };
    shared.install_keys(KeySet::from_jwks(&[key.jwk()]));
    shared
}

#[cfg(test)]
mod tests;
