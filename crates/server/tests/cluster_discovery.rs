//! `cluster.discovery: sql` (issue 4): three in-process nodes sharing one PostgreSQL database
//! and one cookie find each other without `join_cluster`, within a few discovery rounds
//! (`starling_cluster::discovery::INTERVAL`); a node removed with `leave_cluster` loses its
//! row and is not dialled again; a node that stops removes its own row.
//!
//! Without PostgreSQL binaries the test prints a loud note and passes, unless `CI` is set.

mod cluster_support;

use std::time::Duration;

use cluster_support::in_process::{ClusterNode, Options};
use starling_commands::spec::Response;
use starling_testkit::postgres::start_or_skip;

/// Discovery rounds are 2 s apart; a few of them, with room for a loaded machine.
const FOUND_WITHIN: Duration = Duration::from_secs(20);

const DISCOVERING: Options<'static> = Options {
    modules: "",
    listeners: "",
    extra: "",
    sql_discovery: true,
};

fn up(node: &ClusterNode) -> usize {
    node.server()
        .sm()
        .cluster()
        .map_or(0, |v| v.status().iter().filter(|m| m.up).count())
}

async fn rows(node: &ClusterNode) -> Vec<String> {
    node.server()
        .stores()
        .cluster_nodes(0)
        .await
        .expect("cluster_nodes")
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_sharing_the_database_find_each_other() {
    let Some(pg) = start_or_skip("nodes_sharing_the_database_find_each_other")
        .await
        .expect("start PostgreSQL")
    else {
        return;
    };
    let db = pg.database().await.expect("database");
    let cookie = starling_cluster::cookie::Cookie::generate().to_hex();
    let a = ClusterNode::start("starling@a", &db, &cookie, DISCOVERING).await;
    let b = ClusterNode::start("starling@b", &db, &cookie, DISCOVERING).await;
    let c = ClusterNode::start("starling@c", &db, &cookie, DISCOVERING).await;
    eventually(
        FOUND_WITHIN,
        "all three linked without join_cluster",
        || async { up(&a) == 3 && up(&b) == 3 && up(&c) == 3 },
    )
    .await;
    assert_eq!(rows(&a).await, ["starling@a", "starling@b", "starling@c"]);

    // leave_cluster removes c for good: its row goes and nobody dials it again.
    let left = a.ctl("leave_cluster", &["starling@c"]).await;
    assert!(matches!(left, Response::Ok(_)), "{left:?}");
    eventually(FOUND_WITHIN, "c gone from a and b", || async {
        up(&a) == 2 && up(&b) == 2
    })
    .await;
    assert_eq!(rows(&a).await, ["starling@a", "starling@b"]);
    // Two more discovery rounds: c stays out.
    tokio::time::sleep(2 * starling_cluster::discovery::INTERVAL).await;
    assert_eq!(up(&a), 2);
    assert!(!rows(&b).await.contains(&"starling@c".to_owned()));

    // A stopping node removes its own row.
    b.server().begin_shutdown();
    eventually(FOUND_WITHIN, "b's row removed", || async {
        rows(&a).await == ["starling@a"]
    })
    .await;
    drop(c);
}
