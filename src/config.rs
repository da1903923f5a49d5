//! Typed settings from environment variables (and `.env`). Every variable and
//! its default is listed in README.md; secrets are `SecretString`s.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

/// The cost of argon2id, which the password hasher is built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Settings {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for Argon2Settings {
    /// OWASP's recommendation for argon2id.
    fn default() -> Self {
        Self {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Unset: a private PostgreSQL cluster under `data_dir` (development).
    pub database_url: Option<SecretString>,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `iss` of every token and the base of the HTTP face's URLs: an https
    /// URL (http on a loopback host), no path.
    pub issuer: String,
    /// authd's own audience: what Login tokens carry and what authd's own
    /// RPCs accept (the first of `AUTHD_AUDIENCES`).
    pub audience: String,
    /// The other services tokens may be minted for (the rest of
    /// `AUTHD_AUDIENCES`); nothing is minted for an audience not listed.
    pub audiences: Vec<String>,
    /// Lifetime of a service's client_credentials token
    /// (`AUTHD_SERVICE_TOKEN_TTL`).
    pub service_token_ttl: Duration,
    pub signing_keys: Vec<PathBuf>,
    /// Key files sealing stored secrets (`AUTHD_DATA_KEYS`); the first
    /// seals, all open. Empty: a development key in the data folder.
    pub data_keys: Vec<PathBuf>,
    /// Issuer label of `otpauth://` URIs (`AUTHD_TOTP_ISSUER`); unset: see
    /// `totp_issuer()`.
    pub totp_issuer: Option<String>,
    /// How recent the last proof must be for calls that need a fresh one
    /// (`AUTHD_REAUTH_MAX_AGE`).
    pub reauth_max_age: Duration,
    /// `AUTHD_REQUIRE_MFA` as given: `off`, `all` or `roles:a,b`; its role
    /// names are checked when the runtime settings are built.
    pub require_mfa: String,
    /// The WebAuthn relying party id (`AUTHD_WEBAUTHN_RP_ID`): the domain
    /// passkeys are bound to.
    pub webauthn_rp_id: String,
    /// The exact origins of the pages that run passkey ceremonies
    /// (`AUTHD_WEBAUTHN_ORIGINS`), each on the RP id or a subdomain of it.
    pub webauthn_origins: Vec<String>,
    pub access_token_ttl: Duration,
    pub session_idle_ttl: Duration,
    pub session_max_ttl: Duration,
    pub reset_token_ttl: Duration,
    pub refresh_reuse_grace: Duration,
    pub smtp_url: Option<SecretString>,
    pub mail_from: String,
    pub reset_url: String,
    /// Link template of verification mails, with `{token}`.
    pub verify_url: String,
    pub verify_token_ttl: Duration,
    /// How long a link mailed by ChangeEmail works: shorter than a
    /// verification link, since it moves the account to another mailbox.
    pub email_change_ttl: Duration,
    /// Login refuses a correct password while the address is unverified.
    pub require_verified_email: bool,
    pub metrics_listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub log_format: LogFormat,
    pub argon2: Argon2Settings,
    /// Concurrent argon2 computations (each holds `argon2.memory_kib`).
    pub hash_workers: usize,
    pub password_min_length: usize,
    pub peer_rate_limit: f64,
    /// Failed service-key checks a client address may make per minute
    /// before its further key checks are refused without a database read
    /// (`AUTHD_SERVICE_AUTH_FAILURE_LIMIT`); 0: no limit.
    pub service_auth_failure_limit: u32,
    /// Header set by a trusted gateway carrying the client address (its last
    /// entry is used), e.g. `x-forwarded-for`. Unset: the TCP peer.
    pub trusted_proxy_header: Option<http::header::HeaderName>,
    /// Browser origins allowed to call authd with gRPC-Web (CORS). Empty:
    /// none; `*` alone: any.
    pub cors_origins: Vec<String>,
    pub db_max_connections: u32,
    pub health_check_interval: Duration,
    /// After SIGTERM, health says NOT_SERVING while calls are still
    /// served this long, before the drain.
    pub shutdown_grace: Duration,
    pub shutdown_drain: Duration,
    pub request_timeout: Duration,
    /// How often the mail worker looks for due mail it was not woken for
    /// (queued by another replica, or due for a retry).
    pub mail_poll_interval: Duration,
    /// Wait after a failed delivery; doubles with each further failure.
    pub mail_retry_base: Duration,
    /// How long a message being delivered is kept from other replicas
    /// (renewed while the delivery lasts): the delay before the mail a
    /// crashed replica was sending is retried.
    pub mail_lease: Duration,
    /// A WatchRevocations stream with nothing to deliver sends a heartbeat
    /// this often, so its subscriber can tell quiet from dead.
    pub revocation_heartbeat: Duration,
    /// How long events stay in the log (`AUTHD_EVENT_RETENTION`): how far
    /// back a WatchRevocations cursor resumes and how long a Shared Signals
    /// receiver may be away without losing events.
    pub event_retention: Duration,
    /// Session and service-key caches (`AUTHD_SESSION_CACHE`); off: every
    /// check reads the database.
    pub session_cache: bool,
    /// How often a clean-up pass runs across all replicas
    /// (`AUTHD_CLEANUP_INTERVAL`); zero: this replica never runs one.
    pub cleanup_interval: Duration,
    /// Most rows one clean-up batch (one short transaction) deletes from a
    /// table (`AUTHD_CLEANUP_BATCH_SIZE`).
    pub cleanup_batch_size: u32,
    /// Shared Signals push receivers may be at loopback, private, link-local
    /// and other internal addresses, and on plain `http`
    /// (`AUTHD_SSF_ALLOW_PRIVATE`): development and in-cluster receivers
    /// only, since it lets whoever registers a stream make authd POST to
    /// its internal network.
    pub ssf_allow_private: bool,
    /// How long one push to a receiver may take once connected
    /// (`AUTHD_SSF_PUSH_TIMEOUT`): a slow receiver holds only its stream.
    pub ssf_push_timeout: Duration,
    /// The longest wait between attempts to reach a failing receiver
    /// (`AUTHD_SSF_RETRY_MAX`); waits double from 1 s up to it.
    pub ssf_retry_max: Duration,
}

impl Default for Config {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            database_url: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: PathBuf::from(".authd"),
            issuer: "http://127.0.0.1:50051".into(),
            audience: "authd".into(),
            audiences: Vec::new(),
            service_token_ttl: Duration::from_secs(300),
            signing_keys: Vec::new(),
            data_keys: Vec::new(),
            totp_issuer: None,
            reauth_max_age: Duration::from_secs(600),
            require_mfa: "off".into(),
            webauthn_rp_id: "localhost".into(),
            webauthn_origins: vec!["http://localhost:3000".into()],
            access_token_ttl: Duration::from_secs(15 * 60),
            session_idle_ttl: Duration::from_secs(7 * 86_400),
            session_max_ttl: Duration::from_secs(30 * 86_400),
            reset_token_ttl: Duration::from_secs(30 * 60),
            refresh_reuse_grace: Duration::ZERO,
            smtp_url: None,
            mail_from: "authd <no-reply@localhost>".into(),
            reset_url: "http://localhost:3000/reset-password?token={token}".into(),
            verify_url: "http://localhost:3000/verify-email?token={token}".into(),
            verify_token_ttl: Duration::from_secs(86_400),
            email_change_ttl: Duration::from_secs(3_600),
            require_verified_email: false,
            metrics_listen: None,
            tls_cert: None,
            tls_key: None,
            log_format: LogFormat::Pretty,
            argon2: Argon2Settings::default(),
            hash_workers: cores,
            password_min_length: 8,
            peer_rate_limit: 20.0,
            service_auth_failure_limit: 30,
            trusted_proxy_header: None,
            cors_origins: Vec::new(),
            db_max_connections: (cores as u32 * 4).clamp(8, 32),
            health_check_interval: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(5),
            shutdown_drain: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            mail_poll_interval: Duration::from_secs(1),
            mail_retry_base: Duration::from_secs(2),
            mail_lease: Duration::from_secs(30),
            revocation_heartbeat: Duration::from_secs(5),
            event_retention: Duration::from_secs(7 * 86_400),
            session_cache: true,
            cleanup_interval: Duration::from_secs(600),
            cleanup_batch_size: 1000,
            ssf_allow_private: false,
            ssf_push_timeout: Duration::from_secs(10),
            ssf_retry_max: Duration::from_secs(300),
        }
    }
}

