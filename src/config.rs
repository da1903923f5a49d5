//! Typed settings from environment variables (and `.env`). Every variable and
//! its default is listed in README.md; secrets are `SecretString`s.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use crate::crypto::password::Argon2Settings;

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
    pub issuer: String,
    pub audience: String,
    pub signing_keys: Vec<PathBuf>,
    pub access_token_ttl: Duration,
    pub session_idle_ttl: Duration,
    pub session_max_ttl: Duration,
    pub reset_token_ttl: Duration,
    pub refresh_reuse_grace: Duration,
    pub smtp_url: Option<SecretString>,
    pub mail_from: String,
    pub reset_url: String,
    pub metrics_listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub log_format: LogFormat,
    pub argon2: Argon2Settings,
    /// Concurrent argon2 computations (each holds `argon2.memory_kib`).
    pub hash_workers: usize,
    pub password_min_length: usize,
    pub peer_rate_limit: f64,
    /// Header set by a trusted gateway carrying the client address (its last
    /// entry is used), e.g. `x-forwarded-for`. Unset: the TCP peer.
    pub trusted_proxy_header: Option<http::header::HeaderName>,
    /// Browser origins allowed to call authd with gRPC-Web (CORS). Empty:
    /// none; `*` alone: any.
    pub cors_origins: Vec<String>,
    pub db_max_connections: u32,
    pub health_check_interval: Duration,
    pub shutdown_drain: Duration,
    pub request_timeout: Duration,
    /// How often the mail worker looks for due mail it was not woken for
    /// (queued by another replica, or due for a retry).
    pub mail_poll_interval: Duration,
    /// Wait after a failed delivery; doubles with each further failure.
    pub mail_retry_base: Duration,
}

