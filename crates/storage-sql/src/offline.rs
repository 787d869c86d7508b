//! [`OfflineStore`] on SQL: the `offline_messages` and `offline_sequences` tables of
//! migration 0002 (XEP-0160 storage, XEP-0013 per-message access).
//!
//! Statements are written once in SQL both SQLite and PostgreSQL accept, like [`crate::sql`]
//! (`DELETE .. RETURNING` needs SQLite ≥ 3.35, which sqlx bundles). An insert first bumps the
//! user's row in `offline_sequences`: that write takes SQLite's write lock or PostgreSQL's row
//! lock before the quota is counted, so two senders cannot both take the last free slot.

use starling_storage::{
    BareJid, BoxFuture, OfflineEntry, OfflineStore, PushOutcome, StorageError, account_key,
};

use crate::{SqlStore, backend, per_backend};

/// Hands out the next id. `$1` host, `$2` username.
pub(crate) const BUMP_OFFLINE_SEQ: &str = "INSERT INTO offline_sequences (host, username, seq) \
     VALUES ($1, $2, 1) \
     ON CONFLICT (host, username) DO UPDATE SET seq = offline_sequences.seq + 1 \
     RETURNING seq";
/// `$1` host, `$2` username.
pub(crate) const COUNT_OFFLINE: &str =
    "SELECT COUNT(*) FROM offline_messages WHERE host = $1 AND username = $2";
/// `$1` host, `$2` username, `$3` seq, `$4` stored_at (µs), `$5` sender, `$6` xml.
pub(crate) const INSERT_OFFLINE: &str = "INSERT INTO offline_messages \
     (host, username, seq, stored_at, sender, xml) VALUES ($1, $2, $3, $4, $5, $6)";
/// Like [`INSERT_OFFLINE`], but a message already there (restored twice) is kept as it is.
pub(crate) const RESTORE_OFFLINE: &str = "INSERT INTO offline_messages \
     (host, username, seq, stored_at, sender, xml) VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (host, username, seq) DO NOTHING";
/// `$1` host, `$2` username. Integers sort the same on every backend.
pub(crate) const SELECT_OFFLINE: &str = "SELECT seq, stored_at, sender, xml \
     FROM offline_messages WHERE host = $1 AND username = $2 ORDER BY seq";
/// `$1` host, `$2` username.
pub(crate) const SELECT_OFFLINE_HEADERS: &str = "SELECT seq, sender \
     FROM offline_messages WHERE host = $1 AND username = $2 ORDER BY seq";
/// `$1` host, `$2` username, `$3` seq.
pub(crate) const SELECT_OFFLINE_ONE: &str = "SELECT seq, stored_at, sender, xml \
     FROM offline_messages WHERE host = $1 AND username = $2 AND seq = $3";
/// `$1` host, `$2` username; returns the removed rows (in no particular order).
pub(crate) const TAKE_OFFLINE: &str = "DELETE FROM offline_messages \
     WHERE host = $1 AND username = $2 RETURNING seq, stored_at, sender, xml";
/// `$1` host, `$2` username, `$3` seq.
pub(crate) const DELETE_OFFLINE_ONE: &str =
    "DELETE FROM offline_messages WHERE host = $1 AND username = $2 AND seq = $3";
/// `$1` host, `$2` username.
pub(crate) const DELETE_OFFLINE_ALL: &str =
    "DELETE FROM offline_messages WHERE host = $1 AND username = $2";
/// `$1` host, `$2` username.
pub(crate) const DELETE_OFFLINE_SEQ: &str =
    "DELETE FROM offline_sequences WHERE host = $1 AND username = $2";

/// A row of `offline_messages`: seq, stored_at, sender, xml.
type Row = (i64, i64, String, String);

fn entry((id, stored_at, from, xml): Row) -> OfflineEntry {
    OfflineEntry {
        id,
        stored_at,
        from,
        xml,
    }
}

