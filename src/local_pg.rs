//! A private PostgreSQL cluster for development and tests, run with the
//! machine's own server binaries: `cargo run` and `cargo test` need no
//! database set up beforehand.
//!
//! The cluster listens only on a Unix socket inside its folder (no port to
//! collide with, nothing reachable from the network) and trusts local
//! connections. PostgreSQL refuses to run as root, so as root it runs as the
//! `postgres` user. A watchdog process stops the cluster when the process
//! that started it dies, however it dies.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use sqlx::postgres::PgConnectOptions;

const SUPERUSER: &str = "authd";
const PORT: u16 = 5432;

pub struct LocalPostgres {
    bin_dir: PathBuf,
    pgdata: PathBuf,
    socket_dir: PathBuf,
    /// One empty file per process using the cluster, named by its pid: the
    /// cluster is stopped only by the last of them (see [`Self::stop`]).
    users_dir: PathBuf,
    run_as: Option<String>,
    stopped: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Normal PostgreSQL settings (development server).
    Durable,
    /// fsync off: fast, for throwaway test clusters.
    Throwaway,
}

impl LocalPostgres {
    /// Initialises (first time) and starts a cluster under `root`.
    pub fn start(root: &Path, durability: Durability) -> anyhow::Result<Self> {
        let bin_dir = find_bin_dir()?;
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let root = root
            .canonicalize()
            .with_context(|| format!("resolving {}", root.display()))?;
        let pg = Self {
            bin_dir,
            pgdata: root.join("pg"),
            socket_dir: root.join("pg-run"),
            users_dir: root.join("users"),
            run_as: if is_root()? {
                Some("postgres".to_owned())
            } else {
                None
            },
            stopped: false.into(),
        };
        std::fs::create_dir_all(&pg.socket_dir)?;
        // Before looking for a running cluster: one who started it and is
        // about to stop it then sees this process among its users.
        pg.register_user()?;
        if let Some(user) = &pg.run_as {
            chown_to(user, &root)?;
        }
        if !pg.pgdata.join("PG_VERSION").exists() {
            pg.initdb()?;
        }
        if pg.is_running() {
            tracing::info!(pgdata = %pg.pgdata.display(), "local PostgreSQL is already running; reusing it");
        } else {
            pg.pg_ctl_start(&root, durability)?;
        }
        // A throwaway cluster's folder goes away with it.
        let remove = (durability == Durability::Throwaway).then_some(root.as_path());
        pg.spawn_watchdog(std::process::id(), remove)?;
        Ok(pg)
    }

    pub fn data_dir(&self) -> &Path {
        &self.pgdata
    }

