//! XEP-0198 §5 resumption across cluster nodes (`starling_core::handover`): the connection
//! side. A child module of `session` (it extends the session task with two steps).
//!
//! - **Resuming here** ([`fetch`], [`resume_here`], [`Established::restore`]): when
//!   `<resume previd/>` names no session of this node, the cluster is asked; if another node
//!   owned it, the full JID is bound here, the stream management counters, unacknowledged
//!   stanzas, presence, carbons and client state are restored, and the client gets
//!   `<resumed h/>` and the unacknowledged stanzas again, exactly as for a local resumption.
//!   The session keeps its id, and registers it here for the next resumption.
//! - **Letting go** ([`Established::hand_off`]): the owner's task checks the account and
//!   the client's `h`, leaves the directory and the resumable registry, takes what its inbox
//!   still holds, and answers with the state. Unlike an ending session it does not broadcast
//!   unavailable presence (the user never left) and does not re-route unacknowledged stanzas
//!   (they travel with the state); modules' per-session state is forgotten
//!   (`session_closed`). If nobody takes the answer, the stanzas are routed again.
//!
//! Not carried over: directed presence (RFC 6121 §4.6) and the privacy active list.

use starling_core::handover::{HandoverRefused, HandoverRequest, HandoverState};
use starling_core::module::IqTarget;

use super::*;

/// XEP-0280's namespace (the module's IQ handler is asked to re-enable carbons).
const NS_CARBONS: &str = "urn:xmpp:carbons:2";

/// A handed-over session to restore in a freshly bound task.
pub(super) struct Restored {
    /// The stream management id the client resumed.
    pub(super) previd: String,
    /// What the previous owner handed over.
    pub(super) state: HandoverState,
}

/// Asks the other cluster nodes for resumable session `previd` of `user`.
pub(super) async fn fetch(
    server: &Server,
    user: &BareJid,
    previd: &str,
    h: u32,
) -> Result<HandoverState, HandoverRefused> {
    match server.sm().cluster() {
        Some(cluster) => cluster.take_over(user, previd, h).await,
        None => Err(HandoverRefused::NotFound),
    }
}

/// Binds a handed-over session on this node and serves it (the rest of the connection's
/// life). If the full JID cannot be bound, the client gets `<failed/>` and the stanzas are
/// routed again.
pub(super) async fn resume_here(
    server: Arc<Server>,
    mut conn: Conn,
    previd: String,
    state: HandoverState,
) {
    let full = state.jid.clone();
    match server
        .sm()
        .bind(full.clone(), server.config().max_user_sessions)
    {
        Ok((id, channels)) => {
            tracing::Span::current().record("jid", tracing::field::display(&full));
            let restored = Restored { previd, state };
            established(server, conn, (full, id, channels), Some(restored)).await;
        }
        Err(BindError::TooManySessions) => {
            let host = full.domain().to_owned();
            reroute(&server, &host, state.unacked).await;
            let _ = conn
                .write(sm_failed(StanzaErrorCondition::ItemNotFound).as_bytes())
                .await;
            conn.close().await;
        }
    }
}

/// True if `el`, a stanza the bound client sent, turns carbons on (`Some(true)`) or off: an
/// IQ-set to the account itself (or with no `to`) with XEP-0280 `<enable/>`/`<disable/>`.
pub(super) fn carbons_toggle(el: &Element, bare: &BareJid) -> Option<bool> {
    if el.name() != "iq" || el.attr("type") != Some("set") {
        return None;
    }
    if let Some(to) = el.attr("to")
        && to != bare.as_str()
    {
        return None;
    }
    let child = el.children().find(|c| c.ns() == NS_CARBONS)?;
    match child.name() {
        "enable" => Some(true),
        "disable" => Some(false),
        _ => None,
    }
}

/// Routes again the messages of a session whose state went nowhere (with `<delay/>`), as an
/// ending session does with what its client never acknowledged.
async fn reroute(server: &Server, host: &str, unacked: Vec<(Arc<Stanza>, i64)>) {
    for (stanza, queued_at) in unacked {
        if sm::fate(&stanza, true) == Fate::Reroute {
            let el = sm::with_delay(&stanza, host, queued_at);
            if let Ok(again) = Stanza::new(el, stanza.from().clone(), stanza.to().clone()) {
                server.route(again).await;
            }
        }
    }
}

