//! `cluster.discovery: sql` (issue 4): nodes that share the database and the cookie find each
//! other without `join_cluster`.
//!
//! Every [`INTERVAL`] a node writes its row in the shared database's `cluster_nodes` table
//! (name, cluster address, now) and reads the rows written in the last [`FRESH`]; it joins
//! the first node it is not linked with, exactly as `join_cluster ADDRESS` would (the link is
//! still authenticated with the cookie; gossip then links everyone). A node removed with
//! `leave_cluster` is never dialled (its tombstone), and its row is deleted; a node that stops
//! deletes its own row.

use std::time::Duration;

/// How often a node announces itself and looks for others.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// Rows older than this are stale: their node stopped announcing (crashed or partitioned).
pub const FRESH: Duration = Duration::from_secs(15);

/// The addresses to join: fresh rows of nodes that are neither this node, nor linked, nor
/// removed. One is enough for gossip to do the rest, but each unknown one is tried so that a
/// row with a stale address does not stall discovery.
pub fn to_join<'a>(
    me: &str,
    rows: &'a [(String, String)],
    linked: impl Fn(&str) -> bool,
    removed: impl Fn(&str) -> bool,
) -> Vec<&'a str> {
    rows.iter()
        .filter(|(node, _)| node != me && !linked(node) && !removed(node))
        .map(|(_, address)| address.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_only_unlinked_live_members() {
        let rows = vec![
            ("a".to_owned(), "127.0.0.1:1".to_owned()),
            ("b".to_owned(), "127.0.0.2:1".to_owned()),
            ("c".to_owned(), "127.0.0.3:1".to_owned()),
            ("gone".to_owned(), "127.0.0.4:1".to_owned()),
        ];
        let got = to_join("a", &rows, |n| n == "b", |n| n == "gone");
        assert_eq!(got, ["127.0.0.3:1"]);
        assert!(to_join("a", &rows, |_| true, |_| false).is_empty());
    }
}