    /// Connection options for `database` over the cluster's socket.
    pub fn connect_options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(&self.socket_dir)
            .port(PORT)
            .username(SUPERUSER)
            .database(database)
    }

    /// A `DATABASE_URL` a developer can hand to psql or sqlx.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@localhost:{PORT}/{database}?host={}",
            self.socket_dir.display()
        )
    }

    /// Creates `name` unless it exists.
    pub async fn ensure_database(&self, name: &str) -> anyhow::Result<()> {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect_with(&self.connect_options("postgres")).await?;
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
        if !exists {
            // Identifiers cannot be bound; the names come from our own code.
            anyhow::ensure!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "bad database name {name}"
            );
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await?;
        }
        conn.close().await?;
        Ok(())
    }

    /// Stops the cluster (fast shutdown), unless another live process
    /// still uses it: an `authd serve` that adopted the cluster a command
    /// started must keep its database when the command ends (that process
    /// stops it in its turn). Safe to call more than once.
    pub fn stop(&self) {
        if self.stopped.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let _ = std::fs::remove_file(self.users_dir.join(std::process::id().to_string()));
        if let Some(other) = self.other_live_user() {
            tracing::info!(
                pid = other,
                "local PostgreSQL left running: another authd process uses it"
            );
            return;
        }
        let status = self
            .command("pg_ctl")
            .args(["stop", "-m", "fast", "-w", "-D"])
            .arg(&self.pgdata)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => tracing::info!("local PostgreSQL stopped"),
            other => tracing::warn!(?other, "stopping local PostgreSQL failed"),
        }
    }

    /// Restarts the cluster in place (used by tests of database outages).
    pub fn stop_for_restart(&self) -> anyhow::Result<()> {
        run(self
            .command("pg_ctl")
            .args(["stop", "-m", "fast", "-w", "-D"])
            .arg(&self.pgdata))
    }

    pub fn start_again(&self, durability: Durability) -> anyhow::Result<()> {
        let root = self.pgdata.parent().context("pgdata has no parent")?.to_owned();
        self.pg_ctl_start(&root, durability)
    }

    fn initdb(&self) -> anyhow::Result<()> {
        tracing::info!(pgdata = %self.pgdata.display(), "initialising a local PostgreSQL cluster");
        run(self
            .command("initdb")
            .args(["--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"])
            .arg(format!("--username={SUPERUSER}"))
            .arg("-D")
            .arg(&self.pgdata))
        .with_context(|| {
            format!(
                "initdb failed{}",
                if self.run_as.is_some() {
                    " (as root it runs as the 'postgres' user, which needs access to every folder above the data folder)"
                } else {
                    ""
                }
            )
        })
    }

    fn pg_ctl_start(&self, root: &Path, durability: Durability) -> anyhow::Result<()> {
        let mut options = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -c port={PORT} -c max_connections=300",
            self.socket_dir.display()
        );
        if durability == Durability::Throwaway {
            options.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        run(self
            .command("pg_ctl")
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(&self.pgdata)
            .arg("-l")
            .arg(root.join("postgres.log"))
            .arg("-o")
            .arg(options))
        .with_context(|| {
            format!(
                "starting PostgreSQL failed; see {}",
                root.join("postgres.log").display()
            )
        })
    }

    fn register_user(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.users_dir)
            .with_context(|| format!("creating {}", self.users_dir.display()))?;
        let me = self.users_dir.join(std::process::id().to_string());
        std::fs::write(&me, b"").with_context(|| format!("writing {}", me.display()))
    }

    /// Another registered process that is still alive; dead ones' files are
    /// removed.
    fn other_live_user(&self) -> Option<u32> {
        let me = std::process::id();
        let entries = std::fs::read_dir(&self.users_dir).ok()?;
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            let alive = Command::new("sh")
                .args(["-c", "kill -0 \"$0\" 2>/dev/null"])
                .arg(pid.to_string())
                .status()
                .is_ok_and(|s| s.success());
            if alive {
                return Some(pid);
            }
            let _ = std::fs::remove_file(entry.path());
        }
        None
    }

    fn is_running(&self) -> bool {
        self.command("pg_ctl")
            .arg("status")
            .arg("-D")
            .arg(&self.pgdata)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// A shell that waits for `pid` to exit, then stops the cluster, so a
    /// killed authd or test binary does not leave PostgreSQL running.
    ///
    /// It stops only the postmaster running now: by the time it notices the
    /// exit (up to a second later), a process that stopped its cluster
    /// itself may have been followed by another authd (the next
    /// `authd service-account …`, or `authd serve`) that started a new one
    /// in the same folder, which is not this process's to stop.
    fn spawn_watchdog(&self, pid: u32, remove: Option<&Path>) -> anyhow::Result<()> {
        let stop = self.command("pg_ctl");
        let pid_file = self.pgdata.join("postmaster.pid");
        // Unknown (unreadable file): stop whatever runs, as before.
        let postmaster = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.lines().next().map(|l| l.trim().to_owned()))
            .unwrap_or_default();
        let mut script = String::from("while kill -0 \"$0\" 2>/dev/null; do sleep 1; done; ");
        // As `stop`: leave the cluster to another live process using it.
        let users = self.users_dir.display();
        script.push_str(&format!(
            "rm -f '{users}/'\"$0\"; for f in '{users}'/*; do \
             [ -e \"$f\" ] && kill -0 \"${{f##*/}}\" 2>/dev/null && exit 0; done; "
        ));
        script.push_str(&format!(
            "[ -z \"$1\" ] || [ \"$(head -n 1 '{}' 2>/dev/null)\" = \"$1\" ] && ",
            pid_file.display()
        ));
        script.push_str(&shell_words(stop.get_program(), stop.get_args()));
        script.push_str(&format!(
            " stop -m immediate -D '{}' >/dev/null 2>&1",
            self.pgdata.display()
        ));
        if let Some(dir) = remove {
            script.push_str(&format!("; rm -rf '{}'", dir.display()));
        }
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(pid.to_string())
            .arg(postmaster)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the PostgreSQL watchdog")?;
        Ok(())
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin_dir.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        };
        // The postgres user may not be able to enter our working directory.
        cmd.current_dir(&self.socket_dir);
        cmd
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn shell_words<'a>(program: &'a std::ffi::OsStr, args: impl Iterator<Item = &'a std::ffi::OsStr>) -> String {
    std::iter::once(program)
        .chain(args)
        .map(|a| format!("'{}'", a.to_string_lossy().replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{:?} exited with {}: {}{}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(())
}

fn is_root() -> anyhow::Result<bool> {
    let out = Command::new("id").arg("-u").output().context("running id -u")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn chown_to(user: &str, path: &Path) -> anyhow::Result<()> {
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{user}:"))
        .arg(path)
        .status()
        .context("running chown")?;
    if !status.success() {
        bail!(
            "running as root, the data folder must belong to the '{user}' user, but chown failed \
             (does the user exist? Installing PostgreSQL creates it)"
        );
    }
    Ok(())
}

/// Finds `initdb` and `pg_ctl`: `AUTHD_PG_BIN`, then the newest Debian-style
/// `/usr/lib/postgresql/N/bin`, then other common places and `PATH`.
pub fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("AUTHD_PG_BIN").map(PathBuf::from) {
        if has_tools(&dir) {
            return Ok(dir);
        }
        bail!("AUTHD_PG_BIN={} has no initdb and pg_ctl", dir.display());
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
            .collect();
        versions.sort_by_key(|v| std::cmp::Reverse(v.0));
        candidates.extend(versions.into_iter().map(|(_, p)| p));
    }
    candidates.extend(
        [
            "/usr/local/pgsql/bin",
            "/opt/homebrew/bin",
            "/usr/local/bin",
            "/usr/bin",
        ]
        .map(PathBuf::from),
    );
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    candidates.into_iter().find(|d| has_tools(d)).ok_or_else(|| {
        anyhow::anyhow!(
            "PostgreSQL server binaries (initdb, pg_ctl) not found. Install them \
             (Debian/Ubuntu: `apt-get install postgresql`; macOS: `brew install postgresql`), \
             set AUTHD_PG_BIN to their folder, or set DATABASE_URL to use an existing server."
        )
    })
}
