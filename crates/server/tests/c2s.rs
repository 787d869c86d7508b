//! Client connections against a real node: negotiation, the RFC's errors for bad input, and
//! one-to-one messaging, presence and roster between raw-XML clients.

use starling_testkit::{Client, TestNode, error_condition};
use starling_xmpp::codec::StreamEvent;
use starling_xmpp::ns;

const OPEN: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
                    xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

async fn node() -> TestNode {
    TestNode::start().await.expect("node starts")
}

async fn error_after(node: &TestNode, bytes: &str) -> String {
    let mut c = Client::connect(node.starttls).await.unwrap();
    c.send(bytes).await.unwrap();
    c.stream_error().await.unwrap()
}

#[tokio::test]
async fn starttls_is_required_and_advertised_alone() {
    let node = node().await;
    let mut c = Client::connect(node.starttls).await.unwrap();
    let features = c.open().await.unwrap();
    let starttls = features
        .get_child("starttls", ns::TLS)
        .expect("starttls offered");
    assert!(starttls.get_child("required", ns::TLS).is_some());
    assert!(features.get_child("mechanisms", ns::SASL).is_none());
    // Trying to authenticate anyway is refused with encryption-required.
    assert_eq!(
        c.try_auth_plain("a", "b").await.unwrap(),
        Err("encryption-required".to_owned())
    );
}

#[tokio::test]
async fn plain_login_over_starttls_and_direct_tls() {
    let node = node().await;
    node.register("alice", "secret").await.unwrap();
    let mut c = node.login("alice", "secret", "phone").await.unwrap();
    assert_eq!(c.jid.as_deref(), Some("alice@localhost/phone"));
    let mut d = Client::connect_tls(node.direct_tls).await.unwrap();
    let features = d.open().await.unwrap();
    let mechs: Vec<String> = features
        .get_child("mechanisms", ns::SASL)
        .unwrap()
        .children()
        .map(|m| m.text())
        .collect();
    assert!(mechs.contains(&"SCRAM-SHA-256".to_owned()), "{mechs:?}");
    assert!(mechs.contains(&"PLAIN".to_owned()));
    d.auth_plain("alice", "secret").await.unwrap();
    assert_eq!(d.bind("laptop").await.unwrap(), "alice@localhost/laptop");
    // Both sessions are in the directory.
    assert_eq!(node.server.sm().count(), 2);
    c.send("</stream:stream>").await.unwrap();
}

#[tokio::test]
async fn wrong_password_fails_with_not_authorized() {
    let node = node().await;
    node.register("bob", "right").await.unwrap();
    let mut c = Client::connect(node.starttls).await.unwrap();
    c.open().await.unwrap();
    c.starttls().await.unwrap();
    assert_eq!(
        c.try_auth_plain("bob", "wrong").await.unwrap(),
        Err("not-authorized".to_owned())
    );
    assert_eq!(
        c.try_auth_plain("nobody", "x").await.unwrap(),
        Err("not-authorized".to_owned())
    );
    // A retry with the right password still works on the same stream.
    c.auth_plain("bob", "right").await.unwrap();
}

#[tokio::test]
async fn unknown_mechanism_is_invalid_mechanism() {
    let node = node().await;
    let mut c = Client::connect(node.starttls).await.unwrap();
    c.open().await.unwrap();
    c.starttls().await.unwrap();
    c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='X-NOPE'>AA==</auth>")
        .await
        .unwrap();
    let failure = c.element().await.unwrap();
    assert_eq!(failure.name(), "failure");
    assert!(failure.get_child("invalid-mechanism", ns::SASL).is_some());
}

