//! Conformance scenarios for [`crate::ClusterStore`]: announcing refreshes one row per node,
//! the listing honours the freshness bound and sorts by name, forgetting removes the row.

use crate::{StorageError, Stores};

fn check(ok: bool, what: &str) -> Result<(), StorageError> {
    if ok {
        Ok(())
    } else {
        Err(StorageError::Backend(format!("conformance: {what}")))
    }
}

/// Runs every cluster scenario.
pub async fn run_all(s: &dyn Stores) -> Result<(), StorageError> {
    cluster_nodes_announce_list_forget(s).await
}

/// One row per node, refreshed in place; stale rows are not listed; forget removes.
pub async fn cluster_nodes_announce_list_forget(s: &dyn Stores) -> Result<(), StorageError> {
    s.announce_node("starling@b", "127.0.0.2:4370", 100).await?;
    s.announce_node("starling@a", "127.0.0.1:4370", 90).await?;
    // A re-announce moves the address and the time; it does not add a row.
    s.announce_node("starling@b", "127.0.0.2:4371", 120).await?;
    let all = s.cluster_nodes(0).await?;
    check(
        all == [
            ("starling@a".to_owned(), "127.0.0.1:4370".to_owned()),
            ("starling@b".to_owned(), "127.0.0.2:4371".to_owned()),
        ],
        "announce upserts one row per node, listed by name",
    )?;
    let fresh = s.cluster_nodes(100).await?;
    check(
        fresh == [("starling@b".to_owned(), "127.0.0.2:4371".to_owned())],
        "nodes not seen since the bound are left out",
    )?;
    check(
        s.forget_node("starling@a").await?,
        "forget reports a known node",
    )?;
    check(!s.forget_node("starling@a").await?, "forget twice is false")?;
    check(
        s.cluster_nodes(0).await?.len() == 1,
        "forget removes the row",
    )?;
    Ok(())
}
