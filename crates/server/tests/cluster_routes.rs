//! The cluster-wide route table (issues 4 and 8): an external component (XEP-0114) connected
//! to one node serves its domain for users on every node. Two in-process nodes share one
//! PostgreSQL database and one cookie; the component speaks raw XML.
//!
//! Checked: two components registered for one domain on two nodes before they link are
//! settled by the node name that sorts first (the other is closed with `<conflict/>`); a user
//! on node B reaches the component on node A and gets its reply; a second component on B is
//! refused with `<conflict/>`; when A dies its route leaves B at once (the user gets an error
//! bounce, not silence); a component then registers on B and works.
//!
//! Without PostgreSQL binaries the test prints a loud note and passes, unless `CI` is set.

mod cluster_support;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use cluster_support::in_process::{ClusterNode, Options};
use minidom::Element;
use starling_commands::exec::execute;
use starling_commands::spec::{Request, Response};
use starling_core::routes::RouteOwner;
use starling_testkit::postgres::start_or_skip;
use starling_xmpp::codec::{Limits, StreamEvent, StreamParser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const COMPONENT: &str = "comp.localhost";
const NS_ACCEPT: &str = "jabber:component:accept";
const TIMEOUT: Duration = Duration::from_secs(10);

/// A component listener; the static route sends the component's domain, once unrouted, to a
/// closed port, so the s2s manager bounces at once instead of asking DNS.
const ROUTES_NODE: Options<'static> = Options {
    modules: "mod_disco: {}\n  mod_roster: {}\n",
    listeners: "  - {port: 0, ip: 127.0.0.1, module: ejabberd_service, password: sesame}\n",
    extra: "s2s_static_routes: {comp.localhost: \"127.0.0.1:1\"}\n",
    sql_discovery: false,
};

/// An external component speaking XEP-0114 by hand.
struct Component {
    tcp: TcpStream,
    parser: StreamParser,
}

impl Component {
    /// Connects for [`COMPONENT`] and completes the handshake; `Err` carries the stream
    /// error's condition.
    async fn connect(addr: SocketAddr) -> anyhow::Result<Result<Self, String>> {
        Self::connect_as(addr, COMPONENT).await
    }

    /// Connects for `domain`.
    async fn connect_as(addr: SocketAddr, domain: &str) -> anyhow::Result<Result<Self, String>> {
        let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr)).await??;
        let mut c = Self {
            tcp,
            parser: StreamParser::new(NS_ACCEPT, Limits::default()),
        };
        c.send(&format!(
            "<?xml version='1.0'?><stream:stream xmlns='{NS_ACCEPT}' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>"
        ))
        .await?;
        let StreamEvent::Open(header) = c.next().await? else {
            bail!("no stream header");
        };
        let id = header.id.context("no stream id")?;
        let proof = starling_s2s::wire::component_handshake(&id, "sesame");
        c.send(&format!("<handshake>{proof}</handshake>")).await?;
        let answer = c.element().await?;
        if answer.name() == "handshake" {
            return Ok(Ok(c));
        }
        Ok(Err(condition(&answer)))
    }

    async fn send(&mut self, xml: &str) -> anyhow::Result<()> {
        self.tcp.write_all(xml.as_bytes()).await?;
        Ok(())
    }

    async fn next(&mut self) -> anyhow::Result<StreamEvent> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(e) = self.parser.next_event()? {
                return Ok(e);
            }
            let n = tokio::time::timeout(TIMEOUT, self.tcp.read(&mut buf))
                .await
                .context("read timed out")??;
            if n == 0 {
                bail!("connection closed");
            }
            self.parser.feed(buf.get(..n).unwrap_or_default());
        }
    }

    async fn element(&mut self) -> anyhow::Result<Element> {
        loop {
            match self.next().await? {
                StreamEvent::Stanza(el) => return Ok(el),
                StreamEvent::Open(_) => {}
                StreamEvent::Close => bail!("stream closed"),
            }
        }
    }

    /// The condition of the stream error that ends the stream.
    async fn stream_error(&mut self) -> anyhow::Result<String> {
        loop {
            let el = self.element().await?;
            if el.name() == "error" {
                return Ok(condition(&el));
            }
        }
    }

    async fn message(&mut self) -> anyhow::Result<Element> {
        loop {
            let el = self.element().await?;
            if el.name() == "message" {
                return Ok(el);
            }
        }
    }
}

fn condition(error: &Element) -> String {
    error
        .children()
        .find(|c| c.name() != "text")
        .map(|c| c.name().to_owned())
        .unwrap_or_default()
}

fn body(el: &Element) -> String {
    el.children()
        .find(|c| c.name() == "body")
        .map(Element::text)
        .unwrap_or_default()
}

