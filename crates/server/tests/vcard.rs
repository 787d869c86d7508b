//! XEP-0054 vCards and XEP-0049 private XML storage end to end, between raw-XML clients on a
//! node running `mod_vcard`, `mod_vcard_xupdate` (XEP-0153 hashes in presence) and
//! `mod_private`.

use starling_testkit::{Client, TestNode, error_condition};
use starling_xmpp::Element;

const VCARD: &str = "vcard-temp";
const PRIVATE: &str = "jabber:iq:private";
const BOOKMARKS: &str = "storage:bookmarks";

async fn node() -> TestNode {
    let node = TestNode::start_with_modules(
        "mod_vcard: {max_vcard_size: 2048, vcard: {fn: Test Server, url: 'https://example.org'}}\n\
         mod_vcard_xupdate: {}\n\
         mod_private: {}",
        "",
    )
    .await
    .expect("node starts");
    for user in ["alice", "bob"] {
        node.register(user, "secret").await.unwrap();
    }
    node
}

async fn login(node: &TestNode, user: &str) -> Client {
    node.login(user, "secret", "res").await.unwrap()
}

fn vcard_of(reply: &Element) -> &Element {
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    reply.get_child("vCard", VCARD).expect("vCard payload")
}

fn field(vcard: &Element, name: &str) -> Option<String> {
    vcard.get_child(name, VCARD).map(Element::text)
}

#[tokio::test]
async fn vcard_set_get_and_read_by_others() {
    let node = node().await;
    let mut alice = login(&node, "alice").await;
    let mut bob = login(&node, "bob").await;

    // No vCard yet: an empty one (no `to`: the account itself).
    let reply = alice
        .iq(
            "<iq type='get' id='v1'><vCard xmlns='vcard-temp'/></iq>",
            "v1",
        )
        .await
        .unwrap();
    assert_eq!(vcard_of(&reply).children().count(), 0);

    let reply = alice
        .iq(
            "<iq type='set' id='v2'><vCard xmlns='vcard-temp'><FN>Alice Liddell</FN>\
             <NICKNAME>alice</NICKNAME><PHOTO><TYPE>image/png</TYPE><BINVAL>aGVsbG8=</BINVAL>\
             </PHOTO></vCard></iq>",
            "v2",
        )
        .await
        .unwrap();
    assert_eq!(reply.attr("type"), Some("result"));

    // Her own vCard, addressed to her bare JID this time.
    let reply = alice
        .iq(
            "<iq type='get' id='v3' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>",
            "v3",
        )
        .await
        .unwrap();
    assert_eq!(
        field(vcard_of(&reply), "FN").as_deref(),
        Some("Alice Liddell")
    );

    // Bob reads it: vCards are public.
    let reply = bob
        .iq(
            "<iq type='get' id='b1' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>",
            "b1",
        )
        .await
        .unwrap();
    let card = vcard_of(&reply);
    assert_eq!(field(card, "NICKNAME").as_deref(), Some("alice"));
    assert!(card.get_child("PHOTO", VCARD).is_some());
    assert_eq!(reply.attr("from"), Some("alice@localhost"));

    // The XEP-0153 hash of the photo (SHA-1 of "hello") is stored beside it.
    let jid = starling_xmpp::jid::BareJid::parse("alice@localhost").unwrap();
    let stored = node.server.stores().vcard(&jid).await.unwrap().unwrap();
    assert_eq!(
        stored.photo_hash.as_deref(),
        Some("aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d")
    );

    // The server's own vCard, from the `vcard` option.
    let reply = bob
        .iq(
            "<iq type='get' id='b2' to='localhost'><vCard xmlns='vcard-temp'/></iq>",
            "b2",
        )
        .await
        .unwrap();
    let card = vcard_of(&reply);
    assert_eq!(field(card, "FN").as_deref(), Some("Test Server"));
    assert_eq!(field(card, "URL").as_deref(), Some("https://example.org"));
}

#[tokio::test]
async fn vcard_forbidden_and_oversized() {
    let node = node().await;
    let mut alice = login(&node, "alice").await;
    let mut bob = login(&node, "bob").await;
    alice
        .iq(
            "<iq type='set' id='a1'><vCard xmlns='vcard-temp'><FN>Alice</FN></vCard></iq>",
            "a1",
        )
        .await
        .unwrap();

    // Bob may not write Alice's vCard.
    let reply = bob
        .iq(
            "<iq type='set' id='b1' to='alice@localhost'>\
             <vCard xmlns='vcard-temp'><FN>Mallory</FN></vCard></iq>",
            "b1",
        )
        .await
        .unwrap();
    assert_eq!(error_condition(&reply).as_deref(), Some("forbidden"));
    // Nor the server's.
    let reply = bob
        .iq(
            "<iq type='set' id='b2' to='localhost'><vCard xmlns='vcard-temp'/></iq>",
            "b2",
        )
        .await
        .unwrap();
    assert_eq!(error_condition(&reply).as_deref(), Some("not-allowed"));
    // An unknown account has no vCard service.
    let reply = bob
        .iq(
            "<iq type='get' id='b3' to='nobody@localhost'><vCard xmlns='vcard-temp'/></iq>",
            "b3",
        )
        .await
        .unwrap();
    assert_eq!(
        error_condition(&reply).as_deref(),
        Some("service-unavailable")
    );
    // Over max_vcard_size.
    let big = format!(
        "<iq type='set' id='a2'><vCard xmlns='vcard-temp'><NOTE>{}</NOTE></vCard></iq>",
        "n".repeat(3000)
    );
    let reply = alice.iq(&big, "a2").await.unwrap();
    assert_eq!(error_condition(&reply).as_deref(), Some("not-acceptable"));

    // Alice's vCard is unchanged.
    let reply = bob
        .iq(
            "<iq type='get' id='b4' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>",
            "b4",
        )
        .await
        .unwrap();
    assert_eq!(field(vcard_of(&reply), "FN").as_deref(), Some("Alice"));
}

