//! Jabber identifiers: parsing, PRECIS preparation and a compact representation.
//!
//! Implements RFC 7622 §3: the split rules (§3.1), the domainpart (§3.2, IDNA2008 via UTS #46
//! and IP literals), the localpart (§3.3, PRECIS `UsernameCaseMapped` from RFC 8265 plus the
//! eight forbidden ASCII characters) and the resourcepart (§3.4, PRECIS `OpaqueString`).
//!
//! A JID is stored once, already normalised, in a single boxed string with two byte offsets, so
//! comparing, hashing and ordering JIDs is plain string work and a `Jid` costs 24 bytes plus the
//! text. [`BareJid`] and [`FullJid`] wrap the same representation and make "has no resource" /
//! "has a resource" a property of the type rather than a runtime check.
//!
//! Preparation never panics on input and rejects a part longer than 1023 bytes after
//! preparation. As a guard against expensive work on hostile input, a part longer than
//! 4 × 1023 bytes *before* preparation is rejected as [`JidError::TooLong`] without being
//! prepared: no legitimate part shrinks that much.

use std::borrow::Cow;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
use precis_core::profile::PrecisFastInvocation;
use precis_profiles::{OpaqueString, UsernameCaseMapped};

/// RFC 7622 §3.2–3.4: each part is at most 1023 octets once prepared.
const MAX_PART_BYTES: usize = 1023;
/// Input bound checked before preparation, so a huge attribute is refused cheaply.
const MAX_RAW_PART_BYTES: usize = 4 * MAX_PART_BYTES;
/// RFC 1035 §2.3.4 label limit, applied to the A-label (ASCII) form.
const MAX_LABEL_BYTES: usize = 63;
/// RFC 7622 §3.3.1: characters a localpart must not contain even though PRECIS allows them.
const NODE_FORBIDDEN: [char; 8] = ['"', '&', '\'', '/', ':', '<', '>', '@'];
/// ASCII a domainpart may not contain after UTS #46 mapping: everything except letters, digits,
/// hyphen, dot and underscore (STD3 rules, relaxed for the underscore that real deployments use
/// in component names). Spaces and controls are denied by the `true` flag.
const DOMAIN_DENY: AsciiDenyList = AsciiDenyList::new(true, "!\"#$%&'()*+,/:;<=>?@[\\]^`{|}~");

/// Why a string is not a valid JID (or JID part).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JidError {
    /// The whole JID string is empty.
    #[error("the JID is empty")]
    Empty,
    /// The domainpart is empty.
    #[error("the domainpart is empty")]
    DomainEmpty,
    /// The domainpart is not a valid IDNA2008 name or IP literal.
    #[error("the domainpart is invalid")]
    DomainInvalid,
    /// An `@` is present but nothing precedes it.
    #[error("the localpart is empty")]
    NodeEmpty,
    /// The localpart fails `UsernameCaseMapped` or contains a forbidden character.
    #[error("the localpart is invalid")]
    NodeInvalid,
    /// A `/` is present but nothing follows it.
    #[error("the resourcepart is empty")]
    ResourceEmpty,
    /// The resourcepart fails `OpaqueString`.
    #[error("the resourcepart is invalid")]
    ResourceInvalid,
    /// A part is longer than 1023 bytes after preparation.
    #[error("a JID part is longer than 1023 bytes")]
    TooLong,
    /// A full JID was required but the JID has no resource.
    #[error("a full JID is required")]
    ResourceMissing,
    /// A bare JID was required but the JID has a resource.
    #[error("a bare JID is required")]
    ResourceUnexpected,
}

/// Any JID: `domain`, `node@domain`, `domain/resource` or `node@domain/resource`, normalised.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Jid {
    /// The normalised text, e.g. `juliet@example.com/balcony`.
    text: Box<str>,
    /// Byte length of the localpart; 0 means "no localpart" since a localpart is never empty.
    node_len: u16,
    /// Byte offset of the `/` before the resourcepart; 0 means "no resource" since the
    /// domainpart is never empty.
    slash: u16,
}

/// A JID without a resource: `node@domain` or `domain`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BareJid {
    inner: Jid,
}

/// A JID with a resource: `node@domain/resource` or `domain/resource`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FullJid {
    inner: Jid,
}