impl Default for Config {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            database_url: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: PathBuf::from(".authd"),
            issuer: "authd".into(),
            audience: "authd".into(),
            signing_keys: Vec::new(),
            access_token_ttl: Duration::from_secs(15 * 60),
            session_idle_ttl: Duration::from_secs(7 * 86_400),
            session_max_ttl: Duration::from_secs(30 * 86_400),
            reset_token_ttl: Duration::from_secs(30 * 60),
            refresh_reuse_grace: Duration::ZERO,
            smtp_url: None,
            mail_from: "authd <no-reply@localhost>".into(),
            reset_url: "http://localhost:3000/reset-password?token={token}".into(),
            metrics_listen: None,
            tls_cert: None,
            tls_key: None,
            log_format: LogFormat::Pretty,
            argon2: Argon2Settings::default(),
            hash_workers: cores,
            password_min_length: 8,
            peer_rate_limit: 20.0,
            trusted_proxy_header: None,
            cors_origins: Vec::new(),
            db_max_connections: (cores as u32 * 4).clamp(8, 32),
            health_check_interval: Duration::from_secs(2),
            shutdown_drain: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            mail_poll_interval: Duration::from_secs(1),
            mail_retry_base: Duration::from_secs(2),
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
        let mut c = Self::default();
        let mut errors = Vec::new();
        let mut field = |key: &str, apply: &mut dyn FnMut(&str) -> Result<(), String>| {
            if let Some(value) = get(key)
                && let Err(e) = apply(value.trim())
            {
                errors.push(format!("{key}: {e}"));
            }
        };
        field("DATABASE_URL", &mut |v| {
            c.database_url = Some(SecretString::from(v.to_owned()));
            Ok(())
        });
        field("AUTHD_LISTEN", &mut |v| parse_into(v, &mut c.listen));
        field("AUTHD_DATA_DIR", &mut |v| {
            c.data_dir = PathBuf::from(v);
            Ok(())
        });
        field("AUTHD_ISSUER", &mut |v| {
            c.issuer = v.to_owned();
            Ok(())
        });
        field("AUTHD_AUDIENCE", &mut |v| {
            c.audience = v.to_owned();
            Ok(())
        });
        field("AUTHD_SIGNING_KEYS", &mut |v| {
            c.signing_keys = v
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect();
            Ok(())
        });
        field("AUTHD_ACCESS_TOKEN_TTL", &mut |v| {
            duration_into(v, &mut c.access_token_ttl)
        });
        field("AUTHD_SESSION_IDLE_TTL", &mut |v| {
            duration_into(v, &mut c.session_idle_ttl)
        });
        field("AUTHD_SESSION_MAX_TTL", &mut |v| {
            duration_into(v, &mut c.session_max_ttl)
        });
        field("AUTHD_RESET_TOKEN_TTL", &mut |v| {
            duration_into(v, &mut c.reset_token_ttl)
        });
        field("AUTHD_REFRESH_REUSE_GRACE", &mut |v| {
            duration_into(v, &mut c.refresh_reuse_grace)
        });
        field("AUTHD_SMTP_URL", &mut |v| {
            c.smtp_url = Some(SecretString::from(v.to_owned()));
            Ok(())
        });
        field("AUTHD_MAIL_FROM", &mut |v| {
            c.mail_from = v.to_owned();
            Ok(())
        });
        field("AUTHD_RESET_URL", &mut |v| {
            if !v.contains("{token}") {
                return Err("must contain {token}".into());
            }
            c.reset_url = v.to_owned();
            Ok(())
        });
        field("AUTHD_METRICS_LISTEN", &mut |v| {
            c.metrics_listen = Some(v.parse().map_err(|e| format!("{e}"))?);
            Ok(())
        });
        field("AUTHD_TLS_CERT", &mut |v| {
            c.tls_cert = Some(PathBuf::from(v));
            Ok(())
        });
        field("AUTHD_TLS_KEY", &mut |v| {
            c.tls_key = Some(PathBuf::from(v));
            Ok(())
        });
        field("AUTHD_LOG_FORMAT", &mut |v| {
            c.log_format = match v.to_ascii_lowercase().as_str() {
                "pretty" | "text" => LogFormat::Pretty,
                "json" => LogFormat::Json,
                _ => return Err("must be pretty or json".into()),
            };
            Ok(())
        });
        field("AUTHD_ARGON2_MEMORY_KIB", &mut |v| {
            parse_into(v, &mut c.argon2.memory_kib)
        });
        field("AUTHD_ARGON2_ITERATIONS", &mut |v| {
            parse_into(v, &mut c.argon2.iterations)
        });
        field("AUTHD_ARGON2_PARALLELISM", &mut |v| {
            parse_into(v, &mut c.argon2.parallelism)
        });
        field("AUTHD_HASH_WORKERS", &mut |v| parse_into(v, &mut c.hash_workers));
        field("AUTHD_PASSWORD_MIN_LENGTH", &mut |v| {
            parse_into(v, &mut c.password_min_length)
        });
        field("AUTHD_PEER_RATE_LIMIT", &mut |v| {
            parse_into(v, &mut c.peer_rate_limit)
        });
        field("AUTHD_TRUSTED_PROXY_HEADER", &mut |v| {
            c.trusted_proxy_header = Some(
                v.to_ascii_lowercase()
                    .parse()
                    .map_err(|_| "not a header name".to_owned())?,
            );
            Ok(())
        });
        field("AUTHD_CORS_ORIGINS", &mut |v| {
            c.cors_origins = parse_origins(v)?;
            Ok(())
        });
        field("AUTHD_DB_MAX_CONNECTIONS", &mut |v| {
            parse_into(v, &mut c.db_max_connections)
        });
        field("AUTHD_SHUTDOWN_DRAIN", &mut |v| {
            duration_into(v, &mut c.shutdown_drain)
        });
        field("AUTHD_REQUEST_TIMEOUT", &mut |v| {
            duration_into(v, &mut c.request_timeout)
        });
        if c.tls_cert.is_some() != c.tls_key.is_some() {
            errors.push("AUTHD_TLS_CERT and AUTHD_TLS_KEY must be set together".into());
        }
        if !(8..=64).contains(&c.password_min_length) {
            errors.push("AUTHD_PASSWORD_MIN_LENGTH: must be between 8 and 64".into());
        }
        if c.session_idle_ttl > c.session_max_ttl {
            errors.push("AUTHD_SESSION_IDLE_TTL must not exceed AUTHD_SESSION_MAX_TTL".into());
        }
        if c.access_token_ttl.is_zero() || c.session_idle_ttl.is_zero() {
            errors.push("token lifetimes must be positive".into());
        }
        if errors.is_empty() {
            Ok(c)
        } else {
            anyhow::bail!("invalid configuration:\n  {}", errors.join("\n  "))
        }
    }
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
        ]);
        let err = Config::from_lookup(|k| env.get(k).map(|v| v.to_string()))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("AUTHD_LISTEN"), "{err}");
        assert!(err.contains("AUTHD_ACCESS_TOKEN_TTL"), "{err}");
        assert!(err.contains("AUTHD_RESET_URL"), "{err}");
    }

    #[test]
    fn defaults_match_the_design() {
        let c = Config::from_lookup(|_| None).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(c.access_token_ttl, Duration::from_secs(900));
        assert_eq!(c.argon2, Argon2Settings::default());
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
