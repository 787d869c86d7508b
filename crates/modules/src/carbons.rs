//! `mod_carboncopy`: XEP-0280 Message Carbons, with the XEP-0334 `<no-copy/>` hint.
//!
//! - **Enabling and disabling** (XEP-0280 §4, §5): an IQ-set with `<enable/>` or `<disable/>`
//!   addressed to the account's own bare JID (or with no `to`, which c2s addresses to it)
//!   turns copies on or off for the sending session. Repeating either is not an error (§10.1).
//!   Another account, or a remote entity, gets `<not-allowed/>` (§4.1, §5.1); a `get` gets
//!   `<not-allowed/>` and any other payload `<bad-request/>`, as ejabberd answers them.
//! - **Received copies** (§7, at `sm_receive_packet`, once per stanza and account): an
//!   eligible message to the account's bare or full JID is wrapped in
//!   `<received><forwarded>…</forwarded></received>` and sent, from the bare JID, to every
//!   carbon-enabled available resource that does *not* get the original under RFC 6121 §8.5:
//!   for a full JID with a session that session; otherwise (bare JID, or a full JID whose
//!   session is gone, which `starling_core::local` delivers as if to the bare JID) the
//!   resources `SessionManager::message_targets` picks.
//! - **Sent copies** (§8, at `user_send_packet`): an eligible message a session sends is
//!   wrapped in `<sent>` and copied to the account's other carbon-enabled available resources,
//!   whether or not the sender enabled carbons itself.
//! - **Eligibility** (§6, and the MUC rules of its 0.13 revision, `urn:xmpp:carbons:rules:0`,
//!   which ejabberd also follows): `chat` messages, and `normal` ones with a `<body/>`, a
//!   XEP-0085 chat state, a XEP-0184 receipt or a XEP-0333 marker; received XEP-0249 and
//!   mediated XEP-0045 invitations. Never: `groupchat`, `headline`, `error` (copying errors
//!   would need the message tracking §6 calls "unlikely to be generally appropriate"),
//!   messages carrying `<private xmlns='urn:xmpp:carbons:2'/>` (§9) or XEP-0334 `<no-copy/>`,
//!   messages that are themselves carbons, and a MUC private message (one with a
//!   `muc#user` `<x/>`) *received* at a full JID, which the room already sends to each joined
//!   client. Private messages the user *sends* to an occupant are copied.
//! - **Private** (§9): the receiving side removes `<private/>` before delivery, as §9 asks.
//!
//! Copies go straight into the sessions' inboxes, not through the router: they must not pass
//! `sm_receive_packet` again (archiving, blocking and carbons would see them a second time).
//! A message a resource sends to its own account gets sent copies only, so no resource sees it
//! twice as both `sent` and `received`.
//!
//! Which sessions enabled carbons is node-local state in memory (the same as ejabberd's
//! session info), keyed by bare JID and tagged with the session id, so a session that replaces
//! another with the same full JID does not inherit (or lose) its setting. It is forgotten on
//! `session_closed` and `remove_user`. In a cluster, copies also go to the account's
//! available sessions on other nodes, and each node drops (at `user_receive_packet`) the
//! copies reaching a session of its own that did not enable carbons.
//!
//! Disco: `urn:xmpp:carbons:2` is advertised on the account (from the IQ registration) and on
//! the host, with `urn:xmpp:carbons:rules:0`, as ejabberd does.

use std::sync::Arc;

use dashmap::DashMap;
use starling_config::{ModuleOptions, ModuleSpec};
use starling_core::BoxFuture;
use starling_core::Server;
use starling_core::hooks::{
    Hook, HookResult, RemoveUser, SessionClosed, SmReceivePacket, UserReceivePacket, UserSendPacket,
};
use starling_core::module::{
    HostContext, IqHandler, IqResult, IqTarget, Module, ModuleError, Registrations,
};
use starling_core::sm::{SessionEntry, SessionId};
use starling_xmpp::Element;
use starling_xmpp::error::StanzaErrorCondition;
use starling_xmpp::jid::{BareJid, FullJid};
use starling_xmpp::ns;
use starling_xmpp::stanza::{IqType, Kind, MessageType, Stanza, element, set_attr};

use crate::iq;

/// XEP-0280 namespace.
pub const NS_CARBONS: &str = "urn:xmpp:carbons:2";
/// XEP-0280 0.13 copying rules, advertised on the host.
pub const NS_CARBONS_RULES: &str = "urn:xmpp:carbons:rules:0";
/// XEP-0297 stanza forwarding.
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";
/// XEP-0334 message processing hints.
pub const NS_HINTS: &str = "urn:xmpp:hints";
/// XEP-0045 user namespace (private messages and mediated invitations carry its `<x/>`).
pub const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
/// XEP-0249 direct MUC invitations.
const NS_CONFERENCE: &str = "jabber:x:conference";
/// XEP-0085 chat state notifications.
const NS_CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
/// XEP-0184 message delivery receipts.
const NS_RECEIPTS: &str = "urn:xmpp:receipts";
/// XEP-0333 chat markers.
const NS_MARKERS: &str = "urn:xmpp:chat-markers:0";

