//! The mesh: link tasks over TCP, the replicated session table, forwarding and node loss
//! (DESIGN.md §7). This is the I/O shell around [`crate::handshake`], [`crate::membership`],
//! [`crate::placement`] and [`crate::wire`]; decisions live there.
//!
//! - **Links.** Every member is dialled by a task that re-dials forever with a 1-10 s
//!   back-off while the link is down; the listener accepts dials. A link is the preamble, the
//!   handshake, then frames in both directions from one task per link, so one link is one FIFO:
//!   stanzas from one sender to one recipient stay in order. Each side pings every second
//!   ([`HEARTBEAT`]); a link with no frame for [`HEARTBEAT_TIMEOUT`], or EOF/RST, is down. A
//!   link whose outgoing queue is full is taken down too (the peer does not keep up).
//! - **Tables.** On link-up each side sends a snapshot of the sessions it owns, then one
//!   message per change, queued under the session manager's change lock so that a snapshot is
//!   never newer than a delta queued before it. Received entries become remote entries in the
//!   core's directory, where routing finds them.
//! - **Loss.** When a link goes down the peer's entries are purged at once, and for each lost
//!   user whose bare JID this node wins (rendezvous over the members still up), contacts get
//!   unavailable presence as if the session had closed.
//!
//! Bound: a killed process closes its sockets, so peers see EOF within milliseconds; a
//! silent peer (power loss, partition) is declared down after [`HEARTBEAT_TIMEOUT`] (3 s).
//! Its sessions leave every table at that moment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use starling_core::Server;
use starling_core::sm::{ClusterView, DirectoryChange, MemberStatus, RemoteSession, SessionId};
use starling_metrics::{Metrics, PeerLabels};
use starling_xmpp::Element;
use starling_xmpp::error::{StreamError, StreamErrorCondition};
use starling_xmpp::jid::FullJid;
use starling_xmpp::ns;
use starling_xmpp::stanza::{Stanza, element, text_element};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::AbortHandle;

use crate::cookie::Cookie;
use crate::handshake::{Handshake, HandshakeError, Role, Step};
use crate::membership::{Membership, backoff, new_link_wins};
use crate::placement;
use crate::wire::{self, FrameDecoder, Hello, Message, Refusal, SessionRecord};

/// Interval between pings on an idle or busy link.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A link with no frame for this long is down.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline for connecting, the preamble and the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames queued per link before it is declared saturated and taken down.
const LINK_QUEUE: usize = 16_384;
/// How long `join_cluster` waits for every member to be linked.
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);

/// What a node needs to take part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This node's name (`cluster.node_name`).
    pub node_name: String,
    /// Where the cluster listener binds (`cluster.listen`; port 0 picks one).
    pub listen: SocketAddr,
    /// The data directory (`members.json` lives there).
    pub data_dir: PathBuf,
    /// The shared secret (`data_dir/cookie`).
    pub cookie: Cookie,
    /// The node's metric families: link state and forwarded stanzas per peer are set here.
    pub metrics: Option<Arc<Metrics>>,
    /// Find the other members through the shared database (`cluster.discovery: sql`).
    pub sql_discovery: bool,
}

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The listener could not bind.
    #[error("cannot listen for cluster links on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// `members.json` is unusable.
    #[error(transparent)]
    Membership(#[from] crate::membership::MembershipError),
}

/// A running cluster member; dropping it does not stop it (see [`Cluster::abort`]).
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    server: Weak<Server>,
    this: Weak<Self>,
    name: String,
    address: String,
    incarnation: u64,
    hosts: Vec<String>,
    db_id: String,
    cookie: Cookie,
    members_path: PathBuf,
    membership: Mutex<Membership>,
    links: DashMap<String, LinkHandle>,
    dialers: DashMap<String, ()>,
    next_link: AtomicU64,
    /// Bumped on every link or membership change (what `join_cluster` waits on).
    epoch: watch::Sender<u64>,
    tasks: Mutex<Vec<AbortHandle>>,
    stopping: AtomicBool,
    metrics: Option<Arc<Metrics>>,
    /// Stream management handovers waiting for answers (`crate::handover`).
    handovers: crate::handover::Pending,
    /// `cluster.discovery: sql`: this node keeps a row in `cluster_nodes`.
    sql_discovery: bool,
}

/// Longest a stopping node waits for its sessions to unbind before saying goodbye.
const SHUTDOWN_SESSIONS_GRACE: Duration = Duration::from_secs(2);
/// Longest it waits for the links to take the goodbye (and the unbinds before it).
const SHUTDOWN_FLUSH_GRACE: Duration = Duration::from_millis(500);

#[derive(Clone)]
struct LinkHandle {
    id: u64,
    role: Role,
    address: String,
    tx: mpsc::Sender<Vec<u8>>,
    kill: Arc<Notify>,
    stats: Arc<LinkStats>,
    /// The protocol version spoken (stream management handover needs 2).
    version: u16,
}

struct LinkStats {
    started: Instant,
    /// Milliseconds after `started` of the last frame received.
    last_seen_ms: AtomicU64,
    rtt_us: AtomicU64,
    /// The peer sent its member list (join waits for it).
    gossiped: AtomicBool,
}

impl LinkStats {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            last_seen_ms: AtomicU64::new(0),
            rtt_us: AtomicU64::new(u64::MAX),
            gossiped: AtomicBool::new(false),
        }
    }

    fn seen(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_seen_ms.store(ms, Ordering::Relaxed);
    }
}

/// An authenticated connection, not yet registered as the link to its peer.
struct Established {
    stream: TcpStream,
    decoder: FrameDecoder,
    peer: Hello,
    role: Role,
    /// The protocol version spoken on the link.
    version: u16,
}

