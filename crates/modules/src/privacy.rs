//! `mod_privacy`: XEP-0016 privacy lists, and the enforcement shared with `mod_blocking`.
//!
//! **Protocol** (`jabber:iq:privacy`, answered for the account itself; anyone else gets
//! `<forbidden/>`):
//! - §2.3 get: without a child, the list names with the session's `<active/>` and the
//!   account's `<default/>`; with one `<list name/>`, that list (`<item-not-found/>` if
//!   unknown). Several children are `<bad-request/>`.
//! - §2.4 `<active name/>` sets the session's active list (kept in memory per full JID,
//!   dropped when the session closes); `<active/>` declines it.
//! - §2.5 `<default name/>` sets the stored default list, `<default/>` declines it; either is
//!   `<conflict/>` while another resource of the account uses the current default (it has no
//!   active list).
//! - §2.6 `<list name>items</list>` creates or replaces a list and pushes `<list name/>` to
//!   every resource; `<list name/>` without items removes it, `<conflict/>` if it is the
//!   default list (as ejabberd answers) or another resource's active list.
//! - Items: `type` jid/group/subscription or none (fall-through), `value`, `action`,
//!   unique unsigned `order`, and the kinds message/iq/presence-in/presence-out; anything
//!   else is `<bad-request/>`. Limits (Starling options): `max_lists` per account and
//!   `max_list_items` per list, beyond which `<resource-constraint/>`.
//!
//! **Enforcement** (§2.1 business rules, §2.13; XEP-0191 §3.3 for blocklist items):
//! - `sm_receive_packet` (once per stanza for the account): the default list, unless some
//!   resource of the account has an active list, in which case the check moves to
//!   `user_receive_packet` for every resource (its active list, else the default). A denied
//!   message or IQ get/set is bounced with `<service-unavailable/>`, anything else dropped.
//! - `user_send_packet`: the session's active list, else the default list, with the
//!   outgoing kinds (`presence-out` for directed presence, only "all" items for the rest).
//!   A denied stanza is answered `<not-acceptable/>`, with XEP-0191's
//!   `<blocked xmlns='urn:xmpp:blocking:errors'/>` when a blocklist item of the default list
//!   denied it. The error goes straight to the sending session: routed, it would be checked
//!   against the very list that blocks its sender.
//! - Presence broadcasts do not pass `user_send_packet`, so outgoing presence notifications
//!   between two local accounts are checked again on the recipient's `sm_receive_packet`
//!   against the *sender's* lists (this is what hides a user from a contact it blocked).
//!   Broadcasts to remote contacts are not filtered (see the report to the lead).
//! - Stanzas between the account and itself or its own server are never checked, so a
//!   "deny all" fall-through item cannot cut a client off from its server.
//!
//! Lists are read from the store for each check (no cache yet), so edits, blocking and
//! other cluster nodes' changes apply to the next stanza.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use starling_config::{ModuleOptions, ModuleSpec, OptionKind, OptionSpec};
use starling_core::BoxFuture;
use starling_core::Server;
use starling_core::hooks::{
    Hook, HookResult, RemoveUser, SessionClosed, SmReceivePacket, UserReceivePacket, UserSendPacket,
};
use starling_core::module::{
    HostContext, IqHandler, IqResult, IqTarget, Module, ModuleError, Registrations,
};
use starling_core::router::bounce;
use starling_storage::{
    PrivacyAction, PrivacyItem, PrivacyList, PrivacyMatch, PrivacyStanzas, RosterItem,
    StorageError, Subscription,
};
use starling_xmpp::Element;
use starling_xmpp::error::{StanzaError, StanzaErrorCondition};
use starling_xmpp::jid::{BareJid, FullJid, Jid};
use starling_xmpp::ns;
use starling_xmpp::stanza::{IqType, Kind, PresenceType, Stanza, element};

use crate::iq;

/// The XEP-0016 namespace.
pub const NS_PRIVACY: &str = "jabber:iq:privacy";
/// XEP-0191's application error for stanzas to a blocked entity.
pub const NS_BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";
/// Default for `max_lists`.
pub const DEFAULT_MAX_LISTS: u32 = 50;
/// Default for `max_list_items` (also bounds the XEP-0191 blocklist).
pub const DEFAULT_MAX_LIST_ITEMS: u32 = 250;
/// Priority of the enforcement hooks: before archiving, carbons and offline storage, so a
/// blocked stanza is neither stored nor copied.
const PRIORITY: i32 = 10;

const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "max_lists",
        kind: OptionKind::Int {
            min: 1,
            max: 10_000,
        },
        doc: "Most privacy lists one account may have (Starling option, default 50).",
    },
    OptionSpec {
        name: "max_list_items",
        kind: OptionKind::Int {
            min: 1,
            max: 100_000,
        },
        doc: "Most items in one privacy list, the blocklist included (Starling option, \
              default 250).",
    },
    OptionSpec {
        name: "db_type",
        kind: OptionKind::Unsupported,
        doc: "ejabberd's backend choice; Starling uses the server's database.",
    },
    OptionSpec {
        name: "use_cache",
        kind: OptionKind::Unsupported,
        doc: "ejabberd's cache option; Starling reads lists from the database.",
    },
    OptionSpec {
        name: "cache_size",
        kind: OptionKind::Unsupported,
        doc: "ejabberd's cache option; Starling reads lists from the database.",
    },
    OptionSpec {
        name: "cache_missed",
        kind: OptionKind::Unsupported,
        doc: "ejabberd's cache option; Starling reads lists from the database.",
    },
    OptionSpec {
        name: "cache_life_time",
        kind: OptionKind::Unsupported,
        doc: "ejabberd's cache option; Starling reads lists from the database.",
    },
];

/// `mod_privacy`.
pub struct Privacy;

impl Module for Privacy {
    fn spec(&self) -> ModuleSpec {
        ModuleSpec {
            name: "mod_privacy",
            aliases: &["privacy"],
            options: OPTIONS,
        }
    }

