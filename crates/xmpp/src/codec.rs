//! The sans-I/O XML stream codec: bytes in, stream events out, with limits; and serialisation.
//!
//! [`StreamParser`] owns everything between the socket and a parsed stanza: the restricted-XML
//! rules of RFC 6120 §11 (no DTD, comments, processing instructions or entity references; UTF-8
//! only), the stream header checks of §4.7–§4.8 (stream namespace, content namespace, version),
//! the stream restart of §5.4.3.3 and §6.4.6, and our per-stanza limits (byte size, nesting
//! depth, attributes per element), each mapped to the §4.9.3 stream error the peer receives.
//!
//! It sits on rxml's [`RawParser`] and resolves namespaces itself rather than using rxml's
//! `Parser` or minidom's `TreeBuilder`, because it needs three things they hide: the stream
//! header's default namespace (the content namespace, §4.8.2), a per-attribute count that
//! includes namespace declarations, and a way to drop whitespace keepalives between stanzas
//! instead of appending them to the stream root forever. Bytes are handed to rxml only up to the
//! remaining stanza budget, so an oversized stanza fails as soon as it crosses the limit, never
//! after being buffered whole.
//!
//! The writing half ([`stream_header`], [`to_bytes`], [`STREAM_CLOSE`]) produces the bytes we
//! send, escaping attribute values and text so a peer-supplied value can never break out of its
//! place.

use bytes::{Buf, BytesMut};
use minidom::Element;
use rxml::error::EndOrError;
use rxml::parser::CommentMode;
use rxml::{Namespace, NcName, Options, Parse, RawEvent, RawParser, WithOptions};

use crate::error::{StreamError, StreamErrorCondition};
use crate::ns;

/// Longest single name, attribute value or reference rxml accepts. rxml preallocates a scratch
/// buffer of this size while parsing, so it stays small; JIDs (≤ 3071 bytes) and ids fit easily.
const MAX_TOKEN_LENGTH: usize = 8192;

/// Per-stream parsing limits; each violation is a `<policy-violation/>` stream error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest first-level element (stanza or nonza), counted in raw bytes from the `<` of its
    /// start tag to the `>` of its end tag. Also bounds the stream header.
    pub max_stanza_size: usize,
    /// Deepest nesting inside a first-level element; the first-level element itself is depth 1.
    pub max_depth: usize,
    /// Most attributes on one element, namespace declarations included.
    pub max_attributes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_stanza_size: 262_144,
            max_depth: 32,
            max_attributes: 64,
        }
    }
}

impl Limits {
    /// A smaller `max_stanza_size` for streams that have not authenticated yet: nothing a client
    /// legitimately sends before SASL success (STARTTLS, auth, SASL responses) comes near it.
    pub const PRE_AUTH_STANZA_SIZE: usize = 16_384;
}

/// The attributes of a received stream header (RFC 6120 §4.7).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct StreamHeader {
    /// `to`: the domain the peer wants to reach.
    pub to: Option<String>,
    /// `from`: the peer's claimed address.
    pub from: Option<String>,
    /// `id`: the stream id (only set by the receiving entity).
    pub id: Option<String>,
    /// `version`; `None` means a pre-1.0 peer (§4.7.5), left to the caller to accept or refuse.
    pub version: Option<String>,
    /// `xml:lang`: the default language of the stream.
    pub lang: Option<String>,
    /// The default (content) namespace declared on the header.
    pub ns: Option<String>,
}

/// What the parser produced from the bytes fed so far.
#[derive(Debug)]
pub enum StreamEvent {
    /// The peer opened (or, after a reset, reopened) its stream.
    Open(StreamHeader),
    /// A complete first-level element: a stanza, or a nonza such as `<starttls/>` or `<auth/>`.
    Stanza(Element),
    /// The peer closed its stream with `</stream:stream>`.
    Close,
}

/// Where the stream is; failure and closure are terminal until [`StreamParser::reset`].
#[derive(Debug)]
enum Phase {
    /// Waiting for the (optional) XML declaration and the stream header.
    AwaitingHeader,
    /// Header received; first-level elements follow.
    Open,
    /// `</stream:stream>` received; later bytes are ignored.
    Closed,
    /// A stream error occurred; it is returned again on every call and later bytes are ignored.
    Failed(StreamError),
}

/// Namespace declarations made on one open element.
#[derive(Debug, Default)]
struct Scope {
    /// `xmlns='..'` on this element; `Some("")` undeclares the default namespace.
    default: Option<String>,
    /// `xmlns:prefix='..'` on this element.
    prefixes: Vec<(NcName, String)>,
}

/// An element whose start tag is being read (between `<name` and `>`).
#[derive(Debug)]
struct Head {
    prefix: Option<NcName>,
    local: NcName,
    /// Attributes other than namespace declarations, still with raw prefixes.
    attrs: Vec<(Option<NcName>, NcName, String)>,
    scope: Scope,
    /// Attributes seen so far, namespace declarations included.
    count: usize,
}

/// The sans-I/O XMPP stream parser: feed received bytes, pull [`StreamEvent`]s.
#[derive(Debug)]
pub struct StreamParser {
    content_ns: &'static str,
    limits: Limits,
    parser: RawParser,
    /// Bytes fed but not yet handed to rxml.
    buf: BytesMut,
    phase: Phase,
    /// One scope per open element, the stream root first.
    scopes: Vec<Scope>,
    head: Option<Head>,
    /// The first-level element being built and its open descendants, outermost first.
    stack: Vec<Element>,
    /// Bytes rxml consumed that belong to no emitted event yet (a partly read token).
    since_event: usize,
    /// Bytes of the events of the first-level element being read, if one is.
    stanza_bytes: Option<usize>,
    /// Character data other than whitespace was read between stanzas. The error is raised at
    /// the next event rather than at once because how much text rxml reports before a later
    /// syntax error depends on how the bytes were split; deferring keeps the reported error
    /// independent of packet boundaries.
    stray_text: bool,
    /// The stream root's qualified name as sent (`stream:stream`), to re-prime a fresh rxml
    /// parser when the connection is idle (see [`StreamParser::shrink`]).
    root_qname: Option<String>,
    /// The rxml parser was replaced by an unprimed one while idle.
    dormant: bool,
}

impl StreamParser {
    /// A parser expecting a stream header whose default namespace is `content_ns` (ns::CLIENT
    /// for c2s, ns::SERVER for s2s). First-level elements in other namespaces (STARTTLS, SASL,
    /// stream management) are fine: only the header's default namespace is checked.
    pub fn new(content_ns: &'static str, limits: Limits) -> Self {
        Self {
            content_ns,
            limits,
            parser: new_raw_parser(),
            buf: BytesMut::new(),
            phase: Phase::AwaitingHeader,
            scopes: Vec::new(),
            head: None,
            stack: Vec::new(),
            since_event: 0,
            stanza_bytes: None,
            stray_text: false,
            root_qname: None,
            dormant: false,
        }
    }

