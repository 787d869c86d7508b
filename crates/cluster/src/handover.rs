//! XEP-0198 §5 resumption through another node (`starling_core::handover`), over the mesh.
//!
//! The node a client resumes through sends [`Message::TakeOver`] to every peer that speaks
//! protocol [`wire::HANDOVER_VERSION`] (the id does not name its owner: a session handed over
//! once keeps its id but lives on another node, so asking everyone is simpler than tracking
//! moves) and takes the first [`Handover::Found`]. A peer that owns the session asks its task
//! to let go ([`HandoverRequest`]) and answers with the state; its task has already left the
//! directory, so the `SessionDown` precedes the answer on the link. An answer nobody waits for
//! any more (the resuming connection timed out) is not lost: its unacknowledged stanzas are
//! routed again, with `<delay/>`, as when a session ends without being resumed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use starling_core::Server;
use starling_core::handover::{HandoverRefused, HandoverRequest, HandoverState};
use starling_core::sm::Takeover;
use starling_xmpp::jid::{BareJid, FullJid};
use starling_xmpp::stanza::Stanza;
use tokio::sync::{mpsc, oneshot};

use crate::wire::{self, Handover, HandoverRecord, Message};

/// How long the resuming node waits for the owners' answers.
pub(crate) const HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// Requests waiting for answers, by request id.
#[derive(Default)]
pub(crate) struct Pending {
    next: AtomicU64,
    waiting: DashMap<u64, mpsc::Sender<Handover>>,
}

impl Pending {
    /// A new request id whose answer goes to `tx`.
    pub(crate) fn register(&self, tx: mpsc::Sender<Handover>) -> u64 {
        let req = self.next.fetch_add(1, Ordering::Relaxed);
        self.waiting.insert(req, tx);
        req
    }

    /// Forgets `req` (answered or abandoned).
    pub(crate) fn forget(&self, req: u64) {
        self.waiting.remove(&req);
    }

    /// Hands an answer to its waiter; gives it back when nobody waits.
    pub(crate) fn answer(&self, req: u64, outcome: Handover) -> Result<(), Handover> {
        match self.waiting.get(&req).map(|w| w.clone()) {
            Some(tx) => tx.try_send(outcome).map_err(|e| match e {
                mpsc::error::TrySendError::Full(o) | mpsc::error::TrySendError::Closed(o) => o,
            }),
            None => Err(outcome),
        }
    }
}

/// What a resumption asks: the account, the stream management id and the client's `h`.
pub(crate) struct Ask<'a> {
    pub(crate) user: &'a BareJid,
    pub(crate) previd: &'a str,
    pub(crate) h: u32,
}

/// The requester's side: sends one [`Message::TakeOver`] per peer through `send` (peer name,
/// encoded frame; false if it could not be queued) and waits up to `limit` for the outcome
/// ([`HANDOVER_TIMEOUT`] in production).
pub(crate) async fn request(
    pending: &Pending,
    peers: Vec<String>,
    send: impl Fn(&str, Vec<u8>) -> bool,
    ask: Ask<'_>,
    limit: Duration,
) -> Result<HandoverState, HandoverRefused> {
    let Ask { user, previd, h } = ask;
    let (tx, mut rx) = mpsc::channel(peers.len().max(1));
    let mut reqs = Vec::with_capacity(peers.len());
    for peer in &peers {
        let req = pending.register(tx.clone());
        let frame = wire::encode(&Message::TakeOver {
            req,
            user: user.to_string(),
            previd: previd.to_owned(),
            h,
        });
        if send(peer, frame) {
            reqs.push(req);
        } else {
            pending.forget(req);
        }
    }
    drop(tx);
    let mut outcome = Err(HandoverRefused::NotFound);
    let deadline = tokio::time::Instant::now() + limit;
    for _ in 0..reqs.len() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Handover::Found(record))) => {
                outcome = from_record(record).ok_or(HandoverRefused::NotFound);
                break;
            }
            Ok(Some(Handover::TooHigh { h, sent })) => {
                outcome = Err(HandoverRefused::HandledCountTooHigh { h, sent });
                break;
            }
            Ok(Some(Handover::NotFound)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    for req in reqs {
        pending.forget(req);
    }
    // A late `Found` for a request forgotten here is re-routed by `unclaimed`.
    outcome
}

