//! Placement by rendezvous hashing (DESIGN.md §7.3).
//!
//! `owner(key) = argmax over up members of H(key ‖ 0 ‖ node)`, H being SHA-256 truncated to its
//! first 64 bits (big-endian). A fixed function, unlike std's `DefaultHasher`, so every node and
//! every release picks the same owner; the zero byte keeps `("ab", "c")` apart from
//! `("a", "bc")`. When a member goes, only the keys it owned move.

use sha2::{Digest, Sha256};

/// The rendezvous score of `key` on `node`.
pub fn score(key: &str, node: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    h.update([0u8]);
    h.update(node.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    for (slot, byte) in first.iter_mut().zip(digest.iter()) {
        *slot = *byte;
    }
    u64::from_be_bytes(first)
}

/// The node among `nodes` that owns `key`; ties (astronomically rare) go to the greater name.
pub fn owner<'a>(key: &str, nodes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    nodes
        .into_iter()
        .max_by_key(|node| (score(key, node), *node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_stable_and_independent_of_order() {
        let nodes = ["starling@a", "starling@b", "starling@c"];
        let mut reversed = nodes;
        reversed.reverse();
        for i in 0..100 {
            let key = format!("user{i}@example.org");
            assert_eq!(owner(&key, nodes), owner(&key, reversed));
        }
        assert_eq!(owner("x", std::iter::empty()), None);
        // A fixed function: this value must never change between releases.
        assert_eq!(score("alice@example.org", "starling@a"), {
            let d = Sha256::digest(b"alice@example.org\0starling@a");
            u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
        });
    }

    #[test]
    fn losing_a_node_moves_only_its_keys_and_spreads_them() {
        let all = ["n1", "n2", "n3"];
        let survivors = ["n1", "n3"];
        let mut per_node = std::collections::HashMap::new();
        for i in 0..3000 {
            let key = format!("u{i}@x");
            let before = owner(&key, all).unwrap();
            let after = owner(&key, survivors).unwrap();
            if before != "n2" {
                assert_eq!(before, after, "a key not on the lost node moved");
            }
            *per_node.entry(before).or_insert(0) += 1;
        }
        for n in all {
            let count = per_node.get(n).copied().unwrap_or(0);
            assert!((700..1300).contains(&count), "{n}: {count}");
        }
    }
}
