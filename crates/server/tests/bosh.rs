//! BOSH (XEP-0124/0206) against a real node, over raw HTTP/1.1 requests so every body is
//! visible: a SCRAM-SHA-1 login with the stream restart and bind, chat with a TCP client
//! (including a long poll answered by an arriving message), retransmission, the request
//! window, concurrency limits, termination, inactivity and every refusal (unknown sid,
//! malformed bodies, unknown host).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha1::{Digest, Sha1};
use starling_core::counters::Transport;
use starling_server::Node;
use starling_testkit::{Client, TIMEOUT};
use starling_xmpp::Element;
use starling_xmpp::ns;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
/// The `wait` our client asks for: long polls in these tests end within it.
const WAIT: u64 = 2;

struct BoshNode {
    node: Option<Node>,
    /// The HTTP listener serving `/bosh`.
    http: SocketAddr,
    /// A STARTTLS c2s listener, for the TCP side.
    c2s: SocketAddr,
    _dir: tempfile::TempDir,
}

impl BoshNode {
    async fn start() -> anyhow::Result<Self> {
        Self::start_with("mod_bosh: {max_wait: 5}").await
    }

    async fn start_with(bosh_module: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let yaml = format!(
            "hosts: [localhost]\n\
             data_dir: {data}\n\
             loglevel: warning\n\
             listen:\n  \
               - {{port: 0, ip: 127.0.0.1, module: ejabberd_c2s, starttls_required: true}}\n  \
               - port: 0\n    ip: 127.0.0.1\n    module: ejabberd_http\n    \
                 request_handlers: {{/bosh: mod_bosh}}\n\
             modules:\n  mod_roster: {{}}\n  mod_stream_mgmt: {{}}\n  {bosh_module}\n",
            data = dir.path().join("data").display(),
        );
        let specs = starling_modules::specs();
        let config = starling_config::load_str(&yaml, "test.yml", &specs)
            .map_err(|d| anyhow!("config rejected:\n{d}"))?;
        let node = starling_server::start(config, &starling_modules::catalogue()).await?;
        let http = node.http.first().context("http listener")?.0;
        let c2s = node.c2s.first().context("c2s listener")?.0;
        Ok(Self {
            node: Some(node),
            http,
            c2s,
            _dir: dir,
        })
    }

    fn server(&self) -> anyhow::Result<&std::sync::Arc<starling_core::Server>> {
        Ok(&self.node.as_ref().context("stopped")?.server)
    }

    async fn register(&self, user: &str) -> anyhow::Result<()> {
        let jid = starling_xmpp::jid::BareJid::new(Some(user), "localhost")?;
        let creds =
            tokio::task::spawn_blocking(|| starling_xmpp::scram::Credentials::new("pw", 4096))
                .await?
                .map_err(|e| anyhow!("{e}"))?;
        self.server()?
            .stores()
            .create(&jid, &creds)
            .await
            .map_err(|e| anyhow!("{e}"))
    }

    async fn tcp_login(&self, user: &str, resource: &str) -> anyhow::Result<Client> {
        let mut c = Client::connect(self.c2s).await?;
        c.open().await?;
        c.starttls().await?;
        c.auth_plain(user, "pw").await?;
        c.bind(resource).await?;
        Ok(c)
    }

    /// A BOSH client logged in with SCRAM-SHA-1 and bound to `resource`.
    async fn bosh_login(&self, user: &str, resource: &str) -> anyhow::Result<Bosh> {
        let (mut bosh, created) = Bosh::create(self.http, "localhost").await?;
        let features = created
            .get_child("features", ns::STREAM)
            .context("no features in the creation response")?;
        let mechanisms: Vec<String> = features
            .get_child("mechanisms", SASL)
            .context("no mechanisms")?
            .children()
            .map(Element::text)
            .collect();
        assert!(
            mechanisms.iter().any(|m| m == "SCRAM-SHA-1"),
            "{mechanisms:?}"
        );
        bosh.scram_sha1(user, "pw").await?;
        let restarted = bosh.restart().await?;
        assert!(restarted.has_child("bind", ns::BIND), "{restarted:?}");
        let jid = bosh.bind(resource).await?;
        assert_eq!(jid, format!("{user}@localhost/{resource}"));
        Ok(bosh)
    }
}

