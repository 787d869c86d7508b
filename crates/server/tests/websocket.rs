//! XMPP over WebSocket (RFC 7395) against a real node: a tokio-tungstenite client logs in with
//! SCRAM-SHA-1 (written out here, so the test sees every SASL step), chats with a TCP client,
//! resumes a stream-management session over a new WebSocket and over TCP, and meets every
//! refusal: no `xmpp` subprotocol, oversized messages, binary messages, malformed XML.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, KeyInit, Mac};
use sha1::{Digest, Sha1};
use starling_core::counters::Transport;
use starling_server::Node;
use starling_testkit::{Client, TIMEOUT};
use starling_xmpp::Element;
use starling_xmpp::ns;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

const SM: &str = "urn:xmpp:sm:3";
const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
/// The WebSocket listener's `max_stanza_size`.
const MAX_STANZA: usize = 20_000;

struct WsNode {
    node: Option<Node>,
    /// The HTTP listener serving `/ws`.
    http: SocketAddr,
    /// A STARTTLS c2s listener, for the TCP side of each conversation.
    c2s: SocketAddr,
    _dir: tempfile::TempDir,
}

impl WsNode {
    async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let yaml = format!(
            "hosts: [localhost]\n\
             data_dir: {data}\n\
             loglevel: warning\n\
             listen:\n  \
               - {{port: 0, ip: 127.0.0.1, module: ejabberd_c2s, starttls_required: true}}\n  \
               - port: 0\n    ip: 127.0.0.1\n    module: ejabberd_http\n    \
                 max_stanza_size: {MAX_STANZA}\n    \
                 request_handlers: {{/ws: ejabberd_http_ws}}\n\
             modules:\n  mod_roster: {{}}\n  mod_offline: {{}}\n  mod_stream_mgmt: {{}}\n",
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

    async fn register(&self, user: &str, password: &str) -> anyhow::Result<()> {
        let jid = starling_xmpp::jid::BareJid::new(Some(user), "localhost")?;
        let password = password.to_owned();
        let creds = tokio::task::spawn_blocking(move || {
            starling_xmpp::scram::Credentials::new(&password, 4096)
        })
        .await?
        .map_err(|e| anyhow!("{e}"))?;
        self.server()?
            .stores()
            .create(&jid, &creds)
            .await
            .map_err(|e| anyhow!("{e}"))
    }

    /// A TCP client: STARTTLS, PLAIN, bound to `resource`.
    async fn tcp_login(&self, user: &str, resource: &str) -> anyhow::Result<Client> {
        let mut c = self.tcp_auth(user).await?;
        c.bind(resource).await?;
        Ok(c)
    }

    async fn tcp_auth(&self, user: &str) -> anyhow::Result<Client> {
        let mut c = Client::connect(self.c2s).await?;
        c.open().await?;
        c.starttls().await?;
        c.auth_plain(user, "pw").await?;
        Ok(c)
    }

    /// A WebSocket client logged in with SCRAM-SHA-1 and bound to `resource`.
    async fn ws_login(&self, user: &str, resource: &str) -> anyhow::Result<Ws> {
        let mut ws = self.ws_auth(user).await?;
        ws.bind(resource).await?;
        Ok(ws)
    }

    async fn ws_auth(&self, user: &str) -> anyhow::Result<Ws> {
        let mut ws = Ws::connect(self.http, Some("xmpp")).await?;
        let features = ws.open().await?;
        let mechanisms: Vec<String> = features
            .get_child("mechanisms", SASL)
            .context("no SASL mechanisms")?
            .children()
            .map(Element::text)
            .collect();
        assert!(
            mechanisms.iter().any(|m| m == "SCRAM-SHA-1"),
            "{mechanisms:?}"
        );
        assert!(
            !mechanisms.iter().any(|m| m == "PLAIN"),
            "PLAIN offered over plain HTTP without allow_plain_without_tls: {mechanisms:?}"
        );
        ws.scram_sha1(user, "pw").await?;
        Ok(ws)
    }

    async fn stop(mut self) {
        if let Some(node) = self.node.take() {
            node.stop().await;
        }
    }
}

/// What the server sent: a text message or the end of the connection.
#[derive(Debug)]
enum Received {
    Text(String),
    Binary,
    Close(Option<CloseFrame>),
    /// The connection ended without a close frame.
    Gone,
}

/// A raw RFC 7395 client.
struct Ws {
    socket: WebSocketStream<TcpStream>,
}

impl Ws {
    /// Connects to `/ws`, asking for `protocol` (none if `None`).
    async fn connect(addr: SocketAddr, protocol: Option<&str>) -> Result<Self, tungstenite::Error> {
        let mut request = format!("ws://{addr}/ws").into_client_request()?;
        if let Some(protocol) = protocol {
            let value = HeaderValue::from_str(protocol).map_err(tungstenite::http::Error::from)?;
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", value);
        }
        let tcp = TcpStream::connect(addr).await?;
        let (socket, response) = tokio_tungstenite::client_async(request, tcp).await?;
        assert_eq!(
            response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some("xmpp"),
            "RFC 7395 §3.1: the server answers with the subprotocol"
        );
        Ok(Self { socket })
    }

