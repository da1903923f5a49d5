//! The generator's side of Shared Signals: where SETs arrive (a board of
//! who waits for which session's SET), push receivers (one HTTP/1 server
//! per stream, on a port of its own), dead receivers, poll clients, and
//! the few HTTP/2 calls to the SSF endpoints.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// CAEP session-revoked, as the spec spells it.
const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";

/// One Logout's SET, awaited at streams `0..counted`.
struct Waiting {
    arrived: Vec<Option<Instant>>,
    left: usize,
    done: Option<oneshot::Sender<()>>,
}

/// Where every receiver reports the session-revoked SETs it gets, and
/// where a client waits for its session's SET to reach every stream.
#[derive(Default)]
pub struct Board {
    waiting: Mutex<HashMap<String, Waiting>>,
    /// A SET that reached a stream a second time.
    pub duplicates: AtomicU64,
    /// Session-revoked SETs nobody waited for (the wait was given up).
    pub strays: AtomicU64,
    /// What receivers and poll clients could not use, by label.
    pub errors: Mutex<BTreeMap<String, u64>>,
}

impl Board {
    /// Registers a wait for `sid`'s SET at streams `0..counted`; the
    /// receiver fires once it has reached all of them.
    pub fn expect(&self, sid: &str, counted: usize) -> oneshot::Receiver<()> {
        let (done, fired) = oneshot::channel();
        self.waiting.lock().unwrap().insert(
            sid.to_owned(),
            Waiting {
                arrived: vec![None; counted],
                left: counted,
                done: Some(done),
            },
        );
        fired
    }

    /// Ends the wait for `sid`: when its SET reached each counted stream.
    pub fn take(&self, sid: &str) -> Vec<Option<Instant>> {
        self.waiting
            .lock()
            .unwrap()
            .remove(sid)
            .map(|w| w.arrived)
            .unwrap_or_default()
    }

    pub fn error(&self, label: impl Into<String>) {
        *self.errors.lock().unwrap().entry(label.into()).or_default() += 1;
    }

    pub fn take_errors(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.errors.lock().unwrap())
    }

    /// A SET (compact JWS) that reached `stream` at `at`; anything but a
    /// session-revoked event is passed over.
    fn arrive(&self, stream: usize, set: &str, at: Instant) {
        let Some(sid) = revoked_session(set) else {
            return;
        };
        let mut waiting = self.waiting.lock().unwrap();
        let Some(w) = waiting.get_mut(&sid) else {
            self.strays.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(slot) = w.arrived.get_mut(stream) else {
            // A stream that is not counted (the run's odd one out).
            return;
        };
        if slot.is_some() {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *slot = Some(at);
        w.left -= 1;
        if w.left == 0
            && let Some(done) = w.done.take()
        {
            let _ = done.send(());
        }
    }
}

/// The session a session-revoked SET names (`sub_id.session.id`), read
/// without verifying the signature: authd's tests check SETs against the
/// RFCs; here only their arrival is timed.
fn revoked_session(set: &str) -> Option<String> {
    let payload = set.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims["events"].get(SESSION_REVOKED)?;
    claims["sub_id"]["session"]["id"].as_str().map(str::to_owned)
}

/// The `sid` of an access token (read, not verified).
pub fn session_of(access_token: &str) -> String {
    let payload = access_token.split('.').nth(1).unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap_or_default();
    let claims: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    claims["sid"].as_str().unwrap_or_default().to_owned()
}

/// What a push receiver needs to judge a request.
struct PushTarget {
    stream: usize,
    authorization: HeaderValue,
    board: Arc<Board>,
}

async fn accept_set(State(target): State<Arc<PushTarget>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let at = Instant::now();
    if headers.get(header::AUTHORIZATION) != Some(&target.authorization) {
        target.board.error("push_wrong_authorization");
        return StatusCode::UNAUTHORIZED;
    }
    match std::str::from_utf8(&body) {
        Ok(set) => {
            target.board.arrive(target.stream, set.trim(), at);
            StatusCode::ACCEPTED
        }
        Err(_) => {
            target.board.error("push_body_not_utf8");
            StatusCode::BAD_REQUEST
        }
    }
}

/// A receiver for one push stream: an HTTP/1 server on a port of its own
/// (authd opens a connection per SET, so one port per stream keeps every
/// stream's connections, and their TIME_WAITs, apart), answering 202.
pub struct PushReceiver {
    pub url: String,
    pub authorization: String,
    task: JoinHandle<()>,
}

impl PushReceiver {
    pub async fn spawn(stream: usize, board: &Arc<Board>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let authorization = format!("Bearer receiver-{stream}");
        let target = Arc::new(PushTarget {
            stream,
            authorization: HeaderValue::from_str(&authorization).unwrap(),
            board: Arc::clone(board),
        });
        let app = axum::Router::new()
            .route("/", post(accept_set))
            .with_state(target);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            authorization,
            task,
        }
    }
}

impl Drop for PushReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A receiver that is down: one that accepts connections and never
/// answers (authd waits out AUTHD_SSF_PUSH_TIMEOUT each time), or one whose
/// port refuses them.
pub struct DeadReceiver {
    pub url: String,
    /// Connections it accepted (and holds, unanswered).
    pub accepted: Arc<AtomicU64>,
    task: Option<JoinHandle<()>>,
}

impl DeadReceiver {
    pub async fn silent() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                held.push(socket);
            }
        });
        Self {
            url,
            accepted,
            task: Some(task),
        }
    }

    /// A port that was free a moment ago and is closed now.
    pub async fn refusing() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        drop(listener);
        Self {
            url,
            accepted: Arc::new(AtomicU64::new(0)),
            task: None,
        }
    }
}