/// The owner's side of a [`Message::TakeOver`]: asks the session's task to let go.
pub(crate) async fn serve(server: &Server, user: &str, previd: &str, h: u32) -> Handover {
    let Ok(user) = BareJid::parse(user) else {
        return Handover::NotFound;
    };
    let Some(owner) = server
        .sm()
        .resumable(previd)
        .filter(|r| r.jid.to_bare() == user)
    else {
        return Handover::NotFound;
    };
    let (reply, answer) = oneshot::channel();
    let request: Takeover = Box::new(HandoverRequest {
        user,
        previd: previd.to_owned(),
        h,
        reply,
    });
    if owner.takeover.send(request).await.is_err() {
        return Handover::NotFound;
    }
    // The task always answers, or drops the request when it ends first.
    match answer.await {
        Ok(Ok(state)) => Handover::Found(to_record(&state)),
        Ok(Err(HandoverRefused::HandledCountTooHigh { h, sent })) => Handover::TooHigh { h, sent },
        Ok(Err(HandoverRefused::NotFound)) | Err(_) => Handover::NotFound,
    }
}

/// A `Found` answer that nobody waits for: its stanzas must not vanish, so they are routed
/// again (to the account's other resources, else offline storage), marked as delayed.
pub(crate) async fn unclaimed(server: &Server, outcome: Handover) {
    let Handover::Found(record) = outcome else {
        return;
    };
    let Some(state) = from_record(record) else {
        return;
    };
    tracing::warn!(jid = %state.jid, count = state.unacked.len(), "session handed over too late; routing its stanzas again");
    for (stanza, _queued_at) in state.unacked {
        if stanza.kind() == starling_xmpp::stanza::Kind::Message {
            let again = Stanza::new(
                stanza.element().clone(),
                stanza.from().clone(),
                state.jid.to_bare().into(),
            );
            if let Ok(again) = again {
                server.route(again).await;
            }
        }
    }
}

/// The wire form of a session's state.
pub(crate) fn to_record(state: &HandoverState) -> HandoverRecord {
    HandoverRecord {
        jid: state.jid.to_string(),
        inbound: state.inbound,
        acked: state.acked,
        unacked: state
            .unacked
            .iter()
            .map(|(s, at)| (s.bytes().to_vec(), *at))
            .collect(),
        resume_timeout_secs: state.resume_timeout_secs,
        available: state.available,
        priority: state.priority,
        interested: state.interested,
        presence: state
            .presence
            .as_ref()
            .map(|p| String::from_utf8_lossy(&starling_xmpp::codec::to_bytes(p)).into_owned()),
        carbons: state.carbons,
        csi_inactive: state.csi_inactive,
    }
}