/// One HTTP/1.1 exchange on its own connection.
async fn http(addr: SocketAddr, method: &str, body: &str) -> anyhow::Result<(u16, String, String)> {
    let mut tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr)).await??;
    let request = format!(
        "{method} /bosh HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut raw)).await??;
    let text = String::from_utf8(raw)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    let status: u16 = head.split(' ').nth(1).context("no status")?.parse()?;
    Ok((status, head.to_ascii_lowercase(), body.to_owned()))
}

/// POSTs `body`; expects HTTP 200 and a `<body/>`.
async fn post(addr: SocketAddr, body: &str) -> anyhow::Result<Element> {
    let (status, head, text) = http(addr, "POST", body).await?;
    if status != 200 {
        bail!("HTTP {status}: {text}");
    }
    assert!(head.contains("content-type: text/xml"), "{head}");
    assert!(head.contains("access-control-allow-origin: *"), "{head}");
    let el: Element = text.parse().map_err(|e| anyhow!("{e}: {text}"))?;
    if !el.is("body", HTTPBIND) {
        bail!("not a BOSH body: {text}");
    }
    Ok(el)
}

fn is_terminate(el: &Element, condition: Option<&str>) -> bool {
    el.attr("type") == Some("terminate") && el.attr("condition") == condition
}

struct Bosh {
    addr: SocketAddr,
    sid: String,
    /// The next request id.
    rid: u64,
    /// Elements received but not consumed yet.
    inbox: std::collections::VecDeque<Element>,
}

impl Bosh {
    /// Creates a session (hold 1); returns it and the creation response.
    async fn create(addr: SocketAddr, to: &str) -> anyhow::Result<(Self, Element)> {
        let rid = 1_000_000 + u64::from(rand_u16());
        let response = post(
            addr,
            &format!(
                "<body rid='{rid}' to='{to}' wait='{WAIT}' hold='1' ver='1.6' xml:lang='en' \
                 xmpp:version='1.0' xmlns:xmpp='urn:xmpp:xbosh' xmlns='{HTTPBIND}'/>"
            ),
        )
        .await?;
        let sid = response
            .attr("sid")
            .with_context(|| format!("no sid: {response:?}"))?
            .to_owned();
        assert_eq!(response.attr("wait"), Some("2"));
        assert_eq!(response.attr("hold"), Some("1"));
        assert_eq!(response.attr("requests"), Some("2"));
        assert_eq!(response.attr("ver"), Some("1.6"));
        assert_eq!(response.attr("from"), Some("localhost"));
        assert!(response.attr("authid").is_some_and(|a| a.len() >= 16));
        assert!(response.attr("inactivity").is_some());
        Ok((
            Self {
                addr,
                sid,
                rid: rid + 1,
                inbox: Default::default(),
            },
            response,
        ))
    }

    /// A request body with the next rid, `attrs` and `payload`.
    fn body(&mut self, attrs: &str, payload: &str) -> (u64, String) {
        let rid = self.rid;
        self.rid += 1;
        let text = format!(
            "<body rid='{rid}' sid='{}' {attrs} xmlns='{HTTPBIND}'>{payload}</body>",
            self.sid
        );
        (rid, text)
    }

    /// Sends `payload`; returns the response body, keeping its children in the inbox.
    async fn send(&mut self, payload: &str) -> anyhow::Result<Element> {
        let (_, body) = self.body("", payload);
        let response = post(self.addr, &body).await?;
        self.inbox.extend(response.children().cloned());
        Ok(response)
    }

