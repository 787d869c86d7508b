//! Federation between two in-process nodes serving different domains over loopback, with
//! static routes instead of DNS: dialback, SASL EXTERNAL with a test CA, bounces, spoofing,
//! and XEP-0114 components.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use minidom::Element;
use starling_core::Server;
use starling_xmpp::codec::{Limits, StreamEvent, StreamParser};
use starling_xmpp::jid::BareJid;
use starling_xmpp::scram::Credentials;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(10);

struct Peer {
    node: Option<starling_server::Node>,
    server: Arc<Server>,
    c2s: SocketAddr,
    s2s: SocketAddr,
    component: Option<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(node) = &self.node {
            node.server.begin_shutdown();
        }
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

async fn start(domain: &str, s2s_port: u16, routes: &[(&str, u16)], extra: &str) -> Peer {
    start_with_s2s_opts(domain, s2s_port, routes, extra, "").await
}

/// Like [`start`], with `s2s_opts` (`, key: value` pairs) added to the s2s listener.
async fn start_with_s2s_opts(
    domain: &str,
    s2s_port: u16,
    routes: &[(&str, u16)],
    extra: &str,
    s2s_opts: &str,
) -> Peer {
    let dir = tempfile::tempdir().expect("tempdir");
    let routes: String = routes
        .iter()
        .map(|(d, p)| format!("{d}: \"127.0.0.1:{p}\", "))
        .collect();
    let yaml = format!(
        "hosts: [{domain}]\n\
         data_dir: {data}\n\
         loglevel: warning\n\
         listen:\n  \
           - {{port: 0, ip: 127.0.0.1, module: c2s, starttls: false, starttls_required: false, allow_plain_without_tls: true}}\n  \
           - {{port: {s2s_port}, ip: 127.0.0.1, module: s2s{s2s_opts}}}\n  \
           - {{port: 0, ip: 127.0.0.1, module: service, password: sesame}}\n\
         modules:\n  mod_disco: {{}}\n  mod_ping: {{}}\n  mod_roster: {{}}\n\
         s2s_static_routes: {{{routes}}}\n\
         s2s_timeout: 60\n\
         {extra}\n",
        data = dir.path().join("data").display(),
    );
    let config = starling_config::load_str(&yaml, "test.yml", &starling_modules::specs())
        .unwrap_or_else(|d| panic!("config rejected:\n{d}"));
    let node = starling_server::start(config, &starling_modules::catalogue())
        .await
        .expect("node starts");
    let c2s = node.c2s.first().expect("c2s").0;
    let s2s = node
        .s2s
        .iter()
        .find(|(_, m)| *m == starling_config::ListenerModule::S2s)
        .expect("s2s")
        .0;
    let component = node
        .s2s
        .iter()
        .find(|(_, m)| *m == starling_config::ListenerModule::Service)
        .map(|(a, _)| *a);
    Peer {
        server: node.server.clone(),
        node: Some(node),
        c2s,
        s2s,
        component,
        _dir: dir,
    }
}

async fn register(server: &Server, user: &str, domain: &str) {
    let jid = BareJid::new(Some(user), domain).expect("jid");
    let creds = Credentials::new("pw", 4096).expect("credentials");
    server.stores().create(&jid, &creds).await.expect("create");
}

/// A raw XML stream over plain TCP.
struct Raw {
    tcp: TcpStream,
    parser: StreamParser,
}

impl Raw {
    async fn connect(addr: SocketAddr, ns: &'static str) -> Self {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        Self {
            tcp,
            parser: StreamParser::new(ns, Limits::default()),
        }
    }

