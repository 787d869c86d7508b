//! `mod_pep` (also accepted as `mod_pubsub`): XEP-0163 personal eventing on XEP-0060, with
//! XEP-0115 entity capabilities deciding who gets notifications.
//!
//! Every account is a pubsub service at its bare JID. Only PEP is served: there is no
//! `pubsub.HOST` service, so ejabberd's `mod_pubsub` options about that service (`host`,
//! `nodetree`, `plugins`, ...) are accepted with a warning and ignored.
//!
//! What is implemented, by section:
//! - XEP-0060 §7.1 **publish**, owner only (anyone else: `<forbidden/>`), with §7.1.4
//!   auto-create and §7.1.5 **publish-options** (a new node takes them as its configuration;
//!   an existing node whose configuration differs refuses the publish with `<conflict/>`,
//!   text `precondition-not-met`). Exactly one payload per item (`<bad-request/>` otherwise);
//!   an item without id gets one.
//! - §7.2 **retract** (owner only; `notify='true'` sends retraction events).
//! - §6.5 **items retrieval**: all, by id (§6.5.8), or the newest `max_items` (§6.5.7), newest
//!   first, for whoever the node's **access model** admits (§4.5): `open` anyone, `presence`
//!   the owner and contacts with a `from`/`both` subscription, `roster` the owner and
//!   contacts in one of `pubsub#roster_groups_allowed`, `whitelist` the owner only. Refusals
//!   use §6.5.9's conditions: `<not-authorized/>` (presence, roster) and `<not-allowed/>`
//!   (whitelist); an unknown node is `<item-not-found/>`.
//! - §8.1 **create** (with an optional configuration form), §8.2 **configure** get/set
//!   (`access_model`, `max_items` — a number or `max` —, `persist_items`,
//!   `send_last_published_item`, `roster_groups_allowed`), §8.4 **delete** (owner
//!   namespace; subscribers get a `<delete/>` event).
//! - XEP-0163 §4.3 **notifications**: a publish sends `<message type='headline'
//!   from=owner-bare>` with the `#event` payload to every available resource of the owner and
//!   of each local contact the access model admits (for `open`, the contacts with a presence
//!   subscription), when that resource's entity capabilities include `NODE+notify`
//!   ([`caps`]: learnt from broadcast presence, verified, cached). Sessions with unknown or
//!   unverifiable caps get none. In a cluster, caps are known on the session's own node: a
//!   notification goes to every admitted session on other nodes, and each node drops (at
//!   `user_receive_packet`) those its sessions' caps do not ask for.
//! - §4.3.4 / XEP-0060 §12.13 **last published item**: sent (with a `<delay/>`) to a session
//!   once its caps are known after its initial presence, for its own nodes and its contacts'
//!   nodes it is interested in and admitted to, unless the node says
//!   `send_last_published_item: never` (or `on_sub` only, for presence); and to a contact's
//!   sessions when the owner approves its subscription (`subscribed`).
//! - XEP-0030 disco#items on the account lists the nodes the requester may read, and on a
//!   node its item ids (§5.2, §5.5). The account's disco#info advertises the features below.
//!
//! Not implemented: explicit subscriptions (subscribe, options, subscriptions, affiliations:
//! `<feature-not-implemented/>`), purge, whitelist affiliations (a whitelist node is for its
//! owner only), notifications to remote contacts (their presence and caps are not tracked),
//! and pubsub's application-specific error elements (`<precondition-not-met/>` etc.): the core
//! stanza error type cannot carry them, so they appear as the error's text instead.
//! Data is stored through `starling_storage::PepStore`; deleting an account deletes its nodes
//! and items in this module's `remove_user` hook.

pub mod caps;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use starling_config::{ModuleOptions, ModuleSpec, OptionKind, OptionSpec};
use starling_core::BoxFuture;
use starling_core::Server;
use starling_core::hooks::{
    Hook, HookResult, PresenceBroadcast, RemoveUser, SessionClosed, SmReceivePacket,
    UserReceivePacket, UserSendPacket,
};
use starling_core::module::{
    HostContext, IqHandler, IqResult, IqTarget, Module, ModuleError, Registrations,
};
use starling_core::roster::{is_subscribed_to, is_subscriber};
use starling_storage::{PepItem, PepItemsQuery, PepNode, RosterItem, StorageError};
use starling_xmpp::Element;
use starling_xmpp::codec;
use starling_xmpp::error::{StanzaError, StanzaErrorCondition};
use starling_xmpp::jid::{BareJid, FullJid};
use starling_xmpp::ns;
use starling_xmpp::stanza::{IqType, Kind, PresenceType, Stanza, element};

use caps::{AnswerOutcome, EntityCaps, PresenceOutcome};

use crate::iq;

/// XEP-0060 namespace.
pub const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
/// XEP-0060 owner namespace (configure, delete).
pub const PUBSUB_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
/// XEP-0060 event namespace (notifications).
pub const PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
/// The `FORM_TYPE` of node configuration forms.
pub const NODE_CONFIG: &str = "http://jabber.org/protocol/pubsub#node_config";
/// The `FORM_TYPE` of publish options.
pub const PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";

/// The pubsub features advertised on accounts (XEP-0060 §10).
pub const FEATURES: &[&str] = &[
    "http://jabber.org/protocol/pubsub#access-open",
    "http://jabber.org/protocol/pubsub#access-presence",
    "http://jabber.org/protocol/pubsub#access-roster",
    "http://jabber.org/protocol/pubsub#access-whitelist",
    "http://jabber.org/protocol/pubsub#auto-create",
    "http://jabber.org/protocol/pubsub#config-node",
    "http://jabber.org/protocol/pubsub#create-and-configure",
    "http://jabber.org/protocol/pubsub#create-nodes",
    "http://jabber.org/protocol/pubsub#delete-nodes",
    "http://jabber.org/protocol/pubsub#filtered-notifications",
    "http://jabber.org/protocol/pubsub#last-published",
    "http://jabber.org/protocol/pubsub#persistent-items",
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#publish-options",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#retrieve-items",
];

/// Default most items a node may keep (ejabberd's `max_items_node`).
pub const DEFAULT_MAX_ITEMS_NODE: i64 = 1000;
/// Default most nodes per account.
pub const DEFAULT_MAX_NODES: i64 = 1000;
/// Default number of verified caps `ver`s cached.
pub const DEFAULT_CAPS_CACHE_SIZE: i64 = 1000;

const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "max_items_node",
        kind: OptionKind::IntOrInfinity { min: 1 },
        doc: "Most items a node may keep; what `max_items: max` means (default 1000).",
    },
    OptionSpec {
        name: "max_nodes",
        kind: OptionKind::Int {
            min: 1,
            max: 1_000_000,
        },
        doc: "Most nodes one account may have (Starling option, default 1000).",
    },
    OptionSpec {
        name: "caps_cache_size",
        kind: OptionKind::Int {
            min: 1,
            max: 1_000_000,
        },
        doc: "Verified XEP-0115 caps versions kept in memory (Starling option, default 1000).",
    },
    // ejabberd's mod_pubsub options for its pubsub.HOST service and node plugins: accepted so
    // that ejabberd configurations load, with a warning.
    unsupported("access_createnode"),
    unsupported("db_type"),
    unsupported("default_node_config"),
    unsupported("force_node_config"),
    unsupported("host"),
    unsupported("hosts"),
    unsupported("ignore_pep_from_offline"),
    unsupported("last_item_cache"),
    unsupported("max_item_expire_node"),
    unsupported("max_nodes_discoitems"),
    unsupported("max_subscriptions_node"),
    unsupported("name"),
    unsupported("nodetree"),
    unsupported("pep_mapping"),
    unsupported("plugins"),
    unsupported("vcard"),
];

const fn unsupported(name: &'static str) -> OptionSpec {
    OptionSpec {
        name,
        kind: OptionKind::Unsupported,
        doc: "ejabberd mod_pubsub option, ignored (only PEP is served).",
    }
}

/// `mod_pep`.
pub struct Pep;

impl Module for Pep {
    fn spec(&self) -> ModuleSpec {
        ModuleSpec {
            name: "mod_pep",
            aliases: &["pep", "mod_pubsub"],
            options: OPTIONS,
        }
    }

