//! A first line of defence in memory: a token bucket per peer address in
//! front of the password RPCs (each costs an argon2 hash). Token RPCs are the
//! hot path of every internal caller and are never limited here. The same
//! buckets count failed service-key checks (`auth_layer`). The durable,
//! cross-replica limits live in PostgreSQL (`db::throttle`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Request;
use http::header::HeaderName;
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::Service;

use super::middleware::{BoxFuture, HttpResponse, Middleware, answer};
use super::policy::policy_for;
use crate::error::AppError;
use crate::metrics::{Metrics, ThrottleKind};

/// Beyond this many tracked peers, idle buckets are dropped.
const MAX_TRACKED_PEERS: usize = 50_000;

struct Bucket {
    tokens: f64,
    updated: Instant,
}

pub struct PeerLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl PeerLimiter {
    /// `per_second` calls per peer on average, bursts of one second's worth.
    pub fn new(per_second: f64) -> Self {
        Self {
            per_second,
            burst: per_second.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `per_second` on average after a first burst of `burst`.
    pub fn with_burst(per_second: f64, burst: f64) -> Self {
        Self {
            per_second,
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `peer`, or says how long until one is available.
    pub fn try_acquire(&self, peer: IpAddr, now: Instant) -> Result<(), Duration> {
        self.with_bucket(peer, now, true)
    }

    /// Whether `peer` has a token now, without taking it.
    pub fn available(&self, peer: IpAddr, now: Instant) -> Result<(), Duration> {
        self.with_bucket(peer, now, false)
    }

    fn with_bucket(&self, peer: IpAddr, now: Instant, take: bool) -> Result<(), Duration> {
        let Ok(mut buckets) = self.buckets.lock() else {
            // A poisoned lock means a panic elsewhere; fail open rather than
            // refuse every login.
            return Ok(());
        };
        if buckets.len() >= MAX_TRACKED_PEERS {
            let full_after = Duration::from_secs_f64(self.burst / self.per_second);
            buckets.retain(|_, b| now.duration_since(b.updated) < full_after);
        }
        let bucket = buckets.entry(group(peer)).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let refill = now.duration_since(bucket.updated).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            if take {
                bucket.tokens -= 1.0;
            }
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.per_second))
        }
    }
}

/// IPv6 clients usually own a whole /64; limiting single addresses there
/// would be no limit at all.
fn group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The caller's address: the last entry of the trusted proxy header when one
/// is configured and present (the address our own proxy saw), else the TCP
/// peer.
pub fn peer_address<B>(req: &Request<B>, trusted_header: Option<&HeaderName>) -> Option<IpAddr> {
    address_of(req.headers(), req.extensions(), trusted_header)
}

/// The client's address (IPv6 grouped by /64) for a handler, whatever layers
/// the server was composed with.
pub fn client_address<T>(
    req: &tonic::Request<T>,
    trusted_header: Option<&HeaderName>,
) -> Option<ClientAddress> {
    address_of(req.metadata().as_ref(), req.extensions(), trusted_header).map(|ip| ClientAddress(group(ip)))
}

/// The client's own address (not grouped), as a session records it.
pub fn client_ip<T>(req: &tonic::Request<T>, trusted_header: Option<&HeaderName>) -> Option<IpAddr> {
    address_of(req.metadata().as_ref(), req.extensions(), trusted_header)
}

fn address_of(
    headers: &http::HeaderMap,
    ext: &http::Extensions,
    trusted_header: Option<&HeaderName>,
) -> Option<IpAddr> {
    // The last line of the header: a proxy that adds its own line (HAProxy
    // does) leaves any line the client sent before it, and `get` returns
    // the first.
    if let Some(value) = trusted_header.and_then(|h| headers.get_all(h).iter().next_back()) {
        let last = value
            .to_str()
            .ok()
            .and_then(|v| v.rsplit(',').next())
            .map(str::trim);
        if let Some(ip) = last.and_then(|v| v.parse::<IpAddr>().ok()) {
            return Some(ip);
        }
    }
    ext.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|t| t.get_ref().remote_addr())
        })
        .map(|a| a.ip())
}