impl Established {
    /// Restores a handed-over session on `conn` (before the first attached loop): counters,
    /// queue, presence, client state and carbons, then `<resumed/>` and the resend. `None`
    /// if the connection failed meanwhile (the session is then detached, still resumable).
    pub(super) async fn restore(
        &mut self,
        mut conn: Box<Conn>,
        restored: Restored,
    ) -> Option<Box<Conn>> {
        let Restored { previd, state } = restored;
        let settings = self.sm_settings.clone().unwrap_or_default();
        let timeout = Duration::from_secs(state.resume_timeout_secs);
        let unacked = state
            .unacked
            .into_iter()
            .map(|(stanza, queued_at)| Unacked { stanza, queued_at })
            .collect();
        let mut sm = StreamManagement::restored(
            &settings,
            (previd.clone(), timeout),
            state.inbound,
            state.acked,
            unacked,
        );
        self.server.sm().register_resumable(
            previd.clone(),
            Resumable {
                jid: self.full.clone(),
                id: self.id,
                takeover: self.takeover.clone(),
            },
        );
        // Contacts already saw this presence: the directory learns it without a broadcast.
        self.presence.available = state.available;
        let presence = state.presence;
        self.server.sm().update(&self.full, self.id, |entry| {
            entry.available = state.available;
            entry.priority = state.priority;
            entry.interested = state.interested;
            entry.presence = presence;
        });
        if state.csi_inactive
            && let Some(csi) = self.csi.as_mut()
        {
            csi.set_inactive();
        }
        if state.carbons {
            self.enable_carbons().await;
        }
        // Acknowledges nothing new (the owner applied the client's h): everything queued.
        let resend = sm.on_resume(state.acked).unwrap_or_default();
        let resumed = sm.resumed_element(&previd);
        self.sm = Some(sm);
        tracing::info!(jid = %self.full, peer = %conn.peer, resent = resend.len(), "session resumed from another node");
        conn.write_element(&resumed).await.ok()?;
        for stanza in &resend {
            conn.write(&stanza.bytes()).await.ok()?;
        }
        if !resend.is_empty() {
            let request = format!("<r xmlns='{}'/>", sm::NS);
            conn.write(request.as_bytes()).await.ok()?;
            if let Some(sm) = self.sm.as_mut() {
                sm.on_request_sent(Instant::now().into_std());
            }
        }
        Some(conn)
    }

    /// Turns carbons on for this session through `mod_carboncopy`'s own handler, as the
    /// client did on the previous node.
    async fn enable_carbons(&mut self) {
        let Some(modules) = self.server.host_modules(&self.host) else {
            return;
        };
        let Some(handler) = modules.iq_handler(NS_CARBONS, IqTarget::Account) else {
            return;
        };
        let mut iq = element("iq", ns::CLIENT, &[("type", "set"), ("id", "handover")]);
        iq.append_child(element("enable", NS_CARBONS, &[]));
        if let Ok(stanza) = Stanza::new(iq, self.full.clone().into(), self.bare.clone().into())
            && handler.handle(&self.server, &stanza).await.is_ok()
        {
            self.carbons = true;
        }
    }