impl Cluster {
    /// Binds the cluster listener, attaches the cluster to `server`'s session manager and
    /// starts dialling the members in `data_dir/members.json`.
    pub async fn start(
        server: &Arc<Server>,
        settings: ClusterSettings,
    ) -> Result<Self, ClusterError> {
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| ClusterError::Listen {
                    addr: settings.listen,
                    source,
                })?;
        let bound = listener
            .local_addr()
            .map_err(|source| ClusterError::Listen {
                addr: settings.listen,
                source,
            })?;
        let members_path = settings.data_dir.join("members.json");
        let membership = Membership::load(&members_path)?;
        let mut hosts = server.hosts();
        hosts.sort();
        let (epoch, _) = watch::channel(0);
        let inner = Arc::new_cyclic(|this| Inner {
            server: Arc::downgrade(server),
            this: this.clone(),
            name: settings.node_name,
            address: bound.to_string(),
            incarnation: rand::random(),
            hosts,
            db_id: server.stores().db_identity(),
            cookie: settings.cookie,
            members_path,
            membership: Mutex::new(membership),
            links: DashMap::new(),
            dialers: DashMap::new(),
            next_link: AtomicU64::new(1),
            epoch,
            tasks: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            metrics: settings.metrics,
            handovers: crate::handover::Pending::default(),
            sql_discovery: settings.sql_discovery,
        });
        server.sm().set_cluster(inner.clone());
        server.routes().set_mirror(inner.clone());
        tracing::info!(node = %inner.name, addr = %bound, "cluster listener started");
        if inner.membership().is_removed(&inner.name) {
            // Its peers refuse it anyway; say so once at startup rather than dial in vain.
            tracing::error!(
                node = %inner.name,
                "this node was removed from the cluster with leave_cluster and will not re-attach; \
                 give it a new cluster.node_name to join again"
            );
        }
        let accept = tokio::spawn(inner.clone().accept_loop(listener));
        inner.track(accept.abort_handle());
        let watcher = tokio::spawn(inner.clone().watch_shutdown(server.state_changes()));
        inner.track(watcher.abort_handle());
        if settings.sql_discovery {
            let discovery = tokio::spawn(inner.clone().discover());
            inner.track(discovery.abort_handle());
        }
        let members: Vec<String> = inner.membership().members().keys().cloned().collect();
        for name in members {
            // Known peers are listed as down until their link comes up.
            inner.set_link_metric(&name, false);
            inner.ensure_dialer(&name);
        }
        Ok(Self { inner })
    }

    /// The cluster listener's address.
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Every member with its state, this node first.
    pub fn status(&self) -> Vec<MemberStatus> {
        self.inner.status()
    }

    /// `join_cluster`: see [`ClusterView::join`].
    pub async fn join(&self, address: &str) -> Result<Vec<String>, String> {
        self.inner.join(address).await
    }

    /// `leave_cluster`: see [`ClusterView::leave`].
    pub async fn leave(&self, node: &str) -> Result<(), String> {
        self.inner.leave(node).await
    }

    /// Stops every cluster task at once without telling peers, as a crash would (tests).
    pub fn abort(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        let tasks = std::mem::take(&mut *self.inner.lock_tasks());
        for t in tasks {
            t.abort();
        }
        self.inner.links.clear();
    }
}