    fn start(
        &self,
        _host: &HostContext<'_>,
        _options: &ModuleOptions,
    ) -> Result<Registrations, ModuleError> {
        // Limits are read from the live config at each request (`limits`), so that
        // mod_blocking, which edits the same lists, applies the same ones.
        let active = Arc::new(ActiveLists::default());
        let registrations = Registrations::default()
            .iq(
                NS_PRIVACY,
                IqTarget::Account,
                Arc::new(PrivacyHandler {
                    active: active.clone(),
                }),
            )
            // Clients look for the feature on their server, as ejabberd advertises it.
            .feature(NS_PRIVACY, IqTarget::Host);
        Ok(Enforcement::new(active, false).register(registrations))
    }
}

/// The list limits of `host`, from mod_privacy's options in the current config (defaults
/// when mod_privacy is not configured there).
pub(crate) fn limits(server: &Server, host: &str) -> (u32, u32) {
    let config = server.config();
    let modules = config.host_modules.get(host).unwrap_or(&config.modules);
    let options = modules
        .iter()
        .find(|m| m.name == "mod_privacy")
        .map(|m| &m.options);
    let get = |key: &str, default: u32| {
        options
            .and_then(|o| o.int(key))
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(default)
    };
    (
        get("max_lists", DEFAULT_MAX_LISTS),
        get("max_list_items", DEFAULT_MAX_LIST_ITEMS),
    )
}

// --- active lists (per session, in memory) ---

/// The active list of each session that set one (XEP-0016 §2.4), grouped by account.
#[derive(Default)]
pub(crate) struct ActiveLists(Mutex<HashMap<BareJid, HashMap<FullJid, String>>>);

impl ActiveLists {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<BareJid, HashMap<FullJid, String>>) -> T) -> T {
        // A panic elsewhere while holding the lock leaves a map that is still consistent.
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The session's active list.
    pub(crate) fn get(&self, session: &FullJid) -> Option<String> {
        self.with(|m| m.get(&session.to_bare())?.get(session).cloned())
    }

    /// Sets (`Some`) or declines (`None`) the session's active list.
    pub(crate) fn set(&self, session: &FullJid, name: Option<String>) {
        let user = session.to_bare();
        self.with(|m| match name {
            Some(name) => {
                m.entry(user).or_default().insert(session.clone(), name);
            }
            None => {
                if let Some(sessions) = m.get_mut(&user) {
                    sessions.remove(session);
                    if sessions.is_empty() {
                        m.remove(&user);
                    }
                }
            }
        });
    }

    /// True if some session of `user` has an active list.
    pub(crate) fn any_for(&self, user: &BareJid) -> bool {
        self.with(|m| m.contains_key(user))
    }

    /// True if a session of `user` other than `except` has `name` active.
    fn used_by_other(&self, user: &BareJid, except: &FullJid, name: &str) -> bool {
        self.with(|m| {
            m.get(user)
                .is_some_and(|s| s.iter().any(|(jid, n)| jid != except && n == name))
        })
    }

    /// Forgets every session of `user`.
    fn clear_user(&self, user: &BareJid) {
        self.with(|m| m.remove(user));
    }
}

// --- matching (XEP-0016 §2.1, §2.2) ---

/// Which way a stanza goes relative to the list's owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// To the owner.
    In,
    /// From the owner.
    Out,
}

/// The XEP-0016 kind a stanza falls under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// An incoming message.
    Message,
    /// An incoming IQ.
    Iq,
    /// An incoming presence notification (available or unavailable).
    PresenceIn,
    /// An outgoing presence notification.
    PresenceOut,
    /// Anything else (outgoing messages and IQs, subscriptions, probes): only items without
    /// kinds apply.
    Other,
}

/// Classifies `stanza` going `direction`.
pub(crate) fn classify(stanza: &Stanza, direction: Direction) -> Class {
    match (stanza.kind(), direction) {
        (Kind::Message, Direction::In) => Class::Message,
        (Kind::Iq, Direction::In) => Class::Iq,
        (Kind::Presence, _) => match PresenceType::parse(stanza.type_attr()) {
            Some(PresenceType::Available | PresenceType::Unavailable) => match direction {
                Direction::In => Class::PresenceIn,
                Direction::Out => Class::PresenceOut,
            },
            _ => Class::Other,
        },
        _ => Class::Other,
    }
}

fn applies(stanzas: PrivacyStanzas, class: Class) -> bool {
    stanzas.is_all()
        || match class {
            Class::Message => stanzas.message,
            Class::Iq => stanzas.iq,
            Class::PresenceIn => stanzas.presence_in,
            Class::PresenceOut => stanzas.presence_out,
            Class::Other => false,
        }
}

/// §2.1: `user@domain/resource` matches only itself, `user@domain` any of its resources,
/// `domain/resource` that resource of any user of the domain, `domain` anyone there.
pub(crate) fn jid_matches(pattern: &Jid, contact: &Jid) -> bool {
    pattern.domain() == contact.domain()
        && pattern.node().is_none_or(|n| contact.node() == Some(n))
        && pattern
            .resource()
            .is_none_or(|r| contact.resource() == Some(r))
}

/// The first item of `items` (sorted by order) that applies to `class` and matches
/// `contact`; the roster item of `contact` is read only if a group or subscription item is
/// reached.
pub(crate) async fn first_match<'l>(
    server: &Server,
    user: &BareJid,
    items: &'l [PrivacyItem],
    contact: &Jid,
    class: Class,
) -> Option<&'l PrivacyItem> {
    let mut roster: Option<Option<RosterItem>> = None;
    for item in items.iter().filter(|i| applies(i.stanzas, class)) {
        let matched = match &item.matcher {
            PrivacyMatch::Always => true,
            PrivacyMatch::Jid(value) => {
                Jid::parse(value).is_ok_and(|pattern| jid_matches(&pattern, contact))
            }
            PrivacyMatch::Group(group) => roster_item(server, user, contact, &mut roster)
                .await
                .is_some_and(|r| r.groups.iter().any(|g| g == group)),
            PrivacyMatch::Subscription(sub) => {
                // §2.1: `none` also covers entities that are not in the roster.
                let current = roster_item(server, user, contact, &mut roster)
                    .await
                    .map_or(Subscription::None, |r| r.subscription);
                current == *sub
            }
        };
        if matched {
            return Some(item);
        }
    }
    None
}

