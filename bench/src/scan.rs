//! Light framing of an XMPP stream (RFC 6120 §4.2, §4.8) for the load tool.
//!
//! The benchmark only needs to know where the stream header and each depth-1 element (stanza or
//! negotiation element) begin and end, plus a few attributes and the `<body/>` text of messages.
//! A full XML parser would cost the load tool more CPU and memory than the server under test on
//! small messages, so this module tracks tag nesting with a quote-aware scan instead. It is
//! robust to elements split across reads (incomplete tags are re-scanned when more bytes arrive)
//! and bounds its buffer so a misbehaving server cannot grow it without limit.

use std::fmt;

/// One unit of the stream as seen from depth 0 and 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// The `<stream:stream ...>` open tag (RFC 6120 §4.2).
    StreamOpen(String),
    /// A complete depth-1 element: a stanza, `<stream:features/>`, `<proceed/>`, `<success/>`...
    Element(String),
    /// The closing `</stream:stream>` tag.
    StreamClose,
}

/// Why the byte stream could not be framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanError {
    /// More than the configured number of bytes are buffered for one element.
    TooLarge,
    /// A closing tag arrived with no element open.
    UnbalancedClose,
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge => f.write_str("element exceeds the scanner buffer limit"),
            Self::UnbalancedClose => f.write_str("closing tag without an open element"),
        }
    }
}

impl std::error::Error for ScanError {}

/// Incremental splitter of a byte stream into [`Frame`]s.
#[derive(Debug)]
pub(crate) struct Scanner {
    buf: Vec<u8>,
    /// Next byte to examine; everything before it is consumed or part of the open element.
    pos: usize,
    /// Open elements, the stream root included.
    depth: usize,
    /// Start of the depth-1 element being accumulated (valid while `depth >= 2`).
    start: usize,
    max: usize,
}

/// How a tag ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TagKind {
    Open,
    Close,
    Empty,
    /// `<?xml ...?>`, comments, CDATA: no effect on nesting.
    Skip,
}