impl Config {
    /// Reads the process environment, after loading `.env` if there is one.
    pub fn from_env() -> anyhow::Result<Self> {
        // A missing .env is normal; a malformed one is not silently ignored.
        match dotenvy::dotenv() {
            Ok(_) => {}
            Err(e) if e.not_found() => {}
            Err(e) => anyhow::bail!("reading .env: {e}"),
        }
        Self::from_lookup(|key| std::env::var(key).ok().filter(|v| !v.trim().is_empty()))
    }

    /// Builds a config from any key lookup; collects every bad variable into
    /// one error so an operator fixes them in one go.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let mut vars = Vars {
            get: &get,
            errors: Vec::new(),
        };
        let mut c = Self::default();
        c.read_server(&mut vars);
        c.read_tokens(&mut vars);
        c.read_mail(&mut vars);
        c.read_passwords(&mut vars);
        c.read_factors(&mut vars);
        c.read_clients(&mut vars);
        c.read_operations(&mut vars);
        vars.errors.extend(c.inconsistencies());
        if vars.errors.is_empty() {
            Ok(c)
        } else {
            anyhow::bail!("invalid configuration:\n  {}", vars.errors.join("\n  "))
        }
    }

    fn read_server(&mut self, v: &mut Vars<'_>) {
        v.read("DATABASE_URL", |s| {
            self.database_url = Some(SecretString::from(s.to_owned()));
            Ok(())
        });
        v.read("AUTHD_LISTEN", |s| parse_into(s, &mut self.listen));
        v.read("AUTHD_DATA_DIR", |s| {
            self.data_dir = PathBuf::from(s);
            Ok(())
        });
        v.read("AUTHD_TLS_CERT", |s| {
            self.tls_cert = Some(PathBuf::from(s));
            Ok(())
        });
        v.read("AUTHD_TLS_KEY", |s| {
            self.tls_key = Some(PathBuf::from(s));
            Ok(())
        });
        v.read("AUTHD_DB_MAX_CONNECTIONS", |s| {
            parse_into(s, &mut self.db_max_connections)
        });
    }

    fn read_tokens(&mut self, v: &mut Vars<'_>) {
        // Unset, the issuer is where a local client reaches this process,
        // so the HTTP face's documents name URLs that work.
        self.issuer = format!("http://127.0.0.1:{}", self.listen.port());
        v.read("AUTHD_ISSUER", |s| {
            self.issuer = s.to_owned();
            Ok(())
        });
        v.read("AUTHD_AUDIENCE", |s| {
            self.audience = check_audience(s)?;
            Ok(())
        });
        v.read("AUTHD_AUDIENCES", |s| {
            let mut listed = parse_audiences(s)?.into_iter();
            if let Some(first) = listed.next() {
                self.audience = first;
            }
            self.audiences = listed.collect();
            Ok(())
        });
        v.read("AUTHD_SERVICE_TOKEN_TTL", |s| {
            duration_into(s, &mut self.service_token_ttl)
        });
        v.read("AUTHD_SIGNING_KEYS", |s| {
            self.signing_keys = path_list(s);
            Ok(())
        });
        v.read("AUTHD_ACCESS_TOKEN_TTL", |s| {
            duration_into(s, &mut self.access_token_ttl)
        });
        v.read("AUTHD_SESSION_IDLE_TTL", |s| {
            duration_into(s, &mut self.session_idle_ttl)
        });
        v.read("AUTHD_SESSION_MAX_TTL", |s| {
            duration_into(s, &mut self.session_max_ttl)
        });
        v.read("AUTHD_RESET_TOKEN_TTL", |s| {
            duration_into(s, &mut self.reset_token_ttl)
        });
        v.read("AUTHD_REFRESH_REUSE_GRACE", |s| {
            duration_into(s, &mut self.refresh_reuse_grace)
        });
        v.read("AUTHD_VERIFY_TOKEN_TTL", |s| {
            duration_into(s, &mut self.verify_token_ttl)
        });
        v.read("AUTHD_EMAIL_CHANGE_TTL", |s| {
            duration_into(s, &mut self.email_change_ttl)
        });
        v.read("AUTHD_REQUIRE_VERIFIED_EMAIL", |s| {
            self.require_verified_email = parse_bool(s)?;
            Ok(())
        });
    }

    fn read_mail(&mut self, v: &mut Vars<'_>) {
        v.read("AUTHD_SMTP_URL", |s| {
            self.smtp_url = Some(SecretString::from(s.to_owned()));
            Ok(())
        });
        v.read("AUTHD_MAIL_LEASE", |s| duration_into(s, &mut self.mail_lease));
        v.read("AUTHD_MAIL_FROM", |s| {
            self.mail_from = s.to_owned();
            Ok(())
        });
        v.read("AUTHD_RESET_URL", |s| {
            if !s.contains("{token}") {
                return Err("must contain {token}".into());
            }
            self.reset_url = s.to_owned();
            Ok(())
        });
        v.read("AUTHD_VERIFY_URL", |s| {
            if !s.contains("{token}") {
                return Err("must contain {token}".into());
            }
            self.verify_url = s.to_owned();
            Ok(())
        });
    }

    fn read_passwords(&mut self, v: &mut Vars<'_>) {
        v.read("AUTHD_ARGON2_MEMORY_KIB", |s| {
            parse_into(s, &mut self.argon2.memory_kib)
        });
        v.read("AUTHD_ARGON2_ITERATIONS", |s| {
            parse_into(s, &mut self.argon2.iterations)
        });
        v.read("AUTHD_ARGON2_PARALLELISM", |s| {
            parse_into(s, &mut self.argon2.parallelism)
        });
        v.read("AUTHD_HASH_WORKERS", |s| parse_into(s, &mut self.hash_workers));
        v.read("AUTHD_PASSWORD_MIN_LENGTH", |s| {
            parse_into(s, &mut self.password_min_length)
        });
    }

    /// Second factors: the keys sealing their secrets, the label
    /// authenticator apps show, freshness, and who must have one.
    fn read_factors(&mut self, v: &mut Vars<'_>) {
        v.read("AUTHD_DATA_KEYS", |s| {
            self.data_keys = path_list(s);
            if self.data_keys.is_empty() {
                return Err("names no key file".into());
            }
            Ok(())
        });
        v.read("AUTHD_TOTP_ISSUER", |s| {
            self.totp_issuer = Some(check_totp_issuer(s)?);
            Ok(())
        });
        v.read("AUTHD_REAUTH_MAX_AGE", |s| {
            duration_into(s, &mut self.reauth_max_age)
        });
        v.read("AUTHD_REQUIRE_MFA", |s| {
            self.require_mfa = s.to_owned();
            Ok(())
        });
        v.read("AUTHD_WEBAUTHN_RP_ID", |s| {
            self.webauthn_rp_id = check_rp_id(s)?;
            Ok(())
        });
        v.read("AUTHD_WEBAUTHN_ORIGINS", |s| {
            let origins = parse_origins(s)?;
            if origins.is_empty() || origins.iter().any(|o| o == "*") {
                return Err("must list the exact origins of the pages (no `*`)".into());
            }
            self.webauthn_origins = origins;
            Ok(())
        });
    }

    /// The issuer label of `otpauth://` URIs: `AUTHD_TOTP_ISSUER`, else the
    /// host of `AUTHD_ISSUER` when it is a URL, else the issuer itself
    /// (without the colons the URI format reserves).
    pub fn totp_issuer(&self) -> String {
        if let Some(issuer) = &self.totp_issuer {
            return issuer.clone();
        }
        let label = host_of(&self.issuer).unwrap_or(&self.issuer).replace(':', "");
        if label.trim().is_empty() {
            "authd".into()
        } else {
            label
        }
    }

    /// How clients reach authd: per-client limits, the gateway's header,
    /// browsers.
    fn read_clients(&mut self, v: &mut Vars<'_>) {
        v.read("AUTHD_PEER_RATE_LIMIT", |s| {
            parse_into(s, &mut self.peer_rate_limit)
        });
        v.read("AUTHD_SERVICE_AUTH_FAILURE_LIMIT", |s| {
            parse_into(s, &mut self.service_auth_failure_limit)
        });
        v.read("AUTHD_TRUSTED_PROXY_HEADER", |s| {
            let header = s.to_ascii_lowercase().parse();
            self.trusted_proxy_header = Some(header.map_err(|_| "not a header name".to_owned())?);
            Ok(())
        });
        v.read("AUTHD_CORS_ORIGINS", |s| {
            self.cors_origins = parse_origins(s)?;
            Ok(())
        });
    }

    fn read_operations(&mut self, v: &mut Vars<'_>) {
        v.read("AUTHD_METRICS_LISTEN", |s| {
            self.metrics_listen = Some(s.parse().map_err(|e| format!("{e}"))?);
            Ok(())
        });
        v.read("AUTHD_LOG_FORMAT", |s| {
            self.log_format = match s.to_ascii_lowercase().as_str() {
                "pretty" | "text" => LogFormat::Pretty,
                "json" => LogFormat::Json,
                _ => return Err("must be pretty or json".into()),
            };
            Ok(())
        });
        // The development setup (authd's own PostgreSQL) has no load
        // balancer to tell: Ctrl-C stops at once.
        if self.database_url.is_none() {
            self.shutdown_grace = Duration::ZERO;
        }
        v.read("AUTHD_SHUTDOWN_GRACE", |s| {
            duration_into(s, &mut self.shutdown_grace)
        });
        v.read("AUTHD_SHUTDOWN_DRAIN", |s| {
            duration_into(s, &mut self.shutdown_drain)
        });
        v.read("AUTHD_REQUEST_TIMEOUT", |s| {
            duration_into(s, &mut self.request_timeout)
        });
        v.read("AUTHD_SESSION_CACHE", |s| {
            self.session_cache = match s.to_ascii_lowercase().as_str() {
                "on" | "true" | "1" => true,
                "off" | "false" | "0" => false,
                _ => return Err("must be on or off".into()),
            };
            Ok(())
        });
        v.read("AUTHD_REVOCATION_HEARTBEAT", |s| {
            duration_into(s, &mut self.revocation_heartbeat)
        });
        v.read("AUTHD_EVENT_RETENTION", |s| {
            duration_into(s, &mut self.event_retention)
        });
        v.read("AUTHD_CLEANUP_INTERVAL", |s| {
            duration_into(s, &mut self.cleanup_interval)
        });
        v.read("AUTHD_CLEANUP_BATCH_SIZE", |s| {
            parse_into(s, &mut self.cleanup_batch_size)
        });
        v.read("AUTHD_SSF_ALLOW_PRIVATE", |s| {
            self.ssf_allow_private = parse_bool(s)?;
            Ok(())
        });
        v.read("AUTHD_SSF_PUSH_TIMEOUT", |s| {
            duration_into(s, &mut self.ssf_push_timeout)
        });
        v.read("AUTHD_SSF_RETRY_MAX", |s| {
            duration_into(s, &mut self.ssf_retry_max)
        });
    }

    /// Settings that are each valid but not together.
    fn inconsistencies(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            errors.push("AUTHD_TLS_CERT and AUTHD_TLS_KEY must be set together".into());
        }
        if !(8..=64).contains(&self.password_min_length) {
            errors.push("AUTHD_PASSWORD_MIN_LENGTH: must be between 8 and 64".into());
        }
        if self.session_idle_ttl > self.session_max_ttl {
            errors.push("AUTHD_SESSION_IDLE_TTL must not exceed AUTHD_SESSION_MAX_TTL".into());
        }
        if self.mail_lease < Duration::from_secs(1) {
            errors.push("AUTHD_MAIL_LEASE must be at least 1s".into());
        }
        if self.revocation_heartbeat.is_zero() {
            errors.push("AUTHD_REVOCATION_HEARTBEAT must be more than 0".into());
        }
        if self.event_retention < Duration::from_secs(3600)
            || self.event_retention > Duration::from_secs(90 * 86_400)
        {
            errors.push("AUTHD_EVENT_RETENTION must be between 1h and 90d".into());
        }
        if self.ssf_push_timeout < Duration::from_millis(100)
            || self.ssf_push_timeout > Duration::from_secs(60)
        {
            errors.push("AUTHD_SSF_PUSH_TIMEOUT must be between 100ms and 60s".into());
        }
        if self.ssf_retry_max < Duration::from_secs(1) || self.ssf_retry_max > Duration::from_secs(3600) {
            errors.push("AUTHD_SSF_RETRY_MAX must be between 1s and 1h".into());
        }
        if self.verify_token_ttl < Duration::from_secs(60) {
            errors.push("AUTHD_VERIFY_TOKEN_TTL must be at least 1m".into());
        }
        if self.email_change_ttl < Duration::from_secs(60) || self.email_change_ttl > self.verify_token_ttl {
            errors
                .push("AUTHD_EMAIL_CHANGE_TTL must be at least 1m and at most AUTHD_VERIFY_TOKEN_TTL".into());
        }
        if !self.cleanup_interval.is_zero() && self.cleanup_interval < Duration::from_secs(1) {
            errors.push("AUTHD_CLEANUP_INTERVAL must be 0 (off) or at least 1s".into());
        }
        if !(1..=100_000).contains(&self.cleanup_batch_size) {
            errors.push("AUTHD_CLEANUP_BATCH_SIZE: must be between 1 and 100000".into());
        }
        if self.reauth_max_age < Duration::from_secs(60) || self.reauth_max_age > Duration::from_secs(86_400)
        {
            errors.push("AUTHD_REAUTH_MAX_AGE must be between 1m and 24h".into());
        }
        if let Err(e) = check_issuer(&self.issuer) {
            errors.push(format!("AUTHD_ISSUER: {e}"));
        }
        for origin in &self.webauthn_origins {
            if let Err(e) = check_webauthn_origin(origin, &self.webauthn_rp_id) {
                errors.push(format!("AUTHD_WEBAUTHN_ORIGINS: {e}"));
            }
        }
        if self.audiences.contains(&self.audience) {
            errors.push("AUTHD_AUDIENCES: lists an audience twice".into());
        }
        if self.service_token_ttl < Duration::from_secs(30)
            || self.service_token_ttl > Duration::from_secs(3_600)
        {
            errors.push("AUTHD_SERVICE_TOKEN_TTL must be between 30s and 1h".into());
        }
        if self.access_token_ttl.is_zero() || self.session_idle_ttl.is_zero() {
            errors.push("token lifetimes must be positive".into());
        }
        errors
    }
}