impl Drop for DeadReceiver {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// HTTP/2 connections (prior knowledge) to authd's HTTP face, and the
/// receiver's service key.
pub struct Face {
    authority: String,
    bearer: HeaderValue,
    connections: Vec<h2::client::SendRequest<Bytes>>,
}

impl Face {
    pub async fn connect(addr: &str, key: &str, n: usize) -> Self {
        let authority = addr
            .strip_prefix("http://")
            .unwrap_or(addr)
            .trim_end_matches('/')
            .to_owned();
        let mut connections = Vec::with_capacity(n);
        for _ in 0..n {
            let tcp = tokio::net::TcpStream::connect(&authority)
                .await
                .unwrap_or_else(|e| panic!("connecting to the HTTP face at {authority}: {e}"));
            tcp.set_nodelay(true).expect("TCP_NODELAY");
            let (send, connection) = h2::client::handshake(tcp)
                .await
                .unwrap_or_else(|e| panic!("HTTP/2 handshake with {authority}: {e}"));
            tokio::spawn(async move {
                let _ = connection.await;
            });
            connections.push(send);
        }
        Self {
            bearer: HeaderValue::from_str(&format!("Bearer {key}")).expect("a service key is a header value"),
            authority,
            connections,
        }
    }

    /// One request on connection `lane % connections`: the status and body.
    pub async fn call(
        &self,
        lane: usize,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Bytes), String> {
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.authority))
            .header(header::AUTHORIZATION, self.bearer.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(())
            .map_err(|e| format!("request: {e}"))?;
        let send = self.connections[lane % self.connections.len()].clone();
        let mut send = send.ready().await.map_err(h2_label)?;
        let (response, mut stream) = send.send_request(request, body.is_none()).map_err(h2_label)?;
        if let Some(body) = body {
            stream
                .send_data(Bytes::from(body.to_string()), true)
                .map_err(h2_label)?;
        }
        let response = response.await.map_err(h2_label)?;
        let status = response.status();
        let mut recv = response.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.map_err(h2_label)?;
            let _ = recv.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        Ok((status, Bytes::from(bytes)))
    }

    /// A new stream; its id.
    pub async fn create_stream(&self, delivery: Value) -> String {
        let (status, body) = self
            .call(
                0,
                Method::POST,
                "/ssf/streams",
                Some(&json!({ "delivery": delivery })),
            )
            .await
            .unwrap_or_else(|e| panic!("ssf scenario: creating a stream: {e}"));
        assert_eq!(
            status,
            StatusCode::CREATED,
            "ssf scenario: creating a stream: {}",
            String::from_utf8_lossy(&body)
        );
        let created: Value = serde_json::from_slice(&body).unwrap();
        created["stream_id"].as_str().unwrap().to_owned()
    }

    pub async fn push_stream(&self, url: &str, authorization: Option<&str>) -> String {
        let mut delivery = json!({"method": "urn:ietf:rfc:8935", "endpoint_url": url});
        if let Some(authorization) = authorization {
            delivery["authorization_header"] = Value::from(authorization);
        }
        self.create_stream(delivery).await
    }

    pub async fn poll_stream(&self) -> String {
        self.create_stream(json!({"method": "urn:ietf:rfc:8936"})).await
    }

    /// Deletes the streams; a failure is counted on `board`.
    pub async fn delete_streams(&self, ids: &[String], board: &Board) {
        for id in ids {
            match self
                .call(0, Method::DELETE, &format!("/ssf/streams?stream_id={id}"), None)
                .await
            {
                Ok((StatusCode::NO_CONTENT, _)) => {}
                Ok((status, _)) => board.error(format!("delete_stream_http_{}", status.as_u16())),
                Err(e) => board.error(format!("delete_stream:{e}")),
            }
        }
    }
}

fn h2_label(e: h2::Error) -> String {
    format!("h2: {e}")
}

/// Most SETs asked for per poll.
const MAX_EVENTS: usize = 100;

/// A poll client for stream number `stream` (id `id`): long polls
/// (`returnImmediately: false`) one after another, each acknowledging the
/// SETs of the one before, until aborted.
pub fn spawn_poller(
    face: &Arc<Face>,
    lane: usize,
    stream: usize,
    id: &str,
    board: &Arc<Board>,
) -> JoinHandle<()> {
    let (face, board) = (Arc::clone(face), Arc::clone(board));
    let path = format!("/ssf/poll/{id}");
    tokio::spawn(async move {
        let mut ack: Vec<String> = Vec::new();
        loop {
            let request = json!({"maxEvents": MAX_EVENTS, "returnImmediately": false, "ack": ack});
            let answer = face.call(lane, Method::POST, &path, Some(&request)).await;
            let at = Instant::now();
            let body = match answer {
                Ok((StatusCode::OK, body)) => body,
                Ok((status, _)) => {
                    board.error(format!("poll_http_{}", status.as_u16()));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => {
                    board.error(format!("poll:{e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(batch) = serde_json::from_slice::<Value>(&body) else {
                board.error("poll_not_json");
                continue;
            };
            ack.clear();
            if let Some(sets) = batch["sets"].as_object() {
                for (jti, set) in sets {
                    if let Some(set) = set.as_str() {
                        board.arrive(stream, set, at);
                    }
                    ack.push(jti.clone());
                }
            }
        }
    })
}
