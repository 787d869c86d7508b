//! XEP-0313 end to end: two raw-XML clients chat through a node running `mod_mam`, then page
//! through their archives.

use starling_testkit::{Client, TestNode, error_condition};
use starling_xmpp::Element;
use starling_xmpp::codec::StreamEvent;

const MAM: &str = "urn:xmpp:mam:2";
const RSM: &str = "http://jabber.org/protocol/rsm";
const SID: &str = "urn:xmpp:sid:0";
const FORWARD: &str = "urn:xmpp:forward:0";

async fn node() -> TestNode {
    TestNode::start_with_modules("mod_mam: {default: always}", "")
        .await
        .expect("node starts")
}

/// Sends a MAM query and collects `(archive id, body)` of the results up to the IQ reply.
async fn query(c: &mut Client, id: &str, inner: &str) -> (Vec<(String, String)>, Element) {
    c.send(&format!(
        "<iq type='set' id='{id}'><query xmlns='{MAM}' queryid='{id}-q'>{inner}</query></iq>"
    ))
    .await
    .unwrap();
    let mut results = Vec::new();
    loop {
        let el = match c.next().await.unwrap() {
            StreamEvent::Stanza(el) => el,
            other => panic!("unexpected {other:?}"),
        };
        if el.name() == "iq" && el.attr("id") == Some(id) {
            return (results, el);
        }
        let Some(result) = el.get_child("result", MAM) else {
            continue;
        };
        assert_eq!(result.attr("queryid"), Some(format!("{id}-q").as_str()));
        let body = result
            .get_child("forwarded", FORWARD)
            .and_then(|f| f.get_child("message", "jabber:client"))
            .and_then(|m| m.get_child("body", "jabber:client"))
            .map(Element::text)
            .unwrap_or_default();
        results.push((result.attr("id").unwrap().to_owned(), body));
    }
}

fn fin_field(reply: &Element, name: &str) -> Option<String> {
    reply
        .get_child("fin", MAM)?
        .get_child("set", RSM)?
        .get_child(name, RSM)
        .map(Element::text)
}

fn complete(reply: &Element) -> bool {
    reply.get_child("fin", MAM).and_then(|f| f.attr("complete")) == Some("true")
}

/// Alice says 3 things, Bob answers twice, interleaved; returns Bob's received stanza-ids.
async fn conversation(alice: &mut Client, bob: &mut Client) -> Vec<String> {
    let mut received = Vec::new();
    for (i, from_alice) in [true, false, true, false, true].into_iter().enumerate() {
        let body = format!("line {i}");
        if from_alice {
            alice
                .send(&format!(
                    "<message to='bob@localhost/phone' type='chat'><body>{body}</body></message>"
                ))
                .await
                .unwrap();
            let m = bob.wait_for(|e| e.name() == "message").await.unwrap();
            assert_eq!(m.get_child("body", "jabber:client").unwrap().text(), body);
            let sid = m.get_child("stanza-id", SID).expect("stanza-id");
            assert_eq!(sid.attr("by"), Some("bob@localhost"));
            received.push(sid.attr("id").unwrap().to_owned());
        } else {
            bob.send(&format!(
                "<message to='alice@localhost/laptop' type='chat'><body>{body}</body></message>"
            ))
            .await
            .unwrap();
            alice.wait_for(|e| e.name() == "message").await.unwrap();
        }
    }
    received
}

#[tokio::test]
async fn chat_then_page_through_both_archives() {
    let node = node().await;
    node.register("alice", "secret").await.unwrap();
    node.register("bob", "secret").await.unwrap();
    let mut alice = node.login("alice", "secret", "laptop").await.unwrap();
    let mut bob = node.login("bob", "secret", "phone").await.unwrap();
    let stanza_ids = conversation(&mut alice, &mut bob).await;
    let lines: Vec<String> = (0..5).map(|i| format!("line {i}")).collect();

    // Bob's archive: all five; the stanza-ids he received are the archive ids.
    let (results, reply) = query(&mut bob, "b1", "").await;
    assert_eq!(reply.attr("type"), Some("result"));
    assert!(complete(&reply));
    let bodies: Vec<String> = results.iter().map(|(_, b)| b.clone()).collect();
    assert_eq!(bodies, lines);
    let incoming: Vec<String> = [0, 2, 4].iter().map(|&i| results[i].0.clone()).collect();
    assert_eq!(incoming, stanza_ids);
    assert_eq!(fin_field(&reply, "count").as_deref(), Some("5"));

    // Alice walks hers with max=2: three pages, everything once, in order.
    let mut walked = Vec::new();
    let mut after = None;
    for page in 0.. {
        assert!(page < 5, "paging does not end");
        let rsm = match &after {
            None => format!("<set xmlns='{RSM}'><max>2</max></set>"),
            Some(a) => format!("<set xmlns='{RSM}'><max>2</max><after>{a}</after></set>"),
        };
        let (results, reply) = query(&mut alice, &format!("a{page}"), &rsm).await;
        assert!(results.len() <= 2);
        walked.extend(results.into_iter().map(|(_, b)| b));
        if complete(&reply) {
            assert_eq!(page, 2);
            break;
        }
        after = fin_field(&reply, "last");
    }
    assert_eq!(walked, lines);

    // `with` filter, bare and full.
    let form = |with: &str| {
        format!(
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
             <value>{MAM}</value></field><field var='with'><value>{with}</value></field></x>"
        )
    };
    let (results, _) = query(&mut alice, "w1", &form("bob@localhost")).await;
    assert_eq!(results.len(), 5);
    // Everything went to and came from bob/phone; a full JID matches only its resource.
    let (results, _) = query(&mut alice, "w2", &form("bob@localhost/phone")).await;
    assert_eq!(results.len(), 5);
    let (results, _) = query(&mut alice, "w4", &form("bob@localhost/tablet")).await;
    assert!(results.is_empty());
    let (results, reply) = query(&mut alice, "w3", &form("carol@localhost")).await;
    assert!(results.is_empty());
    assert!(complete(&reply));
    assert_eq!(fin_field(&reply, "count").as_deref(), Some("0"));

    // An unknown RSM anchor is item-not-found.
    let (_, reply) = query(
        &mut alice,
        "x1",
        &format!("<set xmlns='{RSM}'><after>42</after></set>"),
    )
    .await;
    assert_eq!(error_condition(&reply).as_deref(), Some("item-not-found"));
}

#[tokio::test]
async fn features_are_advertised_on_the_account() {
    let node = node().await;
    node.register("alice", "secret").await.unwrap();
    let mut alice = node.login("alice", "secret", "laptop").await.unwrap();
    let reply = alice
        .iq(
            "<iq type='get' id='d1' to='alice@localhost'>\
             <query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            "d1",
        )
        .await
        .unwrap();
    let vars: Vec<String> = reply
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .map(|q| {
            q.children()
                .filter_map(|f| f.attr("var").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    for var in [MAM, "urn:xmpp:mam:2#extended", SID] {
        assert!(vars.iter().any(|v| v == var), "{var} missing from {vars:?}");
    }
}
