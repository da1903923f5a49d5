//! Push delivery of Security Event Tokens (RFC 8935): one POST of one SET to
//! a receiver's URL, and what its answer means for the stream's cursor.
//!
//! A receiver URL is chosen by whoever registers a stream, so every delivery
//! is a request authd makes on a stranger's behalf (SSRF). The guard:
//! - the URL is parsed once ([`PushEndpoint::parse`], in the domain layer so
//!   that configuring a stream can call it): `https` only (plain
//!   `http` only with `allow_private`, since the SET and the receiver's
//!   `Authorization` would cross the network in clear), no userinfo, no
//!   fragment, no ambiguous numeric host (`127.1`, `0x7f000001`), and no
//!   literal address of the kinds below;
//! - at every delivery the host is resolved and *every* address it resolves
//!   to is checked ([`forbidden_class`]): loopback, unspecified, private,
//!   shared (CGNAT), link-local (cloud metadata), documentation,
//!   benchmarking, multicast, broadcast and reserved ranges, and IPv6 forms
//!   that embed such an IPv4 address, are refused unless `allow_private`
//!   (`AUTHD_SSF_ALLOW_PRIVATE`);
//! - the socket is connected to the checked address itself, never to the
//!   name again, so a name that resolves differently a moment later (DNS
//!   rebinding) reaches nothing unchecked; TLS still verifies the name;
//! - redirects are never followed, response headers and bodies are read
//!   within a bound, and the whole exchange within a deadline.
//!
//! Nothing here knows the database: the worker that owns a stream's cursor
//! decides what to do with a [`PushOutcome`].

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION, RETRY_AFTER, USER_AGENT,
};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig};

pub use crate::domain::push_endpoint::{
    EndpointRefusal, MAX_URL_LEN, PushEndpoint, PushHost, forbidden_class,
};

/// Most of a receiver's answer body read (an RFC 8935 error is a small JSON
/// object); a longer one is not parsed.
const MAX_RESPONSE_BODY: usize = 16 * 1024;
/// Most bytes of a receiver's answer head (status line and headers).
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Longest `Retry-After` honoured: a receiver asking for more is asked again
/// then.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// How much of a receiver's own words (`err`, `description`, `Location`)
/// are kept in an outcome, which ends up in logs and the stream's status.
const MAX_ERR_LEN: usize = 64;
const MAX_DESCRIPTION_LEN: usize = 512;

/// What became of one delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// Any 2xx: RFC 8935 answers 202, and a receiver that answers 200 or 204
    /// has taken the SET just the same (sending it again would only
    /// duplicate it).
    Accepted,
    /// 400 with an RFC 8935 error object: the receiver judged this SET and
    /// refused it; sending it again gets the same answer. `err` is the
    /// receiver's code (`invalid_request`, `invalid_key`, `invalid_issuer`,
    /// `invalid_audience`, `authentication_failed`, `access_denied`); the
    /// last two and `invalid_key` are about the stream's configuration or
    /// keys rather than this SET.
    Rejected {
        err: String,
        description: Option<String>,
    },
    /// Try again later: a 5xx, 429, 401/403, any other 4xx, a 400 without an
    /// error object, a 3xx (never followed), a timeout, a connection or TLS
    /// failure, a name that does not resolve. `after` is the receiver's
    /// `Retry-After` in seconds (at most an hour; an HTTP-date is ignored).
    Retry { reason: String, after: Option<Duration> },
    /// The guard refused the address the host resolves to now, or the
    /// stream's `Authorization` is not a header value; nothing was sent.
    /// Later, DNS or the configuration may have changed.
    Refused { reason: String },
}

impl PushOutcome {
    fn retry(reason: impl Into<String>) -> Self {
        Self::Retry {
            reason: reason.into(),
            after: None,
        }
    }
}

/// Delivers SETs; cheap to clone, one per process is enough (each delivery
/// opens its own connection).
#[derive(Clone)]
pub struct PushClient {
    connect_timeout: Duration,
    request_timeout: Duration,
    allow_private: bool,
    /// Without any CA certificate on the machine, https receivers cannot be
    /// verified: their deliveries are retried with this reason rather than
    /// authd refusing to start.
    tls: Result<TlsConnector, String>,
}