/// An audience: 1 to 256 visible ASCII characters without commas (a service
/// name or a URI; it is compared as is).
fn check_audience(v: &str) -> Result<String, String> {
    if v.is_empty() || v.len() > 256 {
        return Err("an audience must have 1 to 256 characters".into());
    }
    if !v.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
        return Err(format!(
            "{v:?}: an audience may only contain visible ASCII characters, no commas"
        ));
    }
    Ok(v.to_owned())
}

/// `AUTHD_AUDIENCES`: a comma list of distinct audiences, at least one.
fn parse_audiences(v: &str) -> Result<Vec<String>, String> {
    let mut audiences: Vec<String> = Vec::new();
    for item in v.split(',').map(str::trim) {
        let audience = check_audience(item)?;
        if audiences.contains(&audience) {
            return Err(format!("{audience:?} is listed twice"));
        }
        audiences.push(audience);
    }
    if audiences.len() > 100 {
        return Err("at most 100 audiences".into());
    }
    Ok(audiences)
}

/// RFC 8414 §2: the issuer is an https URL without query or fragment; authd
/// serves its documents at the root, so no path either. Plain http only
/// on a loopback host (development).
fn check_issuer(v: &str) -> Result<(), String> {
    let (scheme, rest) = v
        .split_once("://")
        .ok_or_else(|| format!("{v:?} is not a URL (https://host[:port])"))?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) || rest.chars().any(char::is_whitespace) {
        return Err(format!(
            "{v:?} must be scheme://host[:port] with no path, query, fragment, credentials or trailing slash"
        ));
    }
    let host = host_of(v).ok_or_else(|| format!("{v:?} has no host"))?;
    match scheme {
        "https" => Ok(()),
        "http" if matches!(host, "127.0.0.1" | "localhost" | "::1") => Ok(()),
        "http" => Err(format!(
            "{v:?}: http is only allowed on a loopback host; use https"
        )),
        _ => Err(format!("{v:?}: the scheme must be https")),
    }
}

