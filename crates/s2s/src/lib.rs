//! The s2s manager: federation with other XMPP servers (RFC 6120 server-to-server streams,
//! XEP-0220 Server Dialback, XEP-0368 direct TLS) and external components (XEP-0114).
//!
//! The router hands stanzas for domains that are neither our hosts nor routed services to
//! [`S2s`] (it implements `core::server::RemoteRouter`). Outgoing: one connection per (local
//! domain, remote domain), opened on demand; stanzas wait in its bounded queue while it
//! resolves (SRV, then A/AAAA, or `s2s_static_routes`), connects, upgrades with STARTTLS and
//! authenticates (SASL EXTERNAL when the peer accepted our certificate, else dialback); it
//! closes after `s2s_timeout` idle. When it cannot be established the queued stanzas bounce with
//! `<remote-server-not-found/>` (no address, refused) or `<remote-server-timeout/>` (deadline).
//! Incoming streams are accepted for our hosts and services; every stanza's `from` domain must
//! be one the stream authenticated (else `<invalid-from/>`).
//!
//! In a cluster each node keeps its own outgoing connections (as ejabberd does): a stanza
//! leaves from the node where it was routed, so no cross-node hop is needed; incoming streams
//! may land on any node, and the dialback secret derives from the cluster cookie so any node
//! can answer a verification request for a key another node issued.
//!
//! This crate never makes routing decisions for local domains: what it receives goes back to
//! `Server::route`.

#![forbid(unsafe_code)]

pub mod component;
pub mod dialback;
mod incoming;
mod outgoing;
pub mod resolve;
mod stream;
pub mod tls;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use starling_config::{AccessDecision, AccessRequest, S2sConfig};
use starling_core::server::{NodeState, RemoteConnection, RemoteRouter};
use starling_core::{BoxFuture, Server};
use starling_listener::tls::Certificates;
use starling_xmpp::error::StanzaErrorCondition;
use starling_xmpp::stanza::Stanza;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::dialback::Secret;
use crate::resolve::Resolver;
use crate::tls::Trust;

/// Stanzas queued per outgoing connection while it negotiates or writes; more bounce.
pub const OUTGOING_QUEUE: usize = 1000;
/// Most concurrent incoming s2s or component connections per listener.
const MAX_CONNECTIONS: usize = 10_000;

/// Everything the s2s manager needs, built by the server at start.
pub struct S2sSettings {
    /// The `s2s_*` options.
    pub config: S2sConfig,
    /// Our certificates (from `s2s_certfile`, else `certfiles`).
    pub certs: Arc<Certificates>,
    /// Trust anchors for peer certificates.
    pub trust: Trust,
    /// The dialback secret.
    pub secret: Secret,
    /// Name resolution for domains without a static route.
    pub resolver: Arc<dyn Resolver>,
    /// Deadline for connecting and authenticating a stream.
    pub negotiation_timeout: Duration,
}

/// How a connection authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// Not yet.
    None,
    /// SASL EXTERNAL with a validated certificate.
    External,
    /// Server Dialback.
    Dialback,
}

impl AuthMethod {
    fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::External => "external",
            Self::Dialback => "dialback",
        }
    }
}

/// What `s2s_connections` shows about one connection; updated by its task.
#[derive(Clone, Debug)]
pub(crate) struct ConnInfo {
    pub(crate) local: String,
    pub(crate) remote: String,
    pub(crate) addr: Option<SocketAddr>,
    pub(crate) tls: bool,
    pub(crate) auth: AuthMethod,
}

pub(crate) type SharedInfo = Arc<Mutex<ConnInfo>>;

pub(crate) fn update(info: &SharedInfo, f: impl FnOnce(&mut ConnInfo)) {
    if let Ok(mut guard) = info.lock() {
        f(&mut guard);
    }
}

struct Outgoing {
    id: u64,
    tx: mpsc::Sender<Stanza>,
    info: SharedInfo,
    stop: CancellationToken,
}

struct Incoming {
    info: SharedInfo,
    stop: CancellationToken,
}

pub(crate) struct Inner {
    pub(crate) settings: S2sSettings,
    pub(crate) server_tls: Arc<rustls::ServerConfig>,
    client_tls: HashMap<String, Arc<rustls::ClientConfig>>,
    outgoing: DashMap<(String, String), Outgoing>,
    incoming: DashMap<u64, Incoming>,
    /// Domains whose last connection failed: until when to bounce at once, and the delay.
    retry: DashMap<String, (Instant, Duration)>,
    next_id: AtomicU64,
}