impl fmt::Debug for PushClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushClient")
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("allow_private", &self.allow_private)
            .field("tls", &self.tls.as_ref().map(|_| "OS trust store"))
            .finish()
    }
}

impl PushClient {
    /// `connect_timeout` bounds resolving, connecting and the TLS handshake;
    /// `request_timeout` then bounds sending the SET and reading the answer.
    pub fn new(
        connect_timeout: Duration,
        request_timeout: Duration,
        allow_private: bool,
    ) -> anyhow::Result<Self> {
        Self::with_extra_roots(connect_timeout, request_timeout, allow_private, Vec::new())
    }

    /// Like [`PushClient::new`], trusting `extra_roots` besides the OS
    /// trust store (tests; a private CA could use it too).
    fn with_extra_roots(
        connect_timeout: Duration,
        request_timeout: Duration,
        allow_private: bool,
        extra_roots: Vec<CertificateDer<'static>>,
    ) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?;
        let tls = rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider)
            .map(|verifier| {
                let mut config = builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier))
                    .with_no_client_auth();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                TlsConnector::from(Arc::new(config))
            })
            .map_err(|e| format!("no trust store to verify https receivers: {e}"));
        if let Err(e) = &tls {
            tracing::warn!("{e}");
        }
        Ok(Self {
            connect_timeout,
            request_timeout,
            allow_private,
            tls,
        })
    }

    /// POSTs `set` to the endpoint as `application/secevent+jwt`, with
    /// `Accept: application/json` and the stream's `Authorization` value
    /// when it has one. Never follows a redirect; never panics or errors:
    /// every failure is an outcome.
    pub async fn deliver(
        &self,
        endpoint: &PushEndpoint,
        authorization: Option<&str>,
        set: &str,
    ) -> PushOutcome {
        let request = match build_request(endpoint, authorization, set) {
            Ok(request) => request,
            Err(outcome) => return outcome,
        };
        let io = match tokio::time::timeout(self.connect_timeout, self.connect(endpoint)).await {
            Ok(Ok(io)) => io,
            Ok(Err(outcome)) => return outcome,
            Err(_) => {
                return PushOutcome::retry(format!(
                    "no connection to {} within {:?}",
                    endpoint.authority(),
                    self.connect_timeout
                ));
            }
        };
        match tokio::time::timeout(self.request_timeout, exchange(io, request)).await {
            Ok(outcome) => outcome,
            Err(_) => PushOutcome::retry(format!(
                "no answer from {} within {:?}",
                endpoint.authority(),
                self.request_timeout
            )),
        }
    }

    /// Resolves, checks every address, connects to a checked one, and
    /// speaks TLS when the URL says https.
    async fn connect(&self, endpoint: &PushEndpoint) -> Result<Box<dyn Io>, PushOutcome> {
        // A URL accepted while the setting was on is judged by today's.
        if !endpoint.is_https() && !self.allow_private {
            return Err(PushOutcome::Refused {
                reason: format!(
                    "{} is plain http (AUTHD_SSF_ALLOW_PRIVATE is off)",
                    endpoint.authority()
                ),
            });
        }
        let addrs: Vec<SocketAddr> = match endpoint.host() {
            PushHost::Ip(ip) => vec![SocketAddr::new(*ip, endpoint.port())],
            PushHost::Name(name) => tokio::net::lookup_host((name.as_str(), endpoint.port()))
                .await
                .map_err(|e| PushOutcome::retry(format!("resolving {name}: {e}")))?
                .collect(),
        };
        if !self.allow_private {
            // One internal address among public ones refuses the lot: a
            // name that points inside is not a receiver's.
            if let Some((addr, class)) = addrs
                .iter()
                .find_map(|a| forbidden_class(a.ip()).map(|class| (a, class)))
            {
                return Err(PushOutcome::Refused {
                    reason: format!(
                        "{} is at {}, a {class} address (AUTHD_SSF_ALLOW_PRIVATE is off)",
                        endpoint.authority(),
                        addr.ip()
                    ),
                });
            }
        }
        let tcp = connect_any(&addrs, self.connect_timeout)
            .await
            .map_err(|e| PushOutcome::retry(format!("{}: {e}", endpoint.authority())))?;
        // One small write per request: no reason to wait for more.
        let _ = tcp.set_nodelay(true);
        if !endpoint.is_https() {
            return Ok(Box::new(tcp));
        }
        let connector = self.tls.as_ref().map_err(|e| PushOutcome::retry(e.clone()))?;
        let server_name = match endpoint.host() {
            PushHost::Ip(ip) => ServerName::IpAddress((*ip).into()),
            PushHost::Name(name) => ServerName::try_from(name.clone())
                .map_err(|e| PushOutcome::retry(format!("TLS name {name}: {e}")))?,
        };
        let tls = connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| PushOutcome::retry(format!("TLS with {}: {e}", endpoint.authority())))?;
        Ok(Box::new(tls))
    }
}

