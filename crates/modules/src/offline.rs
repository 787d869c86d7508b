//! `mod_offline`: messages for offline accounts (XEP-0160) and flexible offline message
//! retrieval (XEP-0013).
//!
//! - **Storing** (XEP-0160 §2, §3): `starling_core::local` runs the `offline_message` hook for
//!   chat and normal messages to an existing account with no available resource (headlines
//!   are dropped and groupchat bounced before that). The message is stored with a XEP-0203
//!   `<delay from='HOST' stamp='…'/>` and the hook stops. Not stored, and silently dropped:
//!   messages with a XEP-0334 `<no-store/>` or `<no-permanent-store/>` hint, messages already
//!   carrying a XEP-0013 `<offline/>` element, and, depending on `store_empty_body` (ejabberd's
//!   option and default), messages without a body or only with chat states (XEP-0160 §3: "with
//!   the exception of messages that contain only Chat State Notifications"). A `<store/>` hint
//!   overrides the body rule. When the user already has `max_user_offline_messages` stored, the
//!   sender gets `<resource-constraint/>` (type `wait`, as ejabberd answers; the quota is
//!   checked in the insert transaction). A storage failure falls through to the core's
//!   `<service-unavailable/>` (XEP-0160 §2, step 3).
//! - **Delivery** (XEP-0160 §2, step 4): on a session's initial presence with non-negative
//!   priority (`user_available`), the stored messages are taken atomically and delivered to
//!   that session in arrival order. What fits in the session's inbox is queued at once; a
//!   larger backlog is fed by a task that waits for the inbox to drain, so it never overflows.
//!   Messages that cannot be queued (the session closed) go back to storage under their ids.
//! - **XEP-0013**: a session that asks the offline node (`disco#info`/`disco#items` to its own
//!   bare JID with node `http://jabber.org/protocol/offline`, §2.2–2.3) or sends an
//!   `<offline/>` IQ before its initial presence gets no flood: its messages stay stored for
//!   `<item action='view'/>` (§2.4), `<item action='remove'/>` (§2.5), `<fetch/>` (§2.6) and
//!   `<purge/>` (§2.7). Message nodes are the stored per-user ids. The node queries are
//!   answered from `user_send_packet` for the user's own sessions, because `mod_disco` answers
//!   disco to account JIDs and publishes no nodes; nothing else addressed to the account is
//!   touched.
//! - **Account removal** (`remove_user`) deletes everything stored for the user.
//!
//! Advertises `msgoffline` (XEP-0160 §4) and `http://jabber.org/protocol/offline` on the host.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use starling_config::{ModuleOptions, ModuleSpec, OptionKind, OptionSpec};
use starling_core::BoxFuture;
use starling_core::Server;
use starling_core::counters::OfflineEvent;
use starling_core::hooks::{
    Hook, HookResult, OfflineMessage, RemoveUser, SessionClosed, UserAvailable, UserSendPacket,
};
use starling_core::module::{
    HostContext, IqHandler, IqResult, IqTarget, Module, ModuleError, Registrations,
};
use starling_core::router::bounce_with;
use starling_core::server::unix_now_micros as now_micros;
use starling_core::sm::SessionId;
use starling_storage::{OfflineEntry, PushOutcome};
use starling_xmpp::Element;
use starling_xmpp::error::{StanzaError, StanzaErrorCondition};
use starling_xmpp::jid::{BareJid, FullJid};
use starling_xmpp::ns;
use starling_xmpp::stanza::{IqType, Kind, MessageType, Stanza, element, text_element};

use crate::iq;
use crate::time::format_datetime;

/// XEP-0013 namespace, also its disco node and data form type.
pub const NS_OFFLINE: &str = "http://jabber.org/protocol/offline";
/// XEP-0160 §4: the feature a server storing offline messages advertises.
pub const FEATURE_MSGOFFLINE: &str = "msgoffline";
/// XEP-0334 message processing hints.
const NS_HINTS: &str = "urn:xmpp:hints";
/// XEP-0085 chat states.
const NS_CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
/// XEP-0022 message events (legacy composing notifications).
const NS_EVENT: &str = "jabber:x:event";

/// ejabberd's default of the `max_user_offline_messages` shaper rule for ordinary users.
pub const DEFAULT_MAX_USER_OFFLINE_MESSAGES: u32 = 5000;

/// Hook priority of every handler (DESIGN.md §2.2 gives mod_offline 50).
const PRIORITY: i32 = 50;

const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "max_user_offline_messages",
        kind: OptionKind::IntOrInfinity { min: 0 },
        doc: "Messages stored per user before senders get <resource-constraint/> (default 5000).",
    },
    OptionSpec {
        name: "store_empty_body",
        kind: OptionKind::Enum(&["true", "false", "unless_chat_state"]),
        doc: "Store messages without a body: true, false, or unless_chat_state (default).",
    },
];

/// `mod_offline`.
pub struct Offline;

impl Module for Offline {
    fn spec(&self) -> ModuleSpec {
        ModuleSpec {
            name: "mod_offline",
            aliases: &["offline"],
            options: OPTIONS,
        }
    }

