//! `starlingctl join_cluster` refusals over real sockets, between `starling` processes
//! (issue 4): a different cookie, different `hosts`, and the embedded SQLite database are each
//! refused with a clear error in the command's output, exit code 1, and a line in both logs;
//! the member that was dialled stays alone (no half-working cluster).
//!
//! Without PostgreSQL binaries or a built `starlingctl` the test prints a loud note and passes,
//! unless `CI` is set.

mod cluster_support;

use std::time::Duration;

use cluster_support::{Db, NodeSpec, ProcNode, eventually, have_ctl};
use starling_testkit::postgres::start_or_skip;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_refuses_wrong_cookie_other_hosts_and_sqlite_with_clear_errors() {
    const TEST: &str = "join_refuses_wrong_cookie_other_hosts_and_sqlite_with_clear_errors";
    if !have_ctl(TEST) {
        return;
    }
    let Some(pg) = start_or_skip(TEST).await.expect("start PostgreSQL") else {
        return;
    };
    let db = pg.database().await.expect("database");
    let base = tempfile::tempdir().expect("tempdir");
    let cookie = starling_cluster::cookie::Cookie::generate().to_hex();
    let other_cookie = starling_cluster::cookie::Cookie::generate().to_hex();
    let spec = |name, ip, cookie, hosts, db| NodeSpec {
        name,
        ip,
        cookie,
        hosts,
        db,
        http: false,
    };
    let mut member = ProcNode::new(
        base.path(),
        &spec(
            "member",
            "127.0.0.1",
            &cookie,
            "[localhost]",
            Db::Postgres(&db),
        ),
    );
    let mut stranger = ProcNode::new(
        base.path(),
        &spec(
            "stranger",
            "127.0.0.2",
            &other_cookie,
            "[localhost]",
            Db::Postgres(&db),
        ),
    );
    let mut elsewhere = ProcNode::new(
        base.path(),
        &spec(
            "elsewhere",
            "127.0.0.3",
            &cookie,
            "[example.net, localhost]",
            Db::Postgres(&db),
        ),
    );
    let mut embedded = ProcNode::new(
        base.path(),
        &spec("embedded", "127.0.0.4", &cookie, "[localhost]", Db::Sqlite),
    );
    for n in [&mut member, &mut stranger, &mut elsewhere, &mut embedded] {
        n.start();
    }
    let target = member.cluster_address();

    // Each refusal: (node, words the operator must read).
    let cases: [(&ProcNode, &[&str]); 3] = [
        (&stranger, &["cookies differ", "data_dir/cookie"]),
        (
            &elsewhere,
            &[
                "hosts differ",
                "serves [localhost]",
                "serves [example.net, localhost]",
            ],
        ),
        (&embedded, &["PostgreSQL", "SQLite"]),
    ];
    for (node, words) in cases {
        let (code, out, err) = node.ctl(&["join_cluster", &target]);
        assert_eq!(code, 1, "{}: exit code ({out}{err})", node.node_name);
        for word in words {
            assert!(
                err.contains(word),
                "{}: {word:?} in the error: {out}{err}",
                node.node_name
            );
        }
        let log = node.log();
        assert!(
            log.lines()
                .any(|l| l.contains("join_cluster failed") && l.contains(words[0])),
            "{}: the refusal is logged:\n{log}",
            node.node_name
        );
        let rows = node.status();
        assert_eq!(rows.len(), 1, "{}: still alone: {rows:?}", node.node_name);
    }
    // The member logged the two refusals it made (the SQLite node never dialled).
    eventually(
        Duration::from_secs(5),
        "refusals logged by the member",
        || {
            member
                .log()
                .lines()
                .filter(|l| l.contains("cluster link refused"))
                .count()
                >= 2
        },
    )
    .await;
    let rows = member.status();
    assert_eq!(rows.len(), 1, "the member stays alone: {rows:?}");
    for n in [&mut member, &mut stranger, &mut elsewhere, &mut embedded] {
        assert!(n.running(), "{} still runs", n.node_name);
    }
}
