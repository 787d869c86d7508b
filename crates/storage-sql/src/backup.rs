//! Online backup and restore of the embedded database (`starlingctl backup FILE` /
//! `restore FILE`, ejabberdctl's names).
//!
//! Backup is SQLite's `VACUUM INTO`: a consistent, compacted copy taken inside one read
//! transaction while the node keeps serving. Restore attaches the file and, in one write
//! transaction, replaces the content of every table by the file's, after checking that both
//! databases are at the same schema version (a backup from another version must be restored
//! by that version, or migrated first by opening it with this one). Sessions keep running;
//! what they cached (rosters of online users) is refreshed on their next login.
//!
//! PostgreSQL deployments use the database's own tools (`pg_dump`/`pg_restore`): the
//! commands say so instead of doing half a job.

use std::path::Path;

use sqlx::{Row, Sqlite};
use starling_storage::StorageError;

use crate::SqlStore;

/// The schema-migration bookkeeping table: not copied, compared.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

fn backend(e: sqlx::Error) -> StorageError {
    StorageError::Backend(e.to_string())
}

/// A path as an SQL string literal (`'` doubled); SQLite takes no parameters in `ATTACH`'s
/// and `VACUUM INTO`'s file names on every version, so the literal is built here.
fn literal(path: &Path) -> Result<String, StorageError> {
    let text = path.to_str().ok_or(StorageError::InvalidValue(
        "the backup path is not valid UTF-8",
    ))?;
    Ok(format!("'{}'", text.replace('\'', "''")))
}

/// An SQL identifier (`"` doubled).
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl SqlStore<Sqlite> {
    /// Writes a consistent copy of the database to `path`, which must not exist yet.
    pub async fn backup_to(&self, path: &Path) -> Result<(), StorageError> {
        if path.exists() {
            return Err(StorageError::AlreadyExists);
        }
        let sql = format!("VACUUM INTO {}", literal(path)?);
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Replaces the content of every table by that of the backup at `path`.
    pub async fn restore_from(&self, path: &Path) -> Result<u64, StorageError> {
        if !path.is_file() {
            return Err(StorageError::NotFound);
        }
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ATTACH DATABASE {} AS backup",
            literal(path)?
        )))
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
        let result = copy_from_attached(&mut conn).await;
        // Detach whatever happened, so the pooled connection is clean again.
        let _ = sqlx::query("DETACH DATABASE backup")
            .execute(&mut *conn)
            .await;
        result
    }
}

async fn copy_from_attached(
    conn: &mut sqlx::pool::PoolConnection<Sqlite>,
) -> Result<u64, StorageError> {
    let version = |schema: &str| {
        format!("SELECT COALESCE(MAX(version), 0) AS v FROM {schema}.{MIGRATIONS_TABLE}")
    };
    let ours: i64 = sqlx::query(sqlx::AssertSqlSafe(version("main")))
        .fetch_one(&mut **conn)
        .await
        .map_err(backend)?
        .try_get("v")
        .map_err(backend)?;
    let theirs: i64 = match sqlx::query(sqlx::AssertSqlSafe(version("backup")))
        .fetch_one(&mut **conn)
        .await
    {
        Ok(row) => row.try_get("v").map_err(backend)?,
        Err(_) => {
            return Err(StorageError::Corrupt(
                "the file is not a Starling database backup".to_owned(),
            ));
        }
    };
    if ours != theirs {
        return Err(StorageError::Corrupt(format!(
            "the backup is at schema version {theirs}, this server at {ours}"
        )));
    }
    let tables: Vec<String> = sqlx::query(
        "SELECT name FROM main.sqlite_master WHERE type = 'table' \
         AND name NOT LIKE 'sqlite_%' AND name <> ?1 ORDER BY name",
    )
    .bind(MIGRATIONS_TABLE)
    .fetch_all(&mut **conn)
    .await
    .map_err(backend)?
    .iter()
    .filter_map(|row| row.try_get::<String, _>("name").ok())
    .collect();
    // Foreign keys would make the order of the deletes matter; the schema has none that
    // cascade across tables, but defer them anyway so the copy is all-or-nothing.
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut **conn)
        .await
        .map_err(backend)?;
    let mut rows = 0u64;
    for table in &tables {
        let t = ident(table);
        let copy = async {
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM main.{t}")))
                .execute(&mut **conn)
                .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO main.{t} SELECT * FROM backup.{t}"
            )))
            .execute(&mut **conn)
            .await
        }
        .await;
        match copy {
            Ok(done) => rows += done.rows_affected(),
            Err(e) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut **conn).await;
                return Err(StorageError::Backend(format!(
                    "restoring table {table}: {e}"
                )));
            }
        }
    }
    sqlx::query("COMMIT")
        .execute(&mut **conn)
        .await
        .map_err(backend)?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use starling_storage::AccountStore;
    use starling_xmpp::jid::BareJid;
    use starling_xmpp::scram::Credentials;

    use super::*;

    fn jid(s: &str) -> BareJid {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn backup_then_restore_brings_accounts_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqlStore::open_sqlite(&dir.path().join("db.sqlite"))
            .await
            .unwrap();
        let creds = Credentials::new("pw", 4096).unwrap();
        store
            .create(&jid("alice@example.org"), &creds)
            .await
            .unwrap();
        let copy = dir.path().join("it's a backup.db");
        store.backup_to(&copy).await.unwrap();
        assert!(matches!(
            store.backup_to(&copy).await,
            Err(StorageError::AlreadyExists)
        ));

        store.create(&jid("bob@example.org"), &creds).await.unwrap();
        store.remove(&jid("alice@example.org")).await.unwrap();
        let rows = store.restore_from(&copy).await.unwrap();
        assert!(rows >= 1);
        assert!(store.exists(&jid("alice@example.org")).await.unwrap());
        assert!(!store.exists(&jid("bob@example.org")).await.unwrap());
        // The store still works afterwards (the attachment is gone).
        store
            .create(&jid("carol@example.org"), &creds)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn restoring_something_else_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqlStore::open_sqlite(&dir.path().join("db.sqlite"))
            .await
            .unwrap();
        let creds = Credentials::new("pw", 4096).unwrap();
        store
            .create(&jid("alice@example.org"), &creds)
            .await
            .unwrap();
        assert!(matches!(
            store.restore_from(&dir.path().join("missing.db")).await,
            Err(StorageError::NotFound)
        ));
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, b"").unwrap();
        assert!(matches!(
            store.restore_from(&junk).await,
            Err(StorageError::Corrupt(_))
        ));
        assert!(store.exists(&jid("alice@example.org")).await.unwrap());
    }
}
