//! [`PepStore`] on SQL: the `pep_nodes` and `pep_items` tables of migration 0006 (XEP-0163).
//!
//! Writes that create a node start with an `INSERT .. ON CONFLICT DO NOTHING` of the node, so
//! the transaction holds the write lock (SQLite) or the row lock (PostgreSQL) before it counts
//! the account's nodes for the quota, and learns from the affected row count whether the node
//! is new. Item times are made strictly increasing within a node (the previous newest plus one
//! µs at least), so "newest" never depends on clock resolution or a clock stepping back.

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::Transaction;
use starling_storage::{
    BareJid, BoxFuture, PepItem, PepItemsQuery, PepNode, PepStore, StorageError, account_key,
};

use crate::{SqlStore, backend, per_backend};

/// Joins roster group names in one column: U+001F cannot occur in XML character data.
const GROUP_SEPARATOR: char = '\u{1f}';

/// `$1` host, `$2` username, `$3` node.
pub(crate) const SELECT_NODE: &str = "SELECT node, access_model, max_items, persist_items, \
     send_last_published_item, roster_groups FROM pep_nodes \
     WHERE host = $1 AND username = $2 AND node = $3";
/// `$1` host, `$2` username.
pub(crate) const SELECT_NODES: &str = "SELECT node, access_model, max_items, persist_items, \
     send_last_published_item, roster_groups FROM pep_nodes \
     WHERE host = $1 AND username = $2 ORDER BY node";
/// `$1` host, `$2` username, `$3` node, `$4` access_model, `$5` max_items, `$6`
/// persist_items, `$7` send_last_published_item, `$8` roster_groups, `$9` created_at (µs).
pub(crate) const INSERT_NODE: &str = "INSERT INTO pep_nodes (host, username, node, \
     access_model, max_items, persist_items, send_last_published_item, roster_groups, \
     created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
     ON CONFLICT (host, username, node) DO NOTHING";
/// `$1` host, `$2` username, `$3` node, `$4` access_model, `$5` max_items, `$6`
/// persist_items, `$7` send_last_published_item, `$8` roster_groups.
pub(crate) const UPDATE_NODE: &str = "UPDATE pep_nodes SET access_model = $4, \
     max_items = $5, persist_items = $6, send_last_published_item = $7, roster_groups = $8 \
     WHERE host = $1 AND username = $2 AND node = $3";
/// `$1` host, `$2` username.
pub(crate) const COUNT_NODES: &str =
    "SELECT COUNT(*) FROM pep_nodes WHERE host = $1 AND username = $2";
/// `$1` host, `$2` username, `$3` node.
pub(crate) const DELETE_NODE: &str =
    "DELETE FROM pep_nodes WHERE host = $1 AND username = $2 AND node = $3";
/// `$1` host, `$2` username, `$3` node.
pub(crate) const DELETE_NODE_ITEMS: &str =
    "DELETE FROM pep_items WHERE host = $1 AND username = $2 AND node = $3";
/// `$1` host, `$2` username.
pub(crate) const DELETE_USER_NODES: &str =
    "DELETE FROM pep_nodes WHERE host = $1 AND username = $2";
/// `$1` host, `$2` username.
pub(crate) const DELETE_USER_ITEMS: &str =
    "DELETE FROM pep_items WHERE host = $1 AND username = $2";
/// `$1` host, `$2` username, `$3` node.
pub(crate) const NEWEST_TIME: &str = "SELECT MAX(published_at) FROM pep_items \
     WHERE host = $1 AND username = $2 AND node = $3";
/// `$1` host, `$2` username, `$3` node, `$4` item_id, `$5` payload, `$6` publisher, `$7`
/// published_at (µs).
pub(crate) const UPSERT_ITEM: &str = "INSERT INTO pep_items (host, username, node, item_id, \
     payload, publisher, published_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (host, username, node, item_id) DO UPDATE SET payload = excluded.payload, \
     publisher = excluded.publisher, published_at = excluded.published_at";
/// `$1` host, `$2` username, `$3` node, `$4` how many of the newest items to keep.
pub(crate) const TRIM_ITEMS: &str = "DELETE FROM pep_items \
     WHERE host = $1 AND username = $2 AND node = $3 AND item_id NOT IN (\
     SELECT item_id FROM pep_items WHERE host = $1 AND username = $2 AND node = $3 \
     ORDER BY published_at DESC LIMIT $4)";
