//! Presence (RFC 6121 §4) and subscription handling (§3) with their storage and routing.
//!
//! The decisions are in [`crate::roster`] (pure); this module loads the roster, applies the
//! outcome and sends what follows: roster pushes, probes, broadcasts, automatic replies.
//! A connection keeps a [`PresenceState`] for its own session (availability and the directed
//! presence it sent) and calls [`from_client`] for every presence the client sends and
//! [`session_closed`] when it ends.

use std::collections::BTreeSet;
use std::sync::Arc;

use starling_storage::{RosterItem, StorageError, Subscription};
use starling_xmpp::Element;
use starling_xmpp::error::{StanzaError, StanzaErrorCondition};
use starling_xmpp::jid::{BareJid, FullJid, Jid};
use starling_xmpp::ns;
use starling_xmpp::stanza::{PresenceType, Stanza, element, remove_attr, set_attr};

use crate::hooks::{PresenceBroadcast, UserAvailable};
use crate::roster::{self, Outcome};
use crate::router::{bounce, bounce_with, route};
use crate::server::{Server, unix_now};
use crate::sm::SessionId;

/// One session's own presence state, owned by its connection task.
#[derive(Debug)]
pub struct PresenceState {
    /// The session's full JID.
    pub jid: FullJid,
    /// The directory id of the session.
    pub id: SessionId,
    /// Initial presence sent and not yet unavailable.
    pub available: bool,
    /// Entities that received directed available presence (RFC 6121 §4.6), told when we leave.
    pub directed: BTreeSet<Jid>,
}

impl PresenceState {
    /// A new, unavailable session.
    pub fn new(jid: FullJid, id: SessionId) -> Self {
        Self {
            jid,
            id,
            available: false,
            directed: BTreeSet::new(),
        }
    }
}

/// A presence stanza sent by the client of `state` (its `from` not yet trusted).
pub async fn from_client(server: &Server, state: &mut PresenceState, mut el: Element) {
    let Some(kind) = PresenceType::parse(el.attr("type")) else {
        if let Ok(stanza) = client_stanza(el, state, None) {
            bounce(server, &stanza, StanzaErrorCondition::BadRequest).await;
        }
        return;
    };
    let to = match el.attr("to").map(Jid::parse) {
        None => None,
        Some(Ok(to)) => Some(to),
        Some(Err(_)) => {
            if let Ok(stanza) = client_stanza(el, state, None) {
                bounce(server, &stanza, StanzaErrorCondition::JidMalformed).await;
            }
            return;
        }
    };
    match (to, kind) {
        (None, PresenceType::Available) => broadcast_available(server, state, el).await,
        (None, PresenceType::Unavailable) => broadcast_unavailable(server, state, el).await,
        // A presence without `to` of another type has no meaning (RFC 6121 §4.7.1).
        (None, _) => {}
        (Some(to), kind) if kind.is_subscription() => {
            outbound_subscription(server, state, el, to.to_bare(), kind).await;
        }
        (Some(to), kind) => {
            match kind {
                PresenceType::Available => {
                    state.directed.insert(to.clone());
                }
                PresenceType::Unavailable => {
                    state.directed.remove(&to);
                }
                _ => {}
            }
            set_attr(&mut el, "from", state.jid.as_str());
            if let Ok(stanza) = Stanza::new(el, state.jid.clone().into(), to) {
                route(server, stanza).await;
            }
        }
    }
}

fn client_stanza(
    el: Element,
    state: &PresenceState,
    to: Option<Jid>,
) -> Result<Stanza, starling_xmpp::stanza::StanzaParseError> {
    let to = to.unwrap_or_else(|| state.jid.to_bare().into());
    Stanza::new(el, state.jid.clone().into(), to)
}

fn priority_of(el: &Element) -> i8 {
    el.get_child("priority", ns::CLIENT)
        .and_then(|p| p.text().trim().parse::<i8>().ok())
        .unwrap_or(0)
}

async fn roster_or_empty(server: &Server, user: &BareJid) -> Vec<RosterItem> {
    match server.stores().roster(user).await {
        Ok((items, _)) => items,
        Err(e) => {
            tracing::error!(%user, error = %e, "cannot load roster");
            Vec::new()
        }
    }
}

