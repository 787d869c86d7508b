//! The storage interface: what the server keeps in a database, as object-safe traits.
//!
//! This crate owns the *contract* between the server and its durable state (DESIGN §6):
//! accounts and their SCRAM keys ([`AccountStore`]), rosters with versioning
//! ([`RosterStore`], RFC 6121 §2 and §2.6), and last activity ([`LastActivityStore`],
//! XEP-0012). It must never do I/O itself and never depend on a database crate: backends
//! (`starling-storage-sql`) implement the traits, and `core` holds them as
//! `Arc<dyn Stores>`, so it builds and tests without knowing which database is behind them.
//!
//! Every backend must pass the same `conformance` suite (module and cargo feature of that name);
//! there is deliberately no in-memory backend, tests use SQLite.
//!
//! Passwords are never stored: an account holds only the SCRAM keys of RFC 5802 §3
//! ([`Credentials`]), from which PLAIN can be verified too.

#![forbid(unsafe_code)]

pub mod account;
pub mod cluster;
#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "conformance")]
pub mod conformance_cluster;
#[cfg(feature = "conformance")]
pub mod conformance_mam;
#[cfg(feature = "conformance")]
pub mod conformance_muc;
#[cfg(feature = "conformance")]
pub mod conformance_offline;
#[cfg(feature = "conformance")]
pub mod conformance_pep;
#[cfg(feature = "conformance")]
pub mod conformance_privacy;
#[cfg(feature = "conformance")]
pub mod conformance_vcard;
pub mod error;
pub mod last;
pub mod mam;
pub mod muc;
pub mod offline;
pub mod pep;
pub mod privacy;
pub mod private;
pub mod roster;
pub mod timing;
pub mod vcard;

pub use account::AccountStore;
pub use cluster::ClusterStore;
pub use error::StorageError;
pub use last::LastActivityStore;
pub use mam::{
    ArchivePage, ArchivePolicy, ArchivePrefs, ArchiveQuery, ArchiveWith, ArchivedMessage,
    Direction, MamStore,
};
pub use muc::{MucStore, StoredRoom};
pub use offline::{OfflineEntry, OfflineStore, PushOutcome};
pub use pep::{PepItem, PepItemsQuery, PepNode, PepStore};
pub use privacy::{
    PrivacyAction, PrivacyItem, PrivacyList, PrivacyLists, PrivacyMatch, PrivacyStanzas,
    PrivacyStore,
};
pub use private::PrivateStore;
pub use roster::{RosterItem, RosterStore, Subscription};
pub use starling_xmpp::jid::BareJid;
pub use starling_xmpp::scram::Credentials;
pub use vcard::{StoredVcard, VcardStore};

/// The future every storage method returns: boxed so the traits stay object-safe, `Send` so
/// callers can hold it across their own awaits in multi-threaded tasks.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the server holds: one object implementing every store, plus its lifecycle.
///
/// One object rather than one per store so that cross-store operations (removing an account
/// removes its roster and last activity) can run in a single transaction.
pub trait Stores:
    // One store trait per line: features add theirs here.
    AccountStore
    + RosterStore
    + LastActivityStore
    + MamStore
    + OfflineStore
    + VcardStore
    + PrivateStore
    + PrivacyStore
    + PepStore
    + MucStore
    + ClusterStore
{
    /// The backend's name as in ejabberd's `sql_type`: `"sqlite"` or `"pgsql"`.
    fn backend_name(&self) -> &'static str;

    /// Which database this is, stable across restarts, for the cluster handshake (nodes must
    /// share one): `"sqlite"` or `"pgsql://server:port/database"`. Defaults to the name.
    fn db_identity(&self) -> String {
        self.backend_name().to_owned()
    }

    /// Writes a consistent copy of the whole database to `path` (a new file) while serving.
    /// Backends whose own tools do this better (PostgreSQL: `pg_dump`) refuse with
    /// [`StorageError::Backend`] naming the tool.
    fn backup<'a>(&'a self, path: &'a std::path::Path) -> BoxFuture<'a, Result<(), StorageError>> {
        let _ = path;
        Box::pin(async {
            Err(StorageError::Backend(
                "online backup is not available for this backend".to_owned(),
            ))
        })
    }

    /// Replaces the whole database content by the backup at `path` (same schema version);
    /// returns the rows restored. Refused like [`Self::backup`] where unsupported.
    fn restore<'a>(&'a self, path: &'a std::path::Path) -> BoxFuture<'a, Result<u64, StorageError>> {
        let _ = path;
        Box::pin(async {
            Err(StorageError::Backend(
                "online restore is not available for this backend".to_owned(),
            ))
        })
    }

    /// Per-operation call latencies, for backends that time their calls.
    fn query_timings(&self) -> Option<std::sync::Arc<timing::QueryTimings>> {
        None
    }

    /// Flushes and closes the backend; later calls fail with [`StorageError::Backend`].
    ///
    /// Called once at shutdown. The default does nothing, for backends with nothing to flush.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Splits an account JID into the `(host, username)` key every per-user row starts with.
///
/// Accounts always have a localpart; a domain-only JID is a caller bug, reported as
/// [`StorageError::InvalidJid`] rather than stored under an empty username.
pub fn account_key(user: &BareJid) -> Result<(&str, &str), StorageError> {
    match user.node() {
        Some(node) => Ok((user.domain(), node)),
        None => Err(StorageError::InvalidJid(user.as_str().to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_key_splits_host_and_username() {
        let jid = BareJid::new(Some("juliet"), "capulet.example").expect("valid jid");
        assert_eq!(account_key(&jid).ok(), Some(("capulet.example", "juliet")));
    }

    #[test]
    fn account_key_refuses_domain_only_jid() {
        let jid = BareJid::new(None, "capulet.example").expect("valid jid");
        assert!(matches!(
            account_key(&jid),
            Err(StorageError::InvalidJid(s)) if s == "capulet.example"
        ));
    }

    #[test]
    fn traits_are_object_safe() {
        // Compiles only if `dyn Stores` is a valid type, which is what `core` relies on.
        fn takes(_: Option<&dyn Stores>) {}
        takes(None);
    }
}
