//! Placement: which cluster node runs a service's entity (issue 7: a MUC room runs on exactly
//! one node; DESIGN.md §7.3).
//!
//! A service that says it is [`Service::placed`] has each of its entities (`name@domain`)
//! placed on one live member by the cluster's stable placement (rendezvous hashing of the
//! entity's bare JID over the members, [`crate::sm::ClusterView::place`]). Every node runs the
//! service; the router hands a stanza for an entity to the local service only when this node
//! is the owner, and otherwise forwards it over the link to the owner, which hands it to its
//! own copy of the service. Stanzas for the service domain itself (disco, admin) are answered
//! where they arrive.
//!
//! While membership changes, two nodes can briefly disagree on the owner. A forwarded stanza
//! carries a hop count: the receiver forwards once more only when its own view names a third
//! node, and otherwise serves it, so a stanza never bounces between nodes ([`decide`]).
//! When the set of members changes, [`crate::Server::placement_changed`] lets each placed
//! service hand off the entities that now belong elsewhere (MUC rooms tell their occupants to
//! rejoin).
//!
//! Replies to requests the server itself sent ([`crate::Server::iq_query`]) come back to a
//! host JID, which every node serves: in a cluster the request id names the asking node
//! ([`answer_id`]), so that an answer produced on another node finds its way home.

use std::sync::Arc;

use starling_xmpp::error::StanzaErrorCondition;
use starling_xmpp::stanza::Stanza;

use crate::module::Service;
use crate::server::Server;

/// How many times a stanza may be forwarded between nodes on its way to an entity's owner.
pub const MAX_HOPS: u8 = 2;

/// Where a stanza for a placed entity is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// By this node's copy of the service.
    Here,
    /// By the named member.
    Forward(String),
}

/// Decides where a stanza for an entity goes: `owner` is this node's view of the entity's
/// owner (`None` outside a cluster), `sender` the member that forwarded it (if any) and
/// `hops` how many times it was forwarded already.
pub fn decide(me: &str, owner: Option<&str>, sender: Option<&str>, hops: u8) -> Decision {
    match owner {
        Some(owner) if owner != me && Some(owner) != sender && hops < MAX_HOPS => {
            Decision::Forward(owner.to_owned())
        }
        _ => Decision::Here,
    }
}

/// Hands `stanza` to `service` here or on the member that owns its entity. `sender` and
/// `hops` describe a stanza that another member forwarded.
pub async fn route(
    server: &Server,
    service: Arc<dyn Service>,
    stanza: Stanza,
    sender: Option<&str>,
    hops: u8,
) {
    let cluster = server.sm().cluster();
    let decision = match (&cluster, service.placed() && stanza.to().node().is_some()) {
        (Some(cluster), true) => {
            let key = stanza.to().to_bare();
            let owner = cluster.place(key.as_str());
            decide(cluster.node_name(), owner.as_deref(), sender, hops)
        }
        _ => Decision::Here,
    };
    match (decision, cluster) {
        (Decision::Forward(node), Some(cluster)) => {
            if !cluster.forward(&node, &stanza, hops.saturating_add(1)) {
                // The owner's link is down: it is being removed, and its entities will be
                // placed elsewhere in a moment; the sender may retry.
                crate::router::bounce(server, &stanza, StanzaErrorCondition::ServiceUnavailable)
                    .await;
            }
        }
        _ => service.route(server, stanza).await,
    }
}

/// A stanza member `sender` forwarded here after `hops` hops: an entity of a placed service
/// (served here, or forwarded once more by [`decide`]) or an IQ answer for a host.
pub async fn deliver_forwarded(server: &Server, sender: &str, stanza: Stanza, hops: u8) {
    let domain = stanza.to().domain();
    if server.is_local(domain) {
        crate::local::route(server, stanza).await;
    } else if let Some(service) = server.routes().get_service(domain) {
        route(server, service, stanza, Some(sender), hops).await;
    } else {
        // The service is not configured here (members run different configs).
        crate::router::bounce(server, &stanza, StanzaErrorCondition::ServiceUnavailable).await;
    }
}

/// Separates the asking node's name from the id of an [`crate::Server::iq_query`] request.
const ID_NODE_SEPARATOR: &str = "~n~";

/// The id `iq_query` sends in a cluster: the caller's id followed by this node's name.
pub fn answer_id(id: &str, node: &str) -> String {
    format!("{id}{ID_NODE_SEPARATOR}{node}")
}

/// The node that sent the request an IQ answer with this id belongs to, if the id names one.
pub fn answer_node(id: &str) -> Option<&str> {
    id.rsplit_once(ID_NODE_SEPARATOR)
        .map(|(_, node)| node)
        .filter(|node| !node.is_empty())
}

/// An IQ answer to a host JID that no request here waits for: if its id names another member,
/// it goes there (an entity placed on this node answered that member's request).
pub(crate) fn answer_elsewhere(server: &Server, answer: &Stanza) {
    let Some(cluster) = server.sm().cluster() else {
        return;
    };
    if let Some(node) = answer.id().and_then(answer_node)
        && node != cluster.node_name()
        && !cluster.forward(node, answer, MAX_HOPS)
    {
        tracing::debug!(%node, "IQ answer for a member whose link is down dropped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_serves_and_others_forward() {
        assert_eq!(decide("a", Some("a"), None, 0), Decision::Here);
        assert_eq!(decide("a", None, None, 0), Decision::Here);
        assert_eq!(
            decide("a", Some("b"), None, 0),
            Decision::Forward("b".into())
        );
    }

    #[test]
    fn a_forwarded_stanza_never_goes_back_and_stops_after_the_hop_limit() {
        // b forwarded to a, but a thinks b owns it: a serves it rather than bounce it back.
        assert_eq!(decide("a", Some("b"), Some("b"), 1), Decision::Here);
        // a knows of a newer member c that b did not see yet: one more hop.
        assert_eq!(
            decide("a", Some("c"), Some("b"), 1),
            Decision::Forward("c".into())
        );
        // At the limit a node serves it whatever its view.
        assert_eq!(decide("a", Some("c"), Some("b"), MAX_HOPS), Decision::Here);
    }

    #[test]
    fn answer_ids_name_the_asking_node() {
        let id = answer_id("muc-7", "starling@node1");
        assert_eq!(answer_node(&id), Some("starling@node1"));
        assert_eq!(answer_node("muc-7"), None);
        assert_eq!(answer_node("x~n~"), None);
        // A caller id containing the separator still yields the last node name.
        assert_eq!(answer_node(&answer_id("a~n~b", "n2")), Some("n2"));
    }
}
