//! SQL storage backends: the [`starling_storage`] traits on SQLite and on PostgreSQL.
//!
//! This crate owns the schema (`migrations/{sqlite,postgres}`, one numbering, DESIGN §6),
//! the statements ([`sql`] and each store's module, written once in SQL that both databases
//! accept) and their execution. It must never decide XMPP policy: what to store comes from
//! the modules, this crate only keeps it durable and consistent.
//!
//! ## Two backends, one code path
//!
//! [`SqlStore<DB>`] is one type per backend: `SqlStore<Sqlite>` (the default type, so plain
//! `SqlStore` means SQLite) and `SqlStore<Postgres>`, opened with [`SqlStore::open_sqlite`]
//! and [`SqlStore::open_postgres`] and handed to `core` as `Arc<dyn Stores>`. Each store's
//! code is written once, inside `per_backend!`, which compiles it for both drivers with
//! `Db` naming the driver. This keeps sqlx's native drivers: its `Any` driver (0.9) cannot
//! read SQLite `BOOLEAN` columns and takes SQLite options only as a URL, and generic code
//! over `sqlx::Database` needs a dozen higher-ranked bounds on every function.
//!
//! Conventions every statement follows:
//! - per-user keys start `(host, username)`; JIDs are stored as given (already normalised);
//! - times are `BIGINT` (µs UTC for our own timestamps, unix seconds for XEP-0012), and every
//!   integer column is 64-bit on both backends (PostgreSQL `BIGINT`), so rows decode as `i64`;
//! - SCRAM keys are one row per hash with the binary values as `BLOB`/`BYTEA`;
//! - a write transaction starts with a write statement, so SQLite takes its write lock up
//!   front (waiting under `busy_timeout`) instead of failing on a read-to-write upgrade, and
//!   PostgreSQL locks the user's rows before any check that depends on them (quotas);
//! - no result order depends on a collation: text is sorted in Rust, by bytes.

#![forbid(unsafe_code)]

mod accounts;
mod backup;
mod cluster;
pub mod mam;
mod migrations;
mod muc;
mod offline;
mod pep;
mod privacy;
mod private;
pub mod sql;
mod vcard;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions, PgSslMode};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection as _, Database, Pool};
use starling_storage::timing::QueryTimings;
use starling_storage::{BoxFuture, StorageError, Stores};

pub use migrations::{MIGRATIONS_POSTGRES, MIGRATIONS_SQLITE};
pub use sqlx::{Postgres, Sqlite};

/// How long a connection waits for SQLite's single writer before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// SQLite serialises writers anyway; a few connections let readers run beside one writer.
const SQLITE_POOL_SIZE: u32 = 4;
/// How long a caller waits for a PostgreSQL connection (also bounds the first connect, so a
/// node pointed at a silent address fails its start instead of hanging).
const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a PostgreSQL database is and how to log in: ejabberd's `sql_*` options, resolved.
#[derive(Clone, PartialEq, Eq)]
pub struct PgTarget {
    /// `sql_server`: a host name or address, or an absolute path to a Unix socket directory.
    pub server: String,
    /// `sql_port`.
    pub port: u16,
    /// `sql_database`.
    pub database: String,
    /// `sql_username`.
    pub username: String,
    /// `sql_password` (empty: none).
    pub password: String,
    /// `sql_pool_size`: most connections this node opens.
    pub pool_size: u32,
}

impl PgTarget {
    /// The default port of PostgreSQL (ejabberd's `sql_port` default for `pgsql`).
    pub const DEFAULT_PORT: u16 = 5432;
    /// ejabberd's default `sql_database`.
    pub const DEFAULT_DATABASE: &'static str = "ejabberd";

    /// `pgsql://server:port/database`: names the database without the credentials, for logs,
    /// errors and [`Stores::db_identity`].
    pub fn identity(&self) -> String {
        format!("pgsql://{}:{}/{}", self.server, self.port, self.database)
    }
}