impl Jid {
    /// Parses and normalises a JID per RFC 7622 §3.1: the resource starts at the first `/`
    /// (so it may itself contain `/` and `@`), the localpart ends at the first `@` before that.
    pub fn parse(s: &str) -> Result<Self, JidError> {
        if s.is_empty() {
            return Err(JidError::Empty);
        }
        let (rest, resource) = match s.split_once('/') {
            Some((rest, resource)) => (rest, Some(resource)),
            None => (s, None),
        };
        let (node, domain) = match rest.split_once('@') {
            Some((node, domain)) => (Some(node), domain),
            None => (None, rest),
        };
        Self::new(node, domain, resource)
    }

    /// Builds a JID from separate, not yet prepared parts.
    pub fn new(node: Option<&str>, domain: &str, resource: Option<&str>) -> Result<Self, JidError> {
        let node = node.map(prep_node).transpose()?;
        let domain = prep_domain(domain)?;
        let resource = resource.map(prep_resource).transpose()?;
        assemble(node.as_deref(), &domain, resource.as_deref())
    }

    /// The localpart, if any.
    pub fn node(&self) -> Option<&str> {
        if self.node_len == 0 {
            None
        } else {
            self.text.get(..usize::from(self.node_len))
        }
    }

    /// The domainpart.
    pub fn domain(&self) -> &str {
        let start = if self.node_len == 0 {
            0
        } else {
            usize::from(self.node_len) + 1
        };
        let end = if self.slash == 0 {
            self.text.len()
        } else {
            usize::from(self.slash)
        };
        self.text.get(start..end).unwrap_or_default()
    }

    /// The resourcepart, if any.
    pub fn resource(&self) -> Option<&str> {
        if self.slash == 0 {
            None
        } else {
            self.text.get(usize::from(self.slash) + 1..)
        }
    }

    /// True when there is no resourcepart.
    pub fn is_bare(&self) -> bool {
        self.slash == 0
    }

    /// The JID without its resource.
    pub fn to_bare(&self) -> BareJid {
        if self.slash == 0 {
            return BareJid {
                inner: self.clone(),
            };
        }
        let text = self.text.get(..usize::from(self.slash)).unwrap_or_default();
        BareJid {
            inner: Self {
                text: text.into(),
                node_len: self.node_len,
                slash: 0,
            },
        }
    }

    /// Converts to a [`FullJid`] when there is a resource, or hands back the [`BareJid`].
    pub fn into_full(self) -> Result<FullJid, BareJid> {
        if self.slash == 0 {
            Err(BareJid { inner: self })
        } else {
            Ok(FullJid { inner: self })
        }
    }

    /// The normalised text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl BareJid {
    /// Parses a JID that must not have a resource.
    pub fn parse(s: &str) -> Result<Self, JidError> {
        let inner = Jid::parse(s)?;
        if inner.is_bare() {
            Ok(Self { inner })
        } else {
            Err(JidError::ResourceUnexpected)
        }
    }

    /// Builds `node@domain` (or `domain` when `node` is `None`) from unprepared parts.
    pub fn new(node: Option<&str>, domain: &str) -> Result<Self, JidError> {
        Jid::new(node, domain, None).map(|inner| Self { inner })
    }

    /// Builds a JID made of a domainpart only, e.g. a server or component address.
    pub fn domain_only(domain: &str) -> Result<Self, JidError> {
        Self::new(None, domain)
    }

    /// The localpart, if any.
    pub fn node(&self) -> Option<&str> {
        self.inner.node()
    }

    /// The domainpart.
    pub fn domain(&self) -> &str {
        self.inner.domain()
    }

    /// This JID with an (unprepared) resource appended.
    pub fn with_resource(&self, resource: &str) -> Result<FullJid, JidError> {
        let resource = prep_resource(resource)?;
        let inner = assemble(self.node(), self.domain(), Some(&resource))?;
        Ok(FullJid { inner })
    }

    /// The normalised text.
    pub fn as_str(&self) -> &str {
        self.inner.as_str()
    }
}

impl FullJid {
    /// Parses a JID that must have a resource.
    pub fn parse(s: &str) -> Result<Self, JidError> {
        let inner = Jid::parse(s)?;
        if inner.is_bare() {
            Err(JidError::ResourceMissing)
        } else {
            Ok(Self { inner })
        }
    }

    /// Builds `node@domain/resource` (or `domain/resource`) from unprepared parts.
    pub fn new(node: Option<&str>, domain: &str, resource: &str) -> Result<Self, JidError> {
        Jid::new(node, domain, Some(resource)).map(|inner| Self { inner })
    }