    /// Replaces the limits, e.g. to raise `max_stanza_size` after authentication. Applies from
    /// the next byte parsed.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Appends received bytes (copied into an internal buffer). Ignored once the stream has
    /// failed or closed: nothing after a stream error is processed.
    pub fn feed(&mut self, bytes: &[u8]) {
        if matches!(self.phase, Phase::AwaitingHeader | Phase::Open) {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The next complete event, `Ok(None)` if more bytes are needed. After an `Err` the parser
    /// is dead and keeps returning the same error.
    pub fn next_event(&mut self) -> Result<Option<StreamEvent>, StreamError> {
        match &self.phase {
            Phase::Failed(error) => return Err(error.clone()),
            Phase::Closed => return Ok(None),
            Phase::AwaitingHeader | Phase::Open => {}
        }
        match self.pump() {
            Ok(event) => Ok(event),
            Err(error) => {
                self.fail(error.clone());
                Err(error)
            }
        }
    }

    /// Restarts the stream (RFC 6120 §5.4.3.3 after STARTTLS, §6.4.6 after SASL success): drops
    /// all state and buffered bytes and expects a new XML declaration and stream header. The
    /// limits are kept. Discarding bytes that arrived before the restart is deliberate: data a
    /// peer pipelined behind `<starttls/>` was sent in the clear and must never be acted on as if
    /// it came over TLS.
    pub fn reset(&mut self) {
        self.parser = new_raw_parser();
        self.buf = BytesMut::new();
        self.phase = Phase::AwaitingHeader;
        self.scopes = Vec::new();
        self.head = None;
        self.stack = Vec::new();
        self.since_event = 0;
        self.stanza_bytes = None;
        self.stray_text = false;
        self.root_qname = None;
        self.dormant = false;
    }

    /// Bytes fed but not yet consumed (for memory accounting; 0 when idle).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Releases buffer capacity when idle, so an idle connection holds no read buffer.
    ///
    /// rxml keeps a scratch buffer of `max_token_length` bytes once it has read a token and
    /// never gives it back. Between stanzas the parser's only state is "inside the stream
    /// root" (namespaces are resolved here, not by rxml), so an idle parser is replaced by a
    /// fresh one primed with the root's start tag: same behaviour, no scratch buffer.
    pub fn shrink(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        self.parser.release_temporaries();
        if self.stack.is_empty() {
            self.stack = Vec::new();
        }
        let idle = matches!(self.phase, Phase::Open)
            && self.scopes.len() == 1
            && self.head.is_none()
            && self.stack.is_empty()
            && self.buf.is_empty()
            && self.since_event == 0
            && self.stanza_bytes.is_none()
            && !self.stray_text;
        if idle && self.root_qname.is_some() && !self.dormant {
            // A parser that has lexed nothing holds no scratch buffer; it is primed with the
            // root's start tag only when the next bytes arrive (`wake`), so at rest it costs
            // nothing.
            self.parser = new_raw_parser();
            self.dormant = true;
        }
    }

    /// Primes a dormant parser (see [`StreamParser::shrink`]) before it reads stanza bytes.
    fn wake(&mut self) {
        if !self.dormant {
            return;
        }
        self.dormant = false;
        let Some(root) = self.root_qname.as_deref() else {
            return;
        };
        let start = format!("<{root}>");
        let mut bytes = start.as_bytes();
        // Consume the priming tag's events; they were already handled for the real root.
        while let Ok(Some(_)) = self.parser.parse(&mut bytes, false) {}
    }

    /// Hands buffered bytes to rxml, at most as many as the stanza budget allows, until an
    /// event is complete or the buffer is empty.
    fn pump(&mut self) -> Result<Option<StreamEvent>, StreamError> {
        if !self.buf.is_empty() {
            self.wake();
        }
        loop {
            // One byte beyond the budget is enough to prove the budget is exceeded.
            let room = self
                .limits
                .max_stanza_size
                .saturating_sub(self.in_progress())
                .saturating_add(1);
            let take = room.min(self.buf.len());
            let Some(mut chunk) = self.buf.get(..take) else {
                return Ok(None);
            };
            let result = self.parser.parse(&mut chunk, false);
            let consumed = take.saturating_sub(chunk.len());
            self.buf.advance(consumed);
            self.since_event = self.since_event.saturating_add(consumed);
            self.check_size()?;
            match result {
                Ok(Some(event)) => {
                    if let Some(out) = self.account_and_handle(event)? {
                        if matches!(out, StreamEvent::Close) {
                            self.phase = Phase::Closed;
                            self.buf = BytesMut::new();
                        }
                        return Ok(Some(out));
                    }
                }
                // rxml only reports the end of input when told the input ended, which a stream
                // never does; treat it like "need more data".
                Ok(None) => return Ok(None),
                Err(EndOrError::NeedMoreData) => {
                    if self.buf.is_empty() || consumed == 0 {
                        if self.buf.is_empty() {
                            // Reclaim the whole allocation's space for the next feed.
                            self.buf.clear();
                        }
                        return Ok(None);
                    }
                }
                Err(EndOrError::Error(error)) => return Err(map_xml_error(error)),
            }
        }
    }

    /// Bytes of the first-level element (or stream header) read so far, complete events and
    /// the partial one.
    fn in_progress(&self) -> usize {
        self.stanza_bytes
            .unwrap_or(0)
            .saturating_add(self.since_event)
    }

    fn check_size(&self) -> Result<(), StreamError> {
        if self.in_progress() > self.limits.max_stanza_size {
            return Err(policy_violation(format!(
                "stanza larger than max_stanza_size ({} bytes)",
                self.limits.max_stanza_size
            )));
        }
        Ok(())
    }

    fn account_and_handle(&mut self, event: RawEvent) -> Result<Option<StreamEvent>, StreamError> {
        let len = event.metrics().len();
        self.since_event = self.since_event.saturating_sub(len);
        if matches!(event, RawEvent::ElementHeadOpen(..)) && self.scopes.len() == 1 {
            self.stanza_bytes = Some(0);
        }
        if let Some(bytes) = self.stanza_bytes.as_mut() {
            *bytes = bytes.saturating_add(len);
        }
        self.handle(event)
    }

    fn handle(&mut self, event: RawEvent) -> Result<Option<StreamEvent>, StreamError> {
        if self.stray_text && !matches!(event, RawEvent::Text(..)) {
            return Err(StreamError::new(StreamErrorCondition::BadFormat)
                .with_text("character data between stanzas"));
        }
        match event {
            RawEvent::XmlDeclaration(..) => Ok(None),
            RawEvent::ElementHeadOpen(_, (prefix, local)) => {
                // scopes.len() is the depth of the new element below the stream root.
                if self.scopes.len() > self.limits.max_depth {
                    return Err(policy_violation(format!(
                        "elements nested deeper than max_depth ({})",
                        self.limits.max_depth
                    )));
                }
                self.head = Some(Head {
                    prefix,
                    local,
                    attrs: Vec::new(),
                    scope: Scope::default(),
                    count: 0,
                });
                Ok(None)
            }
            RawEvent::Attribute(_, (prefix, local), value) => {
                let max_attributes = self.limits.max_attributes;
                let head = self.head.as_mut().ok_or_else(out_of_order)?;
                head.count = head.count.saturating_add(1);
                if head.count > max_attributes {
                    return Err(policy_violation(format!(
                        "more than max_attributes ({max_attributes}) attributes on one element"
                    )));
                }
                add_attribute(head, prefix, local, value)?;
                Ok(None)
            }
            RawEvent::ElementHeadClose(_) => {
                let head = self.head.take().ok_or_else(out_of_order)?;
                self.close_head(head)
            }
            RawEvent::ElementFoot(_) => self.close_element(),
            RawEvent::Text(_, text) => {
                if let Some(top) = self.stack.last_mut() {
                    top.append_text(text);
                } else if !text.chars().all(is_xml_whitespace) {
                    // Whitespace between stanzas is a keepalive (§4.6.1) and is dropped;
                    // anything else has no meaning at the stream level.
                    self.stray_text = true;
                }
                Ok(None)
            }
        }
    }

    /// The start tag is complete: resolve its namespaces and open the element.
    fn close_head(&mut self, head: Head) -> Result<Option<StreamEvent>, StreamError> {
        let Head {
            prefix,
            local,
            attrs,
            scope,
            ..
        } = head;
        self.scopes.push(scope);
        let element_ns = self.resolve_prefix(prefix.as_ref())?;
        let mut resolved = rxml::AttrMap::new();
        for (attr_prefix, name, value) in attrs {
            // Unprefixed attributes are in no namespace, whatever the default (XML-NS §6.2).
            let attr_ns = match attr_prefix {
                None => Namespace::NONE,
                Some(p) => Namespace::from(self.resolve_prefix(Some(&p))?),
            };
            if resolved.insert(attr_ns, name, value).is_some() {
                return Err(not_well_formed("duplicate attribute"));
            }
        }
        if self.scopes.len() == 1 {
            self.root_qname = Some(match &prefix {
                Some(p) => format!("{p}:{local}"),
                None => local.to_string(),
            });
            let header = self.stream_header(&element_ns, &local, &resolved)?;
            self.phase = Phase::Open;
            return Ok(Some(StreamEvent::Open(header)));
        }
        let mut element = Element::bare(local.as_str(), element_ns);
        *element.attrs_mut() = resolved;
        self.stack.push(element);
        Ok(None)
    }

    /// An end tag (or the end of an empty-element tag).
    fn close_element(&mut self) -> Result<Option<StreamEvent>, StreamError> {
        self.scopes.pop();
        if self.scopes.is_empty() {
            return Ok(Some(StreamEvent::Close));
        }
        let element = self.stack.pop().ok_or_else(out_of_order)?;
        match self.stack.last_mut() {
            Some(parent) => {
                parent.append_child(element);
                Ok(None)
            }
            None => {
                self.stanza_bytes = None;
                Ok(Some(StreamEvent::Stanza(element)))
            }
        }
    }

    /// Checks the stream root (§4.7, §4.8) and extracts its attributes.
    fn stream_header(
        &self,
        element_ns: &str,
        local: &NcName,
        attrs: &rxml::AttrMap,
    ) -> Result<StreamHeader, StreamError> {
        if element_ns != ns::STREAM || local.as_str() != "stream" {
            return Err(StreamError::new(StreamErrorCondition::InvalidNamespace)
                .with_text("the root element must be stream in http://etherx.jabber.org/streams"));
        }
        let content_ns = self.resolve_default();
        if content_ns != self.content_ns {
            return Err(StreamError::new(StreamErrorCondition::InvalidNamespace)
                .with_text(format!("the content namespace must be {}", self.content_ns)));
        }
        let plain = |name: &str| attrs.get(&Namespace::NONE, name).cloned();
        let version = plain("version");
        if let Some(v) = &version
            && !is_version_1(v)
        {
            return Err(StreamError::new(StreamErrorCondition::UnsupportedVersion)
                .with_text("only XMPP version 1.x is supported"));
        }
        Ok(StreamHeader {
            to: plain("to"),
            from: plain("from"),
            id: plain("id"),
            version,
            lang: attrs.get(rxml::XMLNS_XML, "lang").cloned(),
            ns: Some(content_ns.to_owned()),
        })
    }

    /// The namespace bound to `prefix` (the default namespace for `None`) in the open scopes.
    fn resolve_prefix(&self, prefix: Option<&NcName>) -> Result<String, StreamError> {
        let Some(prefix) = prefix else {
            return Ok(self.resolve_default().to_owned());
        };
        if prefix.as_str() == "xml" {
            return Ok(rxml::XMLNS_XML.to_owned());
        }
        self.scopes
            .iter()
            .rev()
            .flat_map(|scope| scope.prefixes.iter())
            .find(|(p, _)| p == prefix)
            .map(|(_, uri)| uri.clone())
            .ok_or_else(|| {
                StreamError::new(StreamErrorCondition::BadNamespacePrefix)
                    .with_text(format!("undeclared namespace prefix {prefix}"))
            })
    }

    /// The default namespace in the open scopes; empty when none is declared.
    fn resolve_default(&self) -> &str {
        self.scopes
            .iter()
            .rev()
            .find_map(|scope| scope.default.as_deref())
            .unwrap_or("")
    }

    /// Enters the terminal failed state and frees everything the stream held.
    fn fail(&mut self, error: StreamError) {
        self.reset();
        self.phase = Phase::Failed(error);
    }
}

/// A namespace declaration or an ordinary attribute read inside a start tag.
fn add_attribute(
    head: &mut Head,
    prefix: Option<NcName>,
    local: NcName,
    value: String,
) -> Result<(), StreamError> {
    match prefix {
        None if local.as_str() == "xmlns" => {
            if head.scope.default.replace(value).is_some() {
                return Err(not_well_formed("duplicate default namespace declaration"));
            }
        }
        Some(p) if p.as_str() == "xmlns" => {
            // rxml already rejects binding `xmlns`, rebinding `xml` and empty prefix bindings;
            // the xmlns namespace name itself must not be bound either (XML-NS §3).
            if value == rxml::XMLNS_XMLNS {
                return Err(not_well_formed("the xmlns namespace cannot be bound"));
            }
            if head.scope.prefixes.iter().any(|(q, _)| *q == local) {
                return Err(not_well_formed("duplicate namespace declaration"));
            }
            head.scope.prefixes.push((local, value));
        }
        prefix => head.attrs.push((prefix, local, value)),
    }
    Ok(())
}

fn new_raw_parser() -> RawParser {
    let mut parser = <RawParser as WithOptions>::with_options(Options {
        max_token_length: MAX_TOKEN_LENGTH,
        comments: CommentMode::Reject,
        ..Options::default()
    });
    // Emit text as soon as it is read: a whitespace keepalive then becomes an event at once and
    // is dropped, instead of sitting in rxml's buffer counted against the next stanza.
    parser.set_text_buffering(false);
    parser
}

/// Maps an rxml error to the stream error RFC 6120 §4.9.3 and §11 prescribe.
///
/// rxml reports some distinct cases with one variant and a fixed message; the messages matched
/// here are pinned by this module's tests, so an rxml upgrade that changes them fails loudly.
fn map_xml_error(error: rxml::Error) -> StreamError {
    use rxml::Error as X;
    match error {
        X::RestrictedXml("long name or reference" | "event too long") => policy_violation(format!(
            "name, attribute value or reference longer than {MAX_TOKEN_LENGTH} bytes"
        )),
        X::RestrictedXml("only utf-8 encoding is allowed") => {
            StreamError::new(StreamErrorCondition::UnsupportedEncoding)
                .with_text("only UTF-8 is supported")
        }
        X::RestrictedXml(msg) => {
            StreamError::new(StreamErrorCondition::RestrictedXml).with_text(msg)
        }
        X::UndeclaredEntity => StreamError::new(StreamErrorCondition::RestrictedXml)
            .with_text("entity references are not allowed"),
        // `<!` not followed by `--` or `[CDATA[` is a markup declaration: DOCTYPE, ENTITY,
        // ELEMENT or ATTLIST, all forbidden by §11.1.
        X::InvalidSyntax("malformed cdata or comment section start") => {
            StreamError::new(StreamErrorCondition::RestrictedXml)
                .with_text("document type declarations are not allowed")
        }
        X::UndeclaredNamespacePrefix(_) => {
            StreamError::new(StreamErrorCondition::BadNamespacePrefix).with_text(error.to_string())
        }
        other => not_well_formed(other.to_string()),
    }
}

fn policy_violation(text: String) -> StreamError {
    StreamError::new(StreamErrorCondition::PolicyViolation).with_text(text)
}

fn not_well_formed(text: impl Into<String>) -> StreamError {
    StreamError::new(StreamErrorCondition::NotWellFormed).with_text(text)
}

/// rxml emits events in document order; this only guards against a broken invariant.
fn out_of_order() -> StreamError {
    StreamError::new(StreamErrorCondition::InternalServerError)
        .with_text("parser events out of order")
}

fn is_xml_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// `1.x` with a numeric minor version (§4.7.5: the major version must match).
fn is_version_1(version: &str) -> bool {
    version.split_once('.').is_some_and(|(major, minor)| {
        major == "1" && !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit())
    })
}

/// The closing tag of our side of the stream.
pub const STREAM_CLOSE: &str = "</stream:stream>";

/// Serialises the opening of our side of the stream: `<?xml version='1.0'?><stream:stream
/// xmlns='{content_ns}' xmlns:stream='http://etherx.jabber.org/streams' id='..' from='..'
/// [to='..'] version='1.0' xml:lang='en'>` (values escaped). `id`, `from` and `to` are written
/// when set; `version` and `lang` default to `1.0` and `en`; `header.ns` is ignored in favour of
/// `content_ns`.
pub fn stream_header(content_ns: &str, header: &StreamHeader) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("<?xml version='1.0'?><stream:stream xmlns='");
    escape_attr_into(content_ns, &mut out);
    out.push_str("' xmlns:stream='");
    out.push_str(ns::STREAM);
    out.push('\'');
    push_header_attrs(&mut out, header);
    out.push('>');
    out
}

