//! The session manager: the directory of bound sessions and delivery into their inboxes.
//!
//! The directory is a `DashMap` sharded by bare JID, so lookups and updates for different users
//! never contend on one lock (DESIGN.md §8). An entry holds only what routing needs: resource,
//! priority, availability, the last broadcast presence (to answer probes) and the two channels
//! into the owning connection task. Delivery is a non-blocking `try_send` into a bounded inbox:
//! a full inbox means the client does not read, and the session is closed with
//! `<policy-violation/>` rather than letting memory grow (DESIGN.md §2.4).
//!
//! In a cluster (DESIGN.md §7.2) the directory also holds *remote* entries: sessions bound on
//! other nodes, replicated by the cluster through the [`ClusterView`] port. Every lookup
//! (`get`, `sessions_of`, `message_targets`, `available_of`) sees them, so routing is the same
//! wherever a session lives; delivering to a remote entry hands the stanza to the cluster,
//! which forwards it over the link to the owner. Each entry is written only by its owner: local
//! changes are reported to the cluster in the order they happen (under one small lock that
//! only binds, unbinds and presence changes take, never message delivery), and remote entries
//! change only when their owner says so.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use starling_xmpp::Element;
use starling_xmpp::error::{StreamError, StreamErrorCondition};
use starling_xmpp::jid::{BareJid, FullJid};
use starling_xmpp::stanza::Stanza;
use tokio::sync::{mpsc, watch};

/// Default capacity of a session inbox (ejabberd's `max_fsm_queue`).
pub const DEFAULT_INBOX: usize = 1000;

/// What the core sends to a connection task.
#[derive(Debug, Clone)]
pub enum SessionMsg {
    /// A stanza to write to the client.
    Stanza(Arc<Stanza>),
}

/// Identifies one bound session, unique for the node's lifetime.
pub type SessionId = u64;

/// The handle the connection task keeps: its inbox and its control signal.
pub struct SessionChannels {
    /// Stanzas routed to this session.
    pub inbox: mpsc::Receiver<SessionMsg>,
    /// Set when the core wants the session closed (conflict, kick, overflow, shutdown).
    pub close: watch::Receiver<Option<StreamError>>,
}

/// A session bound on another node, as its owner describes it (DESIGN.md §7.2 `sessions`).
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteSession {
    /// The full JID.
    pub jid: FullJid,
    /// The owner's session id.
    pub id: SessionId,
    /// Presence priority.
    pub priority: i8,
    /// Sent initial presence and not yet unavailable.
    pub available: bool,
    /// Receives roster pushes.
    pub interested: bool,
    /// The last available presence, to answer probes.
    pub presence: Option<Arc<Element>>,
    /// When it was bound (µs since the Unix epoch): the older of two sessions with the same
    /// full JID gets `<conflict/>`.
    pub bound_at: i64,
}

/// A change to one of this node's own entries, reported to the cluster in order.
#[derive(Clone, Debug, PartialEq)]
pub enum DirectoryChange {
    /// Bound, or its presence, priority or interest changed.
    Upsert(RemoteSession),
    /// Unbound.
    Remove {
        /// The full JID.
        jid: FullJid,
        /// The session id.
        id: SessionId,
    },
}

/// One cluster member as `cluster_status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    /// Node name.
    pub name: String,
    /// Cluster listener address.
    pub address: String,
    /// True for the node answering.
    pub this_node: bool,
    /// Linked (always true for this node).
    pub up: bool,
    /// Sessions it owns, as this node's directory sees them.
    pub sessions: usize,
    /// Milliseconds since its last frame, when linked.
    pub last_seen_ms: Option<u64>,
    /// Last measured round trip in microseconds, when linked.
    pub rtt_us: Option<u64>,
}

