//! What s2s and component streams look like on the wire: stream headers with the dialback
//! namespace, stream features, and the content-namespace rewriting of stanzas.
//!
//! Routed stanzas are built and serialised in `jabber:client`. RFC 6120 §4.8.3 puts stanzas of
//! a server-to-server stream in `jabber:server` (and XEP-0114 components in
//! `jabber:component:accept`), so the top-level namespace is rewritten on the way out and back
//! to `jabber:client` on the way in. Only elements in the stream's content namespace change:
//! payloads in other namespaces (forwarded messages in `jabber:client`, for example) are kept.

use bytes::Bytes;
use minidom::{Element, Node};
use starling_xmpp::codec::{StreamHeader, stream_header};
use starling_xmpp::ns;
use starling_xmpp::stanza::{Stanza, element};

use crate::dialback;

/// XEP-0114 component content namespace.
pub const NS_COMPONENT: &str = "jabber:component:accept";
/// RFC 6120 §5 STARTTLS namespace (re-exported for readability).
pub const NS_TLS: &str = ns::TLS;

/// Our s2s stream header; declares `xmlns:db` so peers know we speak dialback (XEP-0220 §2.1).
pub fn s2s_header(from: Option<&str>, to: Option<&str>, id: Option<&str>) -> String {
    let header = StreamHeader {
        from: from.map(str::to_owned),
        to: to.map(str::to_owned),
        id: id.map(str::to_owned),
        ..StreamHeader::default()
    };
    stream_header(ns::SERVER, &header).replacen(
        "<stream:stream ",
        &format!("<stream:stream xmlns:db='{}' ", dialback::NS),
        1,
    )
}

/// The serialised stanza with its top-level namespace set to `content_ns`.
///
/// Our serialiser always writes `<name xmlns='jabber:client'` first, so this is a prefix swap on
/// the shared bytes rather than a rebuild of the tree; children in the default namespace follow
/// the new declaration, as they must.
pub fn stanza_bytes(stanza: &Stanza, content_ns: &str) -> Bytes {
    let bytes = stanza.bytes();
    let name = stanza.kind().name();
    let prefix = format!("<{name} xmlns='{}'", ns::CLIENT);
    match bytes.strip_prefix(prefix.as_bytes()) {
        Some(rest) => {
            let mut out = Vec::with_capacity(bytes.len() + 8);
            out.extend_from_slice(format!("<{name} xmlns='{content_ns}'").as_bytes());
            out.extend_from_slice(rest);
            Bytes::from(out)
        }
        // Not built by our serialiser's usual shape (should not happen): rebuild the tree.
        None => Bytes::from(starling_xmpp::codec::to_bytes(&rewrite_ns(
            stanza.element(),
            ns::CLIENT,
            content_ns,
        ))),
    }
}

/// A copy of `el` where every element in namespace `from` that is reachable through elements
/// of that namespace is moved to `to` (the default-namespace region of a stanza).
pub fn rewrite_ns(el: &Element, from: &str, to: &str) -> Element {
    if el.ns() != from {
        return el.clone();
    }
    let mut builder = Element::builder(el.name(), to);
    for ((attr_ns, name), value) in el.attrs() {
        builder = builder.attr_ns(attr_ns.clone(), name.clone(), value.clone());
    }
    let mut out = builder.build();
    for node in el.nodes() {
        match node {
            Node::Element(child) => {
                out.append_child(rewrite_ns(child, from, to));
            }
            Node::Text(text) => out.append_text_node(text.clone()),
        }
    }
    out
}

