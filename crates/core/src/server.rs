//! The node: configuration snapshot, stores, session manager and per-host modules.
//!
//! One `Server` value is shared (behind an `Arc`) by every connection task. Everything that can
//! change at run time is an `ArcSwap` snapshot, so reads on the routing path take no lock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use starling_config::Config;
use starling_storage::Stores;
use starling_xmpp::stanza::Stanza;
use tokio::sync::watch;

use crate::counters::Counters;
use crate::module::{HostContext, HostModules, Module, ModuleError, Service};
use crate::router;
use crate::sm::{DEFAULT_INBOX, SessionManager};

/// Default maximum number of roster items per user.
pub const DEFAULT_MAX_ROSTER_ITEMS: u32 = 1000;

/// The s2s manager as the router sees it: it takes stanzas for remote domains and either
/// delivers them or bounces them (`<remote-server-not-found/>`, `<remote-server-timeout/>`).
pub trait RemoteRouter: Send + Sync {
    /// Takes a stanza whose `to` domain is not served here.
    fn route<'a>(&'a self, server: &'a Server, stanza: Stanza) -> crate::BoxFuture<'a, ()>;

    /// The server-to-server connections open now (for `s2s_connections`).
    fn connections(&self) -> Vec<RemoteConnection> {
        Vec::new()
    }

    /// Closes every server-to-server connection; returns how many were open.
    fn stop_connections(&self) -> usize {
        0
    }
}

/// One server-to-server connection, as `starlingctl s2s_connections` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteConnection {
    /// True for connections the peer opened.
    pub incoming: bool,
    /// Our domain.
    pub local: String,
    /// The peer's domain (`?` while an incoming stream has not authenticated).
    pub remote: String,
    /// The peer's address, once connected.
    pub addr: Option<std::net::SocketAddr>,
    /// True once TLS is up.
    pub tls: bool,
    /// `external`, `dialback`, or `none` while negotiating.
    pub auth: &'static str,
}

/// Lifecycle state, reported by `status` and (later) `/health`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Serving.
    Running,
    /// Shutting down: sessions are being closed.
    Stopping,
}

/// A Starling node.
pub struct Server {
    /// Itself, for modules that must spawn work outliving the call they are in.
    this: std::sync::Weak<Self>,
    config: ArcSwap<Config>,
    stores: Arc<dyn Stores>,
    sm: SessionManager,
    hosts: ArcSwap<HashMap<String, Arc<HostModules>>>,
    started: Instant,
    state: watch::Sender<NodeState>,
    max_roster_items: u32,
    /// Domains routed to a service or component rather than a host (DESIGN §2.1 routes table;
    /// cluster-wide through [`crate::routes::RouteMirror`]).
    routes: crate::routes::Routes,
    /// Where stanzas for other domains go (the s2s manager), once one is attached.
    remote: arc_swap::ArcSwapOption<Box<dyn RemoteRouter>>,
    /// Activity counters read by the metrics exporter at scrape time.
    counters: Arc<Counters>,
    /// Addresses banned after failed authentications (`mod_fail2ban`, [`crate::ban`]).
    bans: crate::ban::Bans,
    /// IQ requests the server itself sent, awaiting their result, by id.
    pending_iq: dashmap::DashMap<
        String,
        (
            starling_xmpp::jid::Jid,
            tokio::sync::oneshot::Sender<Stanza>,
        ),
    >,
}

impl Server {
    /// Builds the node and starts each host's modules from `catalogue` as the config lists them.
    pub fn new(
        config: Config,
        stores: Arc<dyn Stores>,
        catalogue: &[Arc<dyn Module>],
    ) -> Result<Arc<Self>, ModuleError> {
        let hosts = start_modules(&config, catalogue)?;
        let routes = crate::routes::Routes::new();
        for modules in hosts.values() {
            for service in &modules.registrations.services {
                routes.insert_service(&service.domain, service.handler.clone());
            }
        }
        let (state, _) = watch::channel(NodeState::Running);
        Ok(Arc::new_cyclic(|this| Self {
            this: this.clone(),
            config: ArcSwap::from_pointee(config),
            stores,
            sm: SessionManager::new(DEFAULT_INBOX),
            hosts: ArcSwap::from_pointee(hosts),
            started: Instant::now(),
            state,
            max_roster_items: DEFAULT_MAX_ROSTER_ITEMS,
            pending_iq: dashmap::DashMap::new(),
            routes,
            remote: arc_swap::ArcSwapOption::empty(),
            counters: Arc::new(Counters::default()),
            bans: crate::ban::Bans::default(),
        }))
    }