async fn roster_item<'r>(
    server: &Server,
    user: &BareJid,
    contact: &Jid,
    cache: &'r mut Option<Option<RosterItem>>,
) -> Option<&'r RosterItem> {
    if cache.is_none() {
        let item = match server.stores().item(user, &contact.to_bare()).await {
            Ok(item) => item,
            Err(e) => {
                tracing::error!(%user, error = %e, "cannot load roster item for privacy check");
                None
            }
        };
        *cache = Some(item);
    }
    cache.as_ref().and_then(Option::as_ref)
}

/// True for stanzas between an account and itself or its own server, which no list blocks.
fn exempt(user: &BareJid, other: &Jid) -> bool {
    match other.node() {
        Some(_) => other.to_bare() == *user,
        None => other.domain() == user.domain(),
    }
}

/// Logs a storage failure of a check; the stanza then goes through (failing open keeps the
/// service up while the database is away).
fn check_failed<T>(user: &BareJid, e: &StorageError) -> Option<T> {
    tracing::error!(%user, error = %e, "cannot load privacy list");
    None
}

/// The session's active list if it has one, else the account's default list.
async fn list_for(
    server: &Server,
    active: &ActiveLists,
    session: Option<&FullJid>,
    user: &BareJid,
) -> Option<(PrivacyList, bool)> {
    if let Some(name) = session.and_then(|s| active.get(s)) {
        return match server.stores().privacy_list(user, &name).await {
            Ok(items) => items.map(|items| (PrivacyList { name, items }, false)),
            Err(e) => check_failed(user, &e),
        };
    }
    default_list(server, user).await.map(|l| (l, true))
}

async fn default_list(server: &Server, user: &BareJid) -> Option<PrivacyList> {
    match server.stores().default_privacy_list(user).await {
        Ok(list) => list,
        Err(e) => check_failed(user, &e),
    }
}

/// §2.13 / XEP-0191 §3.3: what a denied incoming stanza gets.
async fn refuse_incoming(server: &Server, stanza: &Stanza) {
    let answer = match stanza.kind() {
        Kind::Message => !stanza.is_error(),
        Kind::Iq => IqType::parse(stanza.type_attr()).is_some_and(IqType::is_request),
        Kind::Presence => false,
    };
    if answer {
        bounce(server, stanza, StanzaErrorCondition::ServiceUnavailable).await;
    }
}

// --- enforcement hooks ---

/// The hooks that apply privacy lists (and so the blocklist) to routed stanzas.
pub(crate) struct Enforcement {
    active: Arc<ActiveLists>,
    /// Registered by mod_blocking: stands aside on hosts where mod_privacy runs, which
    /// registers the same checks with the active lists it manages.
    standalone: bool,
}

impl Enforcement {
    /// Enforcement over `active`; `standalone` for mod_blocking's copy.
    pub(crate) fn new(active: Arc<ActiveLists>, standalone: bool) -> Arc<Self> {
        Arc::new(Self { active, standalone })
    }

    /// Adds the hooks to `registrations`.
    pub(crate) fn register(self: Arc<Self>, mut registrations: Registrations) -> Registrations {
        let hooks = &mut registrations.hooks;
        hooks.sm_receive_packet.add(PRIORITY, self.clone());
        hooks.user_receive_packet.add(PRIORITY, self.clone());
        hooks.user_send_packet.add(PRIORITY, self.clone());
        hooks.session_closed.add(50, self.clone());
        hooks.remove_user.add(50, self);
        registrations
    }

    fn stands_aside(&self, server: &Server, host: &str) -> bool {
        self.standalone
            && server
                .host_modules(host)
                .is_some_and(|m| m.has("mod_privacy"))
    }

    async fn sm_receive(&self, server: &Server, user: &BareJid, stanza: &Stanza) -> HookResult {
        let from = stanza.from();
        if exempt(user, from) {
            return HookResult::Continue;
        }
        // Presence broadcasts skip user_send_packet: check a local sender's own lists here.
        if classify(stanza, Direction::Out) == Class::PresenceOut
            && from.node().is_some()
            && server.is_local(from.domain())
        {
            let sender = from.to_bare();
            let session = from.clone().into_full().ok();
            if let Some((list, _)) = list_for(server, &self.active, session.as_ref(), &sender).await
                && first_match(
                    server,
                    &sender,
                    &list.items,
                    stanza.to(),
                    Class::PresenceOut,
                )
                .await
                .is_some_and(|i| i.action == PrivacyAction::Deny)
            {
                return HookResult::Stop;
            }
        }
        if self.active.any_for(user) {
            // Some resource has its own list: each resource is checked at delivery.
            return HookResult::Continue;
        }
        let Some(list) = default_list(server, user).await else {
            return HookResult::Continue;
        };
        let class = classify(stanza, Direction::In);
        match first_match(server, user, &list.items, from, class).await {
            Some(item) if item.action == PrivacyAction::Deny => {
                refuse_incoming(server, stanza).await;
                HookResult::Stop
            }
            _ => HookResult::Continue,
        }
    }

    async fn user_receive(
        &self,
        server: &Server,
        session: &FullJid,
        stanza: &Stanza,
    ) -> HookResult {
        let user = session.to_bare();
        // Errors are not checked here: the errors this module sends itself reach the
        // session directly and must not be dropped by the list that caused them.
        if stanza.is_error() || exempt(&user, stanza.from()) || !self.active.any_for(&user) {
            return HookResult::Continue;
        }
        let Some((list, _)) = list_for(server, &self.active, Some(session), &user).await else {
            return HookResult::Continue;
        };
        let class = classify(stanza, Direction::In);
        match first_match(server, &user, &list.items, stanza.from(), class).await {
            Some(item) if item.action == PrivacyAction::Deny => {
                refuse_incoming(server, stanza).await;
                HookResult::Stop
            }
            _ => HookResult::Continue,
        }
    }

