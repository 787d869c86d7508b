//! External components (XEP-0114, "accept" mode): a component connects, proves the shared
//! secret with `<handshake/>`, and its domain is routed to it until it disconnects.
//!
//! A second connection for a domain already connected is refused with `<conflict/>` (the first
//! keeps working), as ejabberd does; in a cluster the route is cluster-wide
//! (`starling_core::routes`), so this holds across nodes, and the loser of two nodes
//! registering at once is closed with `<conflict/>` when it hears of the winner. A component may send from its domain or a subdomain of it
//! (`<invalid-from/>` otherwise).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use starling_core::module::Service;
use starling_core::server::NodeState;
use starling_core::{BoxFuture, Server};
use starling_xmpp::codec::{Limits, StreamEvent, StreamHeader, stream_header};
use starling_xmpp::error::{StanzaErrorCondition, StreamError, StreamErrorCondition};
use starling_xmpp::jid::Jid;
use starling_xmpp::stanza::{Kind, Stanza};
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::stream::{StreamFailure, Transport, XmlStream};
use crate::wire::{NS_COMPONENT, component_handshake, rewrite_ns, stanza_bytes};

/// Stanzas queued for a component; more bounce with `<service-unavailable/>`.
const QUEUE: usize = 1000;

/// A component listener's settings.
#[derive(Clone, Debug)]
pub struct ComponentSettings {
    /// The shared secret (`password` on the listener). Without one, every component is refused.
    pub password: Option<String>,
    /// Deadline for the header and handshake.
    pub negotiation_timeout: Duration,
    /// Largest stanza accepted.
    pub max_stanza_size: usize,
    /// Each connection starts with a PROXY v1/v2 header (`use_proxy_protocol`).
    pub proxy_protocol: bool,
}

/// Serves component connections on `socket` until the node stops.
pub async fn serve(server: Arc<Server>, socket: TcpListener, settings: ComponentSettings) {
    let mut state = server.state_changes();
    let shutdown = async move {
        let _ = state.wait_for(|s| *s == NodeState::Stopping).await;
    };
    let settings = Arc::new(settings);
    let accept =
        starling_listener::accept::Accept::new(10_000).with_proxy_protocol(settings.proxy_protocol);
    starling_listener::accept::serve_with(socket, accept, shutdown, move |tcp, peer| {
        run(server.clone(), settings.clone(), tcp, peer)
    })
    .await;
}

/// The route a connected component registers: stanzas go to its connection's queue.
struct Route {
    tx: mpsc::Sender<Stanza>,
    /// Signalled when another member's registration of the domain wins a race.
    revoked: Arc<tokio::sync::Notify>,
}

impl Service for Route {
    fn route<'a>(&'a self, server: &'a Server, stanza: Stanza) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Err(e) = self.tx.try_send(stanza) {
                let stanza = match e {
                    mpsc::error::TrySendError::Full(s) | mpsc::error::TrySendError::Closed(s) => s,
                };
                starling_core::router::bounce(
                    server,
                    &stanza,
                    StanzaErrorCondition::ServiceUnavailable,
                )
                .await;
            }
        })
    }

    fn revoked(&self) {
        // A permit is stored if the connection's loop is not waiting at this instant.
        self.revoked.notify_one();
    }
}

async fn run(
    server: Arc<Server>,
    settings: Arc<ComponentSettings>,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let limits = Limits {
        max_stanza_size: settings.max_stanza_size,
        ..Limits::default()
    };
    let mut stream = XmlStream::new(Transport::Plain(tcp), NS_COMPONENT, limits);
    let deadline = Instant::now() + settings.negotiation_timeout;
    let domain = match handshake(&server, &settings, &mut stream, deadline).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "component refused");
            stream.fail(&e).await;
            return;
        }
    };
    let (tx, mut rx) = mpsc::channel(QUEUE);
    let revoked = Arc::new(tokio::sync::Notify::new());
    let route = Route {
        tx,
        revoked: revoked.clone(),
    };
    if !server.add_route(&domain, Arc::new(route)) {
        tracing::warn!(%peer, %domain, "component refused: domain already connected or served");
        stream
            .fail(&StreamError::new(StreamErrorCondition::Conflict))
            .await;
        return;
    }
    if stream.send(b"<handshake/>").await.is_err() {
        server.remove_route(&domain);
        return;
    }
    tracing::info!(%peer, %domain, "component connected");
    let mut state = server.state_changes();
    let far = || Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let outcome: Result<(), StreamError> = loop {
        tokio::select! {
            biased;
            () = stopping(&mut state) => {
                break Err(StreamError::new(StreamErrorCondition::SystemShutdown));
            }
            () = revoked.notified() => {
                tracing::warn!(%peer, %domain, "component closed: another cluster member's registration of its domain won");
                break Err(StreamError::new(StreamErrorCondition::Conflict));
            }
            s = rx.recv() => {
                let Some(s) = s else { break Ok(()) };
                if stream.send(&stanza_bytes(&s, NS_COMPONENT)).await.is_err() {
                    starling_core::router::bounce(&server, &s, StanzaErrorCondition::ServiceUnavailable).await;
                    break Ok(());
                }
            }
            event = stream.next(far()) => match event {
                Ok(StreamEvent::Stanza(el)) => {
                    if let Err(e) = on_stanza(&server, &domain, el).await {
                        break Err(e);
                    }
                }
                Ok(StreamEvent::Open(_)) => {}
                Ok(StreamEvent::Close) | Err(StreamFailure::Closed(_) | StreamFailure::Io(_)) => break Ok(()),
                Err(StreamFailure::Protocol(e)) => break Err(e),
                Err(StreamFailure::Timeout) => break Ok(()),
            },
        }
    };
    // Unroute before answering what is still queued, so nothing new lands in the queue.
    server.remove_route(&domain);
    rx.close();
    while let Ok(s) = rx.try_recv() {
        starling_core::router::bounce(&server, &s, StanzaErrorCondition::ServiceUnavailable).await;
    }
    match outcome {
        Ok(()) => stream.close().await,
        Err(e) => stream.fail(&e).await,
    }
    tracing::info!(%peer, %domain, "component disconnected");
}

