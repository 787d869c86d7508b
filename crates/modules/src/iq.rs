//! What every IQ handler of this crate needs from a request: its type, its payload, who asks.
//!
//! `starling_core::local` has already checked that the IQ is a request with exactly one payload
//! (RFC 6120 §8.2.3); these functions only read it back and map the common refusals to the
//! stanza errors RFC 6120 §8.3.3 defines.

use starling_storage::StorageError;
use starling_xmpp::Element;
use starling_xmpp::error::{StanzaError, StanzaErrorCondition};
use starling_xmpp::jid::BareJid;
use starling_xmpp::stanza::{IqType, Stanza};

/// The request type and payload of `iq`.
pub(crate) fn request(iq: &Stanza) -> Result<(IqType, &Element), StanzaError> {
    match (IqType::parse(iq.type_attr()), iq.payload()) {
        (Some(kind @ (IqType::Get | IqType::Set)), Some(payload)) => Ok((kind, payload)),
        _ => Err(error(StanzaErrorCondition::BadRequest)),
    }
}

/// The payload of a `get`; a `set` on a read-only namespace is `<not-allowed/>` (as ejabberd
/// answers it: the namespace exists, the operation does not).
pub(crate) fn get_payload(iq: &Stanza) -> Result<&Element, StanzaError> {
    match request(iq)? {
        (IqType::Get, payload) => Ok(payload),
        _ => Err(error(StanzaErrorCondition::NotAllowed).with_text("only get is supported")),
    }
}

/// True if the requester is the account the IQ is addressed to (any of its resources).
pub(crate) fn from_account_itself(iq: &Stanza) -> bool {
    iq.from().to_bare() == iq.to().to_bare()
}

/// The account an `IqTarget::Account` IQ is addressed to.
pub(crate) fn account(iq: &Stanza) -> Result<BareJid, StanzaError> {
    let to = iq.to().to_bare();
    if to.node().is_none() {
        // local.rs only sends IQs to JIDs with a localpart here; anything else is our bug, but
        // answered rather than panicked on.
        return Err(error(StanzaErrorCondition::ServiceUnavailable));
    }
    Ok(to)
}

/// A stanza error with the condition's default type.
pub(crate) fn error(condition: StanzaErrorCondition) -> StanzaError {
    StanzaError::new(condition)
}

/// Logs a storage failure and hides it behind `<internal-server-error/>`: the peer learns
/// nothing about the backend.
pub(crate) fn storage_failure(what: &str, user: &BareJid, e: &StorageError) -> StanzaError {
    tracing::error!(%user, error = %e, "{what}");
    error(StanzaErrorCondition::InternalServerError)
}
