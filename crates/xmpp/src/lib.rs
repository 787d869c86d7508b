//! XMPP protocol building blocks with no I/O.
//!
//! This crate owns everything about the wire format that can be decided without a socket:
//! JIDs (RFC 7622), the XML stream codec and its limits (RFC 6120 §4, §11), stream and stanza
//! errors (RFC 6120 §4.9, §8.3), SASL mechanisms (SCRAM per RFC 5802/7677, PLAIN per RFC 4616)
//! and the routed [`stanza::Stanza`]. It must never touch the network, the clock or the disk:
//! callers pass bytes in and get bytes or events out, so every rule here is unit-testable and
//! fuzzable.

#![forbid(unsafe_code)]

pub mod codec;
pub mod error;
pub mod jid;
pub mod ns;
pub mod sasl;
pub mod scram;
pub mod stanza;
pub mod vcard;

pub use minidom::Element;
