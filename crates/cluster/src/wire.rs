//! The mesh wire format (DESIGN.md §7.1).
//!
//! A link starts with an 8-byte preamble, `b"STRL"` and the lowest and highest protocol
//! versions the sender speaks (big-endian `u16`s); the highest version both speak is used, so
//! nodes of version N and N+1 interoperate during a rolling upgrade. Then frames follow: a
//! big-endian `u32` length (at most [`MAX_FRAME`]) and a postcard-encoded [`Message`].
//! [`Message`] only ever grows at the end, so an older node decodes what it knows.

use serde::{Deserialize, Serialize};

/// Preamble magic.
pub const MAGIC: [u8; 4] = *b"STRL";
/// Oldest protocol version this build speaks.
pub const PROTOCOL_MIN: u16 = 1;
/// Newest protocol version this build speaks. 2 adds stream management handover
/// ([`Message::TakeOver`]); a version-1 peer is never sent it. 3 adds the cluster-wide route
/// table ([`Message::Routes`], [`ROUTES_VERSION`]). 4 adds placed entities such as MUC rooms
/// ([`Message::Forward`], [`PLACEMENT_VERSION`]).
pub const PROTOCOL_MAX: u16 = 4;
/// Largest frame accepted (16 MiB): a snapshot of a large session table fits; garbage does not
/// make us allocate more.
pub const MAX_FRAME: usize = 16 << 20;

/// Why bytes from a peer are not a valid stream of frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The preamble does not start with `STRL`: not a Starling node.
    #[error("not a Starling cluster peer (bad preamble)")]
    BadMagic,
    /// The version ranges do not overlap.
    #[error(
        "no common protocol version (ours {ours_min}-{ours_max}, theirs {theirs_min}-{theirs_max})"
    )]
    NoCommonVersion {
        /// Our lowest.
        ours_min: u16,
        /// Our highest.
        ours_max: u16,
        /// Their lowest.
        theirs_min: u16,
        /// Their highest.
        theirs_max: u16,
    },
    /// A frame announced more than [`MAX_FRAME`] bytes.
    #[error("frame of {0} bytes exceeds the limit")]
    FrameTooLarge(usize),
    /// A frame did not decode as a message.
    #[error("undecodable frame: {0}")]
    Decode(String),
}

/// Why a peer refuses a link; sent before closing so the operator sees both values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Refusal {
    /// The proof does not match: the cookies differ.
    Unauthenticated,
    /// The nodes serve different `hosts`.
    HostsMismatch {
        /// The refusing node's hosts.
        ours: Vec<String>,
        /// The peer's hosts.
        theirs: Vec<String>,
    },
    /// The nodes do not share one database (or one uses the embedded one).
    SharedDbMismatch {
        /// The refusing node's database identity.
        ours: String,
        /// The peer's.
        theirs: String,
    },
    /// Another live node already uses this name.
    NameInUse,
    /// This node was removed with `leave_cluster`.
    Removed,
}

/// What a node says about itself when a link opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The node name (`starling@host`).
    pub node: String,
    /// Random per start: tells a restarted node from the old one.
    pub incarnation: u64,
    /// Fresh randomness for the proof.
    pub nonce: [u8; 32],
    /// The hosts served, sorted.
    pub hosts: Vec<String>,
    /// Identity of the shared database (`pgsql://server:port/database`), or `sqlite` for the
    /// embedded one, which cannot be shared.
    pub db_id: String,
    /// Address the node's cluster listener is reachable at.
    pub listen: String,
}