/// The cluster as the core sees it (DESIGN.md §3 port): forwarding to remote entries,
/// replication of local changes, and the cluster commands. Implemented by `starling-cluster`.
pub trait ClusterView: Send + Sync {
    /// This node's name.
    fn node_name(&self) -> &str;
    /// One of our entries changed; called in the order changes happen. Must not block.
    fn changed(&self, change: DirectoryChange);
    /// Forwards a stanza to session `id` (full JID `to`) owned by `node`. False if the link is
    /// down or saturated (the stanza is lost, as for a dead session).
    fn deliver(&self, node: &str, to: &FullJid, id: SessionId, stanza: Arc<Stanza>) -> bool;
    /// Asks `node` to close its session `id` with `error`.
    fn close(&self, node: &str, jid: &FullJid, id: SessionId, error: &StreamError);
    /// Every member, this node first.
    fn status(&self) -> Vec<MemberStatus>;
    /// `join_cluster`: links to the node at `address` and to every member of its cluster.
    /// Returns the members linked.
    fn join<'a>(&'a self, address: &'a str) -> crate::BoxFuture<'a, Result<Vec<String>, String>>;
    /// `leave_cluster`: removes `node` from the cluster for good and stops it.
    fn leave<'a>(&'a self, node: &'a str) -> crate::BoxFuture<'a, Result<(), String>>;
    /// The live member that runs entity `key` (a bare JID) of a placed service, this node
    /// included ([`crate::placement`]); `None` when there is no choice to make.
    fn place(&self, key: &str) -> Option<String> {
        let _ = key;
        None
    }
    /// Sends `stanza` to `node`, which routes it there: to its copy of a placed service, or to
    /// a host (an IQ answer), having been forwarded `hops` times. False if the link is down.
    fn forward(&self, node: &str, stanza: &Stanza, hops: u8) -> bool {
        let _ = (node, stanza, hops);
        false
    }
    /// XEP-0198 §5 across nodes: asks the other nodes for resumable session `previd` of
    /// `user`; its owner hands it over (see [`crate::handover`]). `NotFound` when no node
    /// has it (or the owner died).
    fn take_over<'a>(
        &'a self,
        user: &'a BareJid,
        previd: &'a str,
        h: u32,
    ) -> crate::BoxFuture<
        'a,
        Result<crate::handover::HandoverState, crate::handover::HandoverRefused>,
    > {
        let _ = (user, previd, h);
        Box::pin(async { Err(crate::handover::HandoverRefused::NotFound) })
    }
}

/// Where a directory entry's session runs.
#[derive(Clone)]
enum Owner {
    /// On this node: its connection task's inbox and close signal.
    Local {
        inbox: mpsc::Sender<SessionMsg>,
        close: Arc<watch::Sender<Option<StreamError>>>,
    },
    /// On another node, reached through the cluster.
    Remote {
        node: Arc<str>,
        cluster: Arc<dyn ClusterView>,
    },
}

/// One bound resource in the directory.
#[derive(Clone)]
pub struct SessionEntry {
    /// The full JID.
    pub jid: FullJid,
    /// Unique id (a replaced session's cleanup must not remove its successor).
    pub id: SessionId,
    /// Presence priority (RFC 6121 §4.7.2.3), meaningful when `available`.
    pub priority: i8,
    /// Sent initial presence and not yet unavailable.
    pub available: bool,
    /// Requested the roster, so it receives roster pushes (RFC 6121 §2.1.6).
    pub interested: bool,
    /// The last available presence it broadcast, to answer probes.
    pub presence: Option<Arc<Element>>,
    /// When it was bound (µs since the Unix epoch).
    pub bound_at: i64,
    owner: Owner,
}

impl SessionEntry {
    /// The node owning this session; `None` when it is bound here.
    pub fn node(&self) -> Option<&str> {
        match &self.owner {
            Owner::Local { .. } => None,
            Owner::Remote { node, .. } => Some(node),
        }
    }

    /// True if the session is bound on this node.
    pub fn is_local(&self) -> bool {
        matches!(self.owner, Owner::Local { .. })
    }

    /// The entry as replicated to other nodes.
    pub fn to_remote(&self) -> RemoteSession {
        RemoteSession {
            jid: self.jid.clone(),
            id: self.id,
            priority: self.priority,
            available: self.available,
            interested: self.interested,
            presence: self.presence.clone(),
            bound_at: self.bound_at,
        }
    }

