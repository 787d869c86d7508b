//! The routes table: domains routed to a service or an external component instead of a host
//! (DESIGN.md §2.1), and what a cluster needs to make it cluster-wide (issues 4 and 8).
//!
//! A route has one of three owners ([`RouteOwner`]):
//! - a **module service** (`conference.HOST`, `upload.HOST`) that every node runs itself from
//!   the same config; it is never replicated;
//! - a **connection on this node** (an XEP-0114 component, [`crate::Server::add_route`]); the
//!   cluster announces it to every member through the [`RouteMirror`] port;
//! - **another node**: a forwarding route the cluster installs for a member's connection, whose
//!   [`Service`] sends each stanza over the link to that member.
//!
//! A domain has one route in the whole cluster: a registration is refused while the domain is
//! routed anywhere this node knows of (the component gets `<conflict/>`, XEP-0114 §3.1). Two
//! nodes may still register the same domain before hearing of each other (a race, or both
//! sides of a partition). Then every node keeps the registration of the node whose name sorts
//! first ([`wins`]): the same answer everywhere without a round trip, so the tables converge;
//! the loser's connection is told through [`Service::revoked`] and closes with `<conflict/>`.
//!
//! Local changes are announced while a lock is held ([`Routes::with_local`] takes it too), so
//! a snapshot sent to a member that links up is never older than an announcement queued before
//! it, nor misses one queued after it: the same ordering the session directory keeps.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use dashmap::DashMap;

use crate::module::Service;

/// Who serves a routed domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteOwner {
    /// A module service that every node runs for its hosts (not replicated).
    Service,
    /// A connection on this node (an external component), announced to the cluster.
    Local,
    /// A connection on the named cluster member; stanzas are forwarded to it.
    Node(Arc<str>),
}

/// A change to the routes this node's connections own, as the cluster replicates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteChange {
    /// A connection here now serves the domain.
    Up(String),
    /// The domain is no longer served here.
    Down(String),
}

/// The port through which the cluster learns of this node's own route changes.
pub trait RouteMirror: Send + Sync {
    /// Called in the order changes happen, under the table's change lock. Must not block.
    fn changed(&self, change: &RouteChange);
}

/// What [`Routes::apply_remote`] did with a member's route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The forwarding route is installed (new, refreshed, or it beat another member's).
    Installed,
    /// The existing route stays (a module service, or an owner whose name sorts first).
    Kept,
    /// It beat this node's own connection, which was revoked (closed with `<conflict/>`).
    Revoked,
}

/// Routes by owner, for metrics and status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteCounts {
    /// Module services.
    pub services: usize,
    /// Connections on this node.
    pub local: usize,
    /// Connections on other members.
    pub remote: usize,
}

struct Entry {
    owner: RouteOwner,
    service: Arc<dyn Service>,
}

/// The routes table of one node. Lookups take no lock beyond a map shard.
#[derive(Default)]
pub struct Routes {
    entries: DashMap<String, Entry>,
    /// Orders local changes with their announcements and with snapshots; holds the mirror.
    changes: Mutex<Option<Arc<dyn RouteMirror>>>,
}

/// True if a registration by `a` beats one by `b` for the same domain: the node name that
/// sorts first wins, decided the same way on every node.
pub fn wins(a: &str, b: &str) -> bool {
    a < b
}

impl Routes {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Option<Arc<dyn RouteMirror>>> {
        // The guarded value is only replaced whole; a panic cannot leave it torn.
        self.changes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Routes a module service's domain (at start; every node does the same).
    pub fn insert_service(&self, domain: &str, service: Arc<dyn Service>) {
        self.entries.insert(
            domain.to_owned(),
            Entry {
                owner: RouteOwner::Service,
                service,
            },
        );
    }

    /// Attaches the cluster: from now on, local changes are announced to it.
    pub fn set_mirror(&self, mirror: Arc<dyn RouteMirror>) {
        *self.lock() = Some(mirror);
    }

