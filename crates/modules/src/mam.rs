//! `mod_mam`: XEP-0313 message archive management (`urn:xmpp:mam:2`) for user archives, with
//! XEP-0059 result set management and XEP-0359 stanza ids.
//!
//! **Archiving** (XEP-0313 §3.1, §5). Two hooks, both at [`HOOK_PRIORITY`] so that blocking
//! and privacy (lower priorities) drop a stanza before it is archived and carbons (higher)
//! copy it with its `<stanza-id/>`:
//! - `user_send_packet`: a message the user sends is archived in the sender's archive
//!   (outgoing). A message to the user's own bare or full JID (notes to self) is archived
//!   once, here, and stamped with its `<stanza-id/>` before routing.
//! - `sm_receive_packet`: a message for a local account is archived in the recipient's
//!   archive (incoming) and stamped `<stanza-id xmlns='urn:xmpp:sid:0' by='user@host'
//!   id='ID'/>`. Any `<stanza-id/>` with the same `by` that the sender put there is removed
//!   first, archived or not (XEP-0359 §3.1, anti-spoofing).
//!
//! Archived: `chat` and `normal` messages with a `<body/>`, or with the XEP-0334 `<store/>`
//! hint. Never archived: errors, `groupchat` (MUC archives are the room's), `headline`,
//! and messages with `<no-store/>` or `<no-permanent-store/>`. Messages to accounts that do
//! not exist are not archived (they bounce).
//!
//! **Preferences** (XEP-0313 §7): `<prefs/>` get/set, stored. A JID in `never` is not
//! archived, one in `always` is; otherwise the user's default applies (`always`, `never`, or
//! `roster`: the contact has a roster item, whatever its subscription). A user who never set
//! preferences has the module's `default` option, `always` unless configured: Prosody's
//! default, what ejabberd's example configuration sets, and what clients syncing history
//! across devices expect (ejabberd's built-in `never` would archive nothing by default).
//!
//! **Archive ids** are per-node monotonic µs timestamps ([`next_archive_id`]), retried when
//! another node used the same µs for the same user (DESIGN §6). They are the stanza-id, the
//! RSM key and the archive time, and are written as decimal strings (like ejabberd's).
//!
//! **Queries** (XEP-0313 §4): `<query queryid=..>` `set` with the XEP-0004 form fields
//! `with` (bare: any resource; full: that resource), `start`, `end` (XEP-0082, inclusive),
//! `before-id`, `after-id` and `ids` (`#extended`), and RSM `<max/>`, `<after/>`,
//! `<before/>` (empty: the last page) and `<index/>`. A page without `<max/>` has
//! [`DEFAULT_PAGE_SIZE`] messages; `max_page_size` caps it. Each result is a
//! `<message><result queryid id><forwarded><delay/><message/></forwarded></result></message>`
//! delivered to the querying session, oldest first, before the IQ result `<fin complete>`
//! with `<set><first/><last/><count/></set>`. An unknown or malformed id in `after`,
//! `before`, `after-id` or `before-id` is `<item-not-found/>`; an unknown form field is
//! `<bad-request/>`. `get` on `<query/>` returns the form (§4.1.5), `get` on `<metadata/>`
//! the first and last archive ids (§6.1). Only the account itself may query or configure
//! its archive (`<forbidden/>` otherwise).
//!
//! **Retention**: `archive_expires_after` (a duration, default `infinity`). Expired messages
//! are never returned (queries start at the cutoff) and are deleted from a user's archive
//! whenever a message is added to it (one index seek when nothing has expired); there is no
//! periodic sweep yet, so an archive that receives nothing keeps its rows until it does.
//! Deleting an account deletes its archive and preferences (`remove_user` hook).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use minidom::Node;
use starling_config::{ModuleOptions, ModuleSpec, OptionKind, OptionSpec};
use starling_core::BoxFuture;
use starling_core::Server;
use starling_core::hooks::{Hook, HookResult, RemoveUser, SmReceivePacket, UserSendPacket};
use starling_core::module::{
    HostContext, IqHandler, IqResult, IqTarget, Module, ModuleError, Registrations,
};
use starling_storage::{
    ArchivePage, ArchivePolicy, ArchivePrefs, ArchiveQuery, ArchiveWith, ArchivedMessage,
    Direction, StorageError,
};
use starling_xmpp::Element;
use starling_xmpp::error::{StanzaError, StanzaErrorCondition};
use starling_xmpp::jid::{BareJid, Jid};
use starling_xmpp::ns;
use starling_xmpp::stanza::{IqType, Kind, MessageType, Stanza, element, text_element};

use crate::iq;
use crate::time::format_datetime;

/// XEP-0313 v1 namespace.
pub const NS_MAM: &str = "urn:xmpp:mam:2";
/// XEP-0313 `before-id`, `after-id`, `ids` and metadata.
pub const NS_MAM_EXTENDED: &str = "urn:xmpp:mam:2#extended";
/// XEP-0359 unique and stable stanza ids.
pub const NS_SID: &str = "urn:xmpp:sid:0";
/// XEP-0059 result set management.
pub const NS_RSM: &str = "http://jabber.org/protocol/rsm";
/// XEP-0297 stanza forwarding.
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";
/// XEP-0334 message processing hints.
pub const NS_HINTS: &str = "urn:xmpp:hints";

/// Page size when the query has no RSM `<max/>` (ejabberd's).
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest page, and the default of `max_page_size` (ejabberd's hard limit).
pub const MAX_PAGE_SIZE: u32 = 250;
/// Most JIDs in one preference list.
pub const MAX_PREFS_JIDS: usize = 1000;
/// Priority of the archiving hooks: after blocking/privacy, before carbons.
pub const HOOK_PRIORITY: i32 = 50;
/// Attempts at a fresh id when the store reports the id as taken.
const ID_ATTEMPTS: usize = 5;

const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "default",
        kind: OptionKind::Enum(&["always", "never", "roster"]),
        doc: "Archiving policy for users who set no preferences (default always).",
    },
    OptionSpec {
        name: "max_page_size",
        kind: OptionKind::Int {
            min: 1,
            max: MAX_PAGE_SIZE as i64,
        },
        doc: "Most messages per result page, 1-250 (default 250; pages without <max/> hold \
              50 or this, whichever is less).",
    },
    OptionSpec {
        name: "archive_expires_after",
        kind: OptionKind::Duration,
        doc: "Messages older than this are deleted (default infinity: kept forever).",
    },
];

/// `mod_mam`.
pub struct Mam;

impl Module for Mam {
    fn spec(&self) -> ModuleSpec {
        ModuleSpec {
            name: "mod_mam",
            aliases: &["mam"],
            options: OPTIONS,
        }
    }

    fn start(
        &self,
        _host: &HostContext<'_>,
        options: &ModuleOptions,
    ) -> Result<Registrations, ModuleError> {
        let settings = Arc::new(Settings::from_options(options));
        let mut registrations = Registrations::default()
            .iq(NS_MAM, IqTarget::Account, Arc::new(MamIq(settings.clone())))
            .feature(NS_MAM_EXTENDED, IqTarget::Account)
            .feature(NS_SID, IqTarget::Account);
        let hooks = &mut registrations.hooks;
        hooks
            .user_send_packet
            .add(HOOK_PRIORITY, Arc::new(ArchiveSent(settings.clone())));
        hooks
            .sm_receive_packet
            .add(HOOK_PRIORITY, Arc::new(ArchiveReceived(settings)));
        hooks
            .remove_user
            .add(HOOK_PRIORITY, Arc::new(RemoveArchive));
        Ok(registrations)
    }
}