/// The client's address, IPv6 grouped by /64 (one subscriber's prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

/// The per-client token bucket in front of the methods whose policy asks
/// for it.
#[derive(Clone)]
pub struct PeerRateLimit {
    limiter: Option<Arc<PeerLimiter>>,
    trusted_header: Option<HeaderName>,
    metrics: Option<Metrics>,
}

impl PeerRateLimit {
    /// `per_second == 0` turns the limit off.
    pub fn new(per_second: f64, trusted_header: Option<HeaderName>) -> Self {
        Self {
            limiter: (per_second > 0.0).then(|| Arc::new(PeerLimiter::new(per_second))),
            trusted_header,
            metrics: None,
        }
    }

    /// Counts refused calls in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

impl Middleware for PeerRateLimit {
    fn call<S, B>(&self, req: Request<B>, mut next: S) -> BoxFuture<HttpResponse, S::Error>
    where
        S: Service<Request<B>, Response = HttpResponse> + Send + 'static,
        S::Future: Send + 'static,
        B: Send + 'static,
    {
        if let Some(limiter) = &self.limiter
            && policy_for(req.uri().path()).per_client_limit
            && let Some(peer) = peer_address(&req, self.trusted_header.as_ref())
            && let Err(wait) = limiter.try_acquire(peer, Instant::now())
        {
            if let Some(metrics) = &self.metrics {
                metrics.throttled(ThrottleKind::PeerLimit);
            }
            return answer(Status::from(AppError::Throttled(wait)));
        }
        Box::pin(next.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_steady_rate() {
        let limiter = PeerLimiter::new(2.0);
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        assert!(limiter.try_acquire(peer, t0).is_ok());
        assert!(limiter.try_acquire(peer, t0).is_ok());
        let wait = limiter.try_acquire(peer, t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(limiter.try_acquire(peer, t0 + Duration::from_millis(500)).is_ok());
        // Another peer has its own bucket.
        assert!(limiter.try_acquire("192.0.2.2".parse().unwrap(), t0).is_ok());
    }

    #[test]
    fn a_larger_burst_and_looking_without_taking() {
        // 30 per minute, all at once at first.
        let limiter = PeerLimiter::with_burst(0.5, 30.0);
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..30 {
            assert!(limiter.available(peer, t0).is_ok());
            assert!(limiter.try_acquire(peer, t0).is_ok());
        }
        let wait = limiter.available(peer, t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(2));
        assert!(limiter.try_acquire(peer, t0).is_err());
        assert!(limiter.available(peer, t0 + Duration::from_secs(2)).is_ok());
        assert!(limiter.available("192.0.2.2".parse().unwrap(), t0).is_ok());
    }

    #[test]
    fn ipv6_addresses_of_one_prefix_share_a_bucket() {
        assert_eq!(
            group("2001:db8:1:2:aaaa::1".parse().unwrap()),
            group("2001:db8:1:2:bbbb::2".parse().unwrap())
        );
        assert_eq!(
            group("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn the_trusted_header_names_the_peer_only_when_configured() {
        let req = Request::builder()
            .header("x-forwarded-for", "203.0.113.9, 198.51.100.7")
            .body(())
            .unwrap();
        let header = HeaderName::from_static("x-forwarded-for");
        assert_eq!(peer_address(&req, Some(&header)), "198.51.100.7".parse().ok());
        assert_eq!(peer_address(&req, None), None);
    }

    #[test]
    fn a_line_the_client_sent_before_the_proxy_s_own_is_not_believed() {
        let req = Request::builder()
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-for", "198.51.100.7")
            .body(())
            .unwrap();
        let header = HeaderName::from_static("x-forwarded-for");
        assert_eq!(peer_address(&req, Some(&header)), "198.51.100.7".parse().ok());
    }
}
