//! `mod_blocking`: XEP-0191 blocking command, on the privacy lists of `mod_privacy`.
//!
//! As in ejabberd, the blocklist is not stored on its own: it is the set of items of the
//! user's *default* privacy list that deny everything to and from one JID
//! (`PrivacyItem::is_block`). Blocking adds such items at the front of the default list (a
//! user without a default list gets one named [`BLOCKED_CONTACTS`]), unblocking removes them,
//! and the enforcement of `crate::privacy` does the rest: a blocked entity's messages and
//! IQ requests get `<service-unavailable/>`, its presence is dropped, and stanzas the user
//! sends to it get `<not-acceptable/>` with `<blocked xmlns='urn:xmpp:blocking:errors'/>`
//! (§3.3). When mod_privacy does not run on the host, this module registers that
//! enforcement itself.
//!
//! Protocol (`urn:xmpp:blocking`, for the account itself; others get `<forbidden/>`):
//! - §3.2 `<blocklist/>` get returns the blocked JIDs and makes the resource *interested*:
//!   it receives the pushes of later changes (kept in memory, dropped when it closes; in a
//!   cluster pushes go to every resource on other nodes, whose node drops them for the
//!   resources that did not ask);
//! - §3.3 `<block>` with one or more `<item jid/>` (none: `<bad-request/>`, an invalid JID:
//!   `<jid-malformed/>`): the user's available resources first send unavailable presence to
//!   each newly blocked JID (§3.3: the user appears offline to it), then the list is stored,
//!   and `<block>` with the same items is pushed to the interested resources;
//! - §3.4 `<unblock>` with items unblocks those JIDs, without items every JID; the
//!   interested resources get the push, and each unblocked contact that is subscribed to
//!   the user's presence receives the user's current presence again.
//!
//! The disco feature `urn:xmpp:blocking` is advertised on the account (the IQ registration)
//! and on the server, where clients commonly look for it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use starling_config::{ModuleOptions, ModuleSpec};
use starling_core::BoxFuture;
use starling_core::Server;
use starling_core::hooks::{Hook, HookResult, SessionClosed, UserReceivePacket};
use starling_core::module::{
    HostContext, IqHandler, IqResult, IqTarget, Module, ModuleError, Registrations,
};
use starling_core::router::route;
use starling_storage::{
    PrivacyAction, PrivacyItem, PrivacyMatch, PrivacyStanzas, StorageError, Subscription,
};
use starling_xmpp::Element;
use starling_xmpp::error::{StanzaError, StanzaErrorCondition};
use starling_xmpp::jid::{BareJid, FullJid, Jid};
use starling_xmpp::ns;
use starling_xmpp::stanza::{IqType, Stanza, element};

use crate::iq;
use crate::privacy::{ActiveLists, Enforcement, limits, push_id, push_list};

/// The XEP-0191 namespace.
pub const NS_BLOCKING: &str = "urn:xmpp:blocking";
/// The default list created for a user who blocks someone without having one (ejabberd's
/// name, so lists move between the two servers unchanged).
pub const BLOCKED_CONTACTS: &str = "Blocked contacts";

/// `mod_blocking`.
pub struct Blocking;

impl Module for Blocking {
    fn spec(&self) -> ModuleSpec {
        ModuleSpec {
            name: "mod_blocking",
            aliases: &["blocking"],
            options: &[],
        }
    }

    fn start(
        &self,
        _host: &HostContext<'_>,
        _options: &ModuleOptions,
    ) -> Result<Registrations, ModuleError> {
        let interested = Arc::new(Interested::default());
        let mut registrations = Registrations::default()
            .iq(
                NS_BLOCKING,
                IqTarget::Account,
                Arc::new(BlockingHandler {
                    interested: interested.clone(),
                }),
            )
            .feature(NS_BLOCKING, IqTarget::Host);
        registrations
            .hooks
            .user_receive_packet
            .add(50, Arc::new(FilterPushes(interested.clone())));
        registrations.hooks.session_closed.add(50, interested);
        // Without mod_privacy nobody sets active lists: an empty set of them is exact.
        Ok(Enforcement::new(Arc::new(ActiveLists::default()), true).register(registrations))
    }
}

/// The resources that requested the blocklist (§3.2), which receive pushes.
#[derive(Default)]
struct Interested(Mutex<HashMap<BareJid, HashSet<FullJid>>>);

