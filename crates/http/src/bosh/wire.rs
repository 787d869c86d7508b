//! The BOSH wrapper element (XEP-0124 §4, XEP-0206 §§4–5): parsing a request's `<body/>` into
//! its attributes and payload elements, and writing response bodies.
//!
//! Parsing uses rxml's namespace-aware parser with the stream parser's depth and attribute
//! limits, so a hostile body cannot build an arbitrarily deep tree. Payload children are
//! re-serialised with their namespace declared on each, as the c2s stream parser expects;
//! XEP-0206 requires stanzas to be qualified by `jabber:client`; elements that inherit the
//! wrapper's httpbind namespace instead are moved to `jabber:client` (as Prosody and ejabberd
//! do), so a lax client still works.

use rxml::{Event, Namespace, Parse, Parser};
use starling_xmpp::Element;
use starling_xmpp::codec::{self, Limits};
use starling_xmpp::ns;

/// XEP-0124: the namespace of `<body/>`.
pub const NS_HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
/// XEP-0206 §4: the namespace of the `xmpp:` attributes.
pub const NS_XBOSH: &str = "urn:xmpp:xbosh";
/// The stream namespace: declared on every response so `<stream:features/>` and
/// `<stream:error/>` written by the session stay well-formed (XEP-0206 §§5–6 examples).
pub const NS_STREAM: &str = "http://etherx.jabber.org/streams";

/// What a client asked for in one request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Body {
    /// `rid`.
    pub rid: Option<u64>,
    /// `sid`; absent on a session creation request.
    pub sid: Option<String>,
    /// `to`.
    pub to: Option<String>,
    /// `xml:lang`.
    pub lang: Option<String>,
    /// `wait`, seconds.
    pub wait: Option<u64>,
    /// `hold`.
    pub hold: Option<u64>,
    /// `ver`.
    pub ver: Option<String>,
    /// `xmpp:version`.
    pub xmpp_version: Option<String>,
    /// `xmpp:restart='true'` (XEP-0206 §5).
    pub restart: bool,
    /// `type='terminate'` (XEP-0124 §13).
    pub terminate: bool,
    /// `pause`, seconds (XEP-0124 §10).
    pub pause: Option<u64>,
    /// The payload elements, each serialised on its own.
    pub payload: Vec<Vec<u8>>,
}

/// Why a request body is refused (`bad-request`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses one request body.
pub fn parse(bytes: &[u8]) -> Result<Body, Malformed> {
    let limits = Limits::default();
    let bad = |why: &str| Malformed(why.to_owned());
    let mut parser = Parser::new();
    let mut input = bytes;
    let mut body: Option<Body> = None;
    // Open payload elements, outermost first; depth 0 is `<body/>` itself.
    let mut stack: Vec<Element> = Vec::new();
    let mut depth = 0usize;
    let mut closed = false;
    loop {
        let event = match parser.parse(&mut input, true) {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(e) => return Err(Malformed(format!("not well-formed XML: {e:?}"))),
        };
        match event {
            Event::XmlDeclaration(..) => {}
            Event::StartElement(_, (ns, name), attrs) => {
                if closed {
                    return Err(bad("content after </body>"));
                }
                if attrs.len() > limits.max_attributes {
                    return Err(bad("too many attributes"));
                }
                if depth == 0 {
                    if ns.as_str() != NS_HTTPBIND || name.as_str() != "body" {
                        return Err(bad(
                            "the root element must be body in http://jabber.org/protocol/httpbind",
                        ));
                    }
                    body = Some(attributes(&attrs)?);
                } else {
                    if depth > limits.max_depth {
                        return Err(bad("elements nested too deeply"));
                    }
                    // Elements left in the wrapper's default namespace are taken as
                    // jabber:client, as Prosody and ejabberd do for lax clients.
                    let element_ns = if ns.as_str() == NS_HTTPBIND {
                        ns::CLIENT
                    } else {
                        ns.as_str()
                    };
                    let mut element = Element::bare(name.as_str(), element_ns);
                    *element.attrs_mut() = attrs;
                    stack.push(element);
                }
                depth = depth.saturating_add(1);
            }
            Event::EndElement(_) => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    closed = true;
                    continue;
                }
                let element = stack.pop().ok_or_else(|| bad("unbalanced elements"))?;
                match stack.last_mut() {
                    Some(parent) => {
                        parent.append_child(element);
                    }
                    None => {
                        let body = body.as_mut().ok_or_else(|| bad("no body"))?;
                        body.payload.push(codec::to_bytes(&element));
                    }
                };
            }
            Event::Text(_, text) => match stack.last_mut() {
                Some(top) => top.append_text(text),
                None if text.chars().all(|c| matches!(c, ' ' | '\t' | '\r' | '\n')) => {}
                None => return Err(bad("character data directly inside body")),
            },
        }
    }
    match body {
        Some(body) if closed => Ok(body),
        _ => Err(bad("no complete body element")),
    }
}

