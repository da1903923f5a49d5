use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use authd::config::Argon2Settings;
use authd::config::Config;
use authd::crypto::opaque::{NewToken, TokenKind};
use authd::local_pg::{Durability, LocalPostgres};
use authd::pb::auth::v1::{
    self as pb, admin_service_client::AdminServiceClient, auth_service_client::AuthServiceClient,
};
use authd::startup::Application;
use secrecy::SecretString;
use sqlx::PgPool;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

pub type Client = AuthServiceClient<Channel>;
pub type AdminClient = AdminServiceClient<Channel>;

/// One PostgreSQL cluster per test binary; it stops (and its folder goes)
/// when the binary exits.
fn cluster() -> &'static LocalPostgres {
    static CLUSTER: OnceLock<LocalPostgres> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let root = scratch_dir("cluster");
        LocalPostgres::start(&root, Durability::Throwaway).expect("starting the test PostgreSQL cluster")
    })
}

/// A PostgreSQL cluster of the test's own, with an empty `authd` database:
/// for tests that stop or freeze it, or change its settings, which on the
/// shared one would break every other test.
pub async fn own_cluster(what: &str) -> LocalPostgres {
    let root = scratch_dir(what);
    let pg = tokio::task::spawn_blocking(move || LocalPostgres::start(&root, Durability::Throwaway))
        .await
        .unwrap()
        .unwrap();
    pg.ensure_database("authd").await.unwrap();
    pg
}

pub fn scratch_dir(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!("authd-test-{what}-{}", uuid::Uuid::new_v4().simple()))
}

/// Cheap argon2 parameters: the suite hashes hundreds of passwords on two
/// cores. Parameter handling itself is unit-tested with other values.
pub const TEST_ARGON2: Argon2Settings = Argon2Settings {
    memory_kib: 4096,
    iterations: 1,
    parallelism: 1,
};

/// The event retention of test apps (see `spawn_app_with`).
pub const TEST_EVENT_RETENTION: Duration = Duration::from_secs(86_400);

pub struct TestApp {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub client: Client,
    pub db: PgPool,
    pub config: Config,
    /// PKCS#8 PEM of the signing key, so tests can forge tokens with it.
    pub signing_pem: String,
    /// A key with `tokens.introspect`, made on first use.
    introspect_key: tokio::sync::OnceCell<String>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A server whose issuer is its own address (`http://127.0.0.1:PORT`), as
/// authd's development default is: its discovery documents name endpoints
/// that answer, so off-the-shelf OAuth clients can find everything from the
/// issuer alone.
pub async fn spawn_app_with_issuer(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let listen = crate::smtp::reserve_port();
    spawn_app_with(|c| {
        c.listen = listen;
        c.issuer = format!("http://{listen}");
        tweak(c);
    })
    .await
}

/// A fresh database on the shared cluster and a server for it.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let url = fresh_database().await;
    spawn_app_on(&url, tweak).await
}

/// The URL of a new, empty database on the shared cluster.
pub async fn fresh_database() -> String {
    let database = format!("t_{}", uuid::Uuid::new_v4().simple());
    let pg = tokio::task::spawn_blocking(cluster).await.unwrap();
    pg.ensure_database(&database).await.unwrap();
    pg.url(&database)
}

