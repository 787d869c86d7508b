//! The vCard (XEP-0054) and private storage (XEP-0049) conformance scenarios on a fresh SQLite
//! database per test, plus the whole set on one database.

use starling_storage::{Stores, conformance_vcard};
use starling_storage_sql::SqlStore;
use tempfile::TempDir;

/// A migrated store on a new file; keep the `TempDir` alive as long as the store.
async fn fresh() -> (TempDir, SqlStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqlStore::open_sqlite(&dir.path().join("starling.db"))
        .await
        .expect("open sqlite");
    (dir, store)
}

macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let (_dir, store) = fresh().await;
            conformance_vcard::$name(&store).await.expect("storage error");
            store.close().await;
        }
    )*};
}

conformance_tests!(
    vcard_round_trip,
    vcard_remove,
    private_round_trip,
    private_quota,
    private_remove,
    vcard_and_private_are_isolated,
);

#[tokio::test]
async fn whole_vcard_suite_runs_on_one_database() {
    let (_dir, store) = fresh().await;
    conformance_vcard::run_all(&store)
        .await
        .expect("storage error");
    store.close().await;
}