    fn start(
        &self,
        host: &HostContext<'_>,
        options: &ModuleOptions,
    ) -> Result<Registrations, ModuleError> {
        let clamp = |v: i64| u32::try_from(v.max(1)).unwrap_or(u32::MAX);
        let max_items = clamp(
            options
                .int("max_items_node")
                .unwrap_or(DEFAULT_MAX_ITEMS_NODE),
        );
        let max_nodes = clamp(options.int("max_nodes").unwrap_or(DEFAULT_MAX_NODES));
        let cache_size = usize::try_from(
            options
                .int("caps_cache_size")
                .unwrap_or(DEFAULT_CAPS_CACHE_SIZE),
        )
        .unwrap_or(1);
        let state = Arc::new(State {
            max_items,
            max_nodes,
            caps: EntityCaps::new(host.host, cache_size),
        });
        let mut registrations = Registrations::default()
            .iq(PUBSUB, IqTarget::Account, Arc::new(PubsubIq(state.clone())))
            .iq(
                PUBSUB_OWNER,
                IqTarget::Account,
                Arc::new(OwnerIq(state.clone())),
            )
            .iq(ns::DISCO_ITEMS, IqTarget::Account, Arc::new(NodeItems));
        for feature in FEATURES {
            registrations = registrations.feature(feature, IqTarget::Account);
        }
        let hooks = &mut registrations.hooks;
        hooks
            .presence_broadcast
            .add(50, Arc::new(CapsPresence(state.clone())));
        // Early: our caps answers are consumed before archiving or carbons look at them.
        hooks
            .user_send_packet
            .add(10, Arc::new(CapsAnswer(state.clone())));
        hooks
            .session_closed
            .add(50, Arc::new(CapsForget(state.clone())));
        hooks
            .sm_receive_packet
            .add(60, Arc::new(SubscriptionApproved(state.clone())));
        hooks
            .user_receive_packet
            .add(50, Arc::new(CapsFilter(state)));
        hooks.remove_user.add(50, Arc::new(RemovePep));
        Ok(registrations)
    }
}

/// What the handlers and hooks of one host share.
struct State {
    max_items: u32,
    max_nodes: u32,
    caps: EntityCaps,
}

/// XEP-0060 §4.5 access models.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AccessModel {
    Open,
    Presence,
    Roster,
    Whitelist,
}

impl AccessModel {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(Self::Open),
            "presence" => Some(Self::Presence),
            "roster" => Some(Self::Roster),
            "whitelist" => Some(Self::Whitelist),
            _ => None,
        }
    }

    fn of(node: &PepNode) -> Self {
        // An unknown stored value fails closed.
        Self::parse(&node.access_model).unwrap_or(Self::Whitelist)
    }
}

/// `pubsub#send_last_published_item` values.
const SEND_LAST: &[&str] = &["never", "on_sub", "on_sub_and_presence"];

/// XEP-0163 §4.1 defaults: presence access, one persistent item, last item on presence.
fn default_node(name: &str) -> PepNode {
    PepNode {
        name: name.to_owned(),
        access_model: "presence".to_owned(),
        max_items: 1,
        persist_items: true,
        send_last_published_item: "on_sub_and_presence".to_owned(),
        roster_groups: Vec::new(),
    }
}

/// Whether a contact with roster item `item` (in the owner's roster) may read `node`.
fn contact_admitted(node: &PepNode, item: Option<&RosterItem>) -> bool {
    match AccessModel::of(node) {
        AccessModel::Open => true,
        AccessModel::Presence => item.is_some_and(is_subscriber),
        AccessModel::Roster => item.is_some_and(|i| {
            i.groups
                .iter()
                .any(|g| node.roster_groups.iter().any(|a| a == g))
        }),
        AccessModel::Whitelist => false,
    }
}

/// XEP-0060 §6.5.9: may `requester` read `owner`'s `node`?
async fn check_read(
    server: &Server,
    owner: &BareJid,
    node: &PepNode,
    requester: &BareJid,
) -> Result<(), StanzaError> {
    if requester == owner || AccessModel::of(node) == AccessModel::Open {
        return Ok(());
    }
    let item = server
        .stores()
        .item(owner, requester)
        .await
        .map_err(|e| iq::storage_failure("cannot load roster item", owner, &e))?;
    if contact_admitted(node, item.as_ref()) {
        return Ok(());
    }
    Err(match AccessModel::of(node) {
        AccessModel::Presence => iq::error(StanzaErrorCondition::NotAuthorized)
            .with_text("presence-subscription-required"),
        AccessModel::Roster => {
            iq::error(StanzaErrorCondition::NotAuthorized).with_text("not-in-roster-group")
        }
        _ => iq::error(StanzaErrorCondition::NotAllowed).with_text("closed-node"),
    })
}

/// Configuration fields of a submitted form; `None` where the form does not set them.
#[derive(Debug, Default, PartialEq, Eq)]
struct ConfigForm {
    access_model: Option<String>,
    max_items: Option<u32>,
    persist_items: Option<bool>,
    send_last_published_item: Option<String>,
    roster_groups: Option<Vec<String>>,
}

impl ConfigForm {
    /// Reads a submitted `jabber:x:data` form; values out of range are `<not-acceptable/>`,
    /// fields this service does not model are ignored.
    fn parse(x: &Element, max_items: u32) -> Result<Self, StanzaError> {
        let mut form = Self::default();
        let bad = |var: &str| {
            iq::error(StanzaErrorCondition::NotAcceptable)
                .with_text(format!("unsupported value for {var}"))
        };
        for field in x.children().filter(|c| c.is("field", ns::DATA_FORMS)) {
            let var = field.attr("var").unwrap_or("");
            let values: Vec<String> = field
                .children()
                .filter(|c| c.is("value", ns::DATA_FORMS))
                .map(Element::text)
                .collect();
            let first = values.first().map(|v| v.trim()).unwrap_or("");
            match var {
                "pubsub#access_model" => {
                    AccessModel::parse(first).ok_or_else(|| bad(var))?;
                    form.access_model = Some(first.to_owned());
                }
                "pubsub#max_items" => {
                    let n = if first == "max" {
                        max_items
                    } else {
                        first.parse::<u32>().map_err(|_| bad(var))?
                    };
                    if n > max_items {
                        return Err(bad(var));
                    }
                    form.max_items = Some(n);
                }
                "pubsub#persist_items" => {
                    form.persist_items = Some(parse_bool(first).ok_or_else(|| bad(var))?);
                }
                "pubsub#send_last_published_item" => {
                    if !SEND_LAST.contains(&first) {
                        return Err(bad(var));
                    }
                    form.send_last_published_item = Some(first.to_owned());
                }
                "pubsub#roster_groups_allowed" => {
                    form.roster_groups =
                        Some(values.into_iter().filter(|v| !v.is_empty()).collect());
                }
                _ => {}
            }
        }
        Ok(form)
    }

    fn apply(self, node: &mut PepNode) {
        if let Some(v) = self.access_model {
            node.access_model = v;
        }
        if let Some(v) = self.max_items {
            node.max_items = v;
        }
        if let Some(v) = self.persist_items {
            node.persist_items = v;
        }
        if let Some(v) = self.send_last_published_item {
            node.send_last_published_item = v;
        }
        if let Some(v) = self.roster_groups {
            node.roster_groups = v;
        }
    }

