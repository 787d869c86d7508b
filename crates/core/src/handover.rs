//! XEP-0198 §5 resumption across cluster nodes: what the node owning a resumable session
//! hands to the node a client resumed through.
//!
//! A client behind a load balancer may reconnect to any node. When `<resume previd/>` names a
//! session this node does not hold, the connection asks the cluster
//! ([`crate::sm::ClusterView::take_over`]); the owner's cluster layer puts a
//! [`HandoverRequest`] into the session's takeover channel (the same one a local resumption
//! uses, see [`crate::sm::Takeover`]). The owning task checks the account and the client's
//! `h`, leaves the directory *without* broadcasting unavailable presence or re-routing what
//! the client has not acknowledged, and answers with a [`HandoverState`]; the resuming node
//! binds the same full JID and carries on as if the session had been resumed locally.
//!
//! The types are here, not in the connection or cluster crates, because both must name them
//! and neither may depend on the other.

use std::sync::Arc;

use starling_xmpp::Element;
use starling_xmpp::jid::{BareJid, FullJid};
use starling_xmpp::stanza::Stanza;
use tokio::sync::oneshot;

/// Everything a resumed session needs from its previous owner.
#[derive(Debug, Clone)]
pub struct HandoverState {
    /// The session's full JID, bound again on the new node.
    pub jid: FullJid,
    /// Stanzas received from the client (the `h` the server reports), modulo 2^32.
    pub inbound: u32,
    /// The client's `h` from `<resume/>`: what it confirmed.
    pub acked: u32,
    /// Stanzas sent (or queued while detached) and not acknowledged, oldest first, with when
    /// they were queued (Unix seconds, for `<delay/>` if they are re-routed later).
    pub unacked: Vec<(Arc<Stanza>, i64)>,
    /// How long a detached session waits for resumption (seconds).
    pub resume_timeout_secs: u64,
    /// The directory entry's presence fields: available, priority, interested in roster
    /// pushes, and the last available presence broadcast (contacts already saw it).
    pub available: bool,
    /// Presence priority.
    pub priority: i8,
    /// Receives roster pushes.
    pub interested: bool,
    /// The last available presence, to answer probes.
    pub presence: Option<Arc<Element>>,
    /// XEP-0280 carbons were enabled by the session.
    pub carbons: bool,
    /// XEP-0352: the client said it is inactive.
    pub csi_inactive: bool,
}

/// Why the owner did not hand a session over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoverRefused {
    /// No resumable session with that id for that account (expired, closed, never existed,
    /// or its node is unreachable): `<failed><item-not-found/></failed>`.
    NotFound,
    /// The client's `h` acknowledges more than was sent (XEP-0198 §4): the resuming stream
    /// fails with `<undefined-condition/>` and the session stays where it was.
    HandledCountTooHigh {
        /// The client's `h`.
        h: u32,
        /// What the server had sent.
        sent: u32,
    },
}

/// What the cluster layer puts into a resumable session's takeover channel on behalf of a
/// client resuming through another node.
#[derive(Debug)]
pub struct HandoverRequest {
    /// The account the resuming client authenticated as.
    pub user: BareJid,
    /// The stream management id it asked for.
    pub previd: String,
    /// The client's `h`.
    pub h: u32,
    /// Where the owner answers. It leaves the directory before answering, so the directory
    /// change travels ahead of the answer on the same link.
    pub reply: oneshot::Sender<Result<HandoverState, HandoverRefused>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_travels_as_an_opaque_takeover_and_is_answered() {
        let (reply, answer) = oneshot::channel();
        let request = HandoverRequest {
            user: BareJid::parse("u@x").unwrap(),
            previd: "abc".into(),
            h: 3,
            reply,
        };
        let takeover: crate::sm::Takeover = Box::new(request);
        let request = takeover.downcast::<HandoverRequest>().unwrap();
        assert_eq!(request.h, 3);
        request
            .reply
            .send(Err(HandoverRefused::HandledCountTooHigh { h: 3, sent: 1 }))
            .unwrap();
        assert_eq!(
            answer.await.unwrap().unwrap_err(),
            HandoverRefused::HandledCountTooHigh { h: 3, sent: 1 }
        );
    }
}