    /// The handler for `domain`, if routed.
    pub fn get(&self, domain: &str) -> Option<Arc<dyn Service>> {
        self.entries.get(domain).map(|e| e.service.clone())
    }

    /// Who serves `domain`, if routed.
    pub fn owner(&self, domain: &str) -> Option<RouteOwner> {
        self.entries.get(domain).map(|e| e.owner.clone())
    }

    /// The handler for `domain` if a connection on this node serves it (where stanzas a member
    /// forwarded are delivered; anything else would bounce between nodes).
    pub fn get_local(&self, domain: &str) -> Option<Arc<dyn Service>> {
        self.entries
            .get(domain)
            .filter(|e| e.owner == RouteOwner::Local)
            .map(|e| e.service.clone())
    }

    /// The module service routing `domain`, if any (where placed entities are served).
    pub fn get_service(&self, domain: &str) -> Option<Arc<dyn Service>> {
        self.entries
            .get(domain)
            .filter(|e| e.owner == RouteOwner::Service)
            .map(|e| e.service.clone())
    }

    /// Registers a connection's route and announces it. False, changing nothing, if the
    /// domain is already routed (by a service, a connection here or another member).
    pub fn add_local(&self, domain: &str, service: Arc<dyn Service>) -> bool {
        let mirror = self.lock();
        match self.entries.entry(domain.to_owned()) {
            dashmap::Entry::Occupied(_) => return false,
            dashmap::Entry::Vacant(v) => {
                v.insert(Entry {
                    owner: RouteOwner::Local,
                    service,
                });
            }
        }
        if let Some(m) = mirror.as_ref() {
            m.changed(&RouteChange::Up(domain.to_owned()));
        }
        true
    }

    /// Removes a connection's route and announces it; a route owned otherwise (a service, or
    /// another member's that replaced a revoked connection) stays.
    pub fn remove_local(&self, domain: &str) -> bool {
        let mirror = self.lock();
        let removed = self
            .entries
            .remove_if(domain, |_, e| e.owner == RouteOwner::Local)
            .is_some();
        if removed && let Some(m) = mirror.as_ref() {
            m.changed(&RouteChange::Down(domain.to_owned()));
        }
        removed
    }

    /// Runs `f` with the domains this node's connections route, while no local change can
    /// happen (the cluster queues its snapshot for a new link in `f`).
    pub fn with_local<T>(&self, f: impl FnOnce(Vec<String>) -> T) -> T {
        let _guard = self.lock();
        let local = self
            .entries
            .iter()
            .filter(|e| e.owner == RouteOwner::Local)
            .map(|e| e.key().clone())
            .collect();
        f(local)
    }

    /// Member `node` (whose route is served by `service`, a forwarder) announces `domain`;
    /// `me` is this node's name. Conflicts are settled by [`wins`].
    pub fn apply_remote(
        &self,
        me: &str,
        node: &str,
        domain: &str,
        service: Arc<dyn Service>,
    ) -> Applied {
        let mirror = self.lock();
        let entry = Entry {
            owner: RouteOwner::Node(node.into()),
            service,
        };
        let revoked = match self.entries.entry(domain.to_owned()) {
            dashmap::Entry::Vacant(v) => {
                v.insert(entry);
                return Applied::Installed;
            }
            dashmap::Entry::Occupied(mut o) => match &o.get().owner {
                RouteOwner::Service => return Applied::Kept,
                RouteOwner::Node(other) => {
                    if **other == *node || wins(node, other) {
                        o.insert(entry);
                        return Applied::Installed;
                    }
                    return Applied::Kept;
                }
                RouteOwner::Local => {
                    if !wins(node, me) {
                        return Applied::Kept;
                    }
                    o.insert(entry).service
                }
            },
        };
        // Members that kept our registration drop it on hearing this.
        if let Some(m) = mirror.as_ref() {
            m.changed(&RouteChange::Down(domain.to_owned()));
        }
        drop(mirror);
        revoked.revoked();
        Applied::Revoked
    }