#[tokio::test]
async fn bad_xml_gets_the_rfc_stream_errors() {
    let node = node().await;
    assert_eq!(
        error_after(&node, &format!("{OPEN}<message><body></message>")).await,
        "not-well-formed"
    );
    assert_eq!(
        error_after(&node, &format!("{OPEN}<!-- hi -->")).await,
        "restricted-xml"
    );
    assert_eq!(
        error_after(&node, &format!("{OPEN}<?pi x?>")).await,
        "restricted-xml"
    );
    assert_eq!(
        error_after(
            &node,
            "<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]><stream:stream/>"
        )
        .await,
        "restricted-xml"
    );
    assert_eq!(
        error_after(
            &node,
            "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>"
        )
        .await,
        "invalid-namespace"
    );
    assert_eq!(
        error_after(
            &node,
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='elsewhere.example' version='1.0'>"
        )
        .await,
        "host-unknown"
    );
    assert_eq!(
        error_after(&node, &format!("{OPEN}<message to='a@localhost'/>")).await,
        "not-authorized"
    );
}

#[tokio::test]
async fn oversized_stanza_is_a_policy_violation() {
    let node = node().await;
    let big = "x".repeat(20_000);
    assert_eq!(
        error_after(
            &node,
            &format!("{OPEN}<message><body>{big}</body></message>")
        )
        .await,
        "policy-violation"
    );
    // After authentication the listener's max_stanza_size (256 KiB by default) applies.
    node.register("carol", "pw").await.unwrap();
    let mut c = node.login("carol", "pw", "r").await.unwrap();
    let huge = "y".repeat(300_000);
    c.send(&format!(
        "<message to='carol@localhost'><body>{huge}</body></message>"
    ))
    .await
    .unwrap();
    assert_eq!(c.stream_error().await.unwrap(), "policy-violation");
    // The server is still up for others.
    node.login("carol", "pw", "other").await.unwrap();
}

#[tokio::test]
async fn negotiation_timeout_closes_silent_connections() {
    let node = TestNode::start_with("negotiation_timeout: 1")
        .await
        .unwrap();
    let mut c = Client::connect(node.starttls).await.unwrap();
    c.send(OPEN).await.unwrap();
    assert_eq!(c.stream_error().await.unwrap(), "connection-timeout");
}

#[tokio::test]
async fn chat_between_two_users_and_forged_from() {
    let node = node().await;
    node.register("alice", "a").await.unwrap();
    node.register("bob", "b").await.unwrap();
    let mut alice = node.login("alice", "a", "r").await.unwrap();
    let mut bob = node.login("bob", "b", "r").await.unwrap();
    // Messages to a full JID arrive even without presence.
    alice
        .send("<message to='bob@localhost/r' type='chat' id='m1'><body>hi bob</body><x xmlns='urn:example:unknown'>kept</x></message>")
        .await
        .unwrap();
    let m = bob.wait_for(|e| e.name() == "message").await.unwrap();
    assert_eq!(m.attr("from"), Some("alice@localhost/r"));
    assert_eq!(
        m.get_child("body", ns::CLIENT).map(|b| b.text()).as_deref(),
        Some("hi bob")
    );
    assert!(
        m.get_child("x", "urn:example:unknown").is_some(),
        "unknown payloads are kept"
    );
    // To the bare JID: needs an available resource.
    bob.send("<presence/>").await.unwrap();
    bob.wait_for(|e| e.name() == "presence").await.unwrap();
    alice
        .send("<message to='bob@localhost' type='chat'><body>bare</body></message>")
        .await
        .unwrap();
    let m = bob.wait_for(|e| e.name() == "message").await.unwrap();
    assert_eq!(
        m.get_child("body", ns::CLIENT).map(|b| b.text()).as_deref(),
        Some("bare")
    );
    // A forged from closes the stream with invalid-from.
    alice
        .send("<message from='bob@localhost/r' to='bob@localhost'><body>x</body></message>")
        .await
        .unwrap();
    assert_eq!(alice.stream_error().await.unwrap(), "invalid-from");
}

