//! [`MucStore`]: persistent multi-user chat rooms (XEP-0045 §10.2 "persistent room").
//!
//! Only persistent rooms are stored: their configuration, subject and affiliations. Occupants,
//! roles and history live in the room's task and are gone when it stops, as in ejabberd. The
//! configuration is an opaque string the MUC module encodes and decodes itself, so adding a
//! room option never needs a migration. A room and its affiliation list are written together
//! in one transaction, so a reader never sees a configuration without its owners.

use crate::{BoxFuture, StorageError};

/// A persistent room as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredRoom {
    /// The MUC service's domain (`conference.example.org`).
    pub service: String,
    /// The room's localpart (already nodeprep'ed).
    pub name: String,
    /// The room configuration, encoded by the MUC module.
    pub options: String,
    /// The current subject (empty: none).
    pub subject: String,
    /// The nickname that set the subject.
    pub subject_author: String,
    /// Affiliations other than `none`: `(bare JID, affiliation, reason)`, sorted by JID.
    pub affiliations: Vec<(String, String, String)>,
}

/// XEP-0045 persistent rooms, per MUC service.
pub trait MucStore: Send + Sync {
    /// Every stored room of `service`, sorted by name.
    fn muc_rooms<'a>(
        &'a self,
        service: &'a str,
    ) -> BoxFuture<'a, Result<Vec<StoredRoom>, StorageError>>;

    /// One stored room, or `None`.
    fn muc_room<'a>(
        &'a self,
        service: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredRoom>, StorageError>>;

    /// Creates or replaces the room: options, subject and the whole affiliation list.
    fn put_muc_room<'a>(&'a self, room: &'a StoredRoom) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Deletes the room and its affiliations; false if there was none.
    fn delete_muc_room<'a>(
        &'a self,
        service: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<bool, StorageError>>;
}