    /// The next element from the server, polling as needed.
    async fn element(&mut self) -> anyhow::Result<Element> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(el) = self.inbox.pop_front() {
                return Ok(el);
            }
            if Instant::now() > deadline {
                bail!("no element within {TIMEOUT:?}");
            }
            let response = self.send("").await?;
            if response.attr("type") == Some("terminate") && self.inbox.is_empty() {
                bail!("session terminated: {response:?}");
            }
        }
    }

    async fn scram_sha1(&mut self, user: &str, password: &str) -> anyhow::Result<()> {
        let client_nonce = "fyko+d2lbbFgONRv9qkxdawL";
        let first_bare = format!("n={user},r={client_nonce}");
        self.send(&format!(
            "<auth xmlns='{SASL}' mechanism='SCRAM-SHA-1'>{}</auth>",
            B64.encode(format!("n,,{first_bare}"))
        ))
        .await?;
        let challenge = self.element().await?;
        if !challenge.is("challenge", SASL) {
            bail!("expected a challenge, got {challenge:?}");
        }
        let server_first = String::from_utf8(B64.decode(challenge.text())?)?;
        let field = |name: &str| {
            server_first
                .split(',')
                .find_map(|f| f.strip_prefix(name))
                .map(str::to_owned)
                .with_context(|| format!("no {name} in {server_first}"))
        };
        let nonce = field("r=")?;
        let salt = B64.decode(field("s=")?)?;
        let iterations: u32 = field("i=")?.parse()?;
        let mut salted = [0u8; 20];
        pbkdf2::pbkdf2_hmac::<Sha1>(password.as_bytes(), &salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key")?;
        let stored_key = Sha1::digest(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{first_bare},{server_first},{without_proof}");
        let signature = hmac(&stored_key, auth_message.as_bytes())?;
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        self.send(&format!(
            "<response xmlns='{SASL}'>{}</response>",
            B64.encode(format!("{without_proof},p={}", B64.encode(proof)))
        ))
        .await?;
        let success = self.element().await?;
        if !success.is("success", SASL) {
            bail!("SCRAM-SHA-1 failed: {success:?}");
        }
        let server_final = String::from_utf8(B64.decode(success.text())?)?;
        let server_key = hmac(&salted, b"Server Key")?;
        let expected = B64.encode(hmac(&server_key, auth_message.as_bytes())?);
        assert_eq!(server_final, format!("v={expected}"), "server signature");
        Ok(())
    }

    /// XEP-0206 §5: the restart request; returns the new stream features.
    async fn restart(&mut self) -> anyhow::Result<Element> {
        let (_, body) = self.body(
            "xmpp:restart='true' xmlns:xmpp='urn:xmpp:xbosh' to='localhost' xml:lang='en'",
            "",
        );
        let response = post(self.addr, &body).await?;
        self.inbox.extend(response.children().cloned());
        let features = self.element().await?;
        if !features.is("features", ns::STREAM) {
            bail!("expected features, got {features:?}");
        }
        Ok(features)
    }

    async fn bind(&mut self, resource: &str) -> anyhow::Result<String> {
        self.send(&format!(
            "<iq xmlns='jabber:client' type='set' id='bind1'>\
             <bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"
        ))
        .await?;
        let reply = self.element().await?;
        reply
            .get_child("bind", ns::BIND)
            .and_then(|b| b.get_child("jid", ns::BIND))
            .map(Element::text)
            .with_context(|| format!("bind failed: {reply:?}"))
    }
}

fn hmac(key: &[u8], data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut mac = Hmac::<Sha1>::new_from_slice(key).map_err(|e| anyhow!("{e}"))?;
    mac.update(data);
    Ok(mac.finalize().into_bytes().to_vec())
}

fn rand_u16() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos % 60_000) as u16
}

