//! The PEP (XEP-0163) conformance scenarios on a fresh SQLite database per test, plus the
//! whole set on one database.

use starling_storage::{Stores, conformance_pep};
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
            conformance_pep::$name(&store).await.expect("storage error");
            store.close().await;
        }
    )*};
}

conformance_tests!(
    pep_publish_creates_node,
    pep_items_are_trimmed_and_replaced,
    pep_item_queries,
    pep_retract_and_delete,
    pep_reconfigure,
    pep_node_quota,
    pep_remove_user,
    pep_isolation,
);

#[tokio::test]
async fn whole_pep_suite_runs_on_one_database() {
    let (_dir, store) = fresh().await;
    conformance_pep::run_all(&store)
        .await
        .expect("storage error");
    store.close().await;
}
