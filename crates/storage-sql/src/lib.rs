//! SQL storage backends: the [`starling_storage`] traits on SQLite (and, later, PostgreSQL).
//!
//! This crate owns the schema (`migrations/{sqlite,postgres}`, one numbering, DESIGN §6),
//! the statements ([`sql`], written once in SQL that both databases accept) and their
//! execution (the private `sqlite` module). It must never decide XMPP policy: what to store
//! comes from the modules, this crate only keeps it durable and consistent.
//!
//! Conventions every statement follows:
//! - per-user keys start `(host, username)`; JIDs are stored as given (already normalised);
//! - times are `BIGINT` (µs UTC for our own timestamps, unix seconds for XEP-0012);
//! - SCRAM keys are one row per hash with the binary values as `BLOB`/`BYTEA`;
//! - a write transaction starts with a write statement, so SQLite takes its write lock up
//!   front (waiting under `busy_timeout`) instead of failing on a read-to-write upgrade, and
//!   PostgreSQL locks the user's rows before any check that depends on them (quotas).
//!
//! Usage: `SqlStore::open_sqlite(path).await?` and hand it to `core` as `Arc<dyn Stores>`.

#![forbid(unsafe_code)]

pub mod mam;
mod migrations;
mod offline;
mod pep;
mod privacy;
mod private;
pub mod sql;
mod sqlite;
mod vcard;

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use starling_storage::{
    AccountStore, BareJid, BoxFuture, Credentials, LastActivityStore, RosterItem, RosterStore,
    StorageError, Stores,
};

pub use migrations::MIGRATIONS_SQLITE;

/// How long a connection waits for SQLite's single writer before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// SQLite serialises writers anyway; a few connections let readers run beside one writer.
const SQLITE_POOL_SIZE: u32 = 4;

/// The SQL-backed [`Stores`]: every store on one connection pool.
#[derive(Clone, Debug)]
pub struct SqlStore {
    pool: SqlitePool,
}

impl SqlStore {
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
        let store = Self { pool };
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
        sqlite::applied_migrations(&self.pool).await
    }
}

/// Flattens a driver error into the storage layer's error.
pub(crate) fn backend(e: sqlx::Error) -> StorageError {
    StorageError::Backend(e.to_string())
}

impl AccountStore for SqlStore {
    fn create<'a>(
        &'a self,
        user: &'a BareJid,
        creds: &'a Credentials,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(sqlite::create_account(&self.pool, user, creds))
    }

    fn credentials<'a>(
        &'a self,
        user: &'a BareJid,
    ) -> BoxFuture<'a, Result<Option<Credentials>, StorageError>> {
        Box::pin(sqlite::credentials(&self.pool, user))
    }

    fn set_credentials<'a>(
        &'a self,
        user: &'a BareJid,
        creds: &'a Credentials,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(sqlite::set_credentials(&self.pool, user, creds))
    }

    fn exists<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(sqlite::account_exists(&self.pool, user))
    }

    fn remove<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(sqlite::remove_account(&self.pool, user))
    }

    fn list<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<String>, StorageError>> {
        Box::pin(sqlite::list_accounts(&self.pool, host))
    }

    fn count<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<u64, StorageError>> {
        Box::pin(sqlite::count_accounts(&self.pool, host))
    }
}

impl RosterStore for SqlStore {
    fn roster<'a>(
        &'a self,
        user: &'a BareJid,
    ) -> BoxFuture<'a, Result<(Vec<RosterItem>, String), StorageError>> {
        Box::pin(sqlite::roster(&self.pool, user))
    }

    fn version<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, Result<String, StorageError>> {
        Box::pin(sqlite::roster_version(&self.pool, user))
    }

    fn item<'a>(
        &'a self,
        user: &'a BareJid,
        contact: &'a BareJid,
    ) -> BoxFuture<'a, Result<Option<RosterItem>, StorageError>> {
        Box::pin(sqlite::roster_item(&self.pool, user, contact))
    }

    fn put_item<'a>(
        &'a self,
        user: &'a BareJid,
        item: &'a RosterItem,
        max_items: u32,
    ) -> BoxFuture<'a, Result<String, StorageError>> {
        Box::pin(sqlite::put_roster_item(&self.pool, user, item, max_items))
    }

    fn remove_item<'a>(
        &'a self,
        user: &'a BareJid,
        contact: &'a BareJid,
    ) -> BoxFuture<'a, Result<Option<String>, StorageError>> {
        Box::pin(sqlite::remove_roster_item(&self.pool, user, contact))
    }
}

impl LastActivityStore for SqlStore {
    fn set_last<'a>(
        &'a self,
        user: &'a BareJid,
        seconds: i64,
        status: &'a str,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(sqlite::set_last(&self.pool, user, seconds, status))
    }

    fn last<'a>(
        &'a self,
        user: &'a BareJid,
    ) -> BoxFuture<'a, Result<Option<(i64, String)>, StorageError>> {
        Box::pin(sqlite::last(&self.pool, user))
    }
}

impl Stores for SqlStore {
    fn backend_name(&self) -> &'static str {
        "sqlite"
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        // Closing the pool checkpoints the WAL when the last connection goes, so the database
        // file alone holds everything after shutdown.
        Box::pin(self.pool.close())
    }
}
