//! Stream errors (RFC 6120 §4.9) and stanza errors (RFC 6120 §8.3).
//!
//! This module owns the closed sets of defined conditions, their wire names, the default error
//! type of each stanza condition (§8.3.3), and their serialisation: a stream error as the text
//! written just before `</stream:stream>`, a stanza error as the `<error/>` child of a bounced
//! stanza. Every protocol failure in the server is mapped to one of these in one place, so the
//! peer always receives a defined condition.

use minidom::Element;
use rxml::{Namespace, NcName};

use crate::ns;

/// A defined stream error condition (RFC 6120 §4.9.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamErrorCondition {
    /// §4.9.3.1 `<bad-format/>`: XML that cannot be processed.
    BadFormat,
    /// §4.9.3.2 `<bad-namespace-prefix/>`: unsupported or undeclared namespace prefix.
    BadNamespacePrefix,
    /// §4.9.3.3 `<conflict/>`: a new stream replaced this one.
    Conflict,
    /// §4.9.3.4 `<connection-timeout/>`: the peer has not generated traffic for too long.
    ConnectionTimeout,
    /// §4.9.3.5 `<host-gone/>`: the `to` host is no longer served.
    HostGone,
    /// §4.9.3.6 `<host-unknown/>`: the `to` host is not served.
    HostUnknown,
    /// §4.9.3.7 `<improper-addressing/>`: missing `to` or `from` between servers.
    ImproperAddressing,
    /// §4.9.3.8 `<internal-server-error/>`.
    InternalServerError,
    /// §4.9.3.9 `<invalid-from/>`: the `from` address is not authorised for this stream.
    InvalidFrom,
    /// §4.9.3.10 `<invalid-namespace/>`: wrong stream or content namespace.
    InvalidNamespace,
    /// §4.9.3.11 `<invalid-xml/>`: invalid XML (e.g. against a schema).
    InvalidXml,
    /// §4.9.3.12 `<not-authorized/>`: data sent before the stream was authenticated.
    NotAuthorized,
    /// §4.9.3.13 `<not-well-formed/>`: XML or namespace well-formedness violated.
    NotWellFormed,
    /// §4.9.3.14 `<policy-violation/>`: a local policy (such as a size limit) was violated.
    PolicyViolation,
    /// §4.9.3.15 `<remote-connection-failed/>`.
    RemoteConnectionFailed,
    /// §4.9.3.16 `<reset/>`: security or credentials changed; reconnect.
    Reset,
    /// §4.9.3.17 `<resource-constraint/>`: the server lacks resources for this stream.
    ResourceConstraint,
    /// §4.9.3.18 `<restricted-xml/>`: comments, PIs, DTDs or entity references (§11.1).
    RestrictedXml,
    /// §4.9.3.19 `<see-other-host/>`.
    SeeOtherHost,
    /// §4.9.3.20 `<system-shutdown/>`.
    SystemShutdown,
    /// §4.9.3.21 `<undefined-condition/>`.
    UndefinedCondition,
    /// §4.9.3.22 `<unsupported-encoding/>`: not UTF-8.
    UnsupportedEncoding,
    /// §4.9.3.23 `<unsupported-feature/>`: a mandatory feature is not supported.
    UnsupportedFeature,
    /// §4.9.3.24 `<unsupported-stanza-type/>`: an unknown first-level child.
    UnsupportedStanzaType,
    /// §4.9.3.25 `<unsupported-version/>`.
    UnsupportedVersion,
}

