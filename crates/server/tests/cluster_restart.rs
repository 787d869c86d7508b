//! A cluster of three `starling` processes on 127.0.0.1/.2/.3 sharing one PostgreSQL database
//! (issue 4): a node killed with `kill -9` leaves every other node's tables within the
//! documented bound (contacts see its users go unavailable), comes back by itself when
//! restarted with the same config and data directory (no `join_cluster`), serves its users
//! again across nodes, and after `leave_cluster` stops and stays out across a restart. The
//! link families of `/metrics` are scraped along the way.
//!
//! Without PostgreSQL binaries or a built `starlingctl` the test prints a loud note and passes,
//! unless `CI` is set.

mod cluster_support;

use std::time::{Duration, Instant};

use cluster_support::{
    Db, NodeSpec, PASSWORD, ProcNode, all_up, befriend, chat, eventually, have_ctl, presence_from,
    sessions_seen, sync,
};
use starling_testkit::postgres::start_or_skip;

/// The documented bound for a crashed node's sessions to leave every table.
const PURGE_BOUND: Duration = Duration::from_secs(5);

/// The value of the sample line starting with `name` (labels included), if any.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_rejoins_by_itself_and_leave_cluster_keeps_it_out() {
    const TEST: &str = "killed_node_rejoins_by_itself_and_leave_cluster_keeps_it_out";
    if !have_ctl(TEST) {
        return;
    }
    let Some(pg) = start_or_skip(TEST).await.expect("start PostgreSQL") else {
        return;
    };
    let db = pg.database().await.expect("database");
    let base = tempfile::tempdir().expect("tempdir");
    let cookie = starling_cluster::cookie::Cookie::generate().to_hex();
    let spec = |name, ip, http| NodeSpec {
        name,
        ip,
        cookie: &cookie,
        hosts: "[localhost]",
        db: Db::Postgres(&db),
        http,
    };
    let mut n1 = ProcNode::new(base.path(), &spec("n1", "127.0.0.1", true));
    let mut n2 = ProcNode::new(base.path(), &spec("n2", "127.0.0.2", false));
    let mut n3 = ProcNode::new(base.path(), &spec("n3", "127.0.0.3", false));
    for n in [&mut n1, &mut n2, &mut n3] {
        n.start();
    }
    for n in [&n2, &n3] {
        let (code, out, err) = n.ctl(&["join_cluster", &n1.cluster_address()]);
        assert_eq!(code, 0, "join_cluster: {out}{err}");
    }
    eventually(Duration::from_secs(10), "all three linked", || {
        all_up(&[&n1, &n2, &n3])
    })
    .await;
    for user in ["alice", "bob"] {
        let (code, out, err) = n1.ctl(&["register", user, "localhost", PASSWORD]);
        assert_eq!(code, 0, "register: {out}{err}");
    }

    // alice on n1, bob on n2: mutual subscription and a chat across the link.
    let mut alice = n1.login("alice", "desk").await;
    let mut bob = n2.login("bob", "site").await;
    for c in [&mut alice, &mut bob] {
        c.send("<presence/>").await.expect("presence");
        sync(c, "s1").await;
    }
    befriend(&mut alice, "alice@localhost", &mut bob, "bob@localhost").await;
    chat(&mut alice, &mut bob, "bob@localhost/site", "m1").await;
    chat(&mut bob, &mut alice, "alice@localhost", "m2").await;

    let text = n1.metrics().await;
    assert_eq!(
        sample(&text, "starling_cluster_link_up{peer=\"starling@n2\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "starling_cluster_link_up{peer=\"starling@n3\"}"),
        Some(1.0),
        "{text}"
    );
    let forwarded = sample(
        &text,
        "starling_cluster_stanzas_forwarded_total{peer=\"starling@n2\"}",
    )
    .unwrap_or(0.0);
    assert!(forwarded >= 1.0, "alice's stanzas to bob counted: {text}");

    // kill -9 n2: the others drop bob within the bound and alice sees him go unavailable.
    let killed = Instant::now();
    n2.kill9();
    eventually(PURGE_BOUND, "n2 down with no sessions on n1 and n3", || {
        [&n1, &n3].iter().all(|n| {
            n.status()
                .iter()
                .any(|r| r.0 == "starling@n2" && !r.1 && r.2 == 0)
        })
    })
    .await;
    presence_from(&mut alice, "bob@localhost/site", Some("unavailable")).await;
    let took = killed.elapsed();
    assert!(took < PURGE_BOUND, "purged and announced in {took:?}");
    let text = n1.metrics().await;
    assert_eq!(
        sample(&text, "starling_cluster_link_up{peer=\"starling@n2\"}"),
        Some(0.0),
        "{text}"
    );
    assert!(
        n1.log()
            .lines()
            .any(|l| l.contains("cluster link down") && l.contains("starling@n2")),
        "link down logged with the peer's name:\n{}",
        n1.log()
    );

    // Restart n2 with the same config and data: it re-attaches without join_cluster.
    n2.start();
    eventually(Duration::from_secs(15), "n2 re-attached by itself", || {
        all_up(&[&n1, &n2, &n3])
    })
    .await;
    let mut bob = n2.login("bob", "site").await;
    bob.send("<presence/>").await.expect("presence");
    presence_from(&mut alice, "bob@localhost/site", None).await;
    presence_from(&mut bob, "alice@localhost/desk", None).await;
    chat(&mut alice, &mut bob, "bob@localhost", "m3").await;
    chat(&mut bob, &mut alice, "alice@localhost/desk", "m4").await;
    eventually(
        Duration::from_secs(5),
        "bob counted on n2 everywhere",
        || {
            [&n1, &n2, &n3]
                .iter()
                .all(|n| sessions_seen(n, "starling@n2") == Some(1))
        },
    )
    .await;
    drop(bob);

    // leave_cluster n2 from n1: n2 stops, and stays out after a restart.
    let (code, out, err) = n1.ctl(&["leave_cluster", "starling@n2"]);
    assert_eq!(code, 0, "leave_cluster: {out}{err}");
    assert!(
        n2.wait_exit(Duration::from_secs(15)).is_some(),
        "n2 stops after leave_cluster:\n{}",
        n2.log()
    );
    eventually(Duration::from_secs(5), "n2 forgotten by n1 and n3", || {
        [&n1, &n3]
            .iter()
            .all(|n| n.status().len() == 2 && !n.status().iter().any(|r| r.0 == "starling@n2"))
    })
    .await;
    n2.start();
    eventually(
        Duration::from_secs(5),
        "the removal is logged at startup",
        || {
            n2.log()
                .contains("removed from the cluster with leave_cluster and will not re-attach")
        },
    )
    .await;
    // Give it time to (wrongly) dial: it must stay alone, and the others must not list it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alone = n2.status();
    assert_eq!(alone.len(), 1, "{alone:?}");
    assert!(
        !n1.status().iter().any(|r| r.0 == "starling@n2"),
        "{:?}",
        n1.status()
    );
    let (code, out, err) = n2.ctl(&["join_cluster", &n1.cluster_address()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("removed"), "clear refusal: {out}{err}");
    assert!(
        n2.log().contains("join_cluster failed"),
        "refusal logged:\n{}",
        n2.log()
    );
    assert!(n1.running() && n3.running());
    drop(alice);
}
