//! The MUC (XEP-0045 persistent rooms) conformance scenarios on a fresh SQLite database per
//! test, plus the whole set on one database; and the cluster meeting point's
//! (`cluster.discovery: sql`).

use starling_storage::{Stores, conformance_cluster, conformance_muc};
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
            conformance_muc::$name(&store).await.expect("storage error");
            store.close().await;
        }
    )*};
}

conformance_tests!(muc_room_round_trip, muc_rooms_per_service, muc_delete_room);

#[tokio::test]
async fn whole_muc_suite_runs_on_one_database() {
    let (_dir, store) = fresh().await;
    conformance_muc::run_all(&store)
        .await
        .expect("storage error");
    store.close().await;
}

#[tokio::test]
async fn cluster_nodes_announce_list_forget() {
    let (_dir, store) = fresh().await;
    conformance_cluster::run_all(&store)
        .await
        .expect("storage error");
    store.close().await;
}