    /// The localpart, if any.
    pub fn node(&self) -> Option<&str> {
        self.inner.node()
    }

    /// The domainpart.
    pub fn domain(&self) -> &str {
        self.inner.domain()
    }

    /// The resourcepart.
    pub fn resource(&self) -> &str {
        self.inner.resource().unwrap_or_default()
    }

    /// The JID without its resource.
    pub fn to_bare(&self) -> BareJid {
        self.inner.to_bare()
    }

    /// The normalised text.
    pub fn as_str(&self) -> &str {
        self.inner.as_str()
    }
}

/// Prepares a localpart alone (PRECIS `UsernameCaseMapped`, RFC 7622 §3.3), used for SASL
/// usernames and registration.
pub fn nodeprep(s: &str) -> Result<String, JidError> {
    prep_node(s).map(Cow::into_owned)
}

/// Prepares a resourcepart alone (PRECIS `OpaqueString`, RFC 7622 §3.4).
pub fn resourceprep(s: &str) -> Result<String, JidError> {
    prep_resource(s).map(Cow::into_owned)
}

/// Prepares a domainpart alone (RFC 7622 §3.2): one trailing dot stripped, IP literals kept in
/// canonical form, anything else mapped by UTS #46 to lowercase NFC Unicode.
pub fn nameprep(s: &str) -> Result<String, JidError> {
    prep_domain(s).map(Cow::into_owned)
}

fn prep_node(s: &str) -> Result<Cow<'_, str>, JidError> {
    if s.is_empty() {
        return Err(JidError::NodeEmpty);
    }
    if s.len() > MAX_RAW_PART_BYTES {
        return Err(JidError::TooLong);
    }
    // Fast path: for printable ASCII, UsernameCaseMapped is exactly ASCII lowercasing (every
    // such code point is PVALID in IdentifierClass and NFC/bidi change nothing); a test checks
    // this against the full profile.
    let prepared = if s.bytes().all(|b| b.is_ascii_graphic()) {
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(s.to_ascii_lowercase())
        } else {
            Cow::Borrowed(s)
        }
    } else {
        let prepared = UsernameCaseMapped::enforce(s).map_err(|_| JidError::NodeInvalid)?;
        // A stored JID must parse back to itself. Case mapping is not always stable under
        // PRECIS (Cherokee capitals lowercase to letters the profile disallows), so refuse
        // anything whose output does not enforce to itself.
        if UsernameCaseMapped::enforce(prepared.as_ref()).as_deref() != Ok(prepared.as_ref()) {
            return Err(JidError::NodeInvalid);
        }
        prepared
    };
    if prepared.is_empty() {
        return Err(JidError::NodeEmpty);
    }
    if prepared.len() > MAX_PART_BYTES {
        return Err(JidError::TooLong);
    }
    // Checked after preparation: width mapping turns e.g. U+FF20 into '@'.
    if prepared.contains(NODE_FORBIDDEN) {
        return Err(JidError::NodeInvalid);
    }
    Ok(prepared)
}

fn prep_resource(s: &str) -> Result<Cow<'_, str>, JidError> {
    if s.is_empty() {
        return Err(JidError::ResourceEmpty);
    }
    if s.len() > MAX_RAW_PART_BYTES {
        return Err(JidError::TooLong);
    }
    // Fast path: printable ASCII and space are left unchanged by OpaqueString.
    let prepared = if s.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        Cow::Borrowed(s)
    } else {
        let prepared = OpaqueString::enforce(s).map_err(|_| JidError::ResourceInvalid)?;
        // Same stability requirement as for localparts.
        if OpaqueString::enforce(prepared.as_ref()).as_deref() != Ok(prepared.as_ref()) {
            return Err(JidError::ResourceInvalid);
        }
        prepared
    };
    if prepared.is_empty() {
        return Err(JidError::ResourceEmpty);
    }
    if prepared.len() > MAX_PART_BYTES {
        return Err(JidError::TooLong);
    }
    Ok(prepared)
}