/// A mesh message. New variants are only ever appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message {
    /// First message of each side.
    Hello(Hello),
    /// HMAC proof of the cookie over the handshake transcript.
    Proof(Vec<u8>),
    /// The link is refused, and why.
    Refused(Refusal),
    /// Liveness.
    Heartbeat,
    /// The sender stops on purpose: purge its entries now.
    Goodbye,
    /// Membership gossip: members the sender knows (name, cluster address) and removed names.
    /// Receivers add what they lack, dial new members and drop removed ones.
    MemberUpdate {
        /// Live members, the sender included.
        members: Vec<(String, String)>,
        /// Names removed with `leave_cluster`.
        removed: Vec<String>,
    },
    /// Every session the sender owns, sent once when a link comes up; replaces what the
    /// receiver held for the sender.
    Snapshot(Vec<SessionRecord>),
    /// One of the sender's sessions was bound or changed.
    SessionUp(SessionRecord),
    /// One of the sender's sessions was unbound.
    SessionDown {
        /// Full JID.
        jid: String,
        /// Session id on the sender.
        id: u64,
    },
    /// A stanza for a session the receiver owns; it delivers it to that session's inbox.
    Deliver {
        /// Session id on the receiver.
        id: u64,
        /// The serialised stanza (namespace declared), parsed once on arrival.
        stanza: Vec<u8>,
    },
    /// Close one of the receiver's sessions with a stream error (conflict, kick, removal).
    Close {
        /// Full JID.
        jid: String,
        /// Session id on the receiver.
        id: u64,
        /// Stream error condition name (RFC 6120 §4.9.3).
        condition: String,
        /// Optional text.
        text: Option<String>,
    },
    /// The receiver was removed from the cluster with `leave_cluster`: it forgets its members
    /// and stops.
    Leave,
    /// Heartbeat with a timestamp (µs, sender's clock) that the peer echoes in [`Message::Pong`].
    Ping(u64),
    /// Echo of a [`Message::Ping`], giving the round-trip time.
    Pong(u64),
    /// XEP-0198 resumption through another node (protocol 2): if the receiver owns resumable
    /// session `previd` of `user`, it hands it over and answers [`Message::HandedOver`].
    TakeOver {
        /// Matches the answer to the request.
        req: u64,
        /// The bare JID the resuming client authenticated as.
        user: String,
        /// The stream management id.
        previd: String,
        /// The client's `h`.
        h: u32,
    },
    /// The answer to a [`Message::TakeOver`] (protocol 2).
    HandedOver {
        /// The request's `req`.
        req: u64,
        /// The session, or why not.
        outcome: Handover,
    },
    /// Every domain the sender's connections (external components) route, sent once when a
    /// link comes up (protocol 3); replaces what the receiver held for the sender.
    Routes(Vec<String>),
    /// A connection on the sender now routes this domain (protocol 3).
    RouteUp(String),
    /// The sender no longer routes this domain (protocol 3).
    RouteDown(String),
    /// A stanza for a domain the receiver's connection routes (protocol 3); the receiver hands
    /// it to that connection, or bounces it if the connection is gone.
    RouteDeliver {
        /// The routed domain (the stanza's `to` domain).
        domain: String,
        /// The serialised stanza (namespace declared).
        stanza: Vec<u8>,
    },
    /// A stanza for an entity of a placed service that the receiver runs, or an IQ answer for
    /// a request the receiver sent (protocol 4; `starling_core::placement`). The receiver
    /// routes it there, forwarding it once more only if its own view names a third owner.
    Forward {
        /// The serialised stanza (namespace declared).
        stanza: Vec<u8>,
        /// How many times it was forwarded, this time included.
        hops: u8,
    },
}

/// Protocol version from which the route messages ([`Message::Routes`] to
/// [`Message::RouteDeliver`]) may be sent: an older peer neither learns nor announces routes.
pub const ROUTES_VERSION: u16 = 3;

/// Protocol version from which [`Message::Forward`] may be sent: rooms and other placed
/// entities are placed only over members that speak it.
pub const PLACEMENT_VERSION: u16 = 4;

/// Protocol version from which [`Message::TakeOver`] and [`Message::HandedOver`] may be sent.
pub const HANDOVER_VERSION: u16 = 2;

/// The outcome of a [`Message::TakeOver`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Handover {
    /// The receiver owned the session and let it go: here is its state.
    Found(HandoverRecord),
    /// The receiver has no such session.
    NotFound,
    /// The client's `h` acknowledges more than was sent; the session stays with its owner.
    TooHigh {
        /// The client's `h`.
        h: u32,
        /// What the owner had sent.
        sent: u32,
    },
}