/// Tries each address in turn, each with an equal share of what is left of
/// `budget`, so an address that swallows SYNs (an IPv6 route that goes
/// nowhere, say) does not use up the time of the one that would answer.
async fn connect_any(addrs: &[SocketAddr], budget: Duration) -> Result<TcpStream, String> {
    let deadline = tokio::time::Instant::now() + budget;
    let mut last_error = "resolves to no address".to_owned();
    for (i, addr) in addrs.iter().enumerate() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let share = left / u32::try_from(addrs.len() - i).unwrap_or(u32::MAX);
        match tokio::time::timeout(share, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last_error = format!("connecting to {addr}: {e}"),
            Err(_) => last_error = format!("connecting to {addr}: no answer within {share:?}"),
        }
    }
    Err(last_error)
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn build_request(
    endpoint: &PushEndpoint,
    authorization: Option<&str>,
    set: &str,
) -> Result<Request<Full<Bytes>>, PushOutcome> {
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(endpoint.path_and_query())
        .header(HOST, endpoint.authority())
        .header(CONTENT_TYPE, "application/secevent+jwt")
        .header(ACCEPT, "application/json")
        .header(CONTENT_LENGTH, set.len())
        .header(USER_AGENT, concat!("authd/", env!("CARGO_PKG_VERSION")));
    if let Some(value) = authorization {
        let mut value = HeaderValue::from_str(value).map_err(|_| PushOutcome::Refused {
            reason: "the stream's authorization is not a valid header value".into(),
        })?;
        value.set_sensitive(true);
        builder = builder.header(AUTHORIZATION, value);
    }
    builder
        .body(Full::new(Bytes::copy_from_slice(set.as_bytes())))
        .map_err(|e| PushOutcome::Refused {
            reason: format!("building the request: {e}"),
        })
}

/// Aborts the task driving a connection when the delivery is over (or was
/// dropped at its deadline), so a receiver that never answers holds no
/// socket beyond it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn exchange(io: Box<dyn Io>, request: Request<Full<Bytes>>) -> PushOutcome {
    let handshake = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_RESPONSE_HEAD)
        .handshake::<_, Full<Bytes>>(TokioIo::new(io))
        .await;
    let (mut sender, connection) = match handshake {
        Ok(pair) => pair,
        Err(e) => return PushOutcome::retry(format!("HTTP: {e}")),
    };
    let _driver = AbortOnDrop(tokio::spawn(async move {
        // Its failure shows in send_request's result.
        let _ = connection.await;
    }));
    let response = match sender.send_request(request).await {
        Ok(response) => response,
        Err(e) => return PushOutcome::retry(format!("HTTP: {e}")),
    };
    let status = response.status();
    if status.is_success() {
        return PushOutcome::Accepted;
    }
    let after = retry_after(response.headers().get(RETRY_AFTER));
    if status.is_redirection() {
        let location = response
            .headers()
            .get(LOCATION)
            .map(|l| clip(&String::from_utf8_lossy(l.as_bytes()), MAX_DESCRIPTION_LEN))
            .unwrap_or_default();
        return PushOutcome::Retry {
            reason: format!("{status} to {location:?}, not followed"),
            after,
        };
    }
    if status == StatusCode::BAD_REQUEST {
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes());
        return match body {
            Ok(body) => match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(e) => PushOutcome::Rejected {
                    err: clip(&e.err, MAX_ERR_LEN),
                    description: e.description.map(|d| clip(&d, MAX_DESCRIPTION_LEN)),
                },
                Err(_) => PushOutcome::Retry {
                    reason: "400 without an RFC 8935 error object".into(),
                    after,
                },
            },
            Err(e) => PushOutcome::Retry {
                reason: format!("400 with an unreadable body: {e}"),
                after,
            },
        };
    }
    let reason = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            format!("{status}: the receiver refused the stream's authorization")
        }
        _ => format!("the receiver answered {status}"),
    };
    PushOutcome::Retry { reason, after }
}