/// The validated options of one host.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Settings {
    default: ArchivePolicy,
    max_page: u32,
    /// `None` for infinity.
    expires_after: Option<Duration>,
}

impl Settings {
    fn from_options(options: &ModuleOptions) -> Self {
        let default = options
            .string("default")
            .and_then(ArchivePolicy::parse)
            .unwrap_or(ArchivePolicy::Always);
        let max_page = options
            .int("max_page_size")
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(MAX_PAGE_SIZE)
            .clamp(1, MAX_PAGE_SIZE);
        let expires_after = options
            .duration("archive_expires_after")
            .filter(|d| *d != Duration::MAX);
        Self {
            default,
            max_page,
            expires_after,
        }
    }

    /// The oldest id still kept at `now` (µs), if messages expire.
    fn cutoff(&self, now: i64) -> Option<i64> {
        let age = i64::try_from(self.expires_after?.as_micros()).ok()?;
        Some(now.saturating_sub(age))
    }
}

// --- archive ids ---

/// The last id handed out by this node.
static LAST_ID: AtomicI64 = AtomicI64::new(0);

/// The next archive id: the current time in µs, or one more than the previous id if the
/// clock has not moved on (or went back), so ids on one node strictly increase.
pub fn next_archive_id() -> i64 {
    let now = now_micros();
    let step = |prev: i64| now.max(prev.saturating_add(1));
    match LAST_ID.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |prev| Some(step(prev))) {
        Ok(prev) | Err(prev) => step(prev),
    }
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// An id as written in stanzas.
fn format_id(id: i64) -> String {
    id.to_string()
}

/// An id from a client; anything else than a non-negative decimal is no archived id.
fn parse_id(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

// --- what is archived ---

/// XEP-0313 §5.1.1 / XEP-0334: whether a message stanza element is archived at all.
pub fn is_archivable(message: &Element) -> bool {
    match MessageType::parse(message.attr("type")) {
        MessageType::Chat | MessageType::Normal => {}
        MessageType::Groupchat | MessageType::Headline | MessageType::Error => return false,
    }
    let hint = |name: &str| message.has_child(name, NS_HINTS);
    if hint("no-store") || hint("no-permanent-store") {
        return false;
    }
    let body_ns = message.ns();
    message.has_child("body", body_ns.as_str()) || hint("store")
}

fn is_stanza_id_by(child: &Element, by: &BareJid) -> bool {
    child.is("stanza-id", NS_SID) && child.attr("by") == Some(by.as_str())
}

/// A copy of `message` in the `jabber:client` namespace (stanzas from s2s are in
/// `jabber:server`, but archived and forwarded copies are read by clients), without the
/// stanza ids claiming to be by `owner`.
fn storable_copy(message: &Element, owner: &BareJid) -> Element {
    let mut copy = to_client_ns(message);
    let nodes = copy.take_nodes();
    for node in nodes {
        match node {
            Node::Element(child) if is_stanza_id_by(&child, owner) => {}
            node => copy.append_node(node),
        }
    }
    copy
}

fn to_client_ns(el: &Element) -> Element {
    if el.ns() != ns::SERVER {
        return el.clone();
    }
    let mut out = Element::bare(el.name(), ns::CLIENT);
    *out.attrs_mut() = el.attrs().clone();
    for node in el.nodes() {
        match node {
            Node::Element(child) => {
                out.append_child(to_client_ns(child));
            }
            Node::Text(text) => out.append_text_node(text.clone()),
        }
    }
    out
}

/// `stanza` without `<stanza-id/>`s by `owner`, plus ours with `id` if given.
fn restamp(stanza: &Stanza, owner: &BareJid, id: Option<i64>) -> Option<Stanza> {
    let mut el = stanza.element().clone();
    let nodes = el.take_nodes();
    for node in nodes {
        match node {
            Node::Element(child) if is_stanza_id_by(&child, owner) => {}
            node => el.append_node(node),
        }
    }
    if let Some(id) = id {
        el.append_child(element(
            "stanza-id",
            NS_SID,
            &[("by", owner.as_str()), ("id", &format_id(id))],
        ));
    }
    Stanza::new(el, stanza.from().clone(), stanza.to().clone()).ok()
}

/// XEP-0313 §7: whether messages between `owner` and `peer` are archived.
async fn policy_allows(
    server: &Server,
    settings: &Settings,
    owner: &BareJid,
    peer: &Jid,
) -> Result<bool, StorageError> {
    let prefs = server.stores().archive_prefs(owner).await?;
    let (default, always, never) = match &prefs {
        Some(p) => (p.default, p.always.as_slice(), p.never.as_slice()),
        None => (settings.default, &[][..], &[][..]),
    };
    let peer_bare = peer.to_bare();
    // A bare JID in a list matches every resource; a full JID only itself.
    let listed = |list: &[Jid]| {
        list.iter()
            .any(|j| j == peer || (j.is_bare() && *j == peer_bare))
    };
    if listed(never) {
        return Ok(false);
    }
    if listed(always) {
        return Ok(true);
    }
    Ok(match default {
        ArchivePolicy::Always => true,
        ArchivePolicy::Never => false,
        ArchivePolicy::Roster => server.stores().item(owner, &peer_bare).await?.is_some(),
    })
}

/// Archives `message` (already a storable copy) in `owner`'s archive; returns its id.
async fn archive(
    server: &Server,
    settings: &Settings,
    owner: &BareJid,
    peer: &Jid,
    direction: Direction,
    message: &Element,
) -> Option<i64> {
    let stanza = match String::from_utf8(starling_xmpp::codec::to_bytes(message)) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(user = %owner, error = %e, "cannot serialise message to archive");
            return None;
        }
    };
    let mut archived = ArchivedMessage {
        id: 0,
        with: peer.to_bare(),
        with_resource: peer.resource().unwrap_or_default().to_owned(),
        direction,
        stanza,
    };
    for _ in 0..ID_ATTEMPTS {
        archived.id = next_archive_id();
        let cutoff = settings.cutoff(archived.id);
        match server
            .stores()
            .archive_message(owner, &archived, cutoff)
            .await
        {
            Ok(()) => return Some(archived.id),
            // Another node took this µs for this user: take a later one.
            Err(StorageError::AlreadyExists) => {}
            Err(e) => {
                tracing::error!(user = %owner, error = %e, "cannot archive message");
                return None;
            }
        }
    }
    tracing::error!(user = %owner, "cannot archive message: no free archive id");
    None
}

/// Policy check and archiving, with failures logged: archiving never stops a message.
async fn archive_if_allowed(
    server: &Server,
    settings: &Settings,
    owner: &BareJid,
    peer: &Jid,
    direction: Direction,
    message: &Element,
) -> Option<i64> {
    match policy_allows(server, settings, owner, peer).await {
        Ok(true) => {}
        Ok(false) => return None,
        Err(e) => {
            tracing::error!(user = %owner, error = %e, "cannot load archiving preferences");
            return None;
        }
    }
    let copy = storable_copy(message, owner);
    archive(server, settings, owner, peer, direction, &copy).await
}

/// `user_send_packet`: outgoing messages, in the sender's archive.
struct ArchiveSent(Arc<Settings>);

