//! A private PostgreSQL server for tests (DESIGN §11): `initdb` into a temporary directory,
//! `postgres` on a free loopback port, one migrated template database, and a fresh database
//! cloned from it per caller, so each test starts on an empty, fully migrated schema in
//! milliseconds instead of running the migrations again.
//!
//! PostgreSQL refuses to run as root: when the tests run as root, `initdb` and `postgres` run
//! as the `postgres` system user (the Debian package creates it) through
//! `CommandExt::{uid, gid}`, so the child is PostgreSQL itself and its pid is the one killed.
//! The server is stopped (fast shutdown, then killed if it lingers) when the value drops.

use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
use starling_config::{SqlConfig, SqlType};
use starling_storage::Stores as _;
use starling_storage_sql::SqlStore;

/// How long PostgreSQL may take to accept connections after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped server may take to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// The superuser `initdb` creates (trusted on loopback: the server is private to the test).
const SUPERUSER: &str = "postgres";
/// The migrated database every test database is cloned from.
const TEMPLATE: &str = "starling_template";

/// A running private PostgreSQL; stopped on drop.
pub struct TempPostgres {
    child: Child,
    port: u16,
    next_database: AtomicU32,
    /// Data directory, socket and log; held only to be removed on drop, after the server
    /// stopped.
    _dir: tempfile::TempDir,
}

