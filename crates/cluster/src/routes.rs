//! The cluster-wide route table (issues 4 and 8): external components reachable from every
//! node. The decisions (ownership, the race rule) live in `starling_core::routes`; this module
//! turns mesh messages into calls on it and provides the forwarding service.
//!
//! - A connection's route on node A ([`starling_core::Server::add_route`]) is announced with
//!   [`Message::RouteUp`] to every member speaking [`wire::ROUTES_VERSION`], and withdrawn with
//!   [`Message::RouteDown`]; a member that links up gets [`Message::Routes`] right after the
//!   session snapshot, under the same ordering.
//! - A member installs a [`Forwarder`] for the domain: each stanza goes over the link to A as
//!   [`Message::RouteDeliver`], exactly once and in the link's FIFO order, like session
//!   delivery; A hands it to its component or bounces it with `<service-unavailable/>`.
//! - A's routes leave every table where its sessions do (link down, `Goodbye`, `leave_cluster`).

use std::sync::{Arc, Weak};

use starling_core::module::Service;
use starling_core::routes::{Applied, RouteChange};
use starling_core::{BoxFuture, Server};
use starling_xmpp::error::StanzaErrorCondition;
use starling_xmpp::stanza::Stanza;

use crate::wire::{self, Message};

/// How routes reach the link to a member (implemented by the mesh).
pub(crate) trait Forward: Send + Sync {
    /// Queues `message` on the link to `node`; false if the link is down or saturated.
    fn forward(&self, node: &str, message: &Message) -> bool;
}

/// The mesh message announcing a local route change.
pub(crate) fn announcement(change: &RouteChange) -> Message {
    match change {
        RouteChange::Up(domain) => Message::RouteUp(domain.clone()),
        RouteChange::Down(domain) => Message::RouteDown(domain.clone()),
    }
}

/// The route a member installs for a domain another member's connection serves.
pub(crate) struct Forwarder {
    node: Arc<str>,
    mesh: Weak<dyn Forward>,
}

impl Forwarder {
    fn service(mesh: &Weak<dyn Forward>, node: &str) -> Arc<dyn Service> {
        Arc::new(Self {
            node: node.into(),
            mesh: mesh.clone(),
        })
    }
}

impl Service for Forwarder {
    fn route<'a>(&'a self, server: &'a Server, stanza: Stanza) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let message = Message::RouteDeliver {
                domain: stanza.to().domain().to_owned(),
                stanza: stanza.bytes().to_vec(),
            };
            let sent = self
                .mesh
                .upgrade()
                .is_some_and(|mesh| mesh.forward(&self.node, &message));
            if !sent {
                // The link went down between lookup and send (its routes are being purged).
                starling_core::router::bounce(
                    server,
                    &stanza,
                    StanzaErrorCondition::ServiceUnavailable,
                )
                .await;
            }
        })
    }
}

/// `peer` sent every route it owns: they replace what this node held for it.
pub(crate) fn snapshot(
    server: &Server,
    me: &str,
    mesh: &Weak<dyn Forward>,
    peer: &str,
    domains: &[String],
) {
    let applied = server
        .routes()
        .replace_node(me, peer, domains, |_| Forwarder::service(mesh, peer));
    for (domain, outcome) in applied {
        log(me, peer, &domain, &outcome);
    }
}

/// `peer` announced a route.
pub(crate) fn up(server: &Server, me: &str, mesh: &Weak<dyn Forward>, peer: &str, domain: &str) {
    let outcome = server
        .routes()
        .apply_remote(me, peer, domain, Forwarder::service(mesh, peer));
    log(me, peer, domain, &outcome);
}

/// `peer` withdrew a route.
pub(crate) fn down(server: &Server, peer: &str, domain: &str) {
    if server.routes().remove_remote(peer, domain) {
        tracing::debug!(%peer, %domain, "cluster route removed");
    }
}

/// `peer` forwarded a stanza for `domain`, which a connection here should serve.
pub(crate) async fn deliver(server: &Server, peer: &str, domain: &str, bytes: &[u8]) {
    let Some(stanza) = crate::mesh::parse_stanza(bytes) else {
        tracing::warn!(%peer, %domain, "undecodable routed stanza dropped");
        return;
    };
    match server.routes().get_local(domain) {
        Some(service) if stanza.to().domain() == domain => service.route(server, stanza).await,
        // The component left after the peer routed this (its RouteDown is on its way).
        _ => {
            starling_core::router::bounce(
                server,
                &stanza,
                StanzaErrorCondition::ServiceUnavailable,
            )
            .await;
        }
    }
}

/// The peer's routes are gone with it.
pub(crate) fn purge(server: &Server, peer: &str) {
    let gone = server.routes().purge_node(peer);
    if !gone.is_empty() {
        tracing::info!(%peer, domains = ?gone, "cluster routes of a lost node removed");
    }
}

/// True if the link's protocol carries routes.
pub(crate) fn speaks_routes(version: u16) -> bool {
    version >= wire::ROUTES_VERSION
}

fn log(me: &str, peer: &str, domain: &str, outcome: &Applied) {
    match outcome {
        Applied::Installed => tracing::debug!(%peer, %domain, "cluster route installed"),
        Applied::Kept => tracing::info!(
            node = %me, %peer, %domain,
            "cluster route conflict: the existing route stays"
        ),
        Applied::Revoked => tracing::warn!(
            node = %me, %peer, %domain,
            "cluster route conflict: the peer's name sorts first; the component here is closed with conflict"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The forwarder and the message handlers need a running node: they are exercised end to
    // end by `crates/server/tests/cluster_routes.rs`; the table's rules by core's unit tests.

    #[test]
    fn changes_become_announcements() {
        assert_eq!(
            announcement(&RouteChange::Up("c.test".into())),
            Message::RouteUp("c.test".into())
        );
        assert_eq!(
            announcement(&RouteChange::Down("c.test".into())),
            Message::RouteDown("c.test".into())
        );
        assert!(speaks_routes(wire::PROTOCOL_MAX));
        assert!(!speaks_routes(2));
    }
}