    async fn send(&mut self, text: &str) -> anyhow::Result<()> {
        self.socket.send(Message::text(text)).await?;
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<Received> {
        loop {
            let next = tokio::time::timeout(TIMEOUT, self.socket.next())
                .await
                .map_err(|_| anyhow!("timed out waiting for the server"))?;
            return Ok(match next {
                Some(Ok(Message::Text(t))) => Received::Text(t.to_string()),
                Some(Ok(Message::Binary(_))) => Received::Binary,
                Some(Ok(Message::Close(frame))) => Received::Close(frame),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => Received::Gone,
            });
        }
    }

    /// The next message, parsed as one standalone element (RFC 7395 §3.3.3).
    async fn element(&mut self) -> anyhow::Result<Element> {
        match self.recv().await? {
            Received::Text(text) => text
                .parse::<Element>()
                .map_err(|e| anyhow!("not a standalone element ({e}): {text}")),
            other => bail!("expected an element, got {other:?}"),
        }
    }

    async fn wait_for(&mut self, pred: impl Fn(&Element) -> bool) -> anyhow::Result<Element> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let el = tokio::time::timeout_at(deadline, self.element())
                .await
                .map_err(|_| anyhow!("timed out waiting for a matching element"))??;
            if pred(&el) {
                return Ok(el);
            }
        }
    }

    /// Sends `<open/>`, expects ours and the features.
    async fn open(&mut self) -> anyhow::Result<Element> {
        self.send(&format!(
            "<open xmlns='{}' to='localhost' version='1.0'/>",
            ns::FRAMING
        ))
        .await?;
        let open = self.element().await?;
        if !open.is("open", ns::FRAMING) {
            bail!("expected <open/>, got {open:?}");
        }
        assert_eq!(open.attr("from"), Some("localhost"));
        assert!(open.attr("id").is_some_and(|id| !id.is_empty()));
        let features = self.element().await?;
        if !features.is("features", ns::STREAM) {
            bail!("expected features, got {features:?}");
        }
        Ok(features)
    }