/// Hook priority: ejabberd's (89), so archiving at a lower number runs first and its
/// `<stanza-id/>` is inside the copies, and blocking can stop a message before it is copied.
pub const PRIORITY: i32 = 89;

/// `mod_carboncopy` (ejabberd's name; `mod_carbons` is accepted too).
pub struct Carbons;

impl Module for Carbons {
    fn spec(&self) -> ModuleSpec {
        ModuleSpec {
            name: "mod_carboncopy",
            aliases: &["mod_carbons", "carboncopy", "carbons"],
            options: &[],
        }
    }

    fn start(
        &self,
        _host: &HostContext<'_>,
        _options: &ModuleOptions,
    ) -> Result<Registrations, ModuleError> {
        let enabled = Arc::new(Enabled::default());
        let forget = Arc::new(Forget(enabled.clone()));
        let mut registrations = Registrations::default()
            .iq(
                NS_CARBONS,
                IqTarget::Account,
                Arc::new(Toggle(enabled.clone())),
            )
            .feature(NS_CARBONS, IqTarget::Host)
            .feature(NS_CARBONS_RULES, IqTarget::Host);
        let hooks = &mut registrations.hooks;
        hooks
            .user_send_packet
            .add(PRIORITY, Arc::new(SentCopies(enabled.clone())));
        hooks
            .sm_receive_packet
            .add(PRIORITY, Arc::new(ReceivedCopies(enabled.clone())));
        hooks
            .user_receive_packet
            .add(PRIORITY, Arc::new(FilterCopies(enabled)));
        hooks.session_closed.add(PRIORITY, forget.clone());
        hooks.remove_user.add(PRIORITY, forget);
        Ok(registrations)
    }
}

/// The carbon-enabled sessions of one host, by account.
#[derive(Default)]
struct Enabled(DashMap<BareJid, Vec<(FullJid, SessionId)>>);

impl Enabled {
    /// Turns copies on for session `id` bound to `jid` (idempotent).
    fn enable(&self, jid: FullJid, id: SessionId) {
        let mut sessions = self.0.entry(jid.to_bare()).or_default();
        sessions.retain(|(j, _)| *j != jid);
        sessions.push((jid, id));
    }

    /// Turns copies off for `jid` (idempotent).
    fn disable(&self, jid: &FullJid) {
        let bare = jid.to_bare();
        if let Some(mut sessions) = self.0.get_mut(&bare) {
            sessions.retain(|(j, _)| j != jid);
        }
        self.0.remove_if(&bare, |_, v| v.is_empty());
    }

    /// The session bound to `jid` ended; `live` is the session now bound to that full JID, if
    /// any (a replacement), whose own setting must survive.
    fn closed(&self, jid: &FullJid, live: Option<SessionId>) {
        let bare = jid.to_bare();
        if let Some(mut sessions) = self.0.get_mut(&bare) {
            sessions.retain(|(j, id)| j != jid || Some(*id) == live);
        }
        self.0.remove_if(&bare, |_, v| v.is_empty());
    }

    /// Forgets an account.
    fn remove_user(&self, user: &BareJid) {
        self.0.remove(user);
    }

    /// The carbon-enabled session ids of `user` (empty, without allocating, for most users).
    fn ids(&self, user: &BareJid) -> Vec<SessionId> {
        self.0
            .get(user)
            .map(|v| v.iter().map(|(_, id)| *id).collect())
            .unwrap_or_default()
    }
}

/// XEP-0280 §4 and §5: `<enable/>` and `<disable/>`.
struct Toggle(Arc<Enabled>);

impl IqHandler for Toggle {
    fn handle<'a>(&'a self, server: &'a Server, iq: &'a Stanza) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            let (kind, payload) = iq::request(iq)?;
            if !iq::from_account_itself(iq) {
                return Err(iq::error(StanzaErrorCondition::NotAllowed)
                    .with_text("carbons can only be changed by the account's own resources"));
            }
            if kind == IqType::Get {
                return Err(
                    iq::error(StanzaErrorCondition::NotAllowed).with_text("only set is supported")
                );
            }
            // A stanza from one of the account's sessions always carries its full JID.
            let Ok(full) = iq.from().clone().into_full() else {
                return Err(iq::error(StanzaErrorCondition::NotAllowed));
            };
            match payload.name() {
                "enable" => {
                    let Some(session) = server.sm().get(&full) else {
                        // The session closed while its request was routed.
                        return Err(iq::error(StanzaErrorCondition::ItemNotFound));
                    };
                    self.0.enable(full, session.id);
                }
                "disable" => self.0.disable(&full),
                _ => {
                    return Err(iq::error(StanzaErrorCondition::BadRequest)
                        .with_text("only <enable/> or <disable/> are allowed"));
                }
            }
            Ok(None)
        })
    }
}

