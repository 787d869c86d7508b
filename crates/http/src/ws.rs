//! XMPP over WebSocket (RFC 7395): the HTTP upgrade and the *bridge* between WebSocket
//! messages and a c2s session's frames ([`starling_c2s::framed`]).
//!
//! - §3.1 handshake: we upgrade only a client offering the `xmpp` subprotocol, and answer
//!   with it. Without it the request is refused *before* upgrading, with HTTP 400 and a
//!   plain-text reason: a client that cannot speak the subprotocol learns why from the
//!   response, which a close code after upgrading would hide from most browser APIs.
//! - §3.2 messages: each text message carries one `<open/>`, `<close/>` or one element
//!   (§3.3.3). Binary messages are refused with close code 1003 (unsupported data).
//! - §3.3 and §3.6: `<open/>`/`<close/>` in `urn:ietf:params:xml:ns:xmpp-framing` become
//!   [`FrameIn::Open`]/[`FrameIn::Close`]; our side's are written by `starling_c2s::framed`.
//!   Every outgoing message is a standalone document, so a `stream:`-prefixed element (stream
//!   features, stream errors) gets its `xmlns:stream` declaration here (§3.3.3).
//!
//! The session itself (SASL, bind, stream management, CSI, limits, counters) is the TCP one,
//! run by [`starling_c2s::run_framed`] in its own task, so it can outlive the socket: a
//! socket dropped without `<close/>` (or closed with a WebSocket close frame only) is a lost
//! connection, and a session with stream management enabled waits for resumption.
//!
//! Size limit: WebSocket messages are capped at `max_stanza_size` plus [`MESSAGE_SLACK`].
//! Up to the cap, a message reaches the session, whose parser enforces the stanza limit and
//! answers `policy-violation` (the limit before authentication is smaller still). Past the
//! cap, the WebSocket layer stops reading the message without buffering it; the bridge then
//! sends the same `policy-violation` stream error itself, ends the session and closes with
//! 1009 (message too big).

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use starling_c2s::ListenerSettings;
use starling_c2s::framed::{self, FrameIn, FrameOut};
use starling_config::Listener;
use starling_core::Server;
use starling_core::counters::Transport as SessionTransport;
use starling_xmpp::Element;
use starling_xmpp::error::{StreamError, StreamErrorCondition};
use starling_xmpp::ns;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite;

use crate::PeerAddr;

/// RFC 7395 §3.1: the WebSocket subprotocol name.
pub const SUBPROTOCOL: &str = "xmpp";

/// Bytes a WebSocket message may exceed `max_stanza_size` by and still reach the session,
/// so that a slightly oversized stanza gets the session's own stream error.
pub const MESSAGE_SLACK: usize = 4096;

/// How long the bridge waits for the session's `<close/>` once it asked the session to end.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// How long the bridge waits for the peer's close frame after sending its own.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);

/// What every WebSocket connection on one listener shares.
#[derive(Clone)]
struct WsState {
    server: Arc<Server>,
    settings: Arc<ListenerSettings>,
    /// The HTTP listener is TLS: the peer is encrypted (PLAIN may be offered).
    secure: bool,
    max_message_size: usize,
}

/// The routes of this transport, relative to its path prefix: `GET` upgrades.
pub fn routes(server: Arc<Server>, listener: &Listener) -> Router {
    let negotiation_timeout = server.config().negotiation_timeout;
    let settings = ListenerSettings::framed(listener, negotiation_timeout);
    let state = WsState {
        server,
        secure: listener.tls,
        max_message_size: max_message_size(settings.max_stanza_size),
        settings: Arc::new(settings),
    };
    Router::new().route("/", get(upgrade)).with_state(state)
}

/// The WebSocket message (and frame) cap for a listener's `max_stanza_size`.
pub fn max_message_size(max_stanza_size: usize) -> usize {
    max_stanza_size.saturating_add(MESSAGE_SLACK)
}

async fn upgrade(
    State(state): State<WsState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let ws = ws.protocols([SUBPROTOCOL]);
    if ws.selected_protocol().is_none() {
        tracing::debug!(%peer, "WebSocket upgrade without the xmpp subprotocol refused");
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "XMPP over WebSocket needs the 'xmpp' subprotocol (Sec-WebSocket-Protocol: xmpp, RFC 7395 section 3.1)\n",
        )
            .into_response();
    }
    let cap = state.max_message_size;
    ws.max_message_size(cap)
        .max_frame_size(cap)
        .on_upgrade(move |socket| bridge(state, socket, peer))
}