#[tokio::test]
async fn login_chat_long_poll_and_terminate() -> anyhow::Result<()> {
    let node = BoshNode::start().await?;
    node.register("alice").await?;
    node.register("bob").await?;
    let mut alice = node.bosh_login("alice", "web").await?;
    let mut bob = node.tcp_login("bob", "tcp").await?;
    assert_eq!(node.server()?.counters().sessions(Transport::Bosh), 1);

    // BOSH → TCP.
    alice
        .send(
            "<message xmlns='jabber:client' to='bob@localhost/tcp' type='chat' id='m1'>\
             <body>hello from bosh</body></message>",
        )
        .await?;
    let got = bob.wait_for(|el| el.name() == "message").await?;
    assert_eq!(got.attr("from"), Some("alice@localhost/web"));
    assert_eq!(
        got.get_child("body", ns::CLIENT)
            .map(Element::text)
            .as_deref(),
        Some("hello from bosh")
    );

    // TCP → BOSH on a long poll: the held request is answered as the message arrives.
    let (_, poll) = alice.body("", "");
    let addr = alice.addr;
    let started = Instant::now();
    let pending = tokio::spawn(async move { post(addr, &poll).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob.send(
        "<message xmlns='jabber:client' to='alice@localhost/web' type='chat' id='m2'>\
         <body>hello from tcp</body></message>",
    )
    .await?;
    let response = pending.await??;
    assert!(
        started.elapsed() < Duration::from_secs(WAIT),
        "answered by the message, not by wait"
    );
    let message = response
        .get_child("message", ns::CLIENT)
        .with_context(|| format!("no message: {response:?}"))?;
    assert_eq!(message.attr("from"), Some("bob@localhost/tcp"));

    // An idle long poll ends after `wait` with an empty body.
    let started = Instant::now();
    let empty = alice.send("").await?;
    assert!(empty.children().next().is_none(), "{empty:?}");
    assert!(started.elapsed() >= Duration::from_millis(WAIT * 1000 - 200));

    // Client terminate: the payload is delivered, then the session ends.
    let (_, end) = alice.body(
        "type='terminate'",
        "<presence xmlns='jabber:client' type='unavailable'/>",
    );
    let response = post(alice.addr, &end).await?;
    assert!(is_terminate(&response, None), "{response:?}");
    let deadline = Instant::now() + TIMEOUT;
    while node.server()?.counters().sessions(Transport::Bosh) != 0 {
        assert!(Instant::now() < deadline, "BOSH session not closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, after) = alice.body("", "");
    let response = post(alice.addr, &after).await?;
    assert!(
        is_terminate(&response, Some("item-not-found")),
        "{response:?}"
    );
    Ok(())
}

#[tokio::test]
async fn retransmission_and_the_rid_window() -> anyhow::Result<()> {
    let node = BoshNode::start().await?;
    let (mut bosh, created) = Bosh::create(node.http, "localhost").await?;
    let creation_rid = bosh.rid - 1;
    // The creation response again, at once, for its rid.
    let again = post(
        bosh.addr,
        &format!(
            "<body rid='{creation_rid}' sid='{}' xmlns='{HTTPBIND}'/>",
            bosh.sid
        ),
    )
    .await?;
    assert_eq!(again, created);
    // An empty request answered after `wait`, then retransmitted: the same answer at once.
    let (rid, body) = bosh.body("", "");
    let first = post(bosh.addr, &body).await?;
    let started = Instant::now();
    let second = post(bosh.addr, &body).await?;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(first, second);
    assert!(!is_terminate(&second, Some("item-not-found")));
    // A rid beyond the window (requests = 2) ends the session.
    let far = post(
        bosh.addr,
        &format!(
            "<body rid='{}' sid='{}' xmlns='{HTTPBIND}'/>",
            rid + 10,
            bosh.sid
        ),
    )
    .await?;
    assert!(is_terminate(&far, Some("item-not-found")), "{far:?}");
    let (_, body) = bosh.body("", "");
    let gone = post(bosh.addr, &body).await?;
    assert!(is_terminate(&gone, Some("item-not-found")), "{gone:?}");
    Ok(())
}

#[tokio::test]
async fn too_many_simultaneous_requests() -> anyhow::Result<()> {
    let node = BoshNode::start().await?;
    let (mut bosh, _) = Bosh::create(node.http, "localhost").await?;
    let (_, first) = bosh.body("", "");
    let (_, second) = bosh.body("", "");
    let (_, third) = bosh.body("", "");
    let addr = bosh.addr;
    // The first is held; the third waits for the gap; the second makes three at once.
    let held = tokio::spawn(async move { post(addr, &first).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let queued = tokio::spawn(async move { post(addr, &third).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let last = post(addr, &second).await?;
    for response in [held.await??, queued.await??, last] {
        assert!(
            is_terminate(&response, Some("policy-violation")),
            "{response:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn refusals() -> anyhow::Result<()> {
    let node = BoshNode::start().await?;
    let addr = node.http;
    let unknown = post(
        addr,
        &format!("<body rid='5' sid='0123456789abcdef' xmlns='{HTTPBIND}'/>"),
    )
    .await?;
    assert!(
        is_terminate(&unknown, Some("item-not-found")),
        "{unknown:?}"
    );
    for malformed in [
        "",
        "<body",
        "hello",
        "<body xmlns='urn:example' rid='1'/>",
        "<body xmlns='http://jabber.org/protocol/httpbind' rid='one'/>",
    ] {
        let (status, _, text) = http(addr, "POST", malformed).await?;
        assert_eq!(status, 400, "{malformed}");
        let el: Element = text.parse().map_err(|e| anyhow!("{e}: {text}"))?;
        assert!(is_terminate(&el, Some("bad-request")), "{text}");
    }
    let other_host = post(
        addr,
        &format!("<body rid='9' to='elsewhere.example' wait='2' hold='1' xmlns='{HTTPBIND}'/>"),
    )
    .await?;
    assert!(
        is_terminate(&other_host, Some("host-unknown")),
        "{other_host:?}"
    );
    let (status, head, text) = http(addr, "GET", "").await?;
    assert_eq!(status, 200);
    assert!(head.contains("text/html"), "{head}");
    assert!(text.contains("BOSH"));
    let (status, head, _) = http(addr, "OPTIONS", "").await?;
    assert_eq!(status, 200);
    assert!(head.contains("access-control-allow-origin: *"), "{head}");
    assert!(head.contains("access-control-allow-methods"), "{head}");
    // None of that hurt the listener.
    let (_, created) = Bosh::create(addr, "localhost").await?;
    assert!(created.has_child("features", ns::STREAM));
    Ok(())
}

#[tokio::test]
async fn inactivity_drops_the_session() -> anyhow::Result<()> {
    let node = BoshNode::start_with("mod_bosh: {max_wait: 5, max_inactivity: 1}").await?;
    node.register("carol").await?;
    let bosh = node.bosh_login("carol", "idle").await?;
    assert_eq!(node.server()?.counters().sessions(Transport::Bosh), 1);
    // No request for a second: the session is dropped (as a lost connection).
    let deadline = Instant::now() + TIMEOUT;
    while node.server()?.counters().sessions(Transport::Bosh) != 0 {
        assert!(Instant::now() < deadline, "inactive BOSH session kept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let late = post(
        bosh.addr,
        &format!(
            "<body rid='{}' sid='{}' xmlns='{HTTPBIND}'/>",
            bosh.rid, bosh.sid
        ),
    )
    .await?;
    assert!(is_terminate(&late, Some("item-not-found")), "{late:?}");
    Ok(())
}

#[tokio::test]
async fn a_replaced_session_ends_with_its_stream_error() -> anyhow::Result<()> {
    let node = BoshNode::start().await?;
    node.register("dave").await?;
    let mut bosh = node.bosh_login("dave", "same").await?;
    // The same full JID over TCP replaces the BOSH session (RFC 6120 §7.7.2.2, conflict).
    let _tcp = node.tcp_login("dave", "same").await?;
    let deadline = Instant::now() + TIMEOUT;
    let end = loop {
        assert!(Instant::now() < deadline, "no terminate");
        let response = bosh.send("").await?;
        if response.attr("type") == Some("terminate") {
            break response;
        }
    };
    let saw_error = end.has_child("error", ns::STREAM)
        || bosh.inbox.iter().any(|el| el.is("error", ns::STREAM));
    assert!(saw_error, "{end:?} {:?}", bosh.inbox);
    Ok(())
}