impl StreamErrorCondition {
    /// Every condition, in RFC order (for lookups and exhaustive tests).
    pub const ALL: [Self; 25] = [
        Self::BadFormat,
        Self::BadNamespacePrefix,
        Self::Conflict,
        Self::ConnectionTimeout,
        Self::HostGone,
        Self::HostUnknown,
        Self::ImproperAddressing,
        Self::InternalServerError,
        Self::InvalidFrom,
        Self::InvalidNamespace,
        Self::InvalidXml,
        Self::NotAuthorized,
        Self::NotWellFormed,
        Self::PolicyViolation,
        Self::RemoteConnectionFailed,
        Self::Reset,
        Self::ResourceConstraint,
        Self::RestrictedXml,
        Self::SeeOtherHost,
        Self::SystemShutdown,
        Self::UndefinedCondition,
        Self::UnsupportedEncoding,
        Self::UnsupportedFeature,
        Self::UnsupportedStanzaType,
        Self::UnsupportedVersion,
    ];

    /// The element name on the wire, e.g. `"not-well-formed"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::BadFormat => "bad-format",
            Self::BadNamespacePrefix => "bad-namespace-prefix",
            Self::Conflict => "conflict",
            Self::ConnectionTimeout => "connection-timeout",
            Self::HostGone => "host-gone",
            Self::HostUnknown => "host-unknown",
            Self::ImproperAddressing => "improper-addressing",
            Self::InternalServerError => "internal-server-error",
            Self::InvalidFrom => "invalid-from",
            Self::InvalidNamespace => "invalid-namespace",
            Self::InvalidXml => "invalid-xml",
            Self::NotAuthorized => "not-authorized",
            Self::NotWellFormed => "not-well-formed",
            Self::PolicyViolation => "policy-violation",
            Self::RemoteConnectionFailed => "remote-connection-failed",
            Self::Reset => "reset",
            Self::ResourceConstraint => "resource-constraint",
            Self::RestrictedXml => "restricted-xml",
            Self::SeeOtherHost => "see-other-host",
            Self::SystemShutdown => "system-shutdown",
            Self::UndefinedCondition => "undefined-condition",
            Self::UnsupportedEncoding => "unsupported-encoding",
            Self::UnsupportedFeature => "unsupported-feature",
            Self::UnsupportedStanzaType => "unsupported-stanza-type",
            Self::UnsupportedVersion => "unsupported-version",
        }
    }

    /// The condition with this wire name, if it is defined.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl std::fmt::Display for StreamErrorCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A stream error: fatal for the stream, sent as `<stream:error/>` before closing it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stream error <{condition}/>{}", text_suffix(.text))]
pub struct StreamError {
    /// The defined condition.
    pub condition: StreamErrorCondition,
    /// Human-readable detail (English), sent in `<text/>`.
    pub text: Option<String>,
}

impl StreamError {
    /// A stream error with no text.
    pub fn new(condition: StreamErrorCondition) -> Self {
        Self {
            condition,
            text: None,
        }
    }

    /// Adds human-readable detail.
    pub fn with_text(self, text: impl Into<String>) -> Self {
        Self {
            text: Some(text.into()),
            ..self
        }
    }

    /// `<stream:error><COND xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns=...
    /// xml:lang='en'>..</text></stream:error>` (text XML-escaped), to be written inside an open
    /// stream whose `stream` prefix is bound.
    pub fn to_xml(&self) -> String {
        let mut out = String::with_capacity(160);
        out.push_str("<stream:error><");
        out.push_str(self.condition.name());
        out.push_str(" xmlns='");
        out.push_str(ns::STREAM_ERRORS);
        out.push_str("'/>");
        if let Some(text) = &self.text {
            out.push_str("<text xmlns='");
            out.push_str(ns::STREAM_ERRORS);
            out.push_str("' xml:lang='en'>");
            crate::codec::escape_text_into(text, &mut out);
            out.push_str("</text>");
        }
        out.push_str("</stream:error>");
        out
    }
}

/// The type of a stanza error (RFC 6120 §8.3.2): what the sender should do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    /// Retry after providing credentials.
    Auth,
    /// Do not retry (the error cannot be remedied).
    Cancel,
    /// Proceed (the condition was only a warning).
    Continue,
    /// Retry after changing the data sent.
    Modify,
    /// Retry after waiting (the error is temporary).
    Wait,
}

