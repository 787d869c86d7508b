//! XEP-0198 stream management and XEP-0352 client state indication against a real node, with
//! raw-XML clients: enabling, ack counting, detaching on a dropped connection, resumption
//! (stanzas resent exactly once), failed resumption, expiry into offline storage, and what an
//! inactive client's session holds back.

use starling_testkit::{Client, TestNode};
use starling_xmpp::Element;
use starling_xmpp::codec::StreamEvent;
use starling_xmpp::ns;

const SM: &str = "urn:xmpp:sm:3";
const CSI: &str = "urn:xmpp:csi:0";

async fn node(stream_mgmt: &str) -> TestNode {
    TestNode::start_with_modules(
        &format!("mod_offline: {{}}\nmod_stream_mgmt: {stream_mgmt}\nmod_client_state: {{}}"),
        "",
    )
    .await
    .expect("node starts")
}

/// Logs in and enables stream management with resumption; returns the client and the id.
async fn login_resumable(node: &TestNode, user: &str, resource: &str) -> (Client, String) {
    let mut c = node.login(user, "pw", resource).await.unwrap();
    c.send(&format!("<enable xmlns='{SM}' resume='true'/>"))
        .await
        .unwrap();
    let enabled = c.wait_for(|e| e.ns() == SM).await.unwrap();
    assert_eq!(enabled.name(), "enabled", "{}", xml(&enabled));
    assert_eq!(enabled.attr("resume"), Some("true"));
    let id = enabled.attr("id").expect("a resumption id").to_owned();
    (c, id)
}

/// Authenticates a new connection without binding.
async fn authenticate(node: &TestNode, user: &str) -> Client {
    let mut c = Client::connect(node.starttls).await.unwrap();
    c.open().await.unwrap();
    c.starttls().await.unwrap();
    c.auth_plain(user, "pw").await.unwrap();
    c
}

fn xml(el: &Element) -> String {
    String::from_utf8_lossy(&starling_xmpp::codec::to_bytes(el)).into_owned()
}

fn body(el: &Element) -> Option<String> {
    el.get_child("body", ns::CLIENT).map(|b| b.text())
}