/// The s2s manager. Cheap to clone.
#[derive(Clone)]
pub struct S2s {
    inner: Arc<Inner>,
}

impl S2s {
    /// Builds the manager for `hosts` (one client TLS configuration each, presenting that
    /// host's certificate).
    pub fn new(settings: S2sSettings, hosts: &[String]) -> Result<Self, rustls::Error> {
        let server_tls = tls::server_config(settings.certs.clone())?;
        let mut client_tls = HashMap::new();
        for host in hosts {
            client_tls.insert(
                host.clone(),
                tls::client_config(settings.certs.for_host(host))?,
            );
        }
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                server_tls,
                client_tls,
                outgoing: DashMap::new(),
                incoming: DashMap::new(),
                retry: DashMap::new(),
                next_id: AtomicU64::new(1),
            }),
        })
    }

    /// Attaches the manager to `server` as its remote router, and closes every connection
    /// when the node stops.
    pub fn attach(&self, server: &Arc<Server>) {
        server.set_remote_router(Box::new(self.clone()));
        let this = self.clone();
        let mut state = server.state_changes();
        tokio::spawn(async move {
            let _ = state.wait_for(|s| *s == NodeState::Stopping).await;
            this.stop_all();
        });
    }

    /// Serves incoming s2s streams on `socket` until the node stops. `direct_tls`: TLS from
    /// the first byte (XEP-0368). `proxy_protocol`: each connection starts with a PROXY
    /// v1/v2 header naming the peer (`use_proxy_protocol`).
    pub async fn serve(
        &self,
        server: Arc<Server>,
        socket: TcpListener,
        direct_tls: bool,
        max_stanza_size: usize,
        proxy_protocol: bool,
        shaper: Option<u64>,
    ) {
        let mut state = server.state_changes();
        let shutdown = async move {
            let _ = state.wait_for(|s| *s == NodeState::Stopping).await;
        };
        let inner = self.inner.clone();
        let accept = starling_listener::accept::Accept::new(MAX_CONNECTIONS)
            .with_proxy_protocol(proxy_protocol);
        starling_listener::accept::serve_with(socket, accept, shutdown, move |tcp, peer| {
            incoming::run(
                inner.clone(),
                server.clone(),
                tcp,
                peer,
                direct_tls,
                max_stanza_size,
                shaper,
            )
        })
        .await;
    }

    /// Number of incoming streams.
    pub fn incoming_count(&self) -> usize {
        self.inner.incoming.len()
    }

    /// Number of outgoing connections (established or negotiating).
    pub fn outgoing_count(&self) -> usize {
        self.inner.outgoing.len()
    }

    /// Closes every connection; returns how many there were.
    pub fn stop_all(&self) -> usize {
        let mut n = 0;
        for o in &self.inner.outgoing {
            o.stop.cancel();
            n += 1;
        }
        for i in &self.inner.incoming {
            i.stop.cancel();
            n += 1;
        }
        n
    }
}

impl Inner {
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn client_tls(&self, local: &str) -> Option<Arc<rustls::ClientConfig>> {
        self.client_tls.get(local).cloned()
    }

    /// `s2s_access` for a remote domain and address; allowed when unset.
    pub(crate) fn allowed(
        &self,
        server: &Server,
        remote: &str,
        ip: Option<std::net::IpAddr>,
    ) -> bool {
        let Some(rule) = &self.settings.config.access else {
            return true;
        };
        let req = AccessRequest {
            user: Some(("", remote)),
            resource: None,
            ip,
        };
        server.config().access(rule, &req) == AccessDecision::Allow
    }

    pub(crate) fn register_incoming(
        self: &Arc<Self>,
        info: SharedInfo,
    ) -> (u64, CancellationToken) {
        let id = self.next_id();
        let stop = CancellationToken::new();
        self.incoming.insert(
            id,
            Incoming {
                info,
                stop: stop.clone(),
            },
        );
        (id, stop)
    }

    pub(crate) fn unregister_incoming(&self, id: u64) {
        self.incoming.remove(&id);
    }

    /// Removes an outgoing connection from the table if it is still the one with `id`.
    pub(crate) fn unregister_outgoing(&self, key: &(String, String), id: u64) {
        self.outgoing.remove_if(key, |_, o| o.id == id);
    }

