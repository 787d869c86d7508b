//! The offline-message conformance scenarios (XEP-0160, XEP-0013) on a fresh SQLite database
//! per test, plus the quota under concurrent senders.

use std::sync::Arc;

use starling_storage::{BareJid, OfflineStore as _, PushOutcome, Stores, conformance_offline};
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
            conformance_offline::$name(&store).await.expect("storage error");
            store.close().await;
        }
    )*};
}

conformance_tests!(
    offline_push_and_order,
    offline_quota,
    offline_take_and_restore,
    offline_view_and_remove,
    offline_clear_and_remove_user,
    offline_users_and_hosts_are_isolated,
);

#[tokio::test]
async fn whole_offline_suite_runs_on_one_database() {
    let (_dir, store) = fresh().await;
    conformance_offline::run_all(&store)
        .await
        .expect("storage error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_senders_respect_the_quota() {
    // Senders racing for one user's last slots: the id bump serialises them, so exactly
    // `max` messages are stored, each under its own id.
    let (_dir, store) = fresh().await;
    let store = Arc::new(store);
    let user = BareJid::parse("bob@race.example").expect("jid");
    let mut tasks = Vec::new();
    for n in 0..16 {
        let (store, user) = (Arc::clone(&store), user.clone());
        tasks.push(tokio::spawn(async move {
            store
                .push_offline(&user, "a@race.example", &format!("<m n='{n}'/>"), n, 10)
                .await
        }));
    }
    let mut ids = Vec::new();
    let mut refused = 0;
    for task in tasks {
        match task.await.expect("task").expect("storage error") {
            PushOutcome::Stored(id) => ids.push(id),
            PushOutcome::QuotaExceeded => refused += 1,
        }
    }
    assert_eq!((ids.len(), refused), (10, 6));
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 10, "two messages shared an id");
    assert_eq!(store.offline_count(&user).await.expect("count"), 10);
}