    /// §7.1.5: every option given holds on `node`.
    fn holds_on(&self, node: &PepNode) -> bool {
        let mut groups = self.roster_groups.clone();
        let mut stored = node.roster_groups.clone();
        if let Some(g) = groups.as_mut() {
            g.sort();
            stored.sort();
        }
        self.access_model
            .as_ref()
            .is_none_or(|v| *v == node.access_model)
            && self.max_items.is_none_or(|v| v == node.max_items)
            && self.persist_items.is_none_or(|v| v == node.persist_items)
            && self
                .send_last_published_item
                .as_ref()
                .is_none_or(|v| *v == node.send_last_published_item)
            && groups.is_none_or(|g| g == stored)
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// The `jabber:x:data` form inside `parent`, if any; a `cancel` form counts as none.
fn submitted_form(parent: &Element) -> Option<&Element> {
    parent
        .get_child("x", ns::DATA_FORMS)
        .filter(|x| x.attr("type") != Some("cancel"))
}

/// XEP-0060 §16.4.4: the node configuration form for `configure` get.
fn config_form(node: &PepNode) -> Element {
    let mut x = element("x", ns::DATA_FORMS, &[("type", "form")]);
    x.append_child(field("FORM_TYPE", "hidden", None, &[NODE_CONFIG], &[]));
    x.append_child(field(
        "pubsub#access_model",
        "list-single",
        Some("Who may subscribe and retrieve items"),
        &[node.access_model.as_str()],
        &["open", "presence", "roster", "whitelist"],
    ));
    x.append_child(field(
        "pubsub#max_items",
        "text-single",
        Some("Max # of items to persist"),
        &[&node.max_items.to_string()],
        &[],
    ));
    x.append_child(field(
        "pubsub#persist_items",
        "boolean",
        Some("Persist items to storage"),
        &[if node.persist_items { "1" } else { "0" }],
        &[],
    ));
    x.append_child(field(
        "pubsub#send_last_published_item",
        "list-single",
        Some("When to send the last published item"),
        &[node.send_last_published_item.as_str()],
        SEND_LAST,
    ));
    let groups: Vec<&str> = node.roster_groups.iter().map(String::as_str).collect();
    x.append_child(field(
        "pubsub#roster_groups_allowed",
        "list-multi",
        Some("Roster groups allowed to subscribe"),
        &groups,
        &[],
    ));
    x
}

fn field(var: &str, kind: &str, label: Option<&str>, values: &[&str], options: &[&str]) -> Element {
    let mut f = element("field", ns::DATA_FORMS, &[("var", var), ("type", kind)]);
    if let Some(label) = label {
        starling_xmpp::stanza::set_attr(&mut f, "label", label);
    }
    for value in values {
        f.append_child(starling_xmpp::stanza::text_element(
            "value",
            ns::DATA_FORMS,
            value,
        ));
    }
    for option in options {
        let mut o = element("option", ns::DATA_FORMS, &[]);
        o.append_child(starling_xmpp::stanza::text_element(
            "value",
            ns::DATA_FORMS,
            option,
        ));
        f.append_child(o);
    }
    f
}

/// The `node` attribute of a request element; `<bad-request/>` (nodeid-required) if missing.
fn node_attr(el: &Element) -> Result<&str, StanzaError> {
    el.attr("node")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| iq::error(StanzaErrorCondition::BadRequest).with_text("nodeid-required"))
}

fn owner_only(iq: &Stanza) -> Result<(), StanzaError> {
    if iq::from_account_itself(iq) {
        Ok(())
    } else {
        Err(iq::error(StanzaErrorCondition::Forbidden)
            .with_text("only the account itself may change its PEP nodes"))
    }
}

fn not_implemented(what: &str) -> StanzaError {
    iq::error(StanzaErrorCondition::FeatureNotImplemented)
        .with_text(format!("{what} is not supported on PEP nodes here"))
}

fn quota_or_failure(e: &StorageError, user: &BareJid, max_nodes: u32) -> StanzaError {
    match e {
        StorageError::QuotaExceeded => iq::error(StanzaErrorCondition::ResourceConstraint)
            .with_text(format!("at most {max_nodes} nodes per account")),
        e => iq::storage_failure("cannot store PEP node", user, e),
    }
}

/// An item id for items published without one: unique per process run and time.
fn new_item_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{:x}{:04x}",
        now_micros(),
        COUNTER.fetch_add(1, Ordering::Relaxed) & 0xffff
    )
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `<item id='..'>payload</item>` in `ns`; a payload that no longer parses is left out.
fn item_element(item: &PepItem, namespace: &str) -> Element {
    let mut el = element("item", namespace, &[("id", &item.id)]);
    if !item.payload.is_empty() {
        match item.payload.parse::<Element>() {
            Ok(payload) => el.append_child(payload),
            Err(e) => {
                tracing::error!(item = %item.id, error = %e, "stored PEP payload does not parse");
                return el;
            }
        };
    }
    el
}

/// `<pubsub xmlns=PUBSUB>` with one child.
fn pubsub(child: Element) -> Element {
    let mut p = element("pubsub", PUBSUB, &[]);
    p.append_child(child);
    p
}

/// XEP-0060 `pubsub` namespace requests on an account.
struct PubsubIq(Arc<State>);

impl IqHandler for PubsubIq {
    fn handle<'a>(&'a self, server: &'a Server, iq: &'a Stanza) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            let (kind, payload) = iq::request(iq)?;
            let owner = iq::account(iq)?;
            if payload.name() != "pubsub" {
                return Err(iq::error(StanzaErrorCondition::BadRequest));
            }
            let mut children = payload.children().filter(|c| c.ns() == PUBSUB);
            let Some(verb) = children.next() else {
                return Err(iq::error(StanzaErrorCondition::BadRequest));
            };
            match (kind, verb.name()) {
                (IqType::Set, "publish") => {
                    let options = payload.get_child("publish-options", PUBSUB);
                    self.publish(server, iq, &owner, verb, options).await
                }
                (IqType::Set, "retract") => self.retract(server, iq, &owner, verb).await,
                (IqType::Set, "create") => {
                    let configure = payload.get_child("configure", PUBSUB);
                    self.create(server, iq, &owner, verb, configure).await
                }
                (IqType::Get, "items") => items(server, iq, &owner, verb).await,
                (
                    _,
                    name @ ("subscribe" | "unsubscribe" | "options" | "subscriptions"
                    | "affiliations" | "default"),
                ) => Err(not_implemented(name)),
                _ => Err(iq::error(StanzaErrorCondition::BadRequest)),
            }
        })
    }
}

impl PubsubIq {
    /// XEP-0060 §7.1 with §7.1.4 auto-create and §7.1.5 publish-options.
    async fn publish(
        &self,
        server: &Server,
        iq: &Stanza,
        owner: &BareJid,
        publish: &Element,
        options: Option<&Element>,
    ) -> IqResult {
        owner_only(iq)?;
        let name = node_attr(publish)?;
        let mut items = publish.children().filter(|c| c.is("item", PUBSUB));
        let (Some(item), None) = (items.next(), items.next()) else {
            return Err(iq::error(StanzaErrorCondition::BadRequest)
                .with_text("exactly one item per publish (item-required / invalid-payload)"));
        };
        let mut payloads = item.children();
        let (Some(payload), None) = (payloads.next(), payloads.next()) else {
            return Err(iq::error(StanzaErrorCondition::BadRequest).with_text(
                "an item carries exactly one payload (payload-required / invalid-payload)",
            ));
        };
        let options = match options.and_then(submitted_form) {
            Some(x) => Some(ConfigForm::parse(x, self.0.max_items)?),
            None => None,
        };
        let existing = server
            .stores()
            .pep_node(owner, name)
            .await
            .map_err(|e| iq::storage_failure("cannot load PEP node", owner, &e))?;
        let config = match (existing, options) {
            (Some(node), Some(options)) => {
                if !options.holds_on(&node) {
                    return Err(
                        iq::error(StanzaErrorCondition::Conflict).with_text("precondition-not-met")
                    );
                }
                node
            }
            (Some(node), None) => node,
            (None, options) => {
                let mut node = default_node(name);
                if let Some(options) = options {
                    options.apply(&mut node);
                }
                node
            }
        };
        let id = item
            .attr("id")
            .filter(|id| !id.is_empty())
            .map_or_else(new_item_id, str::to_owned);
        let xml = String::from_utf8(codec::to_bytes(payload))
            .map_err(|_| iq::error(StanzaErrorCondition::BadRequest))?;
        let stored = PepItem {
            id: id.clone(),
            payload: xml,
            publisher: iq.from().as_str().to_owned(),
            published_at: now_micros(),
        };
        server
            .stores()
            .publish_pep_item(owner, &config, &stored, self.0.max_nodes)
            .await
            .map_err(|e| quota_or_failure(&e, owner, self.0.max_nodes))?;
        let mut event_items = element("items", PUBSUB_EVENT, &[("node", name)]);
        event_items.append_child(item_element(&stored, PUBSUB_EVENT));
        notify(server, &self.0, owner, &config, event_items, None).await;
        let mut result = element("publish", PUBSUB, &[("node", name)]);
        result.append_child(element("item", PUBSUB, &[("id", &id)]));
        Ok(Some(pubsub(result)))
    }

