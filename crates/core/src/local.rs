//! The local router: stanzas for our own hosts (DESIGN.md §2.1).
//!
//! Addresses with a localpart go to the user delivery rules ([`crate::presence`] and
//! [`deliver_to_user`]); addresses without one are the server itself, whose IQs are answered by
//! the handlers modules registered for the namespace (RFC 6120 §8.2.3: every request gets a
//! result or an error; unknown namespaces get `<service-unavailable/>`).

use std::sync::Arc;

use starling_xmpp::error::StanzaErrorCondition;
use starling_xmpp::jid::BareJid;
use starling_xmpp::stanza::{IqType, Kind, MessageType, PresenceType, Stanza};

use crate::hooks::{HookResult, OfflineMessage, SmReceivePacket};
use crate::module::IqTarget;
use crate::presence;
use crate::router::{bounce, bounce_with, route as route_any};
use crate::server::Server;
use crate::sm::{SessionEntry, SessionId};

/// Routes a stanza addressed to one of our hosts.
pub async fn route(server: &Server, stanza: Stanza) {
    if stanza.to().node().is_some() {
        deliver_to_user(server, stanza).await;
        return;
    }
    match stanza.kind() {
        Kind::Iq => handle_iq(server, stanza, IqTarget::Host).await,
        // Messages and presence to the server itself have no handler yet: dropped, as ejabberd
        // does for messages without a registered service.
        Kind::Message | Kind::Presence => {}
    }
}

/// Answers an IQ addressed to the server (`Host`) or to an account's bare JID (`Account`).
pub async fn handle_iq(server: &Server, stanza: Stanza, target: IqTarget) {
    let Some(kind) = IqType::parse(stanza.type_attr()) else {
        bounce(server, &stanza, StanzaErrorCondition::BadRequest).await;
        return;
    };
    if !kind.is_request() {
        // Results and errors to the server answer requests modules sent with
        // `Server::iq_query`; others (unknown ids) are dropped, never answered.
        if target == IqTarget::Host
            && let Some(unclaimed) = server.iq_answered(stanza)
        {
            crate::placement::answer_elsewhere(server, &unclaimed);
        }
        return;
    }
    let mut children = stanza.element().children();
    let (Some(payload), None) = (children.next(), children.next()) else {
        // RFC 6120 §8.2.3: a get or set contains exactly one payload element.
        bounce(server, &stanza, StanzaErrorCondition::BadRequest).await;
        return;
    };
    let ns = payload.ns();
    let handler = server
        .host_modules(stanza.to().domain())
        .and_then(|m| m.iq_handler(&ns, target).cloned());
    let Some(handler) = handler else {
        bounce(server, &stanza, StanzaErrorCondition::ServiceUnavailable).await;
        return;
    };
    match handler.handle(server, &stanza).await {
        Ok(payload) => route_any(server, stanza.iq_result(payload)).await,
        Err(error) => bounce_with(server, &stanza, error).await,
    }
}

/// RFC 6121 §8.5: delivery to a local user's bare or full JID.
pub async fn deliver_to_user(server: &Server, stanza: Stanza) {
    let bare = stanza.to().to_bare();
    // `sm_receive_packet` runs once per stanza and account (blocking, archiving, carbons).
    let stanza = match server.host_modules(bare.domain()) {
        Some(modules) if !modules.hooks().sm_receive_packet.is_empty() => {
            let mut arg = SmReceivePacket {
                user: bare.clone(),
                stanza,
            };
            if modules
                .hooks()
                .sm_receive_packet
                .run(server, &mut arg)
                .await
                == HookResult::Stop
            {
                return;
            }
            arg.stanza
        }
        _ => stanza,
    };
    let to = stanza.to().clone();
    match to.into_full() {
        Ok(full) => match server.sm().get(&full) {
            Some(session) => deliver_to_full(server, &session, stanza).await,
            None => no_such_resource(server, stanza, bare).await,
        },
        Err(_) => deliver_to_bare(server, stanza, bare).await,
    }
}

async fn deliver_to_full(server: &Server, session: &SessionEntry, stanza: Stanza) {
    if stanza.kind() == Kind::Presence {
        match PresenceType::parse(stanza.type_attr()) {
            Some(t) if t.is_subscription() || t == PresenceType::Probe => {
                // §8.5.3.1: subscription stanzas and probes are handled for the account.
                presence::inbound(server, stanza, session.jid.to_bare()).await;
                return;
            }
            _ => {}
        }
    }
    session.deliver(Arc::new(stanza));
}