    fn start(
        &self,
        host: &HostContext<'_>,
        options: &ModuleOptions,
    ) -> Result<Registrations, ModuleError> {
        let max = options
            .int("max_user_offline_messages")
            .map_or(DEFAULT_MAX_USER_OFFLINE_MESSAGES, |n| {
                u32::try_from(n.max(0)).unwrap_or(u32::MAX)
            });
        let empty_body = match options.string("store_empty_body") {
            Some("true") => EmptyBody::Store,
            Some("false") => EmptyBody::Drop,
            _ => EmptyBody::UnlessChatState,
        };
        let state = Arc::new(OfflineState {
            host: host.host.to_owned(),
            max,
            empty_body,
            flexible: Mutex::new(HashMap::new()),
        });
        let mut registrations = Registrations::default()
            .iq(NS_OFFLINE, IqTarget::Account, state.clone())
            .feature(NS_OFFLINE, IqTarget::Host)
            .feature(FEATURE_MSGOFFLINE, IqTarget::Host);
        let hooks = &mut registrations.hooks;
        hooks.offline_message.add(PRIORITY, state.clone());
        hooks.user_available.add(PRIORITY, state.clone());
        hooks.user_send_packet.add(PRIORITY, state.clone());
        hooks.session_closed.add(PRIORITY, state.clone());
        hooks.remove_user.add(PRIORITY, state);
        Ok(registrations)
    }
}

/// ejabberd's `store_empty_body`: what to do with messages that have no `<body/>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EmptyBody {
    /// Store them all.
    Store,
    /// Store only messages with a body.
    Drop,
    /// Store them unless they only carry chat states (the default).
    UnlessChatState,
}

/// The module on one host: its options and the sessions that chose XEP-0013.
struct OfflineState {
    host: String,
    max: u32,
    empty_body: EmptyBody,
    /// Sessions that used flexible retrieval, by JID with the directory id of that session
    /// (a later session reusing the full JID must not inherit the choice).
    flexible: Mutex<HashMap<FullJid, SessionId>>,
}

impl OfflineState {
    fn flexible(&self) -> MutexGuard<'_, HashMap<FullJid, SessionId>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts
        // and removals), so a poisoned lock is still usable.
        self.flexible.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that `session` uses XEP-0013, so its initial presence does not flush.
    fn mark_flexible(&self, server: &Server, session: &FullJid) {
        if let Some(entry) = server.sm().get(session) {
            self.flexible().insert(session.clone(), entry.id);
        }
    }

    fn is_flexible(&self, session: &FullJid, id: SessionId) -> bool {
        self.flexible().get(session) == Some(&id)
    }

    /// Stores `stanza` for `user`; `Stop` unless storage failed.
    async fn store(&self, server: &Server, user: &BareJid, stanza: &Stanza) -> HookResult {
        let stored_at = now_micros();
        let mut el = stanza.element().clone();
        let mut delay = text_element("delay", ns::DELAY, "Offline Storage");
        starling_xmpp::stanza::set_attr(&mut delay, "from", self.host.as_str());
        starling_xmpp::stanza::set_attr(&mut delay, "stamp", stamp(stored_at));
        el.append_child(delay);
        let xml = String::from(&el);
        let outcome = server
            .stores()
            .push_offline(user, stanza.from().as_str(), &xml, stored_at, self.max)
            .await;
        match outcome {
            Ok(PushOutcome::Stored(id)) => {
                server.counters().offline(OfflineEvent::Stored, 1);
                tracing::debug!(%user, id, "offline message stored");
                HookResult::Stop
            }
            Ok(PushOutcome::QuotaExceeded) => {
                server.counters().offline(OfflineEvent::Refused, 1);
                tracing::info!(%user, max = self.max, "offline message queue full");
                let error = StanzaError::new(StanzaErrorCondition::ResourceConstraint)
                    .with_text("The recipient's offline message queue is full");
                bounce_with(server, stanza, error).await;
                HookResult::Stop
            }
            Err(e) => {
                tracing::error!(%user, error = %e, "cannot store offline message");
                // The core answers <service-unavailable/> (XEP-0160 §2, step 3).
                HookResult::Continue
            }
        }
    }

    /// XEP-0160 §2 step 4: delivers every stored message to `session`, oldest first.
    async fn flush(&self, server: &Server, session: &FullJid) {
        let user = session.to_bare();
        let entries = match server.stores().take_offline(&user).await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::error!(%user, error = %e, "cannot load offline messages");
                return;
            }
        };
        if entries.is_empty() {
            return;
        }
        let taken = u64::try_from(entries.len()).unwrap_or(u64::MAX);
        server.counters().offline(OfflineEvent::Flushed, taken);
        let Some(target) = server.sm().get(session) else {
            restore(server, &user, entries).await;
            return;
        };
        // What fits in the inbox goes now, in this task; a larger backlog is fed by a task of
        // its own that waits for the session to drain its inbox (the session's task cannot wait
        // for itself), so a long absence never overflows the inbox and closes the session.
        let room = target.capacity().saturating_sub(INBOX_HEADROOM);
        let mut pending = entries.into_iter();
        for entry in pending.by_ref().take(room) {
            if let Some(stanza) = decode(&user, &entry)
                && !target.deliver(Arc::new(stanza))
            {
                let rest: Vec<OfflineEntry> = std::iter::once(entry).chain(pending).collect();
                restore(server, &user, rest).await;
                return;
            }
        }
        let rest: Vec<OfflineEntry> = pending.collect();
        if rest.is_empty() {
            return;
        }
        let Some(server) = server.handle() else {
            restore(server, &user, rest).await;
            return;
        };
        tokio::spawn(async move {
            let mut rest = rest.into_iter();
            while let Some(entry) = rest.next() {
                let Some(stanza) = decode(&user, &entry) else {
                    continue;
                };
                if !target.deliver_wait(Arc::new(stanza), BACKLOG_WAIT).await {
                    let undelivered: Vec<OfflineEntry> =
                        std::iter::once(entry).chain(rest).collect();
                    restore(&server, &user, undelivered).await;
                    return;
                }
            }
        });
    }
}