/// A received state; `None` if the JID is invalid. Unparsable stanzas are dropped with a
/// warning (a peer of the same cluster serialised them, so this does not happen).
pub(crate) fn from_record(record: HandoverRecord) -> Option<HandoverState> {
    let jid = FullJid::parse(&record.jid).ok()?;
    let unacked = record
        .unacked
        .iter()
        .filter_map(|(bytes, at)| match crate::mesh::parse_stanza(bytes) {
            Some(stanza) => Some((Arc::new(stanza), *at)),
            None => {
                tracing::warn!(%jid, "undecodable handed-over stanza dropped");
                None
            }
        })
        .collect();
    let presence = record
        .presence
        .as_deref()
        .and_then(|p| p.parse::<starling_xmpp::Element>().ok())
        .map(Arc::new);
    Some(HandoverState {
        jid,
        inbound: record.inbound,
        acked: record.acked,
        unacked,
        resume_timeout_secs: record.resume_timeout_secs,
        available: record.available,
        priority: record.priority,
        interested: record.interested,
        presence,
        carbons: record.carbons,
        csi_inactive: record.csi_inactive,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> HandoverState {
        let stanza: starling_xmpp::Element =
            "<message xmlns='jabber:client' from='a@x/r' to='u@x/p' type='chat'><body>hi</body></message>"
                .parse()
                .unwrap();
        let stanza = Stanza::new(
            stanza,
            FullJid::parse("a@x/r").unwrap().into(),
            FullJid::parse("u@x/p").unwrap().into(),
        )
        .unwrap();
        HandoverState {
            jid: FullJid::parse("u@x/p").unwrap(),
            inbound: 4,
            acked: 2,
            unacked: vec![(Arc::new(stanza), 1_700_000_000)],
            resume_timeout_secs: 300,
            available: true,
            priority: 3,
            interested: true,
            presence: Some(Arc::new(
                "<presence xmlns='jabber:client'><show>away</show></presence>"
                    .parse()
                    .unwrap(),
            )),
            carbons: true,
            csi_inactive: true,
        }
    }

    #[test]
    fn state_round_trips_through_the_wire_form() {
        let record = to_record(&state());
        let bytes = wire::encode(&Message::HandedOver {
            req: 9,
            outcome: Handover::Found(record.clone()),
        });
        let mut d = wire::FrameDecoder::new();
        d.feed(&bytes);
        let Some(Message::HandedOver {
            outcome: Handover::Found(back),
            ..
        }) = d.next_message().unwrap()
        else {
            panic!("not a HandedOver");
        };
        assert_eq!(back, record);
        let state = from_record(back).unwrap();
        assert_eq!(state.jid.as_str(), "u@x/p");
        assert_eq!((state.inbound, state.acked, state.priority), (4, 2, 3));
        assert!(state.carbons && state.csi_inactive && state.interested && state.available);
        let (stanza, at) = state.unacked.first().unwrap();
        assert_eq!(*at, 1_700_000_000);
        assert!(String::from_utf8_lossy(&stanza.bytes()).contains("<body>hi</body>"));
        assert!(
            state
                .presence
                .unwrap()
                .get_child("show", "jabber:client")
                .is_some()
        );
    }

    #[test]
    fn a_bad_jid_is_not_a_session() {
        let mut record = to_record(&state());
        record.jid = "not a jid@@".into();
        assert!(from_record(record).is_none());
    }

    #[tokio::test]
    async fn the_first_found_wins_and_silence_means_not_found() {
        let pending = Pending::default();
        let sent = std::sync::Mutex::new(Vec::new());
        let user = BareJid::parse("u@x").unwrap();
        // Nobody answers within the limit: NotFound.
        let outcome = request(
            &pending,
            vec!["n1".into(), "n2".into()],
            |peer, _| {
                sent.lock().unwrap().push(peer.to_owned());
                true
            },
            Ask {
                user: &user,
                previd: "id",
                h: 0,
            },
            Duration::from_millis(50),
        )
        .await;
        assert_eq!(outcome.unwrap_err(), HandoverRefused::NotFound);
        assert_eq!(sent.lock().unwrap().len(), 2);
        assert!(pending.waiting.is_empty());
        // A late answer is handed back to the caller (which re-routes it).
        assert!(pending.answer(0, Handover::NotFound).is_err());
    }

    #[tokio::test]
    async fn answers_reach_the_waiting_request() {
        let pending = Arc::new(Pending::default());
        let user = BareJid::parse("u@x").unwrap();
        let p = pending.clone();
        let task = tokio::spawn(async move {
            let ask = Ask {
                user: &user,
                previd: "id",
                h: 0,
            };
            request(
                &p,
                vec!["n1".into(), "n2".into()],
                |_, _| true,
                ask,
                HANDOVER_TIMEOUT,
            )
            .await
        });
        // Wait until both requests are registered, then answer NotFound and Found.
        while pending.waiting.len() < 2 {
            tokio::task::yield_now().await;
        }
        let mut reqs: Vec<u64> = pending.waiting.iter().map(|e| *e.key()).collect();
        reqs.sort_unstable();
        pending.answer(reqs[0], Handover::NotFound).unwrap();
        pending
            .answer(reqs[1], Handover::Found(to_record(&state())))
            .unwrap();
        let state = task.await.unwrap().unwrap();
        assert_eq!(state.jid.as_str(), "u@x/p");
        assert!(pending.waiting.is_empty());
    }
}