    /// SASL SCRAM-SHA-1 (RFC 5802) without channel binding, then the stream restart.
    async fn scram_sha1(&mut self, user: &str, password: &str) -> anyhow::Result<()> {
        let client_nonce = "w5RAIQh2iYBWl3dUvWJ0FNkK";
        let first_bare = format!("n={user},r={client_nonce}");
        self.send(&format!(
            "<auth xmlns='{SASL}' mechanism='SCRAM-SHA-1'>{}</auth>",
            B64.encode(format!("n,,{first_bare}"))
        ))
        .await?;
        let challenge = self.element().await?;
        if challenge.name() != "challenge" {
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
        assert!(nonce.starts_with(client_nonce), "{server_first}");
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
        if success.name() != "success" {
            bail!("SCRAM-SHA-1 failed: {success:?}");
        }
        let server_final = String::from_utf8(B64.decode(success.text())?)?;
        let server_key = hmac(&salted, b"Server Key")?;
        let expected = B64.encode(hmac(&server_key, auth_message.as_bytes())?);
        assert_eq!(server_final, format!("v={expected}"), "server signature");
        // RFC 7395 §3.5: the stream restarts with a new <open/>.
        self.open().await?;
        Ok(())
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

    /// Expects a stream error (returns its condition), then `<close/>`, then a close frame
    /// (returns its code).
    async fn stream_error_then_close(&mut self) -> anyhow::Result<(String, u16)> {
        let error = self.element().await?;
        if !error.is("error", ns::STREAM) {
            bail!("expected a stream error, got {error:?}");
        }
        let condition = error
            .children()
            .find(|c| c.ns() == ns::STREAM_ERRORS && c.name() != "text")
            .map(|c| c.name().to_owned())
            .context("stream error without condition")?;
        let code = self.close_sequence().await?;
        Ok((condition, code))
    }

    /// Expects `<close/>` then a close frame; returns the frame's code.
    async fn close_sequence(&mut self) -> anyhow::Result<u16> {
        let close = self.element().await?;
        if !close.is("close", ns::FRAMING) {
            bail!("expected <close/>, got {close:?}");
        }
        self.close_frame().await
    }

    async fn close_frame(&mut self) -> anyhow::Result<u16> {
        match self.recv().await? {
            Received::Close(Some(frame)) => Ok(frame.code.into()),
            other => bail!("expected a close frame, got {other:?}"),
        }
    }
}

fn hmac(key: &[u8], data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(key).map_err(|e| anyhow!("{e}"))?;
    mac.update(data);
    Ok(mac.finalize().into_bytes().to_vec())
}

fn body(el: &Element) -> Option<String> {
    el.get_child("body", ns::CLIENT).map(Element::text)
}

fn is_message_with(el: &Element, text: &str) -> bool {
    el.name() == "message" && body(el).as_deref() == Some(text)
}

#[tokio::test]
async fn scram_login_presence_and_chat_with_a_tcp_client() -> anyhow::Result<()> {
    let node = WsNode::start().await?;
    node.register("alice", "pw").await?;
    node.register("bob", "pw").await?;
    let mut alice = node.ws_login("alice", "web").await?;
    let mut bob = node.tcp_login("bob", "desk").await?;
    assert_eq!(node.server()?.counters().sessions(Transport::WebSocket), 1);
    assert_eq!(node.server()?.counters().sessions(Transport::Tcp), 1);

    // Initial presence comes back to the sender's own available resources.
    alice.send("<presence xmlns='jabber:client'/>").await?;
    let own = alice.wait_for(|e| e.name() == "presence").await?;
    assert_eq!(own.attr("from"), Some("alice@localhost/web"));
    // Directed presence from the TCP side reaches the WebSocket side.
    bob.send("<presence to='alice@localhost/web'><status>here</status></presence>")
        .await?;
    let directed = alice
        .wait_for(|e| e.name() == "presence" && e.attr("from") == Some("bob@localhost/desk"))
        .await?;
    assert_eq!(
        directed.get_child("status", ns::CLIENT).map(Element::text),
        Some("here".to_owned())
    );

    alice
        .send(
            "<message xmlns='jabber:client' to='bob@localhost/desk' type='chat' id='m1'>\
             <body>hello from the browser</body></message>",
        )
        .await?;
    let got = bob
        .wait_for(|e| is_message_with(e, "hello from the browser"))
        .await?;
    assert_eq!(got.attr("from"), Some("alice@localhost/web"));
    bob.send(
        "<message to='alice@localhost/web' type='chat' id='m2'><body>hello from TCP</body></message>",
    )
    .await?;
    let reply = alice
        .wait_for(|e| is_message_with(e, "hello from TCP"))
        .await?;
    assert_eq!(reply.attr("from"), Some("bob@localhost/desk"));
    assert_eq!(reply.ns(), ns::CLIENT);

    // RFC 7395 §3.6: <close/> is answered with <close/>, then the connection closes normally.
    alice
        .send(&format!("<close xmlns='{}'/>", ns::FRAMING))
        .await?;
    let code = alice.close_sequence().await?;
    assert_eq!(code, 1000);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while node.server()?.counters().sessions(Transport::WebSocket) != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "session never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.stop().await;
    Ok(())
}

/// Enables resumable stream management on a bound WebSocket session; returns the id.
async fn enable_sm(ws: &mut Ws) -> anyhow::Result<String> {
    ws.send(&format!("<enable xmlns='{SM}' resume='true'/>"))
        .await?;
    let enabled = ws.wait_for(|e| e.ns() == SM).await?;
    assert!(enabled.is("enabled", SM), "{enabled:?}");
    enabled
        .attr("id")
        .map(str::to_owned)
        .context("no resumption id")
}

#[tokio::test]
async fn dropped_socket_resumes_over_websocket_and_over_tcp() -> anyhow::Result<()> {
    let node = WsNode::start().await?;
    node.register("alice", "pw").await?;
    node.register("bob", "pw").await?;
    let mut bob = node.tcp_login("bob", "desk").await?;
    let mut alice = node.ws_login("alice", "web").await?;
    let id = enable_sm(&mut alice).await?;

    // The socket goes away without <close/> or a close frame.
    drop(alice);
    bob.send("<message to='alice@localhost/web' type='chat'><body>while away</body></message>")
        .await?;

    let mut alice = node.ws_auth("alice").await?;
    alice
        .send(&format!("<resume xmlns='{SM}' previd='{id}' h='0'/>"))
        .await?;
    let resumed = alice.wait_for(|e| e.ns() == SM).await?;
    assert!(resumed.is("resumed", SM), "{resumed:?}");
    let id = resumed.attr("previd").map_or(id.clone(), str::to_owned);
    alice.wait_for(|e| is_message_with(e, "while away")).await?;
    // Acknowledge it so the next resumption does not resend it.
    alice.send(&format!("<a xmlns='{SM}' h='1'/>")).await?;
    alice
        .send("<message xmlns='jabber:client' to='bob@localhost/desk'><body>back</body></message>")
        .await?;
    bob.wait_for(|e| is_message_with(e, "back")).await?;

    // A close frame without <close/> is a lost connection too (a closed browser tab).
    alice.socket.close(None).await?;
    drop(alice);
    bob.send("<message to='alice@localhost/web' type='chat'><body>second</body></message>")
        .await?;
    let mut tcp = node.tcp_auth("alice").await?;
    tcp.send(&format!("<resume xmlns='{SM}' previd='{id}' h='1'/>"))
        .await?;
    let resumed = tcp.wait_for(|e| e.ns() == SM).await?;
    assert!(resumed.is("resumed", SM), "{resumed:?}");
    let again = tcp.wait_for(|e| e.name() == "message").await?;
    assert_eq!(
        body(&again).as_deref(),
        Some("second"),
        "acked stanza resent"
    );
    node.stop().await;
    Ok(())
}

#[tokio::test]
async fn upgrade_without_the_xmpp_subprotocol_is_refused() -> anyhow::Result<()> {
    let node = WsNode::start().await?;
    for protocol in [None, Some("chat"), Some("mqtt, wamp")] {
        match Ws::connect(node.http, protocol).await {
            Err(tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 400, "{protocol:?}");
                let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                    .into_owned();
                assert!(body.contains("'xmpp' subprotocol"), "{body}");
            }
            Err(e) => bail!("{protocol:?}: unexpected error {e}"),
            Ok(_) => bail!("{protocol:?}: upgraded without the xmpp subprotocol"),
        }
    }
    // Offering it among others is fine.
    let mut ws = Ws::connect(node.http, Some("chat, xmpp")).await?;
    ws.open().await?;
    node.stop().await;
    Ok(())
}

#[tokio::test]
async fn oversized_messages_end_the_stream() -> anyhow::Result<()> {
    let node = WsNode::start().await?;
    node.register("alice", "pw").await?;
    let padding = |n: usize| "x".repeat(n);

    // Over the pre-authentication limit (16 KiB) but under the WebSocket cap: the session's
    // parser refuses it with its own stream error.
    let mut ws = Ws::connect(node.http, Some("xmpp")).await?;
    ws.open().await?;
    ws.send(&format!(
        "<message xmlns='jabber:client'><body>{}</body></message>",
        padding(17_000)
    ))
    .await?;
    let (condition, code) = ws.stream_error_then_close().await?;
    assert_eq!(condition, "policy-violation");
    assert_eq!(code, 1000);

    // After authentication the listener's max_stanza_size applies.
    let mut alice = node.ws_login("alice", "web").await?;
    alice
        .send(&format!(
            "<message xmlns='jabber:client' to='alice@localhost'><body>{}</body></message>",
            padding(MAX_STANZA + 100)
        ))
        .await?;
    let (condition, code) = alice.stream_error_then_close().await?;
    assert_eq!(condition, "policy-violation");
    assert_eq!(code, 1000);

    // Past the WebSocket cap (max_stanza_size + slack) the message is never buffered: the
    // bridge sends the stream error and closes with 1009.
    let mut alice = node.ws_login("alice", "web").await?;
    alice
        .send(&format!(
            "<message xmlns='jabber:client' to='alice@localhost'><body>{}</body></message>",
            padding(MAX_STANZA + 10_000)
        ))
        .await?;
    let (condition, code) = alice.stream_error_then_close().await?;
    assert_eq!(condition, "policy-violation");
    assert_eq!(code, 1009);
    node.stop().await;
    Ok(())
}

#[tokio::test]
async fn binary_messages_are_refused_with_1003() -> anyhow::Result<()> {
    let node = WsNode::start().await?;
    node.register("alice", "pw").await?;
    let mut alice = node.ws_login("alice", "web").await?;
    alice
        .socket
        .send(Message::binary(
            b"<presence xmlns='jabber:client'/>".to_vec(),
        ))
        .await?;
    let code = alice.close_sequence().await?;
    assert_eq!(code, 1003);
    node.stop().await;
    Ok(())
}

#[tokio::test]
async fn garbage_is_not_well_formed() -> anyhow::Result<()> {
    let node = WsNode::start().await?;
    node.register("alice", "pw").await?;
    // Before the stream is open.
    let mut ws = Ws::connect(node.http, Some("xmpp")).await?;
    ws.send("<<<this is not xml").await?;
    let header = ws.element().await?;
    assert!(
        header.is("open", ns::FRAMING),
        "our <open/> first: {header:?}"
    );
    let (condition, _) = ws.stream_error_then_close().await?;
    assert_eq!(condition, "not-well-formed");

    // In a bound session.
    let mut alice = node.ws_login("alice", "web").await?;
    alice
        .send("<message xmlns='jabber:client'><body>unclosed</message>")
        .await?;
    let (condition, code) = alice.stream_error_then_close().await?;
    assert_eq!(condition, "not-well-formed");
    assert_eq!(code, 1000);
    node.stop().await;
    Ok(())
}