impl Interested {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<BareJid, HashSet<FullJid>>) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn add(&self, session: &FullJid) {
        self.with(|m| {
            m.entry(session.to_bare())
                .or_default()
                .insert(session.clone())
        });
    }

    fn remove(&self, session: &FullJid) {
        let user = session.to_bare();
        self.with(|m| {
            if let Some(set) = m.get_mut(&user) {
                set.remove(session);
                if set.is_empty() {
                    m.remove(&user);
                }
            }
        });
    }

    fn of(&self, user: &BareJid) -> Vec<FullJid> {
        self.with(|m| m.get(user).map(|s| s.iter().cloned().collect()))
            .unwrap_or_default()
    }
}

impl Hook<SessionClosed> for Interested {
    fn call<'a>(
        &'a self,
        _server: &'a Server,
        arg: &'a mut SessionClosed,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            self.remove(&arg.session);
            HookResult::Continue
        })
    }
}

struct BlockingHandler {
    interested: Arc<Interested>,
}

impl IqHandler for BlockingHandler {
    fn handle<'a>(&'a self, server: &'a Server, iq: &'a Stanza) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            let (kind, payload) = iq::request(iq)?;
            let user = iq::account(iq)?;
            if !iq::from_account_itself(iq) {
                return Err(iq::error(StanzaErrorCondition::Forbidden));
            }
            match (kind, payload.name()) {
                (IqType::Get, "blocklist") => {
                    if let Ok(session) = iq.from().clone().into_full() {
                        self.interested.add(&session);
                    }
                    blocklist(server, &user).await
                }
                (IqType::Set, "block") => {
                    let jids = items(payload)?;
                    if jids.is_empty() {
                        return Err(iq::error(StanzaErrorCondition::BadRequest)
                            .with_text("block at least one JID"));
                    }
                    block(server, &user, &jids).await?;
                    self.push(server, &user, "block", &jids);
                    Ok(None)
                }
                (IqType::Set, "unblock") => {
                    let jids = items(payload)?;
                    unblock(server, &user, &jids).await?;
                    self.push(server, &user, "unblock", &jids);
                    Ok(None)
                }
                _ => Err(iq::error(StanzaErrorCondition::BadRequest)),
            }
        })
    }
}

impl BlockingHandler {
    /// §3.3, §3.4: the change, pushed to every interested resource. Which resources on
    /// other cluster nodes asked for the list is known only there: they all get the push, and
    /// their node's [`FilterPushes`] drops it for those that did not.
    fn push(&self, server: &Server, user: &BareJid, what: &str, jids: &[Jid]) {
        let interested = self.interested.of(user);
        for entry in server.sm().sessions_of(user) {
            if entry.is_local() && !interested.contains(&entry.jid) {
                continue;
            }
            let mut iq = element("iq", ns::CLIENT, &[("type", "set"), ("id", &push_id())]);
            iq.append_child(command(what, jids.iter().map(Jid::as_str)));
            if let Ok(push) = Stanza::new(iq, user.clone().into(), entry.jid.clone().into()) {
                entry.deliver(Arc::new(push));
            }
        }
    }
}

/// True for a blocklist push: an IQ-set from the account's bare JID to one of its resources
/// carrying `<block/>` or `<unblock/>`.
fn is_push(session: &FullJid, stanza: &Stanza) -> bool {
    let el = stanza.element();
    el.name() == "iq"
        && el.attr("type") == Some("set")
        && stanza.from().is_bare()
        && stanza.from().to_bare() == session.to_bare()
        && (el.has_child("block", NS_BLOCKING) || el.has_child("unblock", NS_BLOCKING))
}

/// Drops pushes that reach a resource of this node that never asked for the blocklist (sent
/// by another cluster node, which cannot know).
struct FilterPushes(Arc<Interested>);

impl Hook<UserReceivePacket> for FilterPushes {
    fn call<'a>(
        &'a self,
        _server: &'a Server,
        arg: &'a mut UserReceivePacket,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            if is_push(&arg.session, &arg.stanza)
                && !self.0.of(&arg.session.to_bare()).contains(&arg.session)
            {
                HookResult::Stop
            } else {
                HookResult::Continue
            }
        })
    }
}

/// `<what xmlns='urn:xmpp:blocking'><item jid/>…</what>`.
fn command<'j>(what: &str, jids: impl IntoIterator<Item = &'j str>) -> Element {
    let mut el = element(what, NS_BLOCKING, &[]);
    for jid in jids {
        el.append_child(element("item", NS_BLOCKING, &[("jid", jid)]));
    }
    el
}