impl Hook<UserSendPacket> for ArchiveSent {
    fn call<'a>(
        &'a self,
        server: &'a Server,
        arg: &'a mut UserSendPacket,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            if arg.stanza.kind() != Kind::Message || !is_archivable(arg.stanza.element()) {
                return HookResult::Continue;
            }
            let owner = arg.session.to_bare();
            let peer = arg.stanza.to().clone();
            let id = archive_if_allowed(
                server,
                &self.0,
                &owner,
                &peer,
                Direction::Outgoing,
                arg.stanza.element(),
            )
            .await;
            // A note to self is archived once, here; the receiving side leaves it alone, so
            // it gets its stanza-id now.
            if peer.to_bare() == owner
                && let Some(stamped) = restamp(&arg.stanza, &owner, id)
            {
                arg.stanza = stamped;
            }
            HookResult::Continue
        })
    }
}

/// `sm_receive_packet`: incoming messages, in the recipient's archive, stamped.
struct ArchiveReceived(Arc<Settings>);

impl Hook<SmReceivePacket> for ArchiveReceived {
    fn call<'a>(
        &'a self,
        server: &'a Server,
        arg: &'a mut SmReceivePacket,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            if arg.stanza.kind() != Kind::Message {
                return HookResult::Continue;
            }
            let owner = arg.user.clone();
            let from = arg.stanza.from().clone();
            if from.to_bare() == owner {
                // The user's own message to itself: archived and stamped when sent.
                return HookResult::Continue;
            }
            let spoofed = arg
                .stanza
                .element()
                .children()
                .any(|c| is_stanza_id_by(c, &owner));
            let id = if is_archivable(arg.stanza.element()) && account_exists(server, &owner).await
            {
                archive_if_allowed(
                    server,
                    &self.0,
                    &owner,
                    &from,
                    Direction::Incoming,
                    arg.stanza.element(),
                )
                .await
            } else {
                None
            };
            if (spoofed || id.is_some())
                && let Some(stamped) = restamp(&arg.stanza, &owner, id)
            {
                arg.stanza = stamped;
            }
            HookResult::Continue
        })
    }
}

/// True if `user` is an account here; a bound session proves it without a query.
async fn account_exists(server: &Server, user: &BareJid) -> bool {
    if !server.sm().sessions_of(user).is_empty() {
        return true;
    }
    match server.stores().exists(user).await {
        Ok(exists) => exists,
        Err(e) => {
            tracing::error!(%user, error = %e, "cannot check account");
            false
        }
    }
}

/// `remove_user`: the archive and preferences go with the account.
struct RemoveArchive;

impl Hook<RemoveUser> for RemoveArchive {
    fn call<'a>(
        &'a self,
        server: &'a Server,
        arg: &'a mut RemoveUser,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            if let Err(e) = server.stores().remove_archive(&arg.user).await {
                tracing::error!(user = %arg.user, error = %e, "cannot remove archive");
            }
            HookResult::Continue
        })
    }
}

// --- IQs ---

struct MamIq(Arc<Settings>);

impl IqHandler for MamIq {
    fn handle<'a>(&'a self, server: &'a Server, iq: &'a Stanza) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            let (kind, payload) = iq::request(iq)?;
            let user = iq::account(iq)?;
            if !iq::from_account_itself(iq) {
                return Err(iq::error(StanzaErrorCondition::Forbidden)
                    .with_text("only the owner may use this archive"));
            }
            match (kind, payload.name()) {
                (IqType::Get, "query") => Ok(Some(query_form())),
                (IqType::Set, "query") => run_query(server, &self.0, iq, &user, payload).await,
                (IqType::Get, "prefs") => {
                    let prefs = load_prefs(server, &self.0, &user).await?;
                    Ok(Some(prefs_element(&prefs)))
                }
                (IqType::Set, "prefs") => {
                    let prefs = parse_prefs(payload)?;
                    server
                        .stores()
                        .set_archive_prefs(&user, &prefs)
                        .await
                        .map_err(|e| iq::storage_failure("cannot store prefs", &user, &e))?;
                    // Answer with what is now in force (the store resolves duplicates).
                    let prefs = load_prefs(server, &self.0, &user).await?;
                    Ok(Some(prefs_element(&prefs)))
                }
                (IqType::Get, "metadata") => {
                    let bounds = server
                        .stores()
                        .archive_bounds(&user)
                        .await
                        .map_err(|e| iq::storage_failure("cannot read archive", &user, &e))?;
                    Ok(Some(metadata_element(bounds)))
                }
                _ => Err(iq::error(StanzaErrorCondition::FeatureNotImplemented)),
            }
        })
    }
}

/// XEP-0313 §4.1.5: the form of the fields a query accepts.
fn query_form() -> Element {
    let mut x = element("x", ns::DATA_FORMS, &[("type", "form")]);
    let mut form_type = element(
        "field",
        ns::DATA_FORMS,
        &[("var", "FORM_TYPE"), ("type", "hidden")],
    );
    form_type.append_child(text_element("value", ns::DATA_FORMS, NS_MAM));
    x.append_child(form_type);
    let fields = [
        ("with", "jid-single"),
        ("start", "text-single"),
        ("end", "text-single"),
        ("before-id", "text-single"),
        ("after-id", "text-single"),
        ("ids", "list-multi"),
    ];
    for (var, kind) in fields {
        let mut field = element("field", ns::DATA_FORMS, &[("var", var), ("type", kind)]);
        if var == "ids" {
            // XEP-0313 §4.1.4: ids take free values (XEP-0122 open validation).
            let mut validate = element(
                "validate",
                "http://jabber.org/protocol/xdata-validate",
                &[("datatype", "xs:string")],
            );
            validate.append_child(element(
                "open",
                "http://jabber.org/protocol/xdata-validate",
                &[],
            ));
            field.append_child(validate);
        }
        x.append_child(field);
    }
    let mut query = element("query", NS_MAM, &[]);
    query.append_child(x);
    query
}

/// A parsed query; `nothing` when an `ids` field named no id that can exist.
struct ParsedQuery {
    query: ArchiveQuery,
    nothing: bool,
}

fn bad_request(text: &str) -> StanzaError {
    iq::error(StanzaErrorCondition::BadRequest).with_text(text)
}

fn not_found() -> StanzaError {
    iq::error(StanzaErrorCondition::ItemNotFound).with_text("no such message in the archive")
}