/// Which way a copied message went, relative to the account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// The account sent it (§8).
    Sent,
    /// The account received it (§7).
    Received,
}

impl Direction {
    /// The wrapper element's name.
    fn name(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Received => "received",
        }
    }
}

/// XEP-0280 §6 (with the MUC rules of revision 0.13): is `message` copied? `to_full` says
/// whether it is addressed to a full JID.
fn eligible(message: &Element, direction: Direction, to_full: bool) -> bool {
    if message.has_child("private", NS_CARBONS)
        || message.has_child("no-copy", NS_HINTS)
        || is_carbon(message)
    {
        return false;
    }
    let muc_user = message.get_child("x", NS_MUC_USER);
    let invitation = direction == Direction::Received
        && (message.has_child("x", NS_CONFERENCE)
            || muc_user.is_some_and(|x| x.has_child("invite", NS_MUC_USER)));
    let received_muc_pm = direction == Direction::Received
        && to_full
        && muc_user.is_some_and(|x| !x.has_child("invite", NS_MUC_USER));
    if received_muc_pm {
        return false;
    }
    match MessageType::parse(message.attr("type")) {
        MessageType::Chat => true,
        MessageType::Normal => {
            invitation
                || message.has_child("body", message.ns().as_str())
                || message.children().any(|c| {
                    let ns = c.ns();
                    ns == NS_CHATSTATES
                        || ns == NS_MARKERS
                        || (ns == NS_RECEIPTS && c.name() == "received")
                })
        }
        MessageType::Groupchat | MessageType::Headline | MessageType::Error => false,
    }
}

/// True for a carbon copy (`<sent/>` or `<received/>` in the carbons namespace).
fn is_carbon(message: &Element) -> bool {
    message.has_child("sent", NS_CARBONS) || message.has_child("received", NS_CARBONS)
}

/// The copy wrapper without its `to`: `<message type=T><D><forwarded>original</forwarded>
/// </D></message>`, built once and addressed per recipient.
fn wrapper(original: &Element, direction: Direction) -> Element {
    let mut forwarded = element("forwarded", NS_FORWARD, &[]);
    forwarded.append_child(original.clone());
    let mut carbon = element(direction.name(), NS_CARBONS, &[]);
    carbon.append_child(forwarded);
    let mut message = element("message", ns::CLIENT, &[]);
    // §7, §8: the wrapper SHOULD keep the original's type.
    if let Some(kind) = original.attr("type") {
        set_attr(&mut message, "type", kind);
    }
    message.append_child(carbon);
    message
}

/// Sends `original` wrapped for `direction`, from `user`'s bare JID, to `recipients`.
fn send_copies(
    user: &BareJid,
    original: &Element,
    direction: Direction,
    recipients: &[SessionEntry],
) {
    if recipients.is_empty() {
        return;
    }
    let wrapper = wrapper(original, direction);
    for session in recipients {
        match Stanza::new(
            wrapper.clone(),
            user.clone().into(),
            session.jid.clone().into(),
        ) {
            Ok(copy) => {
                session.deliver(Arc::new(copy));
            }
            Err(e) => tracing::debug!(error = %e, "cannot build a carbon copy"),
        }
    }
}

/// The available sessions of `user` that pass `keep` and enabled carbons here, plus its
/// available sessions on other nodes: whether those enabled carbons is known only on their
/// node, whose [`FilterCopies`] drops the copies they did not ask for.
fn carbon_sessions(
    server: &Server,
    user: &BareJid,
    enabled: &[SessionId],
    keep: impl Fn(&SessionEntry) -> bool,
) -> Vec<SessionEntry> {
    let mut sessions = server.sm().sessions_of(user);
    sessions.retain(|s| s.available && (!s.is_local() || enabled.contains(&s.id)) && keep(s));
    sessions
}

/// True if `user` has a session on another cluster node (which may have enabled carbons).
fn has_remote(server: &Server, user: &BareJid) -> bool {
    server
        .sm()
        .sessions_of(user)
        .iter()
        .any(|s| s.available && !s.is_local())
}

/// Drops copies that reach a session which did not enable carbons: those a node sent to a
/// session on another node, not knowing its setting (cluster, see [`carbon_sessions`]).
struct FilterCopies(Arc<Enabled>);