    /// Records a failed connection to `remote`: for a while, stanzas bounce at once.
    pub(crate) fn failed(&self, remote: &str) {
        let max = self.settings.config.max_retry_delay;
        let mut entry = self
            .retry
            .entry(remote.to_owned())
            .or_insert((Instant::now(), Duration::ZERO));
        let delay = (entry.1 * 2).clamp(Duration::from_secs(1), max);
        *entry = (Instant::now() + delay, delay);
    }

    pub(crate) fn succeeded(&self, remote: &str) {
        self.retry.remove(remote);
    }

    fn backing_off(&self, remote: &str) -> bool {
        self.retry.get(remote).is_some_and(|e| Instant::now() < e.0)
    }

    async fn route(self: &Arc<Self>, server: &Server, stanza: Stanza) {
        let remote = stanza.to().domain().to_owned();
        let local = stanza.from().domain().to_owned();
        // Only our hosts have certificates and dialback keys to prove who they are.
        if !server.is_local(&local) {
            starling_core::router::bounce(server, &stanza, StanzaErrorCondition::NotAllowed).await;
            return;
        }
        let routable = self.settings.config.static_routes.contains_key(&remote)
            || wire::is_dns_domain(&remote);
        if !routable || self.backing_off(&remote) {
            starling_core::router::bounce(
                server,
                &stanza,
                StanzaErrorCondition::RemoteServerNotFound,
            )
            .await;
            return;
        }
        if !self.allowed(server, &remote, None) {
            starling_core::router::bounce(server, &stanza, StanzaErrorCondition::NotAllowed).await;
            return;
        }
        let Some(handle) = server.handle() else {
            return;
        };
        let key = (local, remote);
        let mut stanza = stanza;
        // Twice at most: a connection that closed between lookup and send is replaced once.
        for _ in 0..2 {
            let tx = {
                let entry = self
                    .outgoing
                    .entry(key.clone())
                    .or_insert_with(|| self.spawn_outgoing(handle.clone(), key.clone()));
                entry.tx.clone()
            };
            match tx.try_send(stanza) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(s)) => {
                    starling_core::router::bounce(
                        server,
                        &s,
                        StanzaErrorCondition::RemoteServerTimeout,
                    )
                    .await;
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(s)) => {
                    self.outgoing.remove_if(&key, |_, o| o.tx.is_closed());
                    stanza = s;
                }
            }
        }
        starling_core::router::bounce(server, &stanza, StanzaErrorCondition::RemoteServerTimeout)
            .await;
    }

    fn spawn_outgoing(self: &Arc<Self>, server: Arc<Server>, key: (String, String)) -> Outgoing {
        let id = self.next_id();
        let (tx, rx) = mpsc::channel(OUTGOING_QUEUE);
        let info = Arc::new(Mutex::new(ConnInfo {
            local: key.0.clone(),
            remote: key.1.clone(),
            addr: None,
            tls: false,
            auth: AuthMethod::None,
        }));
        let stop = CancellationToken::new();
        tokio::spawn(outgoing::run(
            self.clone(),
            server,
            key,
            id,
            rx,
            info.clone(),
            stop.clone(),
        ));
        Outgoing { id, tx, info, stop }
    }

    fn connections(&self) -> Vec<RemoteConnection> {
        let snapshot = |info: &SharedInfo, incoming: bool| {
            info.lock().ok().map(|i| RemoteConnection {
                incoming,
                local: i.local.clone(),
                remote: i.remote.clone(),
                addr: i.addr,
                tls: i.tls,
                auth: i.auth.name(),
            })
        };
        let mut out: Vec<RemoteConnection> = self
            .outgoing
            .iter()
            .filter_map(|o| snapshot(&o.info, false))
            .chain(self.incoming.iter().filter_map(|i| snapshot(&i.info, true)))
            .collect();
        out.sort_by(|a, b| {
            (&a.remote, &a.local, a.incoming).cmp(&(&b.remote, &b.local, b.incoming))
        });
        out
    }
}

impl RemoteRouter for S2s {
    fn route<'a>(&'a self, server: &'a Server, stanza: Stanza) -> BoxFuture<'a, ()> {
        Box::pin(self.inner.route(server, stanza))
    }

    fn connections(&self) -> Vec<RemoteConnection> {
        self.inner.connections()
    }

    fn stop_connections(&self) -> usize {
        self.stop_all()
    }
}

/// A random stream id (RFC 6120 §4.7.3: unpredictable, at least 128 bits of entropy).
pub(crate) fn stream_id() -> String {
    use std::fmt::Write;
    let bytes: [u8; 16] = rand::random();
    let mut out = String::with_capacity(32);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}