    /// XEP-0060 §7.2.
    async fn retract(
        &self,
        server: &Server,
        iq: &Stanza,
        owner: &BareJid,
        retract: &Element,
    ) -> IqResult {
        owner_only(iq)?;
        let name = node_attr(retract)?;
        let Some(id) = retract
            .get_child("item", PUBSUB)
            .and_then(|i| i.attr("id"))
            .filter(|id| !id.is_empty())
        else {
            return Err(iq::error(StanzaErrorCondition::BadRequest).with_text("item-required"));
        };
        let node = load_node(server, owner, name).await?;
        let removed = server
            .stores()
            .retract_pep_item(owner, name, id)
            .await
            .map_err(|e| iq::storage_failure("cannot retract PEP item", owner, &e))?;
        if !removed {
            return Err(iq::error(StanzaErrorCondition::ItemNotFound));
        }
        if retract.attr("notify").and_then(parse_bool) == Some(true) {
            let mut event_items = element("items", PUBSUB_EVENT, &[("node", name)]);
            event_items.append_child(element("retract", PUBSUB_EVENT, &[("id", id)]));
            notify(server, &self.0, owner, &node, event_items, None).await;
        }
        Ok(None)
    }

    /// XEP-0060 §8.1.
    async fn create(
        &self,
        server: &Server,
        iq: &Stanza,
        owner: &BareJid,
        create: &Element,
        configure: Option<&Element>,
    ) -> IqResult {
        owner_only(iq)?;
        // PEP nodes are named by their namespace; instant (unnamed) nodes make no sense here.
        let name = node_attr(create)?;
        let mut node = default_node(name);
        if let Some(x) = configure.and_then(submitted_form) {
            ConfigForm::parse(x, self.0.max_items)?.apply(&mut node);
        }
        let existing = server
            .stores()
            .pep_node(owner, name)
            .await
            .map_err(|e| iq::storage_failure("cannot load PEP node", owner, &e))?;
        if existing.is_some() {
            return Err(iq::error(StanzaErrorCondition::Conflict).with_text("node exists"));
        }
        server
            .stores()
            .put_pep_node(owner, &node, self.0.max_nodes)
            .await
            .map_err(|e| quota_or_failure(&e, owner, self.0.max_nodes))?;
        Ok(None)
    }
}

/// The node, or `<item-not-found/>`.
async fn load_node(server: &Server, owner: &BareJid, name: &str) -> Result<PepNode, StanzaError> {
    server
        .stores()
        .pep_node(owner, name)
        .await
        .map_err(|e| iq::storage_failure("cannot load PEP node", owner, &e))?
        .ok_or_else(|| iq::error(StanzaErrorCondition::ItemNotFound))
}

/// XEP-0060 §6.5: items retrieval.
async fn items(server: &Server, iq: &Stanza, owner: &BareJid, request: &Element) -> IqResult {
    let name = node_attr(request)?;
    let node = load_node(server, owner, name).await?;
    check_read(server, owner, &node, &iq.from().to_bare()).await?;
    let ids: Vec<String> = request
        .children()
        .filter(|c| c.is("item", PUBSUB))
        .filter_map(|c| c.attr("id").map(str::to_owned))
        .collect();
    let query = if !ids.is_empty() {
        PepItemsQuery::Ids(&ids)
    } else if let Some(max) = request.attr("max_items") {
        let max = max.trim().parse::<u32>().map_err(|_| {
            iq::error(StanzaErrorCondition::BadRequest).with_text("max_items is not a number")
        })?;
        PepItemsQuery::Newest(max)
    } else {
        PepItemsQuery::All
    };
    let found = server
        .stores()
        .pep_items(owner, name, query)
        .await
        .map_err(|e| iq::storage_failure("cannot load PEP items", owner, &e))?;
    let mut result = element("items", PUBSUB, &[("node", name)]);
    for item in &found {
        result.append_child(item_element(item, PUBSUB));
    }
    Ok(Some(pubsub(result)))
}

/// XEP-0060 `pubsub#owner` requests: configure and delete.
struct OwnerIq(Arc<State>);

impl IqHandler for OwnerIq {
    fn handle<'a>(&'a self, server: &'a Server, iq: &'a Stanza) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            let (kind, payload) = iq::request(iq)?;
            let owner = iq::account(iq)?;
            if payload.name() != "pubsub" {
                return Err(iq::error(StanzaErrorCondition::BadRequest));
            }
            owner_only(iq)?;
            let Some(verb) = payload.children().find(|c| c.ns() == PUBSUB_OWNER) else {
                return Err(iq::error(StanzaErrorCondition::BadRequest));
            };
            match (kind, verb.name()) {
                (IqType::Get, "configure") => {
                    let name = node_attr(verb)?;
                    let node = load_node(server, &owner, name).await?;
                    let mut configure = element("configure", PUBSUB_OWNER, &[("node", name)]);
                    configure.append_child(config_form(&node));
                    let mut p = element("pubsub", PUBSUB_OWNER, &[]);
                    p.append_child(configure);
                    Ok(Some(p))
                }
                (IqType::Set, "configure") => {
                    let name = node_attr(verb)?;
                    let mut node = load_node(server, &owner, name).await?;
                    if let Some(x) = submitted_form(verb) {
                        ConfigForm::parse(x, self.0.max_items)?.apply(&mut node);
                        server
                            .stores()
                            .put_pep_node(&owner, &node, self.0.max_nodes)
                            .await
                            .map_err(|e| quota_or_failure(&e, &owner, self.0.max_nodes))?;
                    }
                    Ok(None)
                }
                (IqType::Set, "delete") => {
                    let name = node_attr(verb)?;
                    let node = load_node(server, &owner, name).await?;
                    // Who to tell is decided before the node (and its access model) is gone.
                    let targets = recipients(server, &self.0, &owner, &node).await;
                    server
                        .stores()
                        .delete_pep_node(&owner, name)
                        .await
                        .map_err(|e| iq::storage_failure("cannot delete PEP node", &owner, &e))?;
                    let delete = element("delete", PUBSUB_EVENT, &[("node", name)]);
                    notify(server, &self.0, &owner, &node, delete, Some(targets)).await;
                    Ok(None)
                }
                (_, name) => Err(not_implemented(name)),
            }
        })
    }
}

/// XEP-0030 disco#items on an account: its readable nodes, or a node's item ids.
struct NodeItems;

impl IqHandler for NodeItems {
    fn handle<'a>(&'a self, server: &'a Server, iq: &'a Stanza) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            let query = iq::get_payload(iq)?;
            let owner = iq::account(iq)?;
            let requester = iq.from().to_bare();
            let mut result = element("query", ns::DISCO_ITEMS, &[]);
            if let Some(name) = query.attr("node") {
                starling_xmpp::stanza::set_attr(&mut result, "node", name);
                let node = load_node(server, &owner, name).await?;
                check_read(server, &owner, &node, &requester)
                    .await
                    .map_err(|_| iq::error(StanzaErrorCondition::ItemNotFound))?;
                let found = server
                    .stores()
                    .pep_items(&owner, name, PepItemsQuery::All)
                    .await
                    .map_err(|e| iq::storage_failure("cannot load PEP items", &owner, &e))?;
                for item in found {
                    result.append_child(element(
                        "item",
                        ns::DISCO_ITEMS,
                        &[("jid", owner.as_str()), ("name", &item.id)],
                    ));
                }
                return Ok(Some(result));
            }
            let nodes = server
                .stores()
                .pep_nodes(&owner)
                .await
                .map_err(|e| iq::storage_failure("cannot load PEP nodes", &owner, &e))?;
            for node in nodes {
                if check_read(server, &owner, &node, &requester).await.is_ok() {
                    result.append_child(element(
                        "item",
                        ns::DISCO_ITEMS,
                        &[("jid", owner.as_str()), ("node", &node.name)],
                    ));
                }
            }
            Ok(Some(result))
        })
    }
}

