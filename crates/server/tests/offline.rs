//! XEP-0160 offline messages end to end: raw-XML clients on a node running `mod_offline`.
//!
//! Waiting is by protocol, not by sleeping: a client's stanzas are routed in order, so the
//! answer to a ping sent after some messages means those messages were handled.

use starling_testkit::{Client, TestNode, error_condition};
use starling_xmpp::Element;
use starling_xmpp::ns;

async fn node(options: &str) -> TestNode {
    let node = TestNode::start_with_modules(&format!("mod_offline: {options}"), "")
        .await
        .expect("node starts");
    for user in ["alice", "bob"] {
        node.register(user, "secret").await.unwrap();
    }
    node
}

/// Sends a ping to the server and waits for its answer; returns what arrived before it.
async fn sync(c: &mut Client, id: &str) -> Vec<Element> {
    c.send(&format!(
        "<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await
    .unwrap();
    let mut before = Vec::new();
    loop {
        let el = c.element().await.unwrap();
        if el.name() == "iq" && el.attr("id") == Some(id) {
            return before;
        }
        before.push(el);
    }
}

/// Logs in and sends initial presence; returns the client once its presence is reflected.
async fn online(node: &TestNode, user: &str, resource: &str) -> Client {
    let mut c = node.login(user, "secret", resource).await.unwrap();
    c.send("<presence/>").await.unwrap();
    let me = format!("{user}@localhost/{resource}");
    c.wait_for(|e| e.name() == "presence" && e.attr("from") == Some(me.as_str()))
        .await
        .unwrap();
    c
}

fn messages(elements: &[Element]) -> Vec<&Element> {
    elements.iter().filter(|e| e.name() == "message").collect()
}

fn body(message: &Element) -> String {
    message
        .get_child("body", ns::CLIENT)
        .map(Element::text)
        .unwrap_or_default()
}

#[tokio::test]
async fn messages_wait_for_the_recipient_and_arrive_in_order_with_delay() {
    let node = node("{}").await;
    let mut alice = online(&node, "alice", "phone").await;
    for n in 1..=3 {
        alice
            .send(&format!(
                "<message to='bob@localhost' type='chat' id='m{n}'><body>hello {n}</body></message>"
            ))
            .await
            .unwrap();
    }
    let before = sync(&mut alice, "s1").await;
    assert!(
        messages(&before).is_empty(),
        "no error to the sender: {before:?}"
    );

    // The disco feature of XEP-0160 §4.
    let info = alice
        .iq(
            "<iq type='get' id='d1' to='localhost'>\
             <query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            "d1",
        )
        .await
        .unwrap();
    let query = info.get_child("query", ns::DISCO_INFO).unwrap();
    assert!(
        query
            .children()
            .any(|f| f.attr("var") == Some("msgoffline")),
        "msgoffline advertised"
    );

    let mut bob = node.login("bob", "secret", "laptop").await.unwrap();
    // Nothing is delivered before initial presence.
    assert!(messages(&sync(&mut bob, "s2").await).is_empty());
    bob.send("<presence/>").await.unwrap();
    let received = sync(&mut bob, "s3").await;
    let received = messages(&received);
    assert_eq!(
        received.iter().map(|m| body(m)).collect::<Vec<_>>(),
        ["hello 1", "hello 2", "hello 3"]
    );
    for m in &received {
        assert_eq!(m.attr("from"), Some("alice@localhost/phone"));
        let delay = m.get_child("delay", ns::DELAY).expect("delay added");
        assert_eq!(delay.attr("from"), Some("localhost"));
        let stamp = delay.attr("stamp").unwrap_or_default();
        // XEP-0082 UTC with milliseconds: 2026-01-02T03:04:05.678Z
        assert_eq!(stamp.len(), 24, "{stamp}");
        assert!(stamp.ends_with('Z') && stamp.as_bytes().get(19) == Some(&b'.'));
    }
    // Delivered once: a second resource coming online gets nothing.
    let mut tablet = node.login("bob", "secret", "tablet").await.unwrap();
    tablet.send("<presence/>").await.unwrap();
    assert!(messages(&sync(&mut tablet, "s4").await).is_empty());
}

#[tokio::test]
async fn a_full_queue_bounces_resource_constraint() {
    let node = node("{max_user_offline_messages: 2}").await;
    let mut alice = online(&node, "alice", "phone").await;
    for n in 1..=3 {
        alice
            .send(&format!(
                "<message to='bob@localhost' id='q{n}'><body>{n}</body></message>"
            ))
            .await
            .unwrap();
    }
    let before = sync(&mut alice, "s1").await;
    let errors = messages(&before);
    assert_eq!(errors.len(), 1, "{before:?}");
    let error = errors[0];
    assert_eq!(error.attr("type"), Some("error"));
    assert_eq!(error.attr("id"), Some("q3"));
    assert_eq!(
        error_condition(error).as_deref(),
        Some("resource-constraint")
    );
    let kind = error
        .get_child("error", ns::CLIENT)
        .and_then(|e| e.attr("type"));
    assert_eq!(kind, Some("wait"));
    // The two stored ones still arrive.
    let mut bob = online(&node, "bob", "laptop").await;
    let received = sync(&mut bob, "s2").await;
    assert_eq!(
        messages(&received)
            .iter()
            .map(|m| body(m))
            .collect::<Vec<_>>(),
        ["1", "2"]
    );
}

#[tokio::test]
async fn headlines_and_chat_states_are_not_stored() {
    let node = node("{}").await;
    let mut alice = online(&node, "alice", "phone").await;
    alice
        .send(
            "<message to='bob@localhost' type='headline'><body>news</body></message>\
             <message to='bob@localhost' type='chat'>\
             <composing xmlns='http://jabber.org/protocol/chatstates'/></message>\
             <message to='bob@localhost' type='chat'><body>kept</body>\
             <no-store xmlns='urn:xmpp:hints'/></message>\
             <message to='bob@localhost' type='chat'><body>stored</body></message>",
        )
        .await
        .unwrap();
    let before = sync(&mut alice, "s1").await;
    assert!(messages(&before).is_empty(), "dropped silently: {before:?}");
    let mut bob = online(&node, "bob", "laptop").await;
    let received = sync(&mut bob, "s2").await;
    assert_eq!(
        messages(&received)
            .iter()
            .map(|m| body(m))
            .collect::<Vec<_>>(),
        ["stored"]
    );
}

#[tokio::test]
async fn unknown_recipients_still_get_service_unavailable() {
    let node = node("{}").await;
    let mut alice = online(&node, "alice", "phone").await;
    alice
        .send("<message to='nobody@localhost' type='chat' id='x1'><body>hi</body></message>")
        .await
        .unwrap();
    let error = alice
        .wait_for(|e| e.name() == "message" && e.attr("type") == Some("error"))
        .await
        .unwrap();
    assert_eq!(error.attr("id"), Some("x1"));
    assert_eq!(
        error_condition(&error).as_deref(),
        Some("service-unavailable")
    );
}

#[tokio::test]
async fn flexible_retrieval_keeps_messages_until_fetched() {
    let node = node("{}").await;
    let mut alice = online(&node, "alice", "phone").await;
    alice
        .send("<message to='bob@localhost' type='chat'><body>later</body></message>")
        .await
        .unwrap();
    sync(&mut alice, "s1").await;
    let mut bob = node.login("bob", "secret", "pda").await.unwrap();
    // XEP-0013 §2.2 before presence: the count, and no flood afterwards.
    let info = bob
        .iq(
            "<iq type='get' id='f1'><query xmlns='http://jabber.org/protocol/disco#info' \
             node='http://jabber.org/protocol/offline'/></iq>",
            "f1",
        )
        .await
        .unwrap();
    assert_eq!(info.attr("type"), Some("result"));
    let form = info
        .get_child("query", ns::DISCO_INFO)
        .and_then(|q| q.get_child("x", ns::DATA_FORMS))
        .expect("form");
    let count = form
        .children()
        .find(|f| f.attr("var") == Some("number_of_messages"))
        .and_then(|f| f.get_child("value", ns::DATA_FORMS))
        .map(Element::text);
    assert_eq!(count.as_deref(), Some("1"));
    bob.send("<presence/>").await.unwrap();
    assert!(messages(&sync(&mut bob, "s2").await).is_empty());
    // §2.6: fetch.
    bob.send(
        "<iq type='get' id='f2'><offline xmlns='http://jabber.org/protocol/offline'>\
         <fetch/></offline></iq>",
    )
    .await
    .unwrap();
    let fetched = bob.wait_for(|e| e.name() == "message").await.unwrap();
    assert_eq!(body(&fetched), "later");
    assert!(
        fetched
            .get_child("offline", "http://jabber.org/protocol/offline")
            .is_some()
    );
}