    /// Queues a stanza for this session; closes the session if its inbox is full. A remote
    /// session's stanza is forwarded to its owner.
    pub fn deliver(&self, stanza: Arc<Stanza>) -> bool {
        let inbox = match &self.owner {
            Owner::Local { inbox, .. } => inbox,
            Owner::Remote { node, cluster } => {
                return cluster.deliver(node, &self.jid, self.id, stanza);
            }
        };
        match inbox.try_send(SessionMsg::Stanza(stanza)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(jid = %self.jid, "session inbox full, closing the session");
                self.close(
                    StreamError::new(StreamErrorCondition::PolicyViolation)
                        .with_text("too many pending stanzas"),
                );
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Free slots in the inbox right now.
    pub fn capacity(&self) -> usize {
        match &self.owner {
            Owner::Local { inbox, .. } => inbox.capacity(),
            // The owner's inbox is not visible from here; the link is the bound.
            Owner::Remote { .. } => DEFAULT_INBOX,
        }
    }

    /// Queues a stanza, waiting up to `timeout` for room in the inbox instead of closing the
    /// session when it is full. For bulk deliveries from a separate task (an offline backlog
    /// larger than the inbox), never from the session's own task, which would wait for itself.
    pub async fn deliver_wait(&self, stanza: Arc<Stanza>, timeout: std::time::Duration) -> bool {
        match &self.owner {
            Owner::Local { inbox, .. } => inbox
                .send_timeout(SessionMsg::Stanza(stanza), timeout)
                .await
                .is_ok(),
            Owner::Remote { .. } => self.deliver(stanza),
        }
    }

    /// Asks the owning task (here or on its node) to close the stream with `error`.
    pub fn close(&self, error: StreamError) {
        match &self.owner {
            Owner::Local { close, .. } => {
                close.send_replace(Some(error));
            }
            Owner::Remote { node, cluster } => cluster.close(node, &self.jid, self.id, &error),
        }
    }

    /// True if `self` was bound after `other`; ties go to the greater owner name, so every
    /// node picks the same survivor of a duplicate full JID.
    fn newer_than(&self, other: &Self, our_name: &str) -> bool {
        let name = |e: &Self| e.node().unwrap_or(our_name).to_owned();
        (self.bound_at, name(self)) > (other.bound_at, name(other))
    }
}

/// What a resuming connection hands to the task that owns a resumable session (XEP-0198 §5).
///
/// The core does not know connection types, so the value is opaque here: the connection crate
/// that registered the session decides what it carries and downcasts it.
pub type Takeover = Box<dyn std::any::Any + Send>;

/// A session that can be resumed (XEP-0198 §5), registered by the task that owns it under its
/// stream management id. It stays registered while the session is bound, attached to a
/// connection or detached from a lost one, so that a resumption can also take over from a
/// connection whose loss the server has not noticed yet.
#[derive(Clone)]
pub struct Resumable {
    /// The session's full JID (a resumption must authenticate as its bare JID).
    pub jid: FullJid,
    /// The session's directory id.
    pub id: SessionId,
    /// Where a resuming connection sends its [`Takeover`].
    pub takeover: mpsc::Sender<Takeover>,
}

/// Why a bind was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindError {
    /// The account already has the maximum number of sessions.
    TooManySessions,
}

/// The session directory of this node.
pub struct SessionManager {
    sessions: DashMap<BareJid, Vec<SessionEntry>>,
    resumable: DashMap<String, Resumable>,
    next_id: AtomicU64,
    inbox_capacity: usize,
    /// The cluster, once attached.
    cluster: ArcSwapOption<Arc<dyn ClusterView>>,
    /// Serialises changes to the directory with their reports to the cluster, so that peers
    /// see them in order and a snapshot is never older than the deltas that follow it. Taken
    /// by bind, unbind, presence updates and replication, never by delivery.
    changes: Mutex<()>,
}

impl Default for SessionManager {
    fn default() -> Self {
        Self::new(DEFAULT_INBOX)
    }
}

impl SessionManager {
    /// An empty directory whose sessions get inboxes of `inbox_capacity` stanzas.
    pub fn new(inbox_capacity: usize) -> Self {
        Self {
            sessions: DashMap::new(),
            resumable: DashMap::new(),
            next_id: AtomicU64::new(1),
            inbox_capacity: inbox_capacity.max(1),
            cluster: ArcSwapOption::empty(),
            changes: Mutex::new(()),
        }
    }

    /// Attaches the cluster: local changes are reported to it from now on.
    pub fn set_cluster(&self, cluster: Arc<dyn ClusterView>) {
        self.cluster.store(Some(Arc::new(cluster)));
    }

    /// The attached cluster, if any.
    pub fn cluster(&self) -> Option<Arc<dyn ClusterView>> {
        self.cluster.load_full().map(|c| (*c).clone())
    }