    async fn user_send(&self, server: &Server, session: &FullJid, stanza: &Stanza) -> HookResult {
        let user = session.to_bare();
        let to = stanza.to();
        if exempt(&user, to) {
            return HookResult::Continue;
        }
        let Some((list, is_default)) = list_for(server, &self.active, Some(session), &user).await
        else {
            return HookResult::Continue;
        };
        let class = classify(stanza, Direction::Out);
        let Some(item) = first_match(server, &user, &list.items, to, class).await else {
            return HookResult::Continue;
        };
        if item.action == PrivacyAction::Allow {
            return HookResult::Continue;
        }
        let blocked = is_default && item.is_block();
        let error = StanzaError::new(StanzaErrorCondition::NotAcceptable).with_text(if blocked {
            "You have blocked this JID"
        } else {
            "Your active privacy list has denied the routing of this stanza"
        });
        if let Some(reply) = stanza.error_reply(&error)
            && let Some(target) = server.sm().get(session)
        {
            let reply = if blocked {
                with_blocked_condition(&reply).unwrap_or(reply)
            } else {
                reply
            };
            target.deliver(Arc::new(reply));
        }
        HookResult::Stop
    }
}

/// Adds XEP-0191's `<blocked xmlns='urn:xmpp:blocking:errors'/>` to an error reply.
fn with_blocked_condition(reply: &Stanza) -> Option<Stanza> {
    let mut el = reply.element().clone();
    let ns = el.ns();
    el.get_child_mut("error", ns.as_str())?
        .append_child(element("blocked", NS_BLOCKING_ERRORS, &[]));
    Stanza::new(el, reply.from().clone(), reply.to().clone()).ok()
}

impl Hook<SmReceivePacket> for Enforcement {
    fn call<'a>(
        &'a self,
        server: &'a Server,
        arg: &'a mut SmReceivePacket,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            if self.stands_aside(server, arg.user.domain()) {
                return HookResult::Continue;
            }
            self.sm_receive(server, &arg.user, &arg.stanza).await
        })
    }
}

impl Hook<UserReceivePacket> for Enforcement {
    fn call<'a>(
        &'a self,
        server: &'a Server,
        arg: &'a mut UserReceivePacket,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            if self.stands_aside(server, arg.session.domain()) {
                return HookResult::Continue;
            }
            self.user_receive(server, &arg.session, &arg.stanza).await
        })
    }
}

impl Hook<UserSendPacket> for Enforcement {
    fn call<'a>(
        &'a self,
        server: &'a Server,
        arg: &'a mut UserSendPacket,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            if self.stands_aside(server, arg.session.domain()) {
                return HookResult::Continue;
            }
            self.user_send(server, &arg.session, &arg.stanza).await
        })
    }
}

impl Hook<SessionClosed> for Enforcement {
    fn call<'a>(
        &'a self,
        _server: &'a Server,
        arg: &'a mut SessionClosed,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            self.active.set(&arg.session, None);
            HookResult::Continue
        })
    }
}

impl Hook<RemoveUser> for Enforcement {
    fn call<'a>(
        &'a self,
        server: &'a Server,
        arg: &'a mut RemoveUser,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            if self.stands_aside(server, arg.user.domain()) {
                return HookResult::Continue;
            }
            self.active.clear_user(&arg.user);
            if let Err(e) = server.stores().remove_privacy(&arg.user).await {
                tracing::error!(user = %arg.user, error = %e, "cannot remove privacy lists");
            }
            HookResult::Continue
        })
    }
}

// --- the jabber:iq:privacy protocol ---

struct PrivacyHandler {
    active: Arc<ActiveLists>,
}

impl IqHandler for PrivacyHandler {
    fn handle<'a>(&'a self, server: &'a Server, iq: &'a Stanza) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            let (kind, query) = iq::request(iq)?;
            if !query.is("query", NS_PRIVACY) {
                return Err(iq::error(StanzaErrorCondition::BadRequest));
            }
            let user = iq::account(iq)?;
            if !iq::from_account_itself(iq) {
                return Err(iq::error(StanzaErrorCondition::Forbidden));
            }
            // Active lists belong to a session, so requests come from a bound resource.
            let session = iq
                .from()
                .clone()
                .into_full()
                .map_err(|_| iq::error(StanzaErrorCondition::BadRequest))?;
            let mut children = query.children();
            let (first, second) = (children.next(), children.next());
            let request = Request {
                server,
                user: &user,
                session: &session,
                active: &self.active,
            };
            match (kind, first, second) {
                (IqType::Get, None, _) => request.names().await,
                (IqType::Get, Some(list), None) if list.is("list", NS_PRIVACY) => {
                    request.list(list_name(list)?).await
                }
                (IqType::Set, Some(el), None) if el.has_ns(NS_PRIVACY) => match el.name() {
                    "active" => request.set_active(el.attr("name")).await,
                    "default" => request.set_default(el.attr("name")).await,
                    "list" => request.edit(list_name(el)?, el).await,
                    _ => Err(iq::error(StanzaErrorCondition::BadRequest)),
                },
                // §2.3, §2.5: one list per get, one change per set.
                _ => Err(iq::error(StanzaErrorCondition::BadRequest)),
            }
        })
    }
}

fn list_name(el: &Element) -> Result<&str, StanzaError> {
    el.attr("name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| iq::error(StanzaErrorCondition::BadRequest).with_text("a list has a name"))
}

/// One privacy request of one session.
struct Request<'a> {
    server: &'a Server,
    user: &'a BareJid,
    session: &'a FullJid,
    active: &'a ActiveLists,
}