#[tokio::test]
async fn undeliverable_and_unknown_get_stanza_errors() {
    let node = node().await;
    node.register("alice", "a").await.unwrap();
    let mut alice = node.login("alice", "a", "r").await.unwrap();
    alice
        .send("<message to='ghost@localhost' type='chat' id='g1'><body>?</body></message>")
        .await
        .unwrap();
    let e = alice
        .wait_for(|e| e.name() == "message" && e.attr("id") == Some("g1"))
        .await
        .unwrap();
    assert_eq!(e.attr("type"), Some("error"));
    assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"));
    let e = alice
        .iq(
            "<iq type='get' to='localhost' id='u1'><query xmlns='urn:example:nothing'/></iq>",
            "u1",
        )
        .await
        .unwrap();
    assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"));
    let e = alice
        .iq(
            "<iq type='get' to='ghost@localhost/x' id='u2'><ping xmlns='urn:xmpp:ping'/></iq>",
            "u2",
        )
        .await
        .unwrap();
    assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"));
    let e = alice
        .iq(
            "<iq type='get' to='a@@b' id='u3'><ping xmlns='urn:xmpp:ping'/></iq>",
            "u3",
        )
        .await
        .unwrap();
    assert_eq!(error_condition(&e).as_deref(), Some("jid-malformed"));
    let e = alice
        .iq(
            "<iq type='get' to='remote.example' id='u4'><ping xmlns='urn:xmpp:ping'/></iq>",
            "u4",
        )
        .await
        .unwrap();
    assert_eq!(
        error_condition(&e).as_deref(),
        Some("remote-server-not-found")
    );
    let e = alice
        .iq(
            "<iq type='bogus' to='localhost' id='u5'><ping xmlns='urn:xmpp:ping'/></iq>",
            "u5",
        )
        .await
        .unwrap();
    assert_eq!(error_condition(&e).as_deref(), Some("bad-request"));
    // Server services answer.
    let r = alice
        .iq(
            "<iq type='get' to='localhost' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>",
            "p1",
        )
        .await
        .unwrap();
    assert_eq!(r.attr("type"), Some("result"));
}

#[tokio::test]
async fn same_full_jid_replaces_the_older_session_with_conflict() {
    let node = node().await;
    node.register("dave", "d").await.unwrap();
    let mut first = node.login("dave", "d", "home").await.unwrap();
    let _second = node.login("dave", "d", "home").await.unwrap();
    assert_eq!(first.stream_error().await.unwrap(), "conflict");
}

