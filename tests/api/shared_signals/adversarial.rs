//! What a hostile or broken party can do to Shared Signals: a receiver
//! configuring a push URL that points inside (SSRF), sending junk
//! configurations or poll acknowledgements, and receivers that fail,
//! redirect or stall before they behave.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::helpers::{spawn_app, spawn_app_with};

fn text(response: &HttpResponse) -> String {
    String::from_utf8_lossy(&response.body).into_owned()
}

/// Waits (up to [`WAIT`]) until `check` holds; whether it did.
async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A listener on loopback that only counts who connects to it.
async fn counting_listener() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((_socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, count)
}

#[tokio::test]
async fn push_urls_that_point_inside_are_refused_when_configured() {
    let app = spawn_app().await;
    let key = app.service_key("receiver-a", &["events.receive"]).await;
    let poll = create_stream(&app, &key, &json!({"delivery": {"method": POLL}})).await;
    let poll_id = poll["stream_id"].as_str().unwrap();
    for url in [
        "http://127.0.0.1:1/x",
        "https://127.0.0.1/",
        "https://127.0.0.1:8443/events",
        "https://[::1]/",
        "https://169.254.169.254/latest",
        "https://10.0.0.1/",
        "https://192.168.1.1/",
        "https://100.64.0.1/",
        "https://0.0.0.0/",
        "https://[::ffff:127.0.0.1]/",
        "https://[::ffff:a9fe:a9fe]/",
        "https://[fe80::1]/",
        "https://[fd00::1]/",
        "https://127.1/",
        "https://2130706433/",
        "https://0x7f000001/",
        "https://user:pw@example.com/",
        "https://example.com/#frag",
        "ftp://x",
        "file:///etc/passwd",
        "gopher://example.com/",
        "https://",
        "not a url",
    ] {
        let body = json!({"delivery": {"method": PUSH, "endpoint_url": url}});
        let created = ssf(&app, "POST", "/ssf/streams", &key, Some(&body)).await;
        assert_eq!(created.status, 400, "{url}: {}", text(&created));
        let error = created.json();
        assert_eq!(error["error"], "invalid_request", "{url}: {error}");
        assert!(
            error["error_description"]
                .as_str()
                .unwrap_or("")
                .contains("delivery.endpoint_url"),
            "{url}: {error}"
        );
        // Nor can an existing stream be turned toward it.
        let patch = json!({"stream_id": poll_id, "delivery": {"method": PUSH, "endpoint_url": url}});
        let patched = ssf(&app, "PATCH", "/ssf/streams", &key, Some(&patch)).await;
        assert_eq!(patched.status, 400, "PATCH {url}: {}", text(&patched));
        assert!(text(&patched).contains("delivery.endpoint_url"), "{url}");
        let mut put = patch.clone();
        put["stream_id"] = Value::from(poll_id);
        let replaced = ssf(&app, "PUT", "/ssf/streams", &key, Some(&put)).await;
        assert_eq!(replaced.status, 400, "PUT {url}: {}", text(&replaced));
    }
    let list = ssf(&app, "GET", "/ssf/streams", &key, None).await;
    assert_eq!(list.json(), json!([poll]), "nothing was created or changed");
}

#[tokio::test]
async fn a_name_that_resolves_to_loopback_is_accepted_but_never_contacted() {
    let app = spawn_app().await;
    let key = app.service_key("receiver-a", &["events.receive"]).await;
    let (listening, connections) = counting_listener().await;
    let stream = create_stream(
        &app,
        &key,
        &json!({"delivery": {"method": PUSH,
                             "endpoint_url": "https://receiver.example/events",
                             "authorization_header": "Bearer would-leak"}}),
    )
    .await;
    let id = stream["stream_id"].as_str().unwrap().to_owned();
    // A name that resolves to loopback by the time of delivery (its DNS
    // changed, say): `localhost` stands for it, written past the check at
    // configuration time, which refuses that name outright.
    sqlx::query("UPDATE ssf_streams SET endpoint_url = $2 WHERE id = $1::uuid")
        .bind(&id)
        .bind(format!("https://localhost:{}/events", listening.port()))
        .execute(&app.db)
        .await
        .unwrap();
    // Something to send.
    let verified = ssf(&app, "POST", "/ssf/verify", &key, Some(&json!({"stream_id": id}))).await;
    assert_eq!(verified.status, 204);

    let refused = eventually(|| async { stream_row(&app, &id).await.3.is_some() }).await;
    assert!(refused, "no delivery attempt recorded");
    let last_error = stream_row(&app, &id).await.3.unwrap();
    assert!(
        last_error.contains("loopback") && last_error.contains("AUTHD_SSF_ALLOW_PRIVATE is off"),
        "{last_error}"
    );
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the guard connected to loopback"
    );
    // The message waits; it was not dropped as delivered.
    let (pending,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM ssf_stream_messages WHERE stream_id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(pending, 1);
}