impl Request<'_> {
    /// §2.3: the list names, the session's active list and the default list.
    async fn names(&self) -> IqResult {
        let lists = self
            .server
            .stores()
            .privacy_lists(self.user)
            .await
            .map_err(|e| iq::storage_failure("cannot load privacy lists", self.user, &e))?;
        let mut query = element("query", NS_PRIVACY, &[]);
        if let Some(name) = self.active.get(self.session) {
            query.append_child(element("active", NS_PRIVACY, &[("name", &name)]));
        }
        if let Some(name) = &lists.default {
            query.append_child(element("default", NS_PRIVACY, &[("name", name)]));
        }
        for name in &lists.names {
            query.append_child(element("list", NS_PRIVACY, &[("name", name)]));
        }
        Ok(Some(query))
    }

    /// §2.3: one list with its items.
    async fn list(&self, name: &str) -> IqResult {
        let items = self
            .server
            .stores()
            .privacy_list(self.user, name)
            .await
            .map_err(|e| iq::storage_failure("cannot load privacy list", self.user, &e))?
            .ok_or_else(|| iq::error(StanzaErrorCondition::ItemNotFound))?;
        let mut list = element("list", NS_PRIVACY, &[("name", name)]);
        for item in &items {
            list.append_child(item_element(item));
        }
        let mut query = element("query", NS_PRIVACY, &[]);
        query.append_child(list);
        Ok(Some(query))
    }

    /// §2.4: set or decline the session's active list.
    async fn set_active(&self, name: Option<&str>) -> IqResult {
        let Some(name) = name else {
            self.active.set(self.session, None);
            return Ok(None);
        };
        let exists = self
            .server
            .stores()
            .privacy_list(self.user, name)
            .await
            .map_err(|e| iq::storage_failure("cannot load privacy list", self.user, &e))?
            .is_some();
        if !exists {
            return Err(iq::error(StanzaErrorCondition::ItemNotFound));
        }
        self.active.set(self.session, Some(name.to_owned()));
        Ok(None)
    }

    /// §2.5: set or decline the default list.
    async fn set_default(&self, name: Option<&str>) -> IqResult {
        let stores = self.server.stores();
        let lists = stores
            .privacy_lists(self.user)
            .await
            .map_err(|e| iq::storage_failure("cannot load privacy lists", self.user, &e))?;
        if let Some(current) = &lists.default
            && name != Some(current.as_str())
            && self.default_used_by_other()
        {
            return Err(iq::error(StanzaErrorCondition::Conflict)
                .with_text("another resource uses the default list"));
        }
        match stores.set_default_privacy_list(self.user, name).await {
            Ok(()) => Ok(None),
            Err(StorageError::NotFound) => Err(iq::error(StanzaErrorCondition::ItemNotFound)),
            Err(e) => Err(iq::storage_failure(
                "cannot set default list",
                self.user,
                &e,
            )),
        }
    }

    /// True if another bound resource of the account has no active list, so the default
    /// list applies to it.
    fn default_used_by_other(&self) -> bool {
        self.server
            .sm()
            .sessions_of(self.user)
            .iter()
            .any(|s| s.jid != *self.session && self.active.get(&s.jid).is_none())
    }

    /// §2.6: create, replace or remove a list, then push its name to every resource.
    async fn edit(&self, name: &str, list: &Element) -> IqResult {
        let stores = self.server.stores();
        let elements: Vec<&Element> = list
            .children()
            .filter(|c| c.is("item", NS_PRIVACY))
            .collect();
        if elements.is_empty() {
            let lists = stores
                .privacy_lists(self.user)
                .await
                .map_err(|e| iq::storage_failure("cannot load privacy lists", self.user, &e))?;
            if lists.default.as_deref() == Some(name) {
                return Err(iq::error(StanzaErrorCondition::Conflict)
                    .with_text("cannot remove the default list"));
            }
            if self.active.used_by_other(self.user, self.session, name) {
                return Err(iq::error(StanzaErrorCondition::Conflict)
                    .with_text("the list is active for another resource"));
            }
            let removed = stores
                .remove_privacy_list(self.user, name)
                .await
                .map_err(|e| iq::storage_failure("cannot remove privacy list", self.user, &e))?;
            if !removed {
                return Err(iq::error(StanzaErrorCondition::ItemNotFound));
            }
            if self.active.get(self.session).as_deref() == Some(name) {
                self.active.set(self.session, None);
            }
        } else {
            let (max_lists, max_items) = limits(self.server, self.user.domain());
            if elements.len() > max_items as usize {
                return Err(iq::error(StanzaErrorCondition::ResourceConstraint)
                    .with_text(format!("a list holds at most {max_items} items")));
            }
            let items = elements
                .into_iter()
                .map(parse_item)
                .collect::<Result<Vec<_>, _>>()?;
            let mut orders: Vec<u32> = items.iter().map(|i| i.order).collect();
            orders.sort_unstable();
            if orders.windows(2).any(|w| w.first() == w.get(1)) {
                return Err(iq::error(StanzaErrorCondition::BadRequest)
                    .with_text("item orders must be unique"));
            }
            match stores
                .put_privacy_list(self.user, name, &items, max_lists)
                .await
            {
                Ok(()) => {}
                Err(StorageError::QuotaExceeded) => {
                    return Err(iq::error(StanzaErrorCondition::ResourceConstraint)
                        .with_text(format!("at most {max_lists} lists")));
                }
                Err(e) => {
                    return Err(iq::storage_failure(
                        "cannot store privacy list",
                        self.user,
                        &e,
                    ));
                }
            }
        }
        push_list(self.server, self.user, name);
        Ok(None)
    }
}