async fn stopping(state: &mut tokio::sync::watch::Receiver<NodeState>) {
    let _ = state.wait_for(|s| *s == NodeState::Stopping).await;
}

/// Reads the header and the handshake; returns the component's domain.
async fn handshake(
    server: &Server,
    settings: &ComponentSettings,
    stream: &mut XmlStream,
    deadline: Instant,
) -> Result<String, StreamError> {
    let protocol = |f: StreamFailure| match f {
        StreamFailure::Protocol(e) => e,
        StreamFailure::Timeout => StreamError::new(StreamErrorCondition::ConnectionTimeout),
        other => {
            StreamError::new(StreamErrorCondition::UndefinedCondition).with_text(other.to_string())
        }
    };
    let StreamEvent::Open(header) = stream.next(deadline).await.map_err(protocol)? else {
        return Err(StreamError::new(StreamErrorCondition::NotWellFormed));
    };
    let id = crate::stream_id();
    let domain = header
        .to
        .as_deref()
        .and_then(|to| Jid::parse(to).ok())
        .filter(Jid::is_bare)
        .filter(|j| j.node().is_none())
        .map(|j| j.domain().to_owned());
    let ours = StreamHeader {
        id: Some(id.clone()),
        from: domain.clone().or(header.to.clone()),
        // XEP-0114 streams carry no version; answering with one would invite features.
        version: None,
        ..StreamHeader::default()
    };
    let full = stream_header(NS_COMPONENT, &ours);
    // Drop the stream's version attribute (not the XML declaration's).
    let text = match full.split_once("<stream:stream") {
        Some((decl, rest)) => format!(
            "{decl}<stream:stream{}",
            rest.replacen(" version='1.0'", "", 1)
        ),
        None => full,
    };
    stream.send(text.as_bytes()).await.map_err(protocol)?;
    let Some(domain) = domain else {
        return Err(StreamError::new(StreamErrorCondition::ImproperAddressing));
    };
    if server.is_local(&domain) {
        return Err(StreamError::new(StreamErrorCondition::HostUnknown)
            .with_text("a host of this server cannot be a component"));
    }
    let Some(password) = &settings.password else {
        return Err(StreamError::new(StreamErrorCondition::NotAuthorized)
            .with_text("no password is configured for this listener"));
    };
    let el = match stream.next(deadline).await.map_err(protocol)? {
        StreamEvent::Stanza(el) if el.name() == "handshake" => el,
        _ => return Err(StreamError::new(StreamErrorCondition::NotAuthorized)),
    };
    let expected = component_handshake(&id, password);
    let given = el.text().trim().to_ascii_lowercase();
    if !bool::from(expected.as_bytes().ct_eq(given.as_bytes())) {
        return Err(StreamError::new(StreamErrorCondition::NotAuthorized));
    }
    Ok(domain)
}

async fn on_stanza(server: &Server, domain: &str, el: minidom::Element) -> Result<(), StreamError> {
    let el = rewrite_ns(&el, NS_COMPONENT, starling_xmpp::ns::CLIENT);
    if Kind::of(&el).is_none() {
        return Err(StreamError::new(
            StreamErrorCondition::UnsupportedStanzaType,
        ));
    }
    let from = el.attr("from").and_then(|f| Jid::parse(f).ok());
    let to = el.attr("to").and_then(|t| Jid::parse(t).ok());
    let (Some(from), Some(to)) = (from, to) else {
        return Err(StreamError::new(StreamErrorCondition::ImproperAddressing));
    };
    if !sends_as(domain, from.domain()) {
        return Err(StreamError::new(StreamErrorCondition::InvalidFrom));
    }
    match Stanza::new(el, from, to) {
        Ok(stanza) => {
            server.route(stanza).await;
            Ok(())
        }
        Err(_) => Err(StreamError::new(StreamErrorCondition::InvalidXml)),
    }
}

/// A component of `domain` may send as `domain` or any subdomain of it.
fn sends_as(domain: &str, from: &str) -> bool {
    from == domain
        || from
            .strip_suffix(domain)
            .is_some_and(|prefix| prefix.ends_with('.') && prefix.len() > 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_from_check() {
        assert!(sends_as("comp.a.test", "comp.a.test"));
        assert!(sends_as("comp.a.test", "x.comp.a.test"));
        assert!(!sends_as("comp.a.test", "xcomp.a.test"));
        assert!(!sends_as("comp.a.test", "a.test"));
        assert!(!sends_as("comp.a.test", ".comp.a.test"));
    }
}