    /// Member `node` no longer routes `domain`.
    pub fn remove_remote(&self, node: &str, domain: &str) -> bool {
        let _guard = self.lock();
        self.entries
            .remove_if(domain, |_, e| e.owner == RouteOwner::Node(node.into()))
            .is_some()
    }

    /// Member `node` is gone (down, stopped or removed): its routes leave the table at once.
    /// Returns the domains removed.
    pub fn purge_node(&self, node: &str) -> Vec<String> {
        let _guard = self.lock();
        let owner = RouteOwner::Node(node.into());
        let mut gone = Vec::new();
        self.entries.retain(|domain, e| {
            let keep = e.owner != owner;
            if !keep {
                gone.push(domain.clone());
            }
            keep
        });
        gone
    }

    /// Member `node` sent every route it owns (its link came up): they replace what this node
    /// held for it. `forwarder` builds the forwarding service for a domain.
    pub fn replace_node(
        &self,
        me: &str,
        node: &str,
        domains: &[String],
        forwarder: impl Fn(&str) -> Arc<dyn Service>,
    ) -> Vec<(String, Applied)> {
        let owner = RouteOwner::Node(node.into());
        {
            let _guard = self.lock();
            self.entries
                .retain(|domain, e| e.owner != owner || domains.contains(domain));
        }
        domains
            .iter()
            .map(|d| (d.clone(), self.apply_remote(me, node, d, forwarder(d))))
            .collect()
    }

    /// The module services (every node runs its own).
    pub fn services(&self) -> Vec<Arc<dyn Service>> {
        self.entries
            .iter()
            .filter(|e| e.owner == RouteOwner::Service)
            .map(|e| e.service.clone())
            .collect()
    }