/// Reads the form and RSM set of a `<query/>` (XEP-0313 §4.1, XEP-0059 §2).
fn parse_query(payload: &Element, max_page: u32) -> Result<ParsedQuery, StanzaError> {
    let mut parsed = ParsedQuery {
        query: ArchiveQuery::default(),
        nothing: false,
    };
    let q = &mut parsed.query;
    if let Some(x) = payload.get_child("x", ns::DATA_FORMS) {
        for field in x.children().filter(|c| c.is("field", ns::DATA_FORMS)) {
            let values: Vec<String> = field
                .children()
                .filter(|c| c.is("value", ns::DATA_FORMS))
                .map(Element::text)
                .collect();
            let value = values.first().map(|v| v.trim()).unwrap_or_default();
            match field.attr("var").unwrap_or_default() {
                "FORM_TYPE" => {
                    if !value.is_empty() && value != NS_MAM {
                        return Err(bad_request("unexpected FORM_TYPE"));
                    }
                }
                _ if value.is_empty() && values.len() <= 1 => {
                    // An empty field is no filter (clients echo the form back).
                }
                "with" => {
                    let jid = Jid::parse(value).map_err(|_| bad_request("malformed 'with' JID"))?;
                    q.with = Some(match jid.resource() {
                        Some(resource) => ArchiveWith::Full(jid.to_bare(), resource.to_owned()),
                        None => ArchiveWith::Bare(jid.to_bare()),
                    });
                }
                "start" => {
                    q.start = Some(
                        parse_datetime(value).ok_or_else(|| bad_request("malformed 'start'"))?,
                    );
                }
                "end" => {
                    q.end =
                        Some(parse_datetime(value).ok_or_else(|| bad_request("malformed 'end'"))?);
                }
                "after-id" => q.after_id = Some(parse_id(value).ok_or_else(not_found)?),
                "before-id" => q.before_id = Some(parse_id(value).ok_or_else(not_found)?),
                "ids" => {
                    if values.len() > max_page as usize {
                        return Err(bad_request("too many ids"));
                    }
                    q.ids = values.iter().filter_map(|v| parse_id(v.trim())).collect();
                    parsed.nothing = q.ids.is_empty();
                }
                _ => return Err(bad_request("unsupported field")),
            }
        }
    }
    let mut max = None;
    if let Some(set) = payload.get_child("set", NS_RSM) {
        if let Some(m) = set.get_child("max", NS_RSM) {
            let m: u32 = m
                .text()
                .trim()
                .parse()
                .map_err(|_| bad_request("malformed <max/>"))?;
            max = Some(m);
        }
        if let Some(after) = set.get_child("after", NS_RSM) {
            let text = after.text();
            if !text.trim().is_empty() {
                q.page_after = Some(parse_id(text.trim()).ok_or_else(not_found)?);
            }
        }
        if let Some(before) = set.get_child("before", NS_RSM) {
            // XEP-0059 §2.5: an empty <before/> asks for the last page.
            q.from_end = true;
            let text = before.text();
            if !text.trim().is_empty() {
                q.page_before = Some(parse_id(text.trim()).ok_or_else(not_found)?);
            }
        }
        if let Some(index) = set.get_child("index", NS_RSM) {
            q.offset = index
                .text()
                .trim()
                .parse()
                .map_err(|_| bad_request("malformed <index/>"))?;
        }
    }
    q.max = max.unwrap_or(DEFAULT_PAGE_SIZE.min(max_page)).min(max_page);
    Ok(parsed)
}

async fn run_query(
    server: &Server,
    settings: &Settings,
    iq: &Stanza,
    user: &BareJid,
    payload: &Element,
) -> IqResult {
    let ParsedQuery { mut query, nothing } = parse_query(payload, settings.max_page)?;
    if let Some(cutoff) = settings.cutoff(now_micros()) {
        query.start = Some(query.start.map_or(cutoff, |s| s.max(cutoff)));
    }
    let page = if nothing {
        ArchivePage {
            messages: Vec::new(),
            complete: true,
            count: 0,
        }
    } else {
        server
            .stores()
            .query_archive(user, &query)
            .await
            .map_err(|e| match e {
                StorageError::NotFound => not_found(),
                e => iq::storage_failure("cannot query archive", user, &e),
            })?
    };
    let queryid = payload.attr("queryid");
    deliver_results(server, iq, user, queryid, &page).await?;
    Ok(Some(fin(&page, &query)))
}

/// Sends each result message to the querying session, in order, before the IQ result.
async fn deliver_results(
    server: &Server,
    iq: &Stanza,
    user: &BareJid,
    queryid: Option<&str>,
    page: &ArchivePage,
) -> Result<(), StanzaError> {
    let session = iq
        .from()
        .clone()
        .into_full()
        .ok()
        .and_then(|full| server.sm().get(&full));
    for archived in &page.messages {
        let Some(message) = result_message(archived, queryid) else {
            tracing::warn!(%user, id = archived.id, "skipping unreadable archived message");
            continue;
        };
        let Ok(stanza) = Stanza::new(message, user.clone().into(), iq.from().clone()) else {
            continue;
        };
        match &session {
            Some(session) => {
                if !session.deliver(Arc::new(stanza)) {
                    // Inbox full (the session is being closed) or gone: stop here.
                    return Err(iq::error(StanzaErrorCondition::ResourceConstraint));
                }
            }
            // Not bound on this node (a cluster peer): the router finds it.
            None => server.route(stanza).await,
        }
    }
    Ok(())
}

/// `<message><result><forwarded><delay/><message/></forwarded></result></message>`.
fn result_message(archived: &ArchivedMessage, queryid: Option<&str>) -> Option<Element> {
    let original: Element = archived.stanza.parse().ok()?;
    let mut forwarded = element("forwarded", NS_FORWARD, &[]);
    forwarded.append_child(element(
        "delay",
        ns::DELAY,
        &[("stamp", &format_stamp(archived.id))],
    ));
    forwarded.append_child(original);
    let id = format_id(archived.id);
    let mut attrs = vec![("id", id.as_str())];
    if let Some(queryid) = queryid {
        attrs.push(("queryid", queryid));
    }
    let mut result = element("result", NS_MAM, &attrs);
    result.append_child(forwarded);
    let mut message = element("message", ns::CLIENT, &[]);
    message.append_child(result);
    Some(message)
}

/// `<fin complete><set><first/><last/><count/></set></fin>`.
fn fin(page: &ArchivePage, query: &ArchiveQuery) -> Element {
    let complete = if page.complete { "true" } else { "false" };
    let mut fin = element("fin", NS_MAM, &[("complete", complete)]);
    let mut set = element("set", NS_RSM, &[]);
    if let (Some(first), Some(last)) = (page.messages.first(), page.messages.last()) {
        let first_id = format_id(first.id);
        let mut first_el = text_element("first", NS_RSM, &first_id);
        // The position is known without counting only when paging from the start.
        if !query.from_end && query.page_after.is_none() {
            starling_xmpp::stanza::set_attr(&mut first_el, "index", query.offset.to_string());
        }
        set.append_child(first_el);
        set.append_child(text_element("last", NS_RSM, &format_id(last.id)));
    }
    set.append_child(text_element("count", NS_RSM, &page.count.to_string()));
    fin.append_child(set);
    fin
}

/// XEP-0313 §6.1: `<metadata><start id timestamp/><end id timestamp/></metadata>`.
fn metadata_element(bounds: Option<(i64, i64)>) -> Element {
    let mut metadata = element("metadata", NS_MAM, &[]);
    if let Some((first, last)) = bounds {
        for (name, id) in [("start", first), ("end", last)] {
            metadata.append_child(element(
                name,
                NS_MAM,
                &[("id", &format_id(id)), ("timestamp", &format_stamp(id))],
            ));
        }
    }
    metadata
}

// --- preferences ---

async fn load_prefs(
    server: &Server,
    settings: &Settings,
    user: &BareJid,
) -> Result<ArchivePrefs, StanzaError> {
    let stored = server
        .stores()
        .archive_prefs(user)
        .await
        .map_err(|e| iq::storage_failure("cannot load prefs", user, &e))?;
    Ok(stored.unwrap_or(ArchivePrefs {
        default: settings.default,
        always: Vec::new(),
        never: Vec::new(),
    }))
}

fn prefs_element(prefs: &ArchivePrefs) -> Element {
    let mut el = element("prefs", NS_MAM, &[("default", prefs.default.as_str())]);
    for (name, list) in [("always", &prefs.always), ("never", &prefs.never)] {
        let mut l = element(name, NS_MAM, &[]);
        for jid in list {
            l.append_child(text_element("jid", NS_MAM, jid.as_str()));
        }
        el.append_child(l);
    }
    el
}

