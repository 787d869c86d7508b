//! Cluster membership, sans-I/O (DESIGN.md §7.1-7.2): who the members are, who was removed,
//! which of two simultaneous links survives, and how long to wait before re-dialling.
//!
//! Members and tombstones persist in `data_dir/members.json`, so a restarted node re-attaches
//! by itself and a removed node stays out. Membership spreads by gossip: every link that
//! authenticates makes both ends members, and each side tells its peers
//! ([`Membership::update`]); a removal is a tombstone that travels the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::handshake::Role;
use crate::wire::{Hello, Message, Refusal};

/// The members of a cluster as one node knows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Other members: name → cluster address.
    members: BTreeMap<String, String>,
    /// Names removed with `leave_cluster`: refused for good.
    removed: BTreeSet<String>,
}

/// Why `members.json` could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a member list.
    #[error("{path}: not a member list: {reason}")]
    Malformed {
        /// The file.
        path: String,
        /// The parser's message.
        reason: String,
    },
}

impl Membership {
    /// Reads `path`; a missing file is an empty membership (a node not yet clustered).
    pub fn load(path: &Path) -> Result<Self, MembershipError> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| MembershipError::Malformed {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(MembershipError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Writes `path` atomically (a temporary file renamed over it).
    pub fn save(&self, path: &Path) -> Result<(), MembershipError> {
        let io = |source| MembershipError::Io {
            path: path.display().to_string(),
            source,
        };
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Other members, by name.
    pub fn members(&self) -> &BTreeMap<String, String> {
        &self.members
    }

    /// True if `name` is a member.
    pub fn is_member(&self, name: &str) -> bool {
        self.members.contains_key(name)
    }

    /// True if `name` was removed.
    pub fn is_removed(&self, name: &str) -> bool {
        self.removed.contains(name)
    }

    /// Adds or re-addresses a member; removed names and `me` are ignored. True if it changed.
    pub fn add(&mut self, me: &str, name: &str, address: &str) -> bool {
        if name == me || self.removed.contains(name) {
            return false;
        }
        self.members.insert(name.to_owned(), address.to_owned()) != Some(address.to_owned())
    }

    /// Forgets a member without a tombstone (it refused us with `Removed`: we were removed).
    pub fn forget(&mut self, name: &str) -> bool {
        self.members.remove(name).is_some()
    }

    /// Removes `name` for good. True if it changed anything.
    pub fn remove(&mut self, name: &str) -> bool {
        let was_member = self.members.remove(name).is_some();
        self.removed.insert(name.to_owned()) || was_member
    }

    /// This node was removed: it forgets every member (and keeps tombstones).
    pub fn clear(&mut self) {
        self.members.clear();
    }

    /// The membership policy of the handshake: removed nodes are refused.
    pub fn admit(&self, hello: &Hello) -> Result<(), Refusal> {
        if self.removed.contains(&hello.node) {
            return Err(Refusal::Removed);
        }
        Ok(())
    }

    /// The gossip message describing this membership, `me` included.
    pub fn update(&self, me: &str, my_address: &str) -> Message {
        let mut members: Vec<(String, String)> = self
            .members
            .iter()
            .map(|(n, a)| (n.clone(), a.clone()))
            .collect();
        members.push((me.to_owned(), my_address.to_owned()));
        Message::MemberUpdate {
            members,
            removed: self.removed.iter().cloned().collect(),
        }
    }

    /// Merges a peer's gossip: returns the members added (to dial) and the names newly
    /// removed (to unlink and purge; may include `me`).
    pub fn merge(
        &mut self,
        me: &str,
        members: &[(String, String)],
        removed: &[String],
    ) -> (Vec<(String, String)>, Vec<String>) {
        let mut gone = Vec::new();
        for name in removed {
            if self.remove(name) {
                gone.push(name.clone());
            }
        }
        let mut added = Vec::new();
        for (name, address) in members {
            if !self.members.contains_key(name) && self.add(me, name, address) {
                added.push((name.clone(), address.clone()));
            }
        }
        (added, gone)
    }
}

/// One link per node pair: when a second link to the same peer authenticates while one is up,
/// both ends keep the link dialled by the node whose name sorts first. Returns true if the new
/// link (opened with `new_role` from our side) replaces the existing one.
pub fn new_link_wins(me: &str, peer: &str, new_role: Role, existing_role: Role) -> bool {
    if new_role == existing_role {
        // A re-dial after a failure our side has not noticed yet: the newer link is alive.
        return true;
    }
    let preferred = if me < peer {
        Role::Initiator
    } else {
        Role::Responder
    };
    new_role == preferred
}

/// Delay before re-dial attempt `attempt` (0-based): doubling from 1 s, capped at 10 s, with
/// `jitter` in `[0, 1)` spreading it by ±25 % so restarted nodes do not dial in lockstep.
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let base = 2f64
        .powi(i32::try_from(attempt.min(4)).unwrap_or(4))
        .min(10.0);
    let spread = base * (0.75 + 0.5 * jitter.clamp(0.0, 1.0));
    Duration::from_secs_f64(spread.clamp(1.0, 10.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(node: &str) -> Hello {
        Hello {
            node: node.into(),
            incarnation: 1,
            nonce: [0; 32],
            hosts: vec![],
            db_id: String::new(),
            listen: String::new(),
        }
    }

    #[test]
    fn gossip_converges_and_tombstones_win() {
        let mut a = Membership::default();
        let mut b = Membership::default();
        assert!(a.add("a", "b", "10.0.0.2:5370"));
        assert!(
            !a.add("a", "a", "10.0.0.1:5370"),
            "never a member of itself"
        );
        let Message::MemberUpdate { members, removed } = a.update("a", "10.0.0.1:5370") else {
            panic!()
        };
        let (added, gone) = b.merge("b", &members, &removed);
        assert_eq!(added, vec![("a".to_owned(), "10.0.0.1:5370".to_owned())]);
        assert!(gone.is_empty());
        assert!(b.is_member("a") && !b.is_member("b"));
        // Merging again changes nothing.
        assert_eq!(b.merge("b", &members, &removed), (vec![], vec![]));

        assert!(a.remove("b"));
        assert!(a.admit(&hello("b")) == Err(Refusal::Removed));
        assert!(a.admit(&hello("c")).is_ok());
        assert!(
            !a.add("a", "b", "x"),
            "a removed node cannot come back by gossip"
        );
        let Message::MemberUpdate { members, removed } = a.update("a", "10.0.0.1:5370") else {
            panic!()
        };
        let (_, gone) = b.merge("b", &members, &removed);
        assert_eq!(gone, vec!["b".to_owned()], "b learns it was removed");
    }

    #[test]
    fn persists_members_and_tombstones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("members.json");
        assert_eq!(Membership::load(&path).unwrap(), Membership::default());
        let mut m = Membership::default();
        m.add("me", "n2", "127.0.0.2:5370");
        m.remove("n3");
        m.save(&path).unwrap();
        let back = Membership::load(&path).unwrap();
        assert_eq!(back, m);
        assert!(back.is_removed("n3") && back.is_member("n2"));
        std::fs::write(&path, "[1,2").unwrap();
        let err = Membership::load(&path).unwrap_err().to_string();
        assert!(err.contains("members.json"), "{err}");
    }

    #[test]
    fn both_ends_keep_the_same_link() {
        // a < b: the link a dialled survives, seen from both ends.
        assert!(new_link_wins("a", "b", Role::Initiator, Role::Responder));
        assert!(!new_link_wins("a", "b", Role::Responder, Role::Initiator));
        assert!(new_link_wins("b", "a", Role::Responder, Role::Initiator));
        assert!(!new_link_wins("b", "a", Role::Initiator, Role::Responder));
        assert!(new_link_wins("a", "b", Role::Responder, Role::Responder));
    }

    #[test]
    fn backoff_stays_between_one_and_ten_seconds() {
        for attempt in 0..20 {
            for jitter in [0.0, 0.5, 0.999] {
                let d = backoff(attempt, jitter);
                assert!(
                    d >= Duration::from_secs(1) && d <= Duration::from_secs(10),
                    "{d:?}"
                );
            }
        }
        assert!(backoff(5, 0.5) > backoff(1, 0.5));
    }
}