/// `$1` host, `$2` username, `$3` node, `$4` limit.
pub(crate) const SELECT_NEWEST_ITEMS: &str = "SELECT item_id, payload, publisher, \
     published_at FROM pep_items WHERE host = $1 AND username = $2 AND node = $3 \
     ORDER BY published_at DESC LIMIT $4";
/// `$1` host, `$2` username, `$3` node, `$4` item_id.
pub(crate) const SELECT_ITEM: &str = "SELECT item_id, payload, publisher, published_at \
     FROM pep_items WHERE host = $1 AND username = $2 AND node = $3 AND item_id = $4";
/// `$1` host, `$2` username, `$3` node, `$4` item_id.
pub(crate) const DELETE_ITEM: &str = "DELETE FROM pep_items \
     WHERE host = $1 AND username = $2 AND node = $3 AND item_id = $4";

/// A `pep_nodes` row as selected.
type NodeRow = (String, String, i64, bool, String, String);
/// A `pep_items` row as selected.
type ItemRow = (String, String, String, i64);

fn node_of(row: NodeRow) -> PepNode {
    let (name, access_model, max_items, persist_items, send_last_published_item, groups) = row;
    PepNode {
        name,
        access_model,
        // A value outside u32 can only come from outside this crate; clamp rather than fail.
        max_items: u32::try_from(max_items.max(0)).unwrap_or(u32::MAX),
        persist_items,
        send_last_published_item,
        roster_groups: groups
            .split(GROUP_SEPARATOR)
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
            .collect(),
    }
}

fn item_of((id, payload, publisher, published_at): ItemRow) -> PepItem {
    PepItem {
        id,
        payload,
        publisher,
        published_at,
    }
}

fn groups_column(node: &PepNode) -> String {
    let mut joined = String::new();
    for group in node.roster_groups.iter().filter(|g| !g.is_empty()) {
        if !joined.is_empty() {
            joined.push(GROUP_SEPARATOR);
        }
        // A separator inside a name would split it on reading; XML text cannot carry one.
        joined.extend(group.chars().filter(|c| *c != GROUP_SEPARATOR));
    }
    joined
}

