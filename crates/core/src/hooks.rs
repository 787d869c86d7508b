//! Hooks: the points where modules take part in routing (DESIGN.md §2.2, ejabberd's
//! `ejabberd_hooks:run_fold`).
//!
//! Each hook is a type carrying its argument; handlers run in ascending priority and return
//! [`HookResult::Continue`] or [`HookResult::Stop`]. Handlers are registered by modules in
//! their [`crate::module::Registrations`] and kept per host in an immutable snapshot, so running
//! a hook takes no lock.
//!
//! | hook | runs | used by |
//! |---|---|---|
//! | [`UserSendPacket`] | in the sender's task, before routing | MAM, carbons (sent) |
//! | [`SmReceivePacket`] | once per stanza for a local account, before delivery | blocking, MAM, carbons (received) |
//! | [`UserReceivePacket`] | per session, before writing to the client | privacy lists, CSI |
//! | [`OfflineMessage`] | a message for an account with no available resource | mod_offline |
//! | [`UserAvailable`] | a session sent its initial presence | offline flush |
//! | [`PresenceBroadcast`] | a session broadcasts presence (no `to`), before it is sent | caps (PEP), avatar hashes |
//! | [`SessionClosed`] | a bound session ended | caps, MUC, stream management |
//! | [`RemoveUser`] | an account is being deleted | every module storing user data |

use std::sync::Arc;

use starling_xmpp::jid::{BareJid, FullJid};
use starling_xmpp::stanza::Stanza;

use crate::BoxFuture;
use crate::server::Server;

/// Whether later handlers (and the default action) run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookResult {
    /// Go on with the next handler.
    Continue,
    /// The stanza was consumed (stored, dropped or answered): stop here.
    Stop,
}

/// A hook handler for argument type `A`.
pub trait Hook<A>: Send + Sync {
    /// Runs the handler; it may modify `arg`.
    fn call<'a>(&'a self, server: &'a Server, arg: &'a mut A) -> BoxFuture<'a, HookResult>;
}

/// Handlers of one hook, sorted by priority.
pub struct Handlers<A>(Vec<(i32, Arc<dyn Hook<A>>)>);

impl<A> Default for Handlers<A> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<A> Clone for Handlers<A> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<A: Send> Handlers<A> {
    /// Adds a handler; lower priorities run first (ejabberd's convention).
    pub fn add(&mut self, priority: i32, handler: Arc<dyn Hook<A>>) {
        let pos = self.0.partition_point(|(p, _)| *p <= priority);
        self.0.insert(pos, (priority, handler));
    }

    /// True if no handler is registered.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Runs the handlers in order until one stops.
    pub async fn run(&self, server: &Server, arg: &mut A) -> HookResult {
        for (_, handler) in &self.0 {
            if handler.call(server, arg).await == HookResult::Stop {
                return HookResult::Stop;
            }
        }
        HookResult::Continue
    }

    fn extend(&mut self, other: Self) {
        for (priority, handler) in other.0 {
            self.add(priority, handler);
        }
    }
}

/// A stanza the client of `session` sent, with `from` stamped, before it is routed.
pub struct UserSendPacket {
    /// The sending session.
    pub session: FullJid,
    /// The stanza; handlers may modify it.
    pub stanza: Stanza,
}

/// A stanza for local account `user`, before resource selection and delivery.
pub struct SmReceivePacket {
    /// The recipient account.
    pub user: BareJid,
    /// The stanza; handlers may modify it.
    pub stanza: Stanza,
}

/// A stanza about to be written to the client of `session`.
pub struct UserReceivePacket {
    /// The receiving session.
    pub session: FullJid,
    /// The stanza.
    pub stanza: Arc<Stanza>,
}

/// A message for an account with no available resource (RFC 6121 §8.5.2.2.1).
pub struct OfflineMessage {
    /// The recipient account (it exists).
    pub user: BareJid,
    /// The message.
    pub stanza: Stanza,
}

/// A session sent its initial presence.
pub struct UserAvailable {
    /// The session.
    pub session: FullJid,
}

/// A session broadcasts presence (available or unavailable, without `to`); handlers may
/// read it (entity capabilities) or modify it (XEP-0153 avatar hash) before it goes out.
pub struct PresenceBroadcast {
    /// The session.
    pub session: FullJid,
    /// The presence element, `from` already stamped.
    pub presence: starling_xmpp::Element,
}

/// A bound session ended.
pub struct SessionClosed {
    /// The session.
    pub session: FullJid,
}

/// An account is being deleted; handlers delete what they stored for it.
pub struct RemoveUser {
    /// The account.
    pub user: BareJid,
}

/// All hooks of a host.
#[derive(Default, Clone)]
pub struct HookSet {
    /// See [`UserSendPacket`].
    pub user_send_packet: Handlers<UserSendPacket>,
    /// See [`SmReceivePacket`].
    pub sm_receive_packet: Handlers<SmReceivePacket>,
    /// See [`UserReceivePacket`].
    pub user_receive_packet: Handlers<UserReceivePacket>,
    /// See [`OfflineMessage`].
    pub offline_message: Handlers<OfflineMessage>,
    /// See [`UserAvailable`].
    pub user_available: Handlers<UserAvailable>,
    /// See [`PresenceBroadcast`].
    pub presence_broadcast: Handlers<PresenceBroadcast>,
    /// See [`SessionClosed`].
    pub session_closed: Handlers<SessionClosed>,
    /// See [`RemoveUser`].
    pub remove_user: Handlers<RemoveUser>,
}

impl HookSet {
    /// Merges another module's handlers.
    pub fn extend(&mut self, other: Self) {
        self.user_send_packet.extend(other.user_send_packet);
        self.sm_receive_packet.extend(other.sm_receive_packet);
        self.user_receive_packet.extend(other.user_receive_packet);
        self.offline_message.extend(other.offline_message);
        self.user_available.extend(other.user_available);
        self.presence_broadcast.extend(other.presence_broadcast);
        self.session_closed.extend(other.session_closed);
        self.remove_user.extend(other.remove_user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Record(i32, Arc<std::sync::Mutex<Vec<i32>>>, HookResult);

    impl Hook<RemoveUser> for Record {
        fn call<'a>(&'a self, _: &'a Server, _: &'a mut RemoveUser) -> BoxFuture<'a, HookResult> {
            Box::pin(async move {
                if let Ok(mut v) = self.1.lock() {
                    v.push(self.0);
                }
                self.2
            })
        }
    }

    #[test]
    fn handlers_sort_by_priority_and_keep_insertion_order_on_ties() {
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut h: Handlers<RemoveUser> = Handlers::default();
        h.add(50, Arc::new(Record(50, log.clone(), HookResult::Continue)));
        h.add(10, Arc::new(Record(10, log.clone(), HookResult::Continue)));
        h.add(50, Arc::new(Record(51, log, HookResult::Continue)));
        let order: Vec<i32> = h.0.iter().map(|(p, _)| *p).collect();
        assert_eq!(order, vec![10, 50, 50]);
    }
}
