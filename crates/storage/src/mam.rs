//! [`MamStore`]: per-user message archives (XEP-0313 §3.1 "User archives") and the archiving
//! preferences of XEP-0313 §7.
//!
//! An archive is a list of messages ordered by id. The id is chosen by the caller: a
//! per-node monotonic timestamp in µs (DESIGN §6) that is unique within one user's archive,
//! doubles as the XEP-0359 `<stanza-id/>` and the XEP-0059 RSM key, and is the archive time
//! (start/end filters compare ids). A second node picking the same µs for the same user is
//! refused with [`StorageError::AlreadyExists`] and the caller retries with a later id.
//!
//! Every query is bounded by `max` and answered through an index on `(host, username, id)`
//! or `(host, username, with_bare, id)`; no query scans another user's rows.

use starling_xmpp::jid::{BareJid, Jid};

use crate::{BoxFuture, StorageError};

/// Who sent an archived message, seen from the archive's owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Received by the owner.
    Incoming,
    /// Sent by the owner.
    Outgoing,
}

/// One archived message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedMessage {
    /// Archive id: µs since the Unix epoch, unique in this archive.
    pub id: i64,
    /// The other party's bare JID.
    pub with: BareJid,
    /// The other party's resource, empty if it was addressed by bare JID.
    pub with_resource: String,
    /// Sent or received.
    pub direction: Direction,
    /// The `<message/>` as serialised XML (`jabber:client` namespace).
    pub stanza: String,
}

/// The XEP-0313 §4.1.1 `with` filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArchiveWith {
    /// A bare JID: messages with any of its resources.
    Bare(BareJid),
    /// A full JID: messages with exactly this resource.
    Full(BareJid, String),
}

/// A query on one archive: filters (which messages match, and are counted) and the page
/// (which of the matches are returned).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveQuery {
    /// XEP-0313 §4.1.1 `with`.
    pub with: Option<ArchiveWith>,
    /// Inclusive lower bound on the id (XEP-0313 §4.1.2 `start`, in µs).
    pub start: Option<i64>,
    /// Inclusive upper bound on the id (XEP-0313 §4.1.2 `end`, in µs).
    pub end: Option<i64>,
    /// Exclusive lower bound (XEP-0313 §4.1.3 `after-id`); must name an archived message.
    pub after_id: Option<i64>,
    /// Exclusive upper bound (XEP-0313 §4.1.3 `before-id`); must name an archived message.
    pub before_id: Option<i64>,
    /// Only these ids (XEP-0313 §4.1.4 `ids`); empty means no such filter.
    pub ids: Vec<i64>,
    /// RSM `<after/>` (XEP-0059 §2.2): the page starts after this id, which must exist.
    pub page_after: Option<i64>,
    /// RSM `<before/>` (XEP-0059 §2.3): the page ends before this id, which must exist.
    pub page_before: Option<i64>,
    /// Take the newest `max` matches instead of the oldest (RSM `<before/>` was given,
    /// possibly empty: "the last page"). Results are still returned oldest first.
    pub from_end: bool,
    /// RSM `<index/>` (XEP-0059 §2.4): matches to skip from the oldest (ignored with
    /// `from_end`).
    pub offset: u64,
    /// Most messages returned; the caller applies its page-size limits.
    pub max: u32,
}

/// One page of results.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchivePage {
    /// The messages of the page, oldest first.
    pub messages: Vec<ArchivedMessage>,
    /// True when the page reaches the end of the matches in the paging direction (the
    /// newest match forwards, the oldest with `from_end`): XEP-0313 §4.3 `complete`.
    pub complete: bool,
    /// Number of messages matching the filters, ignoring the page (RSM `<count/>`).
    pub count: u64,
}

/// The default archiving policy of XEP-0313 §7.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchivePolicy {
    /// Archive every message.
    Always,
    /// Archive nothing.
    Never,
    /// Archive messages with JIDs in the user's roster.
    Roster,
}

impl ArchivePolicy {
    /// The XEP-0313 `default` attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::Never => "never",
            Self::Roster => "roster",
        }
    }

    /// Parses a `default` attribute value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "always" => Some(Self::Always),
            "never" => Some(Self::Never),
            "roster" => Some(Self::Roster),
            _ => None,
        }
    }
}

/// A user's archiving preferences (XEP-0313 §7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivePrefs {
    /// Policy for JIDs in neither list.
    pub default: ArchivePolicy,
    /// JIDs (bare or full) always archived.
    pub always: Vec<Jid>,
    /// JIDs (bare or full) never archived; wins over `always`.
    pub never: Vec<Jid>,
}

/// XEP-0313 message archives.
pub trait MamStore: Send + Sync {
    /// Appends `message` to `user`'s archive. With `expire_before`, messages with a smaller
    /// id are deleted in the same transaction (retention by purge on insert).
    /// A message with the same id already there is [`StorageError::AlreadyExists`].
    fn archive_message<'a>(
        &'a self,
        user: &'a BareJid,
        message: &'a ArchivedMessage,
        expire_before: Option<i64>,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Runs `query` on `user`'s archive. An id in `after_id`, `before_id`, `page_after` or
    /// `page_before` that is not in the archive is [`StorageError::NotFound`] (XEP-0313 §4.3
    /// `<item-not-found/>`).
    fn query_archive<'a>(
        &'a self,
        user: &'a BareJid,
        query: &'a ArchiveQuery,
    ) -> BoxFuture<'a, Result<ArchivePage, StorageError>>;

    /// The oldest and newest ids of `user`'s archive, or `None` if it is empty
    /// (XEP-0313 §6.1 metadata).
    fn archive_bounds<'a>(
        &'a self,
        user: &'a BareJid,
    ) -> BoxFuture<'a, Result<Option<(i64, i64)>, StorageError>>;

    /// `user`'s stored preferences, `None` if never set.
    fn archive_prefs<'a>(
        &'a self,
        user: &'a BareJid,
    ) -> BoxFuture<'a, Result<Option<ArchivePrefs>, StorageError>>;

    /// Replaces `user`'s preferences.
    fn set_archive_prefs<'a>(
        &'a self,
        user: &'a BareJid,
        prefs: &'a ArchivePrefs,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Deletes `user`'s archive and preferences (account removal).
    fn remove_archive<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, Result<(), StorageError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_round_trips_and_refuses_unknown_words() {
        for p in [
            ArchivePolicy::Always,
            ArchivePolicy::Never,
            ArchivePolicy::Roster,
        ] {
            assert_eq!(ArchivePolicy::parse(p.as_str()), Some(p));
        }
        assert_eq!(ArchivePolicy::parse("Always"), None);
        assert_eq!(ArchivePolicy::parse(""), None);
    }
}