/// A server on an existing database (a second replica, or another cluster).
pub async fn spawn_app_on(database_url: &str, tweak: impl FnOnce(&mut Config)) -> TestApp {
    init_logs();
    let data_dir = scratch_dir("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let signing_pem = authd::crypto::keys::generate_ed25519_pem().unwrap();
    let key_path = data_dir.join("signing.pem");
    std::fs::write(&key_path, &signing_pem).unwrap();
    // A data key of the test's own, as an operator configures one; tests
    // read `config.data_keys` to seal or rotate.
    let data_key_path = data_dir.join("data-key");
    authd::crypto::data_keys::generate_key_file(&data_key_path).unwrap();
    let mut config = Config {
        database_url: Some(SecretString::from(database_url.to_owned())),
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir,
        issuer: "https://authd.test".into(),
        audience: "test-services".into(),
        signing_keys: vec![key_path],
        data_keys: vec![data_key_path],
        argon2: TEST_ARGON2,
        db_max_connections: 5,
        health_check_interval: Duration::from_millis(200),
        peer_rate_limit: 0.0,
        // No load balancer to tell; tests of the grace period set their own.
        shutdown_grace: Duration::ZERO,
        // A day rather than the default week: the retention tests age
        // events past it (`prune_revocations_through`).
        event_retention: TEST_EVENT_RETENTION,
        ..Config::default()
    };
    tweak(&mut config);
    let pem_paths = config.signing_keys.clone();
    let signing_pem = match pem_paths.first() {
        Some(p) => std::fs::read_to_string(p).unwrap_or(signing_pem),
        None => signing_pem,
    };
    let app = Application::build(config.clone())
        .await
        .expect("building the app");
    let addr = app.local_addr();
    let metrics_addr = app.metrics_addr();
    let db = app.database().clone();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    let client = connect(addr).await;
    TestApp {
        addr,
        metrics_addr,
        client,
        db,
        config,
        signing_pem,
        introspect_key: tokio::sync::OnceCell::new(),
        shutdown: Some(tx),
        server: Some(server),
    }
}

pub async fn connect(addr: SocketAddr) -> Client {
    // Lazy, so a server that speaks TLS can be spawned before its client.
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    AuthServiceClient::new(channel)
}

fn init_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            authd::telemetry::init(authd::config::LogFormat::Pretty);
        } else {
            capture_logs();
        }
    });
}

/// Everything logged at DEBUG and above by any part of this test binary
/// (authd, tonic, h2, sqlx…), so tests can search it for secrets.
static CAPTURED_LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());
/// Beyond this the older half is dropped: the whole suite logs into one
/// buffer, and a test only needs the lines of the last few seconds.
const CAPTURE_LIMIT: usize = 64 * 1024 * 1024;

/// `None` when TEST_LOG sends the logs to stdout instead.
pub fn captured_logs() -> Option<String> {
    if std::env::var_os("TEST_LOG").is_some() {
        return None;
    }
    let logs = CAPTURED_LOGS.lock().unwrap_or_else(|e| e.into_inner());
    Some(String::from_utf8_lossy(&logs).into_owned())
}

struct CaptureWriter;

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut logs = CAPTURED_LOGS.lock().unwrap_or_else(|e| e.into_inner());
        if logs.len() + buf.len() > CAPTURE_LIMIT {
            let half = logs.len() / 2;
            logs.drain(..half);
        }
        logs.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    use tracing_subscriber::layer::SubscriberExt as _;
    // ErrorLayer as in production, so INTERNAL errors carry their spans.
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(|| CaptureWriter)
        .finish()
        .with(tracing_error::ErrorLayer::default());
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// Gives every committed pending event its id now, as a replica's
/// numbering task does right after the commit (`jobs::event_numbering`):
/// for tests that record events with SQL, or read the log right after a
/// call, without waiting for the task. Another numberer may hold the
/// counter meanwhile; when this returns nothing committed is pending.
pub async fn number_events(db: &sqlx::PgPool) {
    loop {
        let head: i64 = sqlx::query_scalar("SELECT authd_number_events(1000000)")
            .fetch_one(db)
            .await
            .unwrap();
        match head {
            0 => return,
            h if h < 0 => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            _ => {}
        }
    }
}

impl TestApp {
    /// Ages the revocation events up to `through` (all with `i64::MAX`)
    /// past the 24 h retention and prunes them as the clean-up does;
    /// returns how many went.
    pub async fn prune_revocations_through(&self, through: i64) -> u64 {
        number_events(&self.db).await;
        sqlx::query("UPDATE revocation_events SET occurred_at = now() - interval '25 hours' WHERE id <= $1")
            .bind(through)
            .execute(&self.db)
            .await
            .unwrap();
        authd::db::revocations::prune(
            &self.db,
            chrono::Duration::from_std(TEST_EVENT_RETENTION).unwrap(),
        )
        .await
        .unwrap()
    }