    /// Every route with its owner, sorted by domain.
    pub fn list(&self) -> Vec<(String, RouteOwner)> {
        let mut out: Vec<(String, RouteOwner)> = self
            .entries
            .iter()
            .map(|e| (e.key().clone(), e.owner.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// How many routes each kind of owner has.
    pub fn counts(&self) -> RouteCounts {
        let mut counts = RouteCounts::default();
        for e in &self.entries {
            match e.owner {
                RouteOwner::Service => counts.services += 1,
                RouteOwner::Local => counts.local += 1,
                RouteOwner::Node(_) => counts.remote += 1,
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use starling_xmpp::stanza::Stanza;

    use super::*;
    use crate::{BoxFuture, Server};

    #[derive(Default)]
    struct Probe {
        revoked: AtomicUsize,
    }

    impl Service for Probe {
        fn route<'a>(&'a self, _: &'a Server, _: Stanza) -> BoxFuture<'a, ()> {
            Box::pin(async {})
        }
        fn revoked(&self) {
            self.revoked.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[derive(Default)]
    struct Log(Mutex<Vec<RouteChange>>);

    impl RouteMirror for Log {
        fn changed(&self, change: &RouteChange) {
            self.0.lock().unwrap().push(change.clone());
        }
    }

    fn table() -> (Routes, Arc<Log>) {
        let routes = Routes::new();
        let log = Arc::new(Log::default());
        routes.set_mirror(log.clone());
        (routes, log)
    }

    fn changes(log: &Log) -> Vec<RouteChange> {
        std::mem::take(&mut *log.0.lock().unwrap())
    }

    #[test]
    fn local_routes_are_announced_and_refused_twice() {
        let (routes, log) = table();
        routes.insert_service("conference.a.test", Arc::new(Probe::default()));
        assert!(routes.add_local("comp.a.test", Arc::new(Probe::default())));
        assert!(!routes.add_local("comp.a.test", Arc::new(Probe::default())));
        assert!(!routes.add_local("conference.a.test", Arc::new(Probe::default())));
        assert_eq!(changes(&log), vec![RouteChange::Up("comp.a.test".into())]);
        assert_eq!(routes.with_local(|l| l), vec!["comp.a.test".to_owned()]);
        assert!(routes.get_local("conference.a.test").is_none());
        // Services are never removed as a connection's route.
        assert!(!routes.remove_local("conference.a.test"));
        assert!(routes.remove_local("comp.a.test"));
        assert!(!routes.remove_local("comp.a.test"));
        assert_eq!(changes(&log), vec![RouteChange::Down("comp.a.test".into())]);
        assert_eq!(
            routes.counts(),
            RouteCounts {
                services: 1,
                local: 0,
                remote: 0
            }
        );
    }

    #[test]
    fn a_member_route_blocks_local_registration_and_goes_with_its_node() {
        let (routes, log) = table();
        let fwd = Arc::new(Probe::default());
        assert_eq!(
            routes.apply_remote("n2", "n1", "comp.a.test", fwd),
            Applied::Installed
        );
        assert_eq!(
            routes.owner("comp.a.test"),
            Some(RouteOwner::Node("n1".into()))
        );
        assert!(!routes.add_local("comp.a.test", Arc::new(Probe::default())));
        assert!(!routes.remove_remote("n3", "comp.a.test"));
        assert!(routes.get("comp.a.test").is_some());
        assert_eq!(routes.purge_node("n1"), vec!["comp.a.test".to_owned()]);
        assert!(routes.get("comp.a.test").is_none());
        assert!(routes.add_local("comp.a.test", Arc::new(Probe::default())));
        assert_eq!(changes(&log), vec![RouteChange::Up("comp.a.test".into())]);
    }

    #[test]
    fn races_are_won_by_the_name_that_sorts_first_everywhere() {
        // n1 and n2 registered at once; n3 hears both, in either order.
        for order in [["n1", "n2"], ["n2", "n1"]] {
            let (routes, _) = table();
            for node in order {
                routes.apply_remote("n3", node, "c.test", Arc::new(Probe::default()));
            }
            assert_eq!(routes.owner("c.test"), Some(RouteOwner::Node("n1".into())));
        }
        // On n2, n1's announcement revokes n2's own component.
        let (on_n2, log) = table();
        let mine = Arc::new(Probe::default());
        assert!(on_n2.add_local("c.test", mine.clone()));
        changes(&log);
        assert_eq!(
            on_n2.apply_remote("n2", "n1", "c.test", Arc::new(Probe::default())),
            Applied::Revoked
        );
        assert_eq!(mine.revoked.load(Ordering::SeqCst), 1);
        assert_eq!(changes(&log), vec![RouteChange::Down("c.test".into())]);
        assert_eq!(on_n2.owner("c.test"), Some(RouteOwner::Node("n1".into())));
        // The revoked connection's late unregistration leaves the winner's route alone.
        assert!(!on_n2.remove_local("c.test"));
        // On n1, n2's announcement changes nothing.
        let (on_n1, _) = table();
        let mine = Arc::new(Probe::default());
        assert!(on_n1.add_local("c.test", mine.clone()));
        assert_eq!(
            on_n1.apply_remote("n1", "n2", "c.test", Arc::new(Probe::default())),
            Applied::Kept
        );
        assert_eq!(mine.revoked.load(Ordering::SeqCst), 0);
        assert_eq!(on_n1.owner("c.test"), Some(RouteOwner::Local));
        assert!(wins("starling@a", "starling@b") && !wins("n2", "n1"));
    }

    #[test]
    fn a_snapshot_replaces_a_members_routes() {
        let (routes, _) = table();
        let fwd = |_: &str| -> Arc<dyn Service> { Arc::new(Probe::default()) };
        routes.replace_node("n2", "n1", &["a.test".into(), "b.test".into()], fwd);
        routes.apply_remote("n2", "n3", "c.test", fwd("c.test"));
        let applied = routes.replace_node("n2", "n1", &["b.test".into(), "d.test".into()], fwd);
        assert!(applied.iter().all(|(_, a)| *a == Applied::Installed));
        let domains: Vec<String> = routes.list().into_iter().map(|(d, _)| d).collect();
        assert_eq!(domains, ["b.test", "c.test", "d.test"]);
        assert_eq!(
            routes.counts(),
            RouteCounts {
                services: 0,
                local: 0,
                remote: 3
            }
        );
    }
}
