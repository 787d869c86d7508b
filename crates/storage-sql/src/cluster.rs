//! [`ClusterStore`] on SQL: the `cluster_nodes` table of migration 0008
//! (`cluster.discovery: sql`).

use starling_storage::{BoxFuture, ClusterStore, StorageError};

use crate::{SqlStore, backend, per_backend};

/// `$1` node, `$2` address, `$3` seen_at.
const UPSERT_NODE: &str = "INSERT INTO cluster_nodes (node, address, seen_at) VALUES ($1, $2, $3) \
     ON CONFLICT (node) DO UPDATE SET address = excluded.address, seen_at = excluded.seen_at";
/// `$1` seen since.
const SELECT_NODES: &str = "SELECT node, address FROM cluster_nodes WHERE seen_at >= $1";
/// `$1` node.
const DELETE_NODE: &str = "DELETE FROM cluster_nodes WHERE node = $1";

per_backend! {
    impl ClusterStore for SqlStore<Db> {
        fn announce_node<'a>(
            &'a self,
            node: &'a str,
            address: &'a str,
            now: i64,
        ) -> BoxFuture<'a, Result<(), StorageError>> {
            self.timed("cluster.announce_node", async move {
                sqlx::query(UPSERT_NODE)
                    .bind(node)
                    .bind(address)
                    .bind(now)
                    .execute(&self.pool)
                    .await
                    .map_err(backend)?;
                Ok(())
            })
        }

        fn cluster_nodes<'a>(
            &'a self,
            since: i64,
        ) -> BoxFuture<'a, Result<Vec<(String, String)>, StorageError>> {
            self.timed("cluster.cluster_nodes", async move {
                let mut rows: Vec<(String, String)> = sqlx::query_as(SELECT_NODES)
                    .bind(since)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(backend)?;
                // By bytes, not by the database's collation.
                rows.sort();
                Ok(rows)
            })
        }

        fn forget_node<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<bool, StorageError>> {
            self.timed("cluster.forget_node", async move {
                let done = sqlx::query(DELETE_NODE)
                    .bind(node)
                    .execute(&self.pool)
                    .await
                    .map_err(backend)?;
                Ok(done.rows_affected() > 0)
            })
        }
    }
}
