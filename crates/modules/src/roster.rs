//! `mod_roster`: roster management, RFC 6121 §2, answered for the account itself.
//!
//! - **get** (§2.1.3, §2.2): marks the requesting session *interested* (it receives roster
//!   pushes from then on, §2.1.6) and returns the roster. Items that are only a contact's
//!   pending subscription request are left out (`starling_core::roster::is_visible`).
//!   With `versioning` (§2.6) the result carries `ver`, and a request whose `ver` equals the
//!   current version gets an empty result (§2.6.3). The store keeps no change history, so a
//!   client with an older version receives the whole roster rather than the pushes it missed
//!   (the "complete roster" option §2.6.3 allows).
//! - **set** (§2.3, §2.4): exactly one item. Only the name and groups change; the
//!   `subscription` attribute is ignored except for `remove` (§2.1.2.5), so subscription state
//!   moves only through presence (§3). Errors as §2.3.3: `<bad-request/>` for several items or
//!   duplicate groups, `<not-acceptable/>` for an empty group or a name or group over
//!   [`MAX_NAME_BYTES`]; beyond the RFC, more than [`MAX_GROUPS`] groups and the user's own
//!   JID are `<not-acceptable/>` (as Prosody answers them; the server tracks a user's own
//!   presence without a roster item), and a JID that does not parse is `<jid-malformed/>`.
//!   A full roster (`Server::max_roster_items`) is `<resource-constraint/>`, as in
//!   `starling_core::presence`.
//! - **remove** (§2.5): the contact is told (`unsubscribe` if the user received its presence
//!   or asked to, `unsubscribed` if it received the user's or asked to, with unavailable
//!   presence from the user's available resources, §3.2.2), the item is deleted and a push
//!   with `subscription='remove'` goes to the interested resources. An unknown item is
//!   `<item-not-found/>` (§2.5.3).
//!
//! Only an authenticated resource of the account may read or change its roster; anyone else
//! gets `<forbidden/>` (§2.3.3). The `access` option (ejabberd's) can deny roster changes to
//! some users; `store_current_id` is accepted and has no effect (versions always come from
//! the store). Stream features: `ver` (§2.6.1) when versioning is on, and always `sub`
//! (§3.4 pre-approval, implemented by the core's subscription state machine).

use std::sync::Arc;

use starling_config::{
    AccessDecision, AccessRequest, ModuleOptions, ModuleSpec, OptionKind, OptionSpec,
};
use starling_core::BoxFuture;
use starling_core::Server;
use starling_core::hooks::{Hook, HookResult, RemoveUser};
use starling_core::module::{
    HostContext, IqHandler, IqResult, IqTarget, Module, ModuleError, Registrations,
};
use starling_core::presence::push_roster_item;
use starling_core::roster::{is_subscribed_to, is_subscriber, is_visible, query_element};
use starling_storage::{RosterItem, StorageError, Subscription};
use starling_xmpp::Element;
use starling_xmpp::error::{StanzaError, StanzaErrorCondition};
use starling_xmpp::jid::{BareJid, Jid};
use starling_xmpp::ns;
use starling_xmpp::stanza::{IqType, Stanza, element};

use crate::iq;

/// Longest accepted item name or group name, in bytes (the JID part limit of RFC 7622).
pub const MAX_NAME_BYTES: usize = 1023;
/// Most groups one item may be in.
pub const MAX_GROUPS: usize = 64;

const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "versioning",
        kind: OptionKind::Bool,
        doc: "Roster versioning, RFC 6121 §2.6 (default false).",
    },
    OptionSpec {
        name: "store_current_id",
        kind: OptionKind::Bool,
        doc: "Accepted for ejabberd compatibility; versions always come from the database.",
    },
    OptionSpec {
        name: "access",
        kind: OptionKind::AccessRule,
        doc: "Access rule deciding who may change their roster (default all).",
    },
];

/// `mod_roster`.
pub struct Roster;