impl Scanner {
    /// A scanner that refuses to buffer more than `max` bytes at once.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            pos: 0,
            depth: 0,
            start: 0,
            max,
        }
    }

    /// Forgets everything: used when the stream restarts after STARTTLS or SASL (RFC 6120
    /// §5.4.3.3, §6.4.6), where the server starts a fresh XML document.
    pub(crate) fn reset(&mut self) {
        self.buf.clear();
        self.buf.shrink_to(4096);
        self.pos = 0;
        self.depth = 0;
        self.start = 0;
    }

    /// Whether bytes are buffered that have not been returned as frames yet.
    pub(crate) fn has_pending(&self) -> bool {
        self.buf
            .get(self.pos..)
            .is_some_and(|rest| self.depth >= 2 || rest.iter().any(|b| !b.is_ascii_whitespace()))
    }

    /// Appends bytes read from the socket.
    pub(crate) fn feed(&mut self, data: &[u8]) -> Result<(), ScanError> {
        self.compact();
        if self.buf.len().saturating_add(data.len()) > self.max {
            return Err(ScanError::TooLarge);
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// Returns the next complete frame, or `None` when more bytes are needed.
    pub(crate) fn next_frame(&mut self) -> Result<Option<Frame>, ScanError> {
        loop {
            let Some(rest) = self.buf.get(self.pos..) else {
                return Ok(None);
            };
            let Some(offset) = rest.iter().position(|&b| b == b'<') else {
                // Text between stanzas (whitespace keepalives) is dropped; text inside an
                // element stays buffered as part of it.
                if self.depth < 2 {
                    self.pos = self.buf.len();
                }
                return Ok(None);
            };
            let tag_start = self.pos + offset;
            let Some((kind, tag_end)) = tag_bounds(&self.buf, tag_start) else {
                self.pos = tag_start;
                return Ok(None);
            };
            self.pos = tag_end + 1;
            let tag_bytes = self.buf.get(tag_start..=tag_end).unwrap_or_default();
            match (kind, self.depth) {
                (TagKind::Skip, _) => {}
                (TagKind::Open, 0) => {
                    self.depth = 1;
                    return Ok(Some(Frame::StreamOpen(lossy(tag_bytes))));
                }
                (TagKind::Open, 1) => {
                    self.start = tag_start;
                    self.depth = 2;
                }
                (TagKind::Open, _) => self.depth += 1,
                (TagKind::Empty, 0 | 1) => return Ok(Some(Frame::Element(lossy(tag_bytes)))),
                (TagKind::Empty, _) => {}
                (TagKind::Close, 0) => return Err(ScanError::UnbalancedClose),
                (TagKind::Close, 1) => {
                    self.depth = 0;
                    return Ok(Some(Frame::StreamClose));
                }
                (TagKind::Close, 2) => {
                    self.depth = 1;
                    let element = self.buf.get(self.start..=tag_end).unwrap_or_default();
                    return Ok(Some(Frame::Element(lossy(element))));
                }
                (TagKind::Close, _) => self.depth -= 1,
            }
        }
    }

    /// Drops consumed bytes so the buffer holds at most one partial element.
    fn compact(&mut self) {
        let keep_from = if self.depth >= 2 {
            self.start
        } else {
            self.pos
        };
        if keep_from == 0 {
            return;
        }
        self.buf.drain(..keep_from.min(self.buf.len()));
        self.pos = self.pos.saturating_sub(keep_from);
        self.start = self.start.saturating_sub(keep_from);
    }
}

/// Finds the end (index of the final `>`) of the markup starting at `start` (a `<`), or `None`
/// if it is not complete yet. `>` inside quoted attribute values does not end a tag.
fn tag_bounds(buf: &[u8], start: usize) -> Option<(TagKind, usize)> {
    let tail = buf.get(start..)?;
    for (prefix, terminator) in [
        (&b"<?"[..], &b"?>"[..]),
        (b"<!--", b"-->"),
        (b"<![CDATA[", b"]]>"),
    ] {
        if tail.starts_with(prefix) {
            let end = find(tail, terminator, prefix.len())?;
            return Some((TagKind::Skip, start + end + terminator.len() - 1));
        }
        if prefix.starts_with(tail) {
            // Too short to tell which kind of markup this is yet.
            return None;
        }
    }
    let mut quote: Option<u8> = None;
    for (i, &b) in tail.iter().enumerate().skip(1) {
        match (quote, b) {
            (Some(q), _) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(b),
            (None, b'>') => {
                let kind = if tail.get(1) == Some(&b'/') {
                    TagKind::Close
                } else if i >= 2 && tail.get(i - 1) == Some(&b'/') {
                    TagKind::Empty
                } else {
                    TagKind::Open
                };
                return Some((kind, start + i));
            }
            (None, _) => {}
        }
    }
    None
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The qualified name of an element's first tag: `"iq"`, `"stream:features"`.
pub(crate) fn element_name(element: &str) -> &str {
    let inner = element.strip_prefix('<').unwrap_or(element);
    let end = inner
        .find(|c: char| c.is_ascii_whitespace() || c == '/' || c == '>')
        .unwrap_or(inner.len());
    inner.get(..end).unwrap_or_default()
}

/// The raw (still escaped) value of attribute `name` on an element's first tag.
pub(crate) fn attr<'a>(element: &'a str, name: &str) -> Option<&'a str> {
    let first_tag_end = tag_bounds(element.as_bytes(), 0).map_or(element.len(), |(_, end)| end);
    let tag = element.get(..first_tag_end)?;
    let mut rest = tag.get(1 + element_name(element).len()..)?;
    loop {
        rest = rest.trim_start();
        let eq = rest.find('=')?;
        let key = rest.get(..eq)?.trim();
        rest = rest.get(eq + 1..)?.trim_start();
        let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'')?;
        let value_and_more = rest.get(1..)?;
        let close = value_and_more.find(quote)?;
        if key == name {
            return value_and_more.get(..close);
        }
        rest = value_and_more.get(close + 1..)?;
    }
}

