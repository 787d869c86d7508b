//! The session manager: the directory of bound sessions and delivery into their inboxes.
//!
//! The directory is a `DashMap` sharded by bare JID, so lookups and updates for different users
//! never contend on one lock (DESIGN.md §8). An entry holds only what routing needs: resource,
//! priority, availability, the last broadcast presence (to answer probes) and the two channels
//! into the owning connection task. Delivery is a non-blocking `try_send` into a bounded inbox:
//! a full inbox means the client does not read, and the session is closed with
//! `<policy-violation/>` rather than letting memory grow (DESIGN.md §2.4).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
    inbox: mpsc::Sender<SessionMsg>,
    close: Arc<watch::Sender<Option<StreamError>>>,
}

impl SessionEntry {
    /// Queues a stanza for this session; closes the session if its inbox is full.
    pub fn deliver(&self, stanza: Arc<Stanza>) -> bool {
        match self.inbox.try_send(SessionMsg::Stanza(stanza)) {
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
        self.inbox.capacity()
    }

    /// Queues a stanza, waiting up to `timeout` for room in the inbox instead of closing the
    /// session when it is full. For bulk deliveries from a separate task (an offline backlog
    /// larger than the inbox), never from the session's own task, which would wait for itself.
    pub async fn deliver_wait(&self, stanza: Arc<Stanza>, timeout: std::time::Duration) -> bool {
        self.inbox
            .send_timeout(SessionMsg::Stanza(stanza), timeout)
            .await
            .is_ok()
    }

    /// Asks the owning task to close the stream with `error`.
    pub fn close(&self, error: StreamError) {
        self.close.send_replace(Some(error));
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
        }
    }

    /// Binds `jid`. A session already bound to the same full JID is closed with `<conflict/>`
    /// (RFC 6120 §7.7.2.2, the "override" policy ejabberd uses). `max_sessions` caps the
    /// number of resources per account.
    pub fn bind(
        &self,
        jid: FullJid,
        max_sessions: Option<u32>,
    ) -> Result<(SessionId, SessionChannels), BindError> {
        let bare = jid.to_bare();
        let mut entries = self.sessions.entry(bare).or_default();
        if let Some(pos) = entries.iter().position(|e| e.jid == jid) {
            let old = entries.swap_remove(pos);
            old.close(
                StreamError::new(StreamErrorCondition::Conflict)
                    .with_text("Replaced by new connection"),
            );
        }
        if let Some(max) = max_sessions
            && entries.len() >= max as usize
        {
            return Err(BindError::TooManySessions);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (inbox_tx, inbox) = mpsc::channel(self.inbox_capacity);
        let (close_tx, close) = watch::channel(None);
        entries.push(SessionEntry {
            jid,
            id,
            priority: 0,
            available: false,
            interested: false,
            presence: None,
            inbox: inbox_tx,
            close: Arc::new(close_tx),
        });
        Ok((id, SessionChannels { inbox, close }))
    }

    /// Removes a session, if it is still the one with `id`.
    pub fn unbind(&self, jid: &FullJid, id: SessionId) -> Option<SessionEntry> {
        let bare = jid.to_bare();
        let removed = {
            let mut entries = self.sessions.get_mut(&bare)?;
            let pos = entries.iter().position(|e| e.id == id)?;
            entries.swap_remove(pos)
        };
        self.sessions.remove_if(&bare, |_, v| v.is_empty());
        Some(removed)
    }

    /// Updates a session's entry in place.
    pub fn update(&self, jid: &FullJid, id: SessionId, f: impl FnOnce(&mut SessionEntry)) {
        if let Some(mut entries) = self.sessions.get_mut(&jid.to_bare())
            && let Some(entry) = entries.iter_mut().find(|e| e.id == id)
        {
            f(entry);
        }
    }

    /// Marks a session as having requested the roster, so it receives roster pushes.
    pub fn set_interested(&self, jid: &FullJid) {
        if let Some(mut entries) = self.sessions.get_mut(&jid.to_bare())
            && let Some(entry) = entries.iter_mut().find(|e| e.jid == *jid)
        {
            entry.interested = true;
        }
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

    /// Every bound full JID on this node (for `connected_users`).
    pub fn all(&self) -> Vec<FullJid> {
        let mut v: Vec<FullJid> = self
            .sessions
            .iter()
            .flat_map(|e| e.value().iter().map(|s| s.jid.clone()).collect::<Vec<_>>())
            .collect();
        v.sort();
        v
    }

    /// Number of bound sessions.
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

    /// Closes every session (server shutdown).
    pub fn close_all(&self, error: &StreamError) {
        for entries in &self.sessions {
            for e in entries.value() {
                e.close(error.clone());
            }
        }
    }
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
        sm.bind(full("a@x/1"), Some(2)).unwrap();
        sm.bind(full("a@x/2"), Some(2)).unwrap();
        assert_eq!(
            sm.bind(full("a@x/3"), Some(2)).err(),
            Some(BindError::TooManySessions)
        );
        // Rebinding an existing resource replaces it and stays within the limit.
        assert!(sm.bind(full("a@x/2"), Some(2)).is_ok());
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