/// RFC 7395 §3.3.2: the WebSocket `<open/>` element that stands for a stream header.
pub fn framing_open(header: &StreamHeader) -> String {
    let mut out = String::with_capacity(192);
    out.push_str("<open xmlns='");
    out.push_str(ns::FRAMING);
    out.push('\'');
    push_header_attrs(&mut out, header);
    out.push_str("/>");
    out
}

fn push_header_attrs(out: &mut String, header: &StreamHeader) {
    let optional = [
        ("id", header.id.as_deref()),
        ("from", header.from.as_deref()),
        ("to", header.to.as_deref()),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            push_attr(out, name, value);
        }
    }
    push_attr(out, "version", header.version.as_deref().unwrap_or("1.0"));
    push_attr(out, "xml:lang", header.lang.as_deref().unwrap_or("en"));
}

/// Serialises one element (a stanza, or a nonza like `<features/>`) with its namespace declared
/// on it, escaping attribute values and text. Characters XML 1.0 cannot carry (C0 controls other
/// than tab, CR and LF; U+FFFE, U+FFFF) are dropped, so the output is always well-formed.
pub fn to_bytes(element: &Element) -> Vec<u8> {
    let mut out = String::with_capacity(256);
    write_element(element, None, &mut out);
    out.into_bytes()
}

