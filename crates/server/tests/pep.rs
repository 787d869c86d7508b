//! XEP-0163 PEP end to end between raw-XML clients: publishing with auto-create, XEP-0115
//! caps learnt by the server's own disco#info query, `+notify` notifications, retrieval under
//! the access models, and publish-options preconditions.

use starling_modules::pep::caps::sha1_ver;
use starling_storage::{RosterItem, Subscription};
use starling_testkit::{Client, TestNode, error_condition};
use starling_xmpp::Element;
use starling_xmpp::jid::BareJid;

const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const AVATAR: &str = "urn:xmpp:avatar:metadata";
const BOOKMARKS: &str = "urn:xmpp:bookmarks:1";

/// A node with `mod_pep` under ejabberd's name, and alice and bob subscribed both ways.
async fn node() -> TestNode {
    let node = TestNode::start_with_modules("mod_pubsub: {max_items_node: 100}", "")
        .await
        .expect("node starts");
    for user in ["alice", "bob"] {
        node.register(user, "secret").await.unwrap();
    }
    for (user, contact) in [("alice", "bob"), ("bob", "alice")] {
        let owner = BareJid::new(Some(user), "localhost").unwrap();
        let mut item = RosterItem::new(BareJid::new(Some(contact), "localhost").unwrap());
        item.subscription = Subscription::Both;
        node.server
            .stores()
            .put_item(&owner, &item, 100)
            .await
            .unwrap();
    }
    node
}

/// Bob's client: interested in avatar metadata only.
fn bob_caps() -> Element {
    format!(
        "<query xmlns='{DISCO_INFO}'><identity category='client' type='phone' name='Bob'/>\
         <feature var='{DISCO_INFO}'/><feature var='{AVATAR}+notify'/>\
         <feature var='http://jabber.org/protocol/caps'/></query>"
    )
    .parse()
    .unwrap()
}

/// Sends initial presence with caps, then answers the server's disco#info query for them.
async fn online_with_caps(client: &mut Client, caps: Element) {
    let ver = sha1_ver(&caps).unwrap();
    client
        .send(&format!(
            "<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' \
             node='https://example.org/bob' ver='{ver}'/></presence>"
        ))
        .await
        .unwrap();
    let query = client
        .wait_for(|e| {
            e.name() == "iq"
                && e.attr("type") == Some("get")
                && e.get_child("query", DISCO_INFO).is_some()
        })
        .await
        .unwrap();
    assert_eq!(query.attr("from"), Some("localhost"));
    let node = query
        .get_child("query", DISCO_INFO)
        .and_then(|q| q.attr("node"))
        .unwrap();
    assert_eq!(node, format!("https://example.org/bob#{ver}"));
    let id = query.attr("id").unwrap();
    let mut answer = caps;
    starling_xmpp::stanza::set_attr(&mut answer, "node", node);
    let xml = String::from_utf8(starling_xmpp::codec::to_bytes(&answer)).unwrap();
    client
        .send(&format!(
            "<iq type='result' id='{id}' to='localhost'>{xml}</iq>"
        ))
        .await
        .unwrap();
}

fn publish(id: &str, node: &str, item: &str, payload: &str, options: &str) -> String {
    format!(
        "<iq type='set' id='{id}'><pubsub xmlns='{PUBSUB}'><publish node='{node}'>\
         <item id='{item}'>{payload}</item></publish>{options}</pubsub></iq>"
    )
}

fn publish_options(fields: &[(&str, &str)]) -> String {
    let mut x = String::from(
        "<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' \
         type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>",
    );
    for (var, value) in fields {
        x.push_str(&format!(
            "<field var='{var}'><value>{value}</value></field>"
        ));
    }
    x + "</x></publish-options>"
}

const METADATA: &str = "<metadata xmlns='urn:xmpp:avatar:metadata'><info bytes='2048' \
    id='111f4b3c50d7b0df729d299bc6f8e9ef9066971f' type='image/png' height='64' width='64'/>\
    </metadata>";