impl ErrorType {
    /// The `type` attribute value, e.g. `"cancel"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Cancel => "cancel",
            Self::Continue => "continue",
            Self::Modify => "modify",
            Self::Wait => "wait",
        }
    }

    /// The error type with this attribute value, if it is defined.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::Auth,
            Self::Cancel,
            Self::Continue,
            Self::Modify,
            Self::Wait,
        ]
        .into_iter()
        .find(|t| t.name() == name)
    }
}

impl std::fmt::Display for ErrorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A defined stanza error condition (RFC 6120 §8.3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StanzaErrorCondition {
    /// §8.3.3.1 `<bad-request/>`: malformed or unprocessable request.
    BadRequest,
    /// §8.3.3.2 `<conflict/>`: a resource or session with that name already exists.
    Conflict,
    /// §8.3.3.3 `<feature-not-implemented/>`.
    FeatureNotImplemented,
    /// §8.3.3.4 `<forbidden/>`: the requester lacks the permissions.
    Forbidden,
    /// §8.3.3.5 `<gone/>`: the recipient is no longer at this address.
    Gone,
    /// §8.3.3.6 `<internal-server-error/>`.
    InternalServerError,
    /// §8.3.3.7 `<item-not-found/>`.
    ItemNotFound,
    /// §8.3.3.8 `<jid-malformed/>`.
    JidMalformed,
    /// §8.3.3.9 `<not-acceptable/>`: the request violates a criterion of the recipient.
    NotAcceptable,
    /// §8.3.3.10 `<not-allowed/>`: no entity is allowed to perform the action.
    NotAllowed,
    /// §8.3.3.11 `<not-authorized/>`: authentication is required first.
    NotAuthorized,
    /// §8.3.3.12 `<policy-violation/>`: a local policy was violated.
    PolicyViolation,
    /// §8.3.3.13 `<recipient-unavailable/>`: temporarily unavailable.
    RecipientUnavailable,
    /// §8.3.3.14 `<redirect/>`.
    Redirect,
    /// §8.3.3.15 `<registration-required/>`.
    RegistrationRequired,
    /// §8.3.3.16 `<remote-server-not-found/>`.
    RemoteServerNotFound,
    /// §8.3.3.17 `<remote-server-timeout/>`.
    RemoteServerTimeout,
    /// §8.3.3.18 `<resource-constraint/>`: the server lacks resources.
    ResourceConstraint,
    /// §8.3.3.19 `<service-unavailable/>`.
    ServiceUnavailable,
    /// §8.3.3.20 `<subscription-required/>`.
    SubscriptionRequired,
    /// §8.3.3.21 `<undefined-condition/>`.
    UndefinedCondition,
    /// §8.3.3.22 `<unexpected-request/>`: out of order.
    UnexpectedRequest,
}

impl StanzaErrorCondition {
    /// Every condition, in RFC order (for lookups and exhaustive tests).
    pub const ALL: [Self; 22] = [
        Self::BadRequest,
        Self::Conflict,
        Self::FeatureNotImplemented,
        Self::Forbidden,
        Self::Gone,
        Self::InternalServerError,
        Self::ItemNotFound,
        Self::JidMalformed,
        Self::NotAcceptable,
        Self::NotAllowed,
        Self::NotAuthorized,
        Self::PolicyViolation,
        Self::RecipientUnavailable,
        Self::Redirect,
        Self::RegistrationRequired,
        Self::RemoteServerNotFound,
        Self::RemoteServerTimeout,
        Self::ResourceConstraint,
        Self::ServiceUnavailable,
        Self::SubscriptionRequired,
        Self::UndefinedCondition,
        Self::UnexpectedRequest,
    ];

    /// The element name on the wire, e.g. `"service-unavailable"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::BadRequest => "bad-request",
            Self::Conflict => "conflict",
            Self::FeatureNotImplemented => "feature-not-implemented",
            Self::Forbidden => "forbidden",
            Self::Gone => "gone",
            Self::InternalServerError => "internal-server-error",
            Self::ItemNotFound => "item-not-found",
            Self::JidMalformed => "jid-malformed",
            Self::NotAcceptable => "not-acceptable",
            Self::NotAllowed => "not-allowed",
            Self::NotAuthorized => "not-authorized",
            Self::PolicyViolation => "policy-violation",
            Self::RecipientUnavailable => "recipient-unavailable",
            Self::Redirect => "redirect",
            Self::RegistrationRequired => "registration-required",
            Self::RemoteServerNotFound => "remote-server-not-found",
            Self::RemoteServerTimeout => "remote-server-timeout",
            Self::ResourceConstraint => "resource-constraint",
            Self::ServiceUnavailable => "service-unavailable",
            Self::SubscriptionRequired => "subscription-required",
            Self::UndefinedCondition => "undefined-condition",
            Self::UnexpectedRequest => "unexpected-request",
        }
    }

    /// The condition with this wire name, if it is defined.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The error type RFC 6120 §8.3.3 gives for this condition (the type used in its examples
    /// where the text allows several).
    pub fn default_type(self) -> ErrorType {
        match self {
            Self::Forbidden
            | Self::NotAuthorized
            | Self::RegistrationRequired
            | Self::SubscriptionRequired => ErrorType::Auth,
            Self::BadRequest
            | Self::JidMalformed
            | Self::NotAcceptable
            | Self::PolicyViolation
            | Self::Redirect => ErrorType::Modify,
            Self::RecipientUnavailable
            | Self::RemoteServerTimeout
            | Self::ResourceConstraint
            | Self::UnexpectedRequest => ErrorType::Wait,
            Self::Conflict
            | Self::FeatureNotImplemented
            | Self::Gone
            | Self::InternalServerError
            | Self::ItemNotFound
            | Self::NotAllowed
            | Self::RemoteServerNotFound
            | Self::ServiceUnavailable
            | Self::UndefinedCondition => ErrorType::Cancel,
        }
    }
}

