//! [`ClusterStore`]: the cluster's members as the shared database knows them, for
//! `cluster.discovery: sql` (issue 4): nodes sharing a database and a cookie find each other
//! without `join_cluster`.
//!
//! Each node keeps one row (name, cluster address, when it last said it was alive) fresh; a
//! node dials the others seen recently. The database is only a meeting point: links are still
//! authenticated with the cookie, and `leave_cluster` tombstones still keep a removed node out.

use crate::{BoxFuture, StorageError};

/// The cluster's meeting point in the shared database.
pub trait ClusterStore: Send + Sync {
    /// Records that `node` is alive at `now` (unix seconds) and listens on `address`.
    fn announce_node<'a>(
        &'a self,
        node: &'a str,
        address: &'a str,
        now: i64,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Nodes last announced at or after `since` (unix seconds), as `(name, address)`, sorted
    /// by name.
    fn cluster_nodes<'a>(
        &'a self,
        since: i64,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, StorageError>>;

    /// Forgets `node` (it left the cluster or stopped); true if it was known.
    fn forget_node<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<bool, StorageError>>;
}