impl std::fmt::Debug for PgTarget {
    // By hand so that the password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("server", &self.server)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("username", &self.username)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

/// The SQL-backed [`Stores`]: every store on one connection pool of backend `DB`.
pub struct SqlStore<DB: Database = Sqlite> {
    pool: Pool<DB>,
    /// What [`Stores::db_identity`] reports.
    identity: String,
    /// Latency of every store call, by operation (read by the metrics exporter).
    timings: Arc<QueryTimings>,
}

impl<DB: Database> Clone for SqlStore<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            identity: self.identity.clone(),
            timings: self.timings.clone(),
        }
    }
}

impl<DB: Database> std::fmt::Debug for SqlStore<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl SqlStore<Sqlite> {
    /// Open (create) `path` in WAL mode with a small pool, run migrations (embedded).
    pub async fn open_sqlite(path: &Path) -> Result<Self, StorageError> {
        // Options rather than a `sqlite:` URL, so that any file name (spaces, `?`, non-UTF-8)
        // is taken literally.
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable in WAL mode except for the last commits on power loss, the
            // trade-off every WAL deployment (and ejabberd's SQLite default) makes.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(SQLITE_POOL_SIZE)
            .connect_with(options)
            .await
            .map_err(backend)?;
        let store = Self {
            pool,
            identity: "sqlite".to_owned(),
            timings: Arc::default(),
        };
        store.migrate().await?;
        tracing::info!(path = %path.display(), "sqlite storage open");
        Ok(store)
    }

    /// Applies the embedded migrations that are not yet applied; a no-op when up to date.
    ///
    /// Run by [`SqlStore::open_sqlite`]; public so operators' tooling can run it explicitly.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        migrations::sqlite_migrator()
            .run(&self.pool)
            .await
            .map_err(|e| StorageError::Backend(format!("migration failed: {e}")))
    }

    /// The versions of the migrations applied to this database, ascending.
    pub async fn applied_migrations(&self) -> Result<Vec<i64>, StorageError> {
        sqlx::query_scalar(sql::SELECT_APPLIED_MIGRATIONS)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)
    }
}

impl SqlStore<Postgres> {
    /// Connects to `target` (the pool opens connections as needed, up to `pool_size`) and
    /// runs the migrations that are not yet applied, under sqlx's advisory lock, so nodes of a
    /// cluster starting together migrate once.
    ///
    /// A database that cannot be reached is an error naming `pgsql://server:port/database`.
    pub async fn open_postgres(target: &PgTarget) -> Result<Self, StorageError> {
        let identity = target.identity();
        let mut options = PgConnectOptions::new_without_pgpass()
            .port(target.port)
            .database(&target.database)
            .username(&target.username)
            .application_name("starling")
            // No TLS driver is built in yet: say so to the server rather than negotiate.
            .ssl_mode(PgSslMode::Disable);
        options = if target.server.starts_with('/') {
            options.socket(&target.server)
        } else {
            options.host(&target.server)
        };
        if !target.password.is_empty() {
            options = options.password(&target.password);
        }
        let cannot = |e: &dyn std::fmt::Display| {
            StorageError::Backend(format!("cannot connect to {identity}: {e}"))
        };
        // One direct connection first: the pool retries refused connections until its
        // acquire timeout, which would turn a typo in `sql_port` into a silent 10 s wait.
        let probe = tokio::time::timeout(PG_ACQUIRE_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| cannot(&"timed out"))?
            .map_err(|e| cannot(&e))?;
        probe.close().await.map_err(|e| cannot(&e))?;
        let pool = PgPoolOptions::new()
            .max_connections(target.pool_size.max(1))
            .acquire_timeout(PG_ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| cannot(&e))?;
        let store = Self {
            pool,
            identity,
            timings: Arc::default(),
        };
        store.migrate().await?;
        tracing::info!(database = %store.identity, "postgresql storage open");
        Ok(store)
    }

    /// Applies the embedded migrations that are not yet applied; a no-op when up to date.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        migrations::postgres_migrator()
            .run(&self.pool)
            .await
            .map_err(|e| {
                StorageError::Backend(format!("migration of {} failed: {e}", self.identity))
            })
    }

    /// The versions of the migrations applied to this database, ascending.
    pub async fn applied_migrations(&self) -> Result<Vec<i64>, StorageError> {
        sqlx::query_scalar(sql::SELECT_APPLIED_MIGRATIONS)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)
    }
}