/// Runs the `presence_broadcast` hook; modules may read or amend the presence.
async fn presence_hook(server: &Server, state: &PresenceState, el: Element) -> Element {
    let Some(modules) = server.host_modules(state.jid.domain()) else {
        return el;
    };
    if modules.hooks().presence_broadcast.is_empty() {
        return el;
    }
    let mut arg = PresenceBroadcast {
        session: state.jid.clone(),
        presence: el,
    };
    modules
        .hooks()
        .presence_broadcast
        .run(server, &mut arg)
        .await;
    arg.presence
}

async fn broadcast_available(server: &Server, state: &mut PresenceState, mut el: Element) {
    remove_attr(&mut el, "to");
    set_attr(&mut el, "from", state.jid.as_str());
    let el = presence_hook(server, state, el).await;
    let initial = !state.available;
    state.available = true;
    let priority = priority_of(&el);
    let shared = Arc::new(el.clone());
    server.sm().update(&state.jid, state.id, |e| {
        e.available = true;
        e.priority = priority;
        e.presence = Some(shared);
    });
    let user = state.jid.to_bare();
    let items = roster_or_empty(server, &user).await;
    broadcast(server, state, &el, &items).await;
    if initial {
        // §4.2.2: probe the contacts whose presence we receive, show the user's other
        // resources to the new one, and deliver pending subscription requests (§3.1.3).
        for item in items.iter().filter(|i| roster::is_subscribed_to(i)) {
            let probe = element("presence", ns::CLIENT, &[("type", "probe")]);
            if let Ok(stanza) = Stanza::new(probe, user.clone().into(), item.jid.clone().into()) {
                route(server, stanza).await;
            }
        }
        if let Some(me) = server.sm().get(&state.jid) {
            for other in server.sm().available_of(&user) {
                if other.id == state.id {
                    continue;
                }
                if let Some(p) = &other.presence {
                    deliver_copy(&me, p, other.jid.clone().into(), state.jid.clone().into());
                }
            }
            for item in &items {
                let Some(xml) = &item.pending_in else {
                    continue;
                };
                if let Ok(request) = xml.parse::<Element>() {
                    deliver_copy(&me, &request, item.jid.clone().into(), user.clone().into());
                }
            }
        }
        if let Some(modules) = server.host_modules(user.domain()) {
            let mut arg = UserAvailable {
                session: state.jid.clone(),
            };
            modules.hooks().user_available.run(server, &mut arg).await;
        }
    }
}

fn deliver_copy(target: &crate::sm::SessionEntry, el: &Element, from: Jid, to: Jid) {
    if let Ok(stanza) = Stanza::new(el.clone(), from, to) {
        target.deliver(Arc::new(stanza));
    }
}

/// Sends `el` (from the session's full JID) to every subscriber, every available resource of
/// the user (the sender included, as clients expect their own presence reflected) and every
/// directed-presence recipient.
async fn broadcast(server: &Server, state: &PresenceState, el: &Element, items: &[RosterItem]) {
    let from: Jid = state.jid.clone().into();
    let mut sent: BTreeSet<Jid> = BTreeSet::new();
    for item in items.iter().filter(|i| roster::is_subscriber(i)) {
        let to: Jid = item.jid.clone().into();
        if let Ok(stanza) = Stanza::new(el.clone(), from.clone(), to.clone()) {
            route(server, stanza).await;
        }
        sent.insert(to);
    }
    for session in server.sm().sessions_of(&state.jid.to_bare()) {
        if session.available || session.id == state.id {
            deliver_copy(&session, el, from.clone(), session.jid.clone().into());
        }
    }
    for to in &state.directed {
        if sent.contains(to) || sent.contains(&Jid::from(to.to_bare())) {
            continue;
        }
        if let Ok(stanza) = Stanza::new(el.clone(), from.clone(), to.clone()) {
            route(server, stanza).await;
        }
    }
}

async fn broadcast_unavailable(server: &Server, state: &mut PresenceState, mut el: Element) {
    if !state.available && state.directed.is_empty() {
        return;
    }
    remove_attr(&mut el, "to");
    set_attr(&mut el, "from", state.jid.as_str());
    let el = presence_hook(server, state, el).await;
    state.available = false;
    server.sm().update(&state.jid, state.id, |e| {
        e.available = false;
        e.presence = None;
    });
    let items = roster_or_empty(server, &state.jid.to_bare()).await;
    broadcast(server, state, &el, &items).await;
    state.directed.clear();
}