fn prep_domain(s: &str) -> Result<Cow<'_, str>, JidError> {
    // §3.2.1: strip one trailing label separator before anything else.
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() {
        return Err(JidError::DomainEmpty);
    }
    if s.len() > MAX_RAW_PART_BYTES {
        return Err(JidError::TooLong);
    }
    if let Some(inner) = s.strip_prefix('[') {
        let literal = inner.strip_suffix(']').ok_or(JidError::DomainInvalid)?;
        let ip: Ipv6Addr = literal.parse().map_err(|_| JidError::DomainInvalid)?;
        // RFC 5952 text, so `[::1]` and `[0:0::1]` compare equal.
        return Ok(Cow::Owned(format!("[{ip}]")));
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && let Ok(ip) = s.parse::<Ipv4Addr>()
    {
        return Ok(Cow::Owned(ip.to_string()));
    }
    let uts46 = Uts46::new();
    let (prepared, result) = uts46.to_unicode(s.as_bytes(), DOMAIN_DENY, Hyphens::Allow);
    if result.is_err() {
        return Err(JidError::DomainInvalid);
    }
    if prepared.is_empty() {
        return Err(JidError::DomainEmpty);
    }
    if prepared.len() > MAX_PART_BYTES {
        return Err(JidError::TooLong);
    }
    // Belt and braces: the deny list covers these, but the split rules depend on it.
    if prepared.contains(['@', '/']) {
        return Err(JidError::DomainInvalid);
    }
    if prepared.is_ascii() {
        check_labels(&prepared)?;
    } else {
        // Same stability requirement as for localparts: the output must map to itself.
        let (again, result) = uts46.to_unicode(prepared.as_bytes(), DOMAIN_DENY, Hyphens::Allow);
        if result.is_err() || again != prepared {
            return Err(JidError::DomainInvalid);
        }
        // Label limits are about the DNS (A-label) form, which for non-ASCII labels is longer.
        let ascii = uts46
            .to_ascii(
                prepared.as_bytes(),
                DOMAIN_DENY,
                Hyphens::Allow,
                DnsLength::Ignore,
            )
            .map_err(|_| JidError::DomainInvalid)?;
        check_labels(&ascii)?;
    }
    Ok(prepared)
}

fn check_labels(ascii_domain: &str) -> Result<(), JidError> {
    for label in ascii_domain.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL_BYTES {
            return Err(JidError::DomainInvalid);
        }
    }
    Ok(())
}

/// Joins prepared parts into the one-string representation.
fn assemble(node: Option<&str>, domain: &str, resource: Option<&str>) -> Result<Jid, JidError> {
    let len = node.map_or(0, |n| n.len() + 1) + domain.len() + resource.map_or(0, |r| r.len() + 1);
    let mut text = String::with_capacity(len);
    let mut node_len = 0u16;
    if let Some(node) = node {
        node_len = u16::try_from(node.len()).map_err(|_| JidError::TooLong)?;
        text.push_str(node);
        text.push('@');
    }
    text.push_str(domain);
    let mut slash = 0u16;
    if let Some(resource) = resource {
        slash = u16::try_from(text.len()).map_err(|_| JidError::TooLong)?;
        text.push('/');
        text.push_str(resource);
    }
    Ok(Jid {
        text: text.into_boxed_str(),
        node_len,
        slash,
    })
}

impl FromStr for Jid {
    type Err = JidError;
    fn from_str(s: &str) -> Result<Self, JidError> {
        Self::parse(s)
    }
}

impl FromStr for BareJid {
    type Err = JidError;
    fn from_str(s: &str) -> Result<Self, JidError> {
        Self::parse(s)
    }
}

impl FromStr for FullJid {
    type Err = JidError;
    fn from_str(s: &str) -> Result<Self, JidError> {
        Self::parse(s)
    }
}

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for BareJid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for FullJid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Jid").field(&self.as_str()).finish()
    }
}

impl fmt::Debug for BareJid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BareJid").field(&self.as_str()).finish()
    }
}

impl fmt::Debug for FullJid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FullJid").field(&self.as_str()).finish()
    }
}