fn attributes(attrs: &rxml::AttrMap) -> Result<Body, Malformed> {
    let plain = |name: &str| attrs.get(&Namespace::NONE, name).cloned();
    let number = |name: &str| -> Result<Option<u64>, Malformed> {
        match plain(name) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<u64>()
                .map(Some)
                .map_err(|_| Malformed(format!("attribute {name} is not a number"))),
        }
    };
    Ok(Body {
        rid: number("rid")?,
        sid: plain("sid"),
        to: plain("to"),
        lang: attrs.get(rxml::XMLNS_XML, "lang").cloned(),
        wait: number("wait")?,
        hold: number("hold")?,
        ver: plain("ver"),
        xmpp_version: attrs.get(NS_XBOSH, "version").cloned(),
        restart: attrs
            .get(NS_XBOSH, "restart")
            .is_some_and(|v| v == "true" || v == "1"),
        terminate: plain("type").as_deref() == Some("terminate"),
        pause: number("pause")?,
        payload: Vec::new(),
    })
}

/// Writes a response body: `attrs` (already-safe names; values are escaped) around the
/// session's serialised elements.
pub fn render(attrs: &[(&str, String)], elements: &[Vec<u8>]) -> String {
    let payload: usize = elements.iter().map(Vec::len).sum();
    let mut out = String::with_capacity(160 + payload);
    out.push_str("<body xmlns='");
    out.push_str(NS_HTTPBIND);
    out.push_str("' xmlns:stream='");
    out.push_str(NS_STREAM);
    out.push('\'');
    if attrs.iter().any(|(name, _)| name.starts_with("xmpp:")) {
        out.push_str(" xmlns:xmpp='");
        out.push_str(NS_XBOSH);
        out.push('\'');
    }
    for (name, value) in attrs {
        out.push(' ');
        out.push_str(name);
        out.push_str("='");
        escape_into(value, &mut out);
        out.push('\'');
    }
    if elements.is_empty() {
        out.push_str("/>");
        return out;
    }
    out.push('>');
    for element in elements {
        out.push_str(&String::from_utf8_lossy(element));
    }
    out.push_str("</body>");
    out
}

/// A `type='terminate'` body with an optional binding `condition` (XEP-0124 §17.2).
pub fn terminate(condition: Option<&str>, elements: &[Vec<u8>]) -> String {
    let mut attrs = vec![("type", "terminate".to_owned())];
    if let Some(condition) = condition {
        attrs.push(("condition", condition.to_owned()));
    }
    render(&attrs, elements)
}

