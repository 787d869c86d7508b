//! The routed stanza (RFC 6120 §8): a parsed header over the element as received.
//!
//! Routing decisions need only the kind, `from`, `to` and `type`; they are parsed once when the
//! stanza enters the server. The element keeps every payload as received (unknown extensions
//! included), and its serialisation is computed at most once and shared by all recipients.

use std::fmt;
use std::sync::OnceLock;

use bytes::Bytes;
use minidom::Element;
use rxml::{Namespace, NcName};

use crate::codec;
use crate::error::StanzaError;
use crate::jid::Jid;
use crate::ns;

/// The three stanza kinds of RFC 6120 §8.2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `<message/>`
    Message,
    /// `<presence/>`
    Presence,
    /// `<iq/>`
    Iq,
}

impl Kind {
    /// The kind of a depth-1 element, if it is a stanza in a content namespace.
    pub fn of(element: &Element) -> Option<Self> {
        if !(element.ns() == ns::CLIENT || element.ns() == ns::SERVER) {
            return None;
        }
        match element.name() {
            "message" => Some(Self::Message),
            "presence" => Some(Self::Presence),
            "iq" => Some(Self::Iq),
            _ => None,
        }
    }

    /// The element name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Presence => "presence",
            Self::Iq => "iq",
        }
    }
}

/// RFC 6121 §5.2.2 message types. Unknown values are treated as `normal`, as the RFC asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    /// `normal` (also the default).
    Normal,
    /// `chat`
    Chat,
    /// `groupchat`
    Groupchat,
    /// `headline`
    Headline,
    /// `error`
    Error,
}

impl MessageType {
    /// Parses the `type` attribute.
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            Some("chat") => Self::Chat,
            Some("groupchat") => Self::Groupchat,
            Some("headline") => Self::Headline,
            Some("error") => Self::Error,
            _ => Self::Normal,
        }
    }
}

/// RFC 6121 §4.7.1 presence types; `None` of `parse` means an invalid type (`<bad-request/>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceType {
    /// No `type`: available.
    Available,
    /// `unavailable`
    Unavailable,
    /// `subscribe`
    Subscribe,
    /// `subscribed`
    Subscribed,
    /// `unsubscribe`
    Unsubscribe,
    /// `unsubscribed`
    Unsubscribed,
    /// `probe`
    Probe,
    /// `error`
    Error,
}

impl PresenceType {
    /// Parses the `type` attribute.
    pub fn parse(value: Option<&str>) -> Option<Self> {
        Some(match value {
            None => Self::Available,
            Some("unavailable") => Self::Unavailable,
            Some("subscribe") => Self::Subscribe,
            Some("subscribed") => Self::Subscribed,
            Some("unsubscribe") => Self::Unsubscribe,
            Some("unsubscribed") => Self::Unsubscribed,
            Some("probe") => Self::Probe,
            Some("error") => Self::Error,
            Some(_) => return None,
        })
    }

    /// True for the four subscription management types.
    pub fn is_subscription(self) -> bool {
        matches!(
            self,
            Self::Subscribe | Self::Subscribed | Self::Unsubscribe | Self::Unsubscribed
        )
    }

    /// The attribute value, `None` for available.
    pub fn as_attr(self) -> Option<&'static str> {
        match self {
            Self::Available => None,
            Self::Unavailable => Some("unavailable"),
            Self::Subscribe => Some("subscribe"),
            Self::Subscribed => Some("subscribed"),
            Self::Unsubscribe => Some("unsubscribe"),
            Self::Unsubscribed => Some("unsubscribed"),
            Self::Probe => Some("probe"),
            Self::Error => Some("error"),
        }
    }
}

/// RFC 6120 §8.2.3 IQ types; `None` of `parse` means an invalid type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IqType {
    /// `get`
    Get,
    /// `set`
    Set,
    /// `result`
    Result,
    /// `error`
    Error,
}

impl IqType {
    /// Parses the `type` attribute.
    pub fn parse(value: Option<&str>) -> Option<Self> {
        match value {
            Some("get") => Some(Self::Get),
            Some("set") => Some(Self::Set),
            Some("result") => Some(Self::Result),
            Some("error") => Some(Self::Error),
            _ => None,
        }
    }

    /// True for requests, which must be answered (RFC 6120 §8.2.3).
    pub fn is_request(self) -> bool {
        matches!(self, Self::Get | Self::Set)
    }
}