    async fn send(&mut self, xml: &str) {
        self.tcp.write_all(xml.as_bytes()).await.expect("write");
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
            self.parser.feed(&buf[..n]);
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

    async fn wait_for(&mut self, pred: impl Fn(&Element) -> bool) -> anyhow::Result<Element> {
        loop {
            let el = self.element().await?;
            if pred(&el) {
                return Ok(el);
            }
        }
    }

    /// The condition of the stream error that ends the stream.
    async fn stream_error(&mut self) -> String {
        let el = self
            .wait_for(|e| e.name() == "error")
            .await
            .expect("stream error");
        el.children()
            .next()
            .map(|c| c.name().to_owned())
            .unwrap_or_default()
    }

    /// Logs a user in over plain c2s (the test listener allows PLAIN without TLS).
    async fn login(addr: SocketAddr, user: &str, domain: &str) -> Self {
        let mut c = Self::connect(addr, "jabber:client").await;
        let open = format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>"
        );
        c.send(&open).await;
        c.wait_for(|e| e.name() == "features")
            .await
            .expect("features");
        let payload = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0pw"));
        c.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"
        ))
        .await;
        let reply = c.element().await.expect("sasl reply");
        assert_eq!(reply.name(), "success");
        c.parser.reset();
        c.send(&open).await;
        c.wait_for(|e| e.name() == "features")
            .await
            .expect("features");
        c.send(
            "<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>r</resource></bind></iq>",
        )
        .await;
        c.wait_for(|e| e.name() == "iq").await.expect("bound");
        c
    }

    async fn message(&mut self) -> Element {
        self.wait_for(|e| e.name() == "message")
            .await
            .expect("message")
    }
}

fn body(el: &Element) -> String {
    el.get_child("body", "jabber:client")
        .map(Element::text)
        .unwrap_or_default()
}

/// Two nodes a.test and b.test routing to each other.
async fn pair(extra_a: &str, extra_b: &str) -> (Peer, Peer) {
    let (pa, pb) = (free_port(), free_port());
    let a = start("a.test", pa, &[("b.test", pb)], extra_a).await;
    let b = start("b.test", pb, &[("a.test", pa)], extra_b).await;
    register(&a.server, "alice", "a.test").await;
    register(&b.server, "bob", "b.test").await;
    (a, b)
}

async fn chat_both_ways(a: &Peer, b: &Peer) {
    let mut alice = Raw::login(a.c2s, "alice", "a.test").await;
    let mut bob = Raw::login(b.c2s, "bob", "b.test").await;
    alice
        .send("<message to='bob@b.test/r' type='chat'><body>hello bob</body></message>")
        .await;
    let got = bob.message().await;
    assert_eq!(got.attr("from"), Some("alice@a.test/r"));
    assert_eq!(body(&got), "hello bob");
    bob.send("<message to='alice@a.test/r' type='chat'><body>hi alice</body></message>")
        .await;
    let got = alice.message().await;
    assert_eq!(got.attr("from"), Some("bob@b.test/r"));
    assert_eq!(body(&got), "hi alice");
    // An IQ across the federation: ping the remote server itself.
    alice
        .send("<iq type='get' id='p1' to='b.test'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let pong = alice
        .wait_for(|e| e.name() == "iq" && e.attr("id") == Some("p1"))
        .await
        .expect("pong");
    assert_eq!(pong.attr("type"), Some("result"));
}

fn outgoing(server: &Server) -> Vec<starling_core::server::RemoteConnection> {
    server
        .remote_router()
        .map(|r| r.connections())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| !c.incoming)
        .collect()
}

