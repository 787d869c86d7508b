//! [`LastActivityStore`]: when each user last logged out (XEP-0012 §4, "Offline User Query").
//!
//! One row per account, overwritten at each logout, removed with the account.

use starling_xmpp::jid::BareJid;

use crate::{BoxFuture, StorageError};

/// XEP-0012 last activity: time (unix seconds) and status of the last logout.
pub trait LastActivityStore: Send + Sync {
    /// Records a logout at `seconds` (unix time) with the unavailable presence's status text.
    fn set_last<'a>(
        &'a self,
        user: &'a BareJid,
        seconds: i64,
        status: &'a str,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// The last logout as `(unix seconds, status)`, or `None` if none was recorded.
    fn last<'a>(
        &'a self,
        user: &'a BareJid,
    ) -> BoxFuture<'a, Result<Option<(i64, String)>, StorageError>>;
}