fn parse_prefs(payload: &Element) -> Result<ArchivePrefs, StanzaError> {
    let default = payload
        .attr("default")
        .and_then(ArchivePolicy::parse)
        .ok_or_else(|| bad_request("'default' must be always, never or roster"))?;
    let list = |name: &str| -> Result<Vec<Jid>, StanzaError> {
        let Some(l) = payload.get_child(name, NS_MAM) else {
            return Ok(Vec::new());
        };
        let jids: Vec<Jid> = l
            .children()
            .filter(|c| c.is("jid", NS_MAM))
            .map(|c| Jid::parse(c.text().trim()))
            .collect::<Result<_, _>>()
            .map_err(|_| iq::error(StanzaErrorCondition::JidMalformed))?;
        if jids.len() > MAX_PREFS_JIDS {
            return Err(iq::error(StanzaErrorCondition::NotAcceptable)
                .with_text("too many JIDs in one list"));
        }
        Ok(jids)
    };
    Ok(ArchivePrefs {
        default,
        always: list("always")?,
        never: list("never")?,
    })
}

// --- XEP-0082 dates ---

/// XEP-0082 `DateTime` with µs, e.g. `2026-11-23T10:00:00.123456Z`.
fn format_stamp(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let date = format_datetime(secs);
    let date = date.strip_suffix('Z').unwrap_or(&date);
    format!("{date}.{frac:06}Z")
}

/// Parses an XEP-0082 `DateTime` (`CCYY-MM-DDThh:mm:ss[.sss]TZD`, `TZD` = `Z` or
/// `±hh:mm`) into µs since the Unix epoch. Digits past µs are dropped.
pub fn parse_datetime(s: &str) -> Option<i64> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let year: i64 = digits(d.next()?, 4)?;
    let month: i64 = digits(d.next()?, 2)?;
    let day: i64 = digits(d.next()?, 2)?;
    // The zone: `Z`, or the last `+`/`-` (the time itself has none).
    let (clock, offset_secs) = if let Some(clock) = time.strip_suffix('Z') {
        (clock, 0)
    } else {
        let pos = time.rfind(['+', '-'])?;
        let (clock, zone) = time.split_at(pos);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let (h, m) = zone.get(1..)?.split_once(':')?;
        let (h, m): (i64, i64) = (digits(h, 2)?, digits(m, 2)?);
        if h > 23 || m > 59 {
            return None;
        }
        (clock, sign * (h * 3600 + m * 60))
    };
    let (hms, fraction) = match clock.split_once('.') {
        Some((hms, f)) => (hms, Some(f)),
        None => (clock, None),
    };
    let mut t = hms.splitn(3, ':');
    let hour: i64 = digits(t.next()?, 2)?;
    let minute: i64 = digits(t.next()?, 2)?;
    let second: i64 = digits(t.next()?, 2)?;
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let micros = match fraction {
        None => 0,
        Some(f) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => {
            let six: String = f.chars().chain(std::iter::repeat('0')).take(6).collect();
            six.parse().ok()?
        }
        Some(_) => return None,
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_secs;
    secs.checked_mul(1_000_000)?.checked_add(micros)
}

