//! [`StorageError`]: the one error type of the storage layer (DESIGN §12).
//!
//! Variants name what the caller can act on (a duplicate account, a missing one, a quota);
//! everything the backend alone understands is flattened into [`StorageError::Backend`] so
//! that no database type leaks into `core`.

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The row to create is already there (e.g. registering a taken username).
    #[error("already exists")]
    AlreadyExists,
    /// The row to change is not there (e.g. changing the password of an unknown account).
    #[error("not found")]
    NotFound,
    /// A per-user limit would be exceeded; checked in the same transaction as the insert.
    #[error("quota exceeded")]
    QuotaExceeded,
    /// The JID cannot key this kind of row (an account JID without a localpart).
    #[error("invalid jid for this store: {0}")]
    InvalidJid(String),
    /// The value cannot be stored (e.g. a roster item with subscription `remove`).
    #[error("invalid value: {0}")]
    InvalidValue(&'static str),
    /// A stored row does not decode (hand-edited or from an incompatible version).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The database failed or is unreachable; the message is the backend's own.
    #[error("storage backend: {0}")]
    Backend(String),
}