    fn lock_changes(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded value is `()`: a panic elsewhere cannot leave it inconsistent.
        self.changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn report(&self, change: DirectoryChange) {
        if let Some(cluster) = self.cluster.load().as_ref() {
            cluster.changed(change);
        }
    }

    /// Binds `jid`. A session already bound to the same full JID is closed with `<conflict/>`
    /// (RFC 6120 §7.7.2.2, the "override" policy ejabberd uses). `max_sessions` caps the
    /// number of resources per account: at the cap the oldest session is replaced, as in
    /// ejabberd; a cap of 0 refuses every bind.
    pub fn bind(
        &self,
        jid: FullJid,
        max_sessions: Option<u32>,
    ) -> Result<(SessionId, SessionChannels), BindError> {
        let _changes = self.lock_changes();
        let bare = jid.to_bare();
        let mut bound_at = now_micros();
        let mut removed = None;
        let result = {
            let mut entries = self.sessions.entry(bare).or_default();
            if let Some(pos) = entries.iter().position(|e| e.jid == jid) {
                let old = entries.swap_remove(pos);
                // The new session must be the newer one on every node, whatever the clocks say.
                bound_at = bound_at.max(old.bound_at.saturating_add(1));
                old.close(
                    StreamError::new(StreamErrorCondition::Conflict)
                        .with_text("Replaced by new connection"),
                );
                if old.is_local() {
                    removed = Some(DirectoryChange::Remove {
                        jid: old.jid.clone(),
                        id: old.id,
                    });
                }
            }
            // ejabberd's `check_max_sessions`: at the limit, the oldest session is replaced
            // (closed with `<conflict/>`) rather than the new one refused, so a user who lost
            // a connection without the server noticing can always log in again.
            let mut evicted = Vec::new();
            if let Some(max) = max_sessions
                && max > 0
            {
                while entries.len() >= max as usize {
                    let Some(pos) = entries
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, e)| (e.bound_at, e.id))
                        .map(|(i, _)| i)
                    else {
                        break;
                    };
                    let old = entries.swap_remove(pos);
                    old.close(
                        StreamError::new(StreamErrorCondition::Conflict)
                            .with_text("Replaced by new connection (max_user_sessions)"),
                    );
                    if old.is_local() {
                        evicted.push(DirectoryChange::Remove {
                            jid: old.jid.clone(),
                            id: old.id,
                        });
                    }
                }
            }
            if max_sessions == Some(0) {
                Err(BindError::TooManySessions)
            } else {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let (inbox_tx, inbox) = mpsc::channel(self.inbox_capacity);
                let (close_tx, close) = watch::channel(None);
                let entry = SessionEntry {
                    jid,
                    id,
                    priority: 0,
                    available: false,
                    interested: false,
                    presence: None,
                    bound_at,
                    owner: Owner::Local {
                        inbox: inbox_tx,
                        close: Arc::new(close_tx),
                    },
                };
                let upsert = DirectoryChange::Upsert(entry.to_remote());
                entries.push(entry);
                Ok((id, SessionChannels { inbox, close }, upsert, evicted))
            }
        };
        if let Some(change) = removed {
            self.report(change);
        }
        let (id, channels, upsert, evicted) = result?;
        for change in evicted {
            self.report(change);
        }
        self.report(upsert);
        Ok((id, channels))
    }

    /// Removes a session, if it is still the one with `id`.
    /// Removes a local session, if it is still the one with `id`.
    pub fn unbind(&self, jid: &FullJid, id: SessionId) -> Option<SessionEntry> {
        let _changes = self.lock_changes();
        let bare = jid.to_bare();
        let removed = {
            let mut entries = self.sessions.get_mut(&bare)?;
            let pos = entries.iter().position(|e| e.id == id && e.is_local())?;
            entries.swap_remove(pos)
        };
        self.sessions.remove_if(&bare, |_, v| v.is_empty());
        self.report(DirectoryChange::Remove {
            jid: removed.jid.clone(),
            id,
        });
        Some(removed)
    }

    /// Updates a local session's entry in place.
    pub fn update(&self, jid: &FullJid, id: SessionId, f: impl FnOnce(&mut SessionEntry)) {
        let _changes = self.lock_changes();
        let changed = match self.sessions.get_mut(&jid.to_bare()) {
            Some(mut entries) => match entries.iter_mut().find(|e| e.id == id && e.is_local()) {
                Some(entry) => {
                    f(entry);
                    Some(entry.to_remote())
                }
                None => None,
            },
            None => None,
        };
        if let Some(session) = changed {
            self.report(DirectoryChange::Upsert(session));
        }
    }

    /// Marks a local session as having requested the roster, so it receives roster pushes.
    pub fn set_interested(&self, jid: &FullJid) {
        let _changes = self.lock_changes();
        let changed = match self.sessions.get_mut(&jid.to_bare()) {
            Some(mut entries) => {
                match entries
                    .iter_mut()
                    .find(|e| e.jid == *jid && e.is_local() && !e.interested)
                {
                    Some(entry) => {
                        entry.interested = true;
                        Some(entry.to_remote())
                    }
                    None => None,
                }
            }
            None => None,
        };
        if let Some(session) = changed {
            self.report(DirectoryChange::Upsert(session));
        }
    }

    /// Calls `f` with a snapshot of this node's own entries while no change can happen, so
    /// the cluster can queue the snapshot ahead of every later delta on a new link.
    pub fn with_local_snapshot<T>(&self, f: impl FnOnce(Vec<RemoteSession>) -> T) -> T {
        let _changes = self.lock_changes();
        let snapshot = self
            .sessions
            .iter()
            .flat_map(|e| {
                e.value()
                    .iter()
                    .filter(|s| s.is_local())
                    .map(SessionEntry::to_remote)
                    .collect::<Vec<_>>()
            })
            .collect();
        f(snapshot)
    }

