//! XEP-0280 message carbons end to end: three raw-XML clients (alice/phone and alice/laptop
//! with carbons on, bob) on a node running `mod_carboncopy`.

use starling_testkit::{Client, TestNode};
use starling_xmpp::Element;
use starling_xmpp::ns;

const CARBONS: &str = "urn:xmpp:carbons:2";
const FORWARD: &str = "urn:xmpp:forward:0";

async fn node() -> TestNode {
    let node = TestNode::start_with_modules("mod_carboncopy: {}", "")
        .await
        .expect("node starts");
    for user in ["alice", "bob"] {
        node.register(user, "secret").await.unwrap();
    }
    node
}

/// Logs in, sends initial presence with `priority` and waits for its own reflection.
async fn online(node: &TestNode, user: &str, resource: &str, priority: i8) -> Client {
    let mut c = node.login(user, "secret", resource).await.unwrap();
    c.send(&format!(
        "<presence><priority>{priority}</priority></presence>"
    ))
    .await
    .unwrap();
    let me = format!("{user}@localhost/{resource}");
    c.wait_for(|e| e.name() == "presence" && e.attr("from") == Some(me.as_str()))
        .await
        .unwrap();
    c
}

async fn set_carbons(c: &mut Client, on: bool, id: &str) {
    let payload = if on { "enable" } else { "disable" };
    let reply = c
        .iq(
            &format!("<iq type='set' id='{id}'><{payload} xmlns='{CARBONS}'/></iq>"),
            id,
        )
        .await
        .unwrap();
    assert_eq!(reply.attr("type"), Some("result"), "{payload} refused");
}

/// The next message the client receives (presence and IQs are skipped).
async fn next_message(c: &mut Client) -> Element {
    c.wait_for(|e| e.name() == "message").await.unwrap()
}

fn body(message: &Element) -> String {
    message
        .get_child("body", ns::CLIENT)
        .map(Element::text)
        .unwrap_or_default()
}

/// The direction (`sent`/`received`) and forwarded message of a carbon.
fn carbon(message: &Element) -> Option<(String, Element)> {
    let wrapper = message.children().find(|c| c.ns() == CARBONS)?;
    let inner = wrapper
        .get_child("forwarded", FORWARD)?
        .get_child("message", ns::CLIENT)?;
    Some((wrapper.name().to_owned(), inner.clone()))
}

#[tokio::test]
async fn carbons_copy_received_and_sent_messages_until_disabled() {
    let node = node().await;
    // Phone has the higher priority, so bare-JID messages go to it alone.
    let mut phone = online(&node, "alice", "phone", 5).await;
    let mut laptop = online(&node, "alice", "laptop", 0).await;
    let mut bob = online(&node, "bob", "pc", 0).await;
    set_carbons(&mut phone, true, "on1").await;
    set_carbons(&mut laptop, true, "on2").await;

    // The feature is advertised on the host.
    let info = phone
        .iq(
            "<iq type='get' id='d1' to='localhost'>\
             <query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            "d1",
        )
        .await
        .unwrap();
    let vars: Vec<&str> = info
        .get_child("query", ns::DISCO_INFO)
        .unwrap()
        .children()
        .filter_map(|f| f.attr("var"))
        .collect();
    assert!(vars.contains(&CARBONS), "{vars:?}");

    // §7: bob → alice's bare JID. Phone gets the original, laptop a received carbon.
    bob.send(
        "<message to='alice@localhost' type='chat' id='b1'><body>hello alice</body></message>",
    )
    .await
    .unwrap();
    let original = next_message(&mut phone).await;
    assert_eq!(body(&original), "hello alice");
    assert!(carbon(&original).is_none());
    let copy = next_message(&mut laptop).await;
    assert_eq!(copy.attr("from"), Some("alice@localhost"));
    assert_eq!(copy.attr("to"), Some("alice@localhost/laptop"));
    assert_eq!(copy.attr("type"), Some("chat"));
    let (direction, inner) = carbon(&copy).expect("a carbon");
    assert_eq!(direction, "received");
    assert_eq!(body(&inner), "hello alice");
    assert_eq!(inner.attr("from"), Some("bob@localhost/pc"));

    // §8: phone → bob. Bob gets it, laptop a sent carbon.
    phone
        .send("<message to='bob@localhost' type='chat' id='a1'><body>hi bob</body></message>")
        .await
        .unwrap();
    assert_eq!(body(&next_message(&mut bob).await), "hi bob");
    let copy = next_message(&mut laptop).await;
    assert_eq!(copy.attr("from"), Some("alice@localhost"));
    let (direction, inner) = carbon(&copy).expect("a carbon");
    assert_eq!(direction, "sent");
    assert_eq!(body(&inner), "hi bob");
    assert_eq!(inner.attr("to"), Some("bob@localhost"));
    assert_eq!(inner.attr("from"), Some("alice@localhost/phone"));

    // §9: a private message is not copied, and the hint is removed for the recipient.
    bob.send(
        "<message to='alice@localhost' type='chat' id='b2'><body>secret</body>\
         <private xmlns='urn:xmpp:carbons:2'/></message>",
    )
    .await
    .unwrap();
    let original = next_message(&mut phone).await;
    assert_eq!(body(&original), "secret");
    assert!(original.get_child("private", CARBONS).is_none());
    // The next thing laptop gets is the carbon of a later message, not the private one.
    bob.send("<message to='alice@localhost' type='chat' id='b3'><body>public</body></message>")
        .await
        .unwrap();
    assert_eq!(body(&next_message(&mut phone).await), "public");
    let (_, inner) = carbon(&next_message(&mut laptop).await).expect("a carbon");
    assert_eq!(body(&inner), "public");

    // §5: laptop disables carbons; bare-JID messages are no longer copied to it.
    set_carbons(&mut laptop, false, "off1").await;
    bob.send("<message to='alice@localhost' type='chat' id='b4'><body>after</body></message>")
        .await
        .unwrap();
    assert_eq!(body(&next_message(&mut phone).await), "after");
    bob.send(
        "<message to='alice@localhost/laptop' type='chat' id='b5'><body>direct</body></message>",
    )
    .await
    .unwrap();
    let next = next_message(&mut laptop).await;
    assert!(carbon(&next).is_none(), "laptop still got a carbon");
    assert_eq!(body(&next), "direct");
    // Phone still has carbons on, so it sees laptop's direct message as a received carbon.
    let (direction, inner) = carbon(&next_message(&mut phone).await).expect("a carbon");
    assert_eq!(direction, "received");
    assert_eq!(body(&inner), "direct");
}

#[tokio::test]
async fn only_the_account_itself_may_enable() {
    let node = node().await;
    let mut bob = online(&node, "bob", "pc", 0).await;
    let reply = bob
        .iq(
            &format!(
                "<iq type='set' id='x1' to='alice@localhost'><enable xmlns='{CARBONS}'/></iq>"
            ),
            "x1",
        )
        .await
        .unwrap();
    assert_eq!(reply.attr("type"), Some("error"));
    assert_eq!(
        starling_testkit::error_condition(&reply).as_deref(),
        Some("not-allowed")
    );
}