#[tokio::test]
async fn dialback_federation_both_ways() {
    // Self-signed certificates do not validate: STARTTLS, then dialback over TLS.
    let (a, b) = pair("", "").await;
    chat_both_ways(&a, &b).await;
    let out = outgoing(&a.server);
    assert_eq!(out.len(), 1, "{out:?}");
    let c = out.first().expect("one");
    assert_eq!((c.local.as_str(), c.remote.as_str()), ("a.test", "b.test"));
    assert!(c.tls);
    assert_eq!(c.auth, "dialback");
    assert!(
        b.server
            .remote_router()
            .map(|r| r.connections())
            .unwrap_or_default()
            .iter()
            .any(|c| c.incoming && c.remote == "a.test" && c.auth == "dialback")
    );
    // stop_s2s_connections closes everything; the next stanza reconnects.
    let stopped = a.server.remote_router().map(|r| r.stop_connections());
    assert!(stopped.unwrap_or(0) >= 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while a
        .server
        .remote_router()
        .is_some_and(|r| !r.connections().is_empty())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections did not close"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    chat_both_ways(&a, &b).await;
}

#[tokio::test]
async fn dialback_without_tls() {
    let (a, b) = pair("s2s_use_starttls: false", "s2s_use_starttls: false").await;
    chat_both_ways(&a, &b).await;
    let c = outgoing(&a.server).into_iter().next().expect("one");
    assert!(!c.tls);
    assert_eq!(c.auth, "dialback");
}

struct TestCa {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Starling s2s test CA");
        let cert = params.self_signed(&key).expect("ca");
        Self {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes `dir/NAME.pem` with the certificate for `name` and its key.
    fn issue(&self, dir: &std::path::Path, name: &str) -> std::path::PathBuf {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, format!("{}{}", cert.pem(), key.serialize_pem())).expect("write");
        path
    }
}

#[tokio::test]
async fn sasl_external_with_a_test_ca() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca.pem).expect("write");
    let a_pem = ca.issue(dir.path(), "a.test");
    let b_pem = ca.issue(dir.path(), "b.test");
    let extra = |pem: &std::path::Path| {
        format!(
            "certfiles: [\"{}\"]\ns2s_cafile: \"{}\"\ns2s_use_starttls: required_trusted",
            pem.display(),
            ca_path.display()
        )
    };
    let (a, b) = pair(&extra(&a_pem), &extra(&b_pem)).await;
    chat_both_ways(&a, &b).await;
    let c = outgoing(&a.server).into_iter().next().expect("one");
    assert!(c.tls);
    assert_eq!(c.auth, "external");
}

#[tokio::test]
async fn untrusted_certificate_is_refused_when_trust_is_required() {
    // B requires a trusted certificate; A's is self-signed, so nothing gets through.
    let (a, _b) = pair("", "s2s_use_starttls: required_trusted").await;
    let mut alice = Raw::login(a.c2s, "alice", "a.test").await;
    alice
        .send("<message id='m1' to='bob@b.test' type='chat'><body>x</body></message>")
        .await;
    let err = alice.message().await;
    assert_eq!(err.attr("type"), Some("error"));
    assert!(err.get_child("error", "jabber:client").is_some());
}

#[tokio::test]
async fn unreachable_domain_bounces() {
    let dead = free_port();
    let a = start("a.test", free_port(), &[("nowhere.test", dead)], "").await;
    register(&a.server, "alice", "a.test").await;
    let mut alice = Raw::login(a.c2s, "alice", "a.test").await;
    alice
        .send("<message id='m1' to='x@nowhere.test' type='chat'><body>x</body></message>")
        .await;
    let err = alice.message().await;
    assert_eq!(err.attr("type"), Some("error"));
    let condition = err
        .get_child("error", "jabber:client")
        .and_then(|e| e.children().next())
        .map(|c| c.name().to_owned());
    assert_eq!(condition.as_deref(), Some("remote-server-not-found"));
    // And a domain that is no DNS name at all is not even tried.
    alice
        .send("<message id='m2' to='x@[::1]' type='chat'><body>x</body></message>")
        .await;
    let err = alice.message().await;
    assert_eq!(err.attr("type"), Some("error"));
}

const S2S_OPEN: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
     xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
     from='a.test' to='b.test' version='1.0'>";

#[tokio::test]
async fn spoofed_stanzas_and_keys_are_refused() {
    let (_a, b) = pair("", "").await;
    // A stanza before any authentication: invalid-from.
    let mut raw = Raw::connect(b.s2s, "jabber:server").await;
    raw.send(S2S_OPEN).await;
    raw.wait_for(|e| e.name() == "features")
        .await
        .expect("features");
    raw.send("<message from='alice@a.test' to='bob@b.test'><body>spoof</body></message>")
        .await;
    assert_eq!(raw.stream_error().await, "invalid-from");

    // A made-up dialback key: a.test's authoritative server says invalid.
    let mut raw = Raw::connect(b.s2s, "jabber:server").await;
    raw.send(S2S_OPEN).await;
    raw.wait_for(|e| e.name() == "features")
        .await
        .expect("features");
    raw.send("<db:result from='a.test' to='b.test'>0123456789abcdef</db:result>")
        .await;
    let answer = raw
        .wait_for(|e| e.name() == "result")
        .await
        .expect("answer");
    assert_eq!(answer.attr("type"), Some("invalid"));

    // An unknown host is refused with host-unknown.
    let mut raw = Raw::connect(b.s2s, "jabber:server").await;
    raw.send(&S2S_OPEN.replace("to='b.test'", "to='c.test'"))
        .await;
    assert_eq!(raw.stream_error().await, "host-unknown");
}