/// The `<item jid/>` children, normalised; a missing `jid` is `<bad-request/>`, an invalid
/// one `<jid-malformed/>`. Duplicates are dropped.
fn items(payload: &Element) -> Result<Vec<Jid>, StanzaError> {
    let mut jids: Vec<Jid> = Vec::new();
    for item in payload.children().filter(|c| c.is("item", NS_BLOCKING)) {
        let raw = item.attr("jid").ok_or_else(|| {
            iq::error(StanzaErrorCondition::BadRequest).with_text("item without jid")
        })?;
        let jid = Jid::parse(raw).map_err(|_| iq::error(StanzaErrorCondition::JidMalformed))?;
        if !jids.contains(&jid) {
            jids.push(jid);
        }
    }
    Ok(jids)
}

fn storage_error(what: &str, user: &BareJid) -> impl FnOnce(StorageError) -> StanzaError {
    move |e| iq::storage_failure(what, user, &e)
}

/// §3.2: the blocked JIDs.
async fn blocklist(server: &Server, user: &BareJid) -> IqResult {
    let list = server
        .stores()
        .default_privacy_list(user)
        .await
        .map_err(storage_error("cannot load the blocklist", user))?;
    let items = list.map(|l| l.items).unwrap_or_default();
    Ok(Some(command("blocklist", blocked_jids(&items))))
}

/// The JIDs blocked by `items`, in list order.
fn blocked_jids(items: &[PrivacyItem]) -> impl Iterator<Item = &str> {
    items
        .iter()
        .filter(|i| i.is_block())
        .filter_map(|i| match &i.matcher {
            PrivacyMatch::Jid(j) => Some(j.as_str()),
            _ => None,
        })
}

/// §3.3: adds deny-all items for `jids` at the front of the default list.
async fn block(server: &Server, user: &BareJid, jids: &[Jid]) -> Result<(), StanzaError> {
    let stores = server.stores();
    let (max_lists, max_items) = limits(server, user.domain());
    let default = stores
        .default_privacy_list(user)
        .await
        .map_err(storage_error("cannot load the blocklist", user))?;
    let (name, items, has_default) = match default {
        Some(list) => (list.name, list.items, true),
        None => {
            let items = stores
                .privacy_list(user, BLOCKED_CONTACTS)
                .await
                .map_err(storage_error("cannot load the blocklist", user))?
                .unwrap_or_default();
            (BLOCKED_CONTACTS.to_owned(), items, false)
        }
    };
    let already: HashSet<&str> = blocked_jids(&items).collect();
    let new: Vec<&Jid> = jids
        .iter()
        .filter(|j| !already.contains(j.as_str()))
        .collect();
    if new.is_empty() && has_default {
        return Ok(());
    }
    if items.len() + new.len() > max_items as usize {
        return Err(iq::error(StanzaErrorCondition::ResourceConstraint)
            .with_text(format!("the blocklist holds at most {max_items} items")));
    }
    let items = prepend_blocks(items, &new);
    // §3.3: the user goes offline for the blocked entities, sent while they are still
    // allowed to receive it.
    for jid in &new {
        for session in server.sm().available_of(user) {
            let el = element("presence", ns::CLIENT, &[("type", "unavailable")]);
            if let Ok(stanza) = Stanza::new(el, session.jid.clone().into(), (*jid).clone()) {
                route(server, stanza).await;
            }
        }
    }
    match stores
        .put_privacy_list(user, &name, &items, max_lists)
        .await
    {
        Ok(()) => {}
        Err(StorageError::QuotaExceeded) => {
            return Err(iq::error(StanzaErrorCondition::ResourceConstraint)
                .with_text("too many privacy lists"));
        }
        Err(e) => return Err(iq::storage_failure("cannot store the blocklist", user, &e)),
    }
    if !has_default {
        stores
            .set_default_privacy_list(user, Some(&name))
            .await
            .map_err(storage_error("cannot set the default list", user))?;
    }
    if privacy_runs(server, user) {
        push_list(server, user, &name);
    }
    Ok(())
}

