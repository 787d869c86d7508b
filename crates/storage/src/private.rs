//! [`PrivateStore`]: XEP-0049 private XML storage, one fragment per (account, namespace).
//!
//! The value for a namespace is the serialised XML of every element the client stored in it
//! (XEP-0049 §2.3 allows several elements of one namespace in a set); a later set in the same
//! namespace replaces it. The number of namespaces per account is a quota checked in the same
//! transaction as the write (DESIGN §6).

use starling_xmpp::jid::BareJid;

use crate::{BoxFuture, StorageError};

/// XEP-0049 private XML storage.
pub trait PrivateStore: Send + Sync {
    /// The XML stored for `namespace`, or `None`.
    fn private_data<'a>(
        &'a self,
        user: &'a BareJid,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StorageError>>;

    /// Stores each `(namespace, xml)` pair, replacing what those namespaces held, all or
    /// nothing. Fails with [`StorageError::QuotaExceeded`] (storing nothing) if the account
    /// would then hold more than `max_namespaces` namespaces.
    fn set_private_data<'a>(
        &'a self,
        user: &'a BareJid,
        entries: &'a [(String, String)],
        max_namespaces: u32,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Deletes everything the account stored; returns how many namespaces were removed.
    fn remove_private_data<'a>(
        &'a self,
        user: &'a BareJid,
    ) -> BoxFuture<'a, Result<u64, StorageError>>;
}