/// The text of the first `<name>` child anywhere in `element` (no nested markup expected).
pub(crate) fn child_text<'a>(element: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}");
    let mut search_from = 0;
    loop {
        let at = search_from + element.get(search_from..)?.find(&open)?;
        let after_name = at + open.len();
        let next = element.get(after_name..)?.chars().next()?;
        if next == '>' || next == '/' || next.is_ascii_whitespace() {
            let gt = after_name + element.get(after_name..)?.find('>')?;
            if element.get(..gt)?.ends_with('/') {
                return Some("");
            }
            let text_start = gt + 1;
            let close = format!("</{name}>");
            let len = element.get(text_start..)?.find(&close)?;
            return element.get(text_start..text_start + len);
        }
        search_from = after_name;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
                          xmlns:stream='http://etherx.jabber.org/streams' id='x' version='1.0'>";

    fn frames(scanner: &mut Scanner) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(frame) = scanner.next_frame().unwrap() {
            out.push(frame);
        }
        out
    }

    #[test]
    fn splits_header_elements_and_close() {
        let mut s = Scanner::new(1 << 16);
        let input = format!(
            "{HEADER}<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>\
             <required/></starttls></stream:features> <proceed xmlns='x'/></stream:stream>"
        );
        s.feed(input.as_bytes()).unwrap();
        let got = frames(&mut s);
        assert_eq!(got.len(), 4);
        assert!(matches!(&got[0], Frame::StreamOpen(h) if h.starts_with("<stream:stream")));
        assert!(
            matches!(&got[1], Frame::Element(e) if e.starts_with("<stream:features>")
            && e.ends_with("</stream:features>"))
        );
        assert_eq!(got[2], Frame::Element("<proceed xmlns='x'/>".into()));
        assert_eq!(got[3], Frame::StreamClose);
    }

    #[test]
    fn every_split_point_gives_the_same_frames() {
        let input = format!(
            "{HEADER}<message to='a@b' id='1'><body>x &gt; y</body></message>\
             <iq type='result' id='q\">'/>\n<!-- c --><presence/>"
        );
        let mut whole = Scanner::new(1 << 16);
        whole.feed(input.as_bytes()).unwrap();
        let expected = frames(&mut whole);
        assert_eq!(expected.len(), 4);
        for split in 0..input.len() {
            let mut s = Scanner::new(1 << 16);
            let (a, b) = input.as_bytes().split_at(split);
            s.feed(a).unwrap();
            let mut got = frames(&mut s);
            s.feed(b).unwrap();
            got.extend(frames(&mut s));
            assert_eq!(got, expected, "split at {split}");
        }
    }

    #[test]
    fn byte_by_byte_feeding_works_and_buffer_stays_small() {
        let mut s = Scanner::new(256);
        let mut count = 0;
        let mut input = HEADER.to_string();
        for i in 0..200 {
            input.push_str(&format!("<message id='{i}'><body>b{i}</body></message>"));
        }
        for byte in input.as_bytes() {
            s.feed(std::slice::from_ref(byte)).unwrap();
            count += frames(&mut s).len();
        }
        assert_eq!(count, 201);
        assert!(!s.has_pending());
    }

    #[test]
    fn quoted_gt_does_not_end_a_tag() {
        let mut s = Scanner::new(1 << 16);
        s.feed(format!("{HEADER}<iq id='a>b' type=\"c>d\"/>").as_bytes())
            .unwrap();
        let got = frames(&mut s);
        assert_eq!(got[1], Frame::Element("<iq id='a>b' type=\"c>d\"/>".into()));
        assert_eq!(attr("<iq id='a>b' type=\"c>d\"/>", "type"), Some("c>d"));
    }

    #[test]
    fn oversized_element_is_refused() {
        let mut s = Scanner::new(64);
        s.feed(b"<stream:stream>").unwrap();
        assert!(frames(&mut s).len() == 1);
        s.feed(b"<message><body>").unwrap();
        assert_eq!(s.next_frame(), Ok(None));
        assert_eq!(s.feed(&[b'a'; 64]), Err(ScanError::TooLarge));
    }

    #[test]
    fn stray_close_is_an_error() {
        let mut s = Scanner::new(64);
        s.feed(b"</stream:stream>").unwrap();
        assert_eq!(s.next_frame(), Err(ScanError::UnbalancedClose));
    }

    #[test]
    fn reset_starts_a_new_document() {
        let mut s = Scanner::new(1024);
        s.feed(format!("{HEADER}<success xmlns='x'/>").as_bytes())
            .unwrap();
        assert_eq!(frames(&mut s).len(), 2);
        s.reset();
        s.feed(HEADER.as_bytes()).unwrap();
        assert!(matches!(s.next_frame(), Ok(Some(Frame::StreamOpen(_)))));
    }

    #[test]
    fn helpers_read_names_attributes_and_bodies() {
        let m = "<message from='a@b/r' to=\"c@d\" type='chat'><body>hello 1 2</body></message>";
        assert_eq!(element_name(m), "message");
        assert_eq!(element_name("<stream:features/>"), "stream:features");
        assert_eq!(attr(m, "from"), Some("a@b/r"));
        assert_eq!(attr(m, "to"), Some("c@d"));
        assert_eq!(attr(m, "id"), None);
        assert_eq!(child_text(m, "body"), Some("hello 1 2"));
        assert_eq!(
            child_text("<message><bodyx>n</bodyx></message>", "body"),
            None
        );
        assert_eq!(child_text("<message><body/></message>", "body"), Some(""));
        assert_eq!(attr("<iq", "id"), None);
    }
}
