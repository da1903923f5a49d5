//! The Prometheus endpoint: what it counts after real calls, that promtool
//! accepts the page, and that a real Prometheus server scrapes it.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use authd::config::Config;
use authd::pb::auth::v1 as pb;
use secrecy::SecretString;
use tokio::io::AsyncWriteExt as _;
use tonic::Code;

use crate::helpers::*;
use crate::passkey_kit::{SoftKey, passkey_login};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// What Prometheus sends.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

pub(crate) struct Page {
    status: u16,
    content_type: String,
    pub(crate) body: String,
}

/// One HTTP/1.0 GET: the server closes the connection after its answer, so
/// reading to the end reads exactly that answer (no chunking either).
async fn http_get(addr: SocketAddr, target: &str, accept: Option<&str>) -> std::io::Result<Page> {
    let target: &'static str = Box::leak(target.to_owned().into_boxed_str());
    let mut request = crate::http1::Request::new("GET", target);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.try_send(addr).await?;
    Ok(Page {
        status: response.status,
        content_type: response.header("content-type").unwrap_or_default().to_owned(),
        body: String::from_utf8_lossy(&response.body).into_owned(),
    })
}

pub(crate) async fn scrape(app: &TestApp, accept: Option<&str>) -> Page {
    let addr = app.metrics_addr.expect("metrics listener");
    let page = tokio::time::timeout(Duration::from_secs(10), http_get(addr, "/metrics", accept))
        .await
        .expect("a scrape within 10 s")
        .expect("a scrape");
    assert_eq!(page.status, 200, "{}", page.body);
    page
}

