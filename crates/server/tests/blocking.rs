//! XEP-0191 blocking and XEP-0016 privacy lists end to end, between raw-XML clients on a real
//! node: bounces both ways, blocklist pushes, unblocking, and an active list denying
//! presence-in.

use starling_testkit::{Client, TestNode, error_condition};
use starling_xmpp::Element;

const BLOCKING: &str = "urn:xmpp:blocking";

async fn node() -> TestNode {
    TestNode::start_with_modules("mod_privacy: {}\nmod_blocking: {}", "")
        .await
        .expect("node starts")
}

async fn online(node: &TestNode, user: &str, resource: &str) -> Client {
    let mut c = node.login(user, "secret", resource).await.unwrap();
    c.send("<presence/>").await.unwrap();
    c.wait_for(|e| e.name() == "presence").await.unwrap();
    c
}

fn is_error(e: &Element) -> bool {
    e.name() == "message" && e.attr("type") == Some("error")
}

fn items(el: &Element) -> Vec<String> {
    el.children()
        .filter_map(|i| i.attr("jid").map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn block_bounce_push_and_unblock() {
    let node = node().await;
    for user in ["alice", "bob"] {
        node.register(user, "secret").await.unwrap();
    }
    let mut one = online(&node, "alice", "one").await;
    let mut two = online(&node, "alice", "two").await;
    let mut bob = online(&node, "bob", "b").await;

    // The second resource asks for the blocklist, so it receives pushes.
    let list = two
        .iq(
            "<iq type='get' id='bl'><blocklist xmlns='urn:xmpp:blocking'/></iq>",
            "bl",
        )
        .await
        .unwrap();
    assert_eq!(list.attr("type"), Some("result"));

    let reply = one
        .iq(
            "<iq type='set' id='b1'><block xmlns='urn:xmpp:blocking'>\
             <item jid='bob@localhost'/></block></iq>",
            "b1",
        )
        .await
        .unwrap();
    assert_eq!(reply.attr("type"), Some("result"));
    let push = two
        .wait_for(|e| e.name() == "iq" && e.get_child("block", BLOCKING).is_some())
        .await
        .unwrap();
    assert_eq!(
        items(push.get_child("block", BLOCKING).unwrap()),
        ["bob@localhost"]
    );

    // Bob's message bounces with service-unavailable.
    bob.send("<message to='alice@localhost/one' type='chat' id='m1'><body>hi</body></message>")
        .await
        .unwrap();
    let error = bob.wait_for(is_error).await.unwrap();
    assert_eq!(error.attr("id"), Some("m1"));
    assert_eq!(
        error_condition(&error).as_deref(),
        Some("service-unavailable")
    );

    // Alice's message to Bob is refused: not-acceptable with <blocked/>.
    one.send("<message to='bob@localhost' type='chat' id='m2'><body>hi</body></message>")
        .await
        .unwrap();
    let error = one.wait_for(is_error).await.unwrap();
    assert_eq!(error_condition(&error).as_deref(), Some("not-acceptable"));
    let blocked = error
        .get_child("error", "jabber:client")
        .and_then(|e| e.get_child("blocked", "urn:xmpp:blocking:errors"));
    assert!(blocked.is_some(), "no <blocked/> in the error");

    // Unblocking: the push, then Bob's messages arrive again.
    let reply = one
        .iq(
            "<iq type='set' id='u1'><unblock xmlns='urn:xmpp:blocking'>\
             <item jid='bob@localhost'/></unblock></iq>",
            "u1",
        )
        .await
        .unwrap();
    assert_eq!(reply.attr("type"), Some("result"));
    two.wait_for(|e| e.name() == "iq" && e.get_child("unblock", BLOCKING).is_some())
        .await
        .unwrap();
    bob.send("<message to='alice@localhost/one' type='chat' id='m3'><body>back</body></message>")
        .await
        .unwrap();
    let msg = one
        .wait_for(|e| e.name() == "message" && e.attr("id") == Some("m3"))
        .await
        .unwrap();
    assert_ne!(msg.attr("type"), Some("error"));
    let list = two
        .iq(
            "<iq type='get' id='bl2'><blocklist xmlns='urn:xmpp:blocking'/></iq>",
            "bl2",
        )
        .await
        .unwrap();
    assert!(items(list.get_child("blocklist", BLOCKING).unwrap()).is_empty());
}

#[tokio::test]
async fn active_privacy_list_denies_presence_in() {
    let node = node().await;
    for user in ["alice", "carol"] {
        node.register(user, "secret").await.unwrap();
    }
    let mut alice = online(&node, "alice", "one").await;
    let mut carol = online(&node, "carol", "c").await;
    let reply = alice
        .iq(
            "<iq type='set' id='p1'><query xmlns='jabber:iq:privacy'><list name='quiet'>\
             <item type='jid' value='carol@localhost' action='deny' order='1'>\
             <presence-in/></item></list></query></iq>",
            "p1",
        )
        .await
        .unwrap();
    assert_eq!(reply.attr("type"), Some("result"));
    let reply = alice
        .iq(
            "<iq type='set' id='p2'><query xmlns='jabber:iq:privacy'>\
             <active name='quiet'/></query></iq>",
            "p2",
        )
        .await
        .unwrap();
    assert_eq!(reply.attr("type"), Some("result"));

    // Directed presence from Carol is dropped; her message, sent after it, arrives.
    carol
        .send("<presence to='alice@localhost/one'/>")
        .await
        .unwrap();
    carol
        .send("<message to='alice@localhost/one' type='chat' id='after'><body>x</body></message>")
        .await
        .unwrap();
    let mut presence_from_carol = false;
    loop {
        let el = alice.element().await.unwrap();
        if el.name() == "presence" && el.attr("from").is_some_and(|f| f.starts_with("carol@")) {
            presence_from_carol = true;
        }
        if el.name() == "message" && el.attr("id") == Some("after") {
            break;
        }
    }
    assert!(!presence_from_carol, "presence-in was not denied");

    // Declining the active list lets presence through again.
    alice
        .iq(
            "<iq type='set' id='p3'><query xmlns='jabber:iq:privacy'><active/></query></iq>",
            "p3",
        )
        .await
        .unwrap();
    carol
        .send("<presence to='alice@localhost/one'/>")
        .await
        .unwrap();
    alice
        .wait_for(|e| {
            e.name() == "presence" && e.attr("from").is_some_and(|f| f.starts_with("carol@"))
        })
        .await
        .unwrap();
}