/// A session's stream management state in transit (`starling_core::handover::HandoverState`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverRecord {
    /// Full JID.
    pub jid: String,
    /// Stanzas received from the client.
    pub inbound: u32,
    /// The client's acknowledged count.
    pub acked: u32,
    /// Unacknowledged stanzas (serialised, namespace declared) and when they were queued.
    pub unacked: Vec<(Vec<u8>, i64)>,
    /// Resumption timeout, seconds.
    pub resume_timeout_secs: u64,
    /// Available (initial presence sent).
    pub available: bool,
    /// Presence priority.
    pub priority: i8,
    /// Receives roster pushes.
    pub interested: bool,
    /// Last available presence, serialised.
    pub presence: Option<String>,
    /// Carbons enabled.
    pub carbons: bool,
    /// Client state inactive.
    pub csi_inactive: bool,
}

/// A replicated session-table entry (DESIGN.md §7.2 `sessions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Full JID.
    pub jid: String,
    /// Session id on its owner.
    pub id: u64,
    /// Presence priority.
    pub priority: i8,
    /// Available (initial presence sent).
    pub available: bool,
    /// Receives roster pushes.
    pub interested: bool,
    /// Last available presence, serialised, to answer probes.
    pub presence: Option<String>,
    /// Bind time, µs since the Unix epoch (the older duplicate gets `<conflict/>`).
    pub bound_at: i64,
}

/// The 8-byte preamble for the versions this build speaks.
pub fn preamble() -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&MAGIC);
    out[4..6].copy_from_slice(&PROTOCOL_MIN.to_be_bytes());
    out[6..].copy_from_slice(&PROTOCOL_MAX.to_be_bytes());
    out
}

/// Checks a peer's preamble and returns the version to speak.
pub fn negotiate(peer: &[u8; 8]) -> Result<u16, WireError> {
    let (magic, rest) = peer.split_at(4);
    if magic != MAGIC {
        return Err(WireError::BadMagic);
    }
    let (min, max) = rest.split_at(2);
    let theirs_min = u16::from_be_bytes([min[0], min[1]]);
    let theirs_max = u16::from_be_bytes([max[0], max[1]]);
    let version = PROTOCOL_MAX.min(theirs_max);
    if version < PROTOCOL_MIN.max(theirs_min) {
        return Err(WireError::NoCommonVersion {
            ours_min: PROTOCOL_MIN,
            ours_max: PROTOCOL_MAX,
            theirs_min,
            theirs_max,
        });
    }
    Ok(version)
}