/// The variables being read, and every problem found so far.
struct Vars<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<String>,
}

impl Vars<'_> {
    /// Applies the variable `key` when it is set, noting a bad value.
    fn read(&mut self, key: &str, apply: impl FnOnce(&str) -> Result<(), String>) {
        if let Some(value) = (self.get)(key)
            && let Err(e) = apply(value.trim())
        {
            self.errors.push(format!("{key}: {e}"));
        }
    }
}

/// A comma-separated list of files.
fn path_list(v: &str) -> Vec<PathBuf> {
    v.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// A WebAuthn relying party id: a domain name (lowercase letters, digits,
/// hyphens, dots), as browsers compare it with the page's host.
fn check_rp_id(v: &str) -> Result<String, String> {
    let labels_ok = v.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    });
    if v.is_empty() || v.len() > 253 || !labels_ok {
        return Err(format!(
            "{v:?} is not a domain name like example.com (lowercase, no scheme or port)"
        ));
    }
    Ok(v.to_owned())
}

/// WebAuthn §5.1.4.1 and §13.4.9: a page may run ceremonies for an RP id
/// that is its host or a registrable suffix of it, and only over https
/// (http is allowed on localhost, as browsers do).
fn check_webauthn_origin(origin: &str, rp_id: &str) -> Result<(), String> {
    let host = host_of(origin).ok_or_else(|| format!("{origin:?} is not an origin"))?;
    let on_rp = host == rp_id || host.ends_with(&format!(".{rp_id}"));
    if !on_rp {
        return Err(format!(
            "{origin:?} is not on the relying party id {rp_id:?} (AUTHD_WEBAUTHN_RP_ID) or a subdomain of it"
        ));
    }
    let local = host == "localhost" || host.ends_with(".localhost");
    if !origin.starts_with("https://") && !local {
        return Err(format!(
            "{origin:?}: passkeys need https (http only on localhost)"
        ));
    }
    Ok(())
}