/// Exactly `len` ASCII digits.
fn digits(s: &str, len: usize) -> Option<i64> {
    if s.len() != len || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given date (proleptic Gregorian), the inverse of
/// `time::civil_from_days`.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    // Years start in March, so the leap day is the last day of the "year".
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y.rem_euclid(400);
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use starling_config::OptionValue;
    use starling_core::module::IqTarget;
    use starling_storage::RosterItem;
    use starling_xmpp::error::StanzaErrorCondition as C;
    use starling_xmpp::jid::FullJid;

    use super::*;
    use crate::fixture::{Fixture, TestSession, error_condition, set_option};

    /// What the c2s task does with a client's stanza: `user_send_packet`, then routing.
    async fn send(f: &Fixture, from: &str, to: &str, xml: &str) {
        let el: Element = xml.parse().unwrap();
        let from = FullJid::parse(from).unwrap();
        let stanza = Stanza::new(el, from.clone().into(), Jid::parse(to).unwrap()).unwrap();
        let modules = f.server.host_modules("localhost").unwrap();
        let mut arg = UserSendPacket {
            session: from,
            stanza,
        };
        modules
            .hooks()
            .user_send_packet
            .run(&f.server, &mut arg)
            .await;
        f.server.route(arg.stanza).await;
    }

    fn chat(body: &str) -> String {
        format!("<message xmlns='jabber:client' type='chat'><body>{body}</body></message>")
    }

    /// Runs a query; returns the result messages' `<result/>` elements and the `<fin/>`.
    async fn query(s: &mut TestSession, inner: &str) -> (Vec<Element>, Stanza) {
        let own = s.jid.to_bare();
        let reply = s
            .iq(
                own.as_str(),
                "set",
                &format!("<query xmlns='urn:xmpp:mam:2' queryid='q1'>{inner}</query>"),
            )
            .await;
        let results = s
            .drain()
            .into_iter()
            .filter_map(|m| m.element().get_child("result", NS_MAM).cloned())
            .collect();
        (results, reply)
    }

    fn form(fields: &[(&str, &str)]) -> String {
        let mut x = String::from(
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
             <value>urn:xmpp:mam:2</value></field>",
        );
        for (var, value) in fields {
            x.push_str(&format!(
                "<field var='{var}'><value>{value}</value></field>"
            ));
        }
        x.push_str("</x>");
        x
    }

    fn rsm(inner: &str) -> String {
        format!("<set xmlns='http://jabber.org/protocol/rsm'>{inner}</set>")
    }

    fn bodies(results: &[Element]) -> Vec<String> {
        results
            .iter()
            .map(|r| {
                r.get_child("forwarded", NS_FORWARD)
                    .and_then(|f| f.get_child("message", ns::CLIENT))
                    .and_then(|m| m.get_child("body", ns::CLIENT))
                    .map(Element::text)
                    .unwrap_or_default()
            })
            .collect()
    }

    fn fin_set(reply: &Stanza) -> Element {
        assert_eq!(reply.type_attr(), Some("result"), "{reply:?}");
        let fin = reply.payload().unwrap();
        assert!(fin.is("fin", NS_MAM));
        fin.get_child("set", NS_RSM).unwrap().clone()
    }

    fn complete(reply: &Stanza) -> bool {
        reply.payload().and_then(|f| f.attr("complete")) == Some("true")
    }

    /// Alice and Bob exist and are bound; `n` chat messages go Alice → Bob.
    async fn chatting(n: usize) -> (Fixture, TestSession, TestSession) {
        let f = Fixture::new().await;
        f.account("alice@localhost").await;
        f.account("bob@localhost").await;
        let alice = f.session("alice@localhost/a").await;
        let bob = f.session("bob@localhost/b").await;
        for i in 1..=n {
            send(
                &f,
                "alice@localhost/a",
                "bob@localhost/b",
                &chat(&format!("m{i}")),
            )
            .await;
        }
        (f, alice, bob)
    }

    #[tokio::test]
    async fn received_message_carries_the_archive_id_as_stanza_id() {
        let (_f, mut alice, mut bob) = chatting(1).await;
        let got = bob.next().unwrap();
        let sid = got.element().get_child("stanza-id", NS_SID).unwrap();
        assert_eq!(sid.attr("by"), Some("bob@localhost"));
        let (results, reply) = query(&mut bob, "").await;
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].attr("id"), sid.attr("id"));
        assert_eq!(results[0].attr("queryid"), Some("q1"));
        assert!(complete(&reply));
        // The archived copy has no stanza-id of its own and a µs delay stamp.
        let fwd = results[0].get_child("forwarded", NS_FORWARD).unwrap();
        assert!(
            fwd.get_child("message", ns::CLIENT)
                .unwrap()
                .get_child("stanza-id", NS_SID)
                .is_none()
        );
        let stamp = fwd
            .get_child("delay", ns::DELAY)
            .unwrap()
            .attr("stamp")
            .unwrap();
        assert_eq!(
            parse_datetime(stamp),
            sid.attr("id").and_then(parse_id),
            "{stamp}"
        );
        // The sender's archive has it too, as a different row.
        let (results, _) = query(&mut alice, "").await;
        assert_eq!(bodies(&results), vec!["m1"]);
    }

    #[tokio::test]
    async fn spoofed_stanza_ids_are_removed_others_kept() {
        let (f, _alice, mut bob) = chatting(0).await;
        let xml = "<message xmlns='jabber:client' type='chat'><body>hi</body>\
                   <stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' id='fake'/>\
                   <stanza-id xmlns='urn:xmpp:sid:0' by='room@muc.example' id='keep'/></message>";
        send(&f, "alice@localhost/a", "bob@localhost/b", xml).await;
        let got = bob.next().unwrap();
        let ids: Vec<(String, String)> = got
            .element()
            .children()
            .filter(|c| c.is("stanza-id", NS_SID))
            .map(|c| {
                (
                    c.attr("by").unwrap_or_default().to_owned(),
                    c.attr("id").unwrap_or_default().to_owned(),
                )
            })
            .collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert!(ids.contains(&("room@muc.example".to_owned(), "keep".to_owned())));
        assert!(ids.iter().all(|(_, id)| id != "fake"));
        // Even a message that is not archived loses the spoofed id.
        let xml = "<message xmlns='jabber:client' type='headline'><body>x</body>\
                   <stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' id='fake'/></message>";
        send(&f, "alice@localhost/a", "bob@localhost/b", xml).await;
        let got = bob.next().unwrap();
        assert!(got.element().get_child("stanza-id", NS_SID).is_none());
    }

    #[tokio::test]
    async fn only_archivable_messages_are_archived() {
        let (f, _alice, mut bob) = chatting(0).await;
        let skipped = [
            "<message xmlns='jabber:client' type='headline'><body>h</body></message>",
            "<message xmlns='jabber:client' type='error'><body>e</body></message>",
            "<message xmlns='jabber:client' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
            "<message xmlns='jabber:client' type='chat'><body>n</body><no-store xmlns='urn:xmpp:hints'/></message>",
            "<message xmlns='jabber:client'><body>n</body><no-permanent-store xmlns='urn:xmpp:hints'/></message>",
        ];
        for xml in skipped {
            send(&f, "alice@localhost/a", "bob@localhost/b", xml).await;
        }
        send(
            &f,
            "alice@localhost/a",
            "bob@localhost/b",
            "<message xmlns='jabber:client' type='chat'><encrypted xmlns='eu.siacs.conversations.axolotl'/><store xmlns='urn:xmpp:hints'/></message>",
        )
        .await;
        send(
            &f,
            "alice@localhost/a",
            "bob@localhost/b",
            "<message xmlns='jabber:client'><body>normal</body></message>",
        )
        .await;
        bob.drain();
        let (results, reply) = query(&mut bob, "").await;
        assert_eq!(bodies(&results), vec!["", "normal"]);
        assert_eq!(
            fin_set(&reply).get_child("count", NS_RSM).unwrap().text(),
            "2"
        );
        // Nothing is archived for an account that does not exist.
        send(&f, "alice@localhost/a", "ghost@localhost", &chat("boo")).await;
        let ghost = BareJid::parse("ghost@localhost").unwrap();
        assert_eq!(
            f.server.stores().archive_bounds(&ghost).await.unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn paging_with_max_two_walks_everything_forwards_and_backwards() {
        let (_f, _alice, mut bob) = chatting(5).await;
        bob.drain();
        let mut seen = Vec::new();
        let mut after = String::new();
        for round in 0.. {
            assert!(round < 5, "paging does not end");
            let page = if after.is_empty() {
                rsm("<max>2</max>")
            } else {
                rsm(&format!("<max>2</max><after>{after}</after>"))
            };
            let (results, reply) = query(&mut bob, &page).await;
            seen.extend(bodies(&results));
            let set = fin_set(&reply);
            assert_eq!(set.get_child("count", NS_RSM).unwrap().text(), "5");
            if complete(&reply) {
                break;
            }
            after = set.get_child("last", NS_RSM).unwrap().text();
        }
        assert_eq!(seen, vec!["m1", "m2", "m3", "m4", "m5"]);
        // Backwards from the end: the last page first, each in chronological order.
        let (results, reply) = query(&mut bob, &rsm("<max>2</max><before/>")).await;
        assert_eq!(bodies(&results), vec!["m4", "m5"]);
        assert!(!complete(&reply));
        let first = fin_set(&reply).get_child("first", NS_RSM).unwrap().text();
        let (results, _) = query(
            &mut bob,
            &rsm(&format!("<max>2</max><before>{first}</before>")),
        )
        .await;
        assert_eq!(bodies(&results), vec!["m2", "m3"]);
        // RSM index.
        let (results, reply) = query(&mut bob, &rsm("<max>1</max><index>2</index>")).await;
        assert_eq!(bodies(&results), vec!["m3"]);
        let first = fin_set(&reply);
        assert_eq!(
            first.get_child("first", NS_RSM).unwrap().attr("index"),
            Some("2")
        );
    }

    #[tokio::test]
    async fn unknown_ids_are_item_not_found() {
        let (_f, _alice, mut bob) = chatting(1).await;
        bob.drain();
        for inner in [
            rsm("<after>12345</after>"),
            rsm("<before>not-an-id</before>"),
            form(&[("after-id", "999")]),
            form(&[("before-id", "x")]),
        ] {
            let (results, reply) = query(&mut bob, &inner).await;
            assert!(results.is_empty());
            assert_eq!(error_condition(&reply), Some(C::ItemNotFound), "{inner}");
        }
        let (_, reply) = query(&mut bob, &form(&[("colour", "blue")])).await;
        assert_eq!(error_condition(&reply), Some(C::BadRequest));
        let (_, reply) = query(&mut bob, &form(&[("start", "yesterday")])).await;
        assert_eq!(error_condition(&reply), Some(C::BadRequest));
        let (_, reply) = query(&mut bob, &rsm("<max>-1</max>")).await;
        assert_eq!(error_condition(&reply), Some(C::BadRequest));
    }

    #[tokio::test]
    async fn with_start_end_and_ids_filter() {
        let (f, mut alice, _bob) = chatting(2).await;
        f.account("carol@localhost").await;
        let _carol = f.session("carol@localhost/c").await;
        send(
            &f,
            "alice@localhost/a",
            "carol@localhost/c",
            &chat("to carol"),
        )
        .await;
        send(
            &f,
            "alice@localhost/a",
            "carol@localhost",
            &chat("to carol bare"),
        )
        .await;
        let (results, _) = query(&mut alice, &form(&[("with", "carol@localhost")])).await;
        assert_eq!(bodies(&results), vec!["to carol", "to carol bare"]);
        let (results, _) = query(&mut alice, &form(&[("with", "carol@localhost/c")])).await;
        assert_eq!(bodies(&results), vec!["to carol"]);
        let (results, _) = query(&mut alice, &form(&[("with", "bob@localhost")])).await;
        assert_eq!(bodies(&results), vec!["m1", "m2"]);
        // start/end around the second message (ids are µs timestamps).
        let ids: Vec<String> = results
            .iter()
            .map(|r| r.attr("id").unwrap().to_owned())
            .collect();
        let second = parse_id(&ids[1]).unwrap();
        let stamp = format_stamp(second);
        let (results, _) = query(&mut alice, &form(&[("start", &stamp)])).await;
        assert_eq!(bodies(&results), vec!["m2", "to carol", "to carol bare"]);
        let (results, _) = query(&mut alice, &form(&[("end", &stamp)])).await;
        assert_eq!(bodies(&results), vec!["m1", "m2"]);
        // ids (several values), and after-id.
        let ids_field = format!(
            "<x xmlns='jabber:x:data' type='submit'><field var='ids'><value>{}</value>\
             <value>{}</value></field></x>",
            ids[1], ids[0]
        );
        let (results, _) = query(&mut alice, &ids_field).await;
        assert_eq!(bodies(&results), vec!["m1", "m2"]);
        let (results, _) = query(
            &mut alice,
            "<x xmlns='jabber:x:data' type='submit'><field var='ids'><value>nope</value></field></x>",
        )
        .await;
        assert!(results.is_empty());
        let (results, _) = query(&mut alice, &form(&[("after-id", &ids[1])])).await;
        assert_eq!(bodies(&results), vec!["to carol", "to carol bare"]);
    }

    #[tokio::test]
    async fn form_prefs_metadata_and_disco() {
        let (f, mut alice, _bob) = chatting(0).await;
        let own = "alice@localhost";
        let reply = alice
            .iq(own, "get", "<query xmlns='urn:xmpp:mam:2'/>")
            .await;
        let vars: Vec<String> = reply
            .payload()
            .unwrap()
            .get_child("x", ns::DATA_FORMS)
            .unwrap()
            .children()
            .filter_map(|c| c.attr("var").map(str::to_owned))
            .collect();
        assert_eq!(
            vars,
            [
                "FORM_TYPE",
                "with",
                "start",
                "end",
                "before-id",
                "after-id",
                "ids"
            ]
        );
        let reply = alice
            .iq(own, "get", "<metadata xmlns='urn:xmpp:mam:2'/>")
            .await;
        assert_eq!(reply.payload().unwrap().children().count(), 0);
        let reply = alice
            .iq(own, "get", "<prefs xmlns='urn:xmpp:mam:2'/>")
            .await;
        assert_eq!(reply.payload().unwrap().attr("default"), Some("always"));
        let reply = alice
            .iq(
                own,
                "set",
                "<prefs xmlns='urn:xmpp:mam:2' default='roster'><always><jid>bob@localhost</jid>\
                 </always><never><jid>eve@localhost</jid></never></prefs>",
            )
            .await;
        let prefs = reply.payload().unwrap();
        assert_eq!(prefs.attr("default"), Some("roster"));
        assert_eq!(
            prefs
                .get_child("always", NS_MAM)
                .unwrap()
                .get_child("jid", NS_MAM)
                .unwrap()
                .text(),
            "bob@localhost"
        );
        let reply = alice
            .iq(
                own,
                "set",
                "<prefs xmlns='urn:xmpp:mam:2' default='sometimes'/>",
            )
            .await;
        assert_eq!(error_condition(&reply), Some(C::BadRequest));
        let features = f
            .server
            .host_modules("localhost")
            .unwrap()
            .features(IqTarget::Account);
        for var in [NS_MAM, NS_MAM_EXTENDED, NS_SID] {
            assert!(features.contains(&var), "{var} in {features:?}");
        }
        send(&f, "alice@localhost/a", "bob@localhost/b", &chat("x")).await;
        let reply = alice
            .iq(own, "get", "<metadata xmlns='urn:xmpp:mam:2'/>")
            .await;
        let meta = reply.payload().unwrap();
        let start = meta.get_child("start", NS_MAM).unwrap();
        let end = meta.get_child("end", NS_MAM).unwrap();
        assert_eq!(start.attr("id"), end.attr("id"));
        assert!(start.attr("timestamp").and_then(parse_datetime).is_some());
    }

    #[tokio::test]
    async fn nobody_else_may_read_an_archive() {
        let (_f, mut alice, _bob) = chatting(1).await;
        let reply = alice
            .iq("bob@localhost", "set", "<query xmlns='urn:xmpp:mam:2'/>")
            .await;
        assert_eq!(error_condition(&reply), Some(C::Forbidden));
        let reply = alice
            .iq("bob@localhost", "get", "<prefs xmlns='urn:xmpp:mam:2'/>")
            .await;
        assert_eq!(error_condition(&reply), Some(C::Forbidden));
    }

    #[tokio::test]
    async fn preferences_decide_what_is_archived() {
        let (f, _alice, mut bob) = chatting(0).await;
        f.account("carol@localhost").await;
        let bob_jid = BareJid::parse("bob@localhost").unwrap();
        let carol = f.session("carol@localhost/c").await;
        // Roster: only contacts; Alice is one (subscription none is enough), Carol is not.
        f.server
            .stores()
            .put_item(
                &bob_jid,
                &RosterItem::new(BareJid::parse("alice@localhost").unwrap()),
                100,
            )
            .await
            .unwrap();
        let reply = bob
            .iq(
                "bob@localhost",
                "set",
                "<prefs xmlns='urn:xmpp:mam:2' default='roster'/>",
            )
            .await;
        assert_eq!(reply.type_attr(), Some("result"));
        send(
            &f,
            "alice@localhost/a",
            "bob@localhost/b",
            &chat("from alice"),
        )
        .await;
        send(
            &f,
            "carol@localhost/c",
            "bob@localhost/b",
            &chat("from carol"),
        )
        .await;
        // Never beats the default; a bare JID matches every resource.
        let reply = bob
            .iq(
                "bob@localhost",
                "set",
                "<prefs xmlns='urn:xmpp:mam:2' default='always'><never><jid>alice@localhost</jid>\
                 </never></prefs>",
            )
            .await;
        assert_eq!(reply.type_attr(), Some("result"));
        send(
            &f,
            "alice@localhost/a",
            "bob@localhost/b",
            &chat("alice again"),
        )
        .await;
        send(
            &f,
            "carol@localhost/c",
            "bob@localhost/b",
            &chat("carol again"),
        )
        .await;
        let delivered = bob.drain();
        // Unarchived messages are delivered all the same, without a stanza-id.
        assert_eq!(delivered.len(), 4);
        assert_eq!(
            delivered
                .iter()
                .filter(|m| m.element().has_child("stanza-id", NS_SID))
                .count(),
            2
        );
        let (results, _) = query(&mut bob, "").await;
        assert_eq!(bodies(&results), vec!["from alice", "carol again"]);
        drop(carol);
    }

    #[tokio::test]
    async fn default_option_and_expiry_apply() {
        let f = Fixture::with(|c| {
            set_option(c, "mod_mam", "default", OptionValue::String("never".into()));
            set_option(
                c,
                "mod_mam",
                "archive_expires_after",
                OptionValue::Duration(Duration::from_secs(86_400)),
            );
        })
        .await;
        let bob = f.account("bob@localhost").await;
        f.account("alice@localhost").await;
        let mut s = f.session("bob@localhost/b").await;
        send(
            &f,
            "alice@localhost/a",
            "bob@localhost/b",
            &chat("not kept"),
        )
        .await;
        s.drain();
        assert_eq!(f.server.stores().archive_bounds(&bob).await.unwrap(), None);
        // A message archived two days ago is past the retention time: never returned, and
        // deleted by the next insert.
        let old = ArchivedMessage {
            id: now_micros() - 2 * 86_400_000_000,
            with: BareJid::parse("alice@localhost").unwrap(),
            with_resource: String::new(),
            direction: Direction::Incoming,
            stanza: chat("old"),
        };
        f.server
            .stores()
            .archive_message(&bob, &old, None)
            .await
            .unwrap();
        let (results, _) = query(&mut s, "").await;
        assert!(results.is_empty());
        s.iq(
            "bob@localhost",
            "set",
            "<prefs xmlns='urn:xmpp:mam:2' default='always'/>",
        )
        .await;
        send(&f, "alice@localhost/a", "bob@localhost/b", &chat("new")).await;
        let (first, last) = f
            .server
            .stores()
            .archive_bounds(&bob)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first, last, "the old message was purged");
    }

    #[tokio::test]
    async fn notes_to_self_are_archived_once_and_stamped() {
        let f = Fixture::new().await;
        f.account("alice@localhost").await;
        let mut other = f.session("alice@localhost/other").await;
        send(
            &f,
            "alice@localhost/a",
            "alice@localhost/other",
            &chat("note"),
        )
        .await;
        let got = other.next().unwrap();
        let sid = got
            .element()
            .get_child("stanza-id", NS_SID)
            .unwrap()
            .clone();
        let (results, _) = query(&mut other, "").await;
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].attr("id"), sid.attr("id"));
    }

    #[tokio::test]
    async fn removing_the_account_removes_the_archive() {
        let (f, _alice, _bob) = chatting(2).await;
        let bob = BareJid::parse("bob@localhost").unwrap();
        assert!(
            f.server
                .stores()
                .archive_bounds(&bob)
                .await
                .unwrap()
                .is_some()
        );
        assert!(f.server.remove_user(&bob, "bye").await.unwrap());
        assert_eq!(f.server.stores().archive_bounds(&bob).await.unwrap(), None);
        // Alice's archive is hers.
        let alice = BareJid::parse("alice@localhost").unwrap();
        assert!(
            f.server
                .stores()
                .archive_bounds(&alice)
                .await
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn ids_increase_strictly() {
        let mut prev = next_archive_id();
        for _ in 0..10_000 {
            let id = next_archive_id();
            assert!(id > prev);
            prev = id;
        }
        assert_eq!(parse_id(&format_id(prev)), Some(prev));
        assert_eq!(parse_id("-5"), None);
        assert_eq!(parse_id("+5"), None);
        assert_eq!(parse_id(""), None);
        assert_eq!(parse_id("99999999999999999999999"), None);
    }

    #[test]
    fn xep_0082_dates() {
        assert_eq!(parse_datetime("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_datetime("2010-07-10T23:08:25Z"),
            Some(1_278_803_305_000_000)
        );
        assert_eq!(
            parse_datetime("2010-07-10T23:08:25.123Z"),
            Some(1_278_803_305_123_000)
        );
        assert_eq!(
            parse_datetime("2010-07-11T01:08:25+02:00"),
            parse_datetime("2010-07-10T23:08:25Z")
        );
        assert_eq!(
            parse_datetime("2010-07-10T20:08:25.5-03:00"),
            Some(1_278_803_305_500_000)
        );
        assert_eq!(
            parse_datetime("2024-02-29T00:00:00Z"),
            Some(1_709_164_800_000_000)
        );
        for bad in [
            "",
            "2010-07-10",
            "2010-07-10T23:08Z",
            "2010-13-10T23:08:25Z",
            "2023-02-29T00:00:00Z",
            "2010-07-10T24:00:00Z",
            "2010-07-10T23:08:25",
            "2010-07-10T23:08:25.Z",
            "2010-07-10T23:08:25+2:00",
            "١٩٧٠-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_datetime(bad), None, "{bad}");
        }
        for us in [0, 1, 1_278_803_305_123_456, 4_102_444_800_000_000] {
            assert_eq!(parse_datetime(&format_stamp(us)), Some(us));
        }
    }

    #[test]
    fn archivable_messages() {
        let el = |xml: &str| -> Element { xml.parse().unwrap() };
        assert!(is_archivable(&el(
            "<message xmlns='jabber:server' type='chat'><body>s2s</body></message>"
        )));
        assert!(!is_archivable(&el(
            "<message xmlns='jabber:client' type='groupchat'><body>g</body></message>"
        )));
        // A body in another namespace is not the message body.
        assert!(!is_archivable(&el(
            "<message xmlns='jabber:client'><body xmlns='urn:other'>x</body></message>"
        )));
    }

    #[test]
    fn server_namespace_copies_are_rewritten_for_clients() {
        let el: Element = "<message xmlns='jabber:server' from='a@b' to='c@d'><body>x</body>\
                           <x xmlns='urn:other'/></message>"
            .parse()
            .unwrap();
        let owner = BareJid::parse("c@d").unwrap();
        let copy = storable_copy(&el, &owner);
        assert!(copy.is("message", ns::CLIENT));
        assert_eq!(copy.attr("from"), Some("a@b"));
        assert!(copy.has_child("body", ns::CLIENT));
        assert!(copy.has_child("x", "urn:other"));
    }

    #[test]
    fn options_are_read_with_defaults() {
        let s = Settings::from_options(&ModuleOptions::new());
        assert_eq!(s.default, ArchivePolicy::Always);
        assert_eq!(s.max_page, MAX_PAGE_SIZE);
        assert_eq!(s.cutoff(1_000), None);
        let mut o = ModuleOptions::new();
        o.insert("max_page_size", OptionValue::Int(10));
        o.insert("archive_expires_after", OptionValue::Infinity);
        o.insert("default", OptionValue::String("roster".into()));
        let s = Settings::from_options(&o);
        assert_eq!(
            (s.default, s.max_page, s.expires_after),
            (ArchivePolicy::Roster, 10, None)
        );
        o.insert(
            "archive_expires_after",
            OptionValue::Duration(Duration::from_secs(1)),
        );
        assert_eq!(
            Settings::from_options(&o).cutoff(5_000_000),
            Some(4_000_000)
        );
    }

    #[tokio::test]
    async fn page_size_is_capped() {
        let f = Fixture::with(|c| {
            set_option(c, "mod_mam", "max_page_size", OptionValue::Int(3));
        })
        .await;
        f.account("alice@localhost").await;
        f.account("bob@localhost").await;
        let mut bob = f.session("bob@localhost/b").await;
        for i in 0..5 {
            send(
                &f,
                "alice@localhost/a",
                "bob@localhost/b",
                &chat(&i.to_string()),
            )
            .await;
        }
        bob.drain();
        let (results, reply) = query(&mut bob, &rsm("<max>100</max>")).await;
        assert_eq!(results.len(), 3);
        assert!(!complete(&reply));
        let (results, _) = query(&mut bob, "").await;
        assert_eq!(results.len(), 3);
    }
}