/// Why the bridge ends the WebSocket connection itself.
struct Closing {
    code: u16,
    reason: &'static str,
    /// Until when the bridge waits for the session's `<close/>`.
    deadline: Instant,
}

impl Closing {
    fn new(code: u16, reason: &'static str) -> Self {
        Self {
            code,
            reason,
            deadline: Instant::now() + CLOSE_WAIT,
        }
    }
}

/// Moves messages between `socket` and a new c2s session until either side ends.
///
/// One task, one `select!`: a decoded inbound frame waits for room in the session's queue
/// while outbound frames keep flowing, so a session blocked on sending never deadlocks
/// against a bridge blocked on delivering.
async fn bridge(state: WsState, mut socket: WebSocket, peer: SocketAddr) {
    let (link, mut bridge) = framed::link(SessionTransport::WebSocket, state.secure);
    tokio::spawn(starling_c2s::run_framed(
        state.server.clone(),
        state.settings.clone(),
        link,
        peer,
    ));
    let mut pending: Option<FrameIn> = None;
    let mut closing: Option<Closing> = None;
    let code = loop {
        let close_deadline = closing.as_ref().map(|c| c.deadline);
        tokio::select! {
            permit = bridge.inbound.reserve(), if pending.is_some() => match (permit, pending.take()) {
                (Ok(permit), Some(frame)) => permit.send(frame),
                // The session ended; its last frames are still in `outbound`.
                (Err(_), _) => {}
                (Ok(_), None) => {}
            },
            msg = socket.recv(), if pending.is_none() && closing.is_none() => match msg {
                Some(Ok(Message::Text(text))) => pending = Some(decode(text.as_str())),
                Some(Ok(Message::Binary(_))) => {
                    tracing::debug!(%peer, "binary WebSocket message; closing");
                    closing = Some(Closing::new(
                        close_code::UNSUPPORTED,
                        "XMPP over WebSocket uses text messages only (RFC 7395 section 3.2)",
                    ));
                    pending = Some(FrameIn::Close);
                }
                // Pings are answered by the WebSocket layer.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(frame))) => {
                    // A close frame without `<close/>` first: the client went away (a tab
                    // closed, a network change); keep the session resumable.
                    tracing::debug!(%peer, ?frame, "WebSocket closed without <close/>");
                    // One more read lets the WebSocket layer send the close reply it queued.
                    let _ = timeout(CLOSE_HANDSHAKE, socket.recv()).await;
                    break None;
                }
                Some(Err(e)) => match classify(e) {
                    ReadFailure::TooBig => {
                        tracing::info!(%peer, "WebSocket message over the size limit");
                        let error = StreamError::new(StreamErrorCondition::PolicyViolation)
                            .with_text("message exceeds the maximum stanza size");
                        let _ = socket.send(text(standalone(error.to_xml().into_bytes()))).await;
                        closing = Some(Closing::new(close_code::SIZE, "message too big"));
                        pending = Some(FrameIn::Close);
                    }
                    ReadFailure::BadUtf8 => {
                        closing = Some(Closing::new(close_code::INVALID, "text message is not UTF-8"));
                        pending = Some(FrameIn::Close);
                    }
                    ReadFailure::Protocol => {
                        closing = Some(Closing::new(close_code::PROTOCOL, "WebSocket protocol error"));
                        pending = Some(FrameIn::Close);
                    }
                    ReadFailure::Lost => break None,
                },
                None => break None,
            },
            out = bridge.outbound.recv() => match out {
                Some(FrameOut::Open(header)) => {
                    if socket.send(text(framed::ws_open(&header))).await.is_err() {
                        break None;
                    }
                }
                Some(FrameOut::Element(bytes)) => {
                    if socket.send(text(standalone(bytes))).await.is_err() {
                        break None;
                    }
                }
                Some(FrameOut::Close) => {
                    let _ = socket.send(text(framed::ws_close())).await;
                    break Some(closing.take().map_or((close_code::NORMAL, ""), |c| (c.code, c.reason)));
                }
                // The session ended without `<close/>` (its peer stopped reading).
                None => break Some(closing.take().map_or((close_code::AWAY, ""), |c| (c.code, c.reason))),
            },
            () = sleep_until(close_deadline.unwrap_or_else(Instant::now)), if close_deadline.is_some() => {
                break closing.take().map(|c| (c.code, c.reason));
            }
        }
    };
    // Dropping `bridge.inbound` without `FrameIn::Close` tells the session the connection
    // was lost; after a `Close` it is already ending.
    drop(bridge);
    if let Some((code, reason)) = code {
        finish(socket, code, reason).await;
    }
}