/// The connection ended: broadcast unavailable if needed and record last activity (XEP-0012).
pub async fn session_closed(server: &Server, state: &mut PresenceState, status: Option<&str>) {
    // Last activity is recorded before contacts learn the user left, so a contact that asks
    // (XEP-0012) as soon as it sees the unavailable presence gets the new answer.
    let user = state.jid.to_bare();
    let others = server
        .sm()
        .sessions_of(&user)
        .into_iter()
        .any(|s| s.id != state.id);
    if !others
        && let Err(e) = server
            .stores()
            .set_last(&user, unix_now(), status.unwrap_or(""))
            .await
    {
        tracing::warn!(%user, error = %e, "cannot record last activity");
    }
    if state.available || !state.directed.is_empty() {
        let mut el = element("presence", ns::CLIENT, &[("type", "unavailable")]);
        if let Some(status) = status {
            el.append_child(starling_xmpp::stanza::text_element(
                "status",
                ns::CLIENT,
                status,
            ));
        }
        broadcast_unavailable(server, state, el).await;
    }
}

/// Stores a changed item and pushes it; maps a full roster to `<resource-constraint/>`.
async fn store_and_push(
    server: &Server,
    user: &BareJid,
    item: &RosterItem,
) -> Result<(), StanzaError> {
    match server
        .stores()
        .put_item(user, item, server.max_roster_items())
        .await
    {
        Ok(ver) => {
            if roster::is_visible(item) {
                push_roster_item(server, user, item, &ver);
            }
            Ok(())
        }
        Err(StorageError::QuotaExceeded) => {
            Err(StanzaError::new(StanzaErrorCondition::ResourceConstraint)
                .with_text("roster is full"))
        }
        Err(e) => {
            tracing::error!(%user, error = %e, "cannot store roster item");
            Err(StanzaError::new(StanzaErrorCondition::InternalServerError))
        }
    }
}

/// Sends a roster push (RFC 6121 §2.1.6) to every resource of `user` that requested the roster.
pub fn push_roster_item(server: &Server, user: &BareJid, item: &RosterItem, ver: &str) {
    for session in server.sm().sessions_of(user) {
        if !session.interested {
            continue;
        }
        let mut iq = element("iq", ns::CLIENT, &[("type", "set"), ("id", &push_id())]);
        iq.append_child(roster::query_element([item], Some(ver)));
        deliver_copy(
            &session,
            &iq,
            user.clone().into(),
            session.jid.clone().into(),
        );
    }
}

fn push_id() -> String {
    format!("push{:016x}", rand::random::<u64>())
}

async fn outbound_subscription(
    server: &Server,
    state: &PresenceState,
    mut el: Element,
    contact: BareJid,
    kind: PresenceType,
) {
    let user = state.jid.to_bare();
    if contact == user {
        return;
    }
    let item = match server.stores().item(&user, &contact).await {
        Ok(item) => item,
        Err(e) => {
            tracing::error!(%user, error = %e, "cannot load roster item");
            return;
        }
    };
    let outcome = roster::outbound(item.as_ref(), &contact, kind);
    // RFC 6121 §3.1.2: subscription stanzas leave with the user's bare JID.
    set_attr(&mut el, "to", contact.as_str());
    let Ok(stanza) = Stanza::new(el, user.clone().into(), contact.clone().into()) else {
        return;
    };
    if let Some(new) = &outcome.store
        && let Err(error) = store_and_push(server, &user, new).await
    {
        // Tell the client; the reply goes back to the session that asked.
        if let Some(reply) = stanza.error_reply(&error)
            && let Some(me) = server.sm().get(&state.jid)
        {
            me.deliver(Arc::new(reply));
        }
        return;
    }
    if outcome.forward {
        route(server, stanza).await;
    }
    follow_up(server, &user, &contact, &outcome).await;
}