/// Inbox slots left free when flushing, for live traffic arriving meanwhile.
const INBOX_HEADROOM: usize = 64;
/// How long the backlog task waits for room in a session's inbox before giving up; what is
/// left goes back to storage for the next login.
const BACKLOG_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Puts undelivered messages back under their ids, so the next login gets them in order.
async fn restore(server: &Server, user: &BareJid, entries: Vec<OfflineEntry>) {
    if entries.is_empty() {
        return;
    }
    tracing::warn!(%user, undelivered = entries.len(), "offline flush interrupted");
    let n = u64::try_from(entries.len()).unwrap_or(u64::MAX);
    server.counters().offline(OfflineEvent::Restored, n);
    if let Err(e) = server.stores().restore_offline(user, &entries).await {
        tracing::error!(%user, error = %e, lost = entries.len(), "cannot restore offline messages");
    }
}

impl Hook<OfflineMessage> for OfflineState {
    fn call<'a>(
        &'a self,
        server: &'a Server,
        arg: &'a mut OfflineMessage,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            match decide(arg.stanza.element(), self.empty_body) {
                Decision::Store => self.store(server, &arg.user, &arg.stanza).await,
                // Not worth keeping, and not worth an error to the sender either (a typing
                // notification to someone offline is not a failure).
                Decision::Drop => HookResult::Stop,
                Decision::NotOurs => HookResult::Continue,
            }
        })
    }
}

impl Hook<UserAvailable> for OfflineState {
    fn call<'a>(
        &'a self,
        server: &'a Server,
        arg: &'a mut UserAvailable,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            let Some(entry) = server.sm().get(&arg.session) else {
                return HookResult::Continue;
            };
            // XEP-0160: only a resource with non-negative priority receives the messages;
            // a XEP-0013 client fetches them itself.
            if entry.priority >= 0 && !self.is_flexible(&arg.session, entry.id) {
                self.flush(server, &arg.session).await;
            }
            HookResult::Continue
        })
    }
}

impl Hook<UserSendPacket> for OfflineState {
    fn call<'a>(
        &'a self,
        server: &'a Server,
        arg: &'a mut UserSendPacket,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            let Some(disco) = offline_node_query(&arg.session, &arg.stanza) else {
                return HookResult::Continue;
            };
            self.mark_flexible(server, &arg.session);
            let user = arg.session.to_bare();
            let answer = match disco {
                NodeQuery::Info => node_info(server, &user).await,
                NodeQuery::Items => node_items(server, &user).await,
            };
            let reply = match answer {
                Ok(payload) => Some(arg.stanza.iq_result(Some(payload))),
                Err(error) => arg.stanza.error_reply(&error),
            };
            if let Some(reply) = reply {
                server.route(reply).await;
            }
            HookResult::Stop
        })
    }
}

impl Hook<SessionClosed> for OfflineState {
    fn call<'a>(
        &'a self,
        server: &'a Server,
        arg: &'a mut SessionClosed,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            // The closed session is already out of the directory; a successor bound to the
            // same full JID keeps its own entry.
            let current = server.sm().get(&arg.session).map(|e| e.id);
            let mut flexible = self.flexible();
            if flexible
                .get(&arg.session)
                .is_some_and(|id| Some(*id) != current)
            {
                flexible.remove(&arg.session);
            }
            HookResult::Continue
        })
    }
}

impl Hook<RemoveUser> for OfflineState {
    fn call<'a>(
        &'a self,
        server: &'a Server,
        arg: &'a mut RemoveUser,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            if let Err(e) = server.stores().remove_offline_user(&arg.user).await {
                tracing::error!(user = %arg.user, error = %e, "cannot delete offline messages");
            }
            HookResult::Continue
        })
    }
}

/// XEP-0013 §2.4–2.7: the `<offline/>` IQ, for the account itself only.
impl IqHandler for OfflineState {
    fn handle<'a>(&'a self, server: &'a Server, iq: &'a Stanza) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            let (kind, payload) = iq::request(iq)?;
            let user = iq::account(iq)?;
            let Ok(session) = iq.from().clone().into_full() else {
                return Err(iq::error(StanzaErrorCondition::BadRequest));
            };
            if !iq::from_account_itself(iq) {
                return Err(iq::error(StanzaErrorCondition::Forbidden));
            }
            self.mark_flexible(server, &session);
            match parse_request(kind, payload)? {
                Request::Fetch => {
                    let entries = server.stores().offline_messages(&user).await.map_err(|e| {
                        iq::storage_failure("cannot load offline messages", &user, &e)
                    })?;
                    deliver_tagged(server, &session, &user, &entries);
                }
                Request::Purge => {
                    server.stores().clear_offline(&user).await.map_err(|e| {
                        iq::storage_failure("cannot purge offline messages", &user, &e)
                    })?;
                }
                Request::View(ids) => {
                    let mut entries = Vec::with_capacity(ids.len());
                    for id in ids {
                        let entry =
                            server
                                .stores()
                                .offline_message(&user, id)
                                .await
                                .map_err(|e| {
                                    iq::storage_failure("cannot load offline message", &user, &e)
                                })?;
                        entries.push(
                            entry.ok_or_else(|| iq::error(StanzaErrorCondition::ItemNotFound))?,
                        );
                    }
                    deliver_tagged(server, &session, &user, &entries);
                }
                Request::Remove(ids) => {
                    let mut missing = false;
                    for id in ids {
                        missing |=
                            !server
                                .stores()
                                .remove_offline(&user, id)
                                .await
                                .map_err(|e| {
                                    iq::storage_failure("cannot remove offline message", &user, &e)
                                })?;
                    }
                    if missing {
                        return Err(iq::error(StanzaErrorCondition::ItemNotFound));
                    }
                }
            }
            Ok(None)
        })
    }
}