/// RFC 8935 §2.3's error object.
#[derive(serde::Deserialize)]
struct ErrorBody {
    err: String,
    description: Option<String>,
}

/// `Retry-After` as delta-seconds, capped; an HTTP-date would need the
/// clock and is rare from receivers: the worker's own back-off applies.
fn retry_after(value: Option<&HeaderValue>) -> Option<Duration> {
    let seconds: u64 = value?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// A receiver's words, cut to `max` characters, control characters
/// blanked (they end up in log lines).
fn clip(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;
    use tokio_rustls::TlsAcceptor;
    use tokio_rustls::rustls::ServerConfig;
    use tokio_rustls::rustls::pki_types::PrivateKeyDer;

    use super::*;

    const SET: &str = "eyJhbGciOiJFZERTQSIsInR5cCI6InNlY2V2ZW50K2p3dCJ9.e30.c2ln";

    /// What a test receiver does once it has read a request.
    #[derive(Clone)]
    enum Answer {
        /// Writes these bytes and closes.
        Bytes(&'static [u8]),
        /// Writes this head, then body bytes for as long as the client reads.
        Endless(&'static [u8]),
        /// Never answers.
        Stall,
    }

    /// One request as it arrived on the wire.
    struct Seen {
        head: String,
        body: Vec<u8>,
        /// The TLS server name the client sent (SNI), when over TLS.
        sni: Option<String>,
    }

    /// A receiver on a real socket, written against the bytes rather than
    /// with an HTTP library, so the test sees exactly what authd sent.
    struct Receiver {
        addr: SocketAddr,
        seen: mpsc::UnboundedReceiver<Seen>,
        connections: Arc<AtomicUsize>,
    }

    async fn receiver(answer: Answer) -> Receiver {
        receiver_with(answer, None).await
    }

    async fn receiver_with(answer: Answer, tls: Option<TlsAcceptor>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, seen) = mpsc::unbounded_channel();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let (tx, answer, tls) = (tx.clone(), answer.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve(tcp, None, answer, tx).await,
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let sni = stream.get_ref().1.server_name().map(str::to_owned);
                            serve(stream, sni, answer, tx).await;
                        }
                    }
                });
            }
        });
        Receiver {
            addr,
            seen,
            connections,
        }
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        mut stream: S,
        sni: Option<String>,
        answer: Answer,
        tx: mpsc::UnboundedSender<Seen>,
    ) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().unwrap())
            })
            .unwrap_or(0);
        while buf.len() < head_end + length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[head_end..head_end + length].to_vec();
        let _ = tx.send(Seen { head, body, sni });
        match answer {
            Answer::Bytes(bytes) => {
                let _ = stream.write_all(bytes).await;
                let _ = stream.shutdown().await;
            }
            Answer::Endless(head) => {
                if stream.write_all(head).await.is_err() {
                    return;
                }
                let filler = [b'x'; 4096];
                while stream.write_all(&filler).await.is_ok() {}
            }
            Answer::Stall => {
                // Holds the connection open, reading nothing more, until
                // the client goes away.
                let _ = stream.read(&mut chunk).await;
                std::future::pending::<()>().await;
            }
        }
    }

    fn client(allow_private: bool) -> PushClient {
        PushClient::new(Duration::from_secs(5), Duration::from_secs(30), allow_private).unwrap()
    }

    fn endpoint(url: &str) -> PushEndpoint {
        PushEndpoint::parse(url, true).unwrap()
    }

    #[tokio::test]
    async fn a_202_is_accepted_and_the_request_is_exactly_rfc_8935s() {
        let mut rx = receiver(Answer::Bytes(
            b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n",
        ))
        .await;
        let url = format!("http://{}/ssf/events?stream=7", rx.addr);
        let outcome = client(true)
            .deliver(&endpoint(&url), Some("Bearer receiver-secret"), SET)
            .await;
        assert_eq!(outcome, PushOutcome::Accepted);

        let seen = rx.seen.recv().await.unwrap();
        let mut lines = seen.head.lines();
        assert_eq!(lines.next(), Some("POST /ssf/events?stream=7 HTTP/1.1"));
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        let header = |name: &str| {
            let values: Vec<&str> = headers
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .collect();
            assert_eq!(values.len(), 1, "{name} once in {headers:?}");
            values[0].to_owned()
        };
        assert_eq!(header("host"), rx.addr.to_string());
        assert_eq!(header("content-type"), "application/secevent+jwt");
        assert_eq!(header("accept"), "application/json");
        assert_eq!(header("authorization"), "Bearer receiver-secret");
        assert_eq!(header("content-length"), SET.len().to_string());
        assert_eq!(seen.body, SET.as_bytes());
        assert_eq!(seen.sni, None);
    }

    #[tokio::test]
    async fn no_authorization_configured_sends_none() {
        let mut rx = receiver(Answer::Bytes(b"HTTP/1.1 202 Accepted\r\n\r\n")).await;
        let url = format!("http://{}/", rx.addr);
        let outcome = client(true).deliver(&endpoint(&url), None, SET).await;
        assert_eq!(outcome, PushOutcome::Accepted);
        let seen = rx.seen.recv().await.unwrap();
        assert!(
            !seen.head.to_ascii_lowercase().contains("authorization"),
            "{}",
            seen.head
        );
    }

    #[tokio::test]
    async fn a_200_or_204_counts_as_accepted() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"[..],
            &b"HTTP/1.1 204 No Content\r\n\r\n"[..],
        ] {
            let rx = receiver(Answer::Bytes(answer)).await;
            let url = format!("http://{}/events", rx.addr);
            let outcome = client(true).deliver(&endpoint(&url), None, SET).await;
            assert_eq!(outcome, PushOutcome::Accepted);
        }
    }

    #[tokio::test]
    async fn a_400_with_an_error_object_is_rejected_for_good() {
        let body = r#"{"err":"invalid_audience","description":"not\nfor me","x":1}"#;
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let rx = receiver(Answer::Bytes(Box::leak(answer.into_bytes().into_boxed_slice()))).await;
        let url = format!("http://{}/events", rx.addr);
        let outcome = client(true).deliver(&endpoint(&url), None, SET).await;
        assert_eq!(
            outcome,
            PushOutcome::Rejected {
                err: "invalid_audience".into(),
                // The newline a receiver sent does not reach a log line.
                description: Some("not for me".into()),
            }
        );
    }

    #[tokio::test]
    async fn a_400_without_an_error_object_is_retried() {
        let rx = receiver(Answer::Bytes(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/html\r\ncontent-length: 17\r\n\r\n<h1>go away</h1>\n",
        ))
        .await;
        let url = format!("http://{}/events", rx.addr);
        let outcome = client(true).deliver(&endpoint(&url), None, SET).await;
        assert!(matches!(outcome, PushOutcome::Retry { .. }), "{outcome:?}");
    }

    #[tokio::test]
    async fn unavailable_throttled_or_unauthorised_receivers_are_retried_with_their_retry_after() {
        let cases: [(&'static [u8], Option<Duration>); 5] = [
            (
                b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 7\r\ncontent-length: 0\r\n\r\n",
                Some(Duration::from_secs(7)),
            ),
            (
                b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 99999999\r\ncontent-length: 0\r\n\r\n",
                Some(MAX_RETRY_AFTER),
            ),
            (
                b"HTTP/1.1 429 Too Many Requests\r\nretry-after: Wed, 21 Oct 2015 07:28:00 GMT\r\ncontent-length: 0\r\n\r\n",
                None,
            ),
            (b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n", None),
            (b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n", None),
        ];
        for (answer, expected_after) in cases {
            let rx = receiver(Answer::Bytes(answer)).await;
            let url = format!("http://{}/events", rx.addr);
            match client(true).deliver(&endpoint(&url), None, SET).await {
                PushOutcome::Retry { after, .. } => assert_eq!(after, expected_after),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_redirect_is_never_followed() {
        let target = receiver(Answer::Bytes(b"HTTP/1.1 202 Accepted\r\n\r\n")).await;
        let location: &'static str = Box::leak(
            format!(
                "HTTP/1.1 302 Found\r\nlocation: http://{}/events\r\ncontent-length: 0\r\n\r\n",
                target.addr
            )
            .into_boxed_str(),
        );
        let rx = receiver(Answer::Bytes(location.as_bytes())).await;
        let url = format!("http://{}/events", rx.addr);
        let outcome = client(true).deliver(&endpoint(&url), None, SET).await;
        match outcome {
            PushOutcome::Retry { reason, .. } => {
                assert!(
                    reason.contains("302") && reason.contains("not followed"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        // deliver has returned: had it followed, it would have connected.
        assert_eq!(target.connections.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_receiver_that_never_answers_is_retried_at_the_request_timeout() {
        let rx = receiver(Answer::Stall).await;
        let url = format!("http://{}/events", rx.addr);
        let client = PushClient::new(Duration::from_secs(5), Duration::from_millis(300), true).unwrap();
        match client.deliver(&endpoint(&url), None, SET).await {
            PushOutcome::Retry { reason, .. } => {
                assert!(reason.contains("no answer"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn an_endless_error_body_is_read_only_to_its_bound() {
        // The request timeout is far away: the bound, not the clock, ends it.
        let rx = receiver(Answer::Endless(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 1000000000\r\n\r\n",
        ))
        .await;
        let url = format!("http://{}/events", rx.addr);
        match client(true).deliver(&endpoint(&url), None, SET).await {
            PushOutcome::Retry { reason, .. } => {
                assert!(reason.contains("unreadable body"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // A chunked one, with no length announced, likewise.
        let rx = receiver(Answer::Endless(
            b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n1000\r\n",
        ))
        .await;
        let url = format!("http://{}/events", rx.addr);
        match client(true).deliver(&endpoint(&url), None, SET).await {
            PushOutcome::Retry { reason, .. } => {
                assert!(reason.contains("unreadable body"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn an_accepting_receiver_with_an_endless_body_is_not_read() {
        let rx = receiver(Answer::Endless(
            b"HTTP/1.1 202 Accepted\r\ncontent-length: 1000000000\r\n\r\n",
        ))
        .await;
        let url = format!("http://{}/events", rx.addr);
        let outcome = client(true).deliver(&endpoint(&url), None, SET).await;
        assert_eq!(outcome, PushOutcome::Accepted);
    }

    #[tokio::test]
    async fn an_endless_answer_head_is_cut_off() {
        let rx = receiver(Answer::Endless(b"HTTP/1.1 202 Accepted\r\nx-filler: ")).await;
        let url = format!("http://{}/events", rx.addr);
        match client(true).deliver(&endpoint(&url), None, SET).await {
            PushOutcome::Retry { reason, .. } => assert!(reason.contains("HTTP"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_retried() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let url = format!("http://{addr}/events");
        match client(true).deliver(&endpoint(&url), None, SET).await {
            PushOutcome::Retry { reason, .. } => assert!(reason.contains("connecting"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn an_address_that_never_answers_leaves_time_for_the_next() {
        // A listener with a full backlog that never accepts: the kernel
        // drops further SYNs, so a connect to it hangs like one to a
        // blackholed route.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let full = socket.listen(1).unwrap();
        let black_hole = full.local_addr().unwrap();
        let mut queued = Vec::new();
        let hanging = loop {
            let attempt = TcpStream::connect(black_hole);
            match tokio::time::timeout(Duration::from_millis(500), attempt).await {
                Ok(stream) => queued.push(stream.unwrap()),
                Err(_) => break true,
            }
            if queued.len() > 64 {
                break false;
            }
        };
        if !hanging {
            eprintln!("SKIPPED: this kernel accepts connections beyond the backlog");
            return;
        }
        let rx = receiver(Answer::Bytes(b"HTTP/1.1 202 Accepted\r\n\r\n")).await;
        // The first address gets half the budget, not all of it: the second
        // is reached before the budget is over (by about half of it).
        let budget = Duration::from_secs(4);
        let started = tokio::time::Instant::now();
        let stream = connect_any(&[black_hole, rx.addr], budget).await;
        assert_eq!(stream.unwrap().peer_addr().unwrap(), rx.addr);
        assert!(started.elapsed() < budget, "{:?}", started.elapsed());
        match connect_any(&[black_hole], Duration::from_millis(300)).await {
            Err(e) => assert!(e.contains("no answer"), "{e}"),
            Ok(_) => panic!("connected to a full backlog"),
        }
    }

    #[tokio::test]
    async fn an_authorization_that_is_no_header_value_sends_nothing() {
        let rx = receiver(Answer::Bytes(b"HTTP/1.1 202 Accepted\r\n\r\n")).await;
        let url = format!("http://{}/events", rx.addr);
        let outcome = client(true)
            .deliver(&endpoint(&url), Some("Bearer x\r\nX-Injected: 1"), SET)
            .await;
        assert!(matches!(outcome, PushOutcome::Refused { .. }), "{outcome:?}");
        assert_eq!(rx.connections.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn the_guard_checks_the_resolved_address_at_delivery() {
        let rx = receiver(Answer::Bytes(b"HTTP/1.1 202 Accepted\r\n\r\n")).await;
        let port = rx.addr.port();
        // A URL accepted while private addresses were allowed is refused
        // once they no longer are: `localhost` as what it resolves to now.
        for url in [
            format!("https://localhost:{port}/events"),
            format!("https://127.0.0.1:{port}/events"),
            format!("https://[::ffff:127.0.0.1]:{port}/events"),
        ] {
            let endpoint = PushEndpoint::parse(&url, true).unwrap();
            match client(false).deliver(&endpoint, Some("Bearer s"), SET).await {
                PushOutcome::Refused { reason } => {
                    assert!(reason.contains("loopback"), "{reason}")
                }
                other => panic!("{url}: {other:?}"),
            }
        }
        // Plain http likewise: the SET and the receiver's authorization
        // would cross the network in clear.
        let plain = PushEndpoint::parse("http://receiver.example.com/events", true).unwrap();
        match client(false).deliver(&plain, Some("Bearer s"), SET).await {
            PushOutcome::Refused { reason } => assert!(reason.contains("plain http"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(rx.connections.load(Ordering::SeqCst), 0, "nothing was sent");
    }

    fn tls_receiver_identity() -> (TlsAcceptor, CertificateDer<'static>) {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = key.cert.der().clone();
        let private = PrivateKeyDer::try_from(key.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], private)
            .unwrap();
        (TlsAcceptor::from(Arc::new(config)), cert)
    }

    #[tokio::test]
    async fn https_receivers_are_verified_and_get_the_host_name_as_sni() {
        let (acceptor, cert) = tls_receiver_identity();
        let mut rx = receiver_with(
            Answer::Bytes(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n"),
            Some(acceptor),
        )
        .await;
        let url = format!("https://localhost:{}/events", rx.addr.port());
        let trusting =
            PushClient::with_extra_roots(Duration::from_secs(5), Duration::from_secs(30), true, vec![cert])
                .unwrap();
        let outcome = trusting.deliver(&endpoint(&url), Some("Bearer s"), SET).await;
        assert_eq!(outcome, PushOutcome::Accepted);
        let seen = rx.seen.recv().await.unwrap();
        assert_eq!(seen.sni.as_deref(), Some("localhost"));
        assert_eq!(seen.body, SET.as_bytes());

        // Without that certificate in its trust store, nothing is sent.
        match client(true).deliver(&endpoint(&url), Some("Bearer s"), SET).await {
            PushOutcome::Retry { reason, .. } => assert!(reason.contains("TLS"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert!(rx.seen.try_recv().is_err());
    }
}