    /// Adds or updates an entry owned by `node` (a delta or snapshot item from its owner).
    /// A duplicate full JID keeps only the newer session: an older local one is closed with
    /// `<conflict/>`; an older remote one is dropped here (its owner closes it when our entry
    /// reaches it).
    pub fn apply_remote(&self, node: &str, cluster: &Arc<dyn ClusterView>, session: RemoteSession) {
        let _changes = self.lock_changes();
        self.apply_remote_locked(node, cluster, session);
    }

    fn apply_remote_locked(
        &self,
        node: &str,
        cluster: &Arc<dyn ClusterView>,
        session: RemoteSession,
    ) {
        let our_name = cluster.node_name().to_owned();
        let incoming = SessionEntry {
            jid: session.jid,
            id: session.id,
            priority: session.priority,
            available: session.available,
            interested: session.interested,
            presence: session.presence,
            bound_at: session.bound_at,
            owner: Owner::Remote {
                node: Arc::from(node),
                cluster: cluster.clone(),
            },
        };
        let mut removed = None;
        {
            let mut entries = self.sessions.entry(incoming.jid.to_bare()).or_default();
            if let Some(pos) = entries
                .iter()
                .position(|e| e.node() == Some(node) && e.id == incoming.id)
            {
                // An update from the owner: it is authoritative.
                if let Some(slot) = entries.get_mut(pos) {
                    *slot = incoming;
                }
                return;
            }
            if let Some(pos) = entries.iter().position(|e| e.jid == incoming.jid) {
                let Some(existing) = entries.get(pos) else {
                    return;
                };
                if !incoming.newer_than(existing, &our_name) {
                    return;
                }
                let old = entries.swap_remove(pos);
                if old.is_local() {
                    old.close(
                        StreamError::new(StreamErrorCondition::Conflict)
                            .with_text("Replaced by new connection"),
                    );
                    removed = Some(DirectoryChange::Remove {
                        jid: old.jid.clone(),
                        id: old.id,
                    });
                }
            }
            entries.push(incoming);
        }
        if let Some(change) = removed {
            self.report(change);
        }
    }

    /// Removes session `id` owned by `node` (its owner unbound it).
    pub fn remove_remote(&self, node: &str, jid: &FullJid, id: SessionId) {
        let _changes = self.lock_changes();
        let bare = jid.to_bare();
        if let Some(mut entries) = self.sessions.get_mut(&bare) {
            entries.retain(|e| !(e.node() == Some(node) && e.id == id));
        }
        self.sessions.remove_if(&bare, |_, v| v.is_empty());
    }

    /// Replaces every entry of `node` by its snapshot (a link came up).
    pub fn replace_node(
        &self,
        node: &str,
        cluster: &Arc<dyn ClusterView>,
        snapshot: Vec<RemoteSession>,
    ) -> Vec<SessionEntry> {
        let _changes = self.lock_changes();
        let gone = self.purge_locked(node);
        for session in snapshot {
            self.apply_remote_locked(node, cluster, session);
        }
        gone
    }

    /// Removes every entry owned by `node` (it is down or left) and returns them.
    pub fn purge_node(&self, node: &str) -> Vec<SessionEntry> {
        let _changes = self.lock_changes();
        self.purge_locked(node)
    }

    fn purge_locked(&self, node: &str) -> Vec<SessionEntry> {
        let mut gone = Vec::new();
        self.sessions.retain(|_, entries| {
            entries.retain(|e| {
                if e.node() == Some(node) {
                    gone.push(e.clone());
                    false
                } else {
                    true
                }
            });
            !entries.is_empty()
        });
        gone
    }

    /// The session bound on this node to a full JID.
    pub fn get_local(&self, jid: &FullJid) -> Option<SessionEntry> {
        self.sessions
            .get(&jid.to_bare())?
            .iter()
            .find(|e| e.jid == *jid && e.is_local())
            .cloned()
    }

    /// The session `id` of `user` bound on this node (a forwarded stanza's target).
    pub fn get_local_by_id(&self, user: &BareJid, id: SessionId) -> Option<SessionEntry> {
        self.sessions
            .get(user)?
            .iter()
            .find(|e| e.id == id && e.is_local())
            .cloned()
    }

    /// Number of sessions bound on this node.
    pub fn count_local(&self) -> usize {
        self.sessions
            .iter()
            .map(|e| e.value().iter().filter(|s| s.is_local()).count())
            .sum()
    }

    /// Number of sessions owned by `node`, as replicated here.
    pub fn count_of_node(&self, node: &str) -> usize {
        self.sessions
            .iter()
            .map(|e| e.value().iter().filter(|s| s.node() == Some(node)).count())
            .sum()
    }

    /// Closes every session of an account (account removed, password changed by an admin).
    pub fn close_user(&self, user: &BareJid, error: &StreamError) {
        for e in self.sessions_of(user) {
            e.close(error.clone());
        }
    }

