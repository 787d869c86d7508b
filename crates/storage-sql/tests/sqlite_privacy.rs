//! The privacy-list conformance scenarios (XEP-0016, XEP-0191) on a fresh SQLite database per
//! test, and all of them on one database.

use starling_storage::{Stores, conformance_privacy};
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
            conformance_privacy::$name(&store).await.expect("storage error");
            store.close().await;
        }
    )*};
}

conformance_tests!(
    privacy_list_round_trip,
    privacy_replace_and_names,
    privacy_default_list,
    privacy_remove_list,
    privacy_quota_and_refusals,
    privacy_remove_user_and_isolation,
);

#[tokio::test]
async fn whole_privacy_suite_runs_on_one_database() {
    let (_dir, store) = fresh().await;
    conformance_privacy::run_all(&store)
        .await
        .expect("storage error");
    store.close().await;
}