/// Flattens a driver error into the storage layer's error.
pub(crate) fn backend(e: sqlx::Error) -> StorageError {
    StorageError::Backend(e.to_string())
}

/// Compiles the items given once per backend: in `mod on_sqlite` with `Db = Sqlite` and in
/// `mod on_postgres` with `Db = Postgres`. The items see their parent module's names.
macro_rules! per_backend {
    ($($items:tt)*) => {
        mod on_sqlite {
            #[allow(unused_imports)]
            use super::*;
            #[allow(dead_code)]
            type Db = sqlx::Sqlite;
            $($items)*
        }
        mod on_postgres {
            #[allow(unused_imports)]
            use super::*;
            #[allow(dead_code)]
            type Db = sqlx::Postgres;
            $($items)*
        }
    };
}
pub(crate) use per_backend;

impl<DB: Database> SqlStore<DB> {
    /// Runs a store call, recording how long it took under `op` (`store.method`).
    fn timed<'a, T: 'a>(
        &'a self,
        op: &'static str,
        call: impl Future<Output = T> + Send + 'a,
    ) -> BoxFuture<'a, T> {
        Box::pin(async move {
            let start = Instant::now();
            let out = call.await;
            self.timings.observe(op, start.elapsed());
            out
        })
    }
}

impl Stores for SqlStore<Sqlite> {
    fn backend_name(&self) -> &'static str {
        "sqlite"
    }

    fn query_timings(&self) -> Option<Arc<QueryTimings>> {
        Some(self.timings.clone())
    }

    fn db_identity(&self) -> String {
        self.identity.clone()
    }

    fn backup<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(self.backup_to(path))
    }

    fn restore<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<u64, StorageError>> {
        Box::pin(self.restore_from(path))
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        // Closing the pool checkpoints the WAL when the last connection goes, so the database
        // file alone holds everything after shutdown.
        Box::pin(self.pool.close())
    }
}

impl Stores for SqlStore<Postgres> {
    fn backend_name(&self) -> &'static str {
        "pgsql"
    }

    fn query_timings(&self) -> Option<Arc<QueryTimings>> {
        Some(self.timings.clone())
    }

    fn db_identity(&self) -> String {
        self.identity.clone()
    }

    fn backup<'a>(&'a self, _path: &'a Path) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async {
            Err(StorageError::Backend(
                "PostgreSQL: use pg_dump (and pg_restore) on the shared database".to_owned(),
            ))
        })
    }

    fn restore<'a>(&'a self, _path: &'a Path) -> BoxFuture<'a, Result<u64, StorageError>> {
        Box::pin(async {
            Err(StorageError::Backend(
                "PostgreSQL: use pg_restore (or psql) on the shared database".to_owned(),
            ))
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.pool.close())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> PgTarget {
        PgTarget {
            server: "db.example".to_owned(),
            port: 5433,
            database: "xmpp".to_owned(),
            username: "starling".to_owned(),
            password: "secret".to_owned(),
            pool_size: 3,
        }
    }

    #[test]
    fn identity_names_server_port_and_database_only() {
        assert_eq!(target().identity(), "pgsql://db.example:5433/xmpp");
    }

    #[test]
    fn debug_output_hides_the_password() {
        let shown = format!("{:?}", target());
        assert!(shown.contains("db.example"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[tokio::test]
    async fn unreachable_postgres_is_an_error_naming_the_database() {
        // A port just bound and released on loopback: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(1);
        let target = PgTarget {
            server: "127.0.0.1".to_owned(),
            port,
            ..target()
        };
        let err = SqlStore::open_postgres(&target)
            .await
            .expect_err("nothing listens there");
        let text = err.to_string();
        assert!(
            text.contains(&format!("pgsql://127.0.0.1:{port}/xmpp")),
            "{text}"
        );
    }
}