impl Inner {
    /// `cluster.discovery: sql` ([`crate::discovery`]): announces this node in the shared
    /// database and joins the nodes found there, until the node stops.
    async fn discover(self: Arc<Self>) {
        let mut tick = tokio::time::interval(crate::discovery::INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(server) = self.server() else { return };
            if self.stopping.load(Ordering::SeqCst) || self.membership().is_removed(&self.name) {
                return;
            }
            let now = unix_now();
            let stores = server.stores();
            if let Err(e) = stores.announce_node(&self.name, &self.address, now).await {
                tracing::warn!(node = %self.name, error = %e, "cluster discovery: cannot announce this node");
                continue;
            }
            let fresh = i64::try_from(crate::discovery::FRESH.as_secs()).unwrap_or(i64::MAX);
            let rows = match stores.cluster_nodes(now.saturating_sub(fresh)).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(node = %self.name, error = %e, "cluster discovery: cannot list nodes");
                    continue;
                }
            };
            let addresses = {
                let membership = self.membership();
                crate::discovery::to_join(
                    &self.name,
                    &rows,
                    |n| self.links.contains_key(n),
                    |n| membership.is_removed(n),
                )
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<String>>()
            };
            for address in addresses {
                match self.join(&address).await {
                    Ok(members) => {
                        tracing::info!(node = %self.name, %address, ?members, "cluster discovery: joined");
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(node = %self.name, %address, error = %e, "cluster discovery: join failed");
                    }
                }
            }
        }
    }

    fn server(&self) -> Option<Arc<Server>> {
        self.server.upgrade()
    }

    fn me(&self) -> Option<Arc<Self>> {
        self.this.upgrade()
    }

    fn view(&self) -> Option<Arc<dyn ClusterView>> {
        self.me().map(|m| m as Arc<dyn ClusterView>)
    }

    fn membership(&self) -> std::sync::MutexGuard<'_, Membership> {
        // Membership is replaced as a whole by each change; a panic cannot leave it torn.
        self.membership
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<AbortHandle>> {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn track(&self, handle: AbortHandle) {
        let mut tasks = self.lock_tasks();
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
    }

    fn bump(&self) {
        self.epoch.send_modify(|e| *e = e.wrapping_add(1));
    }

    fn set_link_metric(&self, peer: &str, up: bool) {
        if let Some(m) = &self.metrics {
            m.cluster_link_up
                .get_or_create(&PeerLabels {
                    peer: peer.to_owned(),
                })
                .set(i64::from(up));
        }
    }

    fn count_forwarded(&self, peer: &str) {
        if let Some(m) = &self.metrics {
            m.cluster_forwarded
                .get_or_create(&PeerLabels {
                    peer: peer.to_owned(),
                })
                .inc();
        }
    }

    fn save_membership(&self, m: &Membership) {
        if let Err(e) = m.save(&self.members_path) {
            tracing::error!(error = %e, "cannot persist the cluster member list");
        }
    }

    fn hello(&self) -> Hello {
        Hello {
            node: self.name.clone(),
            incarnation: self.incarnation,
            nonce: rand::random(),
            hosts: self.hosts.clone(),
            db_id: self.db_id.clone(),
            listen: self.address.clone(),
        }
    }

    /// Queues an encoded frame on a link; a full queue takes the link down.
    fn send_on(&self, link: &LinkHandle, frame: Vec<u8>) -> bool {
        match link.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(node = %self.name, "cluster link queue full; taking the link down");
                link.kill.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn broadcast(&self, message: &Message) {
        let frame = wire::encode(message);
        for link in &self.links {
            self.send_on(link.value(), frame.clone());
        }
    }

    fn gossip(&self) {
        let update = self.membership().update(&self.name, &self.address);
        self.broadcast(&update);
    }

    // ---- accepting and dialling ----

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    if self.stopping.load(Ordering::SeqCst) {
                        continue;
                    }
                    let this = self.clone();
                    let task = tokio::spawn(async move {
                        match this.handshake(stream, Role::Responder).await {
                            Ok(est) => this.run_link(est).await,
                            Err(e) => tracing::info!(%peer, error = %e, "cluster link refused"),
                        }
                    });
                    self.track(task.abort_handle());
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "cluster accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn ensure_dialer(&self, peer: &str) {
        let Some(this) = self.me() else {
            return;
        };
        if self.stopping.load(Ordering::SeqCst)
            || self.dialers.insert(peer.to_owned(), ()).is_some()
        {
            return;
        }
        let peer = peer.to_owned();
        let task = tokio::spawn(async move {
            this.dial_loop(&peer).await;
            this.dialers.remove(&peer);
        });
        self.track(task.abort_handle());
    }

    /// Keeps a link to `peer` up while it is a member: dials when down, backs off on failure.
    async fn dial_loop(self: &Arc<Self>, peer: &str) {
        let mut attempt = 0u32;
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let Some(address) = self.membership().members().get(peer).cloned() else {
                return;
            };
            if self.links.contains_key(peer) {
                attempt = 0;
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            match self.dial(&address).await {
                Ok(est) if est.peer.node == peer => {
                    attempt = 0;
                    self.run_link(est).await;
                }
                Ok(est) => {
                    tracing::warn!(expected = %peer, found = %est.peer.node, %address, "a different node answers at a member's address");
                    self.run_link(est).await;
                }
                Err(DialError::Handshake(HandshakeError::PeerRefused(Refusal::Removed))) => {
                    tracing::error!(%peer, "this node was removed from the cluster (leave_cluster); forgetting the member");
                    let mut m = self.membership();
                    m.forget(peer);
                    self.save_membership(&m);
                    return;
                }
                Err(e) => {
                    tracing::debug!(%peer, %address, error = %e, "cluster dial failed");
                }
            }
            let jitter = f64::from(rand::random::<u16>()) / 65536.0;
            tokio::time::sleep(backoff(attempt, jitter)).await;
            attempt = attempt.saturating_add(1);
        }
    }

    async fn dial(&self, address: &str) -> Result<Established, DialError> {
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.connect(address))
            .await
            .map_err(|_| DialError::Timeout)?
            .map_err(DialError::Io)?;
        self.handshake(stream, Role::Initiator).await
    }

    /// Connects from the cluster listener's address when it names one, so that a node's links
    /// all come from its cluster address (firewall rules and partition tests can tell nodes
    /// apart on one machine); otherwise the kernel picks the source.
    async fn connect(&self, address: &str) -> std::io::Result<TcpStream> {
        let local: Option<SocketAddr> = self.address.parse().ok();
        let mut last = None;
        for target in tokio::net::lookup_host(address).await? {
            let socket = if target.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            if let Some(source) = local.and_then(|l| dial_source(l, target)) {
                socket.bind(source)?;
            }
            match socket.connect(target).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{address} resolves to no address"),
            )
        }))
    }

    /// Preamble and handshake on a fresh connection, under one deadline.
    async fn handshake(&self, mut stream: TcpStream, role: Role) -> Result<Established, DialError> {
        let _ = stream.set_nodelay(true);
        let work = async {
            stream.write_all(&wire::preamble()).await?;
            let mut preamble = [0u8; 8];
            stream.read_exact(&mut preamble).await?;
            let version = wire::negotiate(&preamble).map_err(DialError::Wire)?;
            let (mut hs, hello) = Handshake::start(role, self.hello(), self.cookie.clone());
            stream.write_all(&wire::encode(&hello)).await?;
            let mut decoder = FrameDecoder::new();
            let mut buf = vec![0u8; 4096];
            loop {
                while let Some(message) = decoder.next_message().map_err(DialError::Wire)? {
                    let admit = |h: &Hello| self.membership().admit(h);
                    let steps = match hs.receive(message, admit) {
                        Ok(steps) => steps,
                        Err((steps, e)) => {
                            for step in steps {
                                if let Step::Send(m) = step {
                                    let _ = stream.write_all(&wire::encode(&m)).await;
                                }
                            }
                            return Err(DialError::Handshake(e));
                        }
                    };
                    for step in steps {
                        match step {
                            Step::Send(m) => stream.write_all(&wire::encode(&m)).await?,
                            Step::Established(peer) => return Ok((peer, decoder, version)),
                        }
                    }
                }
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    return Err(DialError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                decoder.feed(buf.get(..n).unwrap_or_default());
            }
        };
        let (peer, decoder, version) = tokio::time::timeout(HANDSHAKE_TIMEOUT, work)
            .await
            .map_err(|_| DialError::Timeout)??;
        Ok(Established {
            stream,
            decoder,
            peer,
            role,
            version,
        })
    }

    // ---- one link ----

    /// Registers an authenticated connection as the link to its peer (or drops it if the
    /// existing link wins the tie-break), then runs it until it goes down.
    async fn run_link(self: &Arc<Self>, est: Established) {
        let Some(server) = self.server() else {
            return;
        };
        let Some(view) = self.view() else {
            return;
        };
        let Established {
            mut stream,
            mut decoder,
            peer,
            role,
            version,
        } = est;
        let name = peer.node.clone();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(LINK_QUEUE);
        let handle = LinkHandle {
            id: self.next_link.fetch_add(1, Ordering::Relaxed),
            role,
            address: peer.listen.clone(),
            tx,
            kill: Arc::new(Notify::new()),
            stats: Arc::new(LinkStats::new()),
            version,
        };
        // Register and queue the snapshot while no directory change can slip in between.
        let registered = server.sm().with_local_snapshot(|snapshot| {
            if let Some(existing) = self.links.get(&name) {
                if !new_link_wins(&self.name, &name, role, existing.role) {
                    return false;
                }
                existing.kill.notify_one();
            }
            let records = snapshot.iter().map(to_record).collect();
            let _ = handle
                .tx
                .try_send(wire::encode(&Message::Snapshot(records)));
            // Routes follow under the route table's lock, so no announcement is missed.
            server.routes().with_local(|domains| {
                if crate::routes::speaks_routes(version) {
                    let _ = handle.tx.try_send(wire::encode(&Message::Routes(domains)));
                }
                self.links.insert(name.clone(), handle.clone());
            });
            true
        });
        if !registered {
            tracing::debug!(peer = %name, "duplicate cluster link closed (tie-break)");
            return;
        }
        {
            let mut m = self.membership();
            if m.add(&self.name, &name, &peer.listen) {
                self.save_membership(&m);
            }
        }
        self.gossip();
        self.bump();
        // Entities placed by rendezvous hashing may now belong to the new member.
        server.placement_changed();
        self.ensure_dialer(&name);
        self.set_link_metric(&name, true);
        tracing::info!(node = %self.name, peer = %name, address = %peer.listen, incarnation = peer.incarnation, "cluster link up");

        let mut buf = vec![0u8; 16 * 1024];
        let mut ping = tokio::time::interval(HEARTBEAT);
        let mut deadline = tokio::time::Instant::now() + HEARTBEAT_TIMEOUT;
        let mut goodbye = false;
        let reason: String = 'link: loop {
            // Frames already buffered are handled before reading more.
            loop {
                match decoder.next_message() {
                    Ok(Some(message)) => {
                        handle.stats.seen();
                        deadline = tokio::time::Instant::now() + HEARTBEAT_TIMEOUT;
                        if matches!(message, Message::Goodbye) {
                            goodbye = true;
                            break 'link "goodbye".to_owned();
                        }
                        if let Some(reply) = self
                            .handle_message(&server, &view, &name, &handle, message)
                            .await
                        {
                            let _ = self.send_on(&handle, wire::encode(&reply));
                        }
                    }
                    Ok(None) => break,
                    Err(e) => break 'link format!("bad frame: {e}"),
                }
            }
            tokio::select! {
                biased;
                () = handle.kill.notified() => break 'link "closed".to_owned(),
                frame = rx.recv() => {
                    let Some(frame) = frame else { break 'link "closed".to_owned() };
                    if let Err(e) = stream.write_all(&frame).await {
                        break 'link format!("write: {e}");
                    }
                    // Drain what else is queued before going back to reading.
                    while let Ok(frame) = rx.try_recv() {
                        if let Err(e) = stream.write_all(&frame).await {
                            break 'link format!("write: {e}");
                        }
                    }
                }
                _ = ping.tick() => {
                    let _ = self.send_on(&handle, wire::encode(&Message::Ping(now_micros())));
                }
                read = tokio::time::timeout_at(deadline, stream.read(&mut buf)) => match read {
                    Err(_) => break 'link "heartbeat timeout".to_owned(),
                    Ok(Ok(0)) => break 'link "closed by peer".to_owned(),
                    Ok(Ok(n)) => decoder.feed(buf.get(..n).unwrap_or_default()),
                    Ok(Err(e)) => break 'link format!("read: {e}"),
                },
            }
        };
        // Flush what is still queued (a Goodbye, a Leave) on a best-effort basis.
        while let Ok(frame) = rx.try_recv() {
            if stream.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = stream.shutdown().await;
        let current = self
            .links
            .remove_if(&name, |_, l| l.id == handle.id)
            .is_some();
        self.bump();
        if !current {
            return;
        }
        server.placement_changed();
        self.set_link_metric(&name, false);
        if goodbye {
            tracing::info!(node = %self.name, peer = %name, %reason, "cluster link down");
        } else {
            tracing::warn!(node = %self.name, peer = %name, %reason, "cluster link down");
        }
        self.node_lost(&server, &name);
    }

    /// A peer's entries leave the table, and this node's own users hear that the peer's users
    /// went unavailable.
    ///
    /// Every survivor tells only its *local* sessions (subscribers and the user's other
    /// resources), rather than one survivor broadcasting to everyone: in a partial partition
    /// the survivors do not agree on who is up, and each one knows exactly whom it serves.
    /// The winner of the rendezvous hash (over the members this node sees) records the last
    /// activity, which is shared data.
    fn node_lost(&self, server: &Arc<Server>, node: &str) {
        crate::routes::purge(server, node);
        let gone = server.sm().purge_node(node);
        if gone.is_empty() || self.stopping.load(Ordering::SeqCst) {
            return;
        }
        let mut up: Vec<String> = self.links.iter().map(|l| l.key().clone()).collect();
        up.push(self.name.clone());
        let lost: Vec<(FullJid, bool)> = gone
            .into_iter()
            .filter(|e| e.available)
            .map(|e| {
                let key = e.jid.to_bare().to_string();
                let winner = placement::owner(&key, up.iter().map(String::as_str))
                    == Some(self.name.as_str());
                (e.jid, winner)
            })
            .collect();
        if lost.is_empty() {
            return;
        }
        let server = server.clone();
        tokio::spawn(async move {
            for (jid, winner) in lost {
                let user = jid.to_bare();
                if winner
                    && server.sm().sessions_of(&user).is_empty()
                    && let Err(e) = server
                        .stores()
                        .set_last(&user, unix_now(), "Node down")
                        .await
                {
                    tracing::warn!(%user, error = %e, "cannot record last activity");
                }
                let mut el = element("presence", ns::CLIENT, &[("type", "unavailable")]);
                el.append_child(text_element("status", ns::CLIENT, "Node down"));
                tell_local_contacts(&server, &jid, &el, winner).await;
            }
        });
    }

    /// A snapshot brought sessions this node did not know (a link came back after a partition,
    /// or a node restarted and its users logged in before the link was up): its local users
    /// missed their presence, so it is delivered to them now.
    fn announce(&self, server: &Arc<Server>, fresh: Vec<(FullJid, Arc<Element>)>) {
        if fresh.is_empty() || self.stopping.load(Ordering::SeqCst) {
            return;
        }
        let server = server.clone();
        tokio::spawn(async move {
            for (jid, presence) in fresh {
                tell_local_contacts(&server, &jid, &presence, false).await;
            }
        });
    }

    async fn handle_message(
        &self,
        server: &Arc<Server>,
        view: &Arc<dyn ClusterView>,
        peer: &str,
        link: &LinkHandle,
        message: Message,
    ) -> Option<Message> {
        let current = || self.links.get(peer).is_some_and(|l| l.id == link.id);
        match message {
            Message::Ping(t) => return Some(Message::Pong(t)),
            Message::Pong(t) => {
                link.stats
                    .rtt_us
                    .store(now_micros().saturating_sub(t), Ordering::Relaxed);
            }
            Message::Heartbeat | Message::Goodbye => {}
            Message::Snapshot(records) if current() => {
                let sessions: Vec<RemoteSession> = records.iter().filter_map(from_record).collect();
                let gone = server.sm().replace_node(peer, view, sessions.clone());
                let fresh = sessions
                    .into_iter()
                    .filter(|s| s.available)
                    .filter(|s| !gone.iter().any(|g| g.id == s.id && g.jid == s.jid))
                    .filter_map(|s| s.presence.map(|p| (s.jid, p)))
                    .collect();
                tracing::debug!(%peer, replaced = gone.len(), "session snapshot applied");
                self.announce(server, fresh);
            }
            Message::SessionUp(record) if current() => {
                if let Some(session) = from_record(&record) {
                    server.sm().apply_remote(peer, view, session);
                }
            }
            Message::SessionDown { jid, id } if current() => {
                if let Ok(jid) = FullJid::parse(&jid) {
                    server.sm().remove_remote(peer, &jid, id);
                }
            }
            Message::Deliver { id, stanza } => match parse_stanza(&stanza) {
                Some(stanza) => starling_core::local::deliver_forwarded(server, stanza, id).await,
                None => tracing::warn!(%peer, "undecodable forwarded stanza dropped"),
            },
            Message::Close {
                jid,
                id,
                condition,
                text,
            } => {
                if let Ok(jid) = FullJid::parse(&jid)
                    && let Some(entry) = server.sm().get_local(&jid)
                    && entry.id == id
                {
                    let condition = StreamErrorCondition::from_name(&condition)
                        .unwrap_or(StreamErrorCondition::PolicyViolation);
                    let mut error = StreamError::new(condition);
                    if let Some(text) = text {
                        error = error.with_text(text);
                    }
                    entry.close(error);
                }
            }
            Message::MemberUpdate { members, removed } => {
                let (added, gone) = {
                    let mut m = self.membership();
                    let out = m.merge(&self.name, &members, &removed);
                    if !out.0.is_empty() || !out.1.is_empty() {
                        self.save_membership(&m);
                    }
                    out
                };
                for (name, _) in &added {
                    self.ensure_dialer(name);
                }
                for name in &gone {
                    if *name == self.name {
                        self.removed(server);
                    } else if let Some(l) = self.links.get(name) {
                        l.kill.notify_one();
                    }
                }
                let first = !link.stats.gossiped.swap(true, Ordering::Relaxed);
                if !added.is_empty() || !gone.is_empty() {
                    self.gossip();
                }
                if first || !added.is_empty() || !gone.is_empty() {
                    self.bump();
                }
            }
            Message::Leave => self.removed(server),
            // XEP-0198 resumption through another node (crate::handover). Served in a task:
            // the session's answer must not hold up this link's reads.
            Message::TakeOver {
                req,
                user,
                previd,
                h,
            } => {
                let server = server.clone();
                let me = self.me();
                let peer = peer.to_owned();
                tokio::spawn(async move {
                    let outcome = crate::handover::serve(&server, &user, &previd, h).await;
                    let link = me
                        .as_ref()
                        .and_then(|me| me.links.get(&peer).map(|l| l.clone()));
                    let sent = match (&me, link) {
                        (Some(me), Some(link)) => me.send_on(
                            &link,
                            wire::encode(&Message::HandedOver {
                                req,
                                outcome: outcome.clone(),
                            }),
                        ),
                        _ => false,
                    };
                    if !sent {
                        crate::handover::unclaimed(&server, outcome).await;
                    }
                });
            }
            Message::HandedOver { req, outcome } => {
                if let Err(outcome) = self.handovers.answer(req, outcome) {
                    crate::handover::unclaimed(server, outcome).await;
                }
            }
            // The cluster-wide route table (crate::routes).
            Message::Routes(domains) if current() => {
                let mesh: Weak<dyn crate::routes::Forward> = self.this.clone();
                crate::routes::snapshot(server, &self.name, &mesh, peer, &domains);
            }
            Message::RouteUp(domain) if current() => {
                let mesh: Weak<dyn crate::routes::Forward> = self.this.clone();
                crate::routes::up(server, &self.name, &mesh, peer, &domain);
            }
            Message::RouteDown(domain) if current() => {
                crate::routes::down(server, peer, &domain);
            }
            Message::RouteDeliver { domain, stanza } => {
                crate::routes::deliver(server, peer, &domain, &stanza).await;
            }
            Message::Forward { stanza, hops } => match parse_stanza(&stanza) {
                Some(stanza) => {
                    starling_core::placement::deliver_forwarded(server, peer, stanza, hops).await;
                }
                None => tracing::warn!(%peer, "undecodable forwarded stanza dropped"),
            },
            Message::Hello(_) | Message::Proof(_) | Message::Refused(_) => {
                tracing::warn!(%peer, "handshake message on an established link");
            }
            _ => {}
        }
        None
    }

    /// This node was removed with `leave_cluster`: forget the members and stop.
    fn removed(&self, server: &Arc<Server>) {
        tracing::error!(node = %self.name, "removed from the cluster (leave_cluster); stopping");
        {
            // The tombstone of our own name is what keeps this node out after a restart.
            let mut m = self.membership();
            m.clear();
            m.remove(&self.name);
            self.save_membership(&m);
        }
        self.stopping.store(true, Ordering::SeqCst);
        for link in &self.links {
            link.kill.notify_one();
        }
        server.begin_shutdown();
    }

    /// On a graceful stop, peers are told to purge at once rather than wait for EOF.
    async fn watch_shutdown(
        self: Arc<Self>,
        mut state: watch::Receiver<starling_core::server::NodeState>,
    ) {
        let _ = state
            .wait_for(|s| *s == starling_core::server::NodeState::Stopping)
            .await;
        // Let sessions closing now send their unbinds first: wait (bounded) until no local
        // session is left, then until the links have taken every queued frame.
        let sessions_gone = tokio::time::Instant::now() + SHUTDOWN_SESSIONS_GRACE;
        while self
            .server
            .upgrade()
            .is_some_and(|s| s.sm().count_local() > 0)
            && tokio::time::Instant::now() < sessions_gone
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.stopping.store(true, Ordering::SeqCst);
        self.broadcast(&Message::Goodbye);
        if self.sql_discovery
            && let Some(server) = self.server()
            && let Err(e) = server.stores().forget_node(&self.name).await
        {
            tracing::warn!(node = %self.name, error = %e, "cluster discovery: cannot remove this node's row");
        }
        self.drain_links(SHUTDOWN_FLUSH_GRACE).await;
        for link in &self.links {
            link.kill.notify_one();
        }
    }

    /// Waits until every link's writer has taken all queued frames, at most `grace`.
    async fn drain_links(&self, grace: Duration) {
        let until = tokio::time::Instant::now() + grace;
        while self
            .links
            .iter()
            .any(|l| l.tx.capacity() < l.tx.max_capacity())
            && tokio::time::Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    // ---- commands ----

    fn status(&self) -> Vec<MemberStatus> {
        let server = self.server();
        let count = |node: Option<&str>| {
            server.as_ref().map_or(0, |s| match node {
                None => s.sm().count_local(),
                Some(n) => s.sm().count_of_node(n),
            })
        };
        let mut out = vec![MemberStatus {
            name: self.name.clone(),
            address: self.address.clone(),
            this_node: true,
            up: true,
            sessions: count(None),
            last_seen_ms: None,
            rtt_us: None,
        }];
        let members = self.membership().members().clone();
        for (name, address) in members {
            let link = self.links.get(&name).map(|l| l.clone());
            let (last_seen_ms, rtt_us) = match &link {
                Some(l) => {
                    let now = u64::try_from(l.stats.started.elapsed().as_millis()).unwrap_or(0);
                    let rtt = l.stats.rtt_us.load(Ordering::Relaxed);
                    (
                        Some(now.saturating_sub(l.stats.last_seen_ms.load(Ordering::Relaxed))),
                        (rtt != u64::MAX).then_some(rtt),
                    )
                }
                None => (None, None),
            };
            out.push(MemberStatus {
                sessions: count(Some(&name)),
                address: link.as_ref().map_or(address, |l| l.address.clone()),
                name,
                this_node: false,
                up: link.is_some(),
                last_seen_ms,
                rtt_us,
            });
        }
        out
    }

    async fn join(&self, address: &str) -> Result<Vec<String>, String> {
        let outcome = self.try_join(address).await;
        match &outcome {
            Ok(members) => {
                tracing::info!(node = %self.name, %address, ?members, "joined the cluster");
            }
            Err(message) => {
                tracing::error!(node = %self.name, %address, "join_cluster failed: {message}");
            }
        }
        outcome
    }

    async fn try_join(&self, address: &str) -> Result<Vec<String>, String> {
        if self.membership().is_removed(&self.name) {
            return Err(format!(
                "this node ({}) was removed from the cluster with leave_cluster; give it a new \
                 cluster.node_name to join again",
                self.name
            ));
        }
        if self.db_id == "sqlite" {
            return Err(
                "clustering needs a shared PostgreSQL database (sql_type: pgsql); this node uses \
                 the embedded SQLite database"
                    .to_owned(),
            );
        }
        let Some(this) = self.me() else {
            return Err("the node is stopping".to_owned());
        };
        let est = self
            .dial(address)
            .await
            .map_err(|e| explain(&e, &self.name, address))?;
        let peer = est.peer.node.clone();
        let mut epoch = self.epoch.subscribe();
        let link_task = {
            let this = this.clone();
            tokio::spawn(async move { this.run_link(est).await })
        };
        self.track(link_task.abort_handle());
        let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
        loop {
            let gossiped = self
                .links
                .get(&peer)
                .is_some_and(|l| l.stats.gossiped.load(Ordering::Relaxed));
            let members: Vec<String> = self.membership().members().keys().cloned().collect();
            let missing: Vec<&String> = members
                .iter()
                .filter(|m| !self.links.contains_key(*m))
                .collect();
            if gossiped && missing.is_empty() {
                return Ok(members);
            }
            let wait = tokio::time::timeout_at(deadline, epoch.changed());
            if wait.await.is_err() {
                return Err(format!(
                    "linked to {peer} at {address}, but not to {} within {} s",
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    JOIN_TIMEOUT.as_secs()
                ));
            }
        }
    }

    async fn leave(&self, node: &str) -> Result<(), String> {
        let Some(server) = self.server() else {
            return Err("the node is stopping".to_owned());
        };
        if self.sql_discovery
            && let Err(e) = server.stores().forget_node(node).await
        {
            tracing::warn!(%node, error = %e, "cluster discovery: cannot remove the node's row");
        }
        if node == self.name {
            // Tell everyone first, so that no one re-dials us, then stop.
            {
                let mut m = self.membership();
                m.remove(node);
                self.save_membership(&m);
            }
            let update = self.membership().update(&self.name, &self.address);
            self.broadcast(&update);
            self.drain_links(SHUTDOWN_FLUSH_GRACE).await;
            self.removed(&server);
            return Ok(());
        }
        {
            let mut m = self.membership();
            if !m.is_member(node) {
                return Err(format!("{node} is not a member of this node's cluster"));
            }
            m.remove(node);
            self.save_membership(&m);
        }
        if let Some(link) = self.links.get(node).map(|l| l.clone()) {
            self.send_on(&link, wire::encode(&Message::Leave));
        }
        self.gossip();
        self.bump();
        // The link task flushes `Leave` and purges the node's entries as it goes down; a node
        // already down is purged here.
        if !self.links.contains_key(node) {
            self.node_lost(&server, node);
        }
        Ok(())
    }
}

impl ClusterView for Inner {
    fn node_name(&self) -> &str {
        &self.name
    }

    fn changed(&self, change: DirectoryChange) {
        let message = match change {
            DirectoryChange::Upsert(session) => Message::SessionUp(to_record(&session)),
            DirectoryChange::Remove { jid, id } => Message::SessionDown {
                jid: jid.to_string(),
                id,
            },
        };
        self.broadcast(&message);
    }

    fn deliver(&self, node: &str, _to: &FullJid, id: SessionId, stanza: Arc<Stanza>) -> bool {
        let Some(link) = self.links.get(node).map(|l| l.clone()) else {
            return false;
        };
        let frame = wire::encode(&Message::Deliver {
            id,
            stanza: stanza.bytes().to_vec(),
        });
        let sent = self.send_on(&link, frame);
        if sent {
            self.count_forwarded(node);
        }
        sent
    }

    fn close(&self, node: &str, jid: &FullJid, id: SessionId, error: &StreamError) {
        if let Some(link) = self.links.get(node).map(|l| l.clone()) {
            let frame = wire::encode(&Message::Close {
                jid: jid.to_string(),
                id,
                condition: error.condition.name().to_owned(),
                text: error.text.clone(),
            });
            self.send_on(&link, frame);
        }
    }

    fn status(&self) -> Vec<MemberStatus> {
        Self::status(self)
    }

    fn join<'a>(
        &'a self,
        address: &'a str,
    ) -> starling_core::BoxFuture<'a, Result<Vec<String>, String>> {
        Box::pin(Self::join(self, address))
    }

    fn place(&self, key: &str) -> Option<String> {
        let members: Vec<String> = self
            .links
            .iter()
            .filter(|l| l.version >= wire::PLACEMENT_VERSION)
            .map(|l| l.key().clone())
            .collect();
        let candidates = members
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(self.name.as_str()));
        placement::owner(key, candidates).map(str::to_owned)
    }

    fn forward(&self, node: &str, stanza: &Stanza, hops: u8) -> bool {
        let Some(link) = self.links.get(node).map(|l| l.clone()) else {
            return false;
        };
        if link.version < wire::PLACEMENT_VERSION {
            return false;
        }
        let frame = wire::encode(&Message::Forward {
            stanza: stanza.bytes().to_vec(),
            hops,
        });
        let sent = self.send_on(&link, frame);
        if sent {
            self.count_forwarded(node);
        }
        sent
    }

    fn take_over<'a>(
        &'a self,
        user: &'a starling_xmpp::jid::BareJid,
        previd: &'a str,
        h: u32,
    ) -> starling_core::BoxFuture<
        'a,
        Result<starling_core::handover::HandoverState, starling_core::handover::HandoverRefused>,
    > {
        Box::pin(async move {
            let peers: Vec<String> = self
                .links
                .iter()
                .filter(|l| l.version >= wire::HANDOVER_VERSION)
                .map(|l| l.key().clone())
                .collect();
            let send = |peer: &str, frame: Vec<u8>| {
                self.links
                    .get(peer)
                    .map(|l| l.clone())
                    .is_some_and(|link| self.send_on(&link, frame))
            };
            let ask = crate::handover::Ask { user, previd, h };
            crate::handover::request(
                &self.handovers,
                peers,
                send,
                ask,
                crate::handover::HANDOVER_TIMEOUT,
            )
            .await
        })
    }

    fn leave<'a>(&'a self, node: &'a str) -> starling_core::BoxFuture<'a, Result<(), String>> {
        Box::pin(Self::leave(self, node))
    }
}