impl AsRef<str> for Jid {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for BareJid {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for FullJid {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<BareJid> for Jid {
    fn from(jid: BareJid) -> Self {
        jid.inner
    }
}

impl From<FullJid> for Jid {
    fn from(jid: FullJid) -> Self {
        jid.inner
    }
}

impl PartialEq<Jid> for BareJid {
    fn eq(&self, other: &Jid) -> bool {
        self.inner == *other
    }
}

impl PartialEq<Jid> for FullJid {
    fn eq(&self, other: &Jid) -> bool {
        self.inner == *other
    }
}

impl PartialEq<BareJid> for Jid {
    fn eq(&self, other: &BareJid) -> bool {
        *self == other.inner
    }
}

impl PartialEq<FullJid> for Jid {
    fn eq(&self, other: &FullJid) -> bool {
        *self == other.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(s: &str) -> Jid {
        match Jid::parse(s) {
            Ok(jid) => jid,
            Err(e) => panic!("{s:?} should parse, got {e:?}"),
        }
    }

    #[test]
    fn size_is_one_pointer_pair_plus_offsets() {
        #[cfg(target_pointer_width = "64")]
        {
            assert_eq!(size_of::<Jid>(), 24);
            assert_eq!(size_of::<BareJid>(), 24);
            assert_eq!(size_of::<FullJid>(), 24);
            assert_eq!(size_of::<Option<Jid>>(), 24);
        }
    }

    #[test]
    fn parts_are_split_and_exposed() {
        let jid = ok("juliet@example.com/foo");
        assert_eq!(jid.node(), Some("juliet"));
        assert_eq!(jid.domain(), "example.com");
        assert_eq!(jid.resource(), Some("foo"));
        assert!(!jid.is_bare());
        assert_eq!(jid.to_bare().as_str(), "juliet@example.com");

        let jid = ok("example.com");
        assert_eq!(
            (jid.node(), jid.domain(), jid.resource()),
            (None, "example.com", None)
        );
        assert!(jid.is_bare());

        let jid = ok("example.com/foo");
        assert_eq!(
            (jid.node(), jid.domain(), jid.resource()),
            (None, "example.com", Some("foo"))
        );
        assert_eq!(jid.to_bare().as_str(), "example.com");
    }

    /// RFC 7622 §3.5 examples of valid JIDs.
    #[test]
    fn rfc7622_valid_examples() {
        let cases = [
            ("juliet@example.com", "juliet@example.com"),
            ("juliet@example.com/foo", "juliet@example.com/foo"),
            ("juliet@example.com/foo bar", "juliet@example.com/foo bar"),
            ("juliet@example.com/foo@bar", "juliet@example.com/foo@bar"),
            ("foo\\20bar@example.com", "foo\\20bar@example.com"),
            ("fussball@example.com", "fussball@example.com"),
            ("fu\u{df}ball@example.com", "fu\u{df}ball@example.com"),
            ("\u{3c0}@example.com", "\u{3c0}@example.com"),
            ("\u{3a3}@example.com/foo", "\u{3c3}@example.com/foo"),
            ("\u{3c3}@example.com/foo", "\u{3c3}@example.com/foo"),
            ("\u{3c2}@example.com/foo", "\u{3c2}@example.com/foo"),
            ("king@example.com/\u{265a}", "king@example.com/\u{265a}"),
            ("example.com", "example.com"),
            ("example.com/foobar", "example.com/foobar"),
            ("a.example.com/b@example.net", "a.example.com/b@example.net"),
        ];
        for (input, expected) in cases {
            assert_eq!(ok(input).as_str(), expected, "input {input:?}");
        }
        let jid = ok("a.example.com/b@example.net");
        assert_eq!(jid.node(), None);
        assert_eq!(jid.resource(), Some("b@example.net"));
    }

    /// RFC 7622 §3.5 examples of invalid JIDs. The table also lists `juliet@example.com/ foo`,
    /// but no rule forbids it: OpaqueString allows spaces, so we accept it (see
    /// `leading_space_resource_is_accepted`), as other implementations do.
    #[test]
    fn rfc7622_invalid_examples() {
        let cases = [
            ("\"juliet\"@example.com", JidError::NodeInvalid),
            ("foo bar@example.com", JidError::NodeInvalid),
            ("@example.com/", JidError::NodeEmpty),
            ("henry\u{2163}@example.com", JidError::NodeInvalid),
            ("\u{265a}@example.com", JidError::NodeInvalid),
            ("juliet@", JidError::DomainEmpty),
            ("/foobar", JidError::DomainEmpty),
        ];
        for (input, expected) in cases {
            assert_eq!(Jid::parse(input), Err(expected), "input {input:?}");
        }
    }

    #[test]
    fn leading_space_resource_is_accepted() {
        assert_eq!(ok("juliet@example.com/ foo").resource(), Some(" foo"));
    }

    #[test]
    fn empty_parts_are_named() {
        assert_eq!(Jid::parse(""), Err(JidError::Empty));
        assert_eq!(Jid::parse("@example.com"), Err(JidError::NodeEmpty));
        assert_eq!(Jid::parse("example.com/"), Err(JidError::ResourceEmpty));
        assert_eq!(Jid::parse("a@/r"), Err(JidError::DomainEmpty));
        assert_eq!(Jid::parse("."), Err(JidError::DomainEmpty));
    }

    #[test]
    fn case_folding() {
        assert_eq!(
            ok("Juliet@Example.COM/Balcony").as_str(),
            "juliet@example.com/Balcony"
        );
        assert_eq!(
            ok("\u{cf}\u{c9}@\u{c9}xample.com").as_str(),
            "\u{ef}\u{e9}@\u{e9}xample.com"
        );
        // Fullwidth letters are width-mapped in the localpart and UTS #46-mapped in the domain.
        assert_eq!(
            ok("\u{ff2a}uliet@\u{ff25}xample.com").as_str(),
            "juliet@example.com"
        );
    }

    #[test]
    fn unstable_case_mapping_is_refused() {
        // U+13A0 lowercases to U+AB70, which UsernameCaseMapped itself disallows.
        assert_eq!(Jid::parse("\u{13a0}@a"), Err(JidError::NodeInvalid));
    }

    #[test]
    fn forbidden_localpart_characters() {
        for c in ['"', '&', '\'', ':', '<', '>'] {
            let s = format!("a{c}b@example.com");
            assert_eq!(Jid::parse(&s), Err(JidError::NodeInvalid), "{s:?}");
        }
        // Fullwidth '@' and '/' only become forbidden after width mapping.
        assert_eq!(nodeprep("a\u{ff20}b"), Err(JidError::NodeInvalid));
        assert_eq!(nodeprep("a\u{ff0f}b"), Err(JidError::NodeInvalid));
    }

    #[test]
    fn domains() {
        assert_eq!(nameprep("example.com."), Ok("example.com".to_owned()));
        assert_eq!(nameprep("example.com.."), Err(JidError::DomainInvalid));
        assert_eq!(nameprep("a..b"), Err(JidError::DomainInvalid));
        assert_eq!(nameprep("EXAMPLE.com"), Ok("example.com".to_owned()));
        assert_eq!(
            nameprep("xn--bcher-kva.example"),
            Ok("b\u{fc}cher.example".to_owned())
        );
        assert_eq!(
            nameprep("B\u{dc}CHER.example"),
            Ok("b\u{fc}cher.example".to_owned())
        );
        assert_eq!(
            nameprep("under_score.example"),
            Ok("under_score.example".to_owned())
        );
        assert_eq!(nameprep("exa mple.com"), Err(JidError::DomainInvalid));
        assert_eq!(nameprep("exa<mple.com"), Err(JidError::DomainInvalid));
        assert_eq!(
            nameprep("xn--zz-invalid-punycode-\u{fc}"),
            Err(JidError::DomainInvalid)
        );
        let label = "a".repeat(63);
        assert!(nameprep(&format!("{label}.example")).is_ok());
        let label = "a".repeat(64);
        assert_eq!(
            nameprep(&format!("{label}.example")),
            Err(JidError::DomainInvalid)
        );
        // A non-ASCII label is measured in its A-label form.
        let label = "\u{fc}".repeat(60);
        assert_eq!(
            nameprep(&format!("{label}.example")),
            Err(JidError::DomainInvalid)
        );
    }

    #[test]
    fn ip_literals() {
        assert_eq!(ok("[::1]").domain(), "[::1]");
        assert_eq!(ok("juliet@[0:0::1]/r").as_str(), "juliet@[::1]/r");
        assert_eq!(ok("[2001:DB8::1]").as_str(), "[2001:db8::1]");
        assert_eq!(ok("127.0.0.1").domain(), "127.0.0.1");
        assert_eq!(ok("a@127.0.0.1/r").as_str(), "a@127.0.0.1/r");
        assert_eq!(Jid::parse("[::1"), Err(JidError::DomainInvalid));
        assert_eq!(Jid::parse("[example.com]"), Err(JidError::DomainInvalid));
        assert_eq!(Jid::parse("::1"), Err(JidError::DomainInvalid));
    }

    #[test]
    fn lengths() {
        let max = "a".repeat(1023);
        assert!(Jid::parse(&format!("{max}@example.com/{max}")).is_ok());
        let over = "a".repeat(1024);
        assert_eq!(
            Jid::parse(&format!("{over}@example.com")),
            Err(JidError::TooLong)
        );
        assert_eq!(
            Jid::parse(&format!("example.com/{over}")),
            Err(JidError::TooLong)
        );
        let max_domain = ["a"; 512].join(".");
        assert_eq!(max_domain.len(), 1023);
        assert!(Jid::parse(&max_domain).is_ok());
        let long_domain = ["a"; 513].join(".");
        assert_eq!(Jid::parse(&long_domain), Err(JidError::TooLong));
        let huge = "\u{ff41}".repeat(4000);
        assert_eq!(nodeprep(&huge), Err(JidError::TooLong));
    }

    #[test]
    fn typed_variants() {
        assert_eq!(BareJid::parse("a@b/c"), Err(JidError::ResourceUnexpected));
        assert_eq!(FullJid::parse("a@b"), Err(JidError::ResourceMissing));
        let full = FullJid::parse("A@B/C").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (full.node(), full.domain(), full.resource()),
            (Some("a"), "b", "C")
        );
        assert_eq!(full.to_bare().as_str(), "a@b");
        let bare = BareJid::domain_only("Example.org").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(bare.as_str(), "example.org");
        assert_eq!(bare.node(), None);
        let full = bare
            .with_resource("res/1")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(full.as_str(), "example.org/res/1");
        assert_eq!(bare.with_resource(""), Err(JidError::ResourceEmpty));
        let jid: Jid = full.clone().into();
        assert_eq!(jid, full);
        assert_eq!(full, jid);
        assert_eq!(jid.into_full(), Ok(full));
        let jid: Jid = bare.clone().into();
        assert_eq!(jid.clone().into_full(), Err(bare.clone()));
        assert_eq!(bare, jid);
        assert_eq!(
            FullJid::new(Some("N"), "d", "r").map(|j| j.to_string()),
            Ok("n@d/r".to_owned())
        );
        assert_eq!(BareJid::new(Some(""), "d"), Err(JidError::NodeEmpty));
        assert_eq!(
            "x@y".parse::<BareJid>().map(|j| j.to_string()),
            Ok("x@y".to_owned())
        );
        assert_eq!(format!("{:?}", ok("x@y")), "Jid(\"x@y\")");
    }