impl std::fmt::Display for StanzaErrorCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A stanza error: returned to the sender in a stanza of type `error` (RFC 6120 §8.3).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stanza error <{condition}/> type={type_}{}", text_suffix(.text))]
pub struct StanzaError {
    /// What the sender should do about it.
    pub type_: ErrorType,
    /// The defined condition.
    pub condition: StanzaErrorCondition,
    /// Human-readable detail (English), sent in `<text/>`.
    pub text: Option<String>,
    /// The entity that generated the error (§8.3.2 `by`), usually our domain.
    pub by: Option<String>,
    /// An application-specific condition (§8.3.2): `(element name, namespace)`, such as
    /// XEP-0050's `<bad-sessionid/>`.
    pub application: Option<(&'static str, &'static str)>,
}

impl StanzaError {
    /// A stanza error with the condition's default type (§8.3.3), no text and no `by`.
    pub fn new(condition: StanzaErrorCondition) -> Self {
        Self {
            type_: condition.default_type(),
            condition,
            text: None,
            by: None,
            application: None,
        }
    }

    /// Overrides the error type.
    pub fn with_type(self, t: ErrorType) -> Self {
        Self { type_: t, ..self }
    }

    /// Adds human-readable detail.
    pub fn with_text(self, text: impl Into<String>) -> Self {
        Self {
            text: Some(text.into()),
            ..self
        }
    }

    /// Adds an application-specific condition element (empty, in its own namespace).
    pub fn with_application(self, name: &'static str, namespace: &'static str) -> Self {
        Self {
            application: Some((name, namespace)),
            ..self
        }
    }

    /// Records which entity generated the error.
    pub fn with_by(self, by: impl Into<String>) -> Self {
        Self {
            by: Some(by.into()),
            ..self
        }
    }