fn escape_into(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_creation_request() {
        let body = parse(
            b"<body content='text/xml; charset=utf-8' hold='1' rid='1573741820' \
              to='example.com' ver='1.6' wait='60' xml:lang='en' xmpp:version='1.0' \
              xmlns='http://jabber.org/protocol/httpbind' xmlns:xmpp='urn:xmpp:xbosh'/>",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(body.rid, Some(1_573_741_820));
        assert_eq!(body.sid, None);
        assert_eq!(body.to.as_deref(), Some("example.com"));
        assert_eq!(body.lang.as_deref(), Some("en"));
        assert_eq!(body.wait, Some(60));
        assert_eq!(body.hold, Some(1));
        assert_eq!(body.ver.as_deref(), Some("1.6"));
        assert_eq!(body.xmpp_version.as_deref(), Some("1.0"));
        assert!(!body.restart && !body.terminate);
        assert!(body.payload.is_empty());
    }

    #[test]
    fn payload_children_keep_their_namespaces() {
        let body = parse(
            b"<?xml version='1.0'?><body rid='5' sid='abc' xmlns='http://jabber.org/protocol/httpbind'>\
              <message xmlns='jabber:client' to='a@b'><body>hi &amp; bye</body></message>\n\
              <auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>\
              </body>",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(body.sid.as_deref(), Some("abc"));
        assert_eq!(body.payload.len(), 2);
        let message: Element = String::from_utf8_lossy(&body.payload[0])
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(message.ns(), ns::CLIENT);
        assert_eq!(
            message
                .get_child("body", ns::CLIENT)
                .map(Element::text)
                .as_deref(),
            Some("hi & bye")
        );
        let auth: Element = String::from_utf8_lossy(&body.payload[1])
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(auth.attr("mechanism"), Some("PLAIN"));
        assert_eq!(auth.text(), "AGEAYg==");
    }

    #[test]
    fn unqualified_stanzas_are_jabber_client() {
        let body = parse(
            b"<body rid='5' sid='abc' xmlns='http://jabber.org/protocol/httpbind'>\
              <message to='a@b'><body>hi</body><x xmlns='urn:x'><y/></x></message></body>",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let message: Element = String::from_utf8_lossy(&body.payload[0])
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(message.ns(), ns::CLIENT);
        assert!(message.has_child("body", ns::CLIENT));
        let x = message
            .get_child("x", "urn:x")
            .unwrap_or_else(|| panic!("no x"));
        assert!(x.has_child("y", "urn:x"));
    }

    #[test]
    fn restart_terminate_pause() {
        let restart = parse(
            b"<body rid='7' sid='s' xmpp:restart='true' xmlns:xmpp='urn:xmpp:xbosh' \
              xmlns='http://jabber.org/protocol/httpbind'/>",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(restart.restart);
        let end = parse(
            b"<body rid='8' sid='s' type='terminate' xmlns='http://jabber.org/protocol/httpbind'>\
              <presence xmlns='jabber:client' type='unavailable'/></body>",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(end.terminate);
        assert_eq!(end.payload.len(), 1);
        let pause = parse(
            b"<body rid='9' sid='s' pause='60' xmlns='http://jabber.org/protocol/httpbind'/>",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(pause.pause, Some(60));
    }

    #[test]
    fn malformed_bodies() {
        let cases: &[&[u8]] = &[
            b"",
            b"<body",
            b"not xml",
            b"<body xmlns='urn:other'/>",
            b"<html/>",
            b"<body xmlns='http://jabber.org/protocol/httpbind' rid='x'/>",
            b"<body xmlns='http://jabber.org/protocol/httpbind'>text</body>",
            b"<body xmlns='http://jabber.org/protocol/httpbind'><a></body>",
            b"<body xmlns='http://jabber.org/protocol/httpbind'/><body xmlns='http://jabber.org/protocol/httpbind'/>",
            b"<body xmlns='http://jabber.org/protocol/httpbind' rid='-1'/>",
        ];
        for case in cases {
            assert!(parse(case).is_err(), "{}", String::from_utf8_lossy(case));
        }
        let mut deep = String::from("<body xmlns='http://jabber.org/protocol/httpbind'>");
        deep.push_str(&"<a xmlns='urn:x'>".repeat(100));
        deep.push_str(&"</a>".repeat(100));
        deep.push_str("</body>");
        assert!(parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn rendered_bodies_parse_back() {
        let features =
            b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"
                .to_vec();
        let text = render(
            &[
                ("sid", "a'b<".to_owned()),
                ("xmpp:version", "1.0".to_owned()),
            ],
            &[features],
        );
        let el: Element = text.parse().unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(el.name(), "body");
        assert_eq!(el.ns(), NS_HTTPBIND);
        assert_eq!(el.attr("sid"), Some("a'b<"));
        assert!(el.has_child("features", NS_STREAM));
        let end: Element = terminate(Some("item-not-found"), &[])
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(end.attr("type"), Some("terminate"));
        assert_eq!(end.attr("condition"), Some("item-not-found"));
        assert_eq!(
            render(&[], &[]),
            format!("<body xmlns='{NS_HTTPBIND}' xmlns:stream='{NS_STREAM}'/>")
        );
    }
}