/// The available sessions that should hear about `node`: the owner's and those of the
/// contacts its access model admits, whose caps ask for `NODE+notify`. Caps are learnt on the
/// node a session's presence passes through, so sessions on other cluster nodes are all
/// included and their node filters ([`CapsFilter`]).
async fn recipients(
    server: &Server,
    state: &State,
    owner: &BareJid,
    node: &PepNode,
) -> Vec<FullJid> {
    let mut out: Vec<FullJid> = server
        .sm()
        .available_of(owner)
        .into_iter()
        .filter(|s| !s.is_local() || state.caps.wants(&s.jid, &node.name))
        .map(|s| s.jid)
        .collect();
    if AccessModel::of(node) == AccessModel::Whitelist {
        return out;
    }
    let roster = match server.stores().roster(owner).await {
        Ok((items, _)) => items,
        Err(e) => {
            tracing::error!(user = %owner, error = %e, "cannot load roster for PEP notifications");
            return out;
        }
    };
    for item in &roster {
        if item.jid == *owner || item.jid.node().is_none() || !server.is_local(item.jid.domain()) {
            continue;
        }
        // Open nodes notify the contacts who see the owner's presence, like presence nodes.
        let admitted = match AccessModel::of(node) {
            AccessModel::Open => is_subscriber(item),
            _ => contact_admitted(node, Some(item)),
        };
        if !admitted {
            continue;
        }
        out.extend(
            server
                .sm()
                .available_of(&item.jid)
                .into_iter()
                .filter(|s| !s.is_local() || state.caps.wants(&s.jid, &node.name))
                .map(|s| s.jid),
        );
    }
    out
}

/// Sends `<event>` with `payload` (an `<items/>` or `<delete/>`) from the owner to the
/// `targets`, or to [`recipients`] when `None`.
async fn notify(
    server: &Server,
    state: &State,
    owner: &BareJid,
    node: &PepNode,
    payload: Element,
    targets: Option<Vec<FullJid>>,
) {
    let targets = match targets {
        Some(t) => t,
        None => recipients(server, state, owner, node).await,
    };
    for target in targets {
        send_event(server, owner, &target, payload.clone(), None).await;
    }
}

/// Routes one headline event message; `delay` (µs) marks a last published item sent late.
async fn send_event(
    server: &Server,
    owner: &BareJid,
    to: &FullJid,
    payload: Element,
    delay: Option<i64>,
) {
    let mut message = element(
        "message",
        ns::CLIENT,
        &[("type", "headline"), ("id", &new_item_id())],
    );
    let mut event = element("event", PUBSUB_EVENT, &[]);
    event.append_child(payload);
    message.append_child(event);
    if let Some(at) = delay {
        message.append_child(element(
            "delay",
            ns::DELAY,
            &[
                ("from", owner.as_str()),
                ("stamp", &crate::time::format_datetime(at / 1_000_000)),
            ],
        ));
    }
    match Stanza::new(message, owner.clone().into(), to.clone().into()) {
        Ok(stanza) => server.route(stanza).await,
        Err(e) => tracing::debug!(error = %e, "cannot build PEP event"),
    }
}

/// Sends `owner`'s last item of each node among `interests` that `reader` may read, to
/// `session` (XEP-0060 §12.13). `presence` is true for the initial-presence case, where
/// `on_sub` nodes stay quiet.
async fn send_last_items(
    server: &Server,
    owner: &BareJid,
    session: &FullJid,
    interests: &[String],
    presence: bool,
) -> Result<(), StorageError> {
    let reader = session.to_bare();
    let item = if reader == *owner {
        None
    } else {
        server.stores().item(owner, &reader).await?
    };
    for name in interests {
        let Some(node) = server.stores().pep_node(owner, name).await? else {
            continue;
        };
        let wanted = match node.send_last_published_item.as_str() {
            "on_sub_and_presence" => true,
            "on_sub" => !presence,
            _ => false,
        };
        if !wanted || (reader != *owner && !contact_admitted(&node, item.as_ref())) {
            continue;
        }
        let last = server
            .stores()
            .pep_items(owner, name, PepItemsQuery::Newest(1))
            .await?;
        if let Some(last) = last.first() {
            let mut items = element("items", PUBSUB_EVENT, &[("node", name)]);
            items.append_child(item_element(last, PUBSUB_EVENT));
            send_event(server, owner, session, items, Some(last.published_at)).await;
        }
    }
    Ok(())
}

/// A session's caps became known after its initial presence: its own nodes' and its
/// contacts' last items.
async fn last_items_on_presence(server: &Server, state: &State, session: &FullJid) {
    let interests = state.caps.interests(session);
    if interests.is_empty() {
        return;
    }
    let user = session.to_bare();
    let mut owners = vec![user.clone()];
    match server.stores().roster(&user).await {
        Ok((items, _)) => owners.extend(
            items
                .into_iter()
                .filter(|i| is_subscribed_to(i) && i.jid != user && i.jid.node().is_some())
                .filter(|i| server.is_local(i.jid.domain()))
                .map(|i| i.jid),
        ),
        Err(e) => tracing::error!(%user, error = %e, "cannot load roster for PEP last items"),
    }
    for owner in owners {
        if let Err(e) = send_last_items(server, &owner, session, &interests, true).await {
            tracing::error!(user = %owner, error = %e, "cannot send PEP last items");
        }
    }
}

/// `presence_broadcast`: learn the session's caps (XEP-0115); ask if unknown.
struct CapsPresence(Arc<State>);

impl Hook<PresenceBroadcast> for CapsPresence {
    fn call<'a>(
        &'a self,
        server: &'a Server,
        arg: &'a mut PresenceBroadcast,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            let available =
                PresenceType::parse(arg.presence.attr("type")) == Some(PresenceType::Available);
            // The hook runs before the directory marks the session available.
            let initial = available
                && server
                    .sm()
                    .get(&arg.session)
                    .is_some_and(|entry| !entry.available);
            match self
                .0
                .caps
                .on_presence(&arg.session, &arg.presence, available, initial)
            {
                PresenceOutcome::Nothing => {}
                PresenceOutcome::Known => {
                    if initial {
                        last_items_on_presence(server, &self.0, &arg.session).await;
                    }
                }
                PresenceOutcome::Query(request) => match Stanza::from_element(request) {
                    // Routing only queues the request in the session's inbox: the answer
                    // comes back through `CapsAnswer`, so nothing here waits for the client.
                    Ok(request) => server.route(request).await,
                    Err(e) => tracing::debug!(error = %e, "cannot build caps query"),
                },
            }
            HookResult::Continue
        })
    }
}

/// The PEP node a notification from one of this server's accounts is about: a headline-or-
/// normal message from a local bare JID carrying `<event>` whose first child names a node.
fn notification_node<'a>(server: &Server, stanza: &'a Stanza) -> Option<&'a str> {
    if stanza.kind() != Kind::Message {
        return None;
    }
    let from = stanza.from();
    if !from.is_bare() || from.node().is_none() || !server.is_local(from.domain()) {
        return None;
    }
    let event = stanza.element().get_child("event", PUBSUB_EVENT)?;
    event.children().next()?.attr("node")
}

/// `user_receive_packet`: drops a notification reaching a session of this node whose caps do
/// not ask for it. Another cluster node sends notifications to all of an account's sessions
/// here, since only this node learnt their caps (see [`recipients`]); for notifications this
/// node made, the check was already done and passes again.
struct CapsFilter(Arc<State>);

impl Hook<UserReceivePacket> for CapsFilter {
    fn call<'a>(
        &'a self,
        server: &'a Server,
        arg: &'a mut UserReceivePacket,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            match notification_node(server, &arg.stanza) {
                Some(node) if !self.0.caps.wants(&arg.session, node) => HookResult::Stop,
                _ => HookResult::Continue,
            }
        })
    }
}

/// `user_send_packet`: the answers to our caps queries, taken out of the stream here.
///
/// `Server::iq_query` cannot be used for these: the query goes to the session whose
/// presence is being handled, and that session's task (which would read the answer) is the
/// one running the hook, so waiting there would stall it until the timeout; a hook has no
/// `Arc<Server>` to spawn a waiting task with either. Answers are matched by id and sender.
struct CapsAnswer(Arc<State>);

impl Hook<UserSendPacket> for CapsAnswer {
    fn call<'a>(
        &'a self,
        server: &'a Server,
        arg: &'a mut UserSendPacket,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            let stanza = &arg.stanza;
            let is_answer = stanza.kind() == Kind::Iq
                && matches!(stanza.type_attr(), Some("result" | "error"))
                && stanza.to().node().is_none()
                && stanza.to().resource().is_none();
            if !is_answer {
                return HookResult::Continue;
            }
            match self.0.caps.on_answer(&arg.session, stanza.element()) {
                AnswerOutcome::NotOurs => HookResult::Continue,
                AnswerOutcome::Rejected => HookResult::Stop,
                AnswerOutcome::Verified { initial } => {
                    let available = server
                        .sm()
                        .get(&arg.session)
                        .is_some_and(|entry| entry.available);
                    if initial && available {
                        last_items_on_presence(server, &self.0, &arg.session).await;
                    }
                    HookResult::Stop
                }
            }
        })
    }
}

