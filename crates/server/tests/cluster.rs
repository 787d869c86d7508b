//! Clustering end to end (issue 4, DESIGN.md §7): three in-process nodes on 127.0.0.1 with
//! their own cluster listeners, sharing one PostgreSQL database and one cookie. They join,
//! report their status, carry chat and presence between users on different nodes, purge a
//! killed node's sessions within the bound (contacts see it go unavailable), and remove a node
//! with `leave_cluster`.
//!
//! Without PostgreSQL binaries the test prints a loud note and passes, unless `CI` is set.

mod cluster_support;

use std::time::Duration;

use cluster_support::in_process::{ClusterNode, Options};
use starling_commands::exec::execute;
use starling_commands::spec::{Output, Request, Response};
use starling_core::server::NodeState;
use starling_testkit::Client;
use starling_testkit::postgres::start_or_skip;

/// The bound checked for a killed node's sessions to leave every table (documented: 5 s).
const PURGE_BOUND: Duration = Duration::from_secs(5);

fn lines(response: Response) -> Vec<String> {
    match response {
        Response::Ok(Output::List(lines)) => lines,
        other => panic!("expected a list, got {other:?}"),
    }
}

/// Polls `check` every 20 ms until it holds or `limit` passes.
async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn sync(c: &mut Client, id: &str) {
    let r = c
        .iq(
            &format!("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>"),
            id,
        )
        .await
        .expect("roster");
    assert_eq!(r.attr("type"), Some("result"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_join_chat_lose_a_node_and_remove_one() {
    let Some(pg) = start_or_skip("three_nodes_join_chat_lose_a_node_and_remove_one")
        .await
        .expect("start PostgreSQL")
    else {
        return;
    };
    let db = pg.database().await.expect("database");
    let cookie = starling_cluster::cookie::Cookie::generate().to_hex();
    let n1 = ClusterNode::start("starling@n1", &db, &cookie, Options::default()).await;
    let n2 = ClusterNode::start("starling@n2", &db, &cookie, Options::default()).await;
    let n3 = ClusterNode::start("starling@n3", &db, &cookie, Options::default()).await;

    // join_cluster takes an address (or name@address); n3 learns n2 from n1 and links to it.
    let members = lines(n2.ctl("join_cluster", &[&n1.address()]).await);
    assert_eq!(members, vec!["starling@n1".to_owned()]);
    let with_name = format!("starling@n1@{}", n1.address());
    let mut members = lines(n3.ctl("join_cluster", &[&with_name]).await);
    members.sort();
    assert_eq!(
        members,
        vec!["starling@n1".to_owned(), "starling@n2".to_owned()]
    );
    for n in [&n1, &n2, &n3] {
        eventually(Duration::from_secs(10), "all linked", || {
            n.node
                .cluster
                .as_ref()
                .is_some_and(|c| c.status().iter().filter(|m| m.up).count() == 3)
        })
        .await;
    }
    let status = lines(n2.ctl("list_cluster", &[]).await);
    assert_eq!(status.len(), 3, "{status:?}");
    assert!(status[0].starts_with("starling@n2\t"), "{status:?}");
    assert!(status.iter().all(|l| l.contains("\tup\t")), "{status:?}");

    // Accounts live in the shared database: registered once, usable on every node.
    for user in ["alice", "bob"] {
        let r = n1.ctl("register", &[user, "localhost", "secret"]).await;
        assert!(matches!(r, Response::Ok(_)), "{r:?}");
    }
    let mut alice = n1.login("alice", "desk").await;
    let mut bob = n2.login("bob", "site").await;
    for c in [&mut alice, &mut bob] {
        c.send("<presence/>").await.expect("presence");
        sync(c, "s1").await;
    }
    let alice_jid = starling_xmpp::jid::BareJid::parse("alice@localhost").expect("jid");
    let bob_jid = starling_xmpp::jid::BareJid::parse("bob@localhost").expect("jid");
    eventually(Duration::from_secs(5), "sessions replicated", || {
        [&n1, &n2, &n3].iter().all(|n| {
            let sm = n.server().sm();
            sm.count() == 2
                && sm.available_of(&alice_jid).len() == 1
                && sm.available_of(&bob_jid).len() == 1
        })
    })
    .await;
    let status = lines(n3.ctl("cluster_status", &[]).await);
    assert!(
        status
            .iter()
            .any(|l| l.starts_with("starling@n2\t") && l.contains("\tup\t1\t")),
        "bob counted on n2: {status:?}"
    );

    // Subscription across nodes: alice (n1) subscribes to bob (n2), bob approves.
    alice
        .send("<presence to='bob@localhost' type='subscribe'/>")
        .await
        .expect("subscribe");
    bob.wait_for(|e| e.name() == "presence" && e.attr("type") == Some("subscribe"))
        .await
        .expect("bob gets the request");
    bob.send("<presence to='alice@localhost' type='subscribed'/>")
        .await
        .expect("subscribed");
    let available = alice
        .wait_for(|e| {
            e.name() == "presence"
                && e.attr("from") == Some("bob@localhost/site")
                && e.attr("type").is_none()
        })
        .await
        .expect("alice sees bob available");
    assert!(
        available
            .attr("to")
            .is_some_and(|to| to.starts_with("alice@localhost"))
    );

    // Chat both ways, to the full and to the bare JID, in order.
    for i in 0..20 {
        alice
            .send(&format!(
                "<message to='bob@localhost/site' type='chat' id='f{i}'><body>{i}</body></message>"
            ))
            .await
            .expect("send");
    }
    for i in 0..20 {
        let m = bob
            .wait_for(|e| e.name() == "message")
            .await
            .expect("bob receives");
        assert_eq!(m.attr("id"), Some(format!("f{i}").as_str()), "order kept");
        assert_eq!(m.attr("from"), Some("alice@localhost/desk"));
    }
    bob.send("<message to='alice@localhost' type='chat' id='b1'><body>hi</body></message>")
        .await
        .expect("send");
    alice
        .wait_for(|e| e.name() == "message" && e.attr("id") == Some("b1"))
        .await
        .expect("alice receives at her bare JID");

    // Kill n2 abruptly: its links die with it (no Goodbye), so the others see EOF.
    let killed = std::time::Instant::now();
    n2.node.cluster.as_ref().expect("clustered").abort();
    eventually(PURGE_BOUND, "bob purged from n1 and n3", || {
        n1.server().sm().count() == 1 && n3.server().sm().count() == 1
    })
    .await;
    let took = killed.elapsed();
    let gone = alice
        .wait_for(|e| {
            e.name() == "presence"
                && e.attr("from") == Some("bob@localhost/site")
                && e.attr("type") == Some("unavailable")
        })
        .await
        .expect("alice sees bob go unavailable");
    assert!(
        gone.attr("to")
            .is_some_and(|to| to.starts_with("alice@localhost"))
    );
    assert!(took < PURGE_BOUND, "purged in {took:?}");
    let status = lines(n1.ctl("cluster_status", &[]).await);
    assert!(
        status
            .iter()
            .any(|l| l.starts_with("starling@n2\t") && l.contains("\tdown\t0\t")),
        "{status:?}"
    );
    n2.server().begin_shutdown();

    // leave_cluster n3 from n1: n3 stops and is refused afterwards; n1 forgets it.
    let r = n1.ctl("leave_cluster", &["starling@n3"]).await;
    assert!(matches!(r, Response::Ok(_)), "{r:?}");
    let mut state = n3.server().state_changes();
    tokio::time::timeout(
        Duration::from_secs(5),
        state.wait_for(|s| *s == NodeState::Stopping),
    )
    .await
    .expect("n3 stops")
    .expect("state");
    let status = lines(n1.ctl("cluster_status", &[]).await);
    assert!(
        !status.iter().any(|l| l.starts_with("starling@n3")),
        "{status:?}"
    );
    let again = n3.ctl("join_cluster", &[&n1.address()]).await;
    match again {
        Response::Err { message, .. } => assert!(message.contains("removed"), "{message}"),
        other => panic!("a removed node must be refused: {other:?}"),
    }
    drop(alice);
    drop(bob);
}

#[tokio::test]
async fn join_refuses_the_embedded_database_and_unclustered_nodes() {
    let node = starling_testkit::TestNode::start().await.expect("node");
    let req = Request {
        command: "cluster_status".into(),
        args: vec![],
    };
    match execute(&node.server, &req).await {
        Response::Err { message, .. } => assert!(message.contains("not clustered"), "{message}"),
        other => panic!("{other:?}"),
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "hosts: [localhost]\ndata_dir: {}\nloglevel: warning\nlisten: []\n\
         cluster: {{node_name: \"starling@lone\", listen: \"127.0.0.1:0\"}}\n",
        dir.path().join("data").display()
    );
    let specs = starling_modules::specs();
    let config = starling_config::load_str(&yaml, "lone.yml", &specs).expect("config");
    let lone = starling_server::start(config, &starling_modules::catalogue())
        .await
        .expect("node starts");
    let req = Request {
        command: "join_cluster".into(),
        args: vec!["127.0.0.1:1".into()],
    };
    match execute(&lone.server, &req).await {
        Response::Err { message, .. } => {
            assert!(
                message.contains("PostgreSQL") && message.contains("SQLite"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    lone.stop().await;
}
