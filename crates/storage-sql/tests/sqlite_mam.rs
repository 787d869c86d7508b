//! The MAM conformance scenarios on SQLite and the query plans of archive queries. The load
//! test with a million messages is the `mam_million` benchmark (`bench/`, docs/PERFORMANCE.md).

use starling_storage::{ArchiveQuery, ArchiveWith, BareJid, Stores, conformance_mam};
use starling_storage_sql::SqlStore;
use tempfile::TempDir;

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
            conformance_mam::$name(&store).await.expect("storage error");
            store.close().await;
        }
    )*};
}

conformance_tests!(
    mam_archive_and_conflict,
    mam_paging_forward_and_backward,
    mam_filters,
    mam_unknown_anchor_is_not_found,
    mam_purge_on_insert,
    mam_prefs_round_trip,
    mam_remove_archive,
);

#[tokio::test]
async fn whole_mam_suite_runs_on_one_database() {
    let (_dir, store) = fresh().await;
    conformance_mam::run_all(&store)
        .await
        .expect("storage error");
}

/// Asserts the plan searches `index` and never sorts or scans the whole table.
fn assert_uses_index(plan: &[String], index: &str) {
    let text = plan.join("\n");
    assert!(
        plan.iter()
            .any(|l| l.contains("SEARCH") && l.contains(index)),
        "plan does not search {index}:\n{text}"
    );
    assert!(
        !plan.iter().any(|l| l.contains("TEMP B-TREE")),
        "plan sorts:\n{text}"
    );
    assert!(
        !plan.iter().any(|l| l.starts_with("SCAN")),
        "plan scans:\n{text}"
    );
}

#[tokio::test]
async fn with_queries_use_the_with_index_in_both_directions() {
    let (_dir, store) = fresh().await;
    let alice = jid("alice@plan.example");
    for (page_after, from_end, with) in [
        (None, false, ArchiveWith::Bare(jid("bob@plan.example"))),
        (Some(5), false, ArchiveWith::Bare(jid("bob@plan.example"))),
        (
            None,
            true,
            ArchiveWith::Full(jid("bob@plan.example"), "r".to_owned()),
        ),
    ] {
        let q = ArchiveQuery {
            with: Some(with),
            page_after,
            from_end,
            start: Some(1),
            max: 50,
            ..ArchiveQuery::default()
        };
        let plan = store.explain_archive_query(&alice, &q).await.expect("plan");
        println!("{q:?}: {plan:?}");
        assert_uses_index(&plan, "mam_messages_with");
    }
}

#[tokio::test]
async fn unfiltered_queries_use_the_primary_key() {
    let (_dir, store) = fresh().await;
    let alice = jid("alice@plan.example");
    for from_end in [false, true] {
        let q = ArchiveQuery {
            page_before: Some(10),
            from_end,
            max: 50,
            ..ArchiveQuery::default()
        };
        let plan = store.explain_archive_query(&alice, &q).await.expect("plan");
        // SQLite names the primary key's index after the table.
        assert_uses_index(&plan, "sqlite_autoindex_mam_messages_1");
    }
}