    /// The node's ban table ([`crate::ban`]; counting and checks go through
    /// [`Self::auth_failed`] and [`Self::banned`]).
    pub fn bans(&self) -> &crate::ban::Bans {
        &self.bans
    }

    /// A strong handle to this server, for tasks a module spawns (background deliveries,
    /// periodic purges). `None` only while the server is being dropped.
    pub fn handle(&self) -> Option<Arc<Self>> {
        self.this.upgrade()
    }

    /// The current configuration snapshot.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The persistent stores.
    pub fn stores(&self) -> &dyn Stores {
        &*self.stores
    }

    /// The session manager.
    pub fn sm(&self) -> &SessionManager {
        &self.sm
    }

    /// The modules running on `host`, if it is one of ours.
    pub fn host_modules(&self, host: &str) -> Option<Arc<HostModules>> {
        self.hosts.load().get(host).cloned()
    }

    /// True if `domain` is served by this node.
    pub fn is_local(&self, domain: &str) -> bool {
        self.hosts.load().contains_key(domain)
    }

    /// The hosts served, in config order.
    pub fn hosts(&self) -> Vec<String> {
        self.config.load().hosts.clone()
    }

    /// The service or component serving `domain`, if any.
    pub fn route_for(&self, domain: &str) -> Option<Arc<dyn Service>> {
        self.routes.get(domain)
    }

    /// The routes table (owners, cluster replication: [`crate::routes`]).
    pub fn routes(&self) -> &crate::routes::Routes {
        &self.routes
    }

    /// Registers a route for a domain (an external component connecting); in a cluster every
    /// member learns it. Returns false, changing nothing, if the domain is a host of ours or
    /// already routed, here or on another member.
    pub fn add_route(&self, domain: &str, service: Arc<dyn Service>) -> bool {
        if self.is_local(domain) {
            return false;
        }
        self.routes.add_local(domain, service)
    }

    /// Removes a route registered with [`Server::add_route`] (only a connection's own route:
    /// a module service, or a member's route that replaced a revoked one, stays).
    pub fn remove_route(&self, domain: &str) {
        self.routes.remove_local(domain);
    }

    /// Attaches the s2s manager: stanzas for domains that are neither hosts nor routes go to it.
    pub fn set_remote_router(&self, remote: Box<dyn RemoteRouter>) {
        self.remote.store(Some(Arc::new(remote)));
    }

    /// The s2s manager, if attached.
    pub fn remote_router(&self) -> Option<Arc<Box<dyn RemoteRouter>>> {
        self.remote.load_full()
    }

    /// Routes a stanza to completion (router → local router → session manager). The time it
    /// takes is the routing latency of [`Counters::routing`].
    pub async fn route(&self, stanza: Stanza) {
        let start = Instant::now();
        router::route(self, stanza).await;
        self.counters.routing().observe(start.elapsed());
    }

    /// The activity counters that `/metrics` exports.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Deletes an account: runs the `remove_user` hook (modules delete their data and tell
    /// contacts), removes it from the store and closes its sessions with `reason`.
    /// Returns false if there was no such account.
    pub async fn remove_user(
        &self,
        user: &starling_xmpp::jid::BareJid,
        reason: &str,
    ) -> Result<bool, starling_storage::StorageError> {
        if !self.stores.exists(user).await? {
            return Ok(false);
        }
        if let Some(modules) = self.host_modules(user.domain()) {
            let mut arg = crate::hooks::RemoveUser { user: user.clone() };
            modules.hooks().remove_user.run(self, &mut arg).await;
        }
        let removed = self.stores.remove(user).await?;
        self.sm.close_user(
            user,
            &starling_xmpp::error::StreamError::new(
                starling_xmpp::error::StreamErrorCondition::NotAuthorized,
            )
            .with_text(reason),
        );
        Ok(removed)
    }