impl TempPostgres {
    /// Finds the PostgreSQL binaries ([`bindir`]), creates a cluster and starts it on a free
    /// loopback port, then creates and migrates the template database.
    pub async fn start() -> anyhow::Result<Self> {
        let bin = bindir().ok_or_else(|| anyhow!("no PostgreSQL binaries (initdb, postgres)"))?;
        let owner = if running_as_root() {
            Some(system_user(SUPERUSER).context("running as root needs the postgres user")?)
        } else {
            None
        };
        let dir = tempfile::Builder::new().prefix("starling-pg").tempdir()?;
        if let Some((uid, gid)) = owner {
            chown(dir.path(), Some(uid), Some(gid)).context("chown the PostgreSQL directory")?;
        }
        let data = dir.path().join("data");
        let out = as_owner(Command::new(bin.join("initdb")), owner)
            .args(["--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"])
            .arg(format!("--username={SUPERUSER}"))
            .arg("-D")
            .arg(&data)
            .output()
            .context("cannot run initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // A port can be taken between choosing and binding it: try a few.
        let mut last_error = anyhow!("not started");
        for _ in 0..3 {
            match Self::launch(&bin, owner, &dir, &data).await {
                Ok((child, port)) => {
                    let pg = Self {
                        child,
                        port,
                        next_database: AtomicU32::new(0),
                        _dir: dir,
                    };
                    pg.create_template().await?;
                    return Ok(pg);
                }
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new, empty, migrated database (cloned from the template), as `sql_*` settings.
    pub async fn database(&self) -> anyhow::Result<SqlConfig> {
        let n = self.next_database.fetch_add(1, Ordering::Relaxed);
        let name = format!("starling_test_{n}");
        self.create_database(&format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
            .await
            .with_context(|| format!("cannot create database {name}"))?;
        Ok(self.sql_config(&name))
    }

    /// A new database with no schema at all (to test the migrations themselves).
    pub async fn empty_database(&self) -> anyhow::Result<SqlConfig> {
        let n = self.next_database.fetch_add(1, Ordering::Relaxed);
        let name = format!("starling_empty_{n}");
        self.create_database(&format!("CREATE DATABASE {name}"))
            .await?;
        Ok(self.sql_config(&name))
    }

    fn sql_config(&self, database: &str) -> SqlConfig {
        SqlConfig {
            sql_type: SqlType::Pgsql,
            server: "127.0.0.1".to_owned(),
            port: Some(self.port),
            database: Some(database.to_owned()),
            username: SUPERUSER.to_owned(),
            password: String::new(),
            pool_size: 5,
        }
    }

    /// Starts `postgres` on a free port and waits until it accepts connections.
    async fn launch(
        bin: &Path,
        owner: Option<(u32, u32)>,
        dir: &tempfile::TempDir,
        data: &Path,
    ) -> anyhow::Result<(Child, u16)> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log_path = dir.path().join("postgres.log");
        // Opened here, by us, so the server needs no write access to create it.
        let log = std::fs::File::create(&log_path)?;
        let mut child = as_owner(Command::new(bin.join("postgres")), owner)
            .arg("-D")
            .arg(data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            // Durability is worthless for a database deleted at the end of the test.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start postgres")?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!("postgres exited ({status}): {}", log.trim());
            }
            if PgConnection::connect_with(&admin_options(port, "postgres"))
                .await
                .is_ok()
            {
                return Ok((child, port));
            }
            if Instant::now() > deadline {
                stop(&mut child);
                bail!("postgres did not accept connections within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates the template and migrates it through the store itself, so the template is
    /// exactly what `SqlStore::open_postgres` would make.
    async fn create_template(&self) -> anyhow::Result<()> {
        self.create_database(&format!("CREATE DATABASE {TEMPLATE}"))
            .await?;
        let target = starling_server::pg_target(&self.sql_config(TEMPLATE));
        let store = SqlStore::open_postgres(&target)
            .await
            .context("cannot migrate the template database")?;
        store.close().await;
        Ok(())
    }

    /// Runs one `CREATE DATABASE`, retrying while the template still has a session (a
    /// closed pool's server processes take a moment to exit).
    async fn create_database(&self, statement: &str) -> anyhow::Result<()> {
        let mut admin = PgConnection::connect_with(&admin_options(self.port, "postgres")).await?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let result = loop {
            match sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(&mut admin)
                .await
            {
                Ok(_) => break Ok(()),
                Err(e) if Instant::now() < deadline && e.to_string().contains("other users") => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => break Err(e.into()),
            }
        };
        let _ = admin.close().await;
        result
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        stop(&mut self.child);
        // Fields drop after this: `_dir` is removed once no server writes into it.
    }
}

/// Asks the server to stop (SIGINT: fast shutdown, sessions cut), then kills it if it has
/// not exited in time. Only this child's pid is signalled.
fn stop(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn admin_options(port: u16, database: &str) -> PgConnectOptions {
    PgConnectOptions::new_without_pgpass()
        .host("127.0.0.1")
        .port(port)
        .username(SUPERUSER)
        .database(database)
        .ssl_mode(PgSslMode::Disable)
}

fn as_owner(mut command: Command, owner: Option<(u32, u32)>) -> Command {
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
        // The server inherits HOME; root's may be unreadable for the postgres user.
        command.env("HOME", "/");
    }
    command
}

/// The directory holding `initdb` and `postgres`: `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian), else the directory of `initdb` on `PATH`.
pub fn bindir() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_both(&dir) {
            return Some(dir);
        }
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_both(dir))
        .collect();
    debian.sort();
    if let Some((_, dir)) = debian.pop() {
        return Some(dir);
    }
    std::env::var_os("PATH").and_then(|path| std::env::split_paths(&path).find(|dir| has_both(dir)))
}

/// Whether this process runs as root (uid 0), read from `/proc` to need no libc.
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// `(uid, gid)` of a system user, from `/etc/passwd`.
fn system_user(name: &str) -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            if fields.next()? != name {
                return None;
            }
            let uid = fields.nth(1)?.parse().ok()?;
            let gid = fields.next()?.parse().ok()?;
            Some((uid, gid))
        })
        .ok_or_else(|| anyhow!("no user {name} in /etc/passwd"))
}

/// Starts a [`TempPostgres`], or returns `None` after a loud note when PostgreSQL is not
/// installed and `CI` is unset. In CI a missing PostgreSQL is an error: CI installs it
/// (`scripts/test.sh`), so its absence means the suite would silently shrink.
pub async fn start_or_skip(test: &str) -> anyhow::Result<Option<TempPostgres>> {
    if bindir().is_none() && std::env::var_os("CI").is_none() {
        eprintln!(
            "\n*** SKIPPED {test}: no PostgreSQL binaries (initdb, postgres) found; \
             install the `postgresql` package (scripts/test.sh does) to run it ***\n"
        );
        return Ok(None);
    }
    TempPostgres::start().await.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_root_user_in_passwd() {
        assert_eq!(system_user("root").ok(), Some((0, 0)));
        assert!(system_user("no-such-user-here").is_err());
    }
}