    /// `<error type='..' [by='..']><COND xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>
    /// [<text ..>]</error>` as an element in namespace `ns` (jabber:client or jabber:server).
    pub fn to_element(&self, ns: &str) -> Element {
        let mut error = Element::bare("error", ns);
        insert_attr(&mut error, Namespace::NONE, "type", self.type_.name());
        if let Some(by) = &self.by {
            insert_attr(&mut error, Namespace::NONE, "by", by);
        }
        error.append_child(Element::bare(self.condition.name(), ns::STANZAS));
        if let Some(text) = &self.text {
            let mut text_el = Element::bare("text", ns::STANZAS);
            insert_attr(&mut text_el, Namespace::XML, "lang", "en");
            text_el.append_text(text.as_str());
            error.append_child(text_el);
        }
        if let Some((name, namespace)) = self.application {
            error.append_child(Element::bare(name, namespace));
        }
        error
    }

    /// Parses an `<error/>` element (in any namespace) back. `None` if its type or condition is
    /// missing or not defined by RFC 6120.
    pub fn from_element(error: &Element) -> Option<Self> {
        if error.name() != "error" {
            return None;
        }
        let type_ = ErrorType::from_name(error.attr("type")?)?;
        let condition = error
            .children()
            .filter(|c| c.has_ns(ns::STANZAS) && c.name() != "text")
            .find_map(|c| StanzaErrorCondition::from_name(c.name()))?;
        let text = error
            .children()
            .find(|c| c.is("text", ns::STANZAS))
            .map(Element::text);
        Some(Self {
            type_,
            condition,
            text,
            by: error.attr("by").map(str::to_owned),
            // Parsed errors are relayed as they came; the application condition is not
            // needed to decide anything here.
            application: None,
        })
    }
}

/// `": text"` for error messages, or nothing.
fn text_suffix(text: &Option<String>) -> String {
    text.as_deref()
        .map(|t| format!(": {t}"))
        .unwrap_or_default()
}