/// Puts deny-all items for `new` before `items` (sorted by order): below the lowest order
/// if there is room, else everything is renumbered from 0 keeping the relative order.
fn prepend_blocks(items: Vec<PrivacyItem>, new: &[&Jid]) -> Vec<PrivacyItem> {
    let count = u32::try_from(new.len()).unwrap_or(u32::MAX);
    let lowest = items.first().map_or(count, |i| i.order);
    let blocks = new.iter().map(|jid| PrivacyItem {
        matcher: PrivacyMatch::Jid(jid.as_str().to_owned()),
        action: PrivacyAction::Deny,
        order: 0,
        stanzas: PrivacyStanzas::ALL,
    });
    let mut all: Vec<PrivacyItem> = blocks.chain(items).collect();
    let start = lowest.checked_sub(count);
    for (i, item) in all.iter_mut().enumerate() {
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        match start {
            Some(start) if i < count => item.order = start.saturating_add(i),
            Some(_) => {}
            None => item.order = i,
        }
    }
    all
}

/// §3.4: removes the deny-all items for `jids` (all of them when empty) from the default
/// list, then lets the unblocked subscribers see the user's presence again.
async fn unblock(server: &Server, user: &BareJid, jids: &[Jid]) -> Result<(), StanzaError> {
    let stores = server.stores();
    let Some(list) = stores
        .default_privacy_list(user)
        .await
        .map_err(storage_error("cannot load the blocklist", user))?
    else {
        return Ok(());
    };
    let wanted: HashSet<&str> = jids.iter().map(Jid::as_str).collect();
    let (removed, kept): (Vec<PrivacyItem>, Vec<PrivacyItem>) =
        list.items.into_iter().partition(|i| {
            i.is_block()
                && (wanted.is_empty() || i.matcher.value().is_some_and(|v| wanted.contains(v)))
        });
    if removed.is_empty() {
        return Ok(());
    }
    if kept.is_empty() {
        // An empty list cannot exist (XEP-0016 §2.6); it goes, and the default with it.
        stores
            .remove_privacy_list(user, &list.name)
            .await
            .map_err(storage_error("cannot store the blocklist", user))?;
    } else {
        let (max_lists, _) = limits(server, user.domain());
        stores
            .put_privacy_list(user, &list.name, &kept, max_lists)
            .await
            .map_err(storage_error("cannot store the blocklist", user))?;
    }
    if privacy_runs(server, user) {
        push_list(server, user, &list.name);
    }
    for jid in removed
        .iter()
        .filter_map(|i| i.matcher.value())
        .filter_map(|v| Jid::parse(v).ok())
    {
        resend_presence(server, user, &jid).await;
    }
    Ok(())
}

/// Sends the user's current presence to `contact` if it is subscribed to it.
async fn resend_presence(server: &Server, user: &BareJid, contact: &Jid) {
    let subscribed = match server.stores().item(user, &contact.to_bare()).await {
        Ok(Some(item)) => matches!(item.subscription, Subscription::From | Subscription::Both),
        Ok(None) => false,
        Err(e) => {
            tracing::error!(%user, error = %e, "cannot load roster item");
            false
        }
    };
    if !subscribed {
        return;
    }
    for session in server.sm().available_of(user) {
        if let Some(presence) = &session.presence
            && let Ok(stanza) = Stanza::new(
                (**presence).clone(),
                session.jid.clone().into(),
                contact.clone(),
            )
        {
            route(server, stanza).await;
        }
    }
}

fn privacy_runs(server: &Server, user: &BareJid) -> bool {
    server
        .host_modules(user.domain())
        .is_some_and(|m| m.has("mod_privacy"))
}

#[cfg(test)]
mod tests {
    use starling_core::hooks::UserSendPacket;
    use starling_storage::RosterItem;
    use starling_xmpp::error::StanzaErrorCondition as C;

    use super::*;

    #[test]
    fn only_the_servers_blocklist_pushes_are_filtered() {
        let session = FullJid::parse("u@x/r").unwrap();
        let stanza = |from: &str, xml: &str| {
            let el: Element = xml.parse().unwrap();
            Stanza::new(el, Jid::parse(from).unwrap(), session.clone().into()).unwrap()
        };
        let push = "<iq xmlns='jabber:client' type='set' id='push-1'>\
                    <block xmlns='urn:xmpp:blocking'><item jid='v@x'/></block></iq>";
        assert!(is_push(&session, &stanza("u@x", push)));
        let unblock = "<iq xmlns='jabber:client' type='set' id='push-2'>\
                       <unblock xmlns='urn:xmpp:blocking'/></iq>";
        assert!(is_push(&session, &stanza("u@x", unblock)));
        // From another resource, another account, or not a set: delivered as usual.
        assert!(!is_push(&session, &stanza("u@x/other", push)));
        assert!(!is_push(&session, &stanza("v@x", push)));
        let result = "<iq xmlns='jabber:client' type='result' id='push-1'>\
                      <block xmlns='urn:xmpp:blocking'/></iq>";
        assert!(!is_push(&session, &stanza("u@x", result)));
    }
    use crate::fixture::{Fixture, error_condition};
    use crate::privacy::NS_BLOCKING_ERRORS;