/// A stanza another node forwarded to session `id` bound here (the mesh's `Deliver`); its
/// `to` may be the bare JID (presence broadcasts, messages to the account). The sending node
/// already ran the account-level hooks and chose this session; if the session is gone
/// meanwhile, messages and IQs follow the RFC 6121 §8.5.3.2 rules for a missing resource and
/// presence is dropped (DESIGN.md §7.4), never processed for the account a second time.
pub async fn deliver_forwarded(server: &Server, stanza: Stanza, id: SessionId) {
    let bare = stanza.to().to_bare();
    match server.sm().get_local_by_id(&bare, id) {
        Some(session) => {
            session.deliver(Arc::new(stanza));
        }
        None if stanza.kind() == Kind::Presence => {}
        None => no_such_resource(server, stanza, bare).await,
    }
}

/// §8.5.3.2: a full JID with no such session.
async fn no_such_resource(server: &Server, stanza: Stanza, bare: BareJid) {
    match stanza.kind() {
        Kind::Message => match MessageType::parse(stanza.type_attr()) {
            MessageType::Normal | MessageType::Chat | MessageType::Headline => {
                deliver_to_bare(server, stanza, bare).await;
            }
            MessageType::Groupchat => {
                bounce(server, &stanza, StanzaErrorCondition::ServiceUnavailable).await;
            }
            MessageType::Error => {}
        },
        Kind::Presence => match PresenceType::parse(stanza.type_attr()) {
            Some(t) if t.is_subscription() || t == PresenceType::Probe => {
                presence::inbound(server, stanza, bare).await;
            }
            _ => {}
        },
        Kind::Iq => {
            if IqType::parse(stanza.type_attr()).is_some_and(IqType::is_request) {
                bounce(server, &stanza, StanzaErrorCondition::ServiceUnavailable).await;
            }
        }
    }
}

/// §8.5.2: a bare JID.
async fn deliver_to_bare(server: &Server, stanza: Stanza, bare: BareJid) {
    match stanza.kind() {
        Kind::Message => deliver_message_to_bare(server, stanza, &bare).await,
        Kind::Presence => presence::inbound(server, stanza, bare).await,
        Kind::Iq => handle_iq(server, stanza, IqTarget::Account).await,
    }
}

async fn deliver_message_to_bare(server: &Server, stanza: Stanza, bare: &BareJid) {
    let kind = MessageType::parse(stanza.type_attr());
    let targets = match kind {
        MessageType::Error => return drop_or_deliver_error(server, stanza, bare),
        MessageType::Groupchat => {
            bounce(server, &stanza, StanzaErrorCondition::ServiceUnavailable).await;
            return;
        }
        MessageType::Headline => {
            let mut v = server.sm().available_of(bare);
            v.retain(|e| e.priority >= 0);
            v
        }
        MessageType::Normal | MessageType::Chat => server.sm().message_targets(bare),
    };
    if !targets.is_empty() {
        let stanza = Arc::new(stanza);
        for target in targets {
            target.deliver(stanza.clone());
        }
        return;
    }
    // No available resource (§8.5.2.2.1): headlines are dropped; chat and normal messages to
    // an existing account go to the `offline_message` hook (mod_offline stores them); when
    // nothing takes them, or the account does not exist, the sender gets an error.
    if kind == MessageType::Headline {
        return;
    }
    let exists = match server.stores().exists(bare).await {
        Ok(exists) => exists,
        Err(e) => {
            tracing::error!(user = %bare, error = %e, "cannot check account");
            false
        }
    };
    let stanza = match server.host_modules(bare.domain()) {
        Some(modules) if exists && !modules.hooks().offline_message.is_empty() => {
            let mut arg = OfflineMessage {
                user: bare.clone(),
                stanza,
            };
            if modules.hooks().offline_message.run(server, &mut arg).await == HookResult::Stop {
                return;
            }
            arg.stanza
        }
        _ => stanza,
    };
    bounce(server, &stanza, StanzaErrorCondition::ServiceUnavailable).await;
}

/// Error messages to a bare JID go to the highest-priority resource if any, else are dropped.
fn drop_or_deliver_error(server: &Server, stanza: Stanza, bare: &BareJid) {
    if let Some(target) = server.sm().message_targets(bare).into_iter().next() {
        target.deliver(Arc::new(stanza));
    }
}
