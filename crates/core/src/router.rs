//! The router: picks the destination by domain (DESIGN.md §2.1).
//!
//! Our hosts go to the local router; domains in the routes table (module services such as
//! `conference.HOST`, external components) go to their handler; every other domain goes to the
//! s2s manager, or, when none is attached, is answered with `<remote-server-not-found/>`
//! (RFC 6120 §8.3.3.15).

use starling_xmpp::error::{StanzaError, StanzaErrorCondition};
use starling_xmpp::stanza::Stanza;

use crate::BoxFuture;
use crate::local;
use crate::server::Server;

/// Routes `stanza` to completion. Boxed because routing can recurse (errors, replies).
pub fn route<'a>(server: &'a Server, stanza: Stanza) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        tracing::debug!(?stanza, "route");
        server.counters().stanza_routed(stanza.kind());
        let domain = stanza.to().domain();
        if server.is_local(domain) {
            local::route(server, stanza).await;
        } else if let Some(service) = server.route_for(domain) {
            crate::placement::route(server, service, stanza, None, 0).await;
        } else if let Some(remote) = server.remote_router() {
            remote.route(server, stanza).await;
        } else {
            bounce(server, &stanza, StanzaErrorCondition::RemoteServerNotFound).await;
        }
    })
}

/// Answers `stanza` with an error of `condition`, unless it is itself an error.
pub async fn bounce(server: &Server, stanza: &Stanza, condition: StanzaErrorCondition) {
    bounce_with(server, stanza, StanzaError::new(condition)).await;
}

/// Answers `stanza` with `error`, unless it is itself an error.
pub async fn bounce_with(server: &Server, stanza: &Stanza, error: StanzaError) {
    if let Some(reply) = stanza.error_reply(&error) {
        route(server, reply).await;
    }
}