    /// The session bound to a full JID.
    pub fn get(&self, jid: &FullJid) -> Option<SessionEntry> {
        self.sessions
            .get(&jid.to_bare())?
            .iter()
            .find(|e| e.jid == *jid)
            .cloned()
    }

    /// All sessions of an account.
    pub fn sessions_of(&self, user: &BareJid) -> Vec<SessionEntry> {
        self.sessions
            .get(user)
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// The available sessions of an account.
    pub fn available_of(&self, user: &BareJid) -> Vec<SessionEntry> {
        let mut v = self.sessions_of(user);
        v.retain(|e| e.available);
        v
    }

    /// RFC 6121 §8.5.2.1.1: the sessions a message to the bare JID goes to: the available
    /// resources with the highest non-negative priority.
    pub fn message_targets(&self, user: &BareJid) -> Vec<SessionEntry> {
        let mut v = self.available_of(user);
        v.retain(|e| e.priority >= 0);
        let Some(max) = v.iter().map(|e| e.priority).max() else {
            return v;
        };
        v.retain(|e| e.priority == max);
        v
    }

    /// Every bound full JID in the directory, cluster-wide (for `connected_users`).
    pub fn all(&self) -> Vec<FullJid> {
        let mut v: Vec<FullJid> = self
            .sessions
            .iter()
            .flat_map(|e| e.value().iter().map(|s| s.jid.clone()).collect::<Vec<_>>())
            .collect();
        v.sort();
        v
    }

    /// Number of bound sessions, cluster-wide.
    pub fn count(&self) -> usize {
        self.sessions.iter().map(|e| e.value().len()).sum()
    }

    /// Registers a resumable session under its stream management id (XEP-0198 §5); a session
    /// already registered under that id is replaced.
    pub fn register_resumable(&self, sm_id: impl Into<String>, session: Resumable) {
        self.resumable.insert(sm_id.into(), session);
    }

    /// The resumable session with stream management id `sm_id`, if it is still registered.
    pub fn resumable(&self, sm_id: &str) -> Option<Resumable> {
        self.resumable.get(sm_id).map(|r| r.value().clone())
    }

    /// Forgets `sm_id`, if it still belongs to session `id` (a successor's registration stays).
    pub fn forget_resumable(&self, sm_id: &str, id: SessionId) {
        self.resumable.remove_if(sm_id, |_, r| r.id == id);
    }

    /// Closes every session of this node (server shutdown); other nodes' stay.
    pub fn close_all(&self, error: &StreamError) {
        for entries in &self.sessions {
            for e in entries.value().iter().filter(|e| e.is_local()) {
                e.close(error.clone());
            }
        }
    }
}

/// Microseconds since the Unix epoch (bind times compared across nodes).
fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(s: &str) -> FullJid {
        FullJid::parse(s).unwrap()
    }

    #[test]
    fn bind_replaces_same_full_jid_with_conflict() {
        let sm = SessionManager::new(4);
        let (id1, ch1) = sm.bind(full("a@x/r"), None).unwrap();
        let (id2, _ch2) = sm.bind(full("a@x/r"), None).unwrap();
        assert_ne!(id1, id2);
        let err = ch1.close.borrow().clone().unwrap();
        assert_eq!(err.condition, StreamErrorCondition::Conflict);
        assert_eq!(sm.count(), 1);
        // The replaced session's cleanup must not remove its successor.
        assert!(sm.unbind(&full("a@x/r"), id1).is_none());
        assert_eq!(sm.count(), 1);
        assert!(sm.unbind(&full("a@x/r"), id2).is_some());
        assert_eq!(sm.count(), 0);
    }

    #[test]
    fn max_sessions_is_enforced() {
        let sm = SessionManager::new(4);
        let (_, ch1) = sm.bind(full("a@x/1"), Some(2)).unwrap();
        let (_, ch2) = sm.bind(full("a@x/2"), Some(2)).unwrap();
        // At the cap the oldest session is replaced (ejabberd's check_max_sessions).
        let (_, ch3) = sm.bind(full("a@x/3"), Some(2)).unwrap();
        let err = ch1.close.borrow().clone().unwrap();
        assert_eq!(err.condition, StreamErrorCondition::Conflict);
        assert!(ch2.close.borrow().is_none());
        assert_eq!(sm.count(), 2);
        assert!(sm.get(&full("a@x/1")).is_none());
        // Rebinding an existing resource replaces it and stays within the limit.
        assert!(sm.bind(full("a@x/3"), Some(2)).is_ok());
        assert!(ch2.close.borrow().is_none());
        assert!(ch3.close.borrow().is_some());
        assert_eq!(sm.count(), 2);
        assert_eq!(
            sm.bind(full("b@x/1"), Some(0)).err(),
            Some(BindError::TooManySessions)
        );
    }