/// Polls `check` every 20 ms until it holds or `limit` passes.
async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn components_are_reachable_from_every_node() {
    let Some(pg) = start_or_skip("components_are_reachable_from_every_node")
        .await
        .expect("start PostgreSQL")
    else {
        return;
    };
    let db = pg.database().await.expect("database");
    let cookie = starling_cluster::cookie::Cookie::generate().to_hex();
    let a = ClusterNode::start("starling@a", &db, &cookie, ROUTES_NODE).await;
    let b = ClusterNode::start("starling@b", &db, &cookie, ROUTES_NODE).await;

    // Both nodes accept a component for the domain while they are apart; when they link,
    // the name that sorts first (starling@a) wins on both, and b's component is closed.
    let mut on_a = Component::connect(a.component_address())
        .await
        .expect("component on a")
        .expect("accepted on a");
    let mut loser = Component::connect(b.component_address())
        .await
        .expect("component on b")
        .expect("accepted on b while apart");
    let req = Request {
        command: "join_cluster".into(),
        args: vec![a.address()],
    };
    let joined = execute(b.server(), &req).await;
    assert!(matches!(joined, Response::Ok(_)), "{joined:?}");
    assert_eq!(
        loser.stream_error().await.expect("b's component closed"),
        "conflict"
    );
    eventually(TIMEOUT, "b routes the domain to a", || {
        b.server().routes().owner(COMPONENT) == Some(RouteOwner::Node("starling@a".into()))
    })
    .await;
    assert_eq!(
        a.server().routes().owner(COMPONENT),
        Some(RouteOwner::Local)
    );

    // Once linked, a registration and its end are announced at once.
    let other = Component::connect_as(a.component_address(), "other.localhost")
        .await
        .expect("second domain on a")
        .expect("accepted");
    eventually(TIMEOUT, "b learns other.localhost", || {
        b.server().routes().owner("other.localhost") == Some(RouteOwner::Node("starling@a".into()))
    })
    .await;
    drop(other);
    eventually(TIMEOUT, "b forgets other.localhost", || {
        b.server().route_for("other.localhost").is_none()
    })
    .await;

    // A user on b talks to the component on a, and its reply comes back.
    let r = execute(
        b.server(),
        &Request {
            command: "register".into(),
            args: vec!["bob".into(), "localhost".into(), "secret".into()],
        },
    )
    .await;
    assert!(matches!(r, Response::Ok(_)), "{r:?}");
    let mut bob = b.login("bob", "r").await;
    eventually(TIMEOUT, "bob's session known on a", || {
        a.server().sm().count() == 1
    })
    .await;
    for i in 0..5 {
        bob.send(&format!(
            "<message to='bot@{COMPONENT}' type='chat' id='m{i}'><body>ping {i}</body></message>"
        ))
        .await
        .expect("send");
    }
    for i in 0..5 {
        let got = on_a.message().await.expect("component receives");
        assert_eq!(got.attr("from"), Some("bob@localhost/r"));
        assert_eq!(got.attr("id"), Some(format!("m{i}").as_str()), "in order");
        assert_eq!(body(&got), format!("ping {i}"));
    }
    on_a.send(&format!(
        "<message from='bot@{COMPONENT}' to='bob@localhost/r' type='chat' id='pong'>\
         <body>pong</body></message>"
    ))
    .await
    .expect("reply");
    let reply = bob
        .wait_for(|e| e.name() == "message" && e.attr("id") == Some("pong"))
        .await
        .expect("bob gets the reply");
    assert_eq!(reply.attr("from"), Some(&*format!("bot@{COMPONENT}")));
    assert_eq!(body(&reply), "pong");

    // A second component for the domain, on the other node, is refused.
    match Component::connect(b.component_address())
        .await
        .expect("second component")
    {
        Ok(_) => panic!("a second component for a routed domain must be refused"),
        Err(condition) => assert_eq!(condition, "conflict"),
    }

    // Node a dies: its route leaves b at once and bob's message bounces.
    a.node.cluster.as_ref().expect("clustered").abort();
    eventually(Duration::from_secs(5), "a's route purged from b", || {
        b.server().route_for(COMPONENT).is_none()
    })
    .await;
    bob.send(&format!(
        "<message to='bot@{COMPONENT}' type='chat' id='lost'><body>anyone?</body></message>"
    ))
    .await
    .expect("send");
    let bounce = bob
        .wait_for(|e| e.name() == "message" && e.attr("id") == Some("lost"))
        .await
        .expect("bob gets a bounce");
    assert_eq!(bounce.attr("type"), Some("error"));
    assert!(
        starling_testkit::error_condition(&bounce).is_some(),
        "{bounce:?}"
    );
    a.server().begin_shutdown();

    // The domain is free again: a component registers on b and serves bob.
    let mut on_b = Component::connect(b.component_address())
        .await
        .expect("component on b")
        .expect("accepted on b after a died");
    assert_eq!(
        b.server().routes().owner(COMPONENT),
        Some(RouteOwner::Local)
    );
    bob.send(&format!(
        "<message to='bot@{COMPONENT}' type='chat' id='again'><body>back</body></message>"
    ))
    .await
    .expect("send");
    let got = on_b.message().await.expect("component on b receives");
    assert_eq!(got.attr("id"), Some("again"));
    drop(on_a);
}
