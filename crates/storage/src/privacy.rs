//! [`PrivacyStore`]: privacy lists (XEP-0016) and, through the default list, the blocklist
//! (XEP-0191).
//!
//! One storage serves both protocols, as in ejabberd: a user's blocklist is the set of
//! "deny everything from/to this JID" items of the user's *default* privacy list (created as
//! `Blocked contacts` when a user without a default list blocks someone). The store keeps
//! lists as ordered items and the name of the default list; it decides nothing about
//! matching or which list applies, which is the modules' business. Active lists (XEP-0016
//! §2.4) are per session and never stored.

use starling_xmpp::jid::BareJid;

use crate::{BoxFuture, StorageError, Subscription};

/// What an item does when it matches (XEP-0016 §2.1 `action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrivacyAction {
    /// Let the stanza through.
    Allow,
    /// Block it.
    Deny,
}

impl PrivacyAction {
    /// The attribute value: `allow` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }

    /// Parses the attribute value; `None` for anything else.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "allow" => Some(Self::Allow),
            "deny" => Some(Self::Deny),
            _ => None,
        }
    }
}

/// Which entities an item matches (XEP-0016 §2.1 `type` and `value`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrivacyMatch {
    /// No `type`: the fall-through item, matching every entity.
    Always,
    /// `type='jid'`: a JID (full, bare, domain/resource or domain), stored normalised.
    Jid(String),
    /// `type='group'`: contacts in this roster group.
    Group(String),
    /// `type='subscription'`: contacts with this subscription state (`none` also matches
    /// entities not in the roster). Never [`Subscription::Remove`].
    Subscription(Subscription),
}

impl PrivacyMatch {
    /// The `type` attribute, `None` for the fall-through item.
    pub fn type_name(&self) -> Option<&'static str> {
        match self {
            Self::Always => None,
            Self::Jid(_) => Some("jid"),
            Self::Group(_) => Some("group"),
            Self::Subscription(_) => Some("subscription"),
        }
    }

    /// The `value` attribute, `None` for the fall-through item.
    pub fn value(&self) -> Option<&str> {
        match self {
            Self::Always => None,
            Self::Jid(v) | Self::Group(v) => Some(v),
            Self::Subscription(s) => Some(s.as_str()),
        }
    }
}

/// Which stanza kinds an item applies to (XEP-0016 §2.1 child elements). All four false
/// means "no child element": every stanza, in both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrivacyStanzas {
    /// `<message/>`: incoming messages.
    pub message: bool,
    /// `<iq/>`: incoming IQs.
    pub iq: bool,
    /// `<presence-in/>`: incoming presence notifications.
    pub presence_in: bool,
    /// `<presence-out/>`: outgoing presence notifications.
    pub presence_out: bool,
}

impl PrivacyStanzas {
    /// No child element: the item applies to everything.
    pub const ALL: Self = Self {
        message: false,
        iq: false,
        presence_in: false,
        presence_out: false,
    };

    /// True when no kind is named, i.e. the item applies to every stanza.
    pub fn is_all(self) -> bool {
        self == Self::ALL
    }
}

/// One rule of a privacy list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrivacyItem {
    /// Which entities it matches.
    pub matcher: PrivacyMatch,
    /// What it does.
    pub action: PrivacyAction,
    /// Processing order, unique within a list (XEP-0016 §2.2: ascending).
    pub order: u32,
    /// Which stanzas it applies to.
    pub stanzas: PrivacyStanzas,
}

impl PrivacyItem {
    /// True for the items XEP-0191 shows as the blocklist: deny everything to/from one JID.
    pub fn is_block(&self) -> bool {
        matches!(self.matcher, PrivacyMatch::Jid(_))
            && self.action == PrivacyAction::Deny
            && self.stanzas.is_all()
    }
}

/// A named list with its items, by ascending order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrivacyList {
    /// The list's name.
    pub name: String,
    /// Its items, sorted by order.
    pub items: Vec<PrivacyItem>,
}

/// The names of a user's lists and which one is the default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrivacyLists {
    /// List names, sorted by bytes.
    pub names: Vec<String>,
    /// The default list, if the user set one.
    pub default: Option<String>,
}