    fn blocked(reply: &Stanza) -> Vec<String> {
        reply
            .payload()
            .map(|p| {
                p.children()
                    .filter_map(|i| i.attr("jid").map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn chat(from: &str, to: &str) -> Stanza {
        let el = element("message", ns::CLIENT, &[("type", "chat")]);
        Stanza::new(el, Jid::parse(from).unwrap(), Jid::parse(to).unwrap()).unwrap()
    }

    #[test]
    fn new_blocks_go_first() {
        let jid = |s: &str| Jid::parse(s).unwrap();
        let item = |order| PrivacyItem {
            matcher: PrivacyMatch::Always,
            action: PrivacyAction::Allow,
            order,
            stanzas: PrivacyStanzas::ALL,
        };
        let (a, b) = (jid("a@x"), jid("b@x"));
        let orders = |v: Vec<PrivacyItem>| v.iter().map(|i| i.order).collect::<Vec<_>>();
        // Room below the lowest order.
        let v = prepend_blocks(vec![item(10), item(20)], &[&a, &b]);
        assert_eq!(orders(v.clone()), [8, 9, 10, 20]);
        assert!(v[0].is_block() && v[1].is_block());
        // No room: renumbered, relative order kept.
        assert_eq!(
            orders(prepend_blocks(vec![item(1), item(5)], &[&a, &b])),
            [0, 1, 2, 3]
        );
        assert_eq!(orders(prepend_blocks(Vec::new(), &[&a])), [0]);
    }

    #[tokio::test]
    async fn block_get_unblock_with_pushes() {
        let f = Fixture::new().await;
        let alice = f.account("alice@localhost").await;
        let mut a = f.session("alice@localhost/a").await;
        let mut b = f.session("alice@localhost/b").await;
        let mut quiet = f.session("alice@localhost/q").await;
        for s in [&mut a, &mut b] {
            let reply = s
                .iq(
                    "alice@localhost",
                    "get",
                    "<blocklist xmlns='urn:xmpp:blocking'/>",
                )
                .await;
            assert_eq!(reply.type_attr(), Some("result"));
            assert!(blocked(&reply).is_empty());
        }
        let block = "<block xmlns='urn:xmpp:blocking'><item jid='Bob@localhost'/>\
                     <item jid='spam.example'/></block>";
        let reply = a.iq("alice@localhost", "set", block).await;
        assert_eq!(reply.type_attr(), Some("result"));
        // The blocklist is the default list "Blocked contacts".
        let default = f
            .server
            .stores()
            .default_privacy_list(&alice)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(default.name, BLOCKED_CONTACTS);
        assert_eq!(default.items.len(), 2);
        // Interested resources get the push (besides the privacy-list push); q did not ask.
        let push_of = |v: Vec<Stanza>| {
            v.into_iter()
                .find(|s| s.payload().is_some_and(|p| p.is("block", NS_BLOCKING)))
        };
        let push = push_of(b.drain()).expect("block push to b");
        assert_eq!(blocked(&push), ["bob@localhost", "spam.example"]);
        assert!(push_of(a.drain()).is_some());
        assert!(push_of(quiet.drain()).is_none());
        let reply = b
            .iq(
                "alice@localhost",
                "get",
                "<blocklist xmlns='urn:xmpp:blocking'/>",
            )
            .await;
        assert_eq!(blocked(&reply), ["bob@localhost", "spam.example"]);
        // Unblock one, then all.
        let reply = a
            .iq(
                "alice@localhost",
                "set",
                "<unblock xmlns='urn:xmpp:blocking'><item jid='spam.example'/></unblock>",
            )
            .await;
        assert_eq!(reply.type_attr(), Some("result"));
        let push = b
            .drain()
            .into_iter()
            .find(|s| s.payload().is_some_and(|p| p.is("unblock", NS_BLOCKING)))
            .expect("unblock push");
        assert_eq!(blocked(&push), ["spam.example"]);
        let reply = a
            .iq(
                "alice@localhost",
                "get",
                "<blocklist xmlns='urn:xmpp:blocking'/>",
            )
            .await;
        assert_eq!(blocked(&reply), ["bob@localhost"]);
        a.iq(
            "alice@localhost",
            "set",
            "<unblock xmlns='urn:xmpp:blocking'/>",
        )
        .await;
        let lists = f.server.stores().privacy_lists(&alice).await.unwrap();
        assert_eq!(lists, Default::default(), "the emptied list is gone");
    }

    #[tokio::test]
    async fn request_errors() {
        let f = Fixture::new().await;
        f.account("alice@localhost").await;
        let mut a = f.session("alice@localhost/a").await;
        let cases = [
            ("set", "<block xmlns='urn:xmpp:blocking'/>", C::BadRequest),
            (
                "set",
                "<block xmlns='urn:xmpp:blocking'><item jid='a@b@c'/></block>",
                C::JidMalformed,
            ),
            (
                "set",
                "<block xmlns='urn:xmpp:blocking'><item/></block>",
                C::BadRequest,
            ),
            ("get", "<block xmlns='urn:xmpp:blocking'/>", C::BadRequest),
        ];
        for (kind, payload, expected) in cases {
            let reply = a.iq("alice@localhost", kind, payload).await;
            assert_eq!(error_condition(&reply), Some(expected), "{payload}");
        }
        let mut bob = f.session("bob@localhost/b").await;
        let reply = bob
            .iq(
                "alice@localhost",
                "get",
                "<blocklist xmlns='urn:xmpp:blocking'/>",
            )
            .await;
        assert_eq!(error_condition(&reply), Some(C::Forbidden));
    }

    #[tokio::test]
    async fn blocking_is_enforced_both_ways() {
        let f = Fixture::new().await;
        let alice = f.account("alice@localhost").await;
        f.account("bob@localhost").await;
        let mut a = f.session("alice@localhost/a").await;
        a.set_available();
        let mut bob = f.session("bob@localhost/b").await;
        bob.set_available();
        // Bob is subscribed to Alice's presence.
        let mut item = RosterItem::new(BareJid::parse("bob@localhost").unwrap());
        item.subscription = Subscription::From;
        f.server
            .stores()
            .put_item(&alice, &item, 100)
            .await
            .unwrap();
        a.iq(
            "alice@localhost",
            "set",
            "<block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block>",
        )
        .await;
        a.drain();
        // §3.3: Bob saw Alice go offline.
        let seen = bob.drain();
        assert!(
            seen.iter().any(|s| s.type_attr() == Some("unavailable")
                && s.from().as_str() == "alice@localhost/a"),
            "{seen:?}"
        );
        // Bob's message bounces.
        f.server
            .route(chat("bob@localhost/b", "alice@localhost"))
            .await;
        assert!(a.drain().is_empty());
        let bounce = bob.next().expect("bounce");
        assert_eq!(error_condition(&bounce), Some(C::ServiceUnavailable));
        // Alice's message to Bob is refused with <blocked/>.
        let hooks = f.server.host_modules("localhost").unwrap();
        let mut arg = UserSendPacket {
            session: a.jid.clone(),
            stanza: chat("alice@localhost/a", "bob@localhost"),
        };
        assert_eq!(
            hooks
                .hooks()
                .user_send_packet
                .run(&f.server, &mut arg)
                .await,
            HookResult::Stop
        );
        let error = a.next().expect("error");
        assert_eq!(error_condition(&error), Some(C::NotAcceptable));
        assert!(
            error
                .element()
                .get_child("error", ns::CLIENT)
                .and_then(|e| e.get_child("blocked", NS_BLOCKING_ERRORS))
                .is_some()
        );
        // Alice's presence broadcast no longer reaches Bob (checked on Bob's side).
        let p = Stanza::new(
            element("presence", ns::CLIENT, &[]),
            a.jid.clone().into(),
            Jid::parse("bob@localhost").unwrap(),
        )
        .unwrap();
        f.server.route(p).await;
        assert!(bob.drain().is_empty());
        // Unblocking lets Bob hear from Alice again.
        a.iq(
            "alice@localhost",
            "set",
            "<unblock xmlns='urn:xmpp:blocking'/>",
        )
        .await;
        f.server
            .route(chat("bob@localhost/b", "alice@localhost"))
            .await;
        assert!(
            a.drain()
                .iter()
                .any(|s| s.kind() == starling_xmpp::stanza::Kind::Message)
        );
    }
}