/// Local route changes go to every member whose protocol carries routes.
impl starling_core::routes::RouteMirror for Inner {
    fn changed(&self, change: &starling_core::routes::RouteChange) {
        let frame = wire::encode(&crate::routes::announcement(change));
        for link in &self.links {
            if crate::routes::speaks_routes(link.version) {
                self.send_on(link.value(), frame.clone());
            }
        }
    }
}

impl crate::routes::Forward for Inner {
    fn forward(&self, node: &str, message: &Message) -> bool {
        let Some(link) = self.links.get(node).map(|l| l.clone()) else {
            return false;
        };
        let sent = self.send_on(&link, wire::encode(message));
        if sent {
            self.count_forwarded(node);
        }
        sent
    }
}

/// Why a dial or an accepted connection did not become a link.
#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Wire(wire::WireError),
    #[error("{0}")]
    Handshake(HandshakeError),
}

/// The operator's message for a failed `join_cluster`, naming both sides' values.
fn explain(error: &DialError, me: &str, address: &str) -> String {
    match error {
        DialError::Handshake(HandshakeError::PeerRefused(r) | HandshakeError::WeRefused(r)) => {
            let theirs_first =
                matches!(error, DialError::Handshake(HandshakeError::PeerRefused(_)));
            match r {
                Refusal::Unauthenticated => format!(
                    "the node at {address} refused the link: the cluster cookies differ (copy \
                     data_dir/cookie from a member to this node, then restart it)"
                ),
                Refusal::HostsMismatch { ours, theirs } => {
                    let (peer, mine) = if theirs_first {
                        (ours, theirs)
                    } else {
                        (theirs, ours)
                    };
                    format!(
                        "hosts differ: the node at {address} serves [{}], this node ({me}) serves [{}]",
                        peer.join(", "),
                        mine.join(", ")
                    )
                }
                Refusal::SharedDbMismatch { ours, theirs } => {
                    let (peer, mine) = if theirs_first {
                        (ours, theirs)
                    } else {
                        (theirs, ours)
                    };
                    format!(
                        "databases differ: the node at {address} uses {peer}, this node ({me}) \
                         uses {mine}; a cluster needs one shared PostgreSQL database"
                    )
                }
                Refusal::NameInUse => format!(
                    "the node at {address} has the same node name as this node ({me}); give each \
                     node its own cluster.node_name"
                ),
                Refusal::Removed => format!(
                    "the node at {address} refused {me}: this node was removed from the cluster \
                     with leave_cluster; give it a new cluster.node_name to join again"
                ),
            }
        }
        DialError::Wire(wire::WireError::NoCommonVersion { .. }) => {
            format!(
                "the node at {address} speaks another cluster protocol version: {}",
                error
            )
        }
        other => format!("cannot link to {address}: {other}"),
    }
}