/// Privacy lists, per account. Lists are never empty: an empty list is removed (XEP-0016
/// §2.6), so a stored list always has at least one item.
pub trait PrivacyStore: Send + Sync {
    /// The names of the user's lists and the default list's name.
    fn privacy_lists<'a>(
        &'a self,
        user: &'a BareJid,
    ) -> BoxFuture<'a, Result<PrivacyLists, StorageError>>;

    /// The items of one list, by ascending order; `None` if there is no such list.
    fn privacy_list<'a>(
        &'a self,
        user: &'a BareJid,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<PrivacyItem>>, StorageError>>;

    /// The default list's name and items (by ascending order), in one read: what every
    /// routed stanza for a user without an active list is checked against.
    fn default_privacy_list<'a>(
        &'a self,
        user: &'a BareJid,
    ) -> BoxFuture<'a, Result<Option<PrivacyList>, StorageError>>;

    /// Creates or replaces a list. [`StorageError::QuotaExceeded`] if it is new and the user
    /// already has `max_lists` lists (checked in the same transaction);
    /// [`StorageError::InvalidValue`] for no items, duplicate orders or a `remove`
    /// subscription.
    fn put_privacy_list<'a>(
        &'a self,
        user: &'a BareJid,
        name: &'a str,
        items: &'a [PrivacyItem],
        max_lists: u32,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Removes a list (and the default setting if it named this list); false if there was
    /// no such list.
    fn remove_privacy_list<'a>(
        &'a self,
        user: &'a BareJid,
        name: &'a str,
    ) -> BoxFuture<'a, Result<bool, StorageError>>;

    /// Sets (`Some`) or clears (`None`) the default list. [`StorageError::NotFound`] if the
    /// named list does not exist.
    fn set_default_privacy_list<'a>(
        &'a self,
        user: &'a BareJid,
        name: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Deletes every list and the default setting of the user (account removal).
    fn remove_privacy<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, Result<(), StorageError>>;
}

/// Checks what every backend refuses before writing a list.
pub fn validate_privacy_items(items: &[PrivacyItem]) -> Result<(), StorageError> {
    if items.is_empty() {
        return Err(StorageError::InvalidValue(
            "a privacy list has at least one item",
        ));
    }
    let mut orders: Vec<u32> = items.iter().map(|i| i.order).collect();
    orders.sort_unstable();
    if orders.windows(2).any(|w| w.first() == w.get(1)) {
        return Err(StorageError::InvalidValue(
            "privacy item orders must be unique",
        ));
    }
    if items
        .iter()
        .any(|i| i.matcher == PrivacyMatch::Subscription(Subscription::Remove))
    {
        return Err(StorageError::InvalidValue(
            "a privacy item cannot match subscription 'remove'",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(order: u32) -> PrivacyItem {
        PrivacyItem {
            matcher: PrivacyMatch::Jid("a@b".into()),
            action: PrivacyAction::Deny,
            order,
            stanzas: PrivacyStanzas::ALL,
        }
    }

    #[test]
    fn action_round_trips() {
        for a in [PrivacyAction::Allow, PrivacyAction::Deny] {
            assert_eq!(PrivacyAction::parse(a.as_str()), Some(a));
        }
        assert_eq!(PrivacyAction::parse("Deny"), None);
    }

    #[test]
    fn block_items_are_jid_deny_all() {
        assert!(item(1).is_block());
        let mut i = item(1);
        i.stanzas.message = true;
        assert!(!i.is_block());
        let mut i = item(1);
        i.action = PrivacyAction::Allow;
        assert!(!i.is_block());
        let mut i = item(1);
        i.matcher = PrivacyMatch::Group("g".into());
        assert!(!i.is_block());
    }

    #[test]
    fn validation() {
        assert!(validate_privacy_items(&[]).is_err());
        assert!(validate_privacy_items(&[item(1), item(1)]).is_err());
        assert!(validate_privacy_items(&[item(2), item(1)]).is_ok());
        let mut i = item(1);
        i.matcher = PrivacyMatch::Subscription(Subscription::Remove);
        assert!(validate_privacy_items(&[i]).is_err());
    }

    #[test]
    fn match_attributes() {
        assert_eq!(PrivacyMatch::Always.type_name(), None);
        assert_eq!(PrivacyMatch::Always.value(), None);
        let s = PrivacyMatch::Subscription(Subscription::Both);
        assert_eq!(
            (s.type_name(), s.value()),
            (Some("subscription"), Some("both"))
        );
    }
}