/// §2.6: tells every resource of `user` that list `name` changed.
pub(crate) fn push_list(server: &Server, user: &BareJid, name: &str) {
    for session in server.sm().sessions_of(user) {
        let mut query = element("query", NS_PRIVACY, &[]);
        query.append_child(element("list", NS_PRIVACY, &[("name", name)]));
        let mut iq = element("iq", ns::CLIENT, &[("type", "set"), ("id", &push_id())]);
        iq.append_child(query);
        if let Ok(push) = Stanza::new(iq, user.clone().into(), session.jid.clone().into()) {
            session.deliver(Arc::new(push));
        }
    }
}

/// A fresh id for a server-initiated push.
pub(crate) fn push_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    format!(
        "push-{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// `<item [type value] action order>kinds</item>`.
pub(crate) fn item_element(item: &PrivacyItem) -> Element {
    let order = item.order.to_string();
    let mut attrs: Vec<(&str, &str)> = Vec::with_capacity(4);
    if let (Some(t), Some(v)) = (item.matcher.type_name(), item.matcher.value()) {
        attrs.push(("type", t));
        attrs.push(("value", v));
    }
    attrs.push(("action", item.action.as_str()));
    attrs.push(("order", &order));
    let mut el = element("item", NS_PRIVACY, &attrs);
    let s = item.stanzas;
    for (on, name) in [
        (s.message, "message"),
        (s.iq, "iq"),
        (s.presence_in, "presence-in"),
        (s.presence_out, "presence-out"),
    ] {
        if on {
            el.append_child(element(name, NS_PRIVACY, &[]));
        }
    }
    el
}

/// Parses one `<item/>` (§2.1); anything malformed is `<bad-request/>`.
pub(crate) fn parse_item(el: &Element) -> Result<PrivacyItem, StanzaError> {
    let bad = |what: &str| iq::error(StanzaErrorCondition::BadRequest).with_text(what.to_owned());
    let action = el
        .attr("action")
        .and_then(PrivacyAction::parse)
        .ok_or_else(|| bad("action is 'allow' or 'deny'"))?;
    let order = el
        .attr("order")
        .filter(|o| o.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|o| o.parse::<u32>().ok())
        .ok_or_else(|| bad("order is an unsigned integer"))?;
    let matcher = match (el.attr("type"), el.attr("value")) {
        (None, None) => PrivacyMatch::Always,
        (Some("jid"), Some(v)) => {
            let jid = Jid::parse(v).map_err(|_| bad("malformed jid value"))?;
            PrivacyMatch::Jid(jid.as_str().to_owned())
        }
        (Some("group"), Some(v)) if !v.is_empty() => PrivacyMatch::Group(v.to_owned()),
        (Some("subscription"), Some(v)) => match Subscription::parse(v) {
            Some(s) if s != Subscription::Remove => PrivacyMatch::Subscription(s),
            _ => return Err(bad("subscription is none, to, from or both")),
        },
        _ => return Err(bad("type is jid, group or subscription, with a value")),
    };
    let mut stanzas = PrivacyStanzas::ALL;
    for child in el.children().filter(|c| c.has_ns(NS_PRIVACY)) {
        match child.name() {
            "message" => stanzas.message = true,
            "iq" => stanzas.iq = true,
            "presence-in" => stanzas.presence_in = true,
            "presence-out" => stanzas.presence_out = true,
            _ => return Err(bad("unknown stanza kind")),
        }
    }
    Ok(PrivacyItem {
        matcher,
        action,
        order,
        stanzas,
    })
}

#[cfg(test)]
mod tests {
    use starling_xmpp::error::StanzaErrorCondition as C;

    use super::*;
    use crate::fixture::{Fixture, TestSession, error_condition};

    fn jid(s: &str) -> Jid {
        Jid::parse(s).unwrap()
    }

    fn query(inner: &str) -> String {
        format!("<query xmlns='jabber:iq:privacy'>{inner}</query>")
    }

    async fn set(s: &mut TestSession, inner: &str) -> Stanza {
        s.iq("alice@localhost", "set", &query(inner)).await
    }

    fn message(from: &str, to: &str) -> Stanza {
        let el = element("message", ns::CLIENT, &[("type", "chat"), ("id", "m1")]);
        Stanza::new(el, jid(from), jid(to)).unwrap()
    }

    fn presence(from: &str, to: &str) -> Stanza {
        Stanza::new(element("presence", ns::CLIENT, &[]), jid(from), jid(to)).unwrap()
    }

    #[test]
    fn jid_patterns_follow_section_2_1() {
        let cases = [
            ("a@x/r", "a@x/r", true),
            ("a@x/r", "a@x/s", false),
            ("a@x", "a@x/any", true),
            ("a@x", "b@x/any", false),
            ("x/r", "b@x/r", true),
            ("x/r", "b@x/s", false),
            ("x", "b@x/s", true),
            ("x", "x", true),
            ("x", "b@y", false),
        ];
        for (pattern, contact, expected) in cases {
            assert_eq!(
                jid_matches(&jid(pattern), &jid(contact)),
                expected,
                "{pattern} vs {contact}"
            );
        }
    }

    #[test]
    fn items_parse_and_serialise_back() {
        let xml = "<item xmlns='jabber:iq:privacy' type='subscription' value='from' \
                   action='deny' order='7'><presence-in/><iq/></item>";
        let el: Element = xml.parse().unwrap();
        let item = parse_item(&el).unwrap();
        assert_eq!(item.matcher, PrivacyMatch::Subscription(Subscription::From));
        assert!(item.stanzas.presence_in && item.stanzas.iq && !item.stanzas.message);
        assert_eq!(parse_item(&item_element(&item)).unwrap(), item);
        for bad in [
            "<item xmlns='jabber:iq:privacy' action='deny'/>",
            "<item xmlns='jabber:iq:privacy' action='block' order='1'/>",
            "<item xmlns='jabber:iq:privacy' action='deny' order='-1'/>",
            "<item xmlns='jabber:iq:privacy' action='deny' order='1' type='jid'/>",
            "<item xmlns='jabber:iq:privacy' action='deny' order='1' value='a@b'/>",
            "<item xmlns='jabber:iq:privacy' action='deny' order='1' type='jid' value='a@b@c'/>",
            "<item xmlns='jabber:iq:privacy' action='deny' order='1' type='subscription' \
             value='remove'/>",
            "<item xmlns='jabber:iq:privacy' action='deny' order='1'><presence/></item>",
        ] {
            let el: Element = bad.parse().unwrap();
            assert_eq!(
                parse_item(&el).err().map(|e| e.condition),
                Some(C::BadRequest),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn manage_lists_active_and_default() {
        let f = Fixture::new().await;
        let alice = f.account("alice@localhost").await;
        let mut a = f.session("alice@localhost/a").await;
        let mut b = f.session("alice@localhost/b").await;
        let list = "<list name='work'><item type='jid' value='Boss@Example.com' action='deny' \
                    order='2'><message/></item><item action='allow' order='1'/></list>";
        let reply = set(&mut a, list).await;
        assert_eq!(reply.type_attr(), Some("result"));
        // §2.6: every resource hears about the change.
        for s in [&mut a, &mut b] {
            let push = s.next().expect("push");
            assert_eq!(push.type_attr(), Some("set"));
            let l = push
                .payload()
                .unwrap()
                .get_child("list", NS_PRIVACY)
                .unwrap();
            assert_eq!(l.attr("name"), Some("work"));
        }
        let reply = a
            .iq("alice@localhost", "get", &query("<list name='work'/>"))
            .await;
        let l = reply
            .payload()
            .unwrap()
            .get_child("list", NS_PRIVACY)
            .unwrap();
        let orders: Vec<&str> = l.children().filter_map(|i| i.attr("order")).collect();
        assert_eq!(orders, ["1", "2"], "items come back sorted");
        let boss = l.children().nth(1).unwrap();
        assert_eq!(boss.attr("value"), Some("boss@example.com"), "normalised");
        // Unknown list, several lists at once.
        let reply = a
            .iq("alice@localhost", "get", &query("<list name='nope'/>"))
            .await;
        assert_eq!(error_condition(&reply), Some(C::ItemNotFound));
        let reply = a
            .iq(
                "alice@localhost",
                "get",
                &query("<list name='a'/><list name='b'/>"),
            )
            .await;
        assert_eq!(error_condition(&reply), Some(C::BadRequest));
        // Active and default.
        assert_eq!(
            error_condition(&set(&mut a, "<active name='nope'/>").await),
            Some(C::ItemNotFound)
        );
        assert_eq!(
            set(&mut a, "<active name='work'/>").await.type_attr(),
            Some("result")
        );
        assert_eq!(
            set(&mut a, "<default name='work'/>").await.type_attr(),
            Some("result")
        );
        let names = a.iq("alice@localhost", "get", &query("")).await;
        let q = names.payload().unwrap();
        assert_eq!(
            q.get_child("active", NS_PRIVACY)
                .and_then(|e| e.attr("name")),
            Some("work")
        );
        assert_eq!(
            q.get_child("default", NS_PRIVACY)
                .and_then(|e| e.attr("name")),
            Some("work")
        );
        // b has no active list: it sees none, and it uses the default, so a cannot
        // decline it (§2.5) nor remove it (ejabberd: never the default).
        let names = b.iq("alice@localhost", "get", &query("")).await;
        assert!(
            names
                .payload()
                .unwrap()
                .get_child("active", NS_PRIVACY)
                .is_none()
        );
        assert_eq!(
            error_condition(&set(&mut a, "<default/>").await),
            Some(C::Conflict)
        );
        assert_eq!(
            error_condition(&set(&mut a, "<list name='work'/>").await),
            Some(C::Conflict)
        );
        // Once b has its own active list, the default can go.
        let other = "<list name='other'><item action='allow' order='1'/></list>";
        assert_eq!(set(&mut b, other).await.type_attr(), Some("result"));
        assert_eq!(
            set(&mut b, "<active name='other'/>").await.type_attr(),
            Some("result")
        );
        assert_eq!(set(&mut a, "<default/>").await.type_attr(), Some("result"));
        // 'work' is still a's active list: only a may remove it.
        assert_eq!(
            error_condition(&set(&mut b, "<list name='work'/>").await),
            Some(C::Conflict)
        );
        assert_eq!(
            set(&mut a, "<list name='work'/>").await.type_attr(),
            Some("result")
        );
        assert_eq!(
            error_condition(&set(&mut a, "<list name='work'/>").await),
            Some(C::ItemNotFound)
        );
        let lists = f.server.stores().privacy_lists(&alice).await.unwrap();
        assert_eq!(lists.names, ["other"]);
        // Duplicate orders, other users.
        let dup = "<list name='x'><item action='allow' order='1'/>\
                   <item action='deny' order='1'/></list>";
        assert_eq!(
            error_condition(&set(&mut a, dup).await),
            Some(C::BadRequest)
        );
        let mut bob = f.session("bob@localhost/b").await;
        let reply = bob.iq("alice@localhost", "get", &query("")).await;
        assert_eq!(error_condition(&reply), Some(C::Forbidden));
    }

    #[tokio::test]
    async fn limits_are_resource_constraints() {
        let f = Fixture::with(|c| {
            crate::fixture::set_option(
                c,
                "mod_privacy",
                "max_list_items",
                starling_config::OptionValue::Int(2),
            );
            crate::fixture::set_option(
                c,
                "mod_privacy",
                "max_lists",
                starling_config::OptionValue::Int(1),
            );
        })
        .await;
        f.account("alice@localhost").await;
        let mut a = f.session("alice@localhost/a").await;
        let three = "<list name='l'><item action='allow' order='1'/><item action='allow' \
                     order='2'/><item action='allow' order='3'/></list>";
        assert_eq!(
            error_condition(&set(&mut a, three).await),
            Some(C::ResourceConstraint)
        );
        let one = |n: &str| format!("<list name='{n}'><item action='allow' order='1'/></list>");
        assert_eq!(set(&mut a, &one("l")).await.type_attr(), Some("result"));
        assert_eq!(
            error_condition(&set(&mut a, &one("m")).await),
            Some(C::ResourceConstraint)
        );
    }

    #[tokio::test]
    async fn default_list_filters_incoming_stanzas() {
        let f = Fixture::new().await;
        f.account("alice@localhost").await;
        let mut a = f.session("alice@localhost/a").await;
        a.set_available();
        let mut carol = f.session("carol@localhost/c").await;
        carol.set_available();
        let list = "<list name='d'><item type='jid' value='carol@localhost' action='deny' \
                    order='1'><message/><presence-in/></item></list>";
        set(&mut a, list).await;
        set(&mut a, "<default name='d'/>").await;
        a.drain();
        f.server
            .route(message("carol@localhost/c", "alice@localhost"))
            .await;
        f.server
            .route(presence("carol@localhost/c", "alice@localhost"))
            .await;
        assert!(a.drain().is_empty(), "message and presence denied");
        let bounces = carol.drain();
        assert_eq!(bounces.len(), 1, "only the message bounces: {bounces:?}");
        assert_eq!(error_condition(&bounces[0]), Some(C::ServiceUnavailable));
        // IQs are not covered by this item.
        f.server
            .route(message("dave@localhost/d", "alice@localhost"))
            .await;
        assert_eq!(a.drain().len(), 1);
    }

    #[tokio::test]
    async fn active_list_applies_per_session() {
        let f = Fixture::new().await;
        f.account("alice@localhost").await;
        let mut a = f.session("alice@localhost/a").await;
        let b = f.session("alice@localhost/b").await;
        let list = "<list name='quiet'><item action='deny' order='1'><message/></item></list>";
        set(&mut a, list).await;
        set(&mut a, "<active name='quiet'/>").await;
        let modules = f.server.host_modules("localhost").unwrap();
        let hooks = modules.hooks();
        // sm_receive_packet leaves the check to the sessions.
        let mut arg = SmReceivePacket {
            user: BareJid::parse("alice@localhost").unwrap(),
            stanza: message("carol@localhost/c", "alice@localhost"),
        };
        assert_eq!(
            hooks.sm_receive_packet.run(&f.server, &mut arg).await,
            HookResult::Continue
        );
        let mut to_a = UserReceivePacket {
            session: a.jid.clone(),
            stanza: Arc::new(message("carol@localhost/c", "alice@localhost/a")),
        };
        assert_eq!(
            hooks.user_receive_packet.run(&f.server, &mut to_a).await,
            HookResult::Stop
        );
        let mut to_b = UserReceivePacket {
            session: b.jid.clone(),
            stanza: Arc::new(message("carol@localhost/c", "alice@localhost/b")),
        };
        assert_eq!(
            hooks.user_receive_packet.run(&f.server, &mut to_b).await,
            HookResult::Continue
        );
        // Own stanzas are never filtered.
        let mut own = UserReceivePacket {
            session: a.jid.clone(),
            stanza: Arc::new(message("alice@localhost/b", "alice@localhost/a")),
        };
        assert_eq!(
            hooks.user_receive_packet.run(&f.server, &mut own).await,
            HookResult::Continue
        );
        // Closing the session forgets its active list.
        let mut closed = SessionClosed {
            session: a.jid.clone(),
        };
        hooks.session_closed.run(&f.server, &mut closed).await;
        assert_eq!(
            hooks.user_receive_packet.run(&f.server, &mut to_a).await,
            HookResult::Continue
        );
    }

    #[tokio::test]
    async fn outgoing_presence_out_is_refused_not_acceptable() {
        let f = Fixture::new().await;
        f.account("alice@localhost").await;
        let mut a = f.session("alice@localhost/a").await;
        let list = "<list name='inv'><item action='deny' order='1'><presence-out/></item></list>";
        set(&mut a, list).await;
        set(&mut a, "<active name='inv'/>").await;
        a.drain();
        let hooks = f.server.host_modules("localhost").unwrap();
        let mut arg = UserSendPacket {
            session: a.jid.clone(),
            stanza: presence("alice@localhost/a", "bob@localhost"),
        };
        assert_eq!(
            hooks
                .hooks()
                .user_send_packet
                .run(&f.server, &mut arg)
                .await,
            HookResult::Stop
        );
        let error = a.next().expect("error reply");
        assert_eq!(error_condition(&error), Some(C::NotAcceptable));
        assert!(
            error
                .element()
                .get_child("error", ns::CLIENT)
                .and_then(|e| e.get_child("blocked", NS_BLOCKING_ERRORS))
                .is_none(),
            "not a blocklist item"
        );
        // Messages out are not presence-out; stanzas to the own server always pass.
        let mut msg = UserSendPacket {
            session: a.jid.clone(),
            stanza: message("alice@localhost/a", "bob@localhost"),
        };
        assert_eq!(
            hooks
                .hooks()
                .user_send_packet
                .run(&f.server, &mut msg)
                .await,
            HookResult::Continue
        );
        let mut to_server = UserSendPacket {
            session: a.jid.clone(),
            stanza: presence("alice@localhost/a", "localhost"),
        };
        assert_eq!(
            hooks
                .hooks()
                .user_send_packet
                .run(&f.server, &mut to_server)
                .await,
            HookResult::Continue
        );
    }

    #[tokio::test]
    async fn remove_user_deletes_the_lists() {
        let f = Fixture::new().await;
        let alice = f.account("alice@localhost").await;
        let mut a = f.session("alice@localhost/a").await;
        set(
            &mut a,
            "<list name='l'><item action='allow' order='1'/></list>",
        )
        .await;
        set(&mut a, "<default name='l'/>").await;
        assert!(f.server.remove_user(&alice, "bye").await.unwrap());
        let lists = f.server.stores().privacy_lists(&alice).await.unwrap();
        assert_eq!(lists, Default::default());
    }
}