/// `session_closed`: forget the session's caps.
struct CapsForget(Arc<State>);

impl Hook<SessionClosed> for CapsForget {
    fn call<'a>(
        &'a self,
        _server: &'a Server,
        arg: &'a mut SessionClosed,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            self.0.caps.session_closed(&arg.session);
            HookResult::Continue
        })
    }
}

/// `sm_receive_packet`: a local owner approved `user`'s subscription (`subscribed`): the
/// owner's last items go to `user`'s interested sessions (XEP-0060 §12.13 "on_sub").
struct SubscriptionApproved(Arc<State>);

impl Hook<SmReceivePacket> for SubscriptionApproved {
    fn call<'a>(
        &'a self,
        server: &'a Server,
        arg: &'a mut SmReceivePacket,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            let stanza = &arg.stanza;
            if stanza.kind() != Kind::Presence
                || PresenceType::parse(stanza.type_attr()) != Some(PresenceType::Subscribed)
            {
                return HookResult::Continue;
            }
            let owner = stanza.from().to_bare();
            let served = owner.node().is_some()
                && server
                    .host_modules(owner.domain())
                    .is_some_and(|m| m.has("mod_pep"));
            if !served || owner == arg.user {
                return HookResult::Continue;
            }
            for session in server.sm().available_of(&arg.user) {
                let interests = self.0.caps.interests(&session.jid);
                if interests.is_empty() {
                    continue;
                }
                if let Err(e) =
                    send_last_items(server, &owner, &session.jid, &interests, false).await
                {
                    tracing::error!(user = %owner, error = %e, "cannot send PEP last items");
                }
            }
            HookResult::Continue
        })
    }
}

/// `remove_user`: nodes and items go with the account.
struct RemovePep;