/// Encodes one frame.
pub fn encode(message: &Message) -> Vec<u8> {
    // postcard cannot fail on these types except by running out of memory.
    let body = postcard::to_stdvec(message).unwrap_or_default();
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Incremental frame decoder: feed bytes as they arrive, take messages out.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, WireError> {
        let Some(header) = self.buf.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*header) as usize;
        if len > MAX_FRAME {
            return Err(WireError::FrameTooLarge(len));
        }
        let Some(body) = self.buf.get(4..4 + len) else {
            return Ok(None);
        };
        let message = postcard::from_bytes(body).map_err(|e| WireError::Decode(e.to_string()))?;
        self.buf.drain(..4 + len);
        Ok(Some(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            node: "starling@a".into(),
            incarnation: 7,
            nonce: [3; 32],
            hosts: vec!["example.org".into()],
            db_id: "pgsql://db:5432/xmpp".into(),
            listen: "10.0.0.1:5370".into(),
        }
    }

    #[test]
    fn frames_round_trip_byte_by_byte() {
        let messages = vec![
            Message::Hello(hello()),
            Message::Proof(vec![1, 2, 3]),
            Message::Refused(Refusal::HostsMismatch {
                ours: vec!["a".into()],
                theirs: vec!["b".into()],
            }),
            Message::Heartbeat,
            Message::Goodbye,
            Message::MemberUpdate {
                members: vec![("starling@a".into(), "127.0.0.1:1".into())],
                removed: vec!["starling@z".into()],
            },
            Message::Snapshot(vec![SessionRecord {
                jid: "u@example.org/r".into(),
                id: 4,
                priority: -1,
                available: true,
                interested: false,
                presence: Some("<presence xmlns='jabber:client'/>".into()),
                bound_at: 17,
            }]),
            Message::SessionDown {
                jid: "u@example.org/r".into(),
                id: 4,
            },
            Message::Deliver {
                id: 4,
                stanza: b"<message/>".to_vec(),
            },
            Message::Close {
                jid: "u@example.org/r".into(),
                id: 4,
                condition: "conflict".into(),
                text: None,
            },
            Message::Leave,
            Message::Ping(9),
            Message::Pong(9),
            Message::TakeOver {
                req: 1,
                user: "u@example.org".into(),
                previd: "abc".into(),
                h: 7,
            },
            Message::HandedOver {
                req: 1,
                outcome: Handover::Found(HandoverRecord {
                    jid: "u@example.org/r".into(),
                    inbound: 3,
                    acked: 7,
                    unacked: vec![(b"<message/>".to_vec(), 17)],
                    resume_timeout_secs: 300,
                    available: true,
                    priority: 5,
                    interested: true,
                    presence: None,
                    carbons: true,
                    csi_inactive: false,
                }),
            },
            Message::HandedOver {
                req: 2,
                outcome: Handover::TooHigh { h: 9, sent: 2 },
            },
            Message::Routes(vec!["comp.example.org".into()]),
            Message::RouteUp("comp.example.org".into()),
            Message::RouteDown("comp.example.org".into()),
            Message::RouteDeliver {
                domain: "comp.example.org".into(),
                stanza: b"<message/>".to_vec(),
            },
            Message::Forward {
                stanza: b"<message/>".to_vec(),
                hops: 1,
            },
        ];
        let bytes: Vec<u8> = messages.iter().flat_map(encode).collect();
        let mut d = FrameDecoder::new();
        let mut out = Vec::new();
        for b in bytes {
            d.feed(&[b]);
            while let Some(m) = d.next_message().unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out, messages);
    }

    #[test]
    fn variant_tags_are_stable() {
        // Appending keeps earlier tags: a rolling upgrade depends on it (postcard tags variants
        // by index).
        assert_eq!(encode(&Message::Heartbeat)[4], 3);
        assert_eq!(encode(&Message::Goodbye)[4], 4);
        assert_eq!(encode(&Message::Leave)[4], 11);
        assert_eq!(encode(&Message::Pong(0))[4], 13);
        let take_over = Message::TakeOver {
            req: 0,
            user: String::new(),
            previd: String::new(),
            h: 0,
        };
        assert_eq!(encode(&take_over)[4], 14);
        let handed = Message::HandedOver {
            req: 0,
            outcome: Handover::NotFound,
        };
        assert_eq!(encode(&handed)[4], 15);
        assert_eq!(encode(&Message::Routes(Vec::new()))[4], 16);
        assert_eq!(encode(&Message::RouteUp(String::new()))[4], 17);
        assert_eq!(encode(&Message::RouteDown(String::new()))[4], 18);
        let deliver = Message::RouteDeliver {
            domain: String::new(),
            stanza: Vec::new(),
        };
        assert_eq!(encode(&deliver)[4], 19);
        let forward = Message::Forward {
            stanza: Vec::new(),
            hops: 0,
        };
        assert_eq!(encode(&forward)[4], 20);
    }

    #[test]
    fn preamble_negotiates_the_highest_common_version() {
        assert_eq!(negotiate(&preamble()), Ok(PROTOCOL_MAX));
        let mut newer = preamble();
        newer[4..6].copy_from_slice(&1u16.to_be_bytes());
        newer[6..].copy_from_slice(&9u16.to_be_bytes());
        assert_eq!(negotiate(&newer), Ok(PROTOCOL_MAX));
        let mut future = preamble();
        future[4..6].copy_from_slice(&5u16.to_be_bytes());
        future[6..].copy_from_slice(&9u16.to_be_bytes());
        assert!(matches!(
            negotiate(&future),
            Err(WireError::NoCommonVersion { .. })
        ));
        assert_eq!(negotiate(b"HTTP/1.1"), Err(WireError::BadMagic));
    }

    #[test]
    fn oversized_and_garbage_frames_are_errors_not_panics() {
        let mut d = FrameDecoder::new();
        d.feed(&u32::MAX.to_be_bytes());
        assert!(matches!(d.next_message(), Err(WireError::FrameTooLarge(_))));
        let mut d = FrameDecoder::new();
        d.feed(&[0, 0, 0, 2, 0xff, 0xff]);
        assert!(matches!(d.next_message(), Err(WireError::Decode(_))));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut d = FrameDecoder::new();
            d.feed(&bytes);
            for _ in 0..8 {
                if !matches!(d.next_message(), Ok(Some(_))) {
                    break;
                }
            }
        }
    }
}