/// Sends our close frame and waits briefly for the peer's, so queued messages are not cut off
/// by a reset (RFC 6455 §7.1.1: the server closes the TCP connection first).
async fn finish(mut socket: WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = timeout(CLOSE_HANDSHAKE, async {
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

fn text(s: String) -> Message {
    Message::Text(Utf8Bytes::from(s))
}

/// What a failed read means for the session.
#[derive(Debug, PartialEq, Eq)]
enum ReadFailure {
    /// The message is over the cap.
    TooBig,
    /// The peer broke the WebSocket protocol (a bad frame).
    Protocol,
    /// A text message that is not UTF-8 (RFC 6455 §8.1: close with 1007).
    BadUtf8,
    /// The connection is gone.
    Lost,
}

fn classify(error: axum::Error) -> ReadFailure {
    let inner = error.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => ReadFailure::TooBig,
        // TCP ended without a close frame: the socket was dropped, not a protocol mistake.
        Some(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        )) => ReadFailure::Lost,
        Some(tungstenite::Error::Protocol(_)) => ReadFailure::Protocol,
        Some(tungstenite::Error::Utf8(_)) => ReadFailure::BadUtf8,
        _ => ReadFailure::Lost,
    }
}

/// Decodes one text message (RFC 7395 §3.3): the framing `<open/>` and `<close/>`, or an
/// element passed on unparsed (the session's parser checks it, limits included).
pub fn decode(text: &str) -> FrameIn {
    let trimmed = skip_declaration(text.trim_start());
    if is_start_of(trimmed, "open") || is_start_of(trimmed, "close") {
        // Only these two names are parsed here; anything else stays bytes for the session.
        if let Ok(el) = Element::from_str(trimmed)
            && el.ns() == ns::FRAMING
        {
            if el.name() == "close" {
                return FrameIn::Close;
            }
            if el.name() == "open" {
                return FrameIn::Open {
                    to: el.attr("to").map(str::to_owned),
                    lang: xml_lang(&el),
                    version: el.attr("version").map(str::to_owned),
                };
            }
        }
    }
    FrameIn::Element(trimmed.as_bytes().to_vec())
}

/// An XML declaration is allowed before a message's element but means nothing mid-stream.
fn skip_declaration(text: &str) -> &str {
    if let Some(rest) = text.strip_prefix("<?xml")
        && let Some(end) = rest.find("?>")
    {
        return rest.get(end + 2..).unwrap_or_default().trim_start();
    }
    text
}

fn is_start_of(text: &str, name: &str) -> bool {
    text.strip_prefix('<')
        .and_then(|t| t.strip_prefix(name))
        .and_then(|t| t.chars().next())
        .is_some_and(|c| c.is_ascii_whitespace() || c == '/' || c == '>')
}

fn xml_lang(el: &Element) -> Option<String> {
    el.attrs()
        .into_iter()
        .find(|((attr_ns, name), _)| {
            attr_ns.as_str() == "http://www.w3.org/XML/1998/namespace" && name.as_str() == "lang"
        })
        .map(|(_, value)| value.to_owned())
}

/// Makes one outgoing element a standalone document (§3.3.3): the session writes stream
/// features and errors with the `stream:` prefix declared on a TCP stream's header, which a
/// WebSocket message does not have.
pub fn standalone(element: Vec<u8>) -> String {
    let mut text = match String::from_utf8(element) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    if let Some(rest) = text.strip_prefix("<stream:") {
        let name_end = rest
            .find(|c: char| c.is_ascii_whitespace() || c == '/' || c == '>')
            .unwrap_or(rest.len());
        let tag_end = rest.find('>').unwrap_or(rest.len());
        let declared = rest
            .get(..tag_end)
            .is_some_and(|tag| tag.contains("xmlns:stream="));
        if !declared {
            let at = "<stream:".len() + name_end;
            text.insert_str(at, &format!(" xmlns:stream='{}'", ns::STREAM));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_and_close_are_framing() {
        let open = decode(
            "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.org' \
             xml:lang='de' version='1.0'/>",
        );
        assert_eq!(
            open,
            FrameIn::Open {
                to: Some("example.org".into()),
                lang: Some("de".into()),
                version: Some("1.0".into()),
            }
        );
        assert_eq!(
            decode("  <close xmlns=\"urn:ietf:params:xml:ns:xmpp-framing\" />"),
            FrameIn::Close
        );
        assert_eq!(
            decode("<?xml version='1.0'?><open xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>"),
            FrameIn::Open {
                to: None,
                lang: None,
                version: None
            }
        );
    }

    #[test]
    fn everything_else_is_an_element() {
        let msg = "<message xmlns='jabber:client' to='a@b'><body>hi</body></message>";
        assert_eq!(decode(msg), FrameIn::Element(msg.as_bytes().to_vec()));
        // Same names in another namespace, malformed framing, garbage: the session decides.
        let other = "<open xmlns='urn:example'/>";
        assert_eq!(decode(other), FrameIn::Element(other.as_bytes().to_vec()));
        let broken = "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing'";
        assert_eq!(decode(broken), FrameIn::Element(broken.as_bytes().to_vec()));
        let openx = "<openx xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>";
        assert_eq!(decode(openx), FrameIn::Element(openx.as_bytes().to_vec()));
        assert_eq!(decode("<<<"), FrameIn::Element(b"<<<".to_vec()));
        assert_eq!(decode(""), FrameIn::Element(Vec::new()));
    }

    #[test]
    fn stream_prefix_is_declared() {
        let features = standalone(b"<stream:features><bind xmlns='x'/></stream:features>".to_vec());
        assert_eq!(
            features,
            "<stream:features xmlns:stream='http://etherx.jabber.org/streams'>\
             <bind xmlns='x'/></stream:features>"
        );
        let features: Element = features.parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(features.ns(), ns::STREAM);
        let error = standalone(
            StreamError::new(StreamErrorCondition::NotWellFormed)
                .with_text("bad")
                .to_xml()
                .into_bytes(),
        );
        let error: Element = error.parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(error.name(), "error");
        assert!(error.has_child("not-well-formed", ns::STREAM_ERRORS));
        let empty = standalone(b"<stream:features/>".to_vec());
        assert_eq!(
            empty,
            "<stream:features xmlns:stream='http://etherx.jabber.org/streams'/>"
        );
        // Already declared, or not prefixed: unchanged.
        let declared = "<stream:error xmlns:stream='http://etherx.jabber.org/streams'/>";
        assert_eq!(standalone(declared.as_bytes().to_vec()), declared);
        let msg = "<message xmlns='jabber:client'/>";
        assert_eq!(standalone(msg.as_bytes().to_vec()), msg);
    }

    #[test]
    fn read_failures() {
        use tungstenite::error::{CapacityError, ProtocolError};
        let wrap = |e: tungstenite::Error| classify(axum::Error::new(e));
        let too_long = CapacityError::MessageTooLong {
            size: 10,
            max_size: 5,
        };
        assert_eq!(
            wrap(tungstenite::Error::Capacity(too_long)),
            ReadFailure::TooBig
        );
        assert_eq!(
            wrap(tungstenite::Error::Protocol(
                ProtocolError::ResetWithoutClosingHandshake
            )),
            ReadFailure::Lost
        );
        assert_eq!(
            wrap(tungstenite::Error::Protocol(
                ProtocolError::UnmaskedFrameFromClient
            )),
            ReadFailure::Protocol
        );
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(wrap(tungstenite::Error::Io(reset)), ReadFailure::Lost);
        assert_eq!(
            wrap(tungstenite::Error::ConnectionClosed),
            ReadFailure::Lost
        );
        assert_eq!(
            wrap(tungstenite::Error::Utf8("bad".into())),
            ReadFailure::BadUtf8
        );
    }

    #[test]
    fn message_cap() {
        assert_eq!(max_message_size(65_536), 65_536 + MESSAGE_SLACK);
        assert_eq!(max_message_size(usize::MAX), usize::MAX);
    }
}