impl Hook<UserReceivePacket> for FilterCopies {
    fn call<'a>(
        &'a self,
        server: &'a Server,
        arg: &'a mut UserReceivePacket,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            let user = arg.session.to_bare();
            let copy = arg.stanza.kind() == Kind::Message
                && arg.stanza.from().is_bare()
                && arg.stanza.from().to_bare() == user
                && is_carbon(arg.stanza.element());
            if !copy {
                return HookResult::Continue;
            }
            let enabled = server
                .sm()
                .get_local(&arg.session)
                .is_some_and(|s| self.0.ids(&user).contains(&s.id));
            if enabled {
                HookResult::Continue
            } else {
                HookResult::Stop
            }
        })
    }
}

/// §8: copies of what a session sends.
struct SentCopies(Arc<Enabled>);

impl Hook<UserSendPacket> for SentCopies {
    fn call<'a>(
        &'a self,
        server: &'a Server,
        arg: &'a mut UserSendPacket,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            if arg.stanza.kind() != Kind::Message {
                return HookResult::Continue;
            }
            let user = arg.session.to_bare();
            let enabled = self.0.ids(&user);
            if enabled.is_empty() && !has_remote(server, &user) {
                return HookResult::Continue;
            }
            let message = arg.stanza.element();
            if !eligible(message, Direction::Sent, !arg.stanza.to().is_bare()) {
                return HookResult::Continue;
            }
            let recipients = carbon_sessions(server, &user, &enabled, |s| s.jid != arg.session);
            send_copies(&user, message, Direction::Sent, &recipients);
            HookResult::Continue
        })
    }
}

/// §7: copies of what the account receives, and §9's removal of `<private/>`.
struct ReceivedCopies(Arc<Enabled>);

impl Hook<SmReceivePacket> for ReceivedCopies {
    fn call<'a>(
        &'a self,
        server: &'a Server,
        arg: &'a mut SmReceivePacket,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            if arg.stanza.kind() != Kind::Message {
                return HookResult::Continue;
            }
            if arg.stanza.element().has_child("private", NS_CARBONS) {
                strip_private(&mut arg.stanza);
                return HookResult::Continue;
            }
            // The account's own resources: `SentCopies` already told the others.
            if arg.stanza.from().to_bare() == arg.user {
                return HookResult::Continue;
            }
            let enabled = self.0.ids(&arg.user);
            if enabled.is_empty() && !has_remote(server, &arg.user) {
                return HookResult::Continue;
            }
            let to_full = arg.stanza.to().clone().into_full().ok();
            if !eligible(arg.stanza.element(), Direction::Received, to_full.is_some()) {
                return HookResult::Continue;
            }
            // Who gets the original (RFC 6121 §8.5.3.1, else §8.5.3.2.1 and §8.5.2.1.1).
            // By full JID: session ids are per node, so in a cluster two can be equal.
            let originals: Vec<FullJid> = match to_full.and_then(|j| server.sm().get(&j)) {
                Some(session) => vec![session.jid],
                None => server
                    .sm()
                    .message_targets(&arg.user)
                    .into_iter()
                    .map(|s| s.jid)
                    .collect(),
            };
            let recipients =
                carbon_sessions(server, &arg.user, &enabled, |s| !originals.contains(&s.jid));
            send_copies(
                &arg.user,
                arg.stanza.element(),
                Direction::Received,
                &recipients,
            );
            HookResult::Continue
        })
    }
}

/// Removes every `<private xmlns='urn:xmpp:carbons:2'/>` from a received message (§9).
fn strip_private(stanza: &mut Stanza) {
    let mut element = stanza.element().clone();
    while element.remove_child("private", NS_CARBONS).is_some() {}
    match Stanza::new(element, stanza.from().clone(), stanza.to().clone()) {
        Ok(stripped) => *stanza = stripped,
        // Cannot happen (same kind and addresses); delivering the hint is harmless.
        Err(e) => tracing::debug!(error = %e, "cannot remove <private/>"),
    }
}

/// Forgets a closed session's setting, or a deleted account's.
struct Forget(Arc<Enabled>);

impl Hook<SessionClosed> for Forget {
    fn call<'a>(
        &'a self,
        server: &'a Server,
        arg: &'a mut SessionClosed,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            // The closed session left the directory before this hook; a session bound there
            // now replaced it and keeps its own setting.
            let live = server.sm().get(&arg.session).map(|s| s.id);
            self.0.closed(&arg.session, live);
            HookResult::Continue
        })
    }
}

impl Hook<RemoveUser> for Forget {
    fn call<'a>(&'a self, _: &'a Server, arg: &'a mut RemoveUser) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            self.0.remove_user(&arg.user);
            HookResult::Continue
        })
    }
}

#[cfg(test)]
mod tests {
    use starling_core::hooks::{SessionClosed, SmReceivePacket};
    use starling_xmpp::error::StanzaErrorCondition as C;
    use starling_xmpp::jid::Jid;