impl Module for Roster {
    fn spec(&self) -> ModuleSpec {
        ModuleSpec {
            name: "mod_roster",
            aliases: &["roster"],
            options: OPTIONS,
        }
    }

    fn start(
        &self,
        _host: &HostContext<'_>,
        options: &ModuleOptions,
    ) -> Result<Registrations, ModuleError> {
        let versioning = options.bool("versioning").unwrap_or(false);
        let handler = RosterHandler {
            versioning,
            access: options.string("access").unwrap_or("all").to_owned(),
        };
        let mut registrations = Registrations::default()
            .iq(ns::ROSTER, IqTarget::Account, Arc::new(handler))
            .stream_feature("sub", ns::PRE_APPROVAL);
        if versioning {
            registrations = registrations.stream_feature("ver", ns::ROSTER_VER);
        }
        registrations
            .hooks
            .remove_user
            .add(50, Arc::new(CancelOnRemove));
        Ok(registrations)
    }
}

/// `remove_user`: contacts are told the subscriptions end before the roster disappears.
struct CancelOnRemove;

impl Hook<RemoveUser> for CancelOnRemove {
    fn call<'a>(
        &'a self,
        server: &'a Server,
        arg: &'a mut RemoveUser,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            cancel_subscriptions(server, &arg.user).await;
            HookResult::Continue
        })
    }
}

struct RosterHandler {
    versioning: bool,
    access: String,
}

impl IqHandler for RosterHandler {
    fn handle<'a>(&'a self, server: &'a Server, iq: &'a Stanza) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            let (kind, query) = iq::request(iq)?;
            if !query.is("query", ns::ROSTER) {
                return Err(iq::error(StanzaErrorCondition::BadRequest));
            }
            let user = iq::account(iq)?;
            if !iq::from_account_itself(iq) {
                return Err(iq::error(StanzaErrorCondition::Forbidden));
            }
            match kind {
                IqType::Get => self.get(server, iq, &user, query).await,
                _ => self.set(server, iq, &user, query).await,
            }
        })
    }
}

impl RosterHandler {
    /// §2.1.3 roster get, §2.6.3 with versioning.
    async fn get(&self, server: &Server, iq: &Stanza, user: &BareJid, query: &Element) -> IqResult {
        if let Ok(full) = iq.from().clone().into_full() {
            server.sm().set_interested(&full);
        }
        let stores = server.stores();
        if self.versioning
            && let Some(cached) = query.attr("ver")
        {
            let current = stores
                .version(user)
                .await
                .map_err(|e| iq::storage_failure("cannot load roster version", user, &e))?;
            if cached == current {
                return Ok(None);
            }
        }
        let (items, ver) = stores
            .roster(user)
            .await
            .map_err(|e| iq::storage_failure("cannot load roster", user, &e))?;
        Ok(Some(query_element(
            items.iter().filter(|i| is_visible(i)),
            self.versioning.then_some(ver.as_str()),
        )))
    }

    /// §2.3 add, §2.4 update, §2.5 delete.
    async fn set(&self, server: &Server, iq: &Stanza, user: &BareJid, query: &Element) -> IqResult {
        let mut items = query.children().filter(|c| c.is("item", ns::ROSTER));
        let (Some(item), None) = (items.next(), items.next()) else {
            return Err(iq::error(StanzaErrorCondition::BadRequest)
                .with_text("a roster set carries exactly one item"));
        };
        let request = AccessRequest {
            user: user.node().map(|n| (n, user.domain())),
            resource: iq.from().resource(),
            ..AccessRequest::default()
        };
        if server.config().access(&self.access, &request) == AccessDecision::Deny {
            return Err(iq::error(StanzaErrorCondition::Forbidden)
                .with_text("roster changes are not allowed"));
        }
        let contact = contact_of(item, user)?;
        if item.attr("subscription") == Some("remove") {
            return remove(server, user, &contact).await;
        }
        let (name, groups) = name_and_groups(item)?;
        let stores = server.stores();
        let existing = stores
            .item(user, &contact)
            .await
            .map_err(|e| iq::storage_failure("cannot load roster item", user, &e))?;
        let mut updated = existing.unwrap_or_else(|| RosterItem::new(contact));
        updated.name = name;
        updated.groups = groups;
        let ver = match stores
            .put_item(user, &updated, server.max_roster_items())
            .await
        {
            Ok(ver) => ver,
            Err(StorageError::QuotaExceeded) => {
                return Err(
                    iq::error(StanzaErrorCondition::ResourceConstraint).with_text("roster is full")
                );
            }
            Err(e) => return Err(iq::storage_failure("cannot store roster item", user, &e)),
        };
        if is_visible(&updated) {
            push_roster_item(server, user, &updated, &ver);
        }
        Ok(None)
    }
}