#[tokio::test]
async fn junk_configurations_are_refused_naming_what_is_wrong() {
    let app = spawn_app().await;
    let key = app.service_key("receiver-a", &["events.receive"]).await;

    // More than 64 KiB, declared.
    let huge = json!({"description": "x".repeat(70 * 1024)});
    let too_big = ssf(&app, "POST", "/ssf/streams", &key, Some(&huge)).await;
    assert_eq!(too_big.status, 413, "{}", text(&too_big));
    // And sent chunked, with no length to refuse up front.
    let mut chunked = Request::new("POST", "/ssf/streams")
        .bearer(&key)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked");
    let payload = serde_json::to_vec(&huge).unwrap();
    let mut body = Vec::new();
    for piece in payload.chunks(8192) {
        body.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        body.extend_from_slice(piece);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    chunked.body = body;
    let chunked = send_raw(&app, chunked).await;
    assert!(
        chunked.contains(" 413 "),
        "{}",
        chunked.lines().next().unwrap_or("")
    );

    let mut malformed = Request::new("POST", "/ssf/streams")
        .bearer(&key)
        .header("content-type", "application/json");
    malformed.body = b"{\"delivery\": {\"method\": ".to_vec();
    let malformed = malformed.send(app.addr).await;
    assert_eq!(malformed.status, 400, "{}", text(&malformed));
    assert_eq!(malformed.json()["error"], "invalid_request");

    for (body, field) in [
        (json!({"events_requested": "x"}), "events_requested"),
        (json!({"events_requested": [1, 2]}), "events_requested"),
        (json!({"events_requested": ["a b"]}), "events_requested"),
        (
            json!({"events_requested": (0..33).map(|i| format!("https://e.example/{i}")).collect::<Vec<_>>()}),
            "events_requested",
        ),
        (json!({"delivery": {"method": "smtp"}}), "delivery.method"),
        (json!({"delivery": "push"}), "delivery"),
        (json!({"delivery": {"method": PUSH}}), "delivery.endpoint_url"),
        (
            json!({"delivery": {"method": PUSH, "endpoint_url": 7}}),
            "delivery.endpoint_url",
        ),
        (
            json!({"delivery": {"method": PUSH, "endpoint_url": "https://r.example/",
                                "authorization_header": "Bearer a\r\nX-Injected: 1"}}),
            "delivery.authorization_header",
        ),
        (
            json!({"delivery": {"method": PUSH, "endpoint_url": "https://r.example/",
                                "authorization_header": 5}}),
            "delivery.authorization_header",
        ),
        (json!({"aud": 5}), "aud"),
        (json!({"aud": ""}), "aud"),
        (json!({"description": ["x"]}), "description"),
        (json!([]), "body"),
        (json!("stream"), "body"),
    ] {
        let refused = ssf(&app, "POST", "/ssf/streams", &key, Some(&body)).await;
        assert_eq!(refused.status, 400, "{body}: {}", text(&refused));
        let error = refused.json();
        assert_eq!(error["error"], "invalid_request");
        assert!(
            error["error_description"].as_str().unwrap_or("").contains(field),
            "{body}: {error}"
        );
    }
    // Status and verification bodies too.
    let stream = create_stream(&app, &key, &json!({})).await;
    let id = stream["stream_id"].as_str().unwrap();
    for (path, body) in [
        ("/ssf/status", json!({"stream_id": id, "status": "sleeping"})),
        ("/ssf/status", json!({"stream_id": id, "status": 1})),
        (
            "/ssf/status",
            json!({"stream_id": "not-a-uuid", "status": "paused"}),
        ),
        ("/ssf/verify", json!({"stream_id": id, "state": 5})),
        ("/ssf/verify", json!({"stream_id": "../../etc"})),
    ] {
        let refused = ssf(&app, "POST", path, &key, Some(&body)).await;
        assert_eq!(refused.status, 400, "{path} {body}: {}", text(&refused));
    }
    let list = ssf(&app, "GET", "/ssf/streams", &key, None).await;
    assert_eq!(list.json(), json!([stream]), "only the one good stream");
}

/// Sends a request as is (for chunked bodies) and returns the answer's text.
async fn send_raw(app: &TestApp, request: Request<'_>) -> String {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let mut head = format!(
        "{} {} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n",
        request.method, request.path, app.addr
    );
    for (name, value) in &request.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server may answer and close before the whole body is sent.
    let _ = stream.write_all(&request.body).await;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    String::from_utf8_lossy(&raw).into_owned()
}