    /// Stops the server gracefully and reports how that went.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.server.take() {
            Some(handle) => handle.await?,
            None => Ok(()),
        }
    }

    pub async fn register(&self, email: &str, password: &str) -> pb::User {
        self.register_as(pb::RegisterRequest {
            email: email.into(),
            password: password.into(),
            ..Default::default()
        })
        .await
    }

    /// Register with every field the request gives; the call must succeed.
    pub async fn register_as(&self, request: pb::RegisterRequest) -> pb::User {
        self.client
            .clone()
            .register(request)
            .await
            .expect("register")
            .into_inner()
            .user
            .expect("user")
    }

    pub async fn login(&self, login: &str, password: &str) -> Result<pb::LoginResponse, Status> {
        self.client
            .clone()
            .login(pb::LoginRequest {
                login: login.into(),
                password: password.into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Registers a fresh account and logs it in; returns its tokens.
    pub async fn signed_in_user(&self) -> (pb::User, pb::TokenPair) {
        let email = format!("user-{}@example.com", uuid::Uuid::new_v4().simple());
        let user = self.register(&email, PASSWORD).await;
        let tokens = self.tokens_of(&email).await;
        (user, tokens)
    }

    /// Logs an existing account with `PASSWORD` in: a further session.
    pub async fn tokens_of(&self, login: &str) -> pb::TokenPair {
        self.login(login, PASSWORD)
            .await
            .expect("login")
            .tokens
            .expect("tokens")
    }

    /// A new service account `name` with `scopes` (stored the way
    /// `authd service-account create` stores it); returns its key.
    pub async fn service_key(&self, name: &str, scopes: &[&str]) -> String {
        let key = NewToken::generate(TokenKind::ServiceKey).unwrap();
        let mut scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        scopes.sort();
        let added =
            authd::db::service_accounts::add_key(&self.db, name, &scopes, &key.hash, chrono::Utc::now())
                .await
                .unwrap();
        assert!(
            !matches!(added, authd::db::service_accounts::KeyAdded::ScopesDiffer { .. }),
            "service account {name} exists with other scopes: {added:?}"
        );
        key.expose().to_owned()
    }

    /// IntrospectToken as a service with `tokens.introspect` calls it.
    pub async fn introspect(&self, access_token: &str) -> Result<pb::IntrospectTokenResponse, Status> {
        let key = self
            .introspect_key
            .get_or_init(|| self.service_key("test-introspector", &["tokens.introspect"]))
            .await;
        self.client
            .clone()
            .introspect_token(with_bearer(
                pb::IntrospectTokenRequest {
                    access_token: access_token.into(),
                },
                key,
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    /// ExchangeToken with `credential` (a service key, or for token
    /// exchange the service's own token) as the bearer.
    pub async fn exchange_token(
        &self,
        credential: &str,
        request: pb::ExchangeTokenRequest,
    ) -> Result<pb::ExchangeTokenResponse, Status> {
        self.client
            .clone()
            .exchange_token(with_bearer(request, credential))
            .await
            .map(tonic::Response::into_inner)
    }

    /// A client of AdminService on this server.
    pub fn admin(&self) -> AdminClient {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_lazy();
        AdminServiceClient::new(channel)
    }

    /// Waits until the account's failed-attempt count is `expected`: refunds
    /// of attempts that checked no password (or a right one whose change
    /// failed) are written by a small task just after the call.
    pub async fn wait_for_counted_failures(&self, user_id: &str, expected: i32) {
        let mut counted = None;
        for _ in 0..150 {
            counted = sqlx::query_scalar::<_, i32>("SELECT failures FROM login_throttle WHERE key = $1")
                .bind(authd::domain::ThrottleKey::account(user_id.parse().unwrap()).as_str())
                .fetch_optional(&self.db)
                .await
                .unwrap();
            if counted == Some(expected) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{counted:?} failed attempts counted for the account, expected {expected}");
    }

    /// Waits until every ForgotPassword request so far has been resolved
    /// (they are, in the background, within milliseconds).
    pub async fn reset_requests_resolved(&self) {
        for _ in 0..500 {
            let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM password_reset_requests")
                .fetch_one(&self.db)
                .await
                .unwrap();
            if pending == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("ForgotPassword requests still unresolved after 5 s");
    }

    /// The URL of this server's database, for a second server or a
    /// connection of the test's own.
    pub fn database_url(&self) -> String {
        use secrecy::ExposeSecret as _;
        self.config
            .database_url
            .as_ref()
            .expect("a database URL")
            .expose_secret()
            .to_owned()
    }

    /// A second server on this server's database with the same signing and
    /// data keys.
    pub async fn replica(&self) -> TestApp {
        let keys = self.config.signing_keys.clone();
        let data_keys = self.config.data_keys.clone();
        spawn_app_on(&self.database_url(), |c| {
            c.signing_keys = keys;
            c.data_keys = data_keys;
        })
        .await
    }

    pub async fn refresh(&self, refresh_token: &str) -> Result<pb::TokenPair, Status> {
        self.client
            .clone()
            .refresh(pb::RefreshRequest {
                refresh_token: refresh_token.into(),
            })
            .await
            .map(|r| r.into_inner().tokens.expect("tokens"))
    }

    pub async fn logout(&self, refresh_token: &str) -> Result<(), Status> {
        self.client
            .clone()
            .logout(pb::LogoutRequest {
                refresh_token: refresh_token.into(),
            })
            .await
            .map(drop)
    }

    pub async fn forgot_password(&self, email: &str) -> Result<(), Status> {
        self.client
            .clone()
            .forgot_password(pb::ForgotPasswordRequest { email: email.into() })
            .await
            .map(drop)
    }

    /// ChangePassword as the session of `access`; returns its renewed tokens.
    pub async fn change_password(
        &self,
        access: &str,
        current: &str,
        new: &str,
    ) -> Result<pb::TokenPair, Status> {
        self.client
            .clone()
            .change_password(with_bearer(
                pb::ChangePasswordRequest {
                    current_password: current.into(),
                    new_password: new.into(),
                },
                access,
            ))
            .await
            .map(|r| r.into_inner().tokens.expect("tokens"))
    }

    /// Every base table of the database, quoted for use in SQL.
    pub async fn base_tables(&self) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT quote_ident(table_name) FROM information_schema.tables
              WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
        )
        .fetch_all(&self.db)
        .await
        .unwrap()
    }

    /// Rows of `table` that hold `needle` as text, or its UTF-8 bytes as hex.
    pub async fn rows_holding_text_or_hex(&self, table: &str, needle: &str) -> i64 {
        sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} t
              WHERE strpos(t::text, $1) > 0 OR strpos(t::text, encode(convert_to($1, 'UTF8'), 'hex')) > 0"
        ))
        .bind(needle)
        .fetch_one(&self.db)
        .await
        .unwrap()
    }

    pub async fn get_me(&self, access_token: &str) -> Result<pb::User, Status> {
        self.client
            .clone()
            .get_me(with_bearer(pb::GetMeRequest {}, access_token))
            .await
            .map(|r| r.into_inner().user.expect("user"))
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = std::fs::remove_dir_all(&self.config.data_dir);
    }
}

pub const PASSWORD: &str = "correct horse battery staple";

pub fn with_bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// The `ErrorInfo.reason` of an error, if it has one.
pub fn reason(status: &Status) -> String {
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

/// Fields named in the error's `BadRequest` details, sorted.
pub fn violated_fields(status: &Status) -> Vec<String> {
    let mut fields: Vec<String> = status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default();
    fields.sort();
    fields
}

#[track_caller]
pub fn assert_error(
    result: Result<impl std::fmt::Debug, Status>,
    code: Code,
    expected_reason: &str,
) -> Status {
    let status = result.expect_err("expected an error");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason(&status), expected_reason, "{status:?}");
    status
}

/// A test whose external tool (Envoy, Python, Node, a validator) is not
/// installed says so on the real stderr (unlike `eprintln!`, which the
/// harness captures, it shows without `--nocapture`) and does nothing. CI sets
/// `AUTHD_TEST_REQUIRE_TOOLS=1`, which makes a missing tool a failure, so a
/// green CI never means "skipped".
pub fn skip_test(why: &str) {
    if std::env::var_os("AUTHD_TEST_REQUIRE_TOOLS").is_some_and(|v| v == "1") {
        panic!("{why} (AUTHD_TEST_REQUIRE_TOOLS=1: tools must be installed)");
    }
    use std::io::Write as _;
    let _ = std::io::stderr().write_all(format!("SKIPPED: {why}\n").as_bytes());
}

/// RFC 8693's grant type and the token type of an access token.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Why an external tool cannot run: `None` when `program args` exits 0.
/// A probe such as `python3 -c "import x"` thus also names a missing module.
pub async fn tool_missing(program: &str, args: &[&str]) -> Option<String> {
    match tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
    {
        Err(e) => Some(format!("{program} cannot run ({e})")),
        Ok(probe) if !probe.status.success() => {
            let error = String::from_utf8_lossy(&probe.stderr);
            let last = error.lines().last().unwrap_or_default();
            Some(format!("{program} {}: {last}", args.join(" ")))
        }
        Ok(_) => None,
    }
}

/// Runs an external client to its end from the repository's root and
/// returns its standard output; fails the test, showing everything the
/// child printed, unless it exits with 0 within `within`.
pub async fn run_tool(
    program: &str,
    args: &[&std::ffi::OsStr],
    envs: &[(&str, &str)],
    within: Duration,
) -> String {
    let child = tokio::process::Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let shown = format!(
        "{program} {}",
        args.join(std::ffi::OsStr::new(" ")).to_string_lossy()
    );
    let output = tokio::time::timeout(within, child)
        .await
        .unwrap_or_else(|_| panic!("{shown} did not finish within {within:?}"))
        .unwrap_or_else(|e| panic!("starting {program}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{shown} failed ({})\n--- stdout\n{stdout}--- stderr\n{stderr}",
        output.status,
    );
    eprint!("{stderr}");
    stdout
}

/// An address no other test uses.
pub fn fresh_email() -> String {
    format!("user-{}@example.com", uuid::Uuid::new_v4().simple())
}

/// Part `index` of a JWT (0 the header, 1 the claims), decoded without any
/// check.
pub fn jwt_part(token: &str, index: usize) -> serde_json::Value {
    use base64::Engine as _;
    let part = token.split('.').nth(index).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// The claims of a JWT, decoded without any check.
pub fn jwt_claims(token: &str) -> serde_json::Value {
    jwt_part(token, 1)
}

/// The header of a JWT, decoded without any check.
pub fn jwt_header(token: &str) -> serde_json::Value {
    jwt_part(token, 0)
}

/// The `sid` claim of an access token.
pub fn session_of(access_token: &str) -> String {
    jwt_claims(access_token)["sid"].as_str().unwrap().to_owned()
}

/// Field → reason of a validation error, sorted by field.
pub fn field_reasons(status: &Status) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.reason))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Expected field → reason pairs, in the shape `field_reasons` returns.
pub fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(f, r)| ((*f).to_owned(), (*r).to_owned()))
        .collect()
}