/// The item's `jid`: a bare JID other than the user's own.
fn contact_of(item: &Element, user: &BareJid) -> Result<BareJid, StanzaError> {
    let Some(raw) = item.attr("jid") else {
        return Err(iq::error(StanzaErrorCondition::BadRequest).with_text("item without jid"));
    };
    let jid = Jid::parse(raw).map_err(|_| iq::error(StanzaErrorCondition::JidMalformed))?;
    let Err(contact) = jid.into_full() else {
        return Err(
            iq::error(StanzaErrorCondition::NotAcceptable).with_text("roster items are bare JIDs")
        );
    };
    if contact == *user {
        return Err(iq::error(StanzaErrorCondition::NotAcceptable)
            .with_text("the user's own JID cannot be a roster item"));
    }
    Ok(contact)
}

/// The `name` and `<group/>`s of an item, checked as §2.3.3 asks.
fn name_and_groups(item: &Element) -> Result<(Option<String>, Vec<String>), StanzaError> {
    let not_acceptable =
        |text: &str| iq::error(StanzaErrorCondition::NotAcceptable).with_text(text.to_owned());
    let name = item.attr("name").filter(|n| !n.is_empty());
    if name.is_some_and(|n| n.len() > MAX_NAME_BYTES) {
        return Err(not_acceptable("item name too long"));
    }
    let mut groups: Vec<String> = Vec::new();
    for group in item.children().filter(|c| c.is("group", ns::ROSTER)) {
        let group = group.text();
        if group.is_empty() {
            return Err(not_acceptable("empty group name"));
        }
        if group.len() > MAX_NAME_BYTES {
            return Err(not_acceptable("group name too long"));
        }
        if groups.contains(&group) {
            return Err(iq::error(StanzaErrorCondition::BadRequest).with_text("duplicate group"));
        }
        if groups.len() >= MAX_GROUPS {
            return Err(not_acceptable("too many groups"));
        }
        groups.push(group);
    }
    Ok((name.map(str::to_owned), groups))
}

/// §2.5.2: delete an item, telling the contact and the user's interested resources.
async fn remove(server: &Server, user: &BareJid, contact: &BareJid) -> IqResult {
    let stores = server.stores();
    let existing = stores
        .item(user, contact)
        .await
        .map_err(|e| iq::storage_failure("cannot load roster item", user, &e))?;
    let Some(existing) = existing else {
        return Err(iq::error(StanzaErrorCondition::ItemNotFound));
    };
    let ver = stores
        .remove_item(user, contact)
        .await
        .map_err(|e| iq::storage_failure("cannot remove roster item", user, &e))?;
    // Someone else removed it between the two calls: the push went out with their change.
    let Some(ver) = ver else {
        return Err(iq::error(StanzaErrorCondition::ItemNotFound));
    };
    let mut removed = RosterItem::new(contact.clone());
    removed.subscription = Subscription::Remove;
    push_roster_item(server, user, &removed, &ver);
    send_cancellations(server, user, &existing).await;
    Ok(None)
}