/// Features offered on an incoming s2s stream (RFC 6120 §4.3.2).
pub fn incoming_features(starttls: Option<bool>, external: bool, dialback: bool) -> Element {
    let mut features = element("features", ns::STREAM, &[]);
    if let Some(required) = starttls {
        let mut tls = element("starttls", ns::TLS, &[]);
        if required {
            tls.append_child(element("required", ns::TLS, &[]));
        }
        features.append_child(tls);
    }
    if external {
        let mut mechanisms = element("mechanisms", ns::SASL, &[]);
        let mut mechanism = element("mechanism", ns::SASL, &[]);
        mechanism.append_text_node("EXTERNAL");
        mechanisms.append_child(mechanism);
        features.append_child(mechanisms);
    }
    if dialback {
        let mut db = element("dialback", dialback::NS_FEATURE, &[]);
        db.append_child(element("errors", dialback::NS_FEATURE, &[]));
        features.append_child(db);
    }
    features
}

/// The bytes of a `<stream:features/>` element, written with the `stream` prefix the stream
/// header declares and each feature with its own `xmlns`.
///
/// `<features xmlns='http://etherx.jabber.org/streams'>` is the same XML, but ejabberd's
/// parser does not resolve prefixes and waits for the literal `stream:features` (as RFC 6120
/// writes it) until its deadline.
pub fn features_bytes(features: &Element) -> Vec<u8> {
    let mut out = b"<stream:features>".to_vec();
    for child in features.children() {
        out.extend_from_slice(&starling_xmpp::codec::to_bytes(child));
    }
    out.extend_from_slice(b"</stream:features>");
    out
}

/// What a receiving server offers, as read from its `<stream:features/>`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerFeatures {
    /// STARTTLS offered.
    pub starttls: bool,
    /// SASL EXTERNAL offered (it accepted our certificate).
    pub external: bool,
    /// XEP-0220 dialback feature advertised.
    pub dialback: bool,
}

impl PeerFeatures {
    /// Reads a `<stream:features/>` element.
    pub fn parse(features: &Element) -> Self {
        let mut out = Self::default();
        for child in features.children() {
            match (child.name(), child.ns().as_str()) {
                ("starttls", ns::TLS) => out.starttls = true,
                ("mechanisms", ns::SASL) => {
                    out.external = child
                        .children()
                        .any(|m| m.name() == "mechanism" && m.text().trim() == "EXTERNAL");
                }
                ("dialback", dialback::NS_FEATURE) => out.dialback = true,
                _ => {}
            }
        }
        out
    }
}