    #[test]
    fn message_targets_pick_highest_non_negative_priority() {
        let sm = SessionManager::new(4);
        let (a, _ca) = sm.bind(full("u@x/a"), None).unwrap();
        let (b, _cb) = sm.bind(full("u@x/b"), None).unwrap();
        let (c, _cc) = sm.bind(full("u@x/c"), None).unwrap();
        let user = BareJid::parse("u@x").unwrap();
        assert!(sm.message_targets(&user).is_empty(), "nobody available yet");
        sm.update(&full("u@x/a"), a, |e| {
            e.available = true;
            e.priority = 5;
        });
        sm.update(&full("u@x/b"), b, |e| {
            e.available = true;
            e.priority = 5;
        });
        sm.update(&full("u@x/c"), c, |e| {
            e.available = true;
            e.priority = 10;
        });
        let t = sm.message_targets(&user);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].jid.resource(), "c");
        sm.update(&full("u@x/c"), c, |e| e.priority = -1);
        let mut t: Vec<_> = sm
            .message_targets(&user)
            .into_iter()
            .map(|e| e.jid.resource().to_owned())
            .collect();
        t.sort();
        assert_eq!(t, vec!["a", "b"]);
    }

    #[test]
    fn resumable_sessions_are_found_by_id_and_forgotten_by_owner() {
        let sm = SessionManager::new(4);
        let (id, _ch) = sm.bind(full("u@x/a"), None).unwrap();
        let (tx, mut rx) = mpsc::channel::<Takeover>(1);
        sm.register_resumable(
            "smid1",
            Resumable {
                jid: full("u@x/a"),
                id,
                takeover: tx,
            },
        );
        assert!(sm.resumable("other").is_none());
        let found = sm.resumable("smid1").unwrap();
        assert_eq!(found.jid, full("u@x/a"));
        assert_eq!(found.id, id);
        // The opaque takeover reaches the owner unchanged.
        found.takeover.try_send(Box::new(7u32)).unwrap();
        let got = rx.try_recv().unwrap();
        assert_eq!(got.downcast_ref::<u32>(), Some(&7));
        // Only the owning session's id removes the registration.
        sm.forget_resumable("smid1", id + 100);
        assert!(sm.resumable("smid1").is_some());
        sm.forget_resumable("smid1", id);
        assert!(sm.resumable("smid1").is_none());
    }

    /// A cluster that records what the directory reports and forwards.
    #[derive(Default)]
    struct FakeCluster {
        changes: Mutex<Vec<DirectoryChange>>,
        delivered: Mutex<Vec<(String, SessionId)>>,
        closed: Mutex<Vec<(String, SessionId)>>,
    }

    impl ClusterView for FakeCluster {
        fn node_name(&self) -> &str {
            "n1"
        }
        fn changed(&self, change: DirectoryChange) {
            self.changes.lock().unwrap().push(change);
        }
        fn deliver(&self, node: &str, _to: &FullJid, id: SessionId, _s: Arc<Stanza>) -> bool {
            self.delivered.lock().unwrap().push((node.to_owned(), id));
            true
        }
        fn close(&self, node: &str, _jid: &FullJid, id: SessionId, _e: &StreamError) {
            self.closed.lock().unwrap().push((node.to_owned(), id));
        }
        fn status(&self) -> Vec<MemberStatus> {
            Vec::new()
        }
        fn join<'a>(&'a self, _: &'a str) -> crate::BoxFuture<'a, Result<Vec<String>, String>> {
            Box::pin(async { Err(String::new()) })
        }
        fn leave<'a>(&'a self, _: &'a str) -> crate::BoxFuture<'a, Result<(), String>> {
            Box::pin(async { Ok(()) })
        }
    }

    fn remote(jid: &str, id: SessionId, bound_at: i64) -> RemoteSession {
        RemoteSession {
            jid: full(jid),
            id,
            priority: 1,
            available: true,
            interested: false,
            presence: None,
            bound_at,
        }
    }

    fn stanza() -> Arc<Stanza> {
        let el: Element = "<message xmlns='jabber:client' from='b@x/r' to='u@x/a'/>"
            .parse()
            .unwrap();
        Arc::new(Stanza::from_element(el).unwrap())
    }

    #[test]
    fn local_changes_are_reported_in_order_and_remote_ones_are_not() {
        let sm = SessionManager::new(4);
        let fake = Arc::new(FakeCluster::default());
        sm.set_cluster(fake.clone());
        let view: Arc<dyn ClusterView> = fake.clone();
        let (id, _ch) = sm.bind(full("u@x/a"), None).unwrap();
        sm.update(&full("u@x/a"), id, |e| e.available = true);
        sm.apply_remote("n2", &view, remote("u@x/b", 7, 1));
        sm.remove_remote("n2", &full("u@x/b"), 7);
        sm.unbind(&full("u@x/a"), id);
        let changes = fake.changes.lock().unwrap().clone();
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert!(matches!(&changes[0], DirectoryChange::Upsert(s) if !s.available));
        assert!(matches!(&changes[1], DirectoryChange::Upsert(s) if s.available));
        assert!(matches!(&changes[2], DirectoryChange::Remove { id: i, .. } if *i == id));
    }

    #[test]
    fn remote_entries_route_through_the_cluster_and_purge_with_their_node() {
        let sm = SessionManager::new(4);
        let fake = Arc::new(FakeCluster::default());
        sm.set_cluster(fake.clone());
        let view: Arc<dyn ClusterView> = fake.clone();
        let (_id, _ch) = sm.bind(full("u@x/here"), None).unwrap();
        sm.apply_remote("n2", &view, remote("u@x/there", 9, 1));
        sm.apply_remote("n3", &view, remote("v@x/r", 9, 1));
        let user = BareJid::parse("u@x").unwrap();
        let targets = sm.message_targets(&user);
        assert_eq!(targets.len(), 1, "only the available remote one");
        assert_eq!(targets[0].node(), Some("n2"));
        assert!(targets[0].deliver(stanza()));
        assert_eq!(*fake.delivered.lock().unwrap(), vec![("n2".to_owned(), 9)]);
        // The owner's update replaces the entry; ids of different nodes never mix.
        let mut changed = remote("u@x/there", 9, 1);
        changed.available = false;
        sm.apply_remote("n2", &view, changed);
        assert!(sm.message_targets(&user).is_empty());
        assert_eq!(sm.count(), 3);
        assert_eq!(sm.count_local(), 1);
        assert_eq!(sm.count_of_node("n2"), 1);
        // Shutdown closes only our sessions.
        sm.close_all(&StreamError::new(StreamErrorCondition::SystemShutdown));
        assert!(fake.closed.lock().unwrap().is_empty());
        let gone = sm.purge_node("n2");
        assert_eq!(gone.len(), 1);
        assert_eq!(sm.count(), 2);
        // A snapshot replaces everything the node had.
        sm.replace_node("n3", &view, vec![remote("w@x/r", 1, 1)]);
        assert!(sm.get(&full("v@x/r")).is_none());
        assert!(sm.get(&full("w@x/r")).is_some());
    }

    #[test]
    fn duplicate_full_jid_keeps_the_newer_session() {
        let sm = SessionManager::new(4);
        let fake = Arc::new(FakeCluster::default());
        sm.set_cluster(fake.clone());
        let view: Arc<dyn ClusterView> = fake.clone();
        // A newer remote session replaces our older one, which gets <conflict/>.
        let (_id, ch) = sm.bind(full("u@x/r"), None).unwrap();
        let ours = sm.get(&full("u@x/r")).unwrap();
        sm.apply_remote("n2", &view, remote("u@x/r", 5, ours.bound_at + 10));
        let err = ch.close.borrow().clone().unwrap();
        assert_eq!(err.condition, StreamErrorCondition::Conflict);
        assert_eq!(sm.get(&full("u@x/r")).unwrap().node(), Some("n2"));
        // An older remote one is ignored (its owner closes it when it sees ours).
        let (_id, ch) = sm.bind(full("u@x/s"), None).unwrap();
        sm.apply_remote("n2", &view, remote("u@x/s", 6, 1));
        assert!(ch.close.borrow().is_none());
        assert!(sm.get(&full("u@x/s")).unwrap().is_local());
        // Binding over a remote entry asks its owner to close it, and is newer whatever the
        // clocks say.
        sm.apply_remote("n3", &view, remote("u@x/t", 8, i64::MAX - 5));
        sm.bind(full("u@x/t"), None).unwrap();
        assert_eq!(*fake.closed.lock().unwrap(), vec![("n3".to_owned(), 8)]);
        let mine = sm.get(&full("u@x/t")).unwrap();
        assert!(mine.is_local() && mine.bound_at > i64::MAX - 5);
    }

    #[test]
    fn full_inbox_closes_the_session() {
        let sm = SessionManager::new(1);
        let (_id, ch) = sm.bind(full("u@x/a"), None).unwrap();
        let entry = sm.get(&full("u@x/a")).unwrap();
        let el: Element = "<message xmlns='jabber:client' from='b@x/r' to='u@x/a'/>"
            .parse()
            .unwrap();
        let st = Arc::new(Stanza::from_element(el).unwrap());
        assert!(entry.deliver(st.clone()));
        assert!(!entry.deliver(st));
        let err = ch.close.borrow().clone().unwrap();
        assert_eq!(err.condition, StreamErrorCondition::PolicyViolation);
    }
}