/// Ends every subscription of `user` with its contacts, as removing each item would; used
/// when the account itself is deleted (XEP-0077 §3.2), before its roster disappears.
pub async fn cancel_subscriptions(server: &Server, user: &BareJid) {
    match server.stores().roster(user).await {
        Ok((items, _)) => {
            for item in &items {
                send_cancellations(server, user, item).await;
            }
        }
        Err(e) => tracing::error!(%user, error = %e, "cannot load roster to cancel subscriptions"),
    }
}

/// Routes the presence that tells a contact an item is gone (§2.5.2, §3.2.2, §3.3.2):
/// `unsubscribe` if the user received its presence or asked to, `unsubscribed` if the
/// contact received the user's presence or asked to (a pending request is thereby denied),
/// and unavailable presence from the user's available resources when it had been sharing.
async fn send_cancellations(server: &Server, user: &BareJid, item: &RosterItem) {
    let contact: Jid = item.jid.clone().into();
    if is_subscribed_to(item) || item.ask_out {
        route_presence(server, user.clone().into(), contact.clone(), "unsubscribe").await;
    }
    if is_subscriber(item) || item.pending_in.is_some() {
        route_presence(server, user.clone().into(), contact.clone(), "unsubscribed").await;
    }
    if is_subscriber(item) {
        for session in server.sm().available_of(user) {
            route_presence(server, session.jid.into(), contact.clone(), "unavailable").await;
        }
    }
}

async fn route_presence(server: &Server, from: Jid, to: Jid, kind: &str) {
    let el = element("presence", ns::CLIENT, &[("type", kind)]);
    match Stanza::new(el, from, to) {
        Ok(stanza) => server.route(stanza).await,
        Err(e) => tracing::error!(error = %e, "cannot build presence"),
    }
}

#[cfg(test)]
mod tests {
    use starling_config::OptionValue;
    use starling_xmpp::error::StanzaErrorCondition as C;
    use starling_xmpp::stanza::Kind;

    use super::*;
    use crate::fixture::{Fixture, TestSession, error_condition, set_option};

    const GET: &str = "<query xmlns='jabber:iq:roster'/>";

    fn set_item(attrs: &str, groups: &[&str]) -> String {
        let groups: String = groups
            .iter()
            .map(|g| format!("<group>{g}</group>"))
            .collect();
        format!("<query xmlns='jabber:iq:roster'><item {attrs}>{groups}</item></query>")
    }

    fn items(reply: &Stanza) -> Vec<Element> {
        reply
            .payload()
            .map(|q| q.children().cloned().collect())
            .unwrap_or_default()
    }

    /// The roster pushes among `stanzas`, as (jid, subscription, ver).
    fn pushes(stanzas: &[Stanza]) -> Vec<(String, String, Option<String>)> {
        stanzas
            .iter()
            .filter(|s| s.kind() == Kind::Iq && s.type_attr() == Some("set"))
            .filter_map(|s| {
                let q = s.payload()?;
                let item = q.get_child("item", ns::ROSTER)?;
                Some((
                    item.attr("jid")?.to_owned(),
                    item.attr("subscription")?.to_owned(),
                    q.attr("ver").map(str::to_owned),
                ))
            })
            .collect()
    }

    fn presences(stanzas: &[Stanza]) -> Vec<String> {
        stanzas
            .iter()
            .filter(|s| s.kind() == Kind::Presence)
            .map(|s| s.type_attr().unwrap_or("available").to_owned())
            .collect()
    }

    async fn alice(f: &Fixture) -> (BareJid, TestSession) {
        let user = f.account("alice@localhost").await;
        let mut s = f.session("alice@localhost/a").await;
        let reply = s.iq("alice@localhost", "get", GET).await;
        assert_eq!(reply.type_attr(), Some("result"));
        (user, s)
    }