/// Presence effects of an outcome, on the user's side.
async fn follow_up(server: &Server, user: &BareJid, contact: &BareJid, outcome: &Outcome) {
    if let Some(reply) = outcome.auto_reply
        && let Some(t) = reply.as_attr()
    {
        let el = element("presence", ns::CLIENT, &[("type", t)]);
        if let Ok(stanza) = Stanza::new(el, user.clone().into(), contact.clone().into()) {
            route(server, stanza).await;
        }
    }
    if outcome.send_presence {
        for session in server.sm().available_of(user) {
            if let Some(p) = &session.presence
                && let Ok(stanza) = Stanza::new(
                    (**p).clone(),
                    session.jid.clone().into(),
                    contact.clone().into(),
                )
            {
                route(server, stanza).await;
            }
        }
    }
    if outcome.send_unavailable {
        for session in server.sm().available_of(user) {
            let el = element("presence", ns::CLIENT, &[("type", "unavailable")]);
            if let Ok(stanza) = Stanza::new(el, session.jid.clone().into(), contact.clone().into())
            {
                route(server, stanza).await;
            }
        }
    }
}

/// Presence addressed to local user `user` (bare JID, or subscription/probe to a full JID).
pub async fn inbound(server: &Server, stanza: Stanza, user: BareJid) {
    let Some(kind) = PresenceType::parse(stanza.type_attr()) else {
        bounce(server, &stanza, StanzaErrorCondition::BadRequest).await;
        return;
    };
    match kind {
        PresenceType::Probe => probe(server, &stanza, &user).await,
        k if k.is_subscription() => inbound_subscription(server, stanza, user, k).await,
        _ => {
            // §8.5.2.1.2: available, unavailable and error presence go to every available
            // resource.
            let stanza = Arc::new(stanza);
            for session in server.sm().available_of(&user) {
                session.deliver(stanza.clone());
            }
        }
    }
}

async fn inbound_subscription(server: &Server, stanza: Stanza, user: BareJid, kind: PresenceType) {
    let contact = stanza.from().to_bare();
    match server.stores().exists(&user).await {
        Ok(true) => {}
        Ok(false) => {
            // §3.1.3: a request to a user that does not exist is answered `unsubscribed`.
            if kind == PresenceType::Subscribe {
                let el = element("presence", ns::CLIENT, &[("type", "unsubscribed")]);
                if let Ok(reply) = Stanza::new(el, user.into(), contact.into()) {
                    route(server, reply).await;
                }
            }
            return;
        }
        Err(e) => {
            tracing::error!(%user, error = %e, "cannot check account");
            return;
        }
    }
    let item = match server.stores().item(&user, &contact).await {
        Ok(item) => item,
        Err(e) => {
            tracing::error!(%user, error = %e, "cannot load roster item");
            return;
        }
    };
    // Subscription stanzas are between bare JIDs (§3.1.3): normalise before storing/delivering.
    let mut el = stanza.into_element();
    set_attr(&mut el, "from", contact.as_str());
    set_attr(&mut el, "to", user.as_str());
    let Ok(stanza) = Stanza::new(el, contact.clone().into(), user.clone().into()) else {
        return;
    };
    let xml = String::from_utf8_lossy(&stanza.bytes()).into_owned();
    let outcome = roster::inbound(item.as_ref(), &contact, kind, &xml);
    if let Some(new) = &outcome.store
        && let Err(error) = store_and_push(server, &user, new).await
    {
        bounce_with(server, &stanza, error).await;
        return;
    }
    if outcome.forward {
        let stanza = Arc::new(stanza);
        for session in server.sm().available_of(&user) {
            session.deliver(stanza.clone());
        }
    }
    follow_up(server, &user, &contact, &outcome).await;
}

/// §4.3.2: answer a probe with the user's current presence if the prober is subscribed.
async fn probe(server: &Server, stanza: &Stanza, user: &BareJid) {
    let prober = stanza.from().clone();
    let contact = prober.to_bare();
    let allowed = if contact == *user {
        true
    } else {
        match server.stores().item(user, &contact).await {
            Ok(Some(item)) => matches!(item.subscription, Subscription::From | Subscription::Both),
            Ok(None) => false,
            Err(e) => {
                tracing::error!(%user, error = %e, "cannot load roster item");
                false
            }
        }
    };
    if !allowed {
        return;
    }
    let sessions = server.sm().available_of(user);
    let mut answered = false;
    for session in sessions {
        if let Some(p) = &session.presence
            && let Ok(reply) =
                Stanza::new((**p).clone(), session.jid.clone().into(), prober.clone())
        {
            route(server, reply).await;
            answered = true;
        }
    }
    if !answered {
        let el = element("presence", ns::CLIENT, &[("type", "unavailable")]);
        if let Ok(reply) = Stanza::new(el, user.clone().into(), prober) {
            route(server, reply).await;
        }
    }
}