#[tokio::test]
async fn avatar_notifications_retrieval_whitelist_and_preconditions() {
    let node = node().await;
    let mut alice = node.login("alice", "secret", "laptop").await.unwrap();
    let mut bob = node.login("bob", "secret", "phone").await.unwrap();
    online_with_caps(&mut bob, bob_caps()).await;
    alice.send("<presence/>").await.unwrap();

    // Alice publishes her avatar metadata: auto-created, and Bob hears about it.
    let avatar_id = "111f4b3c50d7b0df729d299bc6f8e9ef9066971f";
    let reply = alice
        .iq(&publish("p1", AVATAR, avatar_id, METADATA, ""), "p1")
        .await
        .unwrap();
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    let event = bob
        .wait_for(|e| e.name() == "message" && e.get_child("event", EVENT).is_some())
        .await
        .unwrap();
    assert_eq!(event.attr("type"), Some("headline"));
    assert_eq!(event.attr("from"), Some("alice@localhost"));
    assert_eq!(event.attr("to"), Some("bob@localhost/phone"));
    let items = event
        .get_child("event", EVENT)
        .and_then(|e| e.get_child("items", EVENT))
        .unwrap();
    assert_eq!(items.attr("node"), Some(AVATAR));
    let item = items.get_child("item", EVENT).unwrap();
    assert_eq!(item.attr("id"), Some(avatar_id));
    assert!(item.get_child("metadata", AVATAR).is_some());

    // Bob retrieves Alice's avatar metadata himself.
    let reply = bob
        .iq(
            &format!(
                "<iq type='get' id='g1' to='alice@localhost'><pubsub xmlns='{PUBSUB}'>\
                 <items node='{AVATAR}' max_items='1'/></pubsub></iq>"
            ),
            "g1",
        )
        .await
        .unwrap();
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    let got = reply
        .get_child("pubsub", PUBSUB)
        .and_then(|p| p.get_child("items", PUBSUB))
        .and_then(|i| i.get_child("item", PUBSUB))
        .and_then(|i| i.attr("id"));
    assert_eq!(got, Some(avatar_id));

    // Bookmarks (XEP-0402) with a whitelist: stored for Alice, refused to Bob.
    let bookmark_options = publish_options(&[
        ("pubsub#persist_items", "true"),
        ("pubsub#max_items", "max"),
        ("pubsub#send_last_published_item", "never"),
        ("pubsub#access_model", "whitelist"),
    ]);
    let conference = "<conference xmlns='urn:xmpp:bookmarks:1' name='Council' \
                      autojoin='true'><nick>alice</nick></conference>";
    let reply = alice
        .iq(
            &publish(
                "p2",
                BOOKMARKS,
                "council@conference.localhost",
                conference,
                &bookmark_options,
            ),
            "p2",
        )
        .await
        .unwrap();
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    let get_bookmarks = |id: &str| {
        format!(
            "<iq type='get' id='{id}' to='alice@localhost'><pubsub xmlns='{PUBSUB}'>\
             <items node='{BOOKMARKS}'/></pubsub></iq>"
        )
    };
    let reply = bob.iq(&get_bookmarks("g2"), "g2").await.unwrap();
    assert_eq!(error_condition(&reply).as_deref(), Some("not-allowed"));
    let reply = alice.iq(&get_bookmarks("g3"), "g3").await.unwrap();
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");

    // Publish-options that the existing node does not satisfy.
    let open = publish_options(&[("pubsub#access_model", "open")]);
    let reply = alice
        .iq(
            &publish(
                "p3",
                BOOKMARKS,
                "other@conference.localhost",
                conference,
                &open,
            ),
            "p3",
        )
        .await
        .unwrap();
    assert_eq!(error_condition(&reply).as_deref(), Some("conflict"));
    let text = reply
        .get_child("error", "jabber:client")
        .and_then(|e| e.get_child("text", "urn:ietf:params:xml:ns:xmpp-stanzas"))
        .map(Element::text);
    assert_eq!(text.as_deref(), Some("precondition-not-met"));

    // Bob never heard about the whitelisted bookmarks: the next event he gets is the avatar
    // update that follows.
    alice
        .iq(&publish("p4", AVATAR, "second", METADATA, ""), "p4")
        .await
        .unwrap();
    let event = bob
        .wait_for(|e| e.name() == "message" && e.get_child("event", EVENT).is_some())
        .await
        .unwrap();
    let node_name = event
        .get_child("event", EVENT)
        .and_then(|e| e.get_child("items", EVENT))
        .and_then(|i| i.attr("node"));
    assert_eq!(node_name, Some(AVATAR));

    // Account features advertise PEP.
    let reply = bob
        .iq(
            &format!(
                "<iq type='get' id='d1' to='alice@localhost'><query xmlns='{DISCO_INFO}'/></iq>"
            ),
            "d1",
        )
        .await
        .unwrap();
    let xml = String::from_utf8(starling_xmpp::codec::to_bytes(&reply)).unwrap();
    for feature in [
        "pubsub#publish",
        "pubsub#publish-options",
        "pubsub#access-whitelist",
    ] {
        assert!(xml.contains(feature), "{feature} missing: {xml}");
    }
}

#[tokio::test]
async fn a_session_coming_online_gets_the_last_items() {
    let node = node().await;
    let mut alice = node.login("alice", "secret", "laptop").await.unwrap();
    let reply = alice
        .iq(&publish("p1", AVATAR, "current", METADATA, ""), "p1")
        .await
        .unwrap();
    assert_eq!(reply.attr("type"), Some("result"));
    // Bob arrives later: once his caps are known, Alice's last avatar comes with a delay.
    let mut bob = node.login("bob", "secret", "phone").await.unwrap();
    online_with_caps(&mut bob, bob_caps()).await;
    let event = bob
        .wait_for(|e| e.name() == "message" && e.get_child("event", EVENT).is_some())
        .await
        .unwrap();
    assert_eq!(event.attr("from"), Some("alice@localhost"));
    assert!(event.get_child("delay", "urn:xmpp:delay").is_some());
    let id = event
        .get_child("event", EVENT)
        .and_then(|e| e.get_child("items", EVENT))
        .and_then(|i| i.get_child("item", EVENT))
        .and_then(|i| i.attr("id"));
    assert_eq!(id, Some("current"));
}
