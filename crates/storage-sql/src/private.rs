//! [`PrivateStore`] on SQL: the `private_storage` table of migration 0004 (XEP-0049).
//!
//! A write is one transaction that starts with the upserts (taking SQLite's write lock, and on
//! PostgreSQL the rows' locks, before the quota count), then counts the account's namespaces
//! and rolls back if the quota is exceeded, so a write stores all of its namespaces or none.

use starling_storage::{BareJid, BoxFuture, PrivateStore, StorageError, account_key};

use crate::vcard::now_micros;
use crate::{SqlStore, backend, per_backend};

/// `$1` host, `$2` username, `$3` namespace.
pub(crate) const SELECT_PRIVATE: &str =
    "SELECT data FROM private_storage WHERE host = $1 AND username = $2 AND namespace = $3";
/// `$1` host, `$2` username, `$3` namespace, `$4` data, `$5` updated_at (µs).
pub(crate) const UPSERT_PRIVATE: &str = "INSERT INTO private_storage \
     (host, username, namespace, data, updated_at) VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (host, username, namespace) DO UPDATE SET \
     data = excluded.data, updated_at = excluded.updated_at";
/// `$1` host, `$2` username.
pub(crate) const COUNT_PRIVATE: &str =
    "SELECT COUNT(*) FROM private_storage WHERE host = $1 AND username = $2";
/// `$1` host, `$2` username.
pub(crate) const DELETE_PRIVATE: &str =
    "DELETE FROM private_storage WHERE host = $1 AND username = $2";

per_backend! {
    impl PrivateStore for SqlStore<Db> {
        fn private_data<'a>(
            &'a self,
            user: &'a BareJid,
            namespace: &'a str,
        ) -> BoxFuture<'a, Result<Option<String>, StorageError>> {
            self.timed("private.private_data", async move {
                let (host, username) = account_key(user)?;
                sqlx::query_scalar(SELECT_PRIVATE)
                    .bind(host)
                    .bind(username)
                    .bind(namespace)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(backend)
            })
        }

        fn set_private_data<'a>(
            &'a self,
            user: &'a BareJid,
            entries: &'a [(String, String)],
            max_namespaces: u32,
        ) -> BoxFuture<'a, Result<(), StorageError>> {
            self.timed("private.set_private_data", async move {
                let (host, username) = account_key(user)?;
                if entries.is_empty() {
                    return Ok(());
                }
                let now = now_micros();
                let mut tx = self.pool.begin().await.map_err(backend)?;
                for (namespace, data) in entries {
                    sqlx::query(UPSERT_PRIVATE)
                        .bind(host)
                        .bind(username)
                        .bind(namespace.as_str())
                        .bind(data.as_str())
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .map_err(backend)?;
                }
                let count: i64 = sqlx::query_scalar(COUNT_PRIVATE)
                    .bind(host)
                    .bind(username)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(backend)?;
                if count > i64::from(max_namespaces) {
                    tx.rollback().await.map_err(backend)?;
                    return Err(StorageError::QuotaExceeded);
                }
                tx.commit().await.map_err(backend)
            })
        }

        fn remove_private_data<'a>(
            &'a self,
            user: &'a BareJid,
        ) -> BoxFuture<'a, Result<u64, StorageError>> {
            self.timed("private.remove_private_data", async move {
                let (host, username) = account_key(user)?;
                Ok(sqlx::query(DELETE_PRIVATE)
                    .bind(host)
                    .bind(username)
                    .execute(&self.pool)
                    .await
                    .map_err(backend)?
                    .rows_affected())
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_keyed_by_host_and_username() {
        for statement in [
            SELECT_PRIVATE,
            UPSERT_PRIVATE,
            COUNT_PRIVATE,
            DELETE_PRIVATE,
        ] {
            assert!(statement.contains("host"), "{statement}");
            assert!(statement.contains("username"), "{statement}");
            assert!(!statement.contains('?'), "{statement}");
        }
    }
}