    use super::*;
    use crate::fixture::{Fixture, TestSession, error_condition};

    const ENABLE: &str = "<enable xmlns='urn:xmpp:carbons:2'/>";
    const DISABLE: &str = "<disable xmlns='urn:xmpp:carbons:2'/>";

    fn parse(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    /// A message as a client would send it, with `from` stamped.
    fn message(from: &str, to: &str, inner: &str) -> Stanza {
        let el = parse(&format!(
            "<message xmlns='jabber:client' type='chat' id='m1'>{inner}</message>"
        ));
        Stanza::new(el, Jid::parse(from).unwrap(), Jid::parse(to).unwrap()).unwrap()
    }

    /// Routes a message from another account, as `starling_core::local` would deliver it.
    async fn receive(f: &Fixture, stanza: Stanza) {
        f.server.route(stanza).await;
    }

    /// Runs the `user_send_packet` hooks for `session` and routes the message.
    async fn send(f: &Fixture, session: &TestSession, stanza: Stanza) {
        let modules = f.server.host_modules("localhost").unwrap();
        let mut arg = UserSendPacket {
            session: session.jid.clone(),
            stanza,
        };
        if modules
            .hooks()
            .user_send_packet
            .run(&f.server, &mut arg)
            .await
            == HookResult::Continue
        {
            f.server.route(arg.stanza).await;
        }
    }

    async fn enable(s: &mut TestSession) {
        let reply = s.iq("alice@localhost", "set", ENABLE).await;
        assert_eq!(reply.type_attr(), Some("result"), "{reply:?}");
    }

    /// The carbon wrapper's direction and the forwarded message's body.
    fn carbon(s: &Stanza) -> Option<(String, String)> {
        let el = s.element();
        let wrapper = el.children().find(|c| c.ns() == NS_CARBONS)?;
        let forwarded = wrapper.get_child("forwarded", NS_FORWARD)?;
        let inner = forwarded.get_child("message", ns::CLIENT)?;
        let body = inner
            .get_child("body", ns::CLIENT)
            .map(Element::text)
            .unwrap_or_default();
        Some((wrapper.name().to_owned(), body))
    }

    fn bodies(stanzas: &[Stanza]) -> Vec<String> {
        stanzas
            .iter()
            .filter_map(|s| s.element().get_child("body", ns::CLIENT).map(Element::text))
            .collect()
    }

    struct Alice {
        f: Fixture,
        phone: TestSession,
        laptop: TestSession,
    }

    /// alice/phone and alice/laptop, available, both with carbons on.
    async fn alice() -> Alice {
        let f = Fixture::new().await;
        f.account("alice@localhost").await;
        f.account("bob@localhost").await;
        let mut phone = f.session("alice@localhost/phone").await;
        let mut laptop = f.session("alice@localhost/laptop").await;
        phone.set_available();
        laptop.set_available();
        enable(&mut phone).await;
        enable(&mut laptop).await;
        Alice { f, phone, laptop }
    }

    #[test]
    fn eligibility_follows_section_6() {
        let e = |xml: &str, d, full| eligible(&parse(xml), d, full);
        let r = Direction::Received;
        let s = Direction::Sent;
        assert!(e("<message xmlns='jabber:client' type='chat'/>", r, false));
        assert!(e(
            "<message xmlns='jabber:client'><body>x</body></message>",
            r,
            false
        ));
        assert!(!e("<message xmlns='jabber:client'/>", r, false));
        assert!(e(
            "<message xmlns='jabber:client'><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
            r,
            false
        ));
        assert!(e(
            "<message xmlns='jabber:client'><received xmlns='urn:xmpp:receipts' id='a'/></message>",
            r,
            false
        ));
        assert!(!e(
            "<message xmlns='jabber:client' type='groupchat'><body>x</body></message>",
            r,
            false
        ));
        assert!(!e(
            "<message xmlns='jabber:client' type='headline'><body>x</body></message>",
            r,
            false
        ));
        assert!(!e(
            "<message xmlns='jabber:client' type='error'><body>x</body></message>",
            r,
            false
        ));
        // Hints.
        assert!(!e(
            "<message xmlns='jabber:client' type='chat'><private xmlns='urn:xmpp:carbons:2'/></message>",
            s,
            false
        ));
        assert!(!e(
            "<message xmlns='jabber:client' type='chat'><no-copy xmlns='urn:xmpp:hints'/></message>",
            s,
            false
        ));
        // A carbon is never copied again.
        assert!(!e(
            "<message xmlns='jabber:client' type='chat'><sent xmlns='urn:xmpp:carbons:2'/></message>",
            r,
            true
        ));
        // MUC private messages: sent ones are copied, received ones at a full JID are not.
        let pm = "<message xmlns='jabber:client' type='chat'><body>x</body>\
                  <x xmlns='http://jabber.org/protocol/muc#user'/></message>";
        assert!(e(pm, s, true));
        assert!(!e(pm, r, true));
        assert!(e(pm, r, false));
        // Received invitations are copied, even without a body.
        assert!(e(
            "<message xmlns='jabber:client'><x xmlns='jabber:x:conference' jid='r@muc'/></message>",
            r,
            false
        ));
        assert!(e(
            "<message xmlns='jabber:client'><x xmlns='http://jabber.org/protocol/muc#user'>\
             <invite from='a@b'/></x></message>",
            r,
            true
        ));
        assert!(!e(
            "<message xmlns='jabber:client'><x xmlns='jabber:x:conference' jid='r@muc'/></message>",
            s,
            false
        ));
    }

    #[test]
    fn wrapper_keeps_type_and_original() {
        let original = parse(
            "<message xmlns='jabber:client' type='chat' from='b@x/r' to='a@x'><body>hi</body></message>",
        );
        let w = wrapper(&original, Direction::Received);
        assert_eq!(w.attr("type"), Some("chat"));
        let inner = w
            .get_child("received", NS_CARBONS)
            .and_then(|r| r.get_child("forwarded", NS_FORWARD))
            .and_then(|f| f.get_child("message", ns::CLIENT))
            .unwrap();
        assert_eq!(inner, &original);
    }

    #[tokio::test]
    async fn enable_and_disable_answer_and_repeat_without_error() {
        let f = Fixture::new().await;
        f.account("alice@localhost").await;
        let mut s = f.session("alice@localhost/a").await;
        for payload in [ENABLE, ENABLE, DISABLE, DISABLE] {
            let reply = s.iq("alice@localhost", "set", payload).await;
            assert_eq!(reply.type_attr(), Some("result"));
            assert!(reply.payload().is_none());
        }
        let reply = s.iq("alice@localhost", "get", ENABLE).await;
        assert_eq!(error_condition(&reply), Some(C::NotAllowed));
        let reply = s
            .iq(
                "alice@localhost",
                "set",
                "<private xmlns='urn:xmpp:carbons:2'/>",
            )
            .await;
        assert_eq!(error_condition(&reply), Some(C::BadRequest));
    }

    #[tokio::test]
    async fn another_account_cannot_enable() {
        let f = Fixture::new().await;
        f.account("alice@localhost").await;
        let mut bob = f.session("bob@localhost/b").await;
        let reply = bob.iq("alice@localhost", "set", ENABLE).await;
        assert_eq!(error_condition(&reply), Some(C::NotAllowed));
    }

    #[tokio::test]
    async fn bare_jid_message_copies_to_resources_without_the_original() {
        let Alice {
            f,
            mut phone,
            mut laptop,
        } = alice().await;
        // Phone has the highest priority: it gets the original, laptop the carbon.
        f.server
            .sm()
            .update(&phone.jid, phone.id, |e| e.priority = 5);
        receive(
            &f,
            message("bob@localhost/b", "alice@localhost", "<body>hi</body>"),
        )
        .await;
        let got = phone.drain();
        assert_eq!(bodies(&got), vec!["hi"]);
        assert!(got.iter().all(|s| carbon(s).is_none()));
        let got = laptop.drain();
        assert_eq!(got.len(), 1);
        assert_eq!(
            carbon(&got[0]),
            Some(("received".to_owned(), "hi".to_owned()))
        );
        assert_eq!(got[0].from().as_str(), "alice@localhost");
        assert_eq!(got[0].to().as_str(), "alice@localhost/laptop");
        assert_eq!(got[0].type_attr(), Some("chat"));
    }

    #[tokio::test]
    async fn bare_jid_message_to_equal_priorities_makes_no_copies() {
        let Alice {
            f,
            mut phone,
            mut laptop,
        } = alice().await;
        receive(
            &f,
            message("bob@localhost/b", "alice@localhost", "<body>hi</body>"),
        )
        .await;
        // Both are RFC 6121 targets and get the original, so neither gets a carbon.
        for s in [&mut phone, &mut laptop] {
            let got = s.drain();
            assert_eq!(bodies(&got), vec!["hi"]);
            assert!(got.iter().all(|s| carbon(s).is_none()));
        }
    }

    #[tokio::test]
    async fn full_jid_message_copies_to_other_enabled_available_resources() {
        let Alice {
            f,
            mut phone,
            mut laptop,
        } = alice().await;
        // A third resource without carbons and one with carbons but not available.
        let mut tablet = f.session("alice@localhost/tablet").await;
        tablet.set_available();
        let mut watch = f.session("alice@localhost/watch").await;
        let reply = watch.iq("alice@localhost", "set", ENABLE).await;
        assert_eq!(reply.type_attr(), Some("result"));
        receive(
            &f,
            message(
                "bob@localhost/b",
                "alice@localhost/phone",
                "<body>hi</body>",
            ),
        )
        .await;
        assert_eq!(bodies(&phone.drain()), vec!["hi"]);
        let got = laptop.drain();
        assert_eq!(got.len(), 1);
        assert_eq!(
            carbon(&got[0]),
            Some(("received".to_owned(), "hi".to_owned()))
        );
        assert!(tablet.drain().is_empty());
        assert!(watch.drain().is_empty());
    }

    #[tokio::test]
    async fn full_jid_of_a_gone_session_is_treated_as_bare() {
        let Alice {
            f,
            mut phone,
            mut laptop,
        } = alice().await;
        f.server
            .sm()
            .update(&phone.jid, phone.id, |e| e.priority = 5);
        receive(
            &f,
            message("bob@localhost/b", "alice@localhost/gone", "<body>hi</body>"),
        )
        .await;
        assert_eq!(bodies(&phone.drain()), vec!["hi"]);
        let got = laptop.drain();
        assert_eq!(got.len(), 1);
        assert!(carbon(&got[0]).is_some());
    }

    #[tokio::test]
    async fn sent_messages_copy_to_other_enabled_resources() {
        let Alice {
            f,
            mut phone,
            mut laptop,
        } = alice().await;
        let mut bob = f.session("bob@localhost/b").await;
        bob.set_available();
        send(
            &f,
            &phone,
            message("alice@localhost/phone", "bob@localhost", "<body>yo</body>"),
        )
        .await;
        assert_eq!(bodies(&bob.drain()), vec!["yo"]);
        assert!(phone.drain().is_empty(), "no copy to the sender");
        let got = laptop.drain();
        assert_eq!(got.len(), 1);
        assert_eq!(carbon(&got[0]), Some(("sent".to_owned(), "yo".to_owned())));
        let inner_to = got[0]
            .element()
            .get_child("sent", NS_CARBONS)
            .and_then(|s| s.get_child("forwarded", NS_FORWARD))
            .and_then(|f| f.get_child("message", ns::CLIENT))
            .and_then(|m| m.attr("to"));
        assert_eq!(inner_to, Some("bob@localhost"));
    }

    #[tokio::test]
    async fn sender_without_carbons_is_still_copied() {
        let Alice {
            f,
            mut phone,
            mut laptop,
        } = alice().await;
        let reply = phone.iq("alice@localhost", "set", DISABLE).await;
        assert_eq!(reply.type_attr(), Some("result"));
        send(
            &f,
            &phone,
            message("alice@localhost/phone", "bob@localhost", "<body>yo</body>"),
        )
        .await;
        assert!(phone.drain().is_empty());
        assert_eq!(laptop.drain().len(), 1);
    }

    #[tokio::test]
    async fn message_to_own_account_is_copied_once() {
        let Alice {
            f,
            mut phone,
            mut laptop,
        } = alice().await;
        send(
            &f,
            &phone,
            message(
                "alice@localhost/phone",
                "alice@localhost/laptop",
                "<body>note</body>",
            ),
        )
        .await;
        // Laptop: the original and the sent carbon; phone: nothing (no received carbon).
        let got = laptop.drain();
        assert_eq!(got.len(), 2);
        assert_eq!(got.iter().filter(|s| carbon(s).is_some()).count(), 1);
        assert!(phone.drain().is_empty());
    }

    #[tokio::test]
    async fn private_and_no_copy_suppress_and_private_is_removed() {
        let Alice {
            f,
            mut phone,
            mut laptop,
        } = alice().await;
        f.server
            .sm()
            .update(&phone.jid, phone.id, |e| e.priority = 5);
        receive(
            &f,
            message(
                "bob@localhost/b",
                "alice@localhost",
                "<body>p</body><private xmlns='urn:xmpp:carbons:2'/>",
            ),
        )
        .await;
        let got = phone.drain();
        assert_eq!(bodies(&got), vec!["p"]);
        assert!(!got[0].element().has_child("private", NS_CARBONS));
        assert!(laptop.drain().is_empty());
        receive(
            &f,
            message(
                "bob@localhost/b",
                "alice@localhost",
                "<body>n</body><no-copy xmlns='urn:xmpp:hints'/>",
            ),
        )
        .await;
        assert_eq!(bodies(&phone.drain()), vec!["n"]);
        assert!(laptop.drain().is_empty());
        send(
            &f,
            &phone,
            message(
                "alice@localhost/phone",
                "bob@localhost",
                "<body>s</body><private xmlns='urn:xmpp:carbons:2'/>",
            ),
        )
        .await;
        assert!(laptop.drain().is_empty());
    }

    #[tokio::test]
    async fn disable_stops_copies() {
        let Alice {
            f,
            mut phone,
            mut laptop,
        } = alice().await;
        f.server
            .sm()
            .update(&phone.jid, phone.id, |e| e.priority = 5);
        let reply = laptop.iq("alice@localhost", "set", DISABLE).await;
        assert_eq!(reply.type_attr(), Some("result"));
        receive(
            &f,
            message("bob@localhost/b", "alice@localhost", "<body>hi</body>"),
        )
        .await;
        assert_eq!(bodies(&phone.drain()), vec!["hi"]);
        assert!(laptop.drain().is_empty());
    }

    #[tokio::test]
    async fn groupchat_and_received_muc_pm_are_not_copied() {
        let Alice {
            f,
            mut phone,
            mut laptop,
        } = alice().await;
        let gc = Stanza::new(
            parse("<message xmlns='jabber:client' type='groupchat'><body>g</body></message>"),
            Jid::parse("room@conference.localhost").unwrap(),
            Jid::parse("alice@localhost/phone").unwrap(),
        )
        .unwrap();
        // Run only the hook: the router would bounce a groupchat message to a bare JID.
        let modules = f.server.host_modules("localhost").unwrap();
        let mut arg = SmReceivePacket {
            user: BareJid::parse("alice@localhost").unwrap(),
            stanza: gc,
        };
        modules
            .hooks()
            .sm_receive_packet
            .run(&f.server, &mut arg)
            .await;
        let pm = message(
            "room@conference.localhost/nick",
            "alice@localhost/phone",
            "<body>pm</body><x xmlns='http://jabber.org/protocol/muc#user'/>",
        );
        receive(&f, pm).await;
        assert_eq!(bodies(&phone.drain()), vec!["pm"]);
        assert!(laptop.drain().is_empty());
    }

    #[tokio::test]
    async fn closing_a_session_forgets_it_but_not_its_replacement() {
        let Alice { f, laptop, .. } = alice().await;
        let user = BareJid::parse("alice@localhost").unwrap();
        let state = Enabled::default();
        state.enable(laptop.jid.clone(), laptop.id);
        // A new session replaced laptop and enabled carbons before the old one's cleanup ran.
        let (new_id, _channels) = f.server.sm().bind(laptop.jid.clone(), None).unwrap();
        state.enable(laptop.jid.clone(), new_id);
        state.closed(&laptop.jid, Some(new_id));
        assert_eq!(state.ids(&user), vec![new_id]);
        // The replacement closes too.
        state.closed(&laptop.jid, None);
        assert!(state.ids(&user).is_empty());
        assert!(state.0.is_empty());
    }

    #[tokio::test]
    async fn session_closed_and_remove_user_forget_settings() {
        let Alice {
            f,
            mut phone,
            laptop,
        } = alice().await;
        f.server
            .sm()
            .update(&phone.jid, phone.id, |e| e.priority = 5);
        // Laptop leaves; a new laptop session binds without enabling carbons.
        f.server.sm().unbind(&laptop.jid, laptop.id);
        let modules = f.server.host_modules("localhost").unwrap();
        let mut arg = SessionClosed {
            session: laptop.jid.clone(),
        };
        modules
            .hooks()
            .session_closed
            .run(&f.server, &mut arg)
            .await;
        let mut laptop2 = f.session("alice@localhost/laptop").await;
        laptop2.set_available();
        receive(
            &f,
            message("bob@localhost/b", "alice@localhost", "<body>1</body>"),
        )
        .await;
        assert_eq!(bodies(&phone.drain()), vec!["1"]);
        assert!(laptop2.drain().is_empty());

        // Remove the account: phone's setting goes too.
        let reply = laptop2.iq("alice@localhost", "set", ENABLE).await;
        assert_eq!(reply.type_attr(), Some("result"));
        let alice = BareJid::parse("alice@localhost").unwrap();
        assert!(f.server.remove_user(&alice, "test").await.unwrap());
        let mut arg = SmReceivePacket {
            user: alice.clone(),
            stanza: message("bob@localhost/b", "alice@localhost", "<body>2</body>"),
        };
        modules
            .hooks()
            .sm_receive_packet
            .run(&f.server, &mut arg)
            .await;
        assert!(laptop2.drain().is_empty());
    }

    #[tokio::test]
    async fn disco_advertises_carbons_on_host_and_account() {
        let f = Fixture::new().await;
        let modules = f.server.host_modules("localhost").unwrap();
        assert!(modules.features(IqTarget::Host).contains(&NS_CARBONS));
        assert!(modules.features(IqTarget::Host).contains(&NS_CARBONS_RULES));
        assert!(modules.features(IqTarget::Account).contains(&NS_CARBONS));
    }
}
