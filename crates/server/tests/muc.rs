//! XEP-0045 multi-user chat end to end: raw-XML clients on a node running `mod_muc`, and a
//! persistent room surviving a node restart on the same data directory. The admin commands
//! run through `starling_commands::exec`, as `starlingctl` would run them.

use std::path::Path;
use std::sync::Arc;

use starling_commands::spec::{Output, Request, Response};
use starling_testkit::{Client, HOST, TestNode, error_condition};
use starling_xmpp::Element;

const MUC: &str = "http://jabber.org/protocol/muc";
const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const ROOM: &str = "tea@conference.localhost";

async fn node() -> TestNode {
    let node = TestNode::start_with_modules("mod_muc: {history_size: 10}", "")
        .await
        .expect("node starts");
    for user in ["alice", "bob", "carol", "dave"] {
        node.register(user, "secret").await.unwrap();
    }
    node
}

async fn login(node: &TestNode, user: &str) -> Client {
    node.login(user, "secret", "res").await.unwrap()
}

fn codes(el: &Element) -> Vec<String> {
    el.get_child("x", MUC_USER)
        .map(|x| {
            x.children()
                .filter(|c| c.name() == "status")
                .filter_map(|c| c.attr("code").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn is_subject(el: &Element) -> bool {
    el.name() == "message" && el.children().any(|c| c.name() == "subject")
}

/// Joins and waits for the subject, which ends the join (XEP-0045 §7.2.16); returns every
/// stanza received on the way.
async fn join(c: &mut Client, nick: &str, extra: &str) -> Vec<Element> {
    c.send(&format!(
        "<presence to='{ROOM}/{nick}'><x xmlns='{MUC}'>{extra}</x></presence>"
    ))
    .await
    .unwrap();
    let mut seen = Vec::new();
    loop {
        let el = c.element().await.unwrap();
        let done = is_subject(&el);
        seen.push(el);
        if done {
            return seen;
        }
    }
}

/// Sends a join that must fail and returns the error condition.
async fn join_error(c: &mut Client, nick: &str, extra: &str) -> Option<String> {
    c.send(&format!(
        "<presence to='{ROOM}/{nick}'><x xmlns='{MUC}'>{extra}</x></presence>"
    ))
    .await
    .unwrap();
    let el = c
        .wait_for(|e| e.name() == "presence" && e.attr("type") == Some("error"))
        .await
        .unwrap();
    assert_eq!(el.attr("from"), Some(format!("{ROOM}/{nick}").as_str()));
    error_condition(&el)
}

fn configure(fields: &str) -> String {
    format!(
        "<iq type='set' id='cfg' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'>\
         <x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'>\
         <value>http://jabber.org/protocol/muc#roomconfig</value></field>{fields}</x></query></iq>"
    )
}

fn field(var: &str, value: &str) -> String {
    format!("<field var='muc#roomconfig_{var}'><value>{value}</value></field>")
}

#[tokio::test]
async fn create_configure_chat_and_moderate() {
    let node = node().await;
    let mut alice = login(&node, "alice").await;
    let mut bob = login(&node, "bob").await;
    let mut carol = login(&node, "carol").await;

    // Creation: status 110 and 201, owner and moderator.
    let seen = join(&mut alice, "Alice", "").await;
    let own = seen
        .iter()
        .find(|e| e.name() == "presence")
        .expect("own presence");
    assert_eq!(codes(own), ["110", "201"]);
    let item = own
        .get_child("x", MUC_USER)
        .and_then(|x| x.get_child("item", MUC_USER))
        .unwrap();
    assert_eq!(item.attr("affiliation"), Some("owner"));
    assert_eq!(item.attr("role"), Some("moderator"));

    // The owner reads the form and configures the room.
    let reply = alice
        .iq(
            &format!(
                "<iq type='get' id='f' to='{ROOM}'>\
                 <query xmlns='http://jabber.org/protocol/muc#owner'/></iq>"
            ),
            "f",
        )
        .await
        .unwrap();
    assert_eq!(reply.attr("type"), Some("result"));
    let reply = alice
        .iq(&configure(&field("roomname", "Tea Room")), "cfg")
        .await
        .unwrap();
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    // Bob may not.
    let reply = bob
        .iq(&configure(&field("roomname", "Mine")), "cfg")
        .await
        .unwrap();
    assert_eq!(error_condition(&reply).as_deref(), Some("forbidden"));

    // Nick conflict, then a proper join; Alice sees Bob arrive.
    assert_eq!(
        join_error(&mut bob, "Alice", "").await.as_deref(),
        Some("conflict")
    );
    join(&mut bob, "Bob", "").await;
    let arrival = alice
        .wait_for(|e| e.name() == "presence" && e.attr("from") == Some(&format!("{ROOM}/Bob")))
        .await
        .unwrap();
    assert!(codes(&arrival).is_empty());

    // Groupchat messages reach everyone from room/nick.
    alice
        .send(&format!(
            "<message to='{ROOM}' type='groupchat' id='g1'><body>hello</body></message>"
        ))
        .await
        .unwrap();
    for c in [&mut alice, &mut bob] {
        let m = c
            .wait_for(|e| e.name() == "message" && e.get_child("body", "jabber:client").is_some())
            .await
            .unwrap();
        assert_eq!(m.attr("from"), Some(format!("{ROOM}/Alice").as_str()));
        assert_eq!(m.attr("type"), Some("groupchat"));
    }

    // History with <delay/> for a newcomer.
    let seen = join(&mut carol, "Carol", "<history maxstanzas='5'/>").await;
    let old = seen
        .iter()
        .find(|e| e.name() == "message" && e.get_child("body", "jabber:client").is_some())
        .expect("history");
    let delay = old.get_child("delay", "urn:xmpp:delay").expect("delay");
    assert_eq!(delay.attr("from"), Some(ROOM));

    // A private message from Bob to Alice, from Bob's occupant JID.
    bob.send(&format!(
        "<message to='{ROOM}/Alice' type='chat' id='pm'><body>psst</body></message>"
    ))
    .await
    .unwrap();
    let pm = alice
        .wait_for(|e| e.name() == "message" && e.attr("type") == Some("chat"))
        .await
        .unwrap();
    assert_eq!(pm.attr("from"), Some(format!("{ROOM}/Bob").as_str()));

    // Self-ping: joined answers result; a non-occupant gets not-acceptable.
    let reply = bob
        .iq(
            &format!("<iq type='get' id='sp' to='{ROOM}/Bob'><ping xmlns='urn:xmpp:ping'/></iq>"),
            "sp",
        )
        .await
        .unwrap();
    assert_eq!(reply.attr("type"), Some("result"));
    let mut dave = login(&node, "dave").await;
    let reply = dave
        .iq(
            &format!("<iq type='get' id='sp' to='{ROOM}/Bob'><ping xmlns='urn:xmpp:ping'/></iq>"),
            "sp",
        )
        .await
        .unwrap();
    assert_eq!(error_condition(&reply).as_deref(), Some("not-acceptable"));

    // Kick Carol (307), then ban her (301): she may not come back.
    let reply = alice
        .iq(
            &format!(
                "<iq type='set' id='k' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'>\
                 <item nick='Carol' role='none'><reason>out</reason></item></query></iq>"
            ),
            "k",
        )
        .await
        .unwrap();
    assert_eq!(reply.attr("type"), Some("result"));
    let kicked = carol
        .wait_for(|e| e.name() == "presence" && e.attr("type") == Some("unavailable"))
        .await
        .unwrap();
    assert_eq!(codes(&kicked), ["110", "307"]);
    let reply = alice
        .iq(
            &format!(
                "<iq type='set' id='b' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'>\
                 <item jid='carol@localhost' affiliation='outcast'/></query></iq>"
            ),
            "b",
        )
        .await
        .unwrap();
    assert_eq!(reply.attr("type"), Some("result"));
    assert_eq!(
        join_error(&mut carol, "Carol", "").await.as_deref(),
        Some("forbidden")
    );

    // Disco: the service, its public rooms, the room.
    let reply = dave
        .iq(
            "<iq type='get' id='d1' to='conference.localhost'>\
             <query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            "d1",
        )
        .await
        .unwrap();
    let identity = reply
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .and_then(|q| q.get_child("identity", "http://jabber.org/protocol/disco#info"))
        .unwrap();
    assert_eq!(identity.attr("category"), Some("conference"));
    let reply = dave
        .iq(
            "<iq type='get' id='d2' to='conference.localhost'>\
             <query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
            "d2",
        )
        .await
        .unwrap();
    let items: Vec<String> = reply
        .get_child("query", "http://jabber.org/protocol/disco#items")
        .map(|q| {
            q.children()
                .filter_map(|i| i.attr("jid").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(items, [ROOM]);
    // An unknown room: item-not-found for anything but a join.
    let reply = dave
        .iq(
            "<iq type='get' id='d3' to='nope@conference.localhost'>\
             <query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            "d3",
        )
        .await
        .unwrap();
    assert_eq!(error_condition(&reply).as_deref(), Some("item-not-found"));

    // Members-only and password-protected: the right errors for Dave.
    let reply = alice
        .iq(&configure(&field("membersonly", "1")), "cfg")
        .await
        .unwrap();
    assert_eq!(reply.attr("type"), Some("result"));
    assert_eq!(
        join_error(&mut dave, "Dave", "").await.as_deref(),
        Some("registration-required")
    );
    // Bob, not a member, was removed when the room became members-only (322).
    let removed = bob
        .wait_for(|e| {
            e.name() == "presence"
                && e.attr("type") == Some("unavailable")
                && e.attr("from") == Some(&format!("{ROOM}/Bob"))
        })
        .await
        .unwrap();
    assert_eq!(codes(&removed), ["110", "322"]);
    let fields = format!(
        "{}{}{}",
        field("membersonly", "0"),
        field("passwordprotectedroom", "1"),
        field("roomsecret", "pw")
    );
    let reply = alice.iq(&configure(&fields), "cfg").await.unwrap();
    assert_eq!(reply.attr("type"), Some("result"));
    assert_eq!(
        join_error(&mut dave, "Dave", "<password>bad</password>")
            .await
            .as_deref(),
        Some("not-authorized")
    );
    join(&mut dave, "Dave", "<password>pw</password>").await;

    // Leaving: unavailable with 110 to self.
    dave.send(&format!("<presence to='{ROOM}/Dave' type='unavailable'/>"))
        .await
        .unwrap();
    let left = dave
        .wait_for(|e| e.name() == "presence" && e.attr("type") == Some("unavailable"))
        .await
        .unwrap();
    assert_eq!(codes(&left), ["110"]);

    // Admin commands see the live room and its occupants.
    let rooms = command(&node.server, "muc_online_rooms", &["conference.localhost"]).await;
    assert_eq!(rooms, [ROOM]);
    let occupants = command(
        &node.server,
        "get_room_occupants",
        &["tea", "conference.localhost"],
    )
    .await;
    assert_eq!(occupants, ["alice@localhost/res\tAlice\tmoderator"]);
    node.stop().await;
}

async fn command(server: &Arc<starling_core::Server>, name: &str, args: &[&str]) -> Vec<String> {
    let request = Request {
        command: name.to_owned(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
    };
    match starling_commands::exec::execute(server, &request).await {
        Response::Ok(Output::List(lines)) => lines,
        Response::Ok(_) => Vec::new(),
        Response::Err { kind, message } => panic!("{name}: {kind:?} {message}"),
    }
}

/// A node on `data_dir` (kept across restarts), with mod_muc.
async fn start_on(data_dir: &Path) -> starling_server::Node {
    let yaml = format!(
        "hosts: [{HOST}]\n\
         data_dir: {data}\n\
         loglevel: warning\n\
         listen:\n  \
           - {{port: 0, ip: 127.0.0.1, module: ejabberd_c2s, starttls_required: true}}\n\
         modules:\n  \
           mod_disco: {{}}\n  mod_roster: {{}}\n  mod_muc: {{}}\n",
        data = data_dir.display(),
    );
    let specs = starling_modules::specs();
    let config = starling_config::load_str(&yaml, "test.yml", &specs).expect("config");
    starling_server::start(config, &starling_modules::catalogue())
        .await
        .expect("node starts")
}

async fn login_to(node: &starling_server::Node, user: &str) -> Client {
    let addr = node.c2s.first().map(|(a, _)| *a).expect("listener");
    let mut c = Client::connect(addr).await.unwrap();
    c.open().await.unwrap();
    c.starttls().await.unwrap();
    c.auth_plain(user, "secret").await.unwrap();
    c.bind("res").await.unwrap();
    c
}

#[tokio::test]
async fn persistent_room_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = start_on(&data).await;
    for user in ["alice", "bob"] {
        let jid = starling_xmpp::jid::BareJid::new(Some(user), HOST).unwrap();
        let creds = starling_xmpp::scram::Credentials::new("secret", 4096).unwrap();
        node.server.stores().create(&jid, &creds).await.unwrap();
    }
    let mut alice = login_to(&node, "alice").await;
    join(&mut alice, "Alice", "").await;
    let fields = format!(
        "{}{}{}",
        field("persistentroom", "1"),
        field("membersonly", "1"),
        field("roomname", "Kept")
    );
    let reply = alice.iq(&configure(&fields), "cfg").await.unwrap();
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    alice
        .send(&format!(
            "<message to='{ROOM}' type='groupchat'><subject>Persisted</subject></message>"
        ))
        .await
        .unwrap();
    alice.wait_for(is_subject).await.unwrap();
    // Bob becomes a member through the command (ejabberd's argument order).
    command(
        &node.server,
        "set_room_affiliation",
        &["tea", "conference.localhost", "bob@localhost", "member"],
    )
    .await;
    drop(alice);
    node.stop().await;

    let node = start_on(&data).await;
    // Options come back from the store before any stanza loads the room.
    let options = command(
        &node.server,
        "get_room_options",
        &["tea", "conference.localhost"],
    )
    .await;
    assert!(
        options.contains(&"members_only\ttrue".to_owned()),
        "{options:?}"
    );
    assert!(options.contains(&"title\tKept".to_owned()), "{options:?}");
    let mut bob = login_to(&node, "bob").await;
    let seen = join(&mut bob, "Bob", "").await;
    let subject = seen
        .last()
        .and_then(|m| m.get_child("subject", "jabber:client"));
    assert_eq!(subject.map(Element::text).as_deref(), Some("Persisted"));
    let own = seen
        .iter()
        .find(|e| e.name() == "presence" && codes(e).contains(&"110".to_owned()))
        .unwrap();
    let item = own
        .get_child("x", MUC_USER)
        .and_then(|x| x.get_child("item", MUC_USER))
        .unwrap();
    assert_eq!(item.attr("affiliation"), Some("member"));

    // Destroyed by command: gone from the store too.
    command(
        &node.server,
        "destroy_room",
        &["tea", "conference.localhost"],
    )
    .await;
    let gone = bob
        .wait_for(|e| e.name() == "presence" && e.attr("type") == Some("unavailable"))
        .await
        .unwrap();
    assert!(
        gone.get_child("x", MUC_USER)
            .and_then(|x| x.get_child("destroy", MUC_USER))
            .is_some()
    );
    let stored = node
        .server
        .stores()
        .muc_room("conference.localhost", "tea")
        .await
        .unwrap();
    assert_eq!(stored, None);
    node.stop().await;
}

#[tokio::test]
async fn lost_connection_leaves_and_default_persistent_rooms_are_stored() {
    let node = TestNode::start_with_modules(
        "mod_muc: {default_room_options: {persistent: true, mam: true}}",
        "",
    )
    .await
    .expect("node starts");
    for user in ["alice", "bob"] {
        node.register(user, "secret").await.unwrap();
    }
    let mut alice = login(&node, "alice").await;
    let mut bob = login(&node, "bob").await;
    join(&mut alice, "Alice", "").await;
    join(&mut bob, "Bob", "").await;
    // Persistent by default: stored at creation, before any configuration.
    let stored = node
        .server
        .stores()
        .muc_room("conference.localhost", "tea")
        .await
        .unwrap()
        .expect("stored room");
    assert!(
        stored
            .affiliations
            .iter()
            .any(|(j, a, _)| j == "alice@localhost" && a == "owner")
    );
    // Bob's connection drops without a goodbye: the server's unavailable presence (to his
    // directed-presence recipients) takes him out of the room.
    drop(bob);
    let gone = alice
        .wait_for(|e| {
            e.name() == "presence"
                && e.attr("type") == Some("unavailable")
                && e.attr("from") == Some(&format!("{ROOM}/Bob"))
        })
        .await
        .unwrap();
    assert!(codes(&gone).is_empty());
    node.stop().await;
}