/// Sets an attribute whose name is one of our constants; a constant is always a valid NCName,
/// so the failure branch only exists to keep panics out of the crate.
fn insert_attr(el: &mut Element, ns: Namespace<'static>, name: &str, value: &str) {
    if let Ok(name) = NcName::try_from(name) {
        el.attrs_mut().insert(ns, name, value.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_condition_names_round_trip() {
        for c in StreamErrorCondition::ALL {
            assert_eq!(StreamErrorCondition::from_name(c.name()), Some(c));
        }
        assert_eq!(
            StreamErrorCondition::NotWellFormed.name(),
            "not-well-formed"
        );
        assert_eq!(StreamErrorCondition::from_name("nonsense"), None);
    }

    #[test]
    fn stream_error_xml_without_text() {
        let e = StreamError::new(StreamErrorCondition::HostUnknown);
        assert_eq!(
            e.to_xml(),
            "<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
             </stream:error>"
        );
    }

    #[test]
    fn stream_error_xml_escapes_text() {
        let e = StreamError::new(StreamErrorCondition::PolicyViolation).with_text("a<b & 'c'");
        assert_eq!(
            e.to_xml(),
            "<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-streams' xml:lang='en'>a&lt;b &amp; 'c'\
             </text></stream:error>"
        );
        assert_eq!(e.to_string(), "stream error <policy-violation/>: a<b & 'c'");
    }

    #[test]
    fn stream_error_xml_parses_inside_a_stream() {
        let e = StreamError::new(StreamErrorCondition::Conflict).with_text("replaced");
        let doc = format!(
            "<stream:stream xmlns:stream='{}' xmlns='jabber:client'>{}</stream:stream>",
            ns::STREAM,
            e.to_xml()
        );
        let root: Element = doc.parse().expect("valid XML");
        let err = root.get_child("error", ns::STREAM).expect("stream:error");
        assert!(err.has_child("conflict", ns::STREAM_ERRORS));
        assert_eq!(
            err.get_child("text", ns::STREAM_ERRORS).map(Element::text),
            Some("replaced".to_owned())
        );
    }

    #[test]
    fn stanza_condition_names_and_default_types() {
        for c in StanzaErrorCondition::ALL {
            assert_eq!(StanzaErrorCondition::from_name(c.name()), Some(c));
        }
        use StanzaErrorCondition as C;
        assert_eq!(C::BadRequest.default_type(), ErrorType::Modify);
        assert_eq!(C::Forbidden.default_type(), ErrorType::Auth);
        assert_eq!(C::ServiceUnavailable.default_type(), ErrorType::Cancel);
        assert_eq!(C::ResourceConstraint.default_type(), ErrorType::Wait);
        assert_eq!(C::RecipientUnavailable.default_type(), ErrorType::Wait);
        assert_eq!(C::ItemNotFound.default_type(), ErrorType::Cancel);
        assert_eq!(C::JidMalformed.default_type(), ErrorType::Modify);
        assert_eq!(C::NotAuthorized.default_type(), ErrorType::Auth);
    }

    #[test]
    fn stanza_error_builders() {
        let e = StanzaError::new(StanzaErrorCondition::ServiceUnavailable)
            .with_type(ErrorType::Wait)
            .with_text("later")
            .with_by("example.org");
        assert_eq!(e.type_, ErrorType::Wait);
        assert_eq!(e.text.as_deref(), Some("later"));
        assert_eq!(e.by.as_deref(), Some("example.org"));
        assert_eq!(
            e.to_string(),
            "stanza error <service-unavailable/> type=wait: later"
        );
    }

    #[test]
    fn stanza_error_element_shape() {
        let e = StanzaError::new(StanzaErrorCondition::ItemNotFound).with_by("example.org");
        let el = e.to_element(ns::CLIENT);
        assert!(el.is("error", ns::CLIENT));
        assert_eq!(el.attr("type"), Some("cancel"));
        assert_eq!(el.attr("by"), Some("example.org"));
        assert!(el.has_child("item-not-found", ns::STANZAS));
        assert!(!el.has_child("text", ns::STANZAS));
        assert_eq!(el.children().count(), 1);
    }

    #[test]
    fn stanza_error_element_round_trip() {
        for c in StanzaErrorCondition::ALL {
            let e = StanzaError::new(c).with_text("why <not>");
            let el = e.to_element(ns::SERVER);
            let text = el.get_child("text", ns::STANZAS).expect("text child");
            assert_eq!(text.attr_ns(rxml::XMLNS_XML, "lang"), Some("en"));
            assert_eq!(StanzaError::from_element(&el), Some(e));
        }
    }

    #[test]
    fn stanza_error_from_wire_xml() {
        let el: Element = "<error xmlns='jabber:client' type='modify' by='a.example'>\
             <bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>no</text>\
             <app-specific xmlns='urn:example'/></error>"
            .parse()
            .expect("valid XML");
        let e = StanzaError::from_element(&el).expect("parsed");
        assert_eq!(e.condition, StanzaErrorCondition::BadRequest);
        assert_eq!(e.type_, ErrorType::Modify);
        assert_eq!(e.text.as_deref(), Some("no"));
        assert_eq!(e.by.as_deref(), Some("a.example"));
    }

    #[test]
    fn stanza_error_from_element_rejects_unknown() {
        let no_type: Element = "<error xmlns='jabber:client'>\
             <bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
            .parse()
            .expect("valid XML");
        assert_eq!(StanzaError::from_element(&no_type), None);
        let unknown: Element = "<error xmlns='jabber:client' type='cancel'>\
             <nonsense xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
            .parse()
            .expect("valid XML");
        assert_eq!(StanzaError::from_element(&unknown), None);
        let not_error: Element = "<iq xmlns='jabber:client' type='cancel'/>"
            .parse()
            .expect("valid XML");
        assert_eq!(StanzaError::from_element(&not_error), None);
    }
}
