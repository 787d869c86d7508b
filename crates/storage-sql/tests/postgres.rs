//! The storage conformance suite on PostgreSQL, on a private server (`TempPostgres`) started
//! once per test: every feature's suite runs on its own fresh database cloned from the
//! migrated template, so the same scenarios pass on both backends (DESIGN §6, §11).
//!
//! Without PostgreSQL binaries the tests print a loud note and pass, unless `CI` is set: CI
//! installs PostgreSQL (`scripts/test.sh`), so there its absence is a failure.

use std::sync::Arc;

use starling_storage::{
    StorageError, Stores, conformance, conformance_cluster, conformance_mam, conformance_muc,
    conformance_offline, conformance_pep, conformance_privacy, conformance_vcard,
};
use starling_storage_sql::{MIGRATIONS_POSTGRES, PgTarget, Postgres, SqlStore};
use starling_testkit::postgres::{TempPostgres, start_or_skip};

async fn fresh(pg: &TempPostgres) -> SqlStore<Postgres> {
    let config = pg.database().await.expect("fresh database");
    SqlStore::open_postgres(&starling_server::pg_target(&config))
        .await
        .expect("open postgres")
}

/// Runs `suite` on a fresh database and names it in the failure.
macro_rules! run_suite {
    ($pg:expr, $suite:path) => {{
        let store = fresh($pg).await;
        let result: Result<(), StorageError> = $suite(&store).await;
        store.close().await;
        if let Err(e) = result {
            panic!("{} on PostgreSQL: {e}", stringify!($suite));
        }
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_on_postgresql() {
    let Some(pg) = start_or_skip("conformance_suite_passes_on_postgresql")
        .await
        .expect("start PostgreSQL")
    else {
        return;
    };
    run_suite!(&pg, conformance::run_all);
    run_suite!(&pg, conformance_offline::run_all);
    run_suite!(&pg, conformance_mam::run_all);
    run_suite!(&pg, conformance_vcard::run_all);
    run_suite!(&pg, conformance_privacy::run_all);
    run_suite!(&pg, conformance_pep::run_all);
    run_suite!(&pg, conformance_muc::run_all);
    run_suite!(&pg, conformance_cluster::run_all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_and_identity_names_the_database() {
    let Some(pg) = start_or_skip("migrations_apply_once_and_identity_names_the_database")
        .await
        .expect("start PostgreSQL")
    else {
        return;
    };
    // An empty database: the store's own migrations build the schema (no template).
    let config = pg.empty_database().await.expect("empty database");
    let target: PgTarget = starling_server::pg_target(&config);
    let store = SqlStore::open_postgres(&target).await.expect("migrate");
    let all: Vec<i64> = MIGRATIONS_POSTGRES.iter().map(|m| m.0).collect();
    assert_eq!(store.applied_migrations().await.expect("applied"), all);
    // Again, as a second node starting on the same database would: nothing to do.
    store.migrate().await.expect("second run is a no-op");
    let second = SqlStore::open_postgres(&target).await.expect("reopen");
    assert_eq!(second.applied_migrations().await.expect("applied"), all);

    let stores: Arc<dyn Stores> = Arc::new(second);
    assert_eq!(stores.backend_name(), "pgsql");
    assert_eq!(
        stores.db_identity(),
        format!("pgsql://127.0.0.1:{}/{}", pg.port(), target.database)
    );
    stores.close().await;
    store.close().await;

    // A database that does not exist: the error names it.
    let missing = PgTarget {
        database: "no_such_database".to_owned(),
        ..target
    };
    let err = SqlStore::open_postgres(&missing)
        .await
        .expect_err("no such database");
    assert!(
        err.to_string()
            .contains(&format!("pgsql://127.0.0.1:{}/no_such_database", pg.port())),
        "{err}"
    );
}