#[tokio::test]
async fn private_bookmarks_round_trip_and_refusals() {
    let node = node().await;
    let mut alice = login(&node, "alice").await;
    let mut bob = login(&node, "bob").await;

    let reply = alice
        .iq(
            "<iq type='set' id='p1'><query xmlns='jabber:iq:private'>\
             <storage xmlns='storage:bookmarks'>\
             <conference jid='room@conference.localhost' autojoin='true' name='Room'>\
             <nick>alice</nick></conference></storage></query></iq>",
            "p1",
        )
        .await
        .unwrap();
    assert_eq!(reply.attr("type"), Some("result"));

    let reply = alice
        .iq(
            "<iq type='get' id='p2'><query xmlns='jabber:iq:private'>\
             <storage xmlns='storage:bookmarks'/></query></iq>",
            "p2",
        )
        .await
        .unwrap();
    assert_eq!(reply.attr("type"), Some("result"));
    let conference = reply
        .get_child("query", PRIVATE)
        .and_then(|q| q.get_child("storage", BOOKMARKS))
        .and_then(|s| s.get_child("conference", BOOKMARKS))
        .expect("bookmark stored");
    assert_eq!(conference.attr("jid"), Some("room@conference.localhost"));

    // Bob can neither read nor write Alice's private data.
    for (kind, id) in [("get", "b1"), ("set", "b2")] {
        let reply = bob
            .iq(
                &format!(
                    "<iq type='{kind}' id='{id}' to='alice@localhost'>\
                     <query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/>\
                     </query></iq>"
                ),
                id,
            )
            .await
            .unwrap();
        assert_eq!(
            error_condition(&reply).as_deref(),
            Some("forbidden"),
            "{kind}"
        );
    }
    // His own store is separate and empty.
    let reply = bob
        .iq(
            "<iq type='get' id='b3'><query xmlns='jabber:iq:private'>\
             <storage xmlns='storage:bookmarks'/></query></iq>",
            "b3",
        )
        .await
        .unwrap();
    let storage = reply
        .get_child("query", PRIVATE)
        .and_then(|q| q.get_child("storage", BOOKMARKS))
        .expect("empty storage element");
    assert_eq!(storage.children().count(), 0);

    // Reserved namespaces and empty queries.
    let reply = alice
        .iq(
            "<iq type='set' id='p3'><query xmlns='jabber:iq:private'>\
             <query xmlns='jabber:iq:roster'/></query></iq>",
            "p3",
        )
        .await
        .unwrap();
    assert_eq!(error_condition(&reply).as_deref(), Some("not-acceptable"));
    let reply = alice
        .iq(
            "<iq type='get' id='p4'><query xmlns='jabber:iq:private'/></iq>",
            "p4",
        )
        .await
        .unwrap();
    assert_eq!(error_condition(&reply).as_deref(), Some("bad-request"));
}

#[tokio::test]
async fn disco_advertises_vcard_and_private() {
    let node = node().await;
    let mut alice = login(&node, "alice").await;
    let features = |reply: &Element| -> Vec<String> {
        reply
            .get_child("query", "http://jabber.org/protocol/disco#info")
            .map(|q| {
                q.children()
                    .filter(|c| c.name() == "feature")
                    .filter_map(|c| c.attr("var").map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let reply = alice
        .iq(
            "<iq type='get' id='d1' to='localhost'>\
             <query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            "d1",
        )
        .await
        .unwrap();
    assert!(features(&reply).contains(&VCARD.to_owned()));
    let reply = alice
        .iq(
            "<iq type='get' id='d2' to='alice@localhost'>\
             <query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            "d2",
        )
        .await
        .unwrap();
    let account = features(&reply);
    assert!(account.contains(&VCARD.to_owned()), "{account:?}");
    assert!(account.contains(&PRIVATE.to_owned()), "{account:?}");
}

#[tokio::test]
async fn broadcast_presence_carries_the_avatar_hash() {
    let node = node().await;
    let mut alice = login(&node, "alice").await;
    let reply = alice
        .iq(
            "<iq type='set' id='v1'><vCard xmlns='vcard-temp'><PHOTO><TYPE>image/png</TYPE>\
             <BINVAL>aGVsbG8=</BINVAL></PHOTO></vCard></iq>",
            "v1",
        )
        .await
        .unwrap();
    assert_eq!(reply.attr("type"), Some("result"));
    // A client that does not implement XEP-0153 sends plain presence; its reflection (what
    // contacts receive too) carries the hash of the stored photo.
    alice
        .send("<presence><status>here</status></presence>")
        .await
        .unwrap();
    let me = "alice@localhost/res";
    let presence = alice
        .wait_for(|e| e.name() == "presence" && e.attr("from") == Some(me))
        .await
        .unwrap();
    let photo = presence
        .get_child("x", "vcard-temp:x:update")
        .and_then(|x| x.get_child("photo", "vcard-temp:x:update"))
        .map(Element::text);
    assert_eq!(
        photo.as_deref(),
        Some("aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d")
    );
}