/// Writes `element`; `parent_ns` is the default namespace in force where it is written.
fn write_element(element: &Element, parent_ns: Option<&str>, out: &mut String) {
    let element_ns = element.ns();
    out.push('<');
    out.push_str(element.name());
    if parent_ns != Some(element_ns.as_str()) {
        push_attr(out, "xmlns", &element_ns);
    }
    // Attributes in a namespace other than xml: need a prefix; declare one per namespace on
    // this element so the declaration is always in scope.
    let mut prefixes: Vec<&str> = Vec::new();
    for ((attr_ns, name), value) in element.attrs() {
        if attr_ns.is_none() {
            push_attr(out, name.as_str(), value);
        } else if attr_ns.as_str() == rxml::XMLNS_XML {
            out.push_str(" xml:");
            out.push_str(name.as_str());
            out.push_str("='");
            escape_attr_into(value, out);
            out.push('\'');
        } else {
            let index = match prefixes.iter().position(|p| *p == attr_ns.as_str()) {
                Some(index) => index,
                None => {
                    out.push_str(&format!(" xmlns:ns{}='", prefixes.len()));
                    escape_attr_into(attr_ns.as_str(), out);
                    out.push('\'');
                    prefixes.push(attr_ns.as_str());
                    prefixes.len().saturating_sub(1)
                }
            };
            out.push_str(&format!(" ns{index}:{}='", name.as_str()));
            escape_attr_into(value, out);
            out.push('\'');
        }
    }
    let mut nodes = element.nodes().peekable();
    if nodes.peek().is_none() {
        out.push_str("/>");
        return;
    }
    out.push('>');
    for node in nodes {
        match node {
            minidom::Node::Element(child) => write_element(child, Some(&element_ns), out),
            minidom::Node::Text(text) => escape_text_into(text, out),
        }
    }
    out.push_str("</");
    out.push_str(element.name());
    out.push('>');
}

fn push_attr(out: &mut String, name: &str, value: &str) {
    out.push(' ');
    out.push_str(name);
    out.push_str("='");
    escape_attr_into(value, out);
    out.push('\'');
}

/// Whether XML 1.0 can carry `c` at all (the `Char` production).
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}')
        || c >= '\u{10000}'
}

/// Appends `text` escaped for character data. `>` is escaped too (for `]]>`), and CR as a
/// reference because a literal CR would be normalised to LF by the reader.
pub(crate) fn escape_text_into(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#xD;"),
            c if is_xml_char(c) => out.push(c),
            _ => {}
        }
    }
}