/// The host of a URL like `https://auth.example.com:8443/x`, without port or
/// credentials; `None` for a string that is not such a URL.
fn host_of(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit('@').next()?;
    let host = if let Some(bracketed) = host_port.strip_prefix('[') {
        bracketed.split(']').next()?
    } else {
        host_port.split(':').next()?
    };
    (!host.is_empty()).then_some(host)
}

/// An issuer label authenticator apps show next to the account: the
/// otpauth format puts it before a colon, so it may hold none.
fn check_totp_issuer(v: &str) -> Result<String, String> {
    if v.contains(':') {
        return Err("must not contain ':' (it separates issuer and account in otpauth labels)".into());
    }
    if v.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    if v.chars().count() > 64 {
        return Err("must be at most 64 characters".into());
    }
    Ok(v.to_owned())
}

/// `*`, or a comma-separated list of exact origins (`https://app.example.com`,
/// `http://localhost:3000`): a scheme, a host and an optional port, nothing
/// after, since browsers send exactly that in `Origin`.
fn parse_origins(v: &str) -> Result<Vec<String>, String> {
    let origins: Vec<String> = v
        .split(',')
        .map(|o| o.trim().trim_end_matches('/').to_owned())
        .filter(|o| !o.is_empty())
        .collect();
    if origins.iter().any(|o| o == "*") {
        return if origins.len() == 1 {
            Ok(origins)
        } else {
            Err("`*` cannot be combined with other origins".into())
        };
    }
    for origin in &origins {
        let rest = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .ok_or_else(|| format!("{origin:?} is not an origin like https://app.example.com"))?;
        if rest.is_empty()
            || rest.contains(['/', '?', '#', '@', ' '])
            || http::HeaderValue::from_str(origin).is_err()
        {
            return Err(format!(
                "{origin:?} is not an origin like https://app.example.com (no path)"
            ));
        }
    }
    Ok(origins)
}