    #[test]
    fn ascii_fast_paths_match_precis() {
        for b in 0x20u8..=0x7e {
            let s = format!("a{}b", char::from(b));
            let slow_node = UsernameCaseMapped::enforce(s.as_str()).ok();
            let fast_node = prep_node(&s).ok();
            if !NODE_FORBIDDEN.contains(&char::from(b)) {
                assert_eq!(
                    slow_node.as_deref(),
                    fast_node.as_deref(),
                    "node byte {b:#x}"
                );
            }
            let slow_res = OpaqueString::enforce(s.as_str()).ok();
            assert_eq!(
                slow_res.as_deref(),
                prep_resource(&s).ok().as_deref(),
                "resource byte {b:#x}"
            );
        }
    }

    proptest! {
        #[test]
        fn never_panics_and_round_trips(s in "\\PC{0,40}") {
            if let Ok(jid) = Jid::parse(&s) {
                // Normalisation is idempotent and the offsets are recovered from the text.
                let again = Jid::parse(jid.as_str());
                prop_assert_eq!(again.as_ref(), Ok(&jid));
                let bare = jid.to_bare();
                prop_assert_eq!(bare.node(), jid.node());
                prop_assert_eq!(bare.domain(), jid.domain());
            }
        }

        #[test]
        fn never_panics_on_jid_shaped_input(
            node in proptest::option::of("[a-zA-Z\u{80}-\u{2000}@/.]{0,8}"),
            domain in "[a-zA-Z0-9\\[\\]:.\u{80}-\u{3000}-]{0,12}",
            resource in proptest::option::of("\\PC{0,8}"),
        ) {
            let _ = Jid::new(node.as_deref(), &domain, resource.as_deref());
            let mut s = String::new();
            if let Some(node) = &node { s.push_str(node); s.push('@'); }
            s.push_str(&domain);
            if let Some(resource) = &resource { s.push('/'); s.push_str(resource); }
            if let Ok(jid) = Jid::parse(&s) {
                prop_assert_eq!(Jid::parse(jid.as_str()), Ok(jid));
            }
        }
    }
}