/// How many items a node keeps.
fn kept(node: &PepNode) -> i64 {
    if node.persist_items {
        i64::from(node.max_items)
    } else {
        0
    }
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

per_backend! {
    /// Inserts the node if missing; true if it was created. Refuses a creation over `max_nodes`.
    async fn create_if_missing(
        tx: &mut Transaction<'_, Db>,
        (host, username): (&str, &str),
        node: &PepNode,
        max_nodes: u32,
    ) -> Result<bool, StorageError> {
        let created = sqlx::query(INSERT_NODE)
            .bind(host)
            .bind(username)
            .bind(node.name.as_str())
            .bind(node.access_model.as_str())
            .bind(i64::from(node.max_items))
            .bind(node.persist_items)
            .bind(node.send_last_published_item.as_str())
            .bind(groups_column(node))
            .bind(now_micros())
            .execute(&mut **tx)
            .await
            .map_err(backend)?
            .rows_affected()
            > 0;
        if created {
            let count: i64 = sqlx::query_scalar(COUNT_NODES)
                .bind(host)
                .bind(username)
                .fetch_one(&mut **tx)
                .await
                .map_err(backend)?;
            if count > i64::from(max_nodes) {
                return Err(StorageError::QuotaExceeded);
            }
        }
        Ok(created)
    }

    async fn trim(
        tx: &mut Transaction<'_, Db>,
        (host, username): (&str, &str),
        node: &PepNode,
    ) -> Result<(), StorageError> {
        sqlx::query(TRIM_ITEMS)
            .bind(host)
            .bind(username)
            .bind(node.name.as_str())
            .bind(kept(node))
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
        Ok(())
    }

    impl PepStore for SqlStore<Db> {
        fn pep_node<'a>(
            &'a self,
            user: &'a BareJid,
            node: &'a str,
        ) -> BoxFuture<'a, Result<Option<PepNode>, StorageError>> {
            self.timed("pep.pep_node", async move {
                let (host, username) = account_key(user)?;
                let row: Option<NodeRow> = sqlx::query_as(SELECT_NODE)
                    .bind(host)
                    .bind(username)
                    .bind(node)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(backend)?;
                Ok(row.map(node_of))
            })
        }

        fn pep_nodes<'a>(
            &'a self,
            user: &'a BareJid,
        ) -> BoxFuture<'a, Result<Vec<PepNode>, StorageError>> {
            self.timed("pep.pep_nodes", async move {
                let (host, username) = account_key(user)?;
                let rows: Vec<NodeRow> = sqlx::query_as(SELECT_NODES)
                    .bind(host)
                    .bind(username)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(backend)?;
                let mut nodes: Vec<PepNode> = rows.into_iter().map(node_of).collect();
                // By bytes, whatever the database's collation (see crate::sql).
                nodes.sort_unstable_by(|a, b| a.name.cmp(&b.name));
                Ok(nodes)
            })
        }

        fn put_pep_node<'a>(
            &'a self,
            user: &'a BareJid,
            node: &'a PepNode,
            max_nodes: u32,
        ) -> BoxFuture<'a, Result<(), StorageError>> {
            self.timed("pep.put_pep_node", async move {
                let key = account_key(user)?;
                let mut tx = self.pool.begin().await.map_err(backend)?;
                // Dropping the transaction on an error rolls it back.
                let created = create_if_missing(&mut tx, key, node, max_nodes).await?;
                if !created {
                    sqlx::query(UPDATE_NODE)
                        .bind(key.0)
                        .bind(key.1)
                        .bind(node.name.as_str())
                        .bind(node.access_model.as_str())
                        .bind(i64::from(node.max_items))
                        .bind(node.persist_items)
                        .bind(node.send_last_published_item.as_str())
                        .bind(groups_column(node))
                        .execute(&mut *tx)
                        .await
                        .map_err(backend)?;
                    trim(&mut tx, key, node).await?;
                }
                tx.commit().await.map_err(backend)
            })
        }

        fn publish_pep_item<'a>(
            &'a self,
            user: &'a BareJid,
            config: &'a PepNode,
            item: &'a PepItem,
            max_nodes: u32,
        ) -> BoxFuture<'a, Result<(), StorageError>> {
            self.timed("pep.publish_pep_item", async move {
                let key = account_key(user)?;
                let (host, username) = key;
                let mut tx = self.pool.begin().await.map_err(backend)?;
                create_if_missing(&mut tx, key, config, max_nodes).await?;
                // The stored configuration wins over the one offered for creation.
                let row: Option<NodeRow> = sqlx::query_as(SELECT_NODE)
                    .bind(host)
                    .bind(username)
                    .bind(config.name.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(backend)?;
                let node = row.map(node_of).unwrap_or_else(|| config.clone());
                let newest: Option<i64> = sqlx::query_scalar(NEWEST_TIME)
                    .bind(host)
                    .bind(username)
                    .bind(node.name.as_str())
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(backend)?;
                let at = item
                    .published_at
                    .max(newest.map_or(i64::MIN, |t| t.saturating_add(1)));
                sqlx::query(UPSERT_ITEM)
                    .bind(host)
                    .bind(username)
                    .bind(node.name.as_str())
                    .bind(item.id.as_str())
                    .bind(item.payload.as_str())
                    .bind(item.publisher.as_str())
                    .bind(at)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                trim(&mut tx, key, &node).await?;
                tx.commit().await.map_err(backend)
            })
        }

        fn pep_items<'a>(
            &'a self,
            user: &'a BareJid,
            node: &'a str,
            query: PepItemsQuery<'a>,
        ) -> BoxFuture<'a, Result<Vec<PepItem>, StorageError>> {
            self.timed("pep.pep_items", async move {
                let (host, username) = account_key(user)?;
                let rows: Vec<ItemRow> = match query {
                    PepItemsQuery::All | PepItemsQuery::Newest(_) => {
                        let limit = match query {
                            PepItemsQuery::Newest(n) => i64::from(n),
                            _ => i64::MAX,
                        };
                        sqlx::query_as(SELECT_NEWEST_ITEMS)
                            .bind(host)
                            .bind(username)
                            .bind(node)
                            .bind(limit)
                            .fetch_all(&self.pool)
                            .await
                            .map_err(backend)?
                    }
                    PepItemsQuery::Ids(ids) => {
                        let mut rows: Vec<ItemRow> = Vec::new();
                        for id in ids {
                            if rows.iter().any(|r| r.0 == *id) {
                                continue;
                            }
                            let row: Option<ItemRow> = sqlx::query_as(SELECT_ITEM)
                                .bind(host)
                                .bind(username)
                                .bind(node)
                                .bind(id.as_str())
                                .fetch_optional(&self.pool)
                                .await
                                .map_err(backend)?;
                            rows.extend(row);
                        }
                        rows.sort_by_key(|r| std::cmp::Reverse(r.3));
                        rows
                    }
                };
                Ok(rows.into_iter().map(item_of).collect())
            })
        }

        fn retract_pep_item<'a>(
            &'a self,
            user: &'a BareJid,
            node: &'a str,
            id: &'a str,
        ) -> BoxFuture<'a, Result<bool, StorageError>> {
            self.timed("pep.retract_pep_item", async move {
                let (host, username) = account_key(user)?;
                let deleted = sqlx::query(DELETE_ITEM)
                    .bind(host)
                    .bind(username)
                    .bind(node)
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(backend)?
                    .rows_affected();
                Ok(deleted > 0)
            })
        }

        fn delete_pep_node<'a>(
            &'a self,
            user: &'a BareJid,
            node: &'a str,
        ) -> BoxFuture<'a, Result<bool, StorageError>> {
            self.timed("pep.delete_pep_node", async move {
                let (host, username) = account_key(user)?;
                let mut tx = self.pool.begin().await.map_err(backend)?;
                let deleted = sqlx::query(DELETE_NODE)
                    .bind(host)
                    .bind(username)
                    .bind(node)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?
                    .rows_affected();
                sqlx::query(DELETE_NODE_ITEMS)
                    .bind(host)
                    .bind(username)
                    .bind(node)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                tx.commit().await.map_err(backend)?;
                Ok(deleted > 0)
            })
        }

        fn remove_pep<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, Result<u64, StorageError>> {
            self.timed("pep.remove_pep", async move {
                let (host, username) = account_key(user)?;
                let mut tx = self.pool.begin().await.map_err(backend)?;
                let nodes = sqlx::query(DELETE_USER_NODES)
                    .bind(host)
                    .bind(username)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?
                    .rows_affected();
                sqlx::query(DELETE_USER_ITEMS)
                    .bind(host)
                    .bind(username)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                tx.commit().await.map_err(backend)?;
                Ok(nodes)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_keyed_by_host_and_username() {
        for statement in [
            SELECT_NODE,
            SELECT_NODES,
            INSERT_NODE,
            UPDATE_NODE,
            COUNT_NODES,
            DELETE_NODE,
            DELETE_NODE_ITEMS,
            DELETE_USER_NODES,
            DELETE_USER_ITEMS,
            NEWEST_TIME,
            UPSERT_ITEM,
            TRIM_ITEMS,
            SELECT_NEWEST_ITEMS,
            SELECT_ITEM,
            DELETE_ITEM,
        ] {
            assert!(statement.contains("host"), "{statement}");
            assert!(statement.contains("username"), "{statement}");
            assert!(!statement.contains('?'), "{statement}");
        }
    }

    #[test]
    fn roster_groups_round_trip_through_one_column() {
        let node = PepNode {
            name: "n".into(),
            access_model: "roster".into(),
            max_items: 1,
            persist_items: true,
            send_last_published_item: "on_sub_and_presence".into(),
            roster_groups: vec!["Friends".into(), "Work, mostly".into(), String::new()],
        };
        let column = groups_column(&node);
        let back = node_of((
            "n".into(),
            "roster".into(),
            1,
            true,
            "on_sub_and_presence".into(),
            column,
        ));
        assert_eq!(back.roster_groups, vec!["Friends", "Work, mostly"]);
        assert_eq!(kept(&back), 1);
        let volatile = PepNode {
            persist_items: false,
            ..back
        };
        assert_eq!(kept(&volatile), 0);
    }
}