/// The retry delay a throttled answer carries.
pub fn retry_delay(status: &Status) -> Duration {
    status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo with a delay")
}

pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// kill(1) with signal `name`: the processes signalled belong to this test
/// binary's user (its own servers and PostgreSQL backends).
pub fn signal(pid: impl std::fmt::Display, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// Waits until the `authd serve` child (logging JSON to a piped stdout) says
/// where it listens, then keeps reading its output in the background: a full
/// pipe would stall the server's logging.
pub async fn listening_address(child: &mut tokio::process::Child, within: Duration) -> SocketAddr {
    use tokio::io::AsyncBufReadExt as _;
    let stdout = child.stdout.take().expect("stdout piped");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(within, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let Ok(log) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if log["message"] == "authd listening" {
                return log["addr"].as_str().unwrap().parse().unwrap();
            }
        }
        panic!("authd serve exited before listening");
    })
    .await
    .expect("authd serve did not start listening");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    addr
}

/// Seconds since the epoch, as JWT claims count time.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// base64url without padding, as JWTs encode their parts.
pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWT with `header` and `claims`, signed with the Ed25519 key in `pem`
/// (authd's own, to forge what only a bug could let through, or another).
pub fn sign_ed25519(pem: &str, header: &serde_json::Value, claims: &serde_json::Value) -> String {
    use ed25519_dalek::Signer as _;
    use ed25519_dalek::pkcs8::DecodePrivateKey as _;
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem).unwrap();
    let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let signature = key.sign(input.as_bytes());
    format!("{input}.{}", b64(signature.to_bytes()))
}