#[tokio::test]
async fn subscription_handshake_presence_and_roster_pushes() {
    let node = node().await;
    node.register("romeo", "r").await.unwrap();
    node.register("juliet", "j").await.unwrap();
    let mut romeo = node.login("romeo", "r", "orchard").await.unwrap();
    let mut juliet = node.login("juliet", "j", "balcony").await.unwrap();
    for c in [&mut romeo, &mut juliet] {
        let r = c
            .iq(
                "<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>",
                "r1",
            )
            .await
            .unwrap();
        assert_eq!(r.attr("type"), Some("result"));
        c.send("<presence/>").await.unwrap();
    }
    // Romeo asks; Juliet receives the request from his bare JID.
    romeo
        .send("<presence to='juliet@localhost' type='subscribe'/>")
        .await
        .unwrap();
    let push = romeo
        .wait_for(|e| e.name() == "iq" && e.attr("type") == Some("set"))
        .await
        .unwrap();
    let item = push
        .get_child("query", ns::ROSTER)
        .and_then(|q| q.get_child("item", ns::ROSTER))
        .unwrap();
    assert_eq!(item.attr("ask"), Some("subscribe"));
    let req = juliet
        .wait_for(|e| e.name() == "presence" && e.attr("type") == Some("subscribe"))
        .await
        .unwrap();
    assert_eq!(req.attr("from"), Some("romeo@localhost"));
    // Juliet approves: Romeo gets `subscribed`, a push to `to`, and her presence.
    juliet
        .send("<presence to='romeo@localhost' type='subscribed'/>")
        .await
        .unwrap();
    romeo
        .wait_for(|e| e.name() == "presence" && e.attr("type") == Some("subscribed"))
        .await
        .unwrap();
    romeo
        .wait_for(|e| {
            e.name() == "presence"
                && e.attr("type").is_none()
                && e.attr("from") == Some("juliet@localhost/balcony")
        })
        .await
        .unwrap();
    // Mutual: Juliet subscribes back, Romeo approves.
    juliet
        .send("<presence to='romeo@localhost' type='subscribe'/>")
        .await
        .unwrap();
    romeo
        .wait_for(|e| e.name() == "presence" && e.attr("type") == Some("subscribe"))
        .await
        .unwrap();
    romeo
        .send("<presence to='juliet@localhost' type='subscribed'/>")
        .await
        .unwrap();
    juliet
        .wait_for(|e| {
            e.name() == "presence"
                && e.attr("from") == Some("romeo@localhost/orchard")
                && e.attr("type").is_none()
        })
        .await
        .unwrap();
    let roster = romeo
        .iq(
            "<iq type='get' id='r2'><query xmlns='jabber:iq:roster'/></iq>",
            "r2",
        )
        .await
        .unwrap();
    let item = roster
        .get_child("query", ns::ROSTER)
        .and_then(|q| q.get_child("item", ns::ROSTER))
        .unwrap();
    assert_eq!(item.attr("jid"), Some("juliet@localhost"));
    assert_eq!(item.attr("subscription"), Some("both"));
    // A status change is broadcast; leaving sends unavailable.
    juliet
        .send("<presence><show>away</show></presence>")
        .await
        .unwrap();
    let away = romeo
        .wait_for(|e| e.name() == "presence" && e.get_child("show", ns::CLIENT).is_some())
        .await
        .unwrap();
    assert_eq!(away.attr("from"), Some("juliet@localhost/balcony"));
    juliet.send("</stream:stream>").await.unwrap();
    romeo
        .wait_for(|e| e.name() == "presence" && e.attr("type") == Some("unavailable"))
        .await
        .unwrap();
    // Last activity of an offline contact (XEP-0012).
    let last = romeo
        .iq(
            "<iq type='get' to='juliet@localhost' id='l1'><query xmlns='jabber:iq:last'/></iq>",
            "l1",
        )
        .await
        .unwrap();
    assert_eq!(last.attr("type"), Some("result"), "{last:?}");
}

#[tokio::test]
async fn pending_subscription_request_is_delivered_at_next_login() {
    let node = node().await;
    node.register("a", "a").await.unwrap();
    node.register("b", "b").await.unwrap();
    let mut a = node.login("a", "a", "r").await.unwrap();
    a.send("<presence to='b@localhost' type='subscribe'/>")
        .await
        .unwrap();
    a.iq(
        "<iq type='get' to='localhost' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
        "p",
    )
    .await
    .unwrap();
    let mut b = node.login("b", "b", "r").await.unwrap();
    b.send("<presence/>").await.unwrap();
    let req = b
        .wait_for(|e| e.name() == "presence" && e.attr("type") == Some("subscribe"))
        .await
        .unwrap();
    assert_eq!(req.attr("from"), Some("a@localhost"));
}

#[tokio::test]
async fn stream_close_is_answered() {
    let node = node().await;
    node.register("eve", "e").await.unwrap();
    let mut c = node.login("eve", "e", "r").await.unwrap();
    c.send("</stream:stream>").await.unwrap();
    loop {
        match c.next().await {
            Ok(StreamEvent::Close) => break,
            Ok(_) => continue,
            Err(e) => panic!("expected the server to close its stream: {e}"),
        }
    }
}

/// RFC 6121 appendix E: we advertise `<session><optional/></session>`, and clients that send
/// the RFC 3921 session IQ after binding (strophe.js) get a result, not an error.
#[tokio::test]
async fn legacy_session_iq_after_bind_is_answered() {
    let node = TestNode::start().await.unwrap();
    node.register("sess", "pw").await.unwrap();
    let mut client = node.login("sess", "pw", "r").await.unwrap();
    let reply = client
        .iq(
            "<iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>",
            "s1",
        )
        .await
        .unwrap();
    assert_eq!(reply.attr("type"), Some("result"));
    assert_eq!(reply.attr("from"), Some("localhost"));
}
