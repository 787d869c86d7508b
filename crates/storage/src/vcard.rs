//! [`VcardStore`]: each account's vCard (XEP-0054) and the SHA-1 of its photo (XEP-0153).
//!
//! One row per account holding the `<vCard xmlns='vcard-temp'/>` element as XML text, replaced
//! whole at each update (XEP-0054 §3.2: a set is the complete new vCard), removed with the
//! account. The avatar hash is computed by the module when the vCard is set and kept beside
//! it, so that stamping presence with it (XEP-0153 §3.2) never has to decode the photo again.

use starling_xmpp::jid::BareJid;

use crate::{BoxFuture, StorageError};

/// A stored vCard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredVcard {
    /// The `<vCard xmlns='vcard-temp'>` element, serialised.
    pub xml: String,
    /// Lowercase hex SHA-1 of the decoded `PHOTO/BINVAL`, if the vCard has one.
    pub photo_hash: Option<String>,
}

/// XEP-0054 vCard storage.
pub trait VcardStore: Send + Sync {
    /// The account's vCard, or `None` if it never set one.
    fn vcard<'a>(
        &'a self,
        user: &'a BareJid,
    ) -> BoxFuture<'a, Result<Option<StoredVcard>, StorageError>>;

    /// Replaces the account's vCard.
    fn set_vcard<'a>(
        &'a self,
        user: &'a BareJid,
        vcard: &'a StoredVcard,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Deletes the account's vCard; true if there was one.
    fn remove_vcard<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, Result<bool, StorageError>>;
}
