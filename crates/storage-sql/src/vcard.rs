//! [`VcardStore`] on SQL: the `vcards` table of migration 0004 (XEP-0054, XEP-0153).
//!
//! Statements are written once in SQL both SQLite and PostgreSQL accept, like [`crate::sql`].

use std::time::{SystemTime, UNIX_EPOCH};

use starling_storage::{BareJid, BoxFuture, StorageError, StoredVcard, VcardStore, account_key};

use crate::{SqlStore, backend, per_backend};

/// `$1` host, `$2` username.
pub(crate) const SELECT_VCARD: &str =
    "SELECT vcard, photo_hash FROM vcards WHERE host = $1 AND username = $2";
/// `$1` host, `$2` username, `$3` vcard, `$4` photo_hash, `$5` updated_at (µs).
pub(crate) const UPSERT_VCARD: &str = "INSERT INTO vcards \
     (host, username, vcard, photo_hash, updated_at) VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (host, username) DO UPDATE SET \
     vcard = excluded.vcard, photo_hash = excluded.photo_hash, updated_at = excluded.updated_at";
/// `$1` host, `$2` username.
pub(crate) const DELETE_VCARD: &str = "DELETE FROM vcards WHERE host = $1 AND username = $2";

per_backend! {
    impl VcardStore for SqlStore<Db> {
        fn vcard<'a>(
            &'a self,
            user: &'a BareJid,
        ) -> BoxFuture<'a, Result<Option<StoredVcard>, StorageError>> {
            self.timed("vcard.vcard", async move {
                let (host, username) = account_key(user)?;
                let row: Option<(String, Option<String>)> = sqlx::query_as(SELECT_VCARD)
                    .bind(host)
                    .bind(username)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(backend)?;
                Ok(row.map(|(xml, photo_hash)| StoredVcard { xml, photo_hash }))
            })
        }

        fn set_vcard<'a>(
            &'a self,
            user: &'a BareJid,
            vcard: &'a StoredVcard,
        ) -> BoxFuture<'a, Result<(), StorageError>> {
            self.timed("vcard.set_vcard", async move {
                let (host, username) = account_key(user)?;
                sqlx::query(UPSERT_VCARD)
                    .bind(host)
                    .bind(username)
                    .bind(vcard.xml.as_str())
                    .bind(vcard.photo_hash.as_deref())
                    .bind(now_micros())
                    .execute(&self.pool)
                    .await
                    .map_err(backend)?;
                Ok(())
            })
        }

        fn remove_vcard<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, Result<bool, StorageError>> {
            self.timed("vcard.remove_vcard", async move {
                let (host, username) = account_key(user)?;
                let removed = sqlx::query(DELETE_VCARD)
                    .bind(host)
                    .bind(username)
                    .execute(&self.pool)
                    .await
                    .map_err(backend)?
                    .rows_affected();
                Ok(removed > 0)
            })
        }
    }
}

/// Microseconds since the Unix epoch (DESIGN §6 timestamps).
pub(crate) fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_use_numbered_placeholders_only() {
        for statement in [SELECT_VCARD, UPSERT_VCARD, DELETE_VCARD] {
            assert!(!statement.contains('?'), "{statement}");
            assert!(statement.contains("$2"), "{statement}");
        }
    }

    #[test]
    fn now_is_after_2020_in_micros() {
        assert!(now_micros() > 1_577_836_800_000_000);
    }
}
