//! A node on PostgreSQL (`sql_type: pgsql`), end to end: accounts, a chat, and a roster that
//! survives a restart of the node (the second node even has a new data directory: everything
//! durable is in the database, as a cluster node relies on).
//!
//! Without PostgreSQL binaries the test prints a loud note and passes, unless `CI` is set.

use starling_config::SqlConfig;
use starling_testkit::postgres::start_or_skip;
use starling_testkit::{Client, TestNode};
use starling_xmpp::ns;

/// The `sql_*` lines that point a node at `db`.
fn sql_yaml(db: &SqlConfig) -> String {
    format!(
        "sql_type: pgsql\nsql_server: {}\nsql_port: {}\nsql_database: {}\nsql_username: {}\n\
         sql_pool_size: 4\n",
        db.server,
        db.port.unwrap_or(5432),
        db.database.as_deref().unwrap_or("ejabberd"),
        db.username,
    )
}

async fn roster_get(c: &mut Client, id: &str) -> Vec<(String, Option<String>, Vec<String>)> {
    let result = c
        .iq(
            &format!("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>"),
            id,
        )
        .await
        .expect("roster result");
    assert_eq!(result.attr("type"), Some("result"), "{result:?}");
    let Some(query) = result.get_child("query", ns::ROSTER) else {
        return Vec::new();
    };
    query
        .children()
        .filter(|item| item.name() == "item")
        .map(|item| {
            let groups = item
                .children()
                .filter(|g| g.name() == "group")
                .map(|g| g.text())
                .collect();
            (
                item.attr("jid").unwrap_or_default().to_owned(),
                item.attr("name").map(str::to_owned),
                groups,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_on_postgresql_chats_and_keeps_rosters_across_restarts() {
    let Some(pg) = start_or_skip("node_on_postgresql_chats_and_keeps_rosters_across_restarts")
        .await
        .expect("start PostgreSQL")
    else {
        return;
    };
    let db = pg.database().await.expect("database");
    let yaml = sql_yaml(&db);

    let node = TestNode::start_with(&yaml).await.expect("node on postgres");
    assert_eq!(node.server.stores().backend_name(), "pgsql");
    assert_eq!(
        node.server.stores().db_identity(),
        format!(
            "pgsql://127.0.0.1:{}/{}",
            pg.port(),
            db.database.as_deref().unwrap_or_default()
        )
    );
    node.register("alice", "wonderland").await.expect("alice");
    node.register("bob", "builder").await.expect("bob");
    let mut alice = node
        .login("alice", "wonderland", "desk")
        .await
        .expect("login");
    let mut bob = node.login("bob", "builder", "site").await.expect("login");
    for c in [&mut alice, &mut bob] {
        c.send("<presence/>").await.expect("presence");
        // A round trip after it: a session handles its stanzas in order, so the presence is
        // in effect (messages to the bare JID reach this resource) once the answer is back.
        roster_get(c, "sync1").await;
    }

    alice
        .send("<message to='bob@localhost' type='chat' id='m1'><body>hi bob</body></message>")
        .await
        .expect("send");
    let got = bob
        .wait_for(|e| e.name() == "message" && e.attr("id") == Some("m1"))
        .await
        .expect("bob receives");
    assert_eq!(got.attr("from"), Some("alice@localhost/desk"));
    assert_eq!(
        got.get_child("body", ns::CLIENT).map(|b| b.text()),
        Some("hi bob".to_owned())
    );

    let set = alice
        .iq(
            "<iq type='set' id='r1'><query xmlns='jabber:iq:roster'>\
             <item jid='bob@localhost' name='Bob'><group>Builders</group></item>\
             </query></iq>",
            "r1",
        )
        .await
        .expect("roster set");
    assert_eq!(set.attr("type"), Some("result"), "{set:?}");
    let before = roster_get(&mut alice, "r2").await;
    assert_eq!(
        before,
        vec![(
            "bob@localhost".to_owned(),
            Some("Bob".to_owned()),
            vec!["Builders".to_owned()]
        )]
    );
    drop((alice, bob));
    node.stop().await;

    // A new node (new data directory) on the same database: accounts and roster are there.
    let node = TestNode::start_with(&yaml).await.expect("node restarts");
    let mut alice = node
        .login("alice", "wonderland", "desk")
        .await
        .expect("alice's credentials survived");
    assert_eq!(roster_get(&mut alice, "r3").await, before);
    let mut bob = node.login("bob", "builder", "site").await.expect("login");
    bob.send("<presence/>").await.expect("presence");
    roster_get(&mut bob, "sync2").await;
    alice
        .send("<message to='bob@localhost' type='chat' id='m2'><body>again</body></message>")
        .await
        .expect("send");
    bob.wait_for(|e| e.name() == "message" && e.attr("id") == Some("m2"))
        .await
        .expect("bob receives after the restart");
    drop((alice, bob));
    node.stop().await;
}
