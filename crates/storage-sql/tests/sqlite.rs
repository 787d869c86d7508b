//! The storage conformance suite, plus SQLite-specific lifecycle checks, on a fresh SQLite
//! database in a temporary directory per test.

use std::path::Path;
use std::sync::Arc;

use starling_storage::{
    AccountStore as _, BareJid, LastActivityStore as _, RosterItem, RosterStore as _, StorageError,
    Stores, conformance,
};
use starling_storage_sql::{MIGRATIONS_SQLITE, SqlStore};
use tempfile::TempDir;

/// A migrated store on a new file; keep the `TempDir` alive as long as the store.
async fn fresh() -> (TempDir, SqlStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqlStore::open_sqlite(&dir.path().join("starling.db"))
        .await
        .expect("open sqlite");
    (dir, store)
}

fn jid(s: &str) -> BareJid {
    BareJid::parse(s).expect("fixture jid")
}

macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let (_dir, store) = fresh().await;
            conformance::$name(&store).await.expect("storage error");
            store.close().await;
        }
    )*};
}

conformance_tests!(
    accounts_create_and_duplicate,
    accounts_credentials_round_trip,
    accounts_set_credentials,
    accounts_remove,
    accounts_list_and_count,
    accounts_refuse_domain_only_jid,
    roster_put_get_replace,
    roster_remove_item,
    roster_versions_increase,
    roster_quota,
    roster_pending_in_round_trip,
    roster_groups,
    roster_refuses_remove_subscription,
    last_activity,
    remove_cascades,
    unicode_usernames,
    hosts_are_isolated,
);

#[tokio::test]
async fn whole_suite_runs_on_one_database() {
    let (_dir, store) = fresh().await;
    conformance::run_all(&store).await.expect("storage error");
}

#[tokio::test]
async fn backend_is_named_like_ejabberds_sql_type() {
    let (_dir, store) = fresh().await;
    let stores: Arc<dyn Stores> = Arc::new(store);
    assert_eq!(stores.backend_name(), "sqlite");
}

#[tokio::test]
async fn data_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("starling.db");
    let user = jid("juliet@restart.example");
    let contact = jid("romeo@montague.example");
    let version = {
        let store = SqlStore::open_sqlite(&path).await.expect("open");
        register(&store, &user).await;
        let mut item = RosterItem::new(contact.clone());
        item.groups = vec!["Verona".into()];
        let version = store.put_item(&user, &item, 10).await.expect("put");
        store.set_last(&user, 1234, "gone").await.expect("set_last");
        store.close().await;
        version
    };
    let store = SqlStore::open_sqlite(&path).await.expect("reopen");
    assert!(store.exists(&user).await.expect("exists"));
    let creds = store.credentials(&user).await.expect("creds");
    assert!(creds.is_some_and(|c| c.verify_plain("pencil") && !c.verify_plain("pencil2")));
    let (items, v) = store.roster(&user).await.expect("roster");
    assert_eq!(v, version);
    assert_eq!(items.len(), 1);
    assert_eq!(
        items.first().map(|i| i.groups.clone()),
        Some(vec!["Verona".to_owned()])
    );
    assert_eq!(
        store.last(&user).await.expect("last"),
        Some((1234, "gone".to_owned()))
    );
}

#[tokio::test]
async fn migrations_are_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("starling.db");
    let expected: Vec<i64> = MIGRATIONS_SQLITE.iter().map(|m| m.0).collect();
    let store = SqlStore::open_sqlite(&path).await.expect("open");
    assert_eq!(store.applied_migrations().await.expect("applied"), expected);
    // Running again on the open store, and opening again, applies nothing twice.
    store.migrate().await.expect("migrate again");
    store.close().await;
    let store = SqlStore::open_sqlite(&path).await.expect("reopen");
    store.migrate().await.expect("migrate a third time");
    assert_eq!(store.applied_migrations().await.expect("applied"), expected);
}

#[tokio::test]
async fn opening_a_directory_fails_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let result = SqlStore::open_sqlite(dir.path()).await;
    assert!(
        matches!(result, Err(StorageError::Backend(_))),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_roster_writers_respect_the_quota() {
    // Writers racing on one user's roster: the version bump serialises them, so the quota
    // holds exactly and every successful write got its own version.
    let (_dir, store) = fresh().await;
    let store = Arc::new(store);
    let user = jid("juliet@race.example");
    let mut tasks = Vec::new();
    for n in 0..16 {
        let store = Arc::clone(&store);
        let user = user.clone();
        tasks.push(tokio::spawn(async move {
            let item = RosterItem::new(jid(&format!("c{n}@race.example")));
            store.put_item(&user, &item, 10).await
        }));
    }
    let mut versions = Vec::new();
    let mut refused = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(v) => versions.push(v),
            Err(StorageError::QuotaExceeded) => refused += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(versions.len(), 10);
    assert_eq!(refused, 6);
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.len(), 10, "two writes shared a version");
    assert_eq!(store.roster(&user).await.expect("roster").0.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_registrations_of_one_name_admit_one() {
    let (_dir, store) = fresh().await;
    let store = Arc::new(store);
    let user = jid("romeo@race.example");
    let creds = fixture_creds();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (store, user, creds) = (Arc::clone(&store), user.clone(), creds.clone());
        tasks.push(tokio::spawn(
            async move { store.create(&user, &creds).await },
        ));
    }
    let mut created = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(()) => created += 1,
            Err(StorageError::AlreadyExists) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(store.count("race.example").await.expect("count"), 1);
}

async fn register(store: &SqlStore, user: &BareJid) {
    store.create(user, &fixture_creds()).await.expect("create");
}

fn fixture_creds() -> starling_storage::Credentials {
    starling_storage::Credentials::new("pencil", 4096).expect("derive keys")
}

#[tokio::test]
async fn file_names_are_taken_literally() {
    // Not parsed as a URL: no query string, no mode=memory.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("my data?mode=memory#1.db");
    let store = SqlStore::open_sqlite(&path).await.expect("open");
    store
        .set_last(&jid("a@literal.example"), 1, "")
        .await
        .expect("write");
    store.close().await;
    assert!(Path::new(&path).is_file());
}