    /// Another node's client resumes this session: let it go with its state.
    pub(super) async fn hand_off(
        &mut self,
        request: HandoverRequest,
        ch: &mut Channels,
    ) -> TakeOver {
        let HandoverRequest {
            user,
            previd,
            h,
            reply,
        } = request;
        let Some(sm) = self
            .sm
            .as_mut()
            .filter(|sm| user == self.bare && sm.resume_id() == Some(previd.as_str()))
        else {
            let _ = reply.send(Err(HandoverRefused::NotFound));
            return TakeOver::Rejected;
        };
        // Checked before anything changes: a bad h leaves this session as it was.
        let (_, acked) = sm.counts();
        let newly = usize::try_from(h.wrapping_sub(acked)).unwrap_or(usize::MAX);
        if newly > sm.unacked_len() {
            let sent = sm.sent();
            let _ = reply.send(Err(HandoverRefused::HandledCountTooHigh { h, sent }));
            return TakeOver::Rejected;
        }
        let csi_inactive = self.csi.as_ref().is_some_and(ClientState::is_inactive);
        let held = self
            .csi
            .as_mut()
            .map(ClientState::set_active)
            .unwrap_or_default();
        let now = Instant::now().into_std();
        // The queue may exceed max_ack_queue here; the new owner applies its own limit.
        for stanza in held {
            let _ = sm.on_sent(stanza, now, unix_now());
        }
        let _ = sm.on_resume(h);
        // Leave the directory first: nothing more is queued for us, and the directory change
        // reaches the resuming node before the answer.
        let entry = self
            .server
            .sm()
            .get_local(&self.full)
            .filter(|e| e.id == self.id);
        self.server.sm().unbind(&self.full, self.id);
        self.server.sm().forget_resumable(&previd, self.id);
        let mut late = Vec::new();
        while let Ok(SessionMsg::Stanza(stanza)) = ch.inbox.try_recv() {
            late.push(stanza);
        }
        let mut accepted = Vec::with_capacity(late.len());
        for stanza in late {
            if self.receive_hook(&stanza).await {
                accepted.push(stanza);
            }
        }
        let Some(mut sm) = self.sm.take() else {
            let _ = reply.send(Err(HandoverRefused::NotFound));
            return TakeOver::Rejected;
        };
        for stanza in accepted {
            let _ = sm.on_sent(stanza, now, unix_now());
        }
        let (inbound, acked) = sm.counts();
        let unacked: Vec<(Arc<Stanza>, i64)> = sm
            .take_unacked()
            .into_iter()
            .map(|u| (u.stanza, u.queued_at))
            .collect();
        if let Some(modules) = self.server.host_modules(&self.host) {
            let mut arg = SessionClosed {
                session: self.full.clone(),
            };
            modules
                .hooks()
                .session_closed
                .run(&self.server, &mut arg)
                .await;
        }
        let state = HandoverState {
            jid: self.full.clone(),
            inbound,
            acked,
            unacked,
            resume_timeout_secs: sm.resume_timeout().map_or(0, |t| t.as_secs()),
            available: entry.as_ref().is_some_and(|e| e.available),
            priority: entry.as_ref().map_or(0, |e| e.priority),
            interested: entry.as_ref().is_some_and(|e| e.interested),
            presence: entry.and_then(|e| e.presence),
            carbons: self.carbons,
            csi_inactive,
        };
        let count = state.unacked.len();
        if let Err(Ok(state)) = reply.send(Ok(state)) {
            // The cluster layer gave up waiting: nothing may vanish.
            reroute(&self.server, &self.host, state.unacked).await;
        }
        tracing::info!(jid = %self.full, unacked = count, "session handed over to another node");
        TakeOver::HandedOff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carbons_toggles_are_recognised_only_for_the_account_itself() {
        let bare = BareJid::parse("u@x").unwrap();
        let parse = |xml: &str| -> Element { xml.parse().unwrap() };
        let enable = parse(
            "<iq xmlns='jabber:client' type='set' id='1'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
        );
        assert_eq!(carbons_toggle(&enable, &bare), Some(true));
        let disable = parse(
            "<iq xmlns='jabber:client' type='set' id='1' to='u@x'>\
             <disable xmlns='urn:xmpp:carbons:2'/></iq>",
        );
        assert_eq!(carbons_toggle(&disable, &bare), Some(false));
        let elsewhere = parse(
            "<iq xmlns='jabber:client' type='set' id='1' to='v@x'>\
             <enable xmlns='urn:xmpp:carbons:2'/></iq>",
        );
        assert_eq!(carbons_toggle(&elsewhere, &bare), None);
        let get = parse(
            "<iq xmlns='jabber:client' type='get' id='1'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
        );
        assert_eq!(carbons_toggle(&get, &bare), None);
        let other = parse(
            "<iq xmlns='jabber:client' type='set' id='1'><query xmlns='jabber:iq:roster'/></iq>",
        );
        assert_eq!(carbons_toggle(&other, &bare), None);
    }
}