/// Why an element could not become a routed stanza.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StanzaParseError {
    /// Not a message, presence or iq in a content namespace.
    #[error("not a stanza")]
    NotAStanza,
    /// `from` or `to` missing where the router needs it.
    #[error("missing {0} address")]
    MissingAddress(&'static str),
    /// `from` or `to` is not a valid JID.
    #[error("malformed {0} address")]
    MalformedAddress(&'static str),
}

/// A stanza as the router carries it: addresses parsed, payload untouched.
pub struct Stanza {
    kind: Kind,
    from: Jid,
    to: Jid,
    element: Element,
    bytes: OnceLock<Bytes>,
}

impl Stanza {
    /// Wraps `element`, writing `from` and `to` into it so that what is serialised matches
    /// what was routed.
    pub fn new(mut element: Element, from: Jid, to: Jid) -> Result<Self, StanzaParseError> {
        let kind = Kind::of(&element).ok_or(StanzaParseError::NotAStanza)?;
        set_attr(&mut element, "from", from.as_str());
        set_attr(&mut element, "to", to.as_str());
        Ok(Self {
            kind,
            from,
            to,
            element,
            bytes: OnceLock::new(),
        })
    }

    /// Parses a stanza whose `from` and `to` are both present (server-built or s2s).
    pub fn from_element(element: Element) -> Result<Self, StanzaParseError> {
        let from = address(&element, "from")?;
        let to = address(&element, "to")?;
        Self::new(element, from, to)
    }

    /// The stanza kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The sender, as stamped by the server.
    pub fn from(&self) -> &Jid {
        &self.from
    }

    /// The recipient.
    pub fn to(&self) -> &Jid {
        &self.to
    }

    /// The `id` attribute.
    pub fn id(&self) -> Option<&str> {
        self.element.attr("id")
    }

    /// The raw `type` attribute.
    pub fn type_attr(&self) -> Option<&str> {
        self.element.attr("type")
    }

    /// The element as received (with `from`/`to` stamped).
    pub fn element(&self) -> &Element {
        &self.element
    }

    /// Takes the element back, e.g. to modify and re-route it.
    pub fn into_element(self) -> Element {
        self.element
    }

    /// The serialised stanza, computed once and shared by every recipient.
    pub fn bytes(&self) -> Bytes {
        self.bytes
            .get_or_init(|| Bytes::from(codec::to_bytes(&self.element)))
            .clone()
    }

    /// True if this is an error stanza, which must never be answered with an error.
    pub fn is_error(&self) -> bool {
        self.type_attr() == Some("error")
    }

    /// The error reply of RFC 6120 §8.3.1: addresses swapped, `type='error'`, the original
    /// payload kept. `None` when the stanza is itself an error (no error loops).
    pub fn error_reply(&self, error: &StanzaError) -> Option<Self> {
        if self.is_error() {
            return None;
        }
        let mut reply = self.element.clone();
        set_attr(&mut reply, "type", "error");
        let ns = reply.ns();
        reply.append_child(error.to_element(&ns));
        Self::new(reply, self.to.clone(), self.from.clone()).ok()
    }

    /// An IQ result for this IQ request, with an optional payload.
    pub fn iq_result(&self, payload: Option<Element>) -> Self {
        let mut element = Element::bare("iq", self.element.ns());
        set_attr(&mut element, "type", "result");
        if let Some(id) = self.id() {
            set_attr(&mut element, "id", id);
        }
        if let Some(payload) = payload {
            element.append_child(payload);
        }
        set_attr(&mut element, "from", self.to.as_str());
        set_attr(&mut element, "to", self.from.as_str());
        Self {
            kind: Kind::Iq,
            from: self.to.clone(),
            to: self.from.clone(),
            element,
            bytes: OnceLock::new(),
        }
    }

    /// The first child element (an IQ's payload).
    pub fn payload(&self) -> Option<&Element> {
        self.element.children().next()
    }
}

impl Clone for Stanza {
    fn clone(&self) -> Self {
        Self {
            kind: self.kind,
            from: self.from.clone(),
            to: self.to.clone(),
            element: self.element.clone(),
            bytes: self.bytes.clone(),
        }
    }
}

impl fmt::Debug for Stanza {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stanza")
            .field("kind", &self.kind)
            .field("from", &self.from.as_str())
            .field("to", &self.to.as_str())
            .field("type", &self.type_attr())
            .field("id", &self.id())
            .finish()
    }
}

fn address(element: &Element, name: &'static str) -> Result<Jid, StanzaParseError> {
    let value = element
        .attr(name)
        .ok_or(StanzaParseError::MissingAddress(name))?;
    Jid::parse(value).map_err(|_| StanzaParseError::MalformedAddress(name))
}

/// Sets (or replaces) an unqualified attribute.
///
/// Names are compile-time constants of the protocol; one that is not an XML NCName is ignored
/// (and trips a debug assertion) rather than panicking.
pub fn set_attr(element: &mut Element, name: &str, value: impl Into<String>) {
    match NcName::try_from(name) {
        Ok(name) => element.set_attr(Namespace::NONE, name, value.into()),
        Err(_) => debug_assert!(false, "invalid attribute name {name:?}"),
    }
}

/// Removes an unqualified attribute if present (minidom's `set_attr` cannot remove).
pub fn remove_attr(element: &mut Element, name: &str) {
    element.attrs_mut().remove(&Namespace::NONE, name);
}

/// Builds `<name xmlns='ns'/>` with the given attributes.
pub fn element(name: &str, namespace: &str, attrs: &[(&str, &str)]) -> Element {
    let mut element = Element::bare(name, namespace);
    for (key, value) in attrs {
        set_attr(&mut element, key, *value);
    }
    element
}

/// Builds `<name xmlns='ns'>text</name>`.
pub fn text_element(name: &str, namespace: &str, text: &str) -> Element {
    Element::builder(name, namespace).append(text).build()
}
