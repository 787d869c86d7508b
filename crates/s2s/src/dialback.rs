//! Server Dialback (XEP-0220): key generation and verification, and the `db:result` /
//! `db:verify` elements.
//!
//! The key an originating server sends is `hex(HMAC-SHA256(secret, receiving ‖ ' ' ‖
//! originating ‖ ' ' ‖ stream id))` (XEP-0220 §2.4 recommends exactly this shape). The secret
//! never leaves the node; in a cluster every node derives it from the shared cookie, so whichever
//! node a verification request lands on can check a key another node issued.

use hmac::{Hmac, KeyInit, Mac};
use minidom::Element;
use sha2::{Digest, Sha256};
use starling_xmpp::codec::to_bytes;
use starling_xmpp::stanza::{element, set_attr};
use subtle::ConstantTimeEq;

/// `jabber:server:dialback`, declared as `db` on s2s stream headers.
pub const NS: &str = "jabber:server:dialback";
/// XEP-0220 §2.6 stream feature announcing dialback (with error support).
pub const NS_FEATURE: &str = "urn:xmpp:features:dialback";

/// The node's dialback secret. Its `Debug` does not print it.
#[derive(Clone)]
pub struct Secret([u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Derives the secret from shared material (the cluster cookie), so that every node of a
    /// cluster computes the same keys; domain-separated so it reveals nothing about the cookie.
    pub fn derive(material: &[u8]) -> Self {
        let mut hash = Sha256::new();
        hash.update(b"starling s2s dialback\0");
        hash.update(material);
        Self(hash.finalize().into())
    }

    /// A per-node random secret (single node, no cluster).
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// The key for a stream `stream_id` from `originating` to `receiving`.
    pub fn key(&self, receiving: &str, originating: &str, stream_id: &str) -> String {
        // HMAC accepts any key length, so construction cannot fail; an empty key would make
        // every verification fail, the safe direction.
        let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0) else {
            return String::new();
        };
        mac.update(receiving.as_bytes());
        mac.update(b" ");
        mac.update(originating.as_bytes());
        mac.update(b" ");
        mac.update(stream_id.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// Checks a key received in `<db:verify/>`, in constant time.
    pub fn verify(&self, receiving: &str, originating: &str, stream_id: &str, key: &str) -> bool {
        let expected = self.key(receiving, originating, stream_id);
        !key.is_empty() && bool::from(expected.as_bytes().ct_eq(key.trim().as_bytes()))
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A dialback element received on a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dialback {
    /// `<db:result from to>key</db:result>`: the sender asks to be authenticated.
    ResultRequest {
        /// The originating server.
        from: String,
        /// The receiving server (ours).
        to: String,
        /// The key.
        key: String,
    },
    /// `<db:result type='valid|invalid|error'/>`: the answer to our request.
    ResultAnswer {
        /// The receiving server that answered.
        from: String,
        /// Our domain.
        to: String,
        /// True for `valid`.
        valid: bool,
    },
    /// `<db:verify from to id>key</db:verify>`: asks us, as authoritative server, to check.
    VerifyRequest {
        /// The receiving server asking.
        from: String,
        /// Our domain (the originating one).
        to: String,
        /// The stream id the key was made for.
        id: String,
        /// The key.
        key: String,
    },
    /// `<db:verify type='valid|invalid'/>`: the authoritative server's answer.
    VerifyAnswer {
        /// The authoritative (originating) server.
        from: String,
        /// Us.
        to: String,
        /// The stream id.
        id: String,
        /// True for `valid`.
        valid: bool,
    },
}

impl Dialback {
    /// Recognises a dialback element; `None` for anything else or a malformed one.
    pub fn parse(el: &Element) -> Option<Self> {
        if el.ns() != NS {
            return None;
        }
        let from = el.attr("from")?.to_ascii_lowercase();
        let to = el.attr("to")?.to_ascii_lowercase();
        let kind = el.attr("type");
        match (el.name(), kind) {
            ("result", None) => Some(Self::ResultRequest {
                from,
                to,
                key: el.text().trim().to_owned(),
            }),
            ("result", Some(t)) => Some(Self::ResultAnswer {
                from,
                to,
                valid: t == "valid",
            }),
            ("verify", None) => Some(Self::VerifyRequest {
                from,
                to,
                id: el.attr("id")?.to_owned(),
                key: el.text().trim().to_owned(),
            }),
            ("verify", Some(t)) => Some(Self::VerifyAnswer {
                from,
                to,
                id: el.attr("id")?.to_owned(),
                valid: t == "valid",
            }),
            _ => None,
        }
    }

    /// The element to send.
    pub fn to_element(&self) -> Element {
        match self {
            Self::ResultRequest { from, to, key } => {
                let mut el = element("result", NS, &[("from", from), ("to", to)]);
                el.append_text_node(key.clone());
                el
            }
            Self::ResultAnswer { from, to, valid } => element(
                "result",
                NS,
                &[("from", from), ("to", to), ("type", verdict(*valid))],
            ),
            Self::VerifyRequest { from, to, id, key } => {
                let mut el = element("verify", NS, &[("from", from), ("to", to), ("id", id)]);
                el.append_text_node(key.clone());
                el
            }
            Self::VerifyAnswer {
                from,
                to,
                id,
                valid,
            } => {
                let mut el = element("verify", NS, &[("from", from), ("to", to), ("id", id)]);
                set_attr(&mut el, "type", verdict(*valid));
                el
            }
        }
    }
}

/// `<db:result type='error'>` with a stanza error condition (XEP-0220 §2.5), sent when we
/// cannot even try (unknown host, policy).
pub fn result_error(from: &str, to: &str, condition: &str) -> Element {
    let mut el = element(
        "result",
        NS,
        &[("from", from), ("to", to), ("type", "error")],
    );
    // The error is a stanza-style error in the stream's content namespace (XEP-0220 §2.4).
    let mut error = element("error", starling_xmpp::ns::SERVER, &[("type", "cancel")]);
    error.append_child(element(condition, starling_xmpp::ns::STANZAS, &[]));
    el.append_child(error);
    el
}

/// The bytes to send for a dialback element: `<db:result …>` / `<db:verify …>`, using the
/// `db` prefix our stream header declares.
///
/// A default-namespace declaration (`<result xmlns='jabber:server:dialback'>`) is the same
/// XML, but ejabberd's parser does not resolve prefixes and recognises dialback elements only
/// by the literal names `db:result` and `db:verify` (as in XEP-0220's examples); it silently
/// ignores anything else, so dialback with it would hang until the deadline.
pub fn to_wire(el: &Element) -> Vec<u8> {
    let bytes = to_bytes(el);
    let name = el.name();
    let open = format!("<{name} xmlns='{NS}'");
    let Some(rest) = bytes.strip_prefix(open.as_bytes()) else {
        // Not a dialback element of our serialiser's usual shape: send it as it is.
        return bytes;
    };
    let mut out = Vec::with_capacity(bytes.len() + 8);
    out.extend_from_slice(format!("<db:{name}").as_bytes());
    match rest.strip_suffix(format!("</{name}>").as_bytes()) {
        Some(body) => {
            out.extend_from_slice(body);
            out.extend_from_slice(format!("</db:{name}>").as_bytes());
        }
        // Self-closing: `… />` needs no change.
        None => out.extend_from_slice(rest),
    }
    out
}

fn verdict(valid: bool) -> &'static str {
    if valid { "valid" } else { "invalid" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_every_input() {
        let s = Secret::derive(b"cookie");
        let k = s.key("b.test", "a.test", "id1");
        assert_eq!(k.len(), 64);
        assert!(k.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(k, Secret::derive(b"cookie").key("b.test", "a.test", "id1"));
        assert_ne!(k, s.key("a.test", "b.test", "id1"));
        assert_ne!(k, s.key("b.test", "a.test", "id2"));
        assert_ne!(k, Secret::derive(b"other").key("b.test", "a.test", "id1"));
        // The space separator is unambiguous only because domains cannot contain spaces.
        assert_ne!(s.key("ab", "c", "i"), s.key("a", "bc", "i"));
    }

    #[test]
    fn verification() {
        let s = Secret::random();
        let k = s.key("b.test", "a.test", "id1");
        assert!(s.verify("b.test", "a.test", "id1", &k));
        assert!(s.verify("b.test", "a.test", "id1", &format!(" {k}\n")));
        assert!(!s.verify("b.test", "a.test", "id2", &k));
        assert!(!s.verify("b.test", "a.test", "id1", ""));
        assert!(!s.verify("b.test", "a.test", "id1", &k[..10]));
        assert!(!Secret::random().verify("b.test", "a.test", "id1", &k));
    }

    #[test]
    fn elements_round_trip() {
        let all = [
            Dialback::ResultRequest {
                from: "a.test".into(),
                to: "b.test".into(),
                key: "k".into(),
            },
            Dialback::ResultAnswer {
                from: "b.test".into(),
                to: "a.test".into(),
                valid: true,
            },
            Dialback::VerifyRequest {
                from: "b.test".into(),
                to: "a.test".into(),
                id: "i".into(),
                key: "k".into(),
            },
            Dialback::VerifyAnswer {
                from: "a.test".into(),
                to: "b.test".into(),
                id: "i".into(),
                valid: false,
            },
        ];
        for db in all {
            assert_eq!(Dialback::parse(&db.to_element()), Some(db));
        }
        let err = result_error("b.test", "a.test", "item-not-found");
        assert_eq!(
            Dialback::parse(&err),
            Some(Dialback::ResultAnswer {
                from: "b.test".into(),
                to: "a.test".into(),
                valid: false
            })
        );
        assert_eq!(
            Dialback::parse(&element("result", "jabber:server", &[])),
            None
        );
        assert_eq!(
            Dialback::parse(&element("verify", NS, &[("from", "a")])),
            None
        );
    }

    /// Parses `xml` as it would arrive inside an s2s stream that declares `xmlns:db`.
    fn in_stream(xml: &[u8]) -> Element {
        let mut parser = starling_xmpp::codec::StreamParser::new(
            starling_xmpp::ns::SERVER,
            starling_xmpp::codec::Limits::default(),
        );
        parser.feed(crate::wire::s2s_header(Some("a.test"), Some("b.test"), None).as_bytes());
        parser.feed(xml);
        let mut found = None;
        while let Ok(Some(event)) = parser.next_event() {
            if let starling_xmpp::codec::StreamEvent::Stanza(el) = event {
                found = Some(el);
            }
        }
        found.unwrap_or_else(|| panic!("no element in {}", String::from_utf8_lossy(xml)))
    }

    #[test]
    fn wire_form_uses_the_db_prefix() {
        let request = Dialback::ResultRequest {
            from: "a.test".into(),
            to: "b.test".into(),
            key: "k&1".into(),
        };
        let wire = to_wire(&request.to_element());
        assert_eq!(
            String::from_utf8_lossy(&wire),
            "<db:result from='a.test' to='b.test'>k&amp;1</db:result>"
        );
        assert_eq!(Dialback::parse(&in_stream(&wire)), Some(request));

        let answer = Dialback::VerifyAnswer {
            from: "a.test".into(),
            to: "b.test".into(),
            id: "i".into(),
            valid: true,
        };
        let wire = to_wire(&answer.to_element());
        let text = String::from_utf8_lossy(&wire).into_owned();
        assert!(
            text.starts_with("<db:verify ") && text.ends_with("/>"),
            "{text}"
        );
        assert_eq!(Dialback::parse(&in_stream(&wire)), Some(answer));

        // The error child stays in the content namespace, declared explicitly.
        let err = result_error("b.test", "a.test", "item-not-found");
        let wire = to_wire(&err);
        let text = String::from_utf8_lossy(&wire).into_owned();
        assert!(
            text.starts_with("<db:result ") && text.ends_with("</db:result>"),
            "{text}"
        );
        assert!(
            text.contains("<error xmlns='jabber:server' type='cancel'>"),
            "{text}"
        );
        let parsed = in_stream(&wire);
        assert!(
            parsed
                .get_child("error", starling_xmpp::ns::SERVER)
                .is_some()
        );
        assert_eq!(
            Dialback::parse(&parsed),
            Some(Dialback::ResultAnswer {
                from: "b.test".into(),
                to: "a.test".into(),
                valid: false
            })
        );
    }
}
