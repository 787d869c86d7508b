//! [`OfflineStore`]: messages kept for accounts with no available resource (XEP-0160), and
//! the per-message access XEP-0013 (flexible offline message retrieval) needs.
//!
//! Each message gets a per-user id that only grows, so ids give the arrival order (XEP-0160
//! §4: deliver in the order received) and serve as XEP-0013 node names. The per-user quota
//! is checked in the insert's transaction (DESIGN §6), so concurrent senders cannot overshoot
//! it. Messages are stored as serialized XML (with the `<delay/>` the module added), never
//! interpreted here.

use starling_xmpp::jid::BareJid;

use crate::{BoxFuture, StorageError};

/// One stored offline message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfflineEntry {
    /// Per-user id, increasing with arrival; also the XEP-0013 node.
    pub id: i64,
    /// When it was stored, µs since the Unix epoch (UTC).
    pub stored_at: i64,
    /// The sender's JID as the server stamped it (XEP-0013 headers show it).
    pub from: String,
    /// The message element, serialized.
    pub xml: String,
}

/// What [`OfflineStore::push_offline`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// Stored under this id.
    Stored(i64),
    /// The user already has `max` messages stored; nothing was written.
    QuotaExceeded,
}

/// Offline message storage.
pub trait OfflineStore: Send + Sync {
    /// Stores a message for `user` unless it already has `max` or more stored.
    fn push_offline<'a>(
        &'a self,
        user: &'a BareJid,
        from: &'a str,
        xml: &'a str,
        stored_at: i64,
        max: u32,
    ) -> BoxFuture<'a, Result<PushOutcome, StorageError>>;

    /// Number of messages stored for `user`.
    fn offline_count<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, Result<u64, StorageError>>;

    /// Every stored message of `user`, oldest first.
    fn offline_messages<'a>(
        &'a self,
        user: &'a BareJid,
    ) -> BoxFuture<'a, Result<Vec<OfflineEntry>, StorageError>>;

    /// `(id, from)` of every stored message, oldest first, without loading the payloads.
    fn offline_headers<'a>(
        &'a self,
        user: &'a BareJid,
    ) -> BoxFuture<'a, Result<Vec<(i64, String)>, StorageError>>;

    /// One stored message by id.
    fn offline_message<'a>(
        &'a self,
        user: &'a BareJid,
        id: i64,
    ) -> BoxFuture<'a, Result<Option<OfflineEntry>, StorageError>>;

    /// Removes and returns every stored message, oldest first, in one atomic step, so two
    /// sessions coming online together never both receive the same message.
    fn take_offline<'a>(
        &'a self,
        user: &'a BareJid,
    ) -> BoxFuture<'a, Result<Vec<OfflineEntry>, StorageError>>;

    /// Puts back messages taken by [`Self::take_offline`] that could not be delivered, under
    /// their original ids (so the order holds); the quota is not checked again.
    fn restore_offline<'a>(
        &'a self,
        user: &'a BareJid,
        entries: &'a [OfflineEntry],
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Removes one message; false if there was none with that id.
    fn remove_offline<'a>(
        &'a self,
        user: &'a BareJid,
        id: i64,
    ) -> BoxFuture<'a, Result<bool, StorageError>>;

    /// Removes every stored message (XEP-0013 purge); returns how many there were.
    fn clear_offline<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, Result<u64, StorageError>>;

    /// Removes everything kept for `user`, ids included (account deletion).
    fn remove_offline_user<'a>(
        &'a self,
        user: &'a BareJid,
    ) -> BoxFuture<'a, Result<(), StorageError>>;
}