fn handshake(id: &str, secret: &str) -> String {
    starling_s2s::wire::component_handshake(id, secret)
}

#[tokio::test]
async fn external_component() {
    let a = start("a.test", free_port(), &[], "").await;
    register(&a.server, "alice", "a.test").await;
    let addr = a.component.expect("component listener");
    let open = "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
                xmlns:stream='http://etherx.jabber.org/streams' to='comp.a.test'>";
    let mut comp = Raw::connect(addr, "jabber:component:accept").await;
    comp.send(open).await;
    let StreamEvent::Open(header) = comp.next().await.expect("header") else {
        panic!("no header");
    };
    let id = header.id.expect("stream id");
    comp.send(&format!(
        "<handshake>{}</handshake>",
        handshake(&id, "sesame")
    ))
    .await;
    let ok = comp.element().await.expect("handshake reply");
    assert_eq!(ok.name(), "handshake");

    // A second component for the same domain is refused with conflict.
    let mut second = Raw::connect(addr, "jabber:component:accept").await;
    second.send(open).await;
    let StreamEvent::Open(h2) = second.next().await.expect("header") else {
        panic!("no header");
    };
    second
        .send(&format!(
            "<handshake>{}</handshake>",
            handshake(&h2.id.expect("id"), "sesame")
        ))
        .await;
    assert_eq!(second.stream_error().await, "conflict");

    // A wrong secret is refused.
    let mut wrong = Raw::connect(addr, "jabber:component:accept").await;
    wrong
        .send(&open.replace("comp.a.test", "other.a.test"))
        .await;
    let _ = wrong.next().await.expect("header");
    wrong.send("<handshake>00</handshake>").await;
    assert_eq!(wrong.stream_error().await, "not-authorized");

    // Messages both ways.
    let mut alice = Raw::login(a.c2s, "alice", "a.test").await;
    alice
        .send("<message to='bot@comp.a.test' type='chat'><body>to the bot</body></message>")
        .await;
    let got = comp.message().await;
    assert_eq!(got.attr("from"), Some("alice@a.test/r"));
    assert_eq!(
        got.get_child("body", "jabber:component:accept")
            .map(Element::text),
        Some("to the bot".to_owned())
    );
    comp.send(
        "<message from='bot@comp.a.test' to='alice@a.test/r' type='chat'><body>beep</body></message>",
    )
    .await;
    let got = alice.message().await;
    assert_eq!(got.attr("from"), Some("bot@comp.a.test"));
    assert_eq!(body(&got), "beep");

    // Spoofing another domain closes the component's stream; its route goes away.
    comp.send("<message from='x@a.test' to='alice@a.test/r'><body>spoof</body></message>")
        .await;
    assert_eq!(comp.stream_error().await, "invalid-from");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while a.server.route_for("comp.a.test").is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the component's route stayed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An s2s listener with a shaper (`shaper` + `shaper_rules`, as for c2s) paces its reads but
/// delivers everything.
#[tokio::test]
async fn shaped_s2s_listener_still_delivers() {
    let (pa, pb) = (free_port(), free_port());
    let a = start("a.test", pa, &[("b.test", pb)], "").await;
    let b = start_with_s2s_opts(
        "b.test",
        pb,
        &[("a.test", pa)],
        "shaper:\n  s2sslow: 4000\nshaper_rules:\n  s2s_shaper: s2sslow\n",
        ", shaper: s2s_shaper",
    )
    .await;
    register(&a.server, "alice", "a.test").await;
    register(&b.server, "bob", "b.test").await;
    chat_both_ways(&a, &b).await;
}
