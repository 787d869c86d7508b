//! The modern-client modules with users on two cluster nodes (issue 5, "each feature must also
//! work when users are on different nodes"): offline storage, carbons, MAM, blocking, PEP,
//! vCard avatar hashes and CSI, each one's main flow with the two parties on different nodes;
//! and XEP-0198 resumption across nodes: through a node other than the owner (the session and
//! its unacknowledged stanzas are handed over), and after the owner died (`<item-not-found/>`,
//! then a new session catches up from offline storage).
//!
//! Two in-process nodes share a private PostgreSQL database (`starling_testkit::postgres`).
//! Without PostgreSQL binaries the tests print a loud note and pass, unless `CI` is set.

mod cluster_support;

use std::time::Duration;

use cluster_support::in_process::{ClusterNode, Options};
use starling_commands::spec::Response;
use starling_storage::{RosterItem, Subscription};
use starling_testkit::postgres::{TempPostgres, start_or_skip};
use starling_testkit::{Client, error_condition};
use starling_xmpp::Element;
use starling_xmpp::codec::StreamEvent;
use starling_xmpp::jid::{BareJid, FullJid};
use starling_xmpp::ns;

const SM: &str = "urn:xmpp:sm:3";
const CSI: &str = "urn:xmpp:csi:0";
const CARBONS: &str = "urn:xmpp:carbons:2";
const FORWARD: &str = "urn:xmpp:forward:0";
const MAM: &str = "urn:xmpp:mam:2";
const BLOCKING: &str = "urn:xmpp:blocking";
const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const NICK: &str = "http://jabber.org/protocol/nick";
const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const VCARD_UPDATE: &str = "vcard-temp:x:update";
const DELAY: &str = "urn:xmpp:delay";

/// The modules under test, with a short resumption timeout so a test never waits long.
const MODULES: &str = "mod_disco: {}\n  mod_ping: {}\n  mod_roster: {versioning: true}\n  \
    mod_offline: {}\n  mod_carboncopy: {}\n  mod_mam: {default: always}\n  mod_privacy: {}\n  \
    mod_blocking: {}\n  mod_pubsub: {max_items_node: 10}\n  mod_vcard: {}\n  \
    mod_vcard_xupdate: {}\n  mod_stream_mgmt: {resume_timeout: 30}\n  mod_client_state: {}\n";

/// Two linked nodes on one fresh database.
struct Pair {
    a: ClusterNode,
    b: ClusterNode,
    _pg: TempPostgres,
}

impl Pair {
    async fn start(test: &str) -> Option<Self> {
        let pg = start_or_skip(test).await.expect("start PostgreSQL")?;
        let db = pg.database().await.expect("database");
        let cookie = starling_cluster::cookie::Cookie::generate().to_hex();
        let a = ClusterNode::start(
            "starling@a",
            &db,
            &cookie,
            Options {
                modules: MODULES,
                ..Options::default()
            },
        )
        .await;
        let b = ClusterNode::start(
            "starling@b",
            &db,
            &cookie,
            Options {
                modules: MODULES,
                ..Options::default()
            },
        )
        .await;
        let r = b.ctl("join_cluster", &[&a.address()]).await;
        assert!(matches!(r, Response::Ok(_)), "{r:?}");
        for n in [&a, &b] {
            eventually(Duration::from_secs(10), "linked", || {
                n.node
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.status().iter().filter(|m| m.up).count() == 2)
            })
            .await;
        }
        Some(Self { a, b, _pg: pg })
    }

    /// Registers `users` and makes every pair of them mutual contacts.
    async fn accounts(&self, users: &[&str]) {
        for user in users {
            let r = self.a.ctl("register", &[user, "localhost", "secret"]).await;
            assert!(matches!(r, Response::Ok(_)), "{r:?}");
        }
        for user in users {
            for contact in users.iter().filter(|c| *c != user) {
                let owner = bare(&format!("{user}@localhost"));
                let mut item = RosterItem::new(bare(&format!("{contact}@localhost")));
                item.subscription = Subscription::Both;
                self.a
                    .server()
                    .stores()
                    .put_item(&owner, &item, 100)
                    .await
                    .expect("roster item");
            }
        }
    }

    /// Waits until both directories see `jid` (replication is asynchronous).
    async fn replicated(&self, jid: &str) {
        let full = FullJid::parse(jid).expect("jid");
        eventually(Duration::from_secs(5), jid, || {
            [&self.a, &self.b]
                .iter()
                .all(|n| n.server().sm().get(&full).is_some())
        })
        .await;
    }
}