/// Sends a ping to the server and returns every element received before its result.
async fn until_ping(c: &mut Client, id: &str) -> Vec<Element> {
    c.send(&format!(
        "<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await
    .unwrap();
    let mut seen = Vec::new();
    loop {
        let el = c.element().await.unwrap();
        if el.name() == "iq" && el.attr("id") == Some(id) {
            return seen;
        }
        seen.push(el);
    }
}

async fn wait_until_gone(node: &TestNode, jid: &str) {
    let full = starling_xmpp::jid::FullJid::parse(jid).unwrap();
    let deadline = tokio::time::Instant::now() + starling_testkit::TIMEOUT;
    while node.server.sm().get(&full).is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{jid} never left the directory"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn features_enable_and_ack_counting() {
    let node = node("{}").await;
    node.register("alice", "pw").await.unwrap();
    let mut c = authenticate(&node, "alice").await;
    let features = c.features.clone().unwrap();
    assert!(features.get_child("sm", SM).is_some(), "{}", xml(&features));
    assert!(
        features.get_child("csi", CSI).is_some(),
        "{}",
        xml(&features)
    );
    // Enabling before binding is refused; the client may still bind and enable.
    c.send(&format!("<enable xmlns='{SM}'/>")).await.unwrap();
    let failed = c.element().await.unwrap();
    assert!(failed.is("failed", SM));
    assert!(
        failed
            .get_child("unexpected-request", ns::STANZAS)
            .is_some()
    );
    c.bind("phone").await.unwrap();
    c.send(&format!("<enable xmlns='{SM}'/>")).await.unwrap();
    let enabled = c.element().await.unwrap();
    assert!(enabled.is("enabled", SM));
    assert_eq!(enabled.attr("resume"), None, "resumption was not asked for");
    // A second enable is refused.
    c.send(&format!("<enable xmlns='{SM}'/>")).await.unwrap();
    assert!(c.element().await.unwrap().is("failed", SM));
    c.send(&format!("<r xmlns='{SM}'/>")).await.unwrap();
    let a = c.element().await.unwrap();
    assert!(a.is("a", SM));
    assert_eq!(a.attr("h"), Some("0"));
    // Two stanzas handled.
    until_ping(&mut c, "p1").await;
    until_ping(&mut c, "p2").await;
    c.send(&format!("<r xmlns='{SM}'/>")).await.unwrap();
    let a = c.wait_for(|e| e.is("a", SM)).await.unwrap();
    assert_eq!(a.attr("h"), Some("2"));
    // Two results were sent: acknowledging them is fine, acknowledging more is an error.
    c.send(&format!("<a xmlns='{SM}' h='2'/>")).await.unwrap();
    until_ping(&mut c, "p3").await;
    c.send(&format!("<a xmlns='{SM}' h='9'/>")).await.unwrap();
    assert_eq!(c.stream_error().await.unwrap(), "undefined-condition");
}

#[tokio::test]
async fn server_requests_acks() {
    let node = node("{}").await;
    node.register("alice", "pw").await.unwrap();
    let (mut c, _) = login_resumable(&node, "alice", "phone").await;
    // Five unacknowledged stanzas make the server ask.
    for n in 0..5 {
        c.send(&format!(
            "<iq type='get' id='q{n}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await
        .unwrap();
    }
    let r = c.wait_for(|e| e.ns() == SM).await.unwrap();
    assert!(r.is("r", SM), "{}", xml(&r));
    c.send(&format!("<a xmlns='{SM}' h='5'/>")).await.unwrap();
    // The stream goes on.
    until_ping(&mut c, "after").await;
}

#[tokio::test]
async fn dropped_connection_detaches_and_resumes_exactly_once() {
    let node = node("{}").await;
    node.register("alice", "pw").await.unwrap();
    node.register("bob", "pw").await.unwrap();
    let (mut alice, id) = login_resumable(&node, "alice", "phone").await;
    let mut bob = node.login("bob", "pw", "pc").await.unwrap();
    let send = |n: u32| {
        format!(
            "<message to='alice@localhost/phone' type='chat' id='m{n}'><body>m{n}</body></message>"
        )
    };
    bob.send(&send(1)).await.unwrap();
    let m1 = alice.wait_for(|e| e.name() == "message").await.unwrap();
    assert_eq!(body(&m1).as_deref(), Some("m1"));
    // The client vanishes without closing its stream.
    drop(alice);
    bob.send(&send(2)).await.unwrap();
    bob.send(&send(3)).await.unwrap();
    until_ping(&mut bob, "sync").await;
    // The session is still there, under the same full JID.
    let full = starling_xmpp::jid::FullJid::parse("alice@localhost/phone").unwrap();
    assert!(node.server.sm().get(&full).is_some());
    // A new connection resumes it, having handled m1.
    let mut again = authenticate(&node, "alice").await;
    again
        .send(&format!("<resume xmlns='{SM}' previd='{id}' h='1'/>"))
        .await
        .unwrap();
    let resumed = again.element().await.unwrap();
    assert!(resumed.is("resumed", SM), "{}", xml(&resumed));
    assert_eq!(resumed.attr("previd"), Some(id.as_str()));
    assert_eq!(resumed.attr("h"), Some("0"));
    // m2 and m3 come again, once each, and m1 does not.
    let seen = until_ping(&mut again, "after").await;
    let bodies: Vec<String> = seen.iter().filter_map(body).collect();
    assert_eq!(bodies, ["m2", "m3"]);
    // The session goes on with the same JID: new messages arrive, counting continues.
    bob.send(&send(4)).await.unwrap();
    let m4 = again.wait_for(|e| e.name() == "message").await.unwrap();
    assert_eq!(body(&m4).as_deref(), Some("m4"));
    assert_eq!(m4.attr("to"), Some("alice@localhost/phone"));
    again.send(&format!("<r xmlns='{SM}'/>")).await.unwrap();
    let a = again.wait_for(|e| e.is("a", SM)).await.unwrap();
    assert_eq!(a.attr("h"), Some("1"), "the ping after resumption");
    assert_eq!(node.server.sm().count(), 2);
}

#[tokio::test]
async fn resuming_over_a_live_connection_takes_it_over() {
    let node = node("{}").await;
    node.register("alice", "pw").await.unwrap();
    let (mut old, id) = login_resumable(&node, "alice", "phone").await;
    let mut again = authenticate(&node, "alice").await;
    again
        .send(&format!("<resume xmlns='{SM}' previd='{id}' h='0'/>"))
        .await
        .unwrap();
    assert!(again.element().await.unwrap().is("resumed", SM));
    until_ping(&mut again, "p").await;
    // The old connection is closed.
    assert!(old.wait_for(|_| false).await.is_err());
    assert_eq!(node.server.sm().count(), 1);
}

#[tokio::test]
async fn resume_with_a_bad_id_fails_and_binding_still_works() {
    let node = node("{}").await;
    node.register("alice", "pw").await.unwrap();
    node.register("bob", "pw").await.unwrap();
    let (_bob, bob_id) = login_resumable(&node, "bob", "pc").await;
    let mut c = authenticate(&node, "alice").await;
    for previd in ["nope", bob_id.as_str()] {
        c.send(&format!("<resume xmlns='{SM}' previd='{previd}' h='0'/>"))
            .await
            .unwrap();
        let failed = c.element().await.unwrap();
        assert!(failed.is("failed", SM), "{}", xml(&failed));
        assert!(failed.get_child("item-not-found", ns::STANZAS).is_some());
    }
    assert_eq!(c.bind("phone").await.unwrap(), "alice@localhost/phone");
    // Resumption is for unbound streams only.
    c.send(&format!("<resume xmlns='{SM}' previd='{bob_id}' h='0'/>"))
        .await
        .unwrap();
    assert!(c.element().await.unwrap().is("failed", SM));
}

#[tokio::test]
async fn expired_session_sends_unacked_messages_offline() {
    let node = node("{resume_timeout: 1}").await;
    node.register("alice", "pw").await.unwrap();
    node.register("bob", "pw").await.unwrap();
    let (alice, id) = login_resumable(&node, "alice", "phone").await;
    let mut bob = node.login("bob", "pw", "pc").await.unwrap();
    drop(alice);
    bob.send("<message to='alice@localhost/phone' type='chat' id='late'><body>while away</body></message>")
        .await
        .unwrap();
    until_ping(&mut bob, "sync").await;
    wait_until_gone(&node, "alice@localhost/phone").await;
    // Bob got no error: the message was kept.
    let seen = until_ping(&mut bob, "sync2").await;
    assert!(
        seen.iter().all(|e| e.attr("type") != Some("error")),
        "{:?}",
        seen.iter().map(xml).collect::<Vec<_>>()
    );
    // The id is gone: resuming fails.
    let mut c = authenticate(&node, "alice").await;
    c.send(&format!("<resume xmlns='{SM}' previd='{id}' h='0'/>"))
        .await
        .unwrap();
    assert!(c.element().await.unwrap().is("failed", SM));
    // A new session gets it from offline storage, with a delay.
    c.bind("phone").await.unwrap();
    c.send("<presence/>").await.unwrap();
    let m = c
        .wait_for(|e| e.name() == "message" && body(e).is_some())
        .await
        .unwrap();
    assert_eq!(body(&m).as_deref(), Some("while away"));
    assert!(m.get_child("delay", ns::DELAY).is_some(), "{}", xml(&m));
}

#[tokio::test]
async fn expired_session_bounces_when_resend_is_off() {
    let node = node("{resume_timeout: 1, resend_on_timeout: false}").await;
    node.register("alice", "pw").await.unwrap();
    node.register("bob", "pw").await.unwrap();
    let (alice, _) = login_resumable(&node, "alice", "phone").await;
    let mut bob = node.login("bob", "pw", "pc").await.unwrap();
    drop(alice);
    bob.send("<message to='alice@localhost/phone' type='chat' id='late'><body>x</body></message>")
        .await
        .unwrap();
    let error = bob
        .wait_for(|e| e.name() == "message" && e.attr("type") == Some("error"))
        .await
        .unwrap();
    assert_eq!(error.attr("id"), Some("late"));
    assert_eq!(
        starling_testkit::error_condition(&error).as_deref(),
        Some("service-unavailable")
    );
}

#[tokio::test]
async fn inactive_client_gets_bodies_at_once_and_presence_after_active() {
    let node = node("{}").await;
    node.register("alice", "pw").await.unwrap();
    node.register("bob", "pw").await.unwrap();
    let mut alice = node.login("alice", "pw", "phone").await.unwrap();
    let mut bob = node.login("bob", "pw", "pc").await.unwrap();
    let presence =
        |show: &str| format!("<presence to='alice@localhost/phone'><show>{show}</show></presence>");
    let composing = "<message to='alice@localhost/phone' type='chat'>\
                     <composing xmlns='http://jabber.org/protocol/chatstates'/></message>";
    alice
        .send(&format!("<inactive xmlns='{CSI}'/>"))
        .await
        .unwrap();
    until_ping(&mut alice, "a0").await;
    for show in ["away", "dnd", "xa"] {
        bob.send(&presence(show)).await.unwrap();
    }
    bob.send(composing).await.unwrap();
    bob.send(composing).await.unwrap();
    // Once Bob's ping returns, all of it sits in Alice's session.
    until_ping(&mut bob, "b1").await;
    alice
        .send(&format!("<active xmlns='{CSI}'/>"))
        .await
        .unwrap();
    let seen = until_ping(&mut alice, "a1").await;
    let kinds: Vec<String> = seen
        .iter()
        .map(|e| {
            e.get_child("show", ns::CLIENT)
                .map(|s| s.text())
                .unwrap_or_else(|| e.name().to_owned())
        })
        .collect();
    // Only the latest presence and chat state, in order.
    assert_eq!(
        kinds,
        ["xa", "message"],
        "{:?}",
        seen.iter().map(xml).collect::<Vec<_>>()
    );

    // Inactive again: a message with a body comes at once, after what was held.
    alice
        .send(&format!("<inactive xmlns='{CSI}'/>"))
        .await
        .unwrap();
    until_ping(&mut alice, "a2").await;
    bob.send(&presence("chat")).await.unwrap();
    bob.send("<message to='alice@localhost/phone' type='chat' id='b'><body>now</body></message>")
        .await
        .unwrap();
    let mut before = Vec::new();
    loop {
        match alice.next().await.unwrap() {
            StreamEvent::Stanza(el) if body(&el).is_some() => {
                assert_eq!(body(&el).as_deref(), Some("now"));
                break;
            }
            StreamEvent::Stanza(el) => before.push(el),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].name(), "presence");
}

#[tokio::test]
async fn unknown_first_level_elements_are_still_refused() {
    let node = node("{}").await;
    node.register("alice", "pw").await.unwrap();
    let mut c = node.login("alice", "pw", "phone").await.unwrap();
    c.send("<foo xmlns='urn:example:nope'/>").await.unwrap();
    assert_eq!(c.stream_error().await.unwrap(), "unsupported-stanza-type");
}
