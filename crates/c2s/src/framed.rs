//! Message-framed transports under a client session: XMPP over WebSocket (RFC 7395) and BOSH
//! (XEP-0124/0206).
//!
//! Both carry whole elements rather than a byte stream, and both open and close the stream with
//! their own syntax (`<open/>`/`<close/>` in the framing namespace, `<body/>` attributes). The
//! HTTP side (a *bridge*, in `starling-http`) speaks that syntax to the peer and exchanges
//! [`FrameIn`]/[`FrameOut`] with the session task over a [`FramedLink`]; the session itself runs
//! the same code as a TCP client ([`crate::session::run_framed`]), so limits, authentication,
//! stream management and routing are identical whatever the transport.
//!
//! Inbound frames are fed to the session's ordinary stream parser: `Open` becomes a stream
//! header, `Element` the element's bytes, `Close` the closing tag. Stanza size limits and
//! well-formedness checks therefore apply unchanged.

use starling_core::counters::Transport as SessionTransport;
use starling_xmpp::codec::{self, STREAM_CLOSE, StreamHeader};
use starling_xmpp::ns;
use tokio::sync::mpsc;

/// RFC 7395 §3.3: the namespace of `<open/>` and `<close/>`.
pub const NS_FRAMING: &str = ns::FRAMING;

/// Frames queued from the bridge to the session before the bridge waits.
pub const INBOUND_QUEUE: usize = 16;
/// Frames queued from the session to the bridge before the session waits (bounded by
/// `send_timeout`, like a TCP write).
pub const OUTBOUND_QUEUE: usize = 64;

/// What the peer sent, as the bridge decoded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameIn {
    /// The peer opens (or, after SASL or a BOSH restart, reopens) the stream.
    Open {
        /// The domain the client wants (`to`).
        to: Option<String>,
        /// `xml:lang`, if given.
        lang: Option<String>,
        /// `version`, if given.
        version: Option<String>,
    },
    /// One complete element (a stanza or nonza), serialised.
    Element(Vec<u8>),
    /// The peer closes the stream (`<close/>`, BOSH `type='terminate'`).
    Close,
}

/// What the session sends, for the bridge to frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameOut {
    /// Our stream header (its `id` is the stream id; BOSH calls it `authid`).
    Open(StreamHeader),
    /// One complete element, serialised.
    Element(Vec<u8>),
    /// The session closes the stream; nothing follows.
    Close,
}

/// The session's end of a framed connection.
#[derive(Debug)]
pub struct FramedLink {
    pub(crate) inbound: mpsc::Receiver<FrameIn>,
    pub(crate) outbound: mpsc::Sender<FrameOut>,
    pub(crate) secure: bool,
    pub(crate) kind: SessionTransport,
}

/// The bridge's end of a framed connection.
#[derive(Debug)]
pub struct Bridge {
    /// Frames to the session. Dropping it without sending [`FrameIn::Close`] is a lost
    /// connection: a session with stream management then waits for resumption.
    pub inbound: mpsc::Sender<FrameIn>,
    /// Frames from the session; `None` once the session ended.
    pub outbound: mpsc::Receiver<FrameOut>,
}

/// A connected pair. `secure` says whether the peer reached us over TLS (HTTPS, or a proxy the
/// operator declared as terminating TLS): it decides, as for TCP, whether PLAIN is offered.
pub fn link(kind: SessionTransport, secure: bool) -> (FramedLink, Bridge) {
    let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
    (
        FramedLink {
            inbound: in_rx,
            outbound: out_tx,
            secure,
            kind,
        },
        Bridge {
            inbound: in_tx,
            outbound: out_rx,
        },
    )
}

impl FramedLink {
    /// Which transport this is, for the session counters.
    pub fn kind(&self) -> SessionTransport {
        self.kind
    }

    /// Whether the peer's connection is encrypted.
    pub fn is_secure(&self) -> bool {
        self.secure
    }
}

impl FrameIn {
    /// The bytes the session's stream parser receives for this frame.
    pub(crate) fn into_stream_bytes(self) -> Vec<u8> {
        match self {
            Self::Open { to, lang, version } => {
                let header = StreamHeader {
                    to,
                    lang,
                    version,
                    ..StreamHeader::default()
                };
                codec::stream_header(ns::CLIENT, &header).into_bytes()
            }
            Self::Element(bytes) => bytes,
            Self::Close => STREAM_CLOSE.as_bytes().to_vec(),
        }
    }
}

/// RFC 7395 §3.3.2: our `<open/>` for a stream header.
pub fn ws_open(header: &StreamHeader) -> String {
    codec::framing_open(header)
}

/// RFC 7395 §3.6: our `<close/>`.
pub fn ws_close() -> String {
    format!("<close xmlns='{NS_FRAMING}'/>")
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_xmpp::codec::{Limits, StreamEvent, StreamParser};

    #[test]
    fn inbound_frames_parse_as_a_stream() {
        let mut parser = StreamParser::new(ns::CLIENT, Limits::default());
        let frames = [
            FrameIn::Open {
                to: Some("example.org".into()),
                lang: Some("de".into()),
                version: Some("1.0".into()),
            },
            FrameIn::Element(
                b"<message xmlns='jabber:client' to='a@b'><body>x</body></message>".to_vec(),
            ),
            FrameIn::Element(b"<r xmlns='urn:xmpp:sm:3'/>".to_vec()),
            FrameIn::Close,
        ];
        for frame in frames {
            parser.feed(&frame.into_stream_bytes());
        }
        let Ok(Some(StreamEvent::Open(header))) = parser.next_event() else {
            panic!("no header");
        };
        assert_eq!(header.to.as_deref(), Some("example.org"));
        assert_eq!(header.lang.as_deref(), Some("de"));
        let Ok(Some(StreamEvent::Stanza(msg))) = parser.next_event() else {
            panic!("no message");
        };
        assert_eq!(msg.name(), "message");
        assert_eq!(msg.ns(), ns::CLIENT);
        let Ok(Some(StreamEvent::Stanza(r))) = parser.next_event() else {
            panic!("no nonza");
        };
        assert_eq!(r.name(), "r");
        assert!(matches!(parser.next_event(), Ok(Some(StreamEvent::Close))));
    }

    #[test]
    fn ws_open_carries_the_header() {
        let header = StreamHeader {
            id: Some("abc".into()),
            from: Some("example.org".into()),
            ..StreamHeader::default()
        };
        let open = ws_open(&header);
        assert!(open.starts_with("<open"), "{open}");
        assert!(open.contains(NS_FRAMING));
        assert!(
            open.contains("id=\"abc\"") || open.contains("id='abc'"),
            "{open}"
        );
        assert!(open.contains("version="));
        assert!(ws_close().contains(NS_FRAMING));
    }
}