/// The value of the sample whose name and labels are exactly `series`.
pub(crate) fn value(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

#[track_caller]
fn assert_value(page: &str, series: &str, expected: f64) {
    assert_eq!(value(page, series), Some(expected), "{series} in\n{page}");
}

pub(crate) fn with_metrics(c: &mut Config) {
    c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
}

/// A port nothing listens on, for an SMTP server that refuses every delivery.
async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// A disabled or unverified account's right password is an outcome of its
/// own, not a server error: alerts on `error` must not fire on them.
#[tokio::test]
async fn logins_refused_for_the_accounts_state_have_their_own_outcomes() {
    let app = spawn_app_with(|c| {
        with_metrics(c);
        c.require_verified_email = true;
    })
    .await;
    let unverified = fresh_email();
    app.register(&unverified, PASSWORD).await;
    let disabled = fresh_email();
    app.register(&disabled, PASSWORD).await;
    sqlx::query("UPDATE users SET email_verified = true, disabled_at = now() WHERE email = $1")
        .bind(&disabled)
        .execute(&app.db)
        .await
        .unwrap();
    assert_error(
        app.login(&unverified, PASSWORD).await,
        Code::FailedPrecondition,
        "EMAIL_NOT_VERIFIED",
    );
    assert_error(
        app.login(&disabled, PASSWORD).await,
        Code::PermissionDenied,
        "ACCOUNT_DISABLED",
    );
    let page = scrape(&app, None).await;
    let text = &page.body;
    assert_value(text, r#"authd_logins_total{outcome="email_not_verified"}"#, 1.0);
    assert_value(text, r#"authd_logins_total{outcome="account_disabled"}"#, 1.0);
    assert_value(text, r#"authd_logins_total{outcome="error"}"#, 0.0);
}

/// While the SMTP server takes no mail, a pass tries one message and the
/// passes back off: a backlog is not read and retried whole every poll.
/// And a message is found by its id, not by a walk along the pending index.
#[tokio::test]
async fn an_smtp_outage_tries_one_message_a_pass_not_the_whole_backlog() {
    let smtp_port = closed_port().await;
    let app = spawn_app_with(|c| {
        with_metrics(c);
        c.smtp_url = Some(SecretString::from(format!("smtp://127.0.0.1:{smtp_port}")));
        c.mail_poll_interval = Duration::from_millis(100);
        c.mail_retry_base = Duration::from_millis(100);
    })
    .await;
    sqlx::query(
        "INSERT INTO email_outbox
             (id, kind, recipient, subject, body_text, body_html, created_at, expires_at, next_attempt_at)
         SELECT gen_random_uuid(), 'password_changed', 'user' || n || '@example.com', 'Changed', 'text',
                '<p>html</p>', now(), now() + interval '1 hour', now()
           FROM generate_series(1, 2000) n",
    )
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::raw_sql("ANALYZE email_outbox")
        .execute(&app.db)
        .await
        .unwrap();

    // A message's outcome is written by its id, whatever the backlog.
    let mut conn = app.db.acquire().await.unwrap();
    sqlx::raw_sql(
        "SET plan_cache_mode = force_generic_plan;
         PREPARE retry(uuid, timestamptz, text) AS
           UPDATE email_outbox SET next_attempt_at = $2, last_error = $3
            WHERE id = $1 AND sent_at IS NULL AND discarded_at IS NULL",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    let plan: Vec<String> = sqlx::query_scalar("EXPLAIN EXECUTE retry(gen_random_uuid(), now(), 'e')")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("email_outbox_pkey"), "{plan}");

    // Two seconds of outage: before, every message of the backlog was
    // tried (and its row read and written) on the first pass alone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let attempts: i64 = sqlx::query_scalar("SELECT coalesce(sum(attempts), 0)::bigint FROM email_outbox")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!((1..=20).contains(&attempts), "{attempts} attempts");
    let page = scrape(&app, None).await;
    let failed = value(&page.body, "authd_outbox_delivery_failures_total");
    assert!(failed.is_some_and(|f| (1.0..=20.0).contains(&f)), "{failed:?}");
}

/// ChangeEmail and DeleteMe check the password on the Login back-off, and a
/// call it refuses counts on the page as ChangePassword's does.
#[tokio::test]
async fn change_email_and_delete_me_count_their_throttled_calls() {
    let app = spawn_app_with(with_metrics).await;
    let email = fresh_email();
    app.register(&email, PASSWORD).await;
    let tokens = app.tokens_of(&email).await;
    for _ in 0..6 {
        assert_error(
            app.login(&email, "wrong").await,
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
        );
    }
    let page = scrape(&app, None).await;
    assert_value(&page.body, r#"authd_throttled_total{kind="login_backoff"}"#, 0.0);
    assert_error(
        crate::lifecycle::change_email(&app, &tokens.access_token, &fresh_email(), "wrong").await,
        Code::ResourceExhausted,
        "THROTTLED",
    );
    let page = scrape(&app, None).await;
    assert_value(&page.body, r#"authd_throttled_total{kind="login_backoff"}"#, 1.0);
    assert_error(
        app.client
            .clone()
            .delete_me(with_bearer(
                pb::DeleteMeRequest {
                    current_password: "wrong".into(),
                },
                &tokens.access_token,
            ))
            .await,
        Code::ResourceExhausted,
        "THROTTLED",
    );
    let page = scrape(&app, None).await;
    assert_value(&page.body, r#"authd_throttled_total{kind="login_backoff"}"#, 2.0);
}

#[tokio::test]
async fn the_page_counts_logins_refreshes_throttling_pools_and_the_outbox() {
    let smtp_port = closed_port().await;
    let app = spawn_app_with(|c| {
        with_metrics(c);
        c.smtp_url = Some(SecretString::from(format!("smtp://127.0.0.1:{smtp_port}")));
        c.mail_poll_interval = Duration::from_millis(100);
        c.mail_retry_base = Duration::from_millis(100);
    })
    .await;

    app.register("ada@example.com", PASSWORD).await;
    let tokens = app.tokens_of("ada@example.com").await;
    // GetMe twice on one session: the database once, then the cache (the
    // cache is on once its listener is up; wait for that).
    let deadline = Instant::now() + Duration::from_secs(10);
    while value(
        &scrape(&app, Some(PROMETHEUS_ACCEPT)).await.body,
        "authd_session_cache_enabled",
    ) != Some(1.0)
    {
        assert!(Instant::now() < deadline, "the session cache never came on");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.get_me(&tokens.access_token).await.unwrap();
    app.get_me(&tokens.access_token).await.unwrap();
    assert_eq!(
        app.login("ada@example.com", "not the password")
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let rotated = app.refresh(&tokens.refresh_token).await.unwrap();
    assert!(!rotated.refresh_token.is_empty());
    assert_error(
        app.refresh(&tokens.refresh_token).await,
        Code::Unauthenticated,
        "REFRESH_TOKEN_REUSED",
    );
    // Six free failures, then the per-account back-off refuses the seventh.
    app.register("bob@example.com", PASSWORD).await;
    for _ in 0..6 {
        assert_eq!(
            app.login("bob@example.com", "wrong").await.unwrap_err().code(),
            Code::Unauthenticated
        );
    }
    assert_error(
        app.login("bob@example.com", "wrong").await,
        Code::ResourceExhausted,
        "THROTTLED",
    );
    // A reset mail the (closed) SMTP port refuses stays pending.
    app.forgot_password("ada@example.com").await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(15);
    let page = loop {
        let page = scrape(&app, Some(PROMETHEUS_ACCEPT)).await;
        if value(&page.body, "authd_outbox_delivery_failures_total").is_some_and(|n| n >= 1.0) {
            // The outbox gauges are read at most once a second; the next
            // page has a reading taken after the failure.
            tokio::time::sleep(Duration::from_millis(1100)).await;
            break scrape(&app, Some(PROMETHEUS_ACCEPT)).await;
        }
        assert!(
            Instant::now() < deadline,
            "no delivery failure counted:\n{}",
            page.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(page.content_type, OPENMETRICS);
    let text = &page.body;
    assert!(text.ends_with("# EOF\n"), "{text}");

    let login = "/auth.v1.AuthService/Login";
    let refresh_rpc = "/auth.v1.AuthService/Refresh";
    assert_value(
        text,
        &format!(r#"authd_rpc_calls_total{{method="{login}",code="OK"}}"#),
        1.0,
    );
    assert_value(
        text,
        &format!(r#"authd_rpc_calls_total{{method="{login}",code="UNAUTHENTICATED"}}"#),
        7.0,
    );
    assert_value(
        text,
        &format!(r#"authd_rpc_calls_total{{method="{login}",code="RESOURCE_EXHAUSTED"}}"#),
        1.0,
    );
    assert_value(
        text,
        &format!(r#"authd_rpc_calls_total{{method="{refresh_rpc}",code="OK"}}"#),
        1.0,
    );
    assert_value(
        text,
        &format!(r#"authd_rpc_calls_total{{method="{refresh_rpc}",code="UNAUTHENTICATED"}}"#),
        1.0,
    );
    assert_value(
        text,
        &format!(r#"authd_rpc_duration_seconds_count{{method="{login}"}}"#),
        9.0,
    );
    assert_value(
        text,
        &format!(r#"authd_rpc_duration_seconds_bucket{{le="+Inf",method="{login}"}}"#),
        9.0,
    );
    assert!(
        text.contains("# UNIT authd_rpc_duration_seconds seconds"),
        "{text}"
    );

    assert_value(text, r#"authd_logins_total{outcome="success"}"#, 1.0);
    assert_value(text, r#"authd_logins_total{outcome="bad_credentials"}"#, 7.0);
    assert_value(text, r#"authd_logins_total{outcome="throttled"}"#, 1.0);
    assert_value(text, r#"authd_logins_total{outcome="invalid_argument"}"#, 0.0);
    assert_value(text, r#"authd_logins_total{outcome="unavailable"}"#, 0.0);
    assert_value(text, r#"authd_logins_total{outcome="account_disabled"}"#, 0.0);
    assert_value(text, r#"authd_logins_total{outcome="email_not_verified"}"#, 0.0);
    assert_value(text, r#"authd_logins_total{outcome="error"}"#, 0.0);
    assert_value(text, "authd_refresh_rotations_total", 1.0);
    assert_value(text, "authd_refresh_reuse_detections_total", 1.0);
    assert_value(text, r#"authd_throttled_total{kind="login_backoff"}"#, 1.0);
    assert_value(text, r#"authd_throttled_total{kind="peer_limit"}"#, 0.0);
    assert_value(text, r#"authd_throttled_total{kind="reset_guesses"}"#, 0.0);

    // Warm-up, two registrations (policy check and hash each), nine logins.
    let waits = value(text, "authd_password_hash_queue_wait_seconds_count").unwrap();
    assert!(waits >= 13.0, "{waits} waits in\n{text}");
    assert_value(text, "authd_password_hash_in_flight", 0.0);
    #[allow(clippy::cast_precision_loss)]
    let workers = app.config.hash_workers as f64;
    assert_value(text, "authd_password_hash_workers", workers);

    // The reset mail and the verification mails of the two registrations.
    assert_value(text, "authd_outbox_pending", 3.0);
    let age = value(text, "authd_outbox_oldest_pending_age_seconds").unwrap();
    assert!((0.0..60.0).contains(&age), "{age}");

    assert_value(text, "authd_db_pool_connections_max", 5.0);
    let in_use = value(text, "authd_db_pool_connections_in_use").unwrap();
    let idle = value(text, "authd_db_pool_connections_idle").unwrap();
    assert!(
        in_use >= 0.0 && idle >= 0.0 && in_use + idle <= 5.0,
        "{in_use} + {idle}"
    );

    assert!(
        value(text, "authd_session_cache_hits_total").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        value(text, "authd_session_cache_misses_total").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_value(text, "authd_session_cache_enabled", 1.0);

    assert_value(
        text,
        &format!(r#"authd_build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION")),
        1.0,
    );

    // Without OpenMetrics in Accept, the Prometheus text format.
    let plain = scrape(&app, None).await;
    assert_eq!(plain.content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(
        plain.body.contains("# TYPE authd_rpc_calls_total counter"),
        "{}",
        plain.body
    );
    assert_value(&plain.body, r#"authd_logins_total{outcome="success"}"#, 1.0);

    let other = http_get(app.metrics_addr.unwrap(), "/", None).await.unwrap();
    assert_eq!(other.status, 404);

    // promtool reads the Prometheus text format only (an OpenMetrics `info`
    // is an unknown type to it), which is what it gets from authd, like curl;
    // the OpenMetrics page is parsed by a real Prometheus in the next test.
    match promtool_check(&plain.body).await {
        None => skip_test("promtool check metrics: no promtool (apt-get install prometheus)"),
        Some((ok, report)) => assert!(ok, "promtool refused the page: {report}\n{}", plain.body),
    }
}

/// `promtool check metrics` on `page` (its lint rules included): whether it passed and what it said,
/// or `None` without promtool.
async fn promtool_check(page: &str) -> Option<(bool, String)> {
    let mut child = match tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("running promtool: {e}"),
    };
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(page.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("promtool within 30 s")
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), report))
}

#[tokio::test]
async fn calls_refused_by_the_peer_limit_are_counted() {
    let app = spawn_app_with(|c| {
        with_metrics(c);
        c.peer_rate_limit = 1.0;
    })
    .await;
    // The bucket holds one call: the second at once is refused.
    let _ = app.login("nobody@example.com", "whatever it is").await;
    assert_error(
        app.login("nobody@example.com", "whatever it is").await,
        Code::ResourceExhausted,
        "THROTTLED",
    );
    let page = scrape(&app, Some(PROMETHEUS_ACCEPT)).await;
    assert_value(&page.body, r#"authd_throttled_total{kind="peer_limit"}"#, 1.0);
    assert_value(
        &page.body,
        r#"authd_rpc_calls_total{method="/auth.v1.AuthService/Login",code="RESOURCE_EXHAUSTED"}"#,
        1.0,
    );
    // The refusal came before the handler: no login outcome for it.
    assert_value(&page.body, r#"authd_logins_total{outcome="throttled"}"#, 0.0);
}

/// Failed passkey logins count as bad credentials; once the client's
/// failures are throttled, each refusal counts under its own kind, not as
/// the password's back-off, and not as a login outcome.
#[tokio::test]
async fn failed_passkey_logins_and_their_throttling_are_counted() {
    let app = spawn_app_with(with_metrics).await;
    let (_, tokens) = app.signed_in_user().await;
    let mut client = app.client.clone();
    // A key whose credential authd never stored: the ceremony is started,
    // the authenticator makes its key, the registration is never finished.
    let started = client
        .start_passkey_registration(with_bearer(
            pb::StartPasskeyRegistrationRequest::default(),
            &tokens.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut stranger = SoftKey::new();
    stranger.create(started.options.as_ref().unwrap());
    // An answer to a ceremony authd does not know (expired, or used): the
    // client's proof did not hold, which is no server error.
    let answer = {
        let started = client
            .start_passkey_login(pb::StartPasskeyLoginRequest::default())
            .await
            .unwrap()
            .into_inner();
        stranger.get(started.options.as_ref().unwrap())
    };
    let expired = client
        .finish_passkey_login(pb::FinishPasskeyLoginRequest {
            ceremony_id: "A".repeat(43),
            credential: Some(crate::passkey_kit::to_struct(answer)),
        })
        .await;
    assert_error(expired, Code::NotFound, "CEREMONY_EXPIRED");
    let mut refused = 0.0;
    let throttled = loop {
        match passkey_login(&app, &mut stranger).await {
            Err(s) if s.code() == Code::ResourceExhausted => break s,
            other => assert_error(other, Code::Unauthenticated, "PASSKEY_INVALID"),
        };
        refused += 1.0;
        assert!(refused < 20.0, "failed passkey logins were never throttled");
    };
    assert_eq!(reason(&throttled), "THROTTLED");

    let page = scrape(&app, Some(PROMETHEUS_ACCEPT)).await;
    let text = &page.body;
    assert_value(text, r#"authd_throttled_total{kind="passkey_failures"}"#, 1.0);
    assert_value(text, r#"authd_throttled_total{kind="login_backoff"}"#, 0.0);
    assert_value(
        text,
        r#"authd_logins_total{outcome="bad_credentials"}"#,
        refused + 1.0,
    );
    assert_value(text, r#"authd_logins_total{outcome="throttled"}"#, 0.0);
    assert_value(text, r#"authd_logins_total{outcome="error"}"#, 0.0);
    let finish = "/auth.v1.AuthService/FinishPasskeyLogin";
    assert_value(
        text,
        &format!(r#"authd_rpc_calls_total{{method="{finish}",code="UNAUTHENTICATED"}}"#),
        refused,
    );
    assert_value(
        text,
        &format!(r#"authd_rpc_calls_total{{method="{finish}",code="RESOURCE_EXHAUSTED"}}"#),
        1.0,
    );
}

/// A real Prometheus server with a throwaway configuration and storage,
/// stopped when dropped.
struct Prometheus {
    child: tokio::process::Child,
    addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl Prometheus {
    /// `None` when the binary is not installed.
    async fn start(target: SocketAddr) -> Option<Self> {
        let binary = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .into_iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.is_file())?;
        let dir = scratch_dir("prometheus");
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: authd\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", closed_port().await).parse().unwrap();
        let child = tokio::process::Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Some(Self { child, addr, dir })
    }

    /// The samples of an instant query, as (labels, value) pairs; empty
    /// while Prometheus is starting or has not scraped yet.
    async fn query(&self, promql: &str) -> Vec<(serde_json::Value, String)> {
        let target = format!("/api/v1/query?query={}", percent_encode(promql));
        let Ok(Ok(page)) =
            tokio::time::timeout(Duration::from_secs(2), http_get(self.addr, &target, None)).await
        else {
            return Vec::new();
        };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&page.body) else {
            return Vec::new();
        };
        json["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r["metric"].clone(),
                    r["value"][1].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_page() {
    let app = spawn_app_with(with_metrics).await;
    app.register("prom@example.com", PASSWORD).await;
    app.login("prom@example.com", PASSWORD).await.unwrap();
    let Some(prometheus) = Prometheus::start(app.metrics_addr.unwrap()).await else {
        skip_test("real Prometheus scrape: no prometheus binary (apt-get install prometheus)");
        return;
    };

    let deadline = Instant::now() + Duration::from_secs(20);
    let build = loop {
        let build = prometheus.query("authd_build_info").await;
        if !build.is_empty() {
            break build;
        }
        assert!(Instant::now() < deadline, "Prometheus never scraped authd");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (labels, value) = &build[0];
    assert_eq!(value, "1");
    assert_eq!(labels["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(labels["job"], "authd");

    let up = prometheus.query(r#"up{job="authd"}"#).await;
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0].1, "1", "the scrape succeeded");
    let logins = prometheus.query(r#"authd_logins_total{outcome="success"}"#).await;
    assert_eq!(logins.len(), 1, "{logins:?}");
    assert_eq!(logins[0].1, "1");
    let latency = prometheus
        .query(r#"authd_rpc_duration_seconds_count{method="/auth.v1.AuthService/Login"}"#)
        .await;
    assert_eq!(latency.len(), 1, "{latency:?}");
}

/// Waits until the in-memory caches answer (their change listener proved
/// itself): what a client past its failure limit is served from. The app
/// needs a metrics listener.
pub async fn caches_on(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while value(&scrape(app, None).await.body, "authd_session_cache_enabled") != Some(1.0) {
        assert!(Instant::now() < deadline, "the caches never came on");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