impl Hook<RemoveUser> for RemovePep {
    fn call<'a>(
        &'a self,
        server: &'a Server,
        arg: &'a mut RemoveUser,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            if let Err(e) = server.stores().remove_pep(&arg.user).await {
                tracing::error!(user = %arg.user, error = %e, "cannot remove PEP data");
            }
            HookResult::Continue
        })
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use sha1::{Digest as _, Sha1};
    use starling_core::presence::{self, PresenceState};
    use starling_storage::Subscription;
    use starling_xmpp::error::StanzaErrorCondition as C;
    use starling_xmpp::jid::Jid;

    use super::*;
    use crate::fixture::{Fixture, TestSession, error_condition};

    const AVATAR: &str = "urn:xmpp:avatar:metadata";
    const BOOKMARKS: &str = "urn:xmpp:bookmarks:1";

    fn publish(node: &str, id: &str, payload: &str, options: &str) -> String {
        format!(
            "<pubsub xmlns='{PUBSUB}'><publish node='{node}'><item id='{id}'>{payload}</item>\
             </publish>{options}</pubsub>"
        )
    }

    fn options(fields: &[(&str, &str)]) -> String {
        let mut x = format!(
            "<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' \
             type='hidden'><value>{PUBLISH_OPTIONS}</value></field>"
        );
        for (var, value) in fields {
            x.push_str(&format!(
                "<field var='{var}'><value>{value}</value></field>"
            ));
        }
        x.push_str("</x></publish-options>");
        x
    }

    fn metadata(id: &str) -> String {
        format!(
            "<metadata xmlns='{AVATAR}'><info bytes='12' id='{id}' type='image/png' \
             height='64' width='64'/></metadata>"
        )
    }

    fn get_items(node: &str, extra: &str) -> String {
        format!("<pubsub xmlns='{PUBSUB}'><items node='{node}'{extra}/></pubsub>")
    }

    fn item_ids(reply: &Stanza) -> Vec<String> {
        reply
            .payload()
            .and_then(|p| p.get_child("items", PUBSUB))
            .map(|items| {
                items
                    .children()
                    .filter_map(|i| i.attr("id").map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn roster(f: &Fixture, owner: &BareJid, contact: &str, sub: Subscription, group: &str) {
        let mut item = RosterItem::new(BareJid::parse(contact).unwrap());
        item.subscription = sub;
        if !group.is_empty() {
            item.groups = vec![group.to_owned()];
        }
        f.server.stores().put_item(owner, &item, 100).await.unwrap();
    }

    /// A disco#info answer advertising `notify` nodes, and its sha-1 `ver`.
    fn caps_answer(notify: &[&str]) -> (Element, String) {
        let mut xml = String::from(
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity category='client' type='pc' name='Test'/>",
        );
        for node in notify {
            xml.push_str(&format!("<feature var='{node}+notify'/>"));
        }
        xml.push_str("</query>");
        let query: Element = xml.parse().unwrap();
        let s = caps::verification_string(&query).unwrap();
        let ver = base64::engine::general_purpose::STANDARD.encode(Sha1::digest(s.as_bytes()));
        (query, ver)
    }

    /// Sends initial presence with caps for `notify` and answers the server's caps query;
    /// returns the presence state and every other stanza delivered meanwhile.
    async fn come_online(
        f: &Fixture,
        s: &mut TestSession,
        notify: &[&str],
    ) -> (PresenceState, Vec<Stanza>) {
        let (query, ver) = caps_answer(notify);
        let mut state = PresenceState::new(s.jid.clone(), s.id);
        let el: Element = format!(
            "<presence xmlns='jabber:client'><c xmlns='{}' hash='sha-1' \
             node='http://example.org/test' ver='{ver}'/></presence>",
            caps::CAPS
        )
        .parse()
        .unwrap();
        presence::from_client(&f.server, &mut state, el).await;
        let (requests, mut others): (Vec<Stanza>, Vec<Stanza>) =
            s.drain().into_iter().partition(|st| {
                st.kind() == Kind::Iq
                    && st.from().as_str() == "localhost"
                    && st.type_attr() == Some("get")
            });
        let request = requests.into_iter().next();
        if let Some(request) = request {
            let mut answer = element(
                "iq",
                ns::CLIENT,
                &[("type", "result"), ("id", request.id().unwrap())],
            );
            answer.append_child(query);
            let stanza = Stanza::new(
                answer,
                s.jid.clone().into(),
                Jid::parse("localhost").unwrap(),
            )
            .unwrap();
            let mut arg = UserSendPacket {
                session: s.jid.clone(),
                stanza,
            };
            let modules = f.server.host_modules("localhost").unwrap();
            let result = modules
                .hooks()
                .user_send_packet
                .run(&f.server, &mut arg)
                .await;
            assert_eq!(result, HookResult::Stop, "the caps answer is consumed");
        }
        others.extend(s.drain());
        (state, others)
    }

    /// The `(node, item ids)` of the PEP events among `stanzas`, and whether they carried a delay.
    fn events(stanzas: &[Stanza]) -> Vec<(String, Vec<String>, bool)> {
        stanzas
            .iter()
            .filter(|s| s.kind() == Kind::Message && s.type_attr() == Some("headline"))
            .filter_map(|s| {
                let items = s
                    .element()
                    .get_child("event", PUBSUB_EVENT)?
                    .get_child("items", PUBSUB_EVENT)?;
                Some((
                    items.attr("node")?.to_owned(),
                    items
                        .children()
                        .filter_map(|i| i.attr("id").map(str::to_owned))
                        .collect(),
                    s.element().get_child("delay", ns::DELAY).is_some(),
                ))
            })
            .collect()
    }

    #[tokio::test]
    async fn publish_auto_creates_and_items_are_retrieved() {
        let f = Fixture::new().await;
        f.account("alice@localhost").await;
        let mut alice = f.session("alice@localhost/a").await;
        let reply = alice
            .iq(
                "alice@localhost",
                "set",
                &publish(AVATAR, "v1", &metadata("v1"), ""),
            )
            .await;
        assert_eq!(reply.type_attr(), Some("result"), "{reply:?}");
        let published = reply
            .payload()
            .and_then(|p| p.get_child("publish", PUBSUB))
            .and_then(|p| p.get_child("item", PUBSUB))
            .and_then(|i| i.attr("id"));
        assert_eq!(published, Some("v1"));
        // Default PEP configuration: one item, so a second publish replaces the first.
        alice
            .iq(
                "alice@localhost",
                "set",
                &publish(AVATAR, "v2", &metadata("v2"), ""),
            )
            .await;
        let reply = alice
            .iq("alice@localhost", "get", &get_items(AVATAR, ""))
            .await;
        assert_eq!(item_ids(&reply), vec!["v2"]);
        let item = reply
            .payload()
            .and_then(|p| p.get_child("items", PUBSUB))
            .and_then(|i| i.get_child("item", PUBSUB))
            .and_then(|i| i.get_child("metadata", AVATAR));
        assert!(item.is_some(), "payload comes back");
        // No id: the server makes one.
        let reply = alice
            .iq(
                "alice@localhost",
                "set",
                &format!(
                    "<pubsub xmlns='{PUBSUB}'><publish node='urn:xmpp:tune'><item>\
                     <tune xmlns='urn:xmpp:tune'/></item></publish></pubsub>"
                ),
            )
            .await;
        assert_eq!(reply.type_attr(), Some("result"));
        let reply = alice
            .iq("alice@localhost", "get", &get_items("urn:xmpp:tune", ""))
            .await;
        assert_eq!(item_ids(&reply).len(), 1);
        // Configuration shows the defaults.
        let reply = alice
            .iq(
                "alice@localhost",
                "get",
                &format!("<pubsub xmlns='{PUBSUB_OWNER}'><configure node='{AVATAR}'/></pubsub>"),
            )
            .await;
        let xml = String::from_utf8(reply.bytes().to_vec()).unwrap();
        assert!(xml.contains("<value>presence</value>"), "{xml}");
        assert!(xml.contains("<value>on_sub_and_presence</value>"), "{xml}");
        // Unknown node.
        let reply = alice
            .iq("alice@localhost", "get", &get_items("nope", ""))
            .await;
        assert_eq!(error_condition(&reply), Some(C::ItemNotFound));
    }

    #[tokio::test]
    async fn malformed_publishes_are_refused() {
        let f = Fixture::new().await;
        f.account("alice@localhost").await;
        let mut alice = f.session("alice@localhost/a").await;
        for bad in [
            format!(
                "<pubsub xmlns='{PUBSUB}'><publish><item id='1'><a xmlns='b'/></item></publish></pubsub>"
            ),
            format!("<pubsub xmlns='{PUBSUB}'><publish node='n'/></pubsub>"),
            format!("<pubsub xmlns='{PUBSUB}'><publish node='n'><item id='1'/></publish></pubsub>"),
            format!(
                "<pubsub xmlns='{PUBSUB}'><publish node='n'><item id='1'><a xmlns='b'/>\
                 <c xmlns='d'/></item></publish></pubsub>"
            ),
        ] {
            let reply = alice.iq("alice@localhost", "set", &bad).await;
            assert_eq!(error_condition(&reply), Some(C::BadRequest), "{bad}");
        }
        let reply = alice
            .iq(
                "alice@localhost",
                "set",
                &format!(
                    "<pubsub xmlns='{PUBSUB}'><subscribe node='n' jid='alice@localhost'/></pubsub>"
                ),
            )
            .await;
        assert_eq!(error_condition(&reply), Some(C::FeatureNotImplemented));
    }

    #[tokio::test]
    async fn access_models_decide_who_reads() {
        let f = Fixture::new().await;
        let alice = f.account("alice@localhost").await;
        f.account("bob@localhost").await;
        let mut a = f.session("alice@localhost/a").await;
        let mut bob = f.session("bob@localhost/b").await;
        a.iq(
            "alice@localhost",
            "set",
            &publish(AVATAR, "v1", &metadata("v1"), ""),
        )
        .await;
        // Nobody else may publish to Alice's nodes.
        let reply = bob
            .iq(
                "alice@localhost",
                "set",
                &publish(AVATAR, "x", &metadata("x"), ""),
            )
            .await;
        assert_eq!(error_condition(&reply), Some(C::Forbidden));
        // Presence access: a stranger, or a contact without `from`, is not authorised.
        let reply = bob
            .iq("alice@localhost", "get", &get_items(AVATAR, ""))
            .await;
        assert_eq!(error_condition(&reply), Some(C::NotAuthorized));
        roster(&f, &alice, "bob@localhost", Subscription::To, "").await;
        let reply = bob
            .iq("alice@localhost", "get", &get_items(AVATAR, ""))
            .await;
        assert_eq!(error_condition(&reply), Some(C::NotAuthorized));
        roster(&f, &alice, "bob@localhost", Subscription::Both, "Friends").await;
        let reply = bob
            .iq("alice@localhost", "get", &get_items(AVATAR, ""))
            .await;
        assert_eq!(item_ids(&reply), vec!["v1"]);
        // Whitelist: the owner only.
        let opts = options(&[
            ("pubsub#access_model", "whitelist"),
            ("pubsub#persist_items", "true"),
        ]);
        let reply = a
            .iq(
                "alice@localhost",
                "set",
                &publish(
                    BOOKMARKS,
                    "room@muc",
                    "<conference xmlns='urn:xmpp:bookmarks:1'/>",
                    &opts,
                ),
            )
            .await;
        assert_eq!(reply.type_attr(), Some("result"));
        let reply = bob
            .iq("alice@localhost", "get", &get_items(BOOKMARKS, ""))
            .await;
        assert_eq!(error_condition(&reply), Some(C::NotAllowed));
        let reply = a
            .iq("alice@localhost", "get", &get_items(BOOKMARKS, ""))
            .await;
        assert_eq!(item_ids(&reply), vec!["room@muc"]);
        // Roster access by group; open for anyone.
        let roster_opts = |group: &str| {
            format!(
                "<publish-options><x xmlns='jabber:x:data' type='submit'>\
                 <field var='pubsub#access_model'><value>roster</value></field>\
                 <field var='pubsub#roster_groups_allowed'><value>{group}</value></field>\
                 </x></publish-options>"
            )
        };
        a.iq(
            "alice@localhost",
            "set",
            &publish("urn:xmpp:work", "1", "<w xmlns='w'/>", &roster_opts("Work")),
        )
        .await;
        a.iq(
            "alice@localhost",
            "set",
            &publish(
                "urn:xmpp:friends",
                "1",
                "<w xmlns='w'/>",
                &roster_opts("Friends"),
            ),
        )
        .await;
        let reply = bob
            .iq("alice@localhost", "get", &get_items("urn:xmpp:work", ""))
            .await;
        assert_eq!(error_condition(&reply), Some(C::NotAuthorized));
        let reply = bob
            .iq("alice@localhost", "get", &get_items("urn:xmpp:friends", ""))
            .await;
        assert_eq!(item_ids(&reply), vec!["1"]);
        let open = options(&[("pubsub#access_model", "open")]);
        a.iq(
            "alice@localhost",
            "set",
            &publish("urn:xmpp:open", "1", "<o xmlns='o'/>", &open),
        )
        .await;
        let mut stranger = f.session("zed@localhost/z").await;
        let reply = stranger
            .iq("alice@localhost", "get", &get_items("urn:xmpp:open", ""))
            .await;
        assert_eq!(item_ids(&reply), vec!["1"]);
        // disco#items lists what the requester may read.
        let reply = stranger
            .iq(
                "alice@localhost",
                "get",
                "<query xmlns='http://jabber.org/protocol/disco#items'/>",
            )
            .await;
        let nodes: Vec<&str> = reply
            .payload()
            .unwrap()
            .children()
            .filter_map(|c| c.attr("node"))
            .collect();
        assert_eq!(nodes, vec!["urn:xmpp:open"]);
    }

    #[tokio::test]
    async fn publish_options_preconditions_and_max_items() {
        let f = Fixture::new().await;
        f.account("alice@localhost").await;
        let mut a = f.session("alice@localhost/a").await;
        let opts = options(&[
            ("pubsub#persist_items", "true"),
            ("pubsub#max_items", "max"),
            ("pubsub#send_last_published_item", "never"),
            ("pubsub#access_model", "whitelist"),
        ]);
        for id in ["one", "two", "three"] {
            let reply = a
                .iq(
                    "alice@localhost",
                    "set",
                    &publish(
                        BOOKMARKS,
                        id,
                        "<conference xmlns='urn:xmpp:bookmarks:1'/>",
                        &opts,
                    ),
                )
                .await;
            assert_eq!(reply.type_attr(), Some("result"), "{id}");
        }
        let reply = a
            .iq("alice@localhost", "get", &get_items(BOOKMARKS, ""))
            .await;
        assert_eq!(item_ids(&reply), vec!["three", "two", "one"]);
        let reply = a
            .iq(
                "alice@localhost",
                "get",
                &get_items(BOOKMARKS, " max_items='2'"),
            )
            .await;
        assert_eq!(item_ids(&reply), vec!["three", "two"]);
        let by_id = format!(
            "<pubsub xmlns='{PUBSUB}'><items node='{BOOKMARKS}'><item id='one'/><item id='x'/>\
             </items></pubsub>"
        );
        let reply = a.iq("alice@localhost", "get", &by_id).await;
        assert_eq!(item_ids(&reply), vec!["one"]);
        // A precondition that does not hold.
        let other = options(&[("pubsub#access_model", "presence")]);
        let reply = a
            .iq(
                "alice@localhost",
                "set",
                &publish(
                    BOOKMARKS,
                    "four",
                    "<c xmlns='urn:xmpp:bookmarks:1'/>",
                    &other,
                ),
            )
            .await;
        assert_eq!(error_condition(&reply), Some(C::Conflict));
        assert!(
            crate::fixture::error_of(&reply)
                .unwrap()
                .text
                .unwrap()
                .contains("precondition-not-met")
        );
        // An impossible value is not acceptable.
        let huge = options(&[("pubsub#max_items", "100000000")]);
        let reply = a
            .iq(
                "alice@localhost",
                "set",
                &publish("n2", "1", "<c xmlns='c'/>", &huge),
            )
            .await;
        assert_eq!(error_condition(&reply), Some(C::NotAcceptable));
        // Reconfiguring to two items trims the node; retract and delete.
        let configure = format!(
            "<pubsub xmlns='{PUBSUB_OWNER}'><configure node='{BOOKMARKS}'>\
             <x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
             <value>{NODE_CONFIG}</value></field><field var='pubsub#max_items'><value>2</value>\
             </field></x></configure></pubsub>"
        );
        let reply = a.iq("alice@localhost", "set", &configure).await;
        assert_eq!(reply.type_attr(), Some("result"));
        let reply = a
            .iq("alice@localhost", "get", &get_items(BOOKMARKS, ""))
            .await;
        assert_eq!(item_ids(&reply), vec!["three", "two"]);
        let retract = format!(
            "<pubsub xmlns='{PUBSUB}'><retract node='{BOOKMARKS}'><item id='two'/></retract></pubsub>"
        );
        let reply = a.iq("alice@localhost", "set", &retract).await;
        assert_eq!(reply.type_attr(), Some("result"));
        let reply = a.iq("alice@localhost", "set", &retract).await;
        assert_eq!(error_condition(&reply), Some(C::ItemNotFound));
        let delete =
            format!("<pubsub xmlns='{PUBSUB_OWNER}'><delete node='{BOOKMARKS}'/></pubsub>");
        let mut bob = f.session("bob@localhost/b").await;
        let reply = bob.iq("alice@localhost", "set", &delete).await;
        assert_eq!(error_condition(&reply), Some(C::Forbidden));
        let reply = a.iq("alice@localhost", "set", &delete).await;
        assert_eq!(reply.type_attr(), Some("result"));
        let reply = a
            .iq("alice@localhost", "get", &get_items(BOOKMARKS, ""))
            .await;
        assert_eq!(error_condition(&reply), Some(C::ItemNotFound));
    }

    #[tokio::test]
    async fn notifications_follow_caps_and_access() {
        let f = Fixture::new().await;
        let alice = f.account("alice@localhost").await;
        let bob = f.account("bob@localhost").await;
        f.account("carol@localhost").await;
        roster(&f, &alice, "bob@localhost", Subscription::Both, "").await;
        roster(&f, &bob, "alice@localhost", Subscription::Both, "").await;
        roster(&f, &alice, "carol@localhost", Subscription::Both, "").await;
        let mut a = f.session("alice@localhost/a").await;
        let mut b = f.session("bob@localhost/b").await;
        let mut c = f.session("carol@localhost/c").await;
        let _pa = come_online(&f, &mut a, &[AVATAR]).await;
        let _pb = come_online(&f, &mut b, &[AVATAR, BOOKMARKS]).await;
        // Carol's client does not ask for avatars.
        let _pc = come_online(&f, &mut c, &["urn:xmpp:tune"]).await;
        a.drain();
        b.drain();
        c.drain();
        a.iq(
            "alice@localhost",
            "set",
            &publish(AVATAR, "v1", &metadata("v1"), ""),
        )
        .await;
        assert_eq!(
            events(&b.drain()),
            vec![(AVATAR.to_owned(), vec!["v1".to_owned()], false)]
        );
        assert_eq!(
            events(&a.drain()),
            vec![(AVATAR.to_owned(), vec!["v1".to_owned()], false)]
        );
        assert!(events(&c.drain()).is_empty());
        // Whitelisted bookmarks reach the owner only, even if Bob wants bookmarks.
        let opts = options(&[("pubsub#access_model", "whitelist")]);
        a.iq(
            "alice@localhost",
            "set",
            &publish(
                BOOKMARKS,
                "r",
                "<conference xmlns='urn:xmpp:bookmarks:1'/>",
                &opts,
            ),
        )
        .await;
        assert!(events(&b.drain()).is_empty());
        // A later session of Bob gets the last avatar on its initial presence, delayed.
        let mut b2 = f.session("bob@localhost/b2").await;
        let (_pb2, delivered) = come_online(&f, &mut b2, &[AVATAR, BOOKMARKS]).await;
        let got = events(&delivered);
        assert_eq!(got, vec![(AVATAR.to_owned(), vec!["v1".to_owned()], true)]);
        // Retraction with notify.
        let retract = format!(
            "<pubsub xmlns='{PUBSUB}'><retract node='{AVATAR}' notify='true'><item id='v1'/></retract></pubsub>"
        );
        a.iq("alice@localhost", "set", &retract).await;
        let retracted = b.drain().into_iter().any(|s| {
            s.element()
                .get_child("event", PUBSUB_EVENT)
                .and_then(|e| e.get_child("items", PUBSUB_EVENT))
                .and_then(|i| i.get_child("retract", PUBSUB_EVENT))
                .is_some()
        });
        assert!(retracted);
    }

    #[tokio::test]
    async fn removing_the_account_removes_its_nodes() {
        let f = Fixture::new().await;
        let alice = f.account("alice@localhost").await;
        let mut a = f.session("alice@localhost/a").await;
        a.iq(
            "alice@localhost",
            "set",
            &publish(AVATAR, "v1", &metadata("v1"), ""),
        )
        .await;
        assert!(f.server.remove_user(&alice, "bye").await.unwrap());
        assert!(
            f.server
                .stores()
                .pep_nodes(&alice)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn forms_parse_apply_and_compare() {
        let x: Element = format!(
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
             <value>{PUBLISH_OPTIONS}</value></field>\
             <field var='pubsub#access_model'><value>whitelist</value></field>\
             <field var='pubsub#max_items'><value>max</value></field>\
             <field var='pubsub#persist_items'><value>1</value></field>\
             <field var='pubsub#unknown'><value>x</value></field></x>"
        )
        .parse()
        .unwrap();
        let form = ConfigForm::parse(&x, 50).unwrap();
        assert_eq!(form.max_items, Some(50));
        let mut node = default_node("n");
        assert!(!form.holds_on(&node));
        form.apply(&mut node);
        assert_eq!(node.access_model, "whitelist");
        assert_eq!(node.max_items, 50);
        assert!(ConfigForm::parse(&x, 50).unwrap().holds_on(&node));
        let bad: Element = "<x xmlns='jabber:x:data' type='submit'>\
             <field var='pubsub#access_model'><value>authorize</value></field></x>"
            .parse()
            .unwrap();
        assert!(ConfigForm::parse(&bad, 50).is_err());
        // The configuration form lists what it holds.
        let form = config_form(&node);
        let parsed = ConfigForm::parse(&form, 50).unwrap();
        assert!(parsed.holds_on(&node));
    }
}