/// The source address for dialling `target` from a node whose cluster listener is `listen`:
/// its IP when it names one of the same family and scope (a loopback listener cannot reach
/// another machine), else none.
fn dial_source(listen: SocketAddr, target: SocketAddr) -> Option<SocketAddr> {
    let ip = listen.ip();
    let same = ip.is_ipv4() == target.is_ipv4() && ip.is_loopback() == target.ip().is_loopback();
    (!ip.is_unspecified() && same).then_some(SocketAddr::new(ip, 0))
}

/// Delivers `presence` from `jid` to the sessions on this node that should see it: the
/// sessions of users subscribed to `jid`'s presence and `jid`'s own other resources. With
/// `federated`, subscribers on other servers get it too, routed over s2s (one node does that,
/// so they hear it once).
async fn tell_local_contacts(server: &Server, jid: &FullJid, presence: &Element, federated: bool) {
    let user = jid.to_bare();
    let hosts = server.hosts();
    let mut targets: Vec<starling_core::sm::SessionEntry> = server
        .sm()
        .sessions_of(&user)
        .into_iter()
        .filter(|s| s.is_local() && s.available && s.jid != *jid)
        .collect();
    match server.stores().roster(&user).await {
        Ok((items, _)) => {
            for item in items
                .iter()
                .filter(|i| starling_core::roster::is_subscriber(i))
            {
                if !hosts.iter().any(|h| h == item.jid.domain()) {
                    if federated
                        && let Ok(stanza) = Stanza::new(
                            presence.clone(),
                            jid.clone().into(),
                            item.jid.clone().into(),
                        )
                    {
                        starling_core::router::route(server, stanza).await;
                    }
                    continue;
                }
                targets.extend(
                    server
                        .sm()
                        .sessions_of(&item.jid)
                        .into_iter()
                        .filter(|s| s.is_local() && s.available),
                );
            }
        }
        Err(e) => tracing::warn!(%user, error = %e, "cannot load roster"),
    }
    for target in targets {
        let stanza = Stanza::new(
            presence.clone(),
            jid.clone().into(),
            target.jid.clone().into(),
        );
        if let Ok(stanza) = stanza {
            target.deliver(Arc::new(stanza));
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn to_record(session: &RemoteSession) -> SessionRecord {
    SessionRecord {
        jid: session.jid.to_string(),
        id: session.id,
        priority: session.priority,
        available: session.available,
        interested: session.interested,
        presence: session
            .presence
            .as_ref()
            .and_then(|p| String::from_utf8(starling_xmpp::codec::to_bytes(p)).ok()),
        bound_at: session.bound_at,
    }
}

fn from_record(record: &SessionRecord) -> Option<RemoteSession> {
    Some(RemoteSession {
        jid: FullJid::parse(&record.jid).ok()?,
        id: record.id,
        priority: record.priority,
        available: record.available,
        interested: record.interested,
        presence: record
            .presence
            .as_deref()
            .and_then(|p| p.parse::<Element>().ok())
            .map(Arc::new),
        bound_at: record.bound_at,
    })
}

pub(crate) fn parse_stanza(bytes: &[u8]) -> Option<Stanza> {
    let text = std::str::from_utf8(bytes).ok()?;
    let element: Element = text.parse().ok()?;
    Stanza::from_element(element).ok()
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_presence() {
        let presence: Element = "<presence xmlns='jabber:client'><priority>5</priority></presence>"
            .parse()
            .unwrap();
        let session = RemoteSession {
            jid: FullJid::parse("u@example.org/phone").unwrap(),
            id: 42,
            priority: 5,
            available: true,
            interested: true,
            presence: Some(Arc::new(presence)),
            bound_at: 1_700_000_000_000_000,
        };
        let back = from_record(&to_record(&session)).unwrap();
        assert_eq!(back, session);
        let mut bad = to_record(&session);
        bad.jid = "not a full jid".into();
        assert!(from_record(&bad).is_none());
    }

    #[test]
    fn forwarded_stanzas_parse_once_and_garbage_is_rejected() {
        let el: Element = "<message xmlns='jabber:client' from='a@x/r' to='b@x/s' type='chat'><body>hi &amp; bye</body></message>"
            .parse()
            .unwrap();
        let stanza = Stanza::from_element(el).unwrap();
        let back = parse_stanza(&stanza.bytes()).unwrap();
        assert_eq!(back.to().to_string(), "b@x/s");
        assert_eq!(back.element(), stanza.element());
        assert!(parse_stanza(b"<message").is_none());
        assert!(parse_stanza(&[0xff, 0xfe]).is_none());
    }

    #[test]
    fn dials_leave_from_the_cluster_address_when_it_can() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            dial_source(addr("127.0.0.2:5370"), addr("127.0.0.1:5370")),
            Some(addr("127.0.0.2:0"))
        );
        assert_eq!(
            dial_source(addr("10.0.0.2:5370"), addr("10.0.0.1:5370")),
            Some(addr("10.0.0.2:0"))
        );
        // Unspecified, loopback to another machine, or another family: the kernel chooses.
        assert_eq!(
            dial_source(addr("0.0.0.0:5370"), addr("10.0.0.1:5370")),
            None
        );
        assert_eq!(
            dial_source(addr("127.0.0.1:5370"), addr("10.0.0.1:5370")),
            None
        );
        assert_eq!(
            dial_source(addr("[::1]:5370"), addr("127.0.0.1:5370")),
            None
        );
    }

    #[test]
    fn refusals_name_both_values() {
        let e = DialError::Handshake(HandshakeError::PeerRefused(Refusal::HostsMismatch {
            ours: vec!["a.org".into()],
            theirs: vec!["b.org".into()],
        }));
        let text = explain(&e, "starling@me", "10.0.0.1:5370");
        assert!(text.contains("10.0.0.1:5370 serves [a.org]"), "{text}");
        assert!(text.contains("(starling@me) serves [b.org]"), "{text}");
        let e = DialError::Handshake(HandshakeError::WeRefused(Refusal::SharedDbMismatch {
            ours: "sqlite".into(),
            theirs: "pgsql://db:5432/x".into(),
        }));
        let text = explain(&e, "me", "addr");
        assert!(
            text.contains("uses pgsql://db:5432/x") && text.contains("uses sqlite"),
            "{text}"
        );
        let e = DialError::Handshake(HandshakeError::PeerRefused(Refusal::Unauthenticated));
        assert!(explain(&e, "me", "addr").contains("cookie"));
    }
}
