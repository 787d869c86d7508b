//! [`RosterStore`]: roster items and roster versions (RFC 6121 §2, §3).
//!
//! The store keeps what RFC 6121 needs to survive a restart: the subscription state of
//! each contact including both "pending" flags (§3.1.2, §3.1.3), pre-approvals (§3.4),
//! the user-assigned name and groups (§2.1.2), and a per-user version counter for roster
//! versioning (§2.6). Subscription state *transitions* are not decided here; the roster
//! module computes the new item and stores it.

use starling_xmpp::jid::BareJid;

use crate::{BoxFuture, StorageError};

/// The `subscription` attribute of a roster item (RFC 6121 §2.1.2.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subscription {
    /// Neither side sees the other's presence.
    None,
    /// The user sees the contact's presence.
    To,
    /// The contact sees the user's presence.
    From,
    /// Both see each other's presence.
    Both,
    /// Only on the wire, in a roster set or push that deletes the item; never stored.
    Remove,
}

impl Subscription {
    /// The attribute value as on the wire: `none`, `to`, `from`, `both` or `remove`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::To => "to",
            Self::From => "from",
            Self::Both => "both",
            Self::Remove => "remove",
        }
    }

    /// Parses the attribute value; `None` for anything RFC 6121 does not define.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "none" => Some(Self::None),
            "to" => Some(Self::To),
            "from" => Some(Self::From),
            "both" => Some(Self::Both),
            "remove" => Some(Self::Remove),
            _ => None,
        }
    }
}

/// One contact in a user's roster, with the server-side state RFC 6121 requires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RosterItem {
    /// The contact (a bare JID, possibly domain-only, e.g. a gateway).
    pub jid: BareJid,
    /// The user-assigned handle, if any.
    pub name: Option<String>,
    /// The subscription state; [`Subscription::Remove`] cannot be stored.
    pub subscription: Subscription,
    /// "Pending out": the user sent `subscribe` and has no answer yet (`ask='subscribe'`).
    pub ask_out: bool,
    /// "Pending in": the contact asked to subscribe. Holds the subscribe stanza's XML,
    /// because RFC 6121 §3.1.3 has the server deliver it again at the user's next login.
    pub pending_in: Option<String>,
    /// The user pre-approved the contact's subscription (RFC 6121 §3.4).
    pub approved: bool,
    /// Group names, in the order given; a name appears at most once.
    pub groups: Vec<String>,
}

impl RosterItem {
    /// A fresh item with subscription `none` and no name, groups or pending state.
    pub fn new(jid: BareJid) -> Self {
        Self {
            jid,
            name: None,
            subscription: Subscription::None,
            ask_out: false,
            pending_in: None,
            approved: false,
            groups: Vec::new(),
        }
    }
}

/// Rosters, one per account, with a version string per roster (RFC 6121 §2.6).
///
/// Versions are opaque strings to clients; backends use a per-user counter, and a user
/// without any roster row has version `"0"`. Every change yields a version never used
/// before for that user, so a client's cached version identifies exactly one roster state.
pub trait RosterStore: Send + Sync {
    /// Items and the current roster version (a per-user counter string, RFC 6121 §2.6).
    fn roster<'a>(
        &'a self,
        user: &'a BareJid,
    ) -> BoxFuture<'a, Result<(Vec<RosterItem>, String), StorageError>>;

    /// The current roster version alone, for the `ver` comparison of RFC 6121 §2.6.3.
    fn version<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, Result<String, StorageError>>;

    /// The item for `contact`, if the user has one.
    fn item<'a>(
        &'a self,
        user: &'a BareJid,
        contact: &'a BareJid,
    ) -> BoxFuture<'a, Result<Option<RosterItem>, StorageError>>;

    /// Insert or replace; bumps and returns the new version. `max_items`: QuotaExceeded
    /// beyond it (checked in the same transaction). Replacing an existing item never
    /// exceeds the quota. [`StorageError::InvalidValue`] for [`Subscription::Remove`].
    fn put_item<'a>(
        &'a self,
        user: &'a BareJid,
        item: &'a RosterItem,
        max_items: u32,
    ) -> BoxFuture<'a, Result<String, StorageError>>;

    /// Remove; bumps and returns the new version (None if there was no such item).
    fn remove_item<'a>(
        &'a self,
        user: &'a BareJid,
        contact: &'a BareJid,
    ) -> BoxFuture<'a, Result<Option<String>, StorageError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_round_trips_through_its_wire_name() {
        for sub in [
            Subscription::None,
            Subscription::To,
            Subscription::From,
            Subscription::Both,
            Subscription::Remove,
        ] {
            assert_eq!(Subscription::parse(sub.as_str()), Some(sub));
        }
    }

    #[test]
    fn subscription_parse_is_strict() {
        assert_eq!(Subscription::parse("Both"), None);
        assert_eq!(Subscription::parse(""), None);
        assert_eq!(Subscription::parse("pending"), None);
    }

    #[test]
    fn new_item_has_no_state() {
        let jid = BareJid::new(Some("romeo"), "montague.example").expect("valid jid");
        let item = RosterItem::new(jid.clone());
        assert_eq!(item.jid, jid);
        assert_eq!(item.subscription, Subscription::None);
        assert!(!item.ask_out && !item.approved);
        assert!(item.name.is_none() && item.pending_in.is_none() && item.groups.is_empty());
    }
}