fn parse_into<T: std::str::FromStr>(v: &str, slot: &mut T) -> Result<(), String>
where
    T::Err: std::fmt::Display,
{
    *slot = v.parse().map_err(|e: T::Err| e.to_string())?;
    Ok(())
}

/// `true`/`false`, also as `1`/`0`, `yes`/`no`, `on`/`off`, in any case.
fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("'{v}' is not true or false")),
    }
}

fn duration_into(v: &str, slot: &mut Duration) -> Result<(), String> {
    *slot = parse_duration(v)?;
    Ok(())
}

/// Parses `30s`, `15m`, `2h`, `7d`, `250ms`, or plain seconds.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("'{v}' is not a duration like 30s, 15m, 7d"))?;
    let secs = match unit.trim() {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("'{v}' has an unknown unit (use ms, s, m, h or d)")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("'{v}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> anyhow::Result<Config> {
        let env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|k| env.get(k).cloned())
    }

    #[test]
    fn the_issuer_is_a_url_and_defaults_to_where_authd_listens() {
        let c = config(&[("AUTHD_LISTEN", "0.0.0.0:7000")]).unwrap();
        assert_eq!(c.issuer, "http://127.0.0.1:7000");
        for good in [
            "https://auth.example.com",
            "https://auth.example.com:8443",
            "http://localhost:50051",
        ] {
            assert!(config(&[("AUTHD_ISSUER", good)]).is_ok(), "{good}");
        }
        for bad in [
            "authd",
            "http://auth.example.com",
            "https://auth.example.com/",
            "https://auth.example.com/realm",
            "https://auth.example.com?x=1",
            "https://user@auth.example.com",
            "ftp://auth.example.com",
        ] {
            let err = config(&[("AUTHD_ISSUER", bad)]).unwrap_err().to_string();
            assert!(err.contains("AUTHD_ISSUER"), "{bad}: {err}");
        }
    }

    #[test]
    fn audiences_are_listed_once_and_the_first_is_authds_own() {
        let c = config(&[("AUTHD_AUDIENCES", "api, billing,ledger")]).unwrap();
        assert_eq!(c.audience, "api");
        assert_eq!(c.audiences, vec!["billing".to_owned(), "ledger".to_owned()]);
        let c = config(&[("AUTHD_AUDIENCE", "old")]).unwrap();
        assert_eq!((c.audience.as_str(), c.audiences.len()), ("old", 0));
        for bad in ["a,a", "a,,b", "", "a b", &"x".repeat(300)] {
            assert!(config(&[("AUTHD_AUDIENCES", bad)]).is_err(), "{bad:?}");
        }
        assert!(config(&[("AUTHD_SERVICE_TOKEN_TTL", "2h")]).is_err());
        assert_eq!(
            config(&[("AUTHD_SERVICE_TOKEN_TTL", "1m")])
                .unwrap()
                .service_token_ttl,
            Duration::from_secs(60)
        );
    }

    #[test]
    fn passkey_origins_must_be_on_the_relying_party_and_secure() {
        let c = config(&[]).unwrap();
        assert_eq!(c.webauthn_rp_id, "localhost");
        assert_eq!(c.webauthn_origins, vec!["http://localhost:3000".to_owned()]);
        let ok = config(&[
            ("AUTHD_WEBAUTHN_RP_ID", "example.com"),
            (
                "AUTHD_WEBAUTHN_ORIGINS",
                "https://example.com,https://app.example.com:8443",
            ),
        ])
        .unwrap();
        assert_eq!(ok.webauthn_origins.len(), 2);
        for (rp, origins) in [
            // Another site, or a site that only ends like the RP id.
            ("example.com", "https://evil.com"),
            ("example.com", "https://notexample.com"),
            // Plain http outside localhost.
            ("example.com", "http://app.example.com"),
            ("localhost", "*"),
            ("localhost", "localhost:3000"),
            ("Example.COM", "https://example.com"),
            ("https://example.com", "https://example.com"),
            ("example.com:443", "https://example.com"),
        ] {
            let result = config(&[("AUTHD_WEBAUTHN_RP_ID", rp), ("AUTHD_WEBAUTHN_ORIGINS", origins)]);
            assert!(result.is_err(), "{rp} {origins}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("42"), Ok(Duration::from_secs(42)));
        assert!(parse_duration("7 weeks").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn every_bad_variable_is_reported_at_once() {
        let env: HashMap<&str, &str> = HashMap::from([
            ("AUTHD_LISTEN", "nowhere"),
            ("AUTHD_ACCESS_TOKEN_TTL", "soon"),
            ("AUTHD_RESET_URL", "https://example.com/reset"),
            ("AUTHD_VERIFY_URL", "https://example.com/verify"),
            ("AUTHD_REQUIRE_VERIFIED_EMAIL", "sometimes"),
        ]);
        let err = Config::from_lookup(|k| env.get(k).map(|v| v.to_string()))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("AUTHD_LISTEN"), "{err}");
        assert!(err.contains("AUTHD_ACCESS_TOKEN_TTL"), "{err}");
        assert!(err.contains("AUTHD_RESET_URL"), "{err}");
        assert!(err.contains("AUTHD_VERIFY_URL"), "{err}");
        assert!(err.contains("AUTHD_REQUIRE_VERIFIED_EMAIL"), "{err}");
    }

    #[test]
    fn defaults_match_the_design() {
        let c = Config::from_lookup(|_| None).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(c.access_token_ttl, Duration::from_secs(900));
        assert_eq!(c.argon2, Argon2Settings::default());
        assert_eq!(c.verify_token_ttl, Duration::from_secs(86_400));
        assert_eq!(c.email_change_ttl, Duration::from_secs(3_600));
        assert!(!c.require_verified_email);
        assert!(!c.ssf_allow_private);
    }

    #[test]
    fn private_push_receivers_are_allowed_only_when_asked_for() {
        for (value, on) in [("true", true), ("on", true), ("0", false), ("no", false)] {
            let c =
                Config::from_lookup(|k| (k == "AUTHD_SSF_ALLOW_PRIVATE").then(|| value.to_owned())).unwrap();
            assert_eq!(c.ssf_allow_private, on, "{value}");
        }
        let bad = Config::from_lookup(|k| (k == "AUTHD_SSF_ALLOW_PRIVATE").then(|| "maybe".to_owned()));
        assert!(bad.unwrap_err().to_string().contains("AUTHD_SSF_ALLOW_PRIVATE"));
    }

    #[test]
    fn the_verified_email_gate_reads_like_a_switch() {
        for (value, on) in [
            ("true", true),
            ("TRUE", true),
            ("1", true),
            ("off", false),
            ("false", false),
        ] {
            let c = Config::from_lookup(|k| (k == "AUTHD_REQUIRE_VERIFIED_EMAIL").then(|| value.to_owned()))
                .unwrap();
            assert_eq!(c.require_verified_email, on, "{value}");
        }
    }

    #[test]
    fn the_clean_up_runs_every_ten_minutes_in_batches_unless_told_otherwise() {
        let c = Config::from_lookup(|_| None).unwrap();
        assert_eq!(c.cleanup_interval, Duration::from_secs(600));
        assert_eq!(c.cleanup_batch_size, 1000);
        let env: HashMap<&str, &str> = HashMap::from([
            ("AUTHD_CLEANUP_INTERVAL", "0"),
            ("AUTHD_CLEANUP_BATCH_SIZE", "50"),
        ]);
        let c = Config::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert!(c.cleanup_interval.is_zero(), "0 turns it off");
        assert_eq!(c.cleanup_batch_size, 50);
        for (key, value) in [
            ("AUTHD_CLEANUP_INTERVAL", "500ms"),
            ("AUTHD_CLEANUP_INTERVAL", "often"),
            ("AUTHD_CLEANUP_BATCH_SIZE", "0"),
            ("AUTHD_CLEANUP_BATCH_SIZE", "1000000"),
        ] {
            let err = Config::from_lookup(|k| (k == key).then(|| value.to_owned()))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(key), "{key}={value}: {err}");
        }
    }

    #[test]
    fn second_factor_settings_have_defaults_and_bounds() {
        let c = Config::from_lookup(|_| None).unwrap();
        assert!(c.data_keys.is_empty(), "development key by default");
        assert_eq!(c.reauth_max_age, Duration::from_secs(600));
        assert_eq!(c.require_mfa, "off");
        let env: HashMap<&str, &str> = HashMap::from([
            ("AUTHD_DATA_KEYS", "/keys/new, /keys/old,"),
            ("AUTHD_REAUTH_MAX_AGE", "1h"),
            ("AUTHD_REQUIRE_MFA", "roles:admin"),
            ("AUTHD_TOTP_ISSUER", "Example Corp"),
        ]);
        let c = Config::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(
            c.data_keys,
            vec![PathBuf::from("/keys/new"), PathBuf::from("/keys/old")]
        );
        assert_eq!(c.reauth_max_age, Duration::from_secs(3600));
        assert_eq!(c.require_mfa, "roles:admin");
        assert_eq!(c.totp_issuer(), "Example Corp");
        for (key, value) in [
            ("AUTHD_REAUTH_MAX_AGE", "30s"),
            ("AUTHD_REAUTH_MAX_AGE", "2d"),
            ("AUTHD_REAUTH_MAX_AGE", "soon"),
            ("AUTHD_DATA_KEYS", " , "),
            ("AUTHD_TOTP_ISSUER", "Example: Corp"),
        ] {
            let err = Config::from_lookup(|k| (k == key).then(|| value.to_owned()))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(key), "{key}={value}: {err}");
        }
    }

    #[test]
    fn the_totp_issuer_defaults_to_the_issuer_host() {
        let issuer = |issuer: &str| {
            Config {
                issuer: issuer.into(),
                ..Config::default()
            }
            .totp_issuer()
        };
        assert_eq!(issuer("https://auth.example.com"), "auth.example.com");
        assert_eq!(issuer("https://auth.example.com:8443/realm"), "auth.example.com");
        assert_eq!(issuer("http://127.0.0.1:50051"), "127.0.0.1");
        assert_eq!(issuer("authd"), "authd");
        assert_eq!(issuer("urn:example:authd"), "urnexampleauthd");
    }

    #[test]
    fn cors_origins_are_exact_origins_or_a_lone_star() {
        assert_eq!(
            parse_origins("https://app.example.com, http://localhost:3000/"),
            Ok(vec![
                "https://app.example.com".to_owned(),
                "http://localhost:3000".to_owned()
            ])
        );
        assert_eq!(parse_origins("*"), Ok(vec!["*".to_owned()]));
        assert!(parse_origins("*, https://a.example").is_err());
        assert!(parse_origins("app.example.com").is_err());
        assert!(parse_origins("https://app.example.com/login").is_err());
        assert!(Config::from_lookup(|_| None).unwrap().cors_origins.is_empty());
    }
}