    /// Sends an IQ request on the server's behalf (its `from` is one of our hosts) and waits
    /// up to `timeout` for the result or error, which the local router hands back here
    /// (e.g. disco#info queries to clients for entity capabilities). `None` on timeout.
    pub async fn iq_query(&self, request: Stanza, timeout: std::time::Duration) -> Option<Stanza> {
        let mut request = request;
        if let Some(cluster) = self.sm().cluster() {
            // The answer may come from an entity placed on another member, which routes it to
            // a host JID there: the id tells that member where to send it on.
            let id = crate::placement::answer_id(request.id()?, cluster.node_name());
            let (from, to) = (request.from().clone(), request.to().clone());
            let mut element = request.into_element();
            starling_xmpp::stanza::set_attr(&mut element, "id", id);
            request = Stanza::new(element, from, to).ok()?;
        }
        let id = request.id()?.to_owned();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pending_iq
            .insert(id.clone(), (request.to().clone(), tx));
        self.route(request).await;
        let answer = tokio::time::timeout(timeout, rx)
            .await
            .ok()
            .and_then(Result::ok);
        self.pending_iq.remove(&id);
        answer
    }

    /// Hands an IQ result or error addressed to a host to the `iq_query` waiting for it.
    /// Returns the stanza back if nobody waits for it.
    pub(crate) fn iq_answered(&self, answer: Stanza) -> Option<Stanza> {
        let Some(id) = answer.id() else {
            return Some(answer);
        };
        // Only an answer from the entity the request went to counts (no spoofed results).
        let expected = self
            .pending_iq
            .get(id)
            .is_some_and(|entry| entry.0 == *answer.from());
        if !expected {
            return Some(answer);
        }
        match self.pending_iq.remove(id) {
            Some((_, (_, tx))) => tx.send(answer).err(),
            None => Some(answer),
        }
    }

    /// The cluster's members changed, or this node stops: every placed service hands off
    /// what is now placed on another member, or everything ([`crate::placement`]).
    pub fn placement_changed(&self) {
        for service in self.routes.services() {
            if service.placed() {
                service.placement_changed(self);
            }
        }
    }

    /// Time since start.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Maximum roster size per user.
    pub fn max_roster_items(&self) -> u32 {
        self.max_roster_items
    }

    /// The lifecycle state.
    pub fn state(&self) -> NodeState {
        *self.state.borrow()
    }

    /// A receiver that changes when the node starts stopping.
    pub fn state_changes(&self) -> watch::Receiver<NodeState> {
        self.state.subscribe()
    }

    /// Starts the shutdown: listeners stop accepting and sessions close with
    /// `<system-shutdown/>`.
    pub fn begin_shutdown(&self) {
        self.state.send_replace(NodeState::Stopping);
        // Placed entities (MUC rooms) hand off first, so that occupants on other members hear
        // that the room moves rather than nothing.
        self.placement_changed();
        self.sm.close_all(&starling_xmpp::error::StreamError::new(
            starling_xmpp::error::StreamErrorCondition::SystemShutdown,
        ));
    }
}

/// Seconds since the Unix epoch, for stored timestamps.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Microseconds since the Unix epoch, the unit of the stores' own timestamps.
pub fn unix_now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn start_modules(
    config: &Config,
    catalogue: &[Arc<dyn Module>],
) -> Result<HashMap<String, Arc<HostModules>>, ModuleError> {
    let mut hosts = HashMap::new();
    for host in &config.hosts {
        let listed = config.host_modules.get(host).unwrap_or(&config.modules);
        let mut started = HostModules::default();
        for module_config in listed {
            let Some(module) = catalogue
                .iter()
                .find(|m| m.spec().name == module_config.name)
            else {
                // The loader only lets through modules of the catalogue; others were warned about.
                continue;
            };
            let registrations = module.start(&HostContext { host }, &module_config.options)?;
            started.names.push(module.spec().name);
            started.registrations.extend(registrations);
        }
        hosts.insert(host.clone(), Arc::new(started));
    }
    Ok(hosts)
}