async fn poll_raw(app: &TestApp, key: &str, id: &str, body: &Value) -> HttpResponse {
    ssf(app, "POST", &format!("/ssf/poll/{id}"), key, Some(body)).await
}

fn jtis(answer: &Value) -> Vec<String> {
    answer["sets"].as_object().unwrap().keys().cloned().collect()
}

#[tokio::test]
async fn poll_acknowledgements_that_name_nothing_of_the_stream_move_nothing() {
    // A long poll that waits its full time is plainly not "at once".
    let app = spawn_app_with(|c| c.request_timeout = Duration::from_secs(60)).await;
    let key = app.service_key("receiver-a", &["events.receive"]).await;
    let other_key = app.service_key("receiver-b", &["events.receive"]).await;
    let admin = admin_key(&app).await;
    let events = json!({"events_requested": account_events(), "delivery": {"method": POLL}});
    let mine = create_stream(&app, &key, &events).await;
    let id = mine["stream_id"].as_str().unwrap();
    let sibling = create_stream(&app, &key, &events).await;
    let sibling_id = sibling["stream_id"].as_str().unwrap();
    let foreign = create_stream(&app, &other_key, &events).await;
    let foreign_id = foreign["stream_id"].as_str().unwrap();
    let push = create_stream(
        &app,
        &key,
        &json!({"delivery": {"method": PUSH, "endpoint_url": "https://r.example/ev"}}),
    )
    .await;

    disable_and_enable(&app, &admin).await;
    let first = poll_raw(&app, &key, id, &json!({"returnImmediately": true})).await;
    assert_eq!(first.status, 200, "{}", text(&first));
    let mine_jtis = jtis(&first.json());
    assert_eq!(mine_jtis.len(), 2, "{}", text(&first));
    let sibling_jtis = jtis(
        &poll_raw(&app, &key, sibling_id, &json!({"returnImmediately": true}))
            .await
            .json(),
    );
    let foreign_jtis = jtis(
        &poll_raw(&app, &other_key, foreign_id, &json!({"returnImmediately": true}))
            .await
            .json(),
    );
    assert_eq!((sibling_jtis.len(), foreign_jtis.len()), (2, 2));
    let before = stream_row(&app, id).await;

    // What a jti of this stream could look like, but is not.
    let simple = id.replace('-', "");
    let (head,): (i64,) = sqlx::query_as("SELECT last_event_id FROM revocation_log")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let mut junk: Vec<String> = vec![
        "unknown".into(),
        String::new(),
        "-".into(),
        "--".into(),
        "💥".repeat(100),
        "x".repeat(10_000),
        format!("{}-0-{simple}", head + 1),
        format!("{}-0-{simple}", i64::MAX),
        format!("-1-0-{simple}"),
        format!("0-0-{simple}"),
        format!("{head}-99999999999-{simple}"),
        format!("m999999-{simple}"),
        format!("m-{simple}"),
        format!("{head}-0-{simple}-extra"),
        format!("{head}-0-{}", simple.to_uppercase()),
    ];
    junk.extend(sibling_jtis.iter().cloned());
    junk.extend(foreign_jtis.iter().cloned());
    let acked = poll_raw(&app, &key, id, &json!({"ack": junk, "returnImmediately": true})).await;
    assert_eq!(acked.status, 200, "{}", text(&acked));
    // Nothing was acknowledged: the same two SETs again, the cursor where
    // it was.
    assert_eq!(jtis(&acked.json()), mine_jtis);
    let after = stream_row(&app, id).await;
    assert_eq!((after.0, after.1), (before.0, before.1));
    assert!(
        after
            .2
            .iter()
            .all(|a| a.ends_with(&simple) && !a.ends_with(&format!("-{simple}-extra"))),
        "{:?}",
        after.2
    );
    // The sibling and the foreign stream were not moved by this ack.
    let sibling_again = poll_raw(&app, &key, sibling_id, &json!({"returnImmediately": true})).await;
    assert_eq!(jtis(&sibling_again.json()), sibling_jtis);
    let foreign_again = poll_raw(&app, &other_key, foreign_id, &json!({"returnImmediately": true})).await;
    assert_eq!(jtis(&foreign_again.json()), foreign_jtis);

    // Malformed acknowledgements are refused, and move nothing either.
    let too_many: Vec<String> = (0..1001).map(|i| format!("{i}-0-{simple}")).collect();
    for body in [
        json!({"ack": too_many}),
        json!({"ack": "x"}),
        json!({"ack": [1]}),
        json!({"maxEvents": -1}),
        json!({"maxEvents": "5"}),
        json!({"returnImmediately": "yes"}),
        json!([1]),
    ] {
        let refused = poll_raw(&app, &key, id, &body).await;
        assert_eq!(refused.status, 400, "{body}: {}", text(&refused));
        assert_eq!(refused.json()["error"], "invalid_request");
    }
    let poll_path = format!("/ssf/poll/{id}");
    let mut garbage = Request::new("POST", &poll_path)
        .bearer(&key)
        .header("content-type", "application/json");
    garbage.body = b"\x00\xff{{".to_vec();
    let garbage = garbage.send(app.addr).await;
    assert_eq!(garbage.status, 400);
    let after = stream_row(&app, id).await;
    assert_eq!((after.0, after.1), (before.0, before.1));

    // maxEvents 0: no SETs, and nothing acknowledged by asking.
    let none = poll_raw(
        &app,
        &key,
        id,
        &json!({"maxEvents": 0, "returnImmediately": true}),
    )
    .await;
    assert_eq!(none.status, 200);
    assert_eq!(none.json()["sets"], json!({}));
    let none = poll_raw(&app, &key, id, &json!({"maxEvents": 0})).await;
    assert_eq!(none.json()["sets"], json!({}));

    // The real acknowledgements move it to the end.
    let done = poll_raw(
        &app,
        &key,
        id,
        &json!({"ack": mine_jtis, "returnImmediately": true}),
    )
    .await;
    assert_eq!(done.json()["sets"], json!({}), "{}", text(&done));
    assert_eq!(done.json()["moreAvailable"], false);
    // And the junk that looked like a SET of an event now passed (an index
    // that event never had) is gone with it, not kept forever among the
    // out-of-order acks (which are bounded: junk would crowd real ones out).
    let end = stream_row(&app, id).await;
    assert_eq!((end.0, end.1, end.2), (head, 0, Vec::<String>::new()));
    // Acknowledging them again changes nothing.
    let twice = poll_raw(
        &app,
        &key,
        id,
        &json!({"ack": mine_jtis, "returnImmediately": true}),
    )
    .await;
    assert_eq!(twice.json()["sets"], json!({}));
    assert_eq!(stream_row(&app, id).await.0, head);

    // Nothing pending and returnImmediately: the answer comes at once
    // (a long poll would hold it for its full 30 s).
    let started = tokio::time::Instant::now();
    let immediate = poll_raw(&app, &key, id, &json!({"returnImmediately": true})).await;
    assert_eq!(immediate.status, 200);
    assert_eq!(immediate.json()["sets"], json!({}));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );

    // A push stream is not polled.
    let push_id = push["stream_id"].as_str().unwrap();
    let conflict = poll_raw(&app, &key, push_id, &json!({"returnImmediately": true})).await;
    assert_eq!(conflict.status, 409, "{}", text(&conflict));
    // An unknown or malformed stream id.
    let unknown = poll_raw(&app, &key, &uuid::Uuid::new_v4().to_string(), &json!({})).await;
    assert_eq!(unknown.status, 404);
    let malformed = poll_raw(&app, &key, "..%2F..%2Fetc", &json!({})).await;
    assert!(
        malformed.status == 400 || malformed.status == 404,
        "{}",
        text(&malformed)
    );
}