/// What to do with a message for an offline account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    /// Store it.
    Store,
    /// Drop it without an error.
    Drop,
    /// Not a message this module stores: let the core answer.
    NotOurs,
}

/// ejabberd's `need_to_store`, following XEP-0160 §3 and XEP-0334.
fn decide(el: &Element, empty_body: EmptyBody) -> Decision {
    if Kind::of(el) != Some(Kind::Message) {
        return Decision::NotOurs;
    }
    match MessageType::parse(el.attr("type")) {
        MessageType::Normal | MessageType::Chat => {}
        MessageType::Error | MessageType::Groupchat | MessageType::Headline => {
            return Decision::NotOurs;
        }
    }
    // Already an XEP-0013 copy: storing it again would duplicate it.
    if el.get_child("offline", NS_OFFLINE).is_some() {
        return Decision::Drop;
    }
    if el.get_child("store", NS_HINTS).is_some() {
        return Decision::Store;
    }
    if el.get_child("no-store", NS_HINTS).is_some()
        || el.get_child("no-permanent-store", NS_HINTS).is_some()
    {
        return Decision::Drop;
    }
    let keep = match empty_body {
        EmptyBody::Store => true,
        EmptyBody::Drop => el.get_child("body", ns::CLIENT).is_some(),
        EmptyBody::UnlessChatState => !is_standalone_chat_state(el),
    };
    if keep {
        Decision::Store
    } else {
        Decision::Drop
    }
}

/// True if the message has no body or subject and nothing but chat states, message events,
/// delays, hints and a thread: nothing a later reader would miss.
fn is_standalone_chat_state(el: &Element) -> bool {
    el.children().all(|child| {
        let ns = child.ns();
        match ns.as_str() {
            ns::CLIENT => child.name() == "thread",
            NS_CHATSTATES | NS_EVENT | ns::DELAY | NS_HINTS => true,
            _ => false,
        }
    })
}

/// Which XEP-0013 node query a stanza is, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeQuery {
    Info,
    Items,
}

/// A disco get for the offline node, sent by `session` to its own bare JID (§2.2, §2.3).
fn offline_node_query(session: &FullJid, stanza: &Stanza) -> Option<NodeQuery> {
    if stanza.kind() != Kind::Iq || IqType::parse(stanza.type_attr()) != Some(IqType::Get) {
        return None;
    }
    let to = stanza.to();
    if !to.is_bare() || to.node() != session.node() || to.domain() != session.domain() {
        return None;
    }
    let mut children = stanza.element().children();
    let (Some(query), None) = (children.next(), children.next()) else {
        return None;
    };
    if query.name() != "query" || query.attr("node") != Some(NS_OFFLINE) {
        return None;
    }
    match query.ns().as_str() {
        ns::DISCO_INFO => Some(NodeQuery::Info),
        ns::DISCO_ITEMS => Some(NodeQuery::Items),
        _ => None,
    }
}

/// §2.2: the node's identity, feature and message count (a XEP-0128 form).
async fn node_info(server: &Server, user: &BareJid) -> Result<Element, StanzaError> {
    let count = server
        .stores()
        .offline_count(user)
        .await
        .map_err(|e| iq::storage_failure("cannot count offline messages", user, &e))?;
    let mut query = element("query", ns::DISCO_INFO, &[("node", NS_OFFLINE)]);
    query.append_child(element(
        "identity",
        ns::DISCO_INFO,
        &[("category", "automation"), ("type", "message-list")],
    ));
    query.append_child(element("feature", ns::DISCO_INFO, &[("var", NS_OFFLINE)]));
    let mut form = element("x", ns::DATA_FORMS, &[("type", "result")]);
    let mut form_type = element(
        "field",
        ns::DATA_FORMS,
        &[("var", "FORM_TYPE"), ("type", "hidden")],
    );
    form_type.append_child(text_element("value", ns::DATA_FORMS, NS_OFFLINE));
    form.append_child(form_type);
    let mut number = element("field", ns::DATA_FORMS, &[("var", "number_of_messages")]);
    number.append_child(text_element("value", ns::DATA_FORMS, &count.to_string()));
    form.append_child(number);
    query.append_child(form);
    Ok(query)
}

/// §2.3: one item per message: the user's JID, the message's node, the sender as name.
async fn node_items(server: &Server, user: &BareJid) -> Result<Element, StanzaError> {
    let headers = server
        .stores()
        .offline_headers(user)
        .await
        .map_err(|e| iq::storage_failure("cannot list offline messages", user, &e))?;
    let mut query = element("query", ns::DISCO_ITEMS, &[("node", NS_OFFLINE)]);
    for (id, from) in headers {
        query.append_child(element(
            "item",
            ns::DISCO_ITEMS,
            &[
                ("jid", user.as_str()),
                ("node", &id.to_string()),
                ("name", &from),
            ],
        ));
    }
    Ok(query)
}

/// A parsed `<offline/>` request.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Request {
    /// §2.6 (`get`).
    Fetch,
    /// §2.7 (`set`).
    Purge,
    /// §2.4 (`get`): these nodes.
    View(Vec<i64>),
    /// §2.5 (`set`): these nodes.
    Remove(Vec<i64>),
}

