//! [`AccountStore`]: accounts and their SCRAM keys (RFC 5802 §3, RFC 7677).
//!
//! An account is keyed by `(host, username)`, both already normalised (RFC 7622 PRECIS);
//! the store compares them byte for byte. Only the SCRAM keys of [`Credentials`] are kept,
//! never a password, so a database leak does not reveal passwords and PLAIN logins are
//! checked by deriving the keys again.

use starling_xmpp::jid::BareJid;
use starling_xmpp::scram::Credentials;

use crate::{BoxFuture, StorageError};

/// Registered accounts (ejabberd's `users` table, with SCRAM keys only).
pub trait AccountStore: Send + Sync {
    /// Creates the account; [`StorageError::AlreadyExists`] if the username is taken.
    fn create<'a>(
        &'a self,
        user: &'a BareJid,
        creds: &'a Credentials,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// The account's SCRAM keys, or `None` if there is no such account.
    fn credentials<'a>(
        &'a self,
        user: &'a BareJid,
    ) -> BoxFuture<'a, Result<Option<Credentials>, StorageError>>;

    /// Replaces the keys (password change); [`StorageError::NotFound`] if there is no account.
    fn set_credentials<'a>(
        &'a self,
        user: &'a BareJid,
        creds: &'a Credentials,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Whether the account exists.
    fn exists<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, Result<bool, StorageError>>;

    /// Deletes the account with its roster, roster version and last activity, in one
    /// transaction. Returns whether there was an account.
    fn remove<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, Result<bool, StorageError>>;

    /// The usernames registered on `host`, sorted by bytes (the same order on every backend).
    fn list<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<String>, StorageError>>;

    /// How many accounts `host` has.
    fn count<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<u64, StorageError>>;
}