per_backend! {
    impl OfflineStore for SqlStore<Db> {
        fn push_offline<'a>(
            &'a self,
            user: &'a BareJid,
            from: &'a str,
            xml: &'a str,
            stored_at: i64,
            max: u32,
        ) -> BoxFuture<'a, Result<PushOutcome, StorageError>> {
            self.timed("offline.push_offline", async move {
                let (host, username) = account_key(user)?;
                let mut tx = self.pool.begin().await.map_err(backend)?;
                // The bump is the first write: see the module docs.
                let seq: i64 = sqlx::query_scalar(BUMP_OFFLINE_SEQ)
                    .bind(host)
                    .bind(username)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(backend)?;
                let stored: i64 = sqlx::query_scalar(COUNT_OFFLINE)
                    .bind(host)
                    .bind(username)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(backend)?;
                if stored >= i64::from(max) {
                    // Rolling back also returns the id, so refused messages leave no gap.
                    tx.rollback().await.map_err(backend)?;
                    return Ok(PushOutcome::QuotaExceeded);
                }
                sqlx::query(INSERT_OFFLINE)
                    .bind(host)
                    .bind(username)
                    .bind(seq)
                    .bind(stored_at)
                    .bind(from)
                    .bind(xml)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                tx.commit().await.map_err(backend)?;
                Ok(PushOutcome::Stored(seq))
            })
        }

        fn offline_count<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, Result<u64, StorageError>> {
            self.timed("offline.offline_count", async move {
                let (host, username) = account_key(user)?;
                let n: i64 = sqlx::query_scalar(COUNT_OFFLINE)
                    .bind(host)
                    .bind(username)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(backend)?;
                u64::try_from(n).map_err(|_| StorageError::Corrupt(format!("offline count {n}")))
            })
        }

        fn offline_messages<'a>(
            &'a self,
            user: &'a BareJid,
        ) -> BoxFuture<'a, Result<Vec<OfflineEntry>, StorageError>> {
            self.timed("offline.offline_messages", async move {
                let (host, username) = account_key(user)?;
                let rows: Vec<Row> = sqlx::query_as(SELECT_OFFLINE)
                    .bind(host)
                    .bind(username)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(backend)?;
                Ok(rows.into_iter().map(entry).collect())
            })
        }

        fn offline_headers<'a>(
            &'a self,
            user: &'a BareJid,
        ) -> BoxFuture<'a, Result<Vec<(i64, String)>, StorageError>> {
            self.timed("offline.offline_headers", async move {
                let (host, username) = account_key(user)?;
                sqlx::query_as(SELECT_OFFLINE_HEADERS)
                    .bind(host)
                    .bind(username)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(backend)
            })
        }

        fn offline_message<'a>(
            &'a self,
            user: &'a BareJid,
            id: i64,
        ) -> BoxFuture<'a, Result<Option<OfflineEntry>, StorageError>> {
            self.timed("offline.offline_message", async move {
                let (host, username) = account_key(user)?;
                let row: Option<Row> = sqlx::query_as(SELECT_OFFLINE_ONE)
                    .bind(host)
                    .bind(username)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(backend)?;
                Ok(row.map(entry))
            })
        }

        fn take_offline<'a>(
            &'a self,
            user: &'a BareJid,
        ) -> BoxFuture<'a, Result<Vec<OfflineEntry>, StorageError>> {
            self.timed("offline.take_offline", async move {
                let (host, username) = account_key(user)?;
                // One statement: whoever runs it first gets the rows, a concurrent taker none.
                let rows: Vec<Row> = sqlx::query_as(TAKE_OFFLINE)
                    .bind(host)
                    .bind(username)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(backend)?;
                let mut entries: Vec<OfflineEntry> = rows.into_iter().map(entry).collect();
                entries.sort_unstable_by_key(|e| e.id);
                Ok(entries)
            })
        }

        fn restore_offline<'a>(
            &'a self,
            user: &'a BareJid,
            entries: &'a [OfflineEntry],
        ) -> BoxFuture<'a, Result<(), StorageError>> {
            self.timed("offline.restore_offline", async move {
                let (host, username) = account_key(user)?;
                let mut tx = self.pool.begin().await.map_err(backend)?;
                for e in entries {
                    sqlx::query(RESTORE_OFFLINE)
                        .bind(host)
                        .bind(username)
                        .bind(e.id)
                        .bind(e.stored_at)
                        .bind(e.from.as_str())
                        .bind(e.xml.as_str())
                        .execute(&mut *tx)
                        .await
                        .map_err(backend)?;
                }
                tx.commit().await.map_err(backend)
            })
        }

        fn remove_offline<'a>(
            &'a self,
            user: &'a BareJid,
            id: i64,
        ) -> BoxFuture<'a, Result<bool, StorageError>> {
            self.timed("offline.remove_offline", async move {
                let (host, username) = account_key(user)?;
                let removed = sqlx::query(DELETE_OFFLINE_ONE)
                    .bind(host)
                    .bind(username)
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(backend)?
                    .rows_affected();
                Ok(removed > 0)
            })
        }

        fn clear_offline<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, Result<u64, StorageError>> {
            self.timed("offline.clear_offline", async move {
                let (host, username) = account_key(user)?;
                let removed = sqlx::query(DELETE_OFFLINE_ALL)
                    .bind(host)
                    .bind(username)
                    .execute(&self.pool)
                    .await
                    .map_err(backend)?
                    .rows_affected();
                Ok(removed)
            })
        }

        fn remove_offline_user<'a>(
            &'a self,
            user: &'a BareJid,
        ) -> BoxFuture<'a, Result<(), StorageError>> {
            self.timed("offline.remove_offline_user", async move {
                let (host, username) = account_key(user)?;
                let mut tx = self.pool.begin().await.map_err(backend)?;
                for statement in [DELETE_OFFLINE_ALL, DELETE_OFFLINE_SEQ] {
                    sqlx::query(statement)
                        .bind(host)
                        .bind(username)
                        .execute(&mut *tx)
                        .await
                        .map_err(backend)?;
                }
                tx.commit().await.map_err(backend)
            })
        }
    }
}
