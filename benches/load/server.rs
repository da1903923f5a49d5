//! The authd under load: a throwaway PostgreSQL cluster and the `authd`
//! binary started as a separate process, or one started by hand (`--addr`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use authd::local_pg::{Durability, LocalPostgres};
use sqlx::postgres::PgConnectOptions;
use tonic::transport::Endpoint;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

pub struct Server {
    pub addr: String,
    pub child: Option<tokio::process::Child>,
    pub pid: Option<u32>,
    /// The server's database, for the scenarios that prepare data with SQL.
    pub db: Option<PgConnectOptions>,
    /// The started server's environment, for `authd` commands against it.
    env: Vec<(String, std::ffi::OsString)>,
    log: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    pg: Option<LocalPostgres>,
}

impl Server {
    /// The started server's log (JSON lines), if this run started it.
    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// A server somebody else started and stops.
    pub fn external(addr: String, pid: Option<u32>, db: Option<PgConnectOptions>) -> Self {
        Self {
            addr,
            child: None,
            pid,
            db,
            env: Vec::new(),
            log: None,
            data_dir: None,
            pg: None,
        }
    }
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener.local_addr().expect("local addr").port()
}

/// The authd to start: this build's, or another one named by
/// `AUTHD_LOAD_BINARY` (to measure an older build with the same generator);
/// once [`pin_binary`] ran, the run's own link to it.
pub fn authd_binary() -> std::ffi::OsString {
    match PINNED.get() {
        Some(pinned) => pinned.clone().into(),
        None => built_binary(),
    }
}

fn built_binary() -> std::ffi::OsString {
    std::env::var_os("AUTHD_LOAD_BINARY").unwrap_or_else(|| env!("CARGO_BIN_EXE_authd").into())
}

static PINNED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Makes every later start use a link to (or, across file systems, a copy
/// of) the binary in `dir`, taken now: the target folder may be shared, and
/// a build there replaces the file, which a long run would otherwise pick
/// up halfway (with other migrations, say). Returns the binary's own path.
pub fn pin_binary(dir: &Path) -> PathBuf {
    let built = PathBuf::from(built_binary());
    std::fs::create_dir_all(dir).expect("creating the run's scratch folder");
    let pinned = dir.join("authd");
    let _ = std::fs::remove_file(&pinned);
    if std::fs::hard_link(&built, &pinned).is_err() {
        std::fs::copy(&built, &pinned)
            .unwrap_or_else(|e| panic!("copying {} to {}: {e}", built.display(), pinned.display()));
    }
    let _ = PINNED.set(pinned);
    built
}

/// Starts a throwaway PostgreSQL cluster and authd under `scratch`; call
/// [`wait_until_serving`] before using it.
pub async fn start_server(scratch: &Path, extra_env: &[(String, String)]) -> Server {
    let pg_root = scratch.join("cluster");
    let pg = tokio::task::spawn_blocking(move || LocalPostgres::start(&pg_root, Durability::Throwaway))
        .await
        .unwrap()
        .expect("starting the throwaway PostgreSQL cluster");
    pg.ensure_database("authd_bench")
        .await
        .expect("creating the database");
    let mut server = start_authd(&pg, "authd_bench", scratch, extra_env);
    server.pg = Some(pg);
    server
}

/// Starts authd on `database` of a running cluster, with its data folder
/// and log under `dir` (the cluster is not the server's to stop); call
/// [`wait_until_serving`] before using it.
pub fn start_authd(pg: &LocalPostgres, database: &str, dir: &Path, extra_env: &[(String, String)]) -> Server {
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    // A configured key, as in production (no development-key warning).
    let key = data_dir.join("signing.pem");
    std::fs::write(&key, authd::crypto::keys::generate_ed25519_pem().unwrap()).unwrap();
    let log = dir.join("authd.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut env: Vec<(String, std::ffi::OsString)> = vec![
        ("PATH".into(), std::env::var_os("PATH").unwrap_or_default()),
        ("DATABASE_URL".into(), pg.url(database).into()),
        ("AUTHD_LISTEN".into(), listen.clone().into()),
        ("AUTHD_DATA_DIR".into(), data_dir.clone().into()),
        ("AUTHD_PEER_RATE_LIMIT".into(), "0".into()),
        ("AUTHD_SIGNING_KEYS".into(), key.into()),
        ("AUTHD_LOG_FORMAT".into(), "json".into()),
        ("RUST_LOG".into(), "warn".into()),
    ];
    env.extend(extra_env.iter().map(|(k, v)| (k.clone(), v.into())));
    let child = tokio::process::Command::new(authd_binary())
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(&data_dir)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .expect("starting authd");
    let pid = child.id();
    Server {
        addr: format!("http://{listen}"),
        child: Some(child),
        pid,
        db: Some(pg.connect_options(database)),
        env,
        log: Some(log),
        data_dir: Some(data_dir),
        pg: None,
    }
}

/// A service key for IntrospectToken and GetUser, made with `authd
/// service-account create` against the started server's database. `None`
/// for a server started by hand.
pub async fn create_introspection_key(server: &Server) -> Option<String> {
    create_service_key(server, "load-generator", &["tokens.introspect", "users.read"]).await
}

/// A new service account `name` with `scopes` on the started server (the
/// command prints the key alone on stdout); `None` for a server started by
/// hand.
pub async fn create_service_key(server: &Server, name: &str, scopes: &[&str]) -> Option<String> {
    let data_dir = server.data_dir.as_ref()?;
    let mut args = vec!["service-account", "create", name];
    for scope in scopes {
        args.extend(["--scope", scope]);
    }
    let out = tokio::process::Command::new(authd_binary())
        .env_clear()
        .envs(server.env.iter().map(|(k, v)| (k, v)))
        .current_dir(data_dir)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("running authd service-account create");
    assert!(
        out.status.success(),
        "authd service-account create failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

pub async fn wait_until_serving(server: &mut Server) {
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(child) = server.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!("authd exited during start-up with {status}; {}", log_tail(server));
        }
        if let Ok(endpoint) = Endpoint::from_shared(server.addr.clone())
            && let Ok(channel) = endpoint.connect().await
            && let Ok(r) = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
            && r.get_ref().status == ServingStatus::Serving as i32
        {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "authd at {} not SERVING after 60 s; {}",
            server.addr,
            log_tail(server)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn log_tail(server: &Server) -> String {
    let Some(log) = &server.log else {
        return String::new();
    };
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    format!("log {}:\n{tail}", log.display())
}

/// SIGTERM, a bounded wait for the graceful exit, then the cluster.
pub async fn stop_server(server: &mut Server) {
    if let (Some(mut child), Some(pid)) = (server.child.take(), server.pid) {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
        match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => eprintln!("authd exited with {status}"),
            _ => {
                eprintln!("authd did not stop within 20 s of SIGTERM; killing it");
                let _ = child.kill().await;
            }
        }
    }
    if let Some(log) = &server.log {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines = text.lines().count();
        if lines > 0 {
            println!(
                "\nservice log (RUST_LOG=warn): {lines} line(s); last ones:\n{}",
                text.lines()
                    .skip(lines.saturating_sub(5))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    if let Some(pg) = server.pg.take() {
        tokio::task::spawn_blocking(move || pg.stop()).await.unwrap();
    }
    if let Some(dir) = server.data_dir.take() {
        let _ = std::fs::remove_dir_all(dir);
    }
}