fn parse_request(kind: IqType, payload: &Element) -> Result<Request, StanzaError> {
    let bad = || iq::error(StanzaErrorCondition::BadRequest);
    if payload.name() != "offline" {
        return Err(bad());
    }
    if payload.get_child("fetch", NS_OFFLINE).is_some() {
        return match kind {
            IqType::Get => Ok(Request::Fetch),
            _ => Err(bad()),
        };
    }
    if payload.get_child("purge", NS_OFFLINE).is_some() {
        return match kind {
            IqType::Set => Ok(Request::Purge),
            _ => Err(bad()),
        };
    }
    let mut view = Vec::new();
    let mut remove = Vec::new();
    for item in payload.children().filter(|c| c.is("item", NS_OFFLINE)) {
        // A node we never handed out cannot name a message: item-not-found, not bad-request.
        let id = item
            .attr("node")
            .and_then(|n| n.parse::<i64>().ok())
            .ok_or_else(|| iq::error(StanzaErrorCondition::ItemNotFound))?;
        match item.attr("action") {
            Some("view") => view.push(id),
            Some("remove") => remove.push(id),
            _ => return Err(bad()),
        }
    }
    match (kind, view.is_empty(), remove.is_empty()) {
        (IqType::Get, false, true) => Ok(Request::View(view)),
        (IqType::Set, true, false) => Ok(Request::Remove(remove)),
        _ => Err(bad()),
    }
}

/// Sends stored messages to `session`, each marked with its node (§2.4, §2.6).
fn deliver_tagged(server: &Server, session: &FullJid, user: &BareJid, entries: &[OfflineEntry]) {
    let Some(target) = server.sm().get(session) else {
        return;
    };
    for entry in entries {
        let Some(stanza) = decode(user, entry) else {
            continue;
        };
        let mut el = stanza.into_element();
        let mut offline = element("offline", NS_OFFLINE, &[]);
        offline.append_child(element(
            "item",
            NS_OFFLINE,
            &[("node", &entry.id.to_string())],
        ));
        el.append_child(offline);
        let Ok(stanza) = Stanza::from_element(el) else {
            continue;
        };
        if !target.deliver(Arc::new(stanza)) {
            return;
        }
    }
}

/// Parses a stored message; a row that no longer parses is logged and skipped.
fn decode(user: &BareJid, entry: &OfflineEntry) -> Option<Stanza> {
    let parsed = entry
        .xml
        .parse::<Element>()
        .map_err(|e| e.to_string())
        .and_then(|el| Stanza::from_element(el).map_err(|e| e.to_string()));
    match parsed {
        Ok(stanza) => Some(stanza),
        Err(e) => {
            tracing::error!(%user, id = entry.id, error = %e, "skipping corrupt offline message");
            None
        }
    }
}

/// XEP-0082 UTC timestamp with milliseconds, e.g. `2026-11-23T10:00:00.123Z`.
fn stamp(micros: i64) -> String {
    let seconds = micros.div_euclid(1_000_000);
    let millis = micros.rem_euclid(1_000_000) / 1_000;
    let whole = format_datetime(seconds);
    let base = whole.strip_suffix('Z').unwrap_or(&whole);
    format!("{base}.{millis:03}Z")
}

#[cfg(test)]
mod tests {
    use starling_config::OptionValue;
    use starling_xmpp::error::StanzaErrorCondition as C;
    use starling_xmpp::jid::Jid;

    use super::*;
    use crate::fixture::{Fixture, TestSession, error_condition, error_of, set_option};