/// XEP-0114 §3 handshake value: `hex(SHA-1(stream id ‖ secret))`.
pub fn component_handshake(stream_id: &str, secret: &str) -> String {
    use sha1::{Digest, Sha1};
    use std::fmt::Write;
    let digest = Sha1::digest(format!("{stream_id}{secret}").as_bytes());
    let mut out = String::with_capacity(40);
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// True if `name` is a plausible DNS domain to open a connection to: not an IP literal, ASCII
/// labels of letters, digits and hyphens (IDNs arrive here already in A-label form after
/// normalisation), each 1–63 bytes, 253 bytes in all.
pub fn is_dns_domain(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.parse::<std::net::IpAddr>().is_err()
        && !name.starts_with('[')
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_xmpp::jid::Jid;

    fn stanza(xml: &str) -> Stanza {
        let el: Element = xml.parse().unwrap_or_else(|e| panic!("{e}"));
        Stanza::from_element(el).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn outgoing_rewrites_the_top_level_namespace_only() {
        let s = stanza(
            "<message xmlns='jabber:client' from='a@a.test/r' to='b@b.test' type='chat'>\
             <body>hi</body><forwarded xmlns='urn:xmpp:forward:0'>\
             <message xmlns='jabber:client' from='x@a.test' to='y@b.test'/></forwarded></message>",
        );
        let out = stanza_bytes(&s, ns::SERVER);
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("<message xmlns='jabber:server'"), "{text}");
        // The forwarded copy keeps its own namespace.
        assert!(text.contains("<message xmlns='jabber:client'"), "{text}");
        let parsed: Element = text.parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.ns(), ns::SERVER);
        assert_eq!(
            parsed.get_child("body", ns::SERVER).map(Element::text),
            Some("hi".to_owned())
        );
    }

    #[test]
    fn incoming_rewrite_restores_jabber_client() {
        let el: Element =
            "<iq xmlns='jabber:server' type='error' id='1' from='b.test' to='a.test'>\
            <ping xmlns='urn:xmpp:ping'/><error type='cancel'>\
            <item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
                .parse()
                .unwrap_or_else(|e| panic!("{e}"));
        let out = rewrite_ns(&el, ns::SERVER, ns::CLIENT);
        assert_eq!(out.ns(), ns::CLIENT);
        assert_eq!(out.attr("id"), Some("1"));
        assert!(out.get_child("error", ns::CLIENT).is_some());
        assert!(out.get_child("ping", "urn:xmpp:ping").is_some());
        let s = Stanza::from_element(out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            s.from(),
            &Jid::parse("b.test").unwrap_or_else(|e| panic!("{e}"))
        );
        // And back out, byte-identical in shape.
        let again = String::from_utf8_lossy(&stanza_bytes(&s, ns::SERVER)).into_owned();
        assert!(again.starts_with("<iq xmlns='jabber:server'"), "{again}");
    }

    #[test]
    fn header_declares_dialback() {
        let h = s2s_header(Some("a.test"), Some("b.test"), None);
        assert!(h.contains("xmlns:db='jabber:server:dialback'"), "{h}");
        assert!(h.contains("xmlns='jabber:server'"), "{h}");
        assert!(
            h.contains("from='a.test'") && h.contains("to='b.test'"),
            "{h}"
        );
    }

    #[test]
    fn features_round_trip() {
        let f = incoming_features(Some(true), true, true);
        assert_eq!(
            PeerFeatures::parse(&f),
            PeerFeatures {
                starttls: true,
                external: true,
                dialback: true
            }
        );
        assert_eq!(
            PeerFeatures::parse(&incoming_features(None, false, false)),
            PeerFeatures::default()
        );
    }

    #[test]
    fn features_use_the_stream_prefix() {
        let bytes = features_bytes(&incoming_features(Some(false), true, true));
        let text = String::from_utf8_lossy(&bytes).into_owned();
        assert!(
            text.starts_with(
                "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
            ),
            "{text}"
        );
        assert!(text.ends_with("</stream:features>"), "{text}");
        // Read back inside a stream, it is the same element.
        let mut parser = starling_xmpp::codec::StreamParser::new(
            ns::SERVER,
            starling_xmpp::codec::Limits::default(),
        );
        parser.feed(s2s_header(Some("a.test"), Some("b.test"), Some("1")).as_bytes());
        parser.feed(&bytes);
        let mut parsed = None;
        while let Ok(Some(event)) = parser.next_event() {
            if let starling_xmpp::codec::StreamEvent::Stanza(el) = event {
                parsed = Some(el);
            }
        }
        let parsed = parsed.unwrap_or_else(|| panic!("no features in {text}"));
        assert_eq!(
            (parsed.name(), parsed.ns().as_str()),
            ("features", ns::STREAM)
        );
        assert_eq!(
            PeerFeatures::parse(&parsed),
            PeerFeatures {
                starttls: true,
                external: true,
                dialback: true
            }
        );
    }

    #[test]
    fn component_handshake_is_hex_sha1_of_id_and_secret() {
        // Computed independently: sha1("3BF96D32" + "secret").
        assert_eq!(
            component_handshake("3BF96D32", "secret"),
            "b09ea9b3b7f586be8a08d0a3dd7466f110aeb136"
        );
    }

    #[test]
    fn domain_names() {
        assert!(is_dns_domain("example.org"));
        assert!(is_dns_domain("xn--bcher-kva.example"));
        assert!(is_dns_domain("localhost"));
        assert!(!is_dns_domain("127.0.0.1"));
        assert!(!is_dns_domain("[::1]"));
        assert!(!is_dns_domain(""));
        assert!(!is_dns_domain("a..b"));
        assert!(!is_dns_domain("-a.b"));
        assert!(!is_dns_domain(&"a".repeat(64)));
        assert!(!is_dns_domain("exa mple.org"));
    }
}