/// Appends `value` escaped for an attribute value in either quote style. Tab, LF and CR are
/// written as references because attribute-value normalisation would turn them into spaces.
pub(crate) fn escape_attr_into(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#x9;"),
            '\n' => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            c if is_xml_char(c) => out.push(c),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0' \
        xml:lang='en'>";

    fn c2s() -> StreamParser {
        StreamParser::new(ns::CLIENT, Limits::default())
    }

    /// Drains every event from `parser`, stopping at the first error.
    fn drain(parser: &mut StreamParser) -> (Vec<StreamEvent>, Option<StreamError>) {
        let mut events = Vec::new();
        loop {
            match parser.next_event() {
                Ok(Some(event)) => events.push(event),
                Ok(None) => return (events, None),
                Err(error) => return (events, Some(error)),
            }
        }
    }

    /// Feeds `input` in one piece and returns the events and the error, if any.
    fn parse_all(input: &[u8]) -> (Vec<StreamEvent>, Option<StreamError>) {
        let mut parser = c2s();
        parser.feed(input);
        drain(&mut parser)
    }

    /// Feeds `input` in pieces of `step` bytes, draining after each.
    fn parse_chunked(
        parser: &mut StreamParser,
        input: &[u8],
        step: usize,
    ) -> (Vec<StreamEvent>, Option<StreamError>) {
        let mut events = Vec::new();
        for piece in input.chunks(step) {
            parser.feed(piece);
            let (mut more, error) = drain(parser);
            events.append(&mut more);
            if error.is_some() {
                return (events, error);
            }
        }
        (events, None)
    }

    /// The condition of the error `input` (after a valid header) produces.
    fn error_after_header(body: &str) -> StreamError {
        let (events, error) = parse_all(format!("{HEADER}{body}").as_bytes());
        assert!(matches!(events.first(), Some(StreamEvent::Open(_))));
        error.unwrap_or_else(|| panic!("no error for {body:?}"))
    }

    fn condition_after_header(body: &str) -> StreamErrorCondition {
        error_after_header(body).condition
    }

    fn stanzas(events: &[StreamEvent]) -> Vec<&Element> {
        events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Stanza(el) => Some(el),
                _ => None,
            })
            .collect()
    }

    /// Events in a comparable form (StreamEvent is not PartialEq because Element's equality
    /// ignores prefixes, which is exactly what we want here).
    fn describe(events: &[StreamEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                StreamEvent::Open(h) => format!("open {h:?}"),
                StreamEvent::Stanza(el) => {
                    format!("stanza {}", String::from_utf8_lossy(&to_bytes(el)))
                }
                StreamEvent::Close => "close".to_owned(),
            })
            .collect()
    }

    #[test]
    fn parses_header_stanzas_and_close() {
        let input = format!(
            "{HEADER}<message to='a@example.org' type='chat'><body>hi &amp; bye</body></message>\
             <presence/></stream:stream>"
        );
        let (events, error) = parse_all(input.as_bytes());
        assert_eq!(error, None);
        assert_eq!(events.len(), 4);
        let Some(StreamEvent::Open(header)) = events.first() else {
            panic!("expected a header, got {events:?}");
        };
        assert_eq!(
            *header,
            StreamHeader {
                to: Some("example.org".to_owned()),
                from: None,
                id: None,
                version: Some("1.0".to_owned()),
                lang: Some("en".to_owned()),
                ns: Some(ns::CLIENT.to_owned()),
            }
        );
        let found = stanzas(&events);
        let message = found.first().copied().expect("message");
        assert!(message.is("message", ns::CLIENT));
        assert_eq!(message.attr("to"), Some("a@example.org"));
        assert_eq!(
            message.get_child("body", ns::CLIENT).map(Element::text),
            Some("hi & bye".to_owned())
        );
        assert!(found.get(1).is_some_and(|p| p.is("presence", ns::CLIENT)));
        assert!(matches!(events.last(), Some(StreamEvent::Close)));
    }

    #[test]
    fn header_without_declaration_or_version_is_accepted() {
        let (events, error) = parse_all(
            b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
        );
        assert_eq!(error, None);
        let Some(StreamEvent::Open(header)) = events.first() else {
            panic!("expected a header");
        };
        assert_eq!(header.version, None);
    }

    #[test]
    fn accepts_other_first_level_namespaces() {
        let (events, error) = parse_all(
            format!(
                "{HEADER}<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\
                 <stream:features/>"
            )
            .as_bytes(),
        );
        assert_eq!(error, None);
        let found = stanzas(&events);
        assert!(found.first().is_some_and(|e| e.is("starttls", ns::TLS)));
        assert!(found.get(1).is_some_and(|e| e.is("features", ns::STREAM)));
    }

    #[test]
    fn keeps_unknown_payloads_and_namespaced_attributes() {
        let (events, error) = parse_all(
            format!(
                "{HEADER}<message xmlns:x='urn:x'><x:thing x:a='1' b='2'><deep xmlns='urn:y'>\
                 t</deep></x:thing></message>"
            )
            .as_bytes(),
        );
        assert_eq!(error, None);
        let message = stanzas(&events).first().copied().expect("message");
        let thing = message.get_child("thing", "urn:x").expect("thing");
        assert_eq!(thing.attr_ns("urn:x", "a"), Some("1"));
        assert_eq!(thing.attr("b"), Some("2"));
        assert_eq!(
            thing.get_child("deep", "urn:y").map(Element::text),
            Some("t".to_owned())
        );
    }

    #[test]
    fn multi_stanza_stream_split_at_every_boundary() {
        let input = format!(
            "{HEADER}\n <iq type='get' id='a&apos;1'><query xmlns='jabber:iq:roster'/></iq> \
             <message><body>caf\u{e9} \u{1F600} &lt;x&gt; <![CDATA[<raw>]]></body></message>\
             \r\n<presence><show>away</show></presence></stream:stream>"
        );
        let bytes = input.as_bytes();
        let (whole, error) = parse_all(bytes);
        assert_eq!(error, None);
        let expected = describe(&whole);
        assert_eq!(expected.len(), 5);

        let mut parser = c2s();
        let (bytewise, error) = parse_chunked(&mut parser, bytes, 1);
        assert_eq!(error, None);
        assert_eq!(describe(&bytewise), expected);

        for split in 0..=bytes.len() {
            let (first, second) = bytes.split_at(split);
            let mut parser = c2s();
            parser.feed(first);
            let (mut events, error) = drain(&mut parser);
            assert_eq!(error, None, "split at {split}");
            parser.feed(second);
            let (mut rest, error) = drain(&mut parser);
            assert_eq!(error, None, "split at {split}");
            events.append(&mut rest);
            assert_eq!(describe(&events), expected, "split at {split}");
        }
    }

    #[test]
    fn not_well_formed_xml() {
        for body in [
            "<message></iq>",
            "<message><body></message>",
            "<message a='1' a='2'/>",
            "<message xmlns:p='urn:p' xmlns:q='urn:p' p:a='1' q:a='2'/>",
            "<message a=1/>",
            "<<",
            "</stream:foo>",
        ] {
            assert_eq!(
                condition_after_header(body),
                StreamErrorCondition::NotWellFormed,
                "{body}"
            );
        }
    }

    #[test]
    fn bad_utf8_is_not_well_formed() {
        let mut input = HEADER.as_bytes().to_vec();
        input.extend_from_slice(b"<message><body>\xff\xfe</body></message>");
        let (_, error) = parse_all(&input);
        assert_eq!(
            error.map(|e| e.condition),
            Some(StreamErrorCondition::NotWellFormed)
        );
    }

    #[test]
    fn restricted_xml() {
        for body in [
            "<message><!-- comment --></message>",
            "<!-- comment -->",
            "<message><body>&custom;</body></message>",
            "<message><?php echo 1; ?></message>",
            "<?pi data?>",
        ] {
            assert_eq!(
                condition_after_header(body),
                StreamErrorCondition::RestrictedXml,
                "{body}"
            );
        }
        for doc in [
            "<?xml version='1.0'?><!DOCTYPE stream:stream>",
            "<!DOCTYPE x [<!ENTITY lol 'lol'>]><stream:stream/>",
            "<?xml version='1.0'?><?pi x?><stream:stream/>",
            "<!-- c --><stream:stream/>",
        ] {
            let (_, error) = parse_all(doc.as_bytes());
            assert_eq!(
                error.map(|e| e.condition),
                Some(StreamErrorCondition::RestrictedXml),
                "{doc}"
            );
        }
    }

    #[test]
    fn non_utf8_declaration_is_unsupported_encoding() {
        let (_, error) = parse_all(b"<?xml version='1.0' encoding='ISO-8859-1'?>");
        assert_eq!(
            error.map(|e| e.condition),
            Some(StreamErrorCondition::UnsupportedEncoding)
        );
    }

    #[test]
    fn invalid_namespace() {
        for doc in [
            "<stream:stream xmlns='jabber:client' xmlns:stream='urn:wrong'>",
            "<stream xmlns='jabber:client'>",
            "<stream:foo xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
            "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>",
            "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>",
        ] {
            let (events, error) = parse_all(doc.as_bytes());
            assert!(events.is_empty(), "{doc}");
            assert_eq!(
                error.map(|e| e.condition),
                Some(StreamErrorCondition::InvalidNamespace),
                "{doc}"
            );
        }
    }

    #[test]
    fn s2s_parser_expects_jabber_server() {
        let mut parser = StreamParser::new(ns::SERVER, Limits::default());
        parser.feed(
            b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
              xmlns:db='jabber:server:dialback' version='1.0'>",
        );
        assert!(matches!(
            parser.next_event(),
            Ok(Some(StreamEvent::Open(_)))
        ));
        let mut parser = StreamParser::new(ns::SERVER, Limits::default());
        parser.feed(HEADER.as_bytes());
        assert_eq!(
            parser.next_event().map_err(|e| e.condition).err(),
            Some(StreamErrorCondition::InvalidNamespace)
        );
    }

    #[test]
    fn undeclared_prefix_is_bad_namespace_prefix() {
        for body in ["<foo:message/>", "<message foo:a='1'/>"] {
            assert_eq!(
                condition_after_header(body),
                StreamErrorCondition::BadNamespacePrefix,
                "{body}"
            );
        }
        let (_, error) = parse_all(b"<stream:stream xmlns='jabber:client' version='1.0'>");
        assert_eq!(
            error.map(|e| e.condition),
            Some(StreamErrorCondition::BadNamespacePrefix)
        );
    }

    #[test]
    fn version_checks() {
        for (version, ok) in [
            ("1.0", true),
            ("1.1", true),
            ("1.10", true),
            ("2.0", false),
            ("0.9", false),
            ("1", false),
            ("1.x", false),
            ("", false),
        ] {
            let doc = format!(
                "<stream:stream xmlns='jabber:client' \
                 xmlns:stream='http://etherx.jabber.org/streams' version='{version}'>"
            );
            let (_, error) = parse_all(doc.as_bytes());
            let expected = (!ok).then_some(StreamErrorCondition::UnsupportedVersion);
            assert_eq!(error.map(|e| e.condition), expected, "{version}");
        }
    }

    #[test]
    fn text_between_stanzas_is_bad_format() {
        assert_eq!(
            condition_after_header("<presence/>hello<presence/>"),
            StreamErrorCondition::BadFormat
        );
        assert_eq!(
            condition_after_header("hello</stream:stream>"),
            StreamErrorCondition::BadFormat
        );
    }

    #[test]
    fn stanza_size_limit_exact_boundary() {
        let stanza = "<message to='a@b'><body>0123456789</body></message>";
        let limits = Limits {
            max_stanza_size: stanza.len(),
            ..Limits::default()
        };
        let mut parser = StreamParser::new(ns::CLIENT, limits);
        parser.feed(format!("{HEADER}{stanza} \n{stanza}").as_bytes());
        let (events, error) = drain(&mut parser);
        assert_eq!(error, None);
        assert_eq!(stanzas(&events).len(), 2);

        let bigger = "<message to='a@b'><body>01234567890</body></message>";
        let mut parser = StreamParser::new(ns::CLIENT, limits);
        parser.feed(format!("{HEADER}{bigger}").as_bytes());
        let (_, error) = drain(&mut parser);
        let error = error.expect("too big");
        assert_eq!(error.condition, StreamErrorCondition::PolicyViolation);
        assert!(
            error
                .text
                .as_deref()
                .is_some_and(|t| t.contains("max_stanza_size")),
            "{error:?}"
        );
    }

    #[test]
    fn oversized_stanza_fails_as_soon_as_the_limit_is_crossed() {
        let limits = Limits {
            max_stanza_size: 4096,
            ..Limits::default()
        };
        let mut parser = StreamParser::new(ns::CLIENT, limits);
        parser.feed(HEADER.as_bytes());
        assert!(matches!(
            parser.next_event(),
            Ok(Some(StreamEvent::Open(_)))
        ));
        parser.feed(b"<message><body>");
        assert!(matches!(parser.next_event(), Ok(None)));
        // Feed text in 100-byte pieces; the error must come before 4096 + 100 bytes are fed.
        let piece = [b'a'; 100];
        let mut fed = 15;
        let error = loop {
            parser.feed(&piece);
            fed += piece.len();
            match parser.next_event() {
                Ok(None) => assert!(fed <= 4096, "no error after {fed} bytes"),
                Ok(Some(event)) => panic!("unexpected {event:?}"),
                Err(error) => break error,
            }
        };
        assert_eq!(error.condition, StreamErrorCondition::PolicyViolation);
        assert!(fed > 4096 && fed <= 4096 + piece.len());
        assert!(parser.stack.is_empty());
        assert_eq!(parser.buffered(), 0);
    }

    #[test]
    fn oversized_start_tag_is_not_buffered_whole() {
        let limits = Limits {
            max_stanza_size: 1024,
            max_attributes: 1_000_000,
            ..Limits::default()
        };
        let mut parser = StreamParser::new(ns::CLIENT, limits);
        let mut input = HEADER.as_bytes().to_vec();
        input.extend_from_slice(b"<message");
        for i in 0..100_000 {
            input.extend_from_slice(format!(" a{i}='x'").as_bytes());
        }
        parser.feed(&input);
        let (events, error) = drain(&mut parser);
        assert_eq!(events.len(), 1);
        assert_eq!(
            error.map(|e| e.condition),
            Some(StreamErrorCondition::PolicyViolation)
        );
    }

    #[test]
    fn oversized_header_is_refused() {
        let mut parser = StreamParser::new(
            ns::CLIENT,
            Limits {
                max_stanza_size: 256,
                ..Limits::default()
            },
        );
        let mut input = b"<stream:stream to='".to_vec();
        input.extend(std::iter::repeat_n(b'a', 1000));
        parser.feed(&input);
        assert_eq!(
            parser.next_event().map_err(|e| e.condition).err(),
            Some(StreamErrorCondition::PolicyViolation)
        );
    }

    #[test]
    fn long_token_is_policy_violation() {
        let body = format!("<message to='{}'/>", "a".repeat(MAX_TOKEN_LENGTH + 10));
        assert_eq!(
            condition_after_header(&body),
            StreamErrorCondition::PolicyViolation
        );
    }

    #[test]
    fn depth_limit() {
        let limits = Limits {
            max_depth: 3,
            ..Limits::default()
        };
        let mut parser = StreamParser::new(ns::CLIENT, limits);
        parser.feed(format!("{HEADER}<a><b><c/></b></a>").as_bytes());
        let (events, error) = drain(&mut parser);
        assert_eq!(error, None);
        assert_eq!(stanzas(&events).len(), 1);

        let mut parser = StreamParser::new(ns::CLIENT, limits);
        parser.feed(format!("{HEADER}<a><b><c><d>").as_bytes());
        let (_, error) = drain(&mut parser);
        let error = error.expect("too deep");
        assert_eq!(error.condition, StreamErrorCondition::PolicyViolation);
        assert!(error.text.is_some_and(|t| t.contains("max_depth")));
    }

    #[test]
    fn attribute_limit_counts_namespace_declarations() {
        let limits = Limits {
            max_attributes: 3,
            ..Limits::default()
        };
        let header = "<stream:stream xmlns='jabber:client' \
            xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";
        let mut parser = StreamParser::new(ns::CLIENT, limits);
        parser.feed(format!("{header}<a xmlns:p='urn:p' b='1' p:c='2'/>").as_bytes());
        let (events, error) = drain(&mut parser);
        assert_eq!(error, None);
        assert_eq!(stanzas(&events).len(), 1);

        let mut parser = StreamParser::new(ns::CLIENT, limits);
        parser.feed(format!("{header}<a xmlns:p='urn:p' b='1' p:c='2' d='3'/>").as_bytes());
        let (_, error) = drain(&mut parser);
        let error = error.expect("too many attributes");
        assert_eq!(error.condition, StreamErrorCondition::PolicyViolation);
        assert!(error.text.is_some_and(|t| t.contains("max_attributes")));
    }

    #[test]
    fn whitespace_keepalives_do_not_accumulate() {
        let mut parser = c2s();
        parser.feed(HEADER.as_bytes());
        assert!(matches!(
            parser.next_event(),
            Ok(Some(StreamEvent::Open(_)))
        ));
        let keepalive = [b' '; 4096];
        for _ in 0..256 {
            parser.feed(&keepalive);
            assert!(matches!(parser.next_event(), Ok(None)));
            assert_eq!(parser.buffered(), 0);
        }
        assert!(parser.stack.is_empty());
        assert_eq!(parser.scopes.len(), 1);
        assert!(parser.in_progress() < 16);
        // The stream still works afterwards, with the full stanza budget.
        parser.feed(b"\n<presence/>");
        assert!(matches!(
            parser.next_event(),
            Ok(Some(StreamEvent::Stanza(_)))
        ));
        parser.shrink();
        assert_eq!(parser.buf.capacity(), 0);
    }

    #[test]
    fn shrinking_an_idle_parser_keeps_the_stream_working() {
        for (header, close) in [
            (HEADER.to_owned(), "</stream:stream>"),
            (
                "<x:stream xmlns:x='http://etherx.jabber.org/streams' xmlns='jabber:client' \
                 to='example.org' version='1.0'>"
                    .to_owned(),
                "</x:stream>",
            ),
        ] {
            let mut parser = c2s();
            parser.feed(header.as_bytes());
            assert!(matches!(
                parser.next_event(),
                Ok(Some(StreamEvent::Open(_)))
            ));
            let long = "a".repeat(4000);
            parser.feed(format!("<message id='{long}'><body>x</body></message>").as_bytes());
            assert!(matches!(
                parser.next_event(),
                Ok(Some(StreamEvent::Stanza(_)))
            ));
            parser.shrink();
            // Stanzas after the swap parse with the stream's namespaces, split anywhere.
            let next = b"<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>";
            let mut got = 0;
            for b in next {
                parser.feed(&[*b]);
                if let Ok(Some(StreamEvent::Stanza(el))) = parser.next_event() {
                    assert_eq!(el.ns(), "jabber:client");
                    assert!(el.get_child("ping", "urn:xmpp:ping").is_some());
                    got += 1;
                }
            }
            assert_eq!(got, 1);
            parser.shrink();
            parser.feed(close.as_bytes());
            assert!(
                matches!(parser.next_event(), Ok(Some(StreamEvent::Close))),
                "{header}"
            );
        }
    }

    #[test]
    fn reset_after_starttls() {
        let mut parser = c2s();
        parser.feed(
            format!("{HEADER}<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><garbage")
                .as_bytes(),
        );
        assert!(matches!(
            parser.next_event(),
            Ok(Some(StreamEvent::Open(_)))
        ));
        assert!(matches!(
            parser.next_event(),
            Ok(Some(StreamEvent::Stanza(ref e))) if e.is("starttls", ns::TLS)
        ));
        parser.reset();
        assert_eq!(parser.buffered(), 0);
        // A new declaration and header are accepted after the restart.
        parser.feed(format!("{HEADER}<presence/>").as_bytes());
        let (events, error) = drain(&mut parser);
        assert_eq!(error, None);
        assert!(matches!(events.first(), Some(StreamEvent::Open(_))));
        assert_eq!(stanzas(&events).len(), 1);
    }

    #[test]
    fn set_limits_applies_to_later_stanzas() {
        let mut parser = StreamParser::new(
            ns::CLIENT,
            Limits {
                max_stanza_size: 64,
                ..Limits::default()
            },
        );
        parser.feed(HEADER.as_bytes());
        assert!(matches!(
            parser.next_event(),
            Ok(Some(StreamEvent::Open(_)))
        ));
        parser.set_limits(Limits::default());
        assert_eq!(parser.limits(), Limits::default());
        parser.feed(format!("<message><body>{}</body></message>", "x".repeat(200)).as_bytes());
        assert!(matches!(
            parser.next_event(),
            Ok(Some(StreamEvent::Stanza(_)))
        ));
    }

    #[test]
    fn error_is_sticky_and_later_input_ignored() {
        let mut parser = c2s();
        parser.feed(format!("{HEADER}<a></b><presence/>").as_bytes());
        let (_, error) = drain(&mut parser);
        let error = error.expect("error");
        assert_eq!(parser.buffered(), 0);
        parser.feed(b"<presence/>");
        assert_eq!(parser.buffered(), 0);
        assert_eq!(parser.next_event().err(), Some(error.clone()));
        assert_eq!(parser.next_event().err(), Some(error));
    }

    #[test]
    fn input_after_close_is_ignored() {
        let mut parser = c2s();
        parser.feed(format!("{HEADER}</stream:stream><presence/>").as_bytes());
        let (events, error) = drain(&mut parser);
        assert_eq!(error, None);
        assert!(matches!(events.last(), Some(StreamEvent::Close)));
        parser.feed(b"junk");
        assert!(matches!(parser.next_event(), Ok(None)));
        assert_eq!(parser.buffered(), 0);
    }

    #[test]
    fn to_bytes_round_trip() {
        let input = format!(
            "{HEADER}<message to='a@example.org' xml:lang='fr' id='a&apos;b\"c&lt;d&amp;e&gt;'>\
             <body>1 &lt; 2 &amp; 3 &gt; 2 ]]&gt; \"q\" 'a'</body>\
             <x xmlns='urn:x' xmlns:p='urn:p' p:attr='v'><y>t</y><z xmlns=''/></x></message>"
        );
        let (events, error) = parse_all(input.as_bytes());
        assert_eq!(error, None);
        let original = stanzas(&events).first().copied().expect("message").clone();
        let bytes = to_bytes(&original);
        let mut again = HEADER.as_bytes().to_vec();
        again.extend_from_slice(&bytes);
        let (events, error) = parse_all(&again);
        assert_eq!(error, None, "{}", String::from_utf8_lossy(&bytes));
        let reparsed = stanzas(&events).first().copied().expect("message").clone();
        assert_eq!(reparsed, original);
        assert_eq!(reparsed.attr("id"), Some("a'b\"c<d&e>"));
        assert_eq!(reparsed.attr_ns(rxml::XMLNS_XML, "lang"), Some("fr"));
        let x = reparsed.get_child("x", "urn:x").expect("x");
        assert_eq!(x.attr_ns("urn:p", "attr"), Some("v"));
        assert!(x.get_child("z", "").is_some());
    }

    #[test]
    fn to_bytes_escapes_attribute_values_and_text() {
        let mut el = Element::bare("message", ns::CLIENT);
        let id = NcName::try_from("id").expect("valid name");
        el.attrs_mut()
            .insert(Namespace::NONE, id, "'\"<&>\t\n".to_owned());
        el.append_text("a<b&c>d\r\u{1}e");
        let text = String::from_utf8(to_bytes(&el)).expect("utf-8");
        assert_eq!(
            text,
            "<message xmlns='jabber:client' id='&apos;&quot;&lt;&amp;&gt;&#x9;&#xA;'>\
             a&lt;b&amp;c&gt;d&#xD;e</message>"
        );
        let mut again = HEADER.as_bytes().to_vec();
        again.extend_from_slice(text.as_bytes());
        let (events, error) = parse_all(&again);
        assert_eq!(error, None);
        let parsed = stanzas(&events).first().copied().expect("message").clone();
        assert_eq!(parsed.attr("id"), Some("'\"<&>\t\n"));
        assert_eq!(parsed.text(), "a<b&c>d\re");
    }

    #[test]
    fn to_bytes_writes_children_in_the_parent_namespace_without_redeclaring() {
        let mut el = Element::bare("iq", ns::CLIENT);
        el.append_child(Element::bare("query", ns::ROSTER));
        el.append_child(Element::bare("child", ns::CLIENT));
        assert_eq!(
            String::from_utf8(to_bytes(&el)).expect("utf-8"),
            "<iq xmlns='jabber:client'><query xmlns='jabber:iq:roster'/><child/></iq>"
        );
    }

    #[test]
    fn stream_header_is_escaped_and_parses() {
        let header = StreamHeader {
            id: Some("i'd<".to_owned()),
            from: Some("example.org".to_owned()),
            to: Some("user@example.org".to_owned()),
            ..StreamHeader::default()
        };
        let text = stream_header(ns::CLIENT, &header);
        assert_eq!(
            text,
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' id='i&apos;d&lt;' \
             from='example.org' to='user@example.org' version='1.0' xml:lang='en'>"
        );
        let (events, error) = parse_all(format!("{text}{STREAM_CLOSE}").as_bytes());
        assert_eq!(error, None);
        let Some(StreamEvent::Open(parsed)) = events.first() else {
            panic!("expected a header");
        };
        assert_eq!(parsed.id.as_deref(), Some("i'd<"));
        assert_eq!(parsed.lang.as_deref(), Some("en"));
        assert!(matches!(events.last(), Some(StreamEvent::Close)));
    }

    #[test]
    fn stream_error_is_written_inside_our_stream() {
        let error = StreamError::new(StreamErrorCondition::NotWellFormed).with_text("x < y");
        let doc = format!(
            "{}{}{STREAM_CLOSE}",
            stream_header(ns::CLIENT, &StreamHeader::default()),
            error.to_xml()
        );
        let (events, parse_error) = parse_all(doc.as_bytes());
        assert_eq!(parse_error, None);
        let found = stanzas(&events);
        let el = found.first().copied().expect("stream:error");
        assert!(el.is("error", ns::STREAM));
        assert!(el.has_child("not-well-formed", ns::STREAM_ERRORS));
    }

    mod prop {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let mut parser = c2s();
                parser.feed(&bytes);
                let _ = drain(&mut parser);
            }

            #[test]
            fn arbitrary_bytes_after_header_never_panic(
                bytes in proptest::collection::vec(any::<u8>(), 0..512),
                step in 1usize..64,
            ) {
                let mut parser = StreamParser::new(ns::CLIENT, Limits {
                    max_stanza_size: 128,
                    max_depth: 4,
                    max_attributes: 4,
                });
                parser.feed(HEADER.as_bytes());
                let _ = drain(&mut parser);
                let _ = parse_chunked(&mut parser, &bytes, step);
                prop_assert!(parser.buffered() <= bytes.len());
            }

            #[test]
            fn xmlish_input_never_panics(
                parts in proptest::collection::vec(
                    prop_oneof![
                        Just("<a>"), Just("</a>"), Just("<b x='1'/>"), Just("<p:c xmlns:p='u'>"),
                        Just("</p:c>"), Just("&amp;"), Just("&#0;"), Just("<!--"), Just("]]>"),
                        Just("<![CDATA["), Just("text"), Just(" "), Just("</stream:stream>"),
                        Just("<message>"), Just("</message>"), Just("<?x?>"), Just("\u{e9}"),
                    ],
                    0..40,
                ),
                step in 1usize..16,
            ) {
                let body: String = parts.concat();
                let mut parser = c2s();
                let input = format!("{HEADER}{body}");
                let (chunked, chunked_error) = parse_chunked(&mut parser, input.as_bytes(), step);
                let (whole, whole_error) = parse_all(input.as_bytes());
                prop_assert_eq!(describe(&chunked), describe(&whole));
                prop_assert_eq!(
                    chunked_error.map(|e| e.condition),
                    whole_error.map(|e| e.condition)
                );
            }
        }
    }
}