    fn msg(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    /// Sends a message as `from`'s client would, routed through the server.
    async fn send(f: &Fixture, from: &str, to: &str, inner: &str, kind: &str) {
        let el = msg(&format!(
            "<message xmlns='jabber:client' type='{kind}' id='m'>{inner}</message>"
        ));
        let stanza = Stanza::new(el, Jid::parse(from).unwrap(), Jid::parse(to).unwrap()).unwrap();
        f.server.route(stanza).await;
    }

    /// Runs the `user_available` hooks as initial presence does (after marking available).
    async fn come_online(f: &Fixture, s: &TestSession) {
        s.set_available();
        let modules = f.server.host_modules("localhost").unwrap();
        let mut arg = UserAvailable {
            session: s.jid.clone(),
        };
        modules
            .hooks()
            .user_available
            .run(&f.server, &mut arg)
            .await;
    }

    fn bodies(stanzas: &[Stanza]) -> Vec<String> {
        stanzas
            .iter()
            .filter_map(|s| s.element().get_child("body", ns::CLIENT).map(Element::text))
            .collect()
    }

    #[test]
    fn decisions_follow_xep_0160_and_hints() {
        let d = |xml: &str| decide(&msg(xml), EmptyBody::UnlessChatState);
        let m = "<message xmlns='jabber:client'";
        assert_eq!(
            d(&format!("{m}><body>hi</body></message>")),
            Decision::Store
        );
        assert_eq!(
            d(&format!("{m} type='chat'><body>hi</body></message>")),
            Decision::Store
        );
        for t in ["error", "groupchat", "headline"] {
            assert_eq!(
                d(&format!("{m} type='{t}'><body>x</body></message>")),
                Decision::NotOurs
            );
        }
        let composing = format!(
            "{m} type='chat'><composing xmlns='{NS_CHATSTATES}'/><thread>t</thread></message>"
        );
        assert_eq!(d(&composing), Decision::Drop);
        assert_eq!(d(&format!("{m}/>")), Decision::Drop, "nothing to keep");
        let receipt = format!("{m}><received xmlns='urn:xmpp:receipts' id='x'/></message>");
        assert_eq!(d(&receipt), Decision::Store, "a payload worth keeping");
        for hint in ["no-store", "no-permanent-store"] {
            let xml = format!("{m}><body>x</body><{hint} xmlns='{NS_HINTS}'/></message>");
            assert_eq!(d(&xml), Decision::Drop, "{hint}");
        }
        let forced = format!(
            "{m}><composing xmlns='{NS_CHATSTATES}'/><store xmlns='{NS_HINTS}'/></message>"
        );
        assert_eq!(d(&forced), Decision::Store);
        let copy = format!("{m}><body>x</body><offline xmlns='{NS_OFFLINE}'/></message>");
        assert_eq!(d(&copy), Decision::Drop);
        // store_empty_body: false keeps only bodies; true keeps even chat states.
        assert_eq!(decide(&msg(&receipt), EmptyBody::Drop), Decision::Drop);
        assert_eq!(decide(&msg(&composing), EmptyBody::Store), Decision::Store);
    }

    #[test]
    fn stamps_have_milliseconds_in_utc() {
        assert_eq!(stamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(stamp(1_700_000_000_123_456), "2023-11-14T22:13:20.123Z");
        assert_eq!(stamp(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn requests_parse_per_xep_0013() {
        let p = |kind, xml: &str| parse_request(kind, &msg(xml));
        let o = format!("<offline xmlns='{NS_OFFLINE}'>");
        assert_eq!(
            p(IqType::Get, &format!("{o}<fetch/></offline>")),
            Ok(Request::Fetch)
        );
        assert_eq!(
            p(IqType::Set, &format!("{o}<purge/></offline>")),
            Ok(Request::Purge)
        );
        assert_eq!(
            p(
                IqType::Get,
                &format!(
                    "{o}<item action='view' node='3'/><item action='view' node='5'/></offline>"
                )
            ),
            Ok(Request::View(vec![3, 5]))
        );
        assert_eq!(
            p(
                IqType::Set,
                &format!("{o}<item action='remove' node='3'/></offline>")
            ),
            Ok(Request::Remove(vec![3]))
        );
        let cond = |r: Result<Request, StanzaError>| r.err().map(|e| e.condition);
        assert_eq!(
            cond(p(IqType::Set, &format!("{o}<fetch/></offline>"))),
            Some(C::BadRequest)
        );
        assert_eq!(
            cond(p(IqType::Get, &format!("{o}<purge/></offline>"))),
            Some(C::BadRequest)
        );
        assert_eq!(
            cond(p(IqType::Get, &format!("{o}</offline>"))),
            Some(C::BadRequest)
        );
        assert_eq!(
            cond(p(
                IqType::Set,
                &format!("{o}<item action='view' node='1'/></offline>")
            )),
            Some(C::BadRequest)
        );
        assert_eq!(
            cond(p(
                IqType::Get,
                &format!("{o}<item action='view' node='2003-02-27T22:49:17.008Z'/></offline>")
            )),
            Some(C::ItemNotFound)
        );
    }

    #[tokio::test]
    async fn messages_are_stored_and_flushed_in_order_with_delay() {
        let f = Fixture::new().await;
        f.account("bob@localhost").await;
        for n in 1..=3 {
            send(
                &f,
                "alice@localhost/a",
                "bob@localhost",
                &format!("<body>m{n}</body>"),
                "chat",
            )
            .await;
        }
        let bob = BareJid::parse("bob@localhost").unwrap();
        assert_eq!(f.server.stores().offline_count(&bob).await.unwrap(), 3);
        let mut s = f.session("bob@localhost/phone").await;
        come_online(&f, &s).await;
        let got = s.drain();
        assert_eq!(bodies(&got), ["m1", "m2", "m3"]);
        for m in &got {
            let delay = m.element().get_child("delay", ns::DELAY).unwrap();
            assert_eq!(delay.attr("from"), Some("localhost"));
            let stamp = delay.attr("stamp").unwrap();
            assert!(stamp.len() == 24 && stamp.ends_with('Z'), "{stamp}");
            assert_eq!(m.from().as_str(), "alice@localhost/a");
        }
        assert_eq!(f.server.stores().offline_count(&bob).await.unwrap(), 0);
        // A second session coming online gets nothing twice.
        let mut s2 = f.session("bob@localhost/laptop").await;
        come_online(&f, &s2).await;
        assert!(bodies(&s2.drain()).is_empty());
    }

    #[tokio::test]
    async fn over_quota_bounces_resource_constraint() {
        let f = Fixture::with(|c| {
            set_option(
                c,
                "mod_offline",
                "max_user_offline_messages",
                OptionValue::Int(2),
            );
        })
        .await;
        f.account("bob@localhost").await;
        let mut alice = f.session("alice@localhost/a").await;
        for n in 1..=3 {
            send(
                &f,
                "alice@localhost/a",
                "bob@localhost",
                &format!("<body>m{n}</body>"),
                "normal",
            )
            .await;
        }
        let errors = alice.drain();
        assert_eq!(errors.len(), 1, "{errors:?}");
        let error = error_of(&errors[0]).unwrap();
        assert_eq!(error.condition, C::ResourceConstraint);
        assert_eq!(error.type_, starling_xmpp::error::ErrorType::Wait);
        let bob = BareJid::parse("bob@localhost").unwrap();
        assert_eq!(f.server.stores().offline_count(&bob).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn unknown_users_headlines_and_chat_states_are_not_stored() {
        let f = Fixture::new().await;
        f.account("bob@localhost").await;
        let mut alice = f.session("alice@localhost/a").await;
        send(
            &f,
            "alice@localhost/a",
            "nobody@localhost",
            "<body>x</body>",
            "chat",
        )
        .await;
        assert_eq!(
            error_condition(&alice.next().unwrap()),
            Some(C::ServiceUnavailable)
        );
        send(
            &f,
            "alice@localhost/a",
            "bob@localhost",
            "<body>x</body>",
            "headline",
        )
        .await;
        let composing = format!("<composing xmlns='{NS_CHATSTATES}'/>");
        send(&f, "alice@localhost/a", "bob@localhost", &composing, "chat").await;
        assert!(alice.next().is_none(), "dropped silently");
        let bob = BareJid::parse("bob@localhost").unwrap();
        assert_eq!(f.server.stores().offline_count(&bob).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn negative_priority_does_not_flush() {
        let f = Fixture::new().await;
        f.account("bob@localhost").await;
        send(
            &f,
            "alice@localhost/a",
            "bob@localhost",
            "<body>x</body>",
            "chat",
        )
        .await;
        let mut s = f.session("bob@localhost/bot").await;
        f.server.sm().update(&s.jid, s.id, |e| e.priority = -1);
        let modules = f.server.host_modules("localhost").unwrap();
        let mut arg = UserAvailable {
            session: s.jid.clone(),
        };
        modules
            .hooks()
            .user_available
            .run(&f.server, &mut arg)
            .await;
        assert!(s.drain().is_empty());
        let bob = BareJid::parse("bob@localhost").unwrap();
        assert_eq!(f.server.stores().offline_count(&bob).await.unwrap(), 1);
    }

    /// Runs `user_send_packet` as the c2s task would for a stanza from `s`.
    async fn client_sends(f: &Fixture, s: &TestSession, xml: &str) -> HookResult {
        let el = msg(xml);
        let to = el
            .attr("to")
            .map_or_else(|| Jid::from(s.jid.to_bare()), |t| Jid::parse(t).unwrap());
        let stanza = Stanza::new(el, s.jid.clone().into(), to).unwrap();
        let modules = f.server.host_modules("localhost").unwrap();
        let mut arg = UserSendPacket {
            session: s.jid.clone(),
            stanza,
        };
        modules
            .hooks()
            .user_send_packet
            .run(&f.server, &mut arg)
            .await
    }

    #[tokio::test]
    async fn flexible_retrieval_keeps_messages_and_serves_xep_0013() {
        let f = Fixture::new().await;
        f.account("bob@localhost").await;
        for n in 1..=3 {
            send(
                &f,
                "alice@localhost/a",
                "bob@localhost",
                &format!("<body>m{n}</body>"),
                "chat",
            )
            .await;
        }
        let mut s = f.session("bob@localhost/pda").await;
        // §2.2: the node's info, with the count.
        let info = format!(
            "<iq xmlns='jabber:client' type='get' id='i1'><query xmlns='{}' node='{NS_OFFLINE}'/></iq>",
            ns::DISCO_INFO
        );
        assert_eq!(client_sends(&f, &s, &info).await, HookResult::Stop);
        let reply = s.next().unwrap();
        assert_eq!(reply.type_attr(), Some("result"));
        let query = reply.payload().unwrap();
        assert_eq!(query.attr("node"), Some(NS_OFFLINE));
        let identity = query.get_child("identity", ns::DISCO_INFO).unwrap();
        assert_eq!(identity.attr("type"), Some("message-list"));
        let form = query.get_child("x", ns::DATA_FORMS).unwrap();
        let number = form
            .children()
            .find(|c| c.attr("var") == Some("number_of_messages"))
            .unwrap();
        assert_eq!(
            number.get_child("value", ns::DATA_FORMS).unwrap().text(),
            "3"
        );
        // §2.3: headers.
        let items = format!(
            "<iq xmlns='jabber:client' type='get' id='i2'><query xmlns='{}' node='{NS_OFFLINE}'/></iq>",
            ns::DISCO_ITEMS
        );
        client_sends(&f, &s, &items).await;
        let reply = s.next().unwrap();
        let nodes: Vec<String> = reply
            .payload()
            .unwrap()
            .children()
            .map(|i| {
                assert_eq!(i.attr("jid"), Some("bob@localhost"));
                assert_eq!(i.attr("name"), Some("alice@localhost/a"));
                i.attr("node").unwrap().to_owned()
            })
            .collect();
        assert_eq!(nodes.len(), 3);
        // Other disco to the account is left to mod_disco.
        let plain = format!(
            "<iq xmlns='jabber:client' type='get' id='i3'><query xmlns='{}'/></iq>",
            ns::DISCO_INFO
        );
        assert_eq!(client_sends(&f, &s, &plain).await, HookResult::Continue);
        // Initial presence now delivers nothing: the client retrieves.
        come_online(&f, &s).await;
        assert!(s.drain().is_empty());
        // §2.4: view one.
        let view = format!(
            "<offline xmlns='{NS_OFFLINE}'><item action='view' node='{}'/></offline>",
            nodes[1]
        );
        let reply = s.iq("bob@localhost", "get", &view).await;
        assert_eq!(reply.type_attr(), Some("result"));
        let viewed = s.drain();
        assert_eq!(bodies(&viewed), ["m2"]);
        let tag = viewed[0]
            .element()
            .get_child("offline", NS_OFFLINE)
            .unwrap();
        assert_eq!(
            tag.get_child("item", NS_OFFLINE).unwrap().attr("node"),
            Some(nodes[1].as_str())
        );
        // §2.5: remove it; removing again is item-not-found.
        let remove = view.replace("view", "remove");
        let reply = s.iq("bob@localhost", "set", &remove).await;
        assert_eq!(reply.type_attr(), Some("result"));
        let reply = s.iq("bob@localhost", "set", &remove).await;
        assert_eq!(error_condition(&reply), Some(C::ItemNotFound));
        // §2.6: fetch the rest, in order, still stored afterwards.
        let fetch = format!("<offline xmlns='{NS_OFFLINE}'><fetch/></offline>");
        let reply = s.iq("bob@localhost", "get", &fetch).await;
        assert_eq!(reply.type_attr(), Some("result"));
        assert_eq!(bodies(&s.drain()), ["m1", "m3"]);
        let bob = BareJid::parse("bob@localhost").unwrap();
        assert_eq!(f.server.stores().offline_count(&bob).await.unwrap(), 2);
        // §2.7: purge.
        let purge = format!("<offline xmlns='{NS_OFFLINE}'><purge/></offline>");
        let reply = s.iq("bob@localhost", "set", &purge).await;
        assert_eq!(reply.type_attr(), Some("result"));
        assert_eq!(f.server.stores().offline_count(&bob).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn offline_iq_is_for_the_account_itself() {
        let f = Fixture::new().await;
        f.account("bob@localhost").await;
        let mut alice = f.session("alice@localhost/a").await;
        let fetch = format!("<offline xmlns='{NS_OFFLINE}'><fetch/></offline>");
        let reply = alice.iq("bob@localhost", "get", &fetch).await;
        assert_eq!(error_condition(&reply), Some(C::Forbidden));
    }

    #[tokio::test]
    async fn flexible_choice_ends_with_the_session() {
        let f = Fixture::new().await;
        f.account("bob@localhost").await;
        send(
            &f,
            "alice@localhost/a",
            "bob@localhost",
            "<body>x</body>",
            "chat",
        )
        .await;
        let mut s = f.session("bob@localhost/pda").await;
        let fetch = format!("<offline xmlns='{NS_OFFLINE}'><fetch/></offline>");
        s.iq("bob@localhost", "get", &fetch).await;
        s.drain();
        f.server.sm().unbind(&s.jid, s.id);
        let modules = f.server.host_modules("localhost").unwrap();
        let mut arg = SessionClosed {
            session: s.jid.clone(),
        };
        modules
            .hooks()
            .session_closed
            .run(&f.server, &mut arg)
            .await;
        // A new session on the same resource did not ask for XEP-0013: it gets the flood.
        let mut again = f.session("bob@localhost/pda").await;
        come_online(&f, &again).await;
        assert_eq!(bodies(&again.drain()), ["x"]);
    }

    #[tokio::test]
    async fn removing_the_account_deletes_its_messages() {
        let f = Fixture::new().await;
        let bob = f.account("bob@localhost").await;
        send(
            &f,
            "alice@localhost/a",
            "bob@localhost",
            "<body>x</body>",
            "chat",
        )
        .await;
        assert_eq!(f.server.stores().offline_count(&bob).await.unwrap(), 1);
        assert!(f.server.remove_user(&bob, "bye").await.unwrap());
        assert_eq!(f.server.stores().offline_count(&bob).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_backlog_larger_than_the_inbox_arrives_whole_and_in_order() {
        let f = Fixture::new().await;
        let bob = f.account("bob@localhost").await;
        let total = starling_core::sm::DEFAULT_INBOX + 5;
        for n in 0..total {
            let xml = format!(
                "<message xmlns='jabber:client' from='a@localhost/r' to='bob@localhost'>\
                 <body>{n}</body></message>"
            );
            let at = i64::try_from(n).unwrap();
            f.server
                .stores()
                .push_offline(&bob, "a@localhost/r", &xml, at, 10_000)
                .await
                .unwrap();
        }
        let mut s = f.session("bob@localhost/r").await;
        come_online(&f, &s).await;
        // The first part is queued at once; the rest follows as the session drains its inbox,
        // and the session is never closed for overflowing.
        let mut delivered = Vec::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while delivered.len() < total && tokio::time::Instant::now() < deadline {
            delivered.extend(bodies(&s.drain()));
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(
            s.channels.close.borrow().is_none(),
            "the session stays open"
        );
        let expected: Vec<String> = (0..total).map(|n| n.to_string()).collect();
        assert_eq!(delivered, expected);
        assert_eq!(f.server.stores().offline_count(&bob).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_flush_to_a_vanished_session_keeps_the_messages() {
        let f = Fixture::new().await;
        let bob = f.account("bob@localhost").await;
        let xml = "<message xmlns='jabber:client' from='a@localhost/r' to='bob@localhost'><body>x</body></message>";
        f.server
            .stores()
            .push_offline(&bob, "a@localhost/r", xml, 1, 10)
            .await
            .unwrap();
        let gone = FullJid::parse("bob@localhost/gone").unwrap();
        let state = OfflineState {
            host: "localhost".into(),
            max: 10,
            empty_body: EmptyBody::UnlessChatState,
            flexible: Mutex::default(),
        };
        state.flush(&f.server, &gone).await;
        assert_eq!(f.server.stores().offline_count(&bob).await.unwrap(), 1);
    }

    #[test]
    fn ejabberd_options_load_with_warnings_and_ours_are_checked() {
        let load = |opts: &str| {
            let yaml = format!("hosts: [localhost]\nmodules:\n  mod_offline: {opts}\n");
            starling_config::load_str(&yaml, "t.yml", &crate::specs())
        };
        let config = load("{access_max_user_messages: max_user_offline_messages}").unwrap();
        assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
        assert!(load("{max_user_offline_messages: infinity, store_empty_body: true}").is_ok());
        assert!(load("{max_user_offline_messages: -1}").is_err());
        assert!(load("{store_empty_body: sometimes}").is_err());
    }

    #[tokio::test]
    async fn host_advertises_msgoffline_and_xep_0013() {
        let f = Fixture::new().await;
        let modules = f.server.host_modules("localhost").unwrap();
        let features = modules.features(IqTarget::Host);
        assert!(features.contains(&FEATURE_MSGOFFLINE), "{features:?}");
        assert!(features.contains(&NS_OFFLINE), "{features:?}");
    }
}
