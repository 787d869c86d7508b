//! IQ requests sent by the server itself (`Server::iq_query`) get their answers back.

use std::time::Duration;

use starling_testkit::TestNode;
use starling_xmpp::Element;
use starling_xmpp::jid::Jid;
use starling_xmpp::stanza::Stanza;

fn disco_request(id: &str, to: &str) -> Stanza {
    let el: Element = format!(
        "<iq xmlns='jabber:client' type='get' id='{id}'>\
         <query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
    )
    .parse()
    .unwrap();
    Stanza::new(
        el,
        Jid::parse("localhost").unwrap(),
        Jid::parse(to).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn server_queries_get_their_results_and_spoofed_answers_are_ignored() {
    let node = TestNode::start().await.unwrap();
    node.register("ann", "a").await.unwrap();
    node.register("mallory", "m").await.unwrap();
    let mut ann = node.login("ann", "a", "r").await.unwrap();
    let mut mallory = node.login("mallory", "m", "r").await.unwrap();

    let server = node.server.clone();
    let query = tokio::spawn(async move {
        server
            .iq_query(
                disco_request("caps1", "ann@localhost/r"),
                Duration::from_secs(5),
            )
            .await
    });
    let request = ann
        .wait_for(|e| e.name() == "iq" && e.attr("id") == Some("caps1"))
        .await
        .unwrap();
    assert_eq!(request.attr("from"), Some("localhost"));
    // Another user answering with the same id is not taken for the answer.
    mallory
        .send("<iq type='result' id='caps1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'><feature var='spoofed'/></query></iq>")
        .await
        .unwrap();
    ann.send("<iq type='result' id='caps1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'><feature var='urn:xmpp:ping'/></query></iq>")
        .await
        .unwrap();
    let answer = query.await.unwrap().expect("the answer arrives");
    assert_eq!(answer.from().as_str(), "ann@localhost/r");
    let xml = String::from_utf8(answer.bytes().to_vec()).unwrap();
    assert!(
        xml.contains("urn:xmpp:ping") && !xml.contains("spoofed"),
        "{xml}"
    );

    // No answer: None after the timeout, and nothing is left pending.
    let none = node
        .server
        .iq_query(
            disco_request("caps2", "ghost@localhost/x"),
            Duration::from_millis(300),
        )
        .await;
    // The ghost's server (us) answers service-unavailable, which is an answer too.
    assert!(none.is_some_and(|s| s.is_error()));
}