/// How a scripted receiver answers the n-th request (from 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Accept,
    Unavailable,
    /// 503 asking to be left alone for an hour.
    Busy,
    Redirect,
    Stall,
}

/// A push receiver that answers as its script says and records the SETs it
/// accepted (202), in order.
struct Scripted {
    url: String,
    accepted: Arc<Mutex<Vec<Value>>>,
    requests: Arc<AtomicUsize>,
}

impl Scripted {
    async fn spawn(script: fn(usize) -> Answer, redirect_to: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicUsize::new(0));
        let (record, count) = (Arc::clone(&accepted), Arc::clone(&requests));
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (record, count, redirect_to) =
                    (Arc::clone(&record), Arc::clone(&count), redirect_to.clone());
                tokio::spawn(async move {
                    let mut socket = socket;
                    let Some(body) = read_request(&mut socket).await else {
                        return;
                    };
                    let answer = script(count.fetch_add(1, Ordering::SeqCst));
                    let reply = match answer {
                        Answer::Accept => {
                            record.lock().unwrap().push(payload(&body));
                            "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                                .to_owned()
                        }
                        Answer::Unavailable => "HTTP/1.1 503 Service Unavailable\r\nretry-after: 0\r\n\
                                                content-length: 0\r\nconnection: close\r\n\r\n"
                            .to_owned(),
                        Answer::Busy => "HTTP/1.1 503 Service Unavailable\r\nretry-after: 3600\r\n\
                                         content-length: 0\r\nconnection: close\r\n\r\n"
                            .to_owned(),
                        Answer::Redirect => format!(
                            "HTTP/1.1 302 Found\r\nlocation: {redirect_to}\r\ncontent-length: 0\r\n\
                             connection: close\r\n\r\n"
                        ),
                        Answer::Stall => {
                            // Holds on until authd gives up and closes.
                            let mut rest = [0u8; 64];
                            while matches!(socket.read(&mut rest).await, Ok(n) if n > 0) {}
                            return;
                        }
                    };
                    let _ = socket.write_all(reply.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self {
            url: format!("http://{addr}/events"),
            accepted,
            requests,
        }
    }

    fn accepted(&self) -> Vec<Value> {
        self.accepted.lock().unwrap().clone()
    }

    async fn wait_for(&self, count: usize) -> Vec<Value> {
        eventually(|| async { self.accepted().len() >= count }).await;
        self.accepted()
    }
}

/// Reads one request (head and a Content-Length body); its body.
async fn read_request(socket: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some(String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned())
}

/// A SET's claims (the receiver here checks order and identity, not the
/// signature: receiver.py does that in the other tests).
fn payload(set: &str) -> Value {
    let claims = set.split('.').nth(1).unwrap_or("");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

/// Fails the first three deliveries and the fifth.
fn unavailable_for_a_while(n: usize) -> Answer {
    if n < 3 || n == 4 {
        Answer::Unavailable
    } else {
        Answer::Accept
    }
}

fn redirects_for_a_while(n: usize) -> Answer {
    if n < 2 || n == 3 {
        Answer::Redirect
    } else {
        Answer::Accept
    }
}

fn stalls_for_a_while(n: usize) -> Answer {
    if n < 2 || n == 3 {
        Answer::Stall
    } else {
        Answer::Accept
    }
}

#[tokio::test]
async fn receivers_that_fail_redirect_or_stall_get_every_set_once_in_order_once_they_behave() {
    let app = spawn_app_with(|c| {
        c.ssf_allow_private = true;
        c.ssf_push_timeout = Duration::from_millis(500);
        c.ssf_retry_max = Duration::from_secs(1);
    })
    .await;
    let key = app.service_key("receiver-a", &["events.receive"]).await;
    let admin = admin_key(&app).await;
    let (target, redirected) = counting_listener().await;
    let target = format!("http://{target}/elsewhere");
    let receivers = [
        (
            "503",
            Scripted::spawn(unavailable_for_a_while, target.clone()).await,
        ),
        (
            "302",
            Scripted::spawn(redirects_for_a_while, target.clone()).await,
        ),
        ("stall", Scripted::spawn(stalls_for_a_while, target.clone()).await),
    ];
    let mut streams = Vec::new();
    for (_, receiver) in &receivers {
        let stream = create_stream(
            &app,
            &key,
            &json!({"events_requested": account_events(),
                    "delivery": {"method": PUSH, "endpoint_url": receiver.url}}),
        )
        .await;
        streams.push(stream["stream_id"].as_str().unwrap().to_owned());
    }

    let first = disable_and_enable(&app, &admin).await;
    let second = disable_and_enable(&app, &admin).await;
    // Closes each record: nothing is sent after it but what follows it.
    for id in &streams {
        verify(&app, &key, id, "last").await;
    }

    for ((name, receiver), id) in receivers.iter().zip(&streams) {
        // The verification was queued after the four events but, as a
        // stream's own message, goes before what is still pending: where
        // it lands depends on how far delivery got. Everything else is in
        // log order.
        let got = receiver.wait_for(5).await;
        assert_eq!(got.len(), 5, "{name}: {got:#?}");
        let verification: Vec<&Value> = got.iter().filter(|s| event_type(s) == VERIFICATION).collect();
        assert_eq!(verification.len(), 1, "{name}: {got:#?}");
        let account: Vec<&Value> = got.iter().filter(|s| event_type(s) != VERIFICATION).collect();
        assert_eq!(
            event_types(account.iter().copied()),
            [
                ACCOUNT_DISABLED,
                ACCOUNT_ENABLED,
                ACCOUNT_DISABLED,
                ACCOUNT_ENABLED
            ],
            "{name}: {got:#?}"
        );
        let subjects: Vec<Option<&str>> = account.iter().map(|s| subject(s)).collect();
        assert_eq!(
            subjects,
            [
                Some(first.as_str()),
                Some(first.as_str()),
                Some(second.as_str()),
                Some(second.as_str())
            ],
            "{name}"
        );
        let jtis: Vec<&str> = got.iter().map(|s| s["jti"].as_str().unwrap()).collect();
        let unique: std::collections::HashSet<&&str> = jtis.iter().collect();
        assert_eq!(unique.len(), jtis.len(), "{name}: a SET accepted twice: {jtis:?}");
        // Every attempt that failed was retried; none accepted twice.
        assert!(receiver.requests.load(Ordering::SeqCst) >= 8, "{name}");
        let (cursor, sets, acked, last_error) = stream_row(&app, id).await;
        assert_eq!((sets, acked, last_error), (0, vec![], None), "{name}");
        let (head,): (i64,) = sqlx::query_as("SELECT last_event_id FROM revocation_log")
            .fetch_one(&app.db)
            .await
            .unwrap();
        assert!(cursor <= head, "{name}");
    }
    assert_eq!(redirected.load(Ordering::SeqCst), 0, "a redirect was followed");
    // Once more, to be sure nothing else trickles in: one more change, and
    // each receiver gets exactly it.
    let third = disable_and_enable(&app, &admin).await;
    for (name, receiver) in &receivers {
        let got = receiver.wait_for(7).await;
        assert_eq!(got.len(), 7, "{name}: {got:#?}");
        assert_eq!(subject(&got[5]), Some(third.as_str()), "{name}");
        assert_eq!(subject(&got[6]), Some(third.as_str()), "{name}");
    }
}

fn always_busy(_: usize) -> Answer {
    Answer::Busy
}

fn always_accepts(_: usize) -> Answer {
    Answer::Accept
}

#[tokio::test]
async fn a_paused_streams_failing_receiver_waits_its_backoff_whatever_happens_in_the_log() {
    let app = spawn_app_with(|c| c.ssf_allow_private = true).await;
    let key = app.service_key("receiver-a", &["events.receive"]).await;
    let admin = admin_key(&app).await;
    let busy = Scripted::spawn(always_busy, String::new()).await;
    let fine = Scripted::spawn(always_accepts, String::new()).await;
    let mut ids = Vec::new();
    for receiver in [&busy, &fine] {
        let stream = create_stream(
            &app,
            &key,
            &json!({"events_requested": account_events(),
                    "delivery": {"method": PUSH, "endpoint_url": receiver.url}}),
        )
        .await;
        ids.push(stream["stream_id"].as_str().unwrap().to_owned());
    }
    // The pause is said to the busy receiver, which asks for an hour.
    let paused = ssf(
        &app,
        "POST",
        "/ssf/status",
        &key,
        Some(&json!({"stream_id": ids[0], "status": "paused"})),
    )
    .await;
    assert_eq!(paused.status, 200);
    assert!(eventually(|| async { busy.requests.load(Ordering::SeqCst) >= 1 }).await);
    assert!(
        eventually(|| async { stream_row(&app, &ids[0]).await.3.is_some() }).await,
        "the failure was recorded"
    );

    // Every change in the log wakes every stream's task; the paused one
    // must still wait out its back-off rather than try again each time.
    for _ in 0..5 {
        disable_and_enable(&app, &admin).await;
    }
    let got = fine.wait_for(10).await;
    assert_eq!(got.len(), 10);
    assert_eq!(
        busy.requests.load(Ordering::SeqCst),
        1,
        "the paused stream's receiver was asked again within its Retry-After"
    );
}

#[tokio::test]
async fn verification_requests_a_receiver_does_not_take_are_bounded() {
    let app = spawn_app().await;
    let key = app.service_key("receiver-a", &["events.receive"]).await;
    let stream = create_stream(&app, &key, &json!({"delivery": {"method": POLL}})).await;
    let id = stream["stream_id"].as_str().unwrap();
    let body = json!({"stream_id": id, "state": "s"});
    let verify = || ssf(&app, "POST", "/ssf/verify", &key, Some(&body));
    for _ in 0..100 {
        assert_eq!(verify().await.status, 204);
    }
    // Never polled: the 101st waits for the receiver to take them.
    let refused = verify().await;
    assert_eq!(refused.status, 429, "{}", text(&refused));
    assert!(refused.header("retry-after").is_some());
    assert!(text(&refused).contains("verification"), "{}", text(&refused));
    let (pending,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM ssf_stream_messages WHERE stream_id = $1::uuid")
            .bind(id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(pending, 100);

    // Taken and acknowledged: the receiver may ask again.
    let polled = poll_raw(
        &app,
        &key,
        id,
        &json!({"maxEvents": 1000, "returnImmediately": true}),
    )
    .await;
    let taken = jtis(&polled.json());
    assert_eq!(taken.len(), 100);
    let acked = poll_raw(&app, &key, id, &json!({"ack": taken, "returnImmediately": true})).await;
    assert_eq!(acked.json()["sets"], json!({}));
    assert_eq!(verify().await.status, 204);
}

#[tokio::test]
async fn nothing_of_the_log_reaches_a_receiver_between_paused_and_enabled_under_load() {
    let app = spawn_app_with(|c| c.ssf_allow_private = true).await;
    let key = app.service_key("receiver-a", &["events.receive"]).await;
    let admin = admin_key(&app).await;
    let receiver = Scripted::spawn(always_accepts, String::new()).await;
    let stream = create_stream(
        &app,
        &key,
        &json!({"events_requested": account_events(),
                "delivery": {"method": PUSH, "endpoint_url": receiver.url}}),
    )
    .await;
    let id = stream["stream_id"].as_str().unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let changes = async {
        while !stop.load(Ordering::SeqCst) {
            disable_and_enable(&app, &admin).await;
        }
    };
    let flips = async {
        for status in ["paused", "enabled"].iter().cycle().take(60) {
            let response = ssf(
                &app,
                "POST",
                "/ssf/status",
                &key,
                Some(&json!({"stream_id": id, "status": status})),
            )
            .await;
            assert_eq!(response.status, 200);
            // Let some of the log through between two flips.
            let seen = receiver.accepted().len();
            eventually(|| async { receiver.accepted().len() > seen }).await;
        }
        stop.store(true, Ordering::SeqCst);
    };
    tokio::join!(changes, flips);
    verify(&app, &key, id, "end").await;
    assert!(
        eventually(|| async {
            receiver
                .accepted()
                .iter()
                .any(|s| s["events"][VERIFICATION]["state"] == "end")
        })
        .await
    );
    let got = receiver.accepted();
    let mut paused = false;
    let mut flips = 0;
    for (i, set) in got.iter().enumerate() {
        match event_type(set).as_str() {
            STREAM_UPDATED => {
                flips += 1;
                paused = set["events"][STREAM_UPDATED]["status"] == "paused";
            }
            VERIFICATION => {}
            other => assert!(
                !paused,
                "SET {i} ({other}) sent while paused: {:?}",
                got[i.saturating_sub(4)..=i]
                    .iter()
                    .map(|s| (
                        event_type(s),
                        s["events"][STREAM_UPDATED]["status"].clone(),
                        s["jti"].clone()
                    ))
                    .collect::<Vec<_>>()
            ),
        }
    }
    assert_eq!(flips, 60);
}