fn bare(jid: &str) -> BareJid {
    BareJid::parse(jid).expect("jid")
}

/// Polls `check` every 20 ms until it holds or `limit` passes.
async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn xml(el: &Element) -> String {
    String::from_utf8_lossy(&starling_xmpp::codec::to_bytes(el)).into_owned()
}

fn body(el: &Element) -> Option<String> {
    el.get_child("body", ns::CLIENT).map(Element::text)
}

/// Sends a ping to the server and returns every element received before its result.
async fn until_ping(c: &mut Client, id: &str) -> Vec<Element> {
    c.send(&format!(
        "<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await
    .expect("ping");
    let mut seen = Vec::new();
    loop {
        let el = c.element().await.expect("element");
        if el.name() == "iq" && el.attr("id") == Some(id) {
            return seen;
        }
        seen.push(el);
    }
}

/// A ping round trip through the other node and back: once it returns, what `c` sent before
/// it has been routed across the link (one FIFO per node pair).
async fn settle(c: &mut Client, id: &str) {
    until_ping(c, id).await;
}

fn chat(to: &str, id: &str, text: &str) -> String {
    format!("<message to='{to}' type='chat' id='{id}'><body>{text}</body></message>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn modules_work_with_users_on_two_nodes() {
    let Some(pair) = Pair::start("modules_work_with_users_on_two_nodes").await else {
        return;
    };
    offline_message_from_a_is_delivered_on_b(&pair).await;
    mam_on_b_holds_messages_exchanged_across_nodes(&pair).await;
    blocking_is_enforced_across_nodes(&pair).await;
    pep_notification_reaches_a_contact_on_the_other_node(&pair).await;
    vcard_avatar_hash_is_in_presence_seen_on_the_other_node(&pair).await;
    csi_holds_back_presence_from_a_contact_on_the_other_node(&pair).await;
    carbons_reach_a_resource_on_the_other_node(&pair).await;
}

async fn offline_message_from_a_is_delivered_on_b(pair: &Pair) {
    pair.accounts(&["off1", "off2"]).await;
    let mut sender = pair.a.online("off1", "desk").await;
    for i in 0..3 {
        sender
            .send(&chat(
                "off2@localhost",
                &format!("o{i}"),
                &format!("while away {i}"),
            ))
            .await
            .expect("send");
    }
    settle(&mut sender, "o-sync").await;
    let mut late = pair.b.login("off2", "phone").await;
    late.send("<presence/>").await.expect("presence");
    for i in 0..3 {
        let m = late
            .wait_for(|e| e.name() == "message")
            .await
            .expect("offline message");
        assert_eq!(
            body(&m).as_deref(),
            Some(format!("while away {i}").as_str())
        );
        assert_eq!(m.attr("from"), Some("off1@localhost/desk"));
        assert!(m.get_child("delay", DELAY).is_some(), "{}", xml(&m));
    }
}

/// The carbon (direction, forwarded message) in `m`, if it is one.
fn carbon(m: &Element) -> Option<(String, Element)> {
    m.children()
        .find(|c| c.ns() == CARBONS && matches!(c.name(), "sent" | "received"))
        .and_then(|c| {
            let fwd = c.get_child("forwarded", FORWARD)?;
            let inner = fwd.get_child("message", ns::CLIENT)?;
            Some((c.name().to_owned(), inner.clone()))
        })
}

async fn carbons_reach_a_resource_on_the_other_node(pair: &Pair) {
    pair.accounts(&["cc1", "cc2"]).await;
    let mut desk = pair.a.online("cc1", "desk").await;
    let mut phone = pair.b.online("cc1", "phone").await;
    let mut friend = pair.a.online("cc2", "pc").await;
    let reply = phone
        .iq(
            &format!("<iq type='set' id='c1'><enable xmlns='{CARBONS}'/></iq>"),
            "c1",
        )
        .await
        .expect("enable");
    assert_eq!(reply.attr("type"), Some("result"));
    pair.replicated("cc1@localhost/phone").await;

    // Received: the friend (node a) writes to the desk (node a); the phone (node b) gets a copy.
    friend
        .send(&chat("cc1@localhost/desk", "r1", "to your desk"))
        .await
        .expect("send");
    let m = desk
        .wait_for(|e| e.name() == "message")
        .await
        .expect("desk");
    assert_eq!(body(&m).as_deref(), Some("to your desk"));
    let copy = phone
        .wait_for(|e| e.name() == "message")
        .await
        .expect("received carbon on the other node");
    let (dir, inner) = carbon(&copy).expect("a carbon");
    assert_eq!(dir, "received");
    assert_eq!(body(&inner).as_deref(), Some("to your desk"));
    assert_eq!(copy.attr("from"), Some("cc1@localhost"));

    // Sent: the desk (node a) writes; the phone (node b) gets a sent copy.
    desk.send(&chat("cc2@localhost/pc", "s1", "from my desk"))
        .await
        .expect("send");
    friend
        .wait_for(|e| e.name() == "message")
        .await
        .expect("friend");
    let copy = phone
        .wait_for(|e| e.name() == "message")
        .await
        .expect("sent carbon on the other node");
    let (dir, inner) = carbon(&copy).expect("a carbon");
    assert_eq!(dir, "sent");
    assert_eq!(body(&inner).as_deref(), Some("from my desk"));
}

/// Runs a MAM query and returns the bodies of the results and the final IQ.
async fn mam_query(c: &mut Client, id: &str, inner: &str) -> (Vec<String>, Element) {
    c.send(&format!(
        "<iq type='set' id='{id}'><query xmlns='{MAM}' queryid='{id}q'>{inner}</query></iq>"
    ))
    .await
    .expect("query");
    let mut bodies = Vec::new();
    loop {
        let el = match c.next().await.expect("event") {
            StreamEvent::Stanza(el) => el,
            other => panic!("unexpected {other:?}"),
        };
        if el.name() == "iq" && el.attr("id") == Some(id) {
            return (bodies, el);
        }
        if let Some(result) = el.get_child("result", MAM) {
            let text = result
                .get_child("forwarded", FORWARD)
                .and_then(|f| f.get_child("message", ns::CLIENT))
                .and_then(body)
                .unwrap_or_default();
            bodies.push(text);
        }
    }
}

async fn mam_on_b_holds_messages_exchanged_across_nodes(pair: &Pair) {
    pair.accounts(&["mam1", "mam2"]).await;
    let mut one = pair.a.online("mam1", "desk").await;
    let mut two = pair.b.online("mam2", "phone").await;
    pair.replicated("mam2@localhost/phone").await;
    for (i, from_one) in [true, false, true].into_iter().enumerate() {
        let text = format!("line {i}");
        if from_one {
            one.send(&chat("mam2@localhost/phone", &format!("m{i}"), &text))
                .await
                .expect("send");
            let m = two.wait_for(|e| e.name() == "message").await.expect("two");
            assert!(
                m.get_child("stanza-id", "urn:xmpp:sid:0").is_some(),
                "{}",
                xml(&m)
            );
        } else {
            two.send(&chat("mam1@localhost/desk", &format!("m{i}"), &text))
                .await
                .expect("send");
            one.wait_for(|e| e.name() == "message").await.expect("one");
        }
    }
    // Both archives are in the shared database: each user queries through node b.
    let (bodies, fin) = mam_query(&mut two, "q1", "").await;
    assert_eq!(fin.attr("type"), Some("result"), "{}", xml(&fin));
    assert_eq!(bodies, ["line 0", "line 1", "line 2"]);
    drop(one);
    let mut one_on_b = pair.b.online("mam1", "tablet").await;
    let with = "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
                <value>urn:xmpp:mam:2</value></field><field var='with'>\
                <value>mam2@localhost</value></field></x>";
    let (bodies, fin) = mam_query(&mut one_on_b, "q2", with).await;
    assert_eq!(fin.attr("type"), Some("result"), "{}", xml(&fin));
    assert_eq!(bodies, ["line 0", "line 1", "line 2"]);
}

async fn blocking_is_enforced_across_nodes(pair: &Pair) {
    pair.accounts(&["bl1", "bl2"]).await;
    let mut blocker = pair.a.online("bl1", "desk").await;
    let mut other = pair.b.online("bl1", "phone").await;
    let mut pest = pair.b.online("bl2", "pc").await;
    pair.replicated("bl1@localhost/phone").await;
    // The phone asks for the list, so it gets pushes even though it is on the other node.
    let list = other
        .iq(
            &format!("<iq type='get' id='l1'><blocklist xmlns='{BLOCKING}'/></iq>"),
            "l1",
        )
        .await
        .expect("blocklist");
    assert_eq!(list.attr("type"), Some("result"));
    let reply = blocker
        .iq(
            &format!(
                "<iq type='set' id='b1'><block xmlns='{BLOCKING}'>\
                 <item jid='bl2@localhost'/></block></iq>"
            ),
            "b1",
        )
        .await
        .expect("block");
    assert_eq!(reply.attr("type"), Some("result"));
    other
        .wait_for(|e| e.name() == "iq" && e.get_child("block", BLOCKING).is_some())
        .await
        .expect("push to the resource on the other node");
    // The pest (node b) writes to the blocker's desk (node a) and to the bare JID: both bounce,
    // and neither resource sees anything.
    for (to, id) in [("bl1@localhost/desk", "x1"), ("bl1@localhost", "x2")] {
        pest.send(&chat(to, id, "let me in")).await.expect("send");
        let error = pest
            .wait_for(|e| e.attr("type") == Some("error"))
            .await
            .expect("bounce");
        assert_eq!(error.attr("id"), Some(id));
        assert_eq!(
            error_condition(&error).as_deref(),
            Some("service-unavailable")
        );
    }
    for c in [&mut blocker, &mut other] {
        let seen = until_ping(c, "p1").await;
        assert!(
            !seen.iter().any(|e| e.name() == "message"),
            "{:?}",
            seen.iter().map(xml).collect::<Vec<_>>()
        );
    }
}

/// Sends initial presence with XEP-0115 caps (`+notify` for nicknames), then answers the
/// server's disco#info query for them, which may come from the other node.
async fn online_with_caps(client: &mut Client) {
    let caps: Element = format!(
        "<query xmlns='{DISCO_INFO}'><identity category='client' type='phone' name='T'/>\
         <feature var='{DISCO_INFO}'/><feature var='{NICK}+notify'/></query>"
    )
    .parse()
    .expect("caps");
    let ver = starling_modules::pep::caps::sha1_ver(&caps).expect("ver");
    client
        .send(&format!(
            "<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' \
             node='https://example.org/t' ver='{ver}'/></presence>"
        ))
        .await
        .expect("presence");
    let query = client
        .wait_for(|e| {
            e.name() == "iq"
                && e.attr("type") == Some("get")
                && e.get_child("query", DISCO_INFO).is_some()
        })
        .await
        .expect("caps query");
    let node = query
        .get_child("query", DISCO_INFO)
        .and_then(|q| q.attr("node"))
        .expect("node")
        .to_owned();
    let id = query.attr("id").expect("id").to_owned();
    let from = query.attr("from").expect("from").to_owned();
    let mut answer = caps;
    starling_xmpp::stanza::set_attr(&mut answer, "node", &node);
    client
        .send(&format!(
            "<iq type='result' id='{id}' to='{from}'>{}</iq>",
            xml(&answer)
        ))
        .await
        .expect("caps answer");
}

fn publish_nick(id: &str, nick: &str) -> String {
    format!(
        "<iq type='set' id='{id}'><pubsub xmlns='{PUBSUB}'><publish node='{NICK}'>\
         <item id='current'><nick xmlns='{NICK}'>{nick}</nick></item></publish></pubsub></iq>"
    )
}

async fn pep_notification_reaches_a_contact_on_the_other_node(pair: &Pair) {
    pair.accounts(&["pep1", "pep2"]).await;
    let mut publisher = pair.a.online("pep1", "desk").await;
    let mut contact = pair.b.login("pep2", "phone").await;
    online_with_caps(&mut contact).await;
    pair.replicated("pep2@localhost/phone").await;
    // Let the caps answer reach whichever node asked.
    settle(&mut contact, "c0").await;
    settle(&mut publisher, "p0").await;
    let reply = publisher
        .iq(&publish_nick("n1", "Pep One"), "n1")
        .await
        .expect("publish");
    assert_eq!(reply.attr("type"), Some("result"), "{}", xml(&reply));
    let event = contact
        .wait_for(|e| e.name() == "message" && e.get_child("event", EVENT).is_some())
        .await
        .expect("notification on the other node");
    assert_eq!(event.attr("from"), Some("pep1@localhost"));
    let text = event
        .get_child("event", EVENT)
        .and_then(|e| e.get_child("items", EVENT))
        .and_then(|i| i.get_child("item", EVENT))
        .and_then(|i| i.get_child("nick", NICK))
        .map(Element::text);
    assert_eq!(text.as_deref(), Some("Pep One"));
    // The contact on node b reads the nickname through its own node.
    let reply = contact
        .iq(
            &format!(
                "<iq type='get' id='g1' to='pep1@localhost'><pubsub xmlns='{PUBSUB}'>\
                 <items node='{NICK}'/></pubsub></iq>"
            ),
            "g1",
        )
        .await
        .expect("items");
    assert_eq!(reply.attr("type"), Some("result"), "{}", xml(&reply));
    let nick = reply
        .get_child("pubsub", PUBSUB)
        .and_then(|p| p.get_child("items", PUBSUB))
        .and_then(|i| i.get_child("item", PUBSUB))
        .and_then(|i| i.get_child("nick", NICK))
        .map(Element::text);
    assert_eq!(nick.as_deref(), Some("Pep One"));
}

async fn vcard_avatar_hash_is_in_presence_seen_on_the_other_node(pair: &Pair) {
    pair.accounts(&["vc1", "vc2"]).await;
    let mut owner = pair.a.login("vc1", "desk").await;
    let mut contact = pair.b.online("vc2", "phone").await;
    pair.replicated("vc2@localhost/phone").await;
    let reply = owner
        .iq(
            "<iq type='set' id='v1'><vCard xmlns='vcard-temp'><FN>Vee</FN><PHOTO>\
             <TYPE>image/png</TYPE><BINVAL>aGVsbG8=</BINVAL></PHOTO></vCard></iq>",
            "v1",
        )
        .await
        .expect("vcard set");
    assert_eq!(reply.attr("type"), Some("result"));
    owner.send("<presence/>").await.expect("presence");
    let seen = contact
        .wait_for(|e| e.name() == "presence" && e.attr("from") == Some("vc1@localhost/desk"))
        .await
        .expect("presence on the other node");
    let hash = seen
        .get_child("x", VCARD_UPDATE)
        .and_then(|x| x.get_child("photo", VCARD_UPDATE))
        .map(Element::text);
    // SHA-1 of "hello".
    assert_eq!(
        hash.as_deref(),
        Some("aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d"),
        "{}",
        xml(&seen)
    );
    // The contact reads the vCard through node b.
    let reply = contact
        .iq(
            "<iq type='get' id='v2' to='vc1@localhost'><vCard xmlns='vcard-temp'/></iq>",
            "v2",
        )
        .await
        .expect("vcard get");
    let fn_ = reply
        .get_child("vCard", "vcard-temp")
        .and_then(|v| v.get_child("FN", "vcard-temp"))
        .map(Element::text);
    assert_eq!(fn_.as_deref(), Some("Vee"));
}

async fn csi_holds_back_presence_from_a_contact_on_the_other_node(pair: &Pair) {
    pair.accounts(&["csi1", "csi2"]).await;
    pair.accounts(&["csi3"]).await;
    let mut phone = pair.b.online("csi1", "phone").await;
    let mut friend = pair.a.online("csi2", "pc").await;
    // Another account's session on node b: a message to it crosses the same link after the
    // presence updates, so once it arrives they are in the phone's inbox.
    let mut marker = pair.b.online("csi3", "m").await;
    pair.replicated("csi1@localhost/phone").await;
    pair.replicated("csi3@localhost/m").await;
    phone
        .send(&format!("<inactive xmlns='{CSI}'/>"))
        .await
        .expect("inactive");
    settle(&mut phone, "c0").await;
    for show in ["away", "dnd", "xa"] {
        friend
            .send(&format!("<presence><show>{show}</show></presence>"))
            .await
            .expect("presence");
    }
    // Routed across the link and held in the phone's session on node b: once active, only the
    // latest comes (collapsed, not three). The session reads its inbox before the socket.
    friend
        .send(&chat("csi3@localhost/m", "mk", "marker"))
        .await
        .expect("marker");
    marker
        .wait_for(|e| e.name() == "message")
        .await
        .expect("marker crossed the link");
    phone
        .send(&format!("<active xmlns='{CSI}'/>"))
        .await
        .expect("active");
    let seen = until_ping(&mut phone, "c1").await;
    let shows: Vec<String> = seen
        .iter()
        .filter(|e| e.name() == "presence" && e.attr("from") == Some("csi2@localhost/pc"))
        .filter_map(|e| e.get_child("show", ns::CLIENT).map(Element::text))
        .collect();
    assert_eq!(
        shows,
        ["xa"],
        "{:?}",
        seen.iter().map(xml).collect::<Vec<_>>()
    );
}

/// Logs in on `node` and enables resumable stream management; returns the id.
async fn resumable(node: &ClusterNode, user: &str, resource: &str) -> (Client, String) {
    let mut c = node.online(user, resource).await;
    c.send(&format!("<enable xmlns='{SM}' resume='true'/>"))
        .await
        .expect("enable");
    let enabled = c.wait_for(|e| e.ns() == SM).await.expect("enabled");
    assert_eq!(enabled.name(), "enabled", "{}", xml(&enabled));
    let id = enabled.attr("id").expect("id").to_owned();
    (c, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resumption_through_another_node_hands_the_session_over() {
    let Some(pair) = Pair::start("resumption_through_another_node_hands_the_session_over").await
    else {
        return;
    };
    pair.accounts(&["ho1", "ho2"]).await;
    let (mut phone, previd) = resumable(&pair.a, "ho1", "phone").await;
    let reply = phone
        .iq(
            &format!("<iq type='set' id='cc'><enable xmlns='{CARBONS}'/></iq>"),
            "cc",
        )
        .await
        .expect("carbons");
    assert_eq!(reply.attr("type"), Some("result"));
    let mut friend = pair.b.online("ho2", "pc").await;
    pair.replicated("ho1@localhost/phone").await;
    // Two messages reach the phone; it acknowledges the first only, then its connection drops.
    for i in 0..2 {
        friend
            .send(&chat(
                "ho1@localhost/phone",
                &format!("h{i}"),
                &format!("before {i}"),
            ))
            .await
            .expect("send");
        let m = phone
            .wait_for(|e| e.name() == "message")
            .await
            .expect("message");
        assert_eq!(body(&m).as_deref(), Some(format!("before {i}").as_str()));
    }
    // Nothing is acknowledged: the client resumes with h=0 and gets everything again.
    drop(phone);
    let owner = FullJid::parse("ho1@localhost/phone").expect("jid");
    // While detached on node a, one more message is queued there.
    friend
        .send(&chat("ho1@localhost/phone", "h2", "while detached"))
        .await
        .expect("send");
    settle(&mut friend, "f1").await;
    assert!(pair.a.server().sm().get_local(&owner).is_some());

    // The client comes back through node b (another load balancer target).
    let mut back = pair.b.authenticate("ho1").await;
    back.send(&format!("<resume xmlns='{SM}' previd='{previd}' h='0'/>"))
        .await
        .expect("resume");
    let resumed = back
        .wait_for(|e| e.ns() == SM)
        .await
        .expect("resumed or failed");
    assert_eq!(resumed.name(), "resumed", "{}", xml(&resumed));
    assert_eq!(resumed.attr("previd"), Some(previd.as_str()));
    // Everything unacknowledged comes again, once, in order: the two messages and the one
    // queued while detached.
    let seen = until_ping(&mut back, "p1").await;
    let bodies: Vec<String> = seen
        .iter()
        .filter(|e| e.name() == "message")
        .filter_map(body)
        .collect();
    assert_eq!(
        bodies,
        ["before 0", "before 1", "while detached"],
        "{:?}",
        seen.iter().map(xml).collect::<Vec<_>>()
    );
    // The session now lives on node b, under the same full JID, and the old owner let it go
    // without telling contacts it left.
    eventually(Duration::from_secs(5), "session moved to b", || {
        pair.b.server().sm().get_local(&owner).is_some()
            && pair.a.server().sm().get_local(&owner).is_none()
    })
    .await;
    let friend_seen = until_ping(&mut friend, "f2").await;
    assert!(
        !friend_seen
            .iter()
            .any(|e| e.name() == "presence" && e.attr("type") == Some("unavailable")),
        "{:?}",
        friend_seen.iter().map(xml).collect::<Vec<_>>()
    );
    // New messages reach it on node b; acks work; the friend's node routes to it.
    friend
        .send(&chat("ho1@localhost/phone", "h3", "after"))
        .await
        .expect("send");
    let m = back
        .wait_for(|e| e.name() == "message")
        .await
        .expect("after");
    assert_eq!(body(&m).as_deref(), Some("after"));
    back.send(&format!("<r xmlns='{SM}'/>")).await.expect("r");
    back.wait_for(|e| e.name() == "a" && e.ns() == SM)
        .await
        .expect("a");
    // Carbons stayed enabled: a message to another resource (node a) is copied to it.
    let mut desk = pair.a.online("ho1", "desk").await;
    pair.replicated("ho1@localhost/desk").await;
    friend
        .send(&chat("ho1@localhost/desk", "h4", "to the desk"))
        .await
        .expect("send");
    desk.wait_for(|e| e.name() == "message")
        .await
        .expect("desk");
    let copy = back
        .wait_for(|e| e.name() == "message")
        .await
        .expect("carbon after handover");
    let (dir, inner) = carbon(&copy).expect("a carbon");
    assert_eq!(dir, "received");
    assert_eq!(body(&inner).as_deref(), Some("to the desk"));
    drop(desk);

    // It can be resumed again, now from node b's registry, through node a.
    drop(back);
    eventually(Duration::from_secs(5), "detached on b", || {
        pair.b.server().sm().get_local(&owner).is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = pair.a.authenticate("ho1").await;
    again
        .send(&format!("<resume xmlns='{SM}' previd='{previd}' h='0'/>"))
        .await
        .expect("resume");
    let resumed = again.wait_for(|e| e.ns() == SM).await.expect("answer");
    assert_eq!(resumed.name(), "resumed", "{}", xml(&resumed));
    let seen = until_ping(&mut again, "p2").await;
    let bodies: Vec<String> = seen
        .iter()
        .filter(|e| e.name() == "message" && carbon(e).is_none())
        .filter_map(body)
        .collect();
    assert_eq!(
        bodies,
        ["before 0", "before 1", "while detached", "after"],
        "{:?}",
        seen.iter().map(xml).collect::<Vec<_>>()
    );
    eventually(Duration::from_secs(5), "session back on a", || {
        pair.a.server().sm().get_local(&owner).is_some()
            && pair.b.server().sm().get_local(&owner).is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resumption_fails_when_the_owner_died_and_offline_storage_catches_up() {
    let Some(pair) =
        Pair::start("resumption_fails_when_the_owner_died_and_offline_storage_catches_up").await
    else {
        return;
    };
    pair.accounts(&["dd1", "dd2"]).await;
    let (phone, previd) = resumable(&pair.a, "dd1", "phone").await;
    let mut friend = pair.b.online("dd2", "pc").await;
    pair.replicated("dd1@localhost/phone").await;
    drop(phone);
    // Node a dies (its cluster links with it); node b purges its sessions.
    pair.a.node.cluster.as_ref().expect("clustered").abort();
    let owner = FullJid::parse("dd1@localhost/phone").expect("jid");
    eventually(Duration::from_secs(5), "purged on b", || {
        pair.b.server().sm().get(&owner).is_none()
    })
    .await;
    pair.a.server().begin_shutdown();
    friend
        .send(&chat("dd1@localhost", "d1", "while you were gone"))
        .await
        .expect("send");
    settle(&mut friend, "f1").await;

    let mut back = pair.b.authenticate("dd1").await;
    back.send(&format!("<resume xmlns='{SM}' previd='{previd}' h='0'/>"))
        .await
        .expect("resume");
    let failed = back.wait_for(|e| e.ns() == SM).await.expect("failed");
    assert_eq!(failed.name(), "failed", "{}", xml(&failed));
    assert!(
        failed.get_child("item-not-found", ns::STANZAS).is_some(),
        "{}",
        xml(&failed)
    );
    // The client binds a new session and gets what was sent meanwhile.
    back.bind("phone").await.expect("bind");
    back.send("<presence/>").await.expect("presence");
    let m = back
        .wait_for(|e| e.name() == "message")
        .await
        .expect("offline message");
    assert_eq!(body(&m).as_deref(), Some("while you were gone"));
    assert!(m.get_child("delay", DELAY).is_some());
}