    #[tokio::test]
    async fn get_set_update_with_pushes() {
        let f = Fixture::new().await;
        let (alice, mut s) = alice(&f).await;
        let mut quiet = f.session("alice@localhost/quiet").await;
        // Empty roster, no ver without versioning.
        let reply = s.iq("alice@localhost", "get", GET).await;
        assert!(items(&reply).is_empty());
        assert_eq!(reply.payload().unwrap().attr("ver"), None);

        let reply = s
            .iq(
                "alice@localhost",
                "set",
                &set_item(
                    "jid='Nurse@Example.com' name='Nurse' subscription='both'",
                    &["Servants"],
                ),
            )
            .await;
        assert_eq!(reply.type_attr(), Some("result"));
        assert_eq!(reply.payload().map(Element::name), None);
        let p = pushes(&s.drain());
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, "nurse@example.com");
        assert_eq!(p[0].1, "none", "subscription attribute is ignored");
        assert!(
            quiet.drain().is_empty(),
            "only interested resources get pushes"
        );

        let reply = s.iq("alice@localhost", "get", GET).await;
        let got = items(&reply);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].attr("name"), Some("Nurse"));
        assert_eq!(
            got[0].get_child("group", ns::ROSTER).unwrap().text(),
            "Servants"
        );

        // Update keeps the subscription state.
        let nurse = BareJid::parse("nurse@example.com").unwrap();
        let mut stored = f
            .server
            .stores()
            .item(&alice, &nurse)
            .await
            .unwrap()
            .unwrap();
        stored.subscription = Subscription::Both;
        f.server
            .stores()
            .put_item(&alice, &stored, 100)
            .await
            .unwrap();
        let reply = s
            .iq(
                "alice@localhost",
                "set",
                &set_item("jid='nurse@example.com' name='Angelica'", &["A", "B"]),
            )
            .await;
        assert_eq!(reply.type_attr(), Some("result"));
        let p = pushes(&s.drain());
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].1, "both");
        let stored = f
            .server
            .stores()
            .item(&alice, &nurse)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.name.as_deref(), Some("Angelica"));
        assert_eq!(stored.groups, vec!["A", "B"]);
        assert_eq!(stored.subscription, Subscription::Both);
    }

    #[tokio::test]
    async fn pending_requests_are_not_listed() {
        let f = Fixture::new().await;
        let alice = f.account("alice@localhost").await;
        let mut item = RosterItem::new(BareJid::parse("bob@localhost").unwrap());
        item.pending_in = Some("<presence type='subscribe'/>".into());
        f.server
            .stores()
            .put_item(&alice, &item, 100)
            .await
            .unwrap();
        let mut s = f.session("alice@localhost/a").await;
        let reply = s.iq("alice@localhost", "get", GET).await;
        assert!(items(&reply).is_empty());
    }

    #[tokio::test]
    async fn remove_tells_the_contact_and_pushes() {
        let f = Fixture::new().await;
        let (alice, mut s) = alice(&f).await;
        s.set_available();
        let bob = f.account("bob@localhost").await;
        let mut bob_s = f.session("bob@localhost/b").await;
        bob_s.set_available();
        let mut item = RosterItem::new(bob.clone());
        item.subscription = Subscription::Both;
        f.server
            .stores()
            .put_item(&alice, &item, 100)
            .await
            .unwrap();
        let mut item = RosterItem::new(alice.clone());
        item.subscription = Subscription::Both;
        f.server.stores().put_item(&bob, &item, 100).await.unwrap();

        let reply = s
            .iq(
                "alice@localhost",
                "set",
                &set_item("jid='bob@localhost' subscription='remove'", &[]),
            )
            .await;
        assert_eq!(reply.type_attr(), Some("result"));
        let p = pushes(&s.drain());
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, "bob@localhost");
        assert_eq!(p[0].1, "remove");
        assert!(
            f.server
                .stores()
                .item(&alice, &bob)
                .await
                .unwrap()
                .is_none()
        );
        let got = bob_s.drain();
        let kinds = presences(&got);
        assert!(kinds.contains(&"unsubscribe".to_owned()), "{kinds:?}");
        assert!(kinds.contains(&"unsubscribed".to_owned()), "{kinds:?}");
        assert!(kinds.contains(&"unavailable".to_owned()), "{kinds:?}");
        let from_bare = got
            .iter()
            .filter(|s| matches!(s.type_attr(), Some("unsubscribe" | "unsubscribed")))
            .all(|s| s.from().as_str() == "alice@localhost");
        assert!(from_bare, "subscription stanzas leave from the bare JID");
        let bobs = f.server.stores().item(&bob, &alice).await.unwrap().unwrap();
        assert_eq!(bobs.subscription, Subscription::None);

        // Removing it again: item-not-found.
        let reply = s
            .iq(
                "alice@localhost",
                "set",
                &set_item("jid='bob@localhost' subscription='remove'", &[]),
            )
            .await;
        assert_eq!(error_condition(&reply), Some(C::ItemNotFound));
    }

    #[tokio::test]
    async fn removing_a_pending_out_item_sends_unsubscribe_only() {
        let f = Fixture::new().await;
        let (alice, mut s) = alice(&f).await;
        let mut item = RosterItem::new(BareJid::parse("carol@localhost").unwrap());
        item.ask_out = true;
        f.server
            .stores()
            .put_item(&alice, &item, 100)
            .await
            .unwrap();
        let carol = f.account("carol@localhost").await;
        let mut pending = RosterItem::new(alice.clone());
        pending.pending_in = Some("<presence type='subscribe'/>".into());
        f.server
            .stores()
            .put_item(&carol, &pending, 100)
            .await
            .unwrap();
        let reply = s
            .iq(
                "alice@localhost",
                "set",
                &set_item("jid='carol@localhost' subscription='remove'", &[]),
            )
            .await;
        assert_eq!(reply.type_attr(), Some("result"));
        // Carol's server processed the unsubscribe: the pending request is gone.
        let carols = f
            .server
            .stores()
            .item(&carol, &alice)
            .await
            .unwrap()
            .unwrap();
        assert!(carols.pending_in.is_none());
    }

    #[tokio::test]
    async fn versioning() {
        let f = Fixture::with(|c| {
            set_option(c, "mod_roster", "versioning", OptionValue::Bool(true));
        })
        .await;
        let (_alice, mut s) = alice(&f).await;
        let reply = s.iq("alice@localhost", "get", GET).await;
        let ver = reply.payload().unwrap().attr("ver").unwrap().to_owned();
        // Same version: empty result.
        let cached = format!("<query xmlns='jabber:iq:roster' ver='{ver}'/>");
        let reply = s.iq("alice@localhost", "get", &cached).await;
        assert_eq!(reply.type_attr(), Some("result"));
        assert!(reply.payload().is_none());
        s.iq(
            "alice@localhost",
            "set",
            &set_item("jid='bob@localhost'", &[]),
        )
        .await;
        let p = pushes(&s.drain());
        let pushed_ver = p[0].2.clone().unwrap();
        assert_ne!(pushed_ver, ver);
        // Stale version: the whole roster with the new version.
        let reply = s.iq("alice@localhost", "get", &cached).await;
        assert_eq!(
            reply.payload().unwrap().attr("ver"),
            Some(pushed_ver.as_str())
        );
        assert_eq!(items(&reply).len(), 1);
        // Stream features.
        let modules = f.server.host_modules("localhost").unwrap();
        let features = &modules.registrations.stream_features;
        assert!(features.contains(&("ver", ns::ROSTER_VER)));
        assert!(features.contains(&("sub", ns::PRE_APPROVAL)));
    }

    #[tokio::test]
    async fn without_versioning_only_preapproval_is_advertised() {
        let f = Fixture::new().await;
        let modules = f.server.host_modules("localhost").unwrap();
        let features = &modules.registrations.stream_features;
        assert!(!features.iter().any(|(_, ns)| *ns == ns::ROSTER_VER));
        assert!(features.contains(&("sub", ns::PRE_APPROVAL)));
    }

    #[tokio::test]
    async fn set_errors() {
        let f = Fixture::new().await;
        let (alice, mut s) = alice(&f).await;
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        let many: Vec<String> = (0..=MAX_GROUPS).map(|i| format!("g{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let two = "<query xmlns='jabber:iq:roster'><item jid='a@x'/><item jid='b@x'/></query>";
        let cases: Vec<(String, C)> = vec![
            (two.to_owned(), C::BadRequest),
            (
                "<query xmlns='jabber:iq:roster'/>".to_owned(),
                C::BadRequest,
            ),
            (set_item("name='x'", &[]), C::BadRequest),
            (set_item("jid='a@b@c'", &[]), C::JidMalformed),
            (set_item("jid='a@x/r'", &[]), C::NotAcceptable),
            (set_item("jid='alice@localhost'", &[]), C::NotAcceptable),
            (set_item("jid='a@x'", &[""]), C::NotAcceptable),
            (set_item("jid='a@x'", &["g", "g"]), C::BadRequest),
            (
                set_item(&format!("jid='a@x' name='{long}'"), &[]),
                C::NotAcceptable,
            ),
            (set_item("jid='a@x'", &[&long]), C::NotAcceptable),
            (set_item("jid='a@x'", &many), C::NotAcceptable),
        ];
        for (payload, expected) in cases {
            let reply = s.iq("alice@localhost", "set", &payload).await;
            assert_eq!(error_condition(&reply), Some(expected), "{payload}");
        }
        let (roster, _) = f.server.stores().roster(&alice).await.unwrap();
        assert!(roster.is_empty(), "nothing was stored");
        // Exactly MAX_GROUPS is fine.
        let reply = s
            .iq(
                "alice@localhost",
                "set",
                &set_item("jid='a@x'", &many[..MAX_GROUPS]),
            )
            .await;
        assert_eq!(reply.type_attr(), Some("result"));
    }

    #[tokio::test]
    async fn full_roster_is_a_resource_constraint() {
        let f = Fixture::new().await;
        let (alice, mut s) = alice(&f).await;
        for i in 0..f.server.max_roster_items() {
            let item = RosterItem::new(BareJid::parse(&format!("c{i}@example.net")).unwrap());
            let max = f.server.max_roster_items();
            f.server
                .stores()
                .put_item(&alice, &item, max)
                .await
                .unwrap();
        }
        let reply = s
            .iq("alice@localhost", "set", &set_item("jid='one-more@x'", &[]))
            .await;
        assert_eq!(error_condition(&reply), Some(C::ResourceConstraint));
        // Updating an existing item still works.
        let reply = s
            .iq(
                "alice@localhost",
                "set",
                &set_item("jid='c0@example.net' name='x'", &[]),
            )
            .await;
        assert_eq!(reply.type_attr(), Some("result"));
    }

    #[tokio::test]
    async fn other_users_are_forbidden() {
        let f = Fixture::new().await;
        f.account("alice@localhost").await;
        let mut bob = f.session("bob@localhost/b").await;
        let reply = bob.iq("alice@localhost", "get", GET).await;
        assert_eq!(error_condition(&reply), Some(C::Forbidden));
        let reply = bob
            .iq("alice@localhost", "set", &set_item("jid='x@y'", &[]))
            .await;
        assert_eq!(error_condition(&reply), Some(C::Forbidden));
    }

    #[tokio::test]
    async fn access_rule_can_deny_changes() {
        let f = Fixture::with(|c| {
            set_option(
                c,
                "mod_roster",
                "access",
                OptionValue::String("none".into()),
            );
        })
        .await;
        let (_alice, mut s) = alice(&f).await;
        let reply = s
            .iq("alice@localhost", "set", &set_item("jid='x@y'", &[]))
            .await;
        assert_eq!(error_condition(&reply), Some(C::Forbidden));
    }
}
