//! The MAM conformance scenarios on SQLite, the query plans of archive queries, and an
//! ignored load test (`cargo test -p starling-storage-sql --test sqlite_mam -- --ignored`).

use std::time::Instant;

use starling_storage::{
    ArchiveQuery, ArchiveWith, BareJid, MamStore as _, Stores, conformance_mam,
};
use starling_storage_sql::SqlStore;
use starling_storage_sql::mam::{SqlArg, archive_count_sql, archive_query_sql};
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

/// One million messages in one archive, a tenth of them with one contact; times a forward
/// walk of the `with` conversation and a "last page" query. Prints the figures.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "load test: run with --ignored"]
async fn mam_million() {
    const ROWS: i64 = 1_000_000;
    const BATCH: i64 = 10_000;
    let (dir, store) = fresh().await;
    let alice = jid("alice@million.example");
    let bob = jid("bob@million.example");
    let stanza = "<message xmlns='jabber:client' type='chat'><body>a fairly ordinary message \
                  of about the usual length</body></message>";
    // Batched transactions on a second connection to the same file, with the store's own
    // INSERT statement: the store API commits once per message, which would time fsyncs.
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            sqlx::sqlite::SqliteConnectOptions::new().filename(dir.path().join("starling.db")),
        )
        .await
        .expect("second connection");
    let started = Instant::now();
    let mut id = 1_700_000_000_000_000_i64;
    for _ in 0..ROWS / BATCH {
        let mut tx = pool.begin().await.expect("begin");
        for n in 0..BATCH {
            id += 1;
            let with = if n % 10 == 0 {
                "bob@million.example"
            } else {
                "x@million.example"
            };
            sqlx::query(starling_storage_sql::mam::INSERT_MESSAGE)
                .bind("million.example")
                .bind("alice")
                .bind(id)
                .bind(with)
                .bind("")
                .bind(false)
                .bind(stanza)
                .execute(&mut *tx)
                .await
                .expect("insert");
        }
        tx.commit().await.expect("commit");
    }
    let inserted = started.elapsed();
    let mut q = ArchiveQuery {
        with: Some(ArchiveWith::Bare(bob.clone())),
        max: 50,
        ..ArchiveQuery::default()
    };
    let first = Instant::now();
    let page = store.query_archive(&alice, &q).await.expect("query");
    let first_page = first.elapsed();
    assert_eq!(page.messages.len(), 50);
    assert_eq!(page.count, 100_000);
    let walk = Instant::now();
    let mut pages = 1;
    let mut seen = page.messages.len();
    let mut page = page;
    while !page.complete && pages < 100 {
        q.page_after = page.messages.last().map(|m| m.id);
        page = store.query_archive(&alice, &q).await.expect("query");
        seen += page.messages.len();
        pages += 1;
    }
    let walked = walk.elapsed();
    let last = Instant::now();
    let newest = store
        .query_archive(
            &alice,
            &ArchiveQuery {
                with: Some(ArchiveWith::Bare(bob)),
                from_end: true,
                max: 50,
                ..ArchiveQuery::default()
            },
        )
        .await
        .expect("query");
    let last_page = last.elapsed();
    assert_eq!(newest.messages.len(), 50);
    // The page statement and the count statement alone, on the raw connection: what a page
    // costs without RSM <count/>.
    let middle = ArchiveQuery {
        with: Some(ArchiveWith::Bare(jid("bob@million.example"))),
        page_after: Some(1_700_000_000_500_001),
        max: 50,
        ..ArchiveQuery::default()
    };
    let bind = |sql: &str, args: &[SqlArg]| {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()));
        for a in args {
            q = match a {
                SqlArg::Text(t) => q.bind(t.clone()),
                SqlArg::Int(i) => q.bind(*i),
            };
        }
        q
    };
    let page_sql = archive_query_sql("million.example", "alice", &middle);
    let count_sql = archive_count_sql("million.example", "alice", &middle);
    let t = Instant::now();
    for _ in 0..100 {
        let rows = bind(&page_sql.sql, &page_sql.args)
            .fetch_all(&pool)
            .await
            .expect("page");
        assert_eq!(rows.len(), 51);
    }
    let page_only = t.elapsed() / 100;
    let t = Instant::now();
    for _ in 0..10 {
        bind(&count_sql.sql, &count_sql.args)
            .fetch_one(&pool)
            .await
            .expect("count");
    }
    let count_only = t.elapsed() / 10;
    pool.close().await;
    println!(
        "mam_million: page statement alone {page_only:?}, count statement alone {count_only:?}"
    );
    println!(
        "mam_million: {ROWS} inserts in {inserted:?} ({:.0}/s); `with` first page (50 of \
         100000, with count) {first_page:?}; {pages} pages ({seen} messages) in {walked:?} \
         ({:?}/page); last page {last_page:?}",
        ROWS as f64 / inserted.as_secs_f64(),
        walked / pages,
    );
}
