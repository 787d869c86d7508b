//! Wiring of a Starling node: store, TLS, modules, listeners and the control socket.
//!
//! The `starling` binary is a thin shell over [`start`]; tests start nodes in-process through
//! the same function, on ephemeral ports, so what is tested is what ships.

#![forbid(unsafe_code)]

pub mod check;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use starling_c2s::ListenerSettings;
use starling_config::{Config, ListenerModule};
use starling_core::Server;
use starling_core::module::Module;
use starling_core::server::NodeState;
use starling_http::HttpContext;
use starling_listener::tls::Certificates;
use starling_metrics::Metrics;
use starling_storage_sql::SqlStore;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Most concurrent connections per listener (further ones wait in the kernel backlog).
const MAX_CONNECTIONS_PER_LISTENER: usize = 100_000;

/// A running node.
pub struct Node {
    /// The routing core.
    pub server: Arc<Server>,
    /// Bound client listeners, in config order: (address, direct TLS).
    pub c2s: Vec<(SocketAddr, bool)>,
    /// Bound HTTP listeners, in config order: (address, TLS).
    pub http: Vec<(SocketAddr, bool)>,
    /// The node's metric families (the cluster sets its link families through this).
    pub metrics: Arc<Metrics>,
    /// Bound s2s and component listeners, in config order.
    pub s2s: Vec<(SocketAddr, ListenerModule)>,
    /// The control socket path.
    pub control_socket: PathBuf,
    /// The cluster member, when `cluster` is configured.
    pub cluster: Option<starling_cluster::Cluster>,
    /// Closes the HTTP listeners once sessions have drained: until then `/health` answers
    /// `draining`, so load balancers see the node leave instead of a refused connection.
    http_stop: watch::Sender<bool>,
}

/// Opens the database `config.sql` names: PostgreSQL for `sql_type: pgsql`, else SQLite in
/// `data_dir/starling.db`; either way migrated before anything else starts.
async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn starling_storage::Stores>> {
    if config.sql.sql_type == starling_config::SqlType::Pgsql {
        let target = pg_target(&config.sql);
        let store = SqlStore::open_postgres(&target)
            .await
            .with_context(|| format!("cannot open PostgreSQL database {}", target.identity()))?;
        return Ok(Arc::new(store));
    }
    let db_path = config.data_dir.join("starling.db");
    let store = SqlStore::open_sqlite(&db_path)
        .await
        .with_context(|| format!("cannot open database {}", db_path.display()))?;
    Ok(Arc::new(store))
}

/// ejabberd's `sql_*` options resolved for PostgreSQL, with ejabberd's defaults for the
/// unset ones (port 5432, database `ejabberd`).
pub fn pg_target(sql: &starling_config::SqlConfig) -> starling_storage_sql::PgTarget {
    use starling_storage_sql::PgTarget;
    PgTarget {
        server: sql.server.clone(),
        port: sql.port.unwrap_or(PgTarget::DEFAULT_PORT),
        database: sql
            .database
            .clone()
            .unwrap_or_else(|| PgTarget::DEFAULT_DATABASE.to_owned()),
        username: sql.username.clone(),
        password: sql.password.clone(),
        pool_size: sql.pool_size,
    }
}

/// Opens the store, loads certificates, starts modules, listeners and the control socket.
/// Listeners on port 0 get an ephemeral port, reported in [`Node::c2s`].
pub async fn start(config: Config, catalogue: &[Arc<dyn Module>]) -> anyhow::Result<Node> {
    // rustls needs a process-wide provider for the pieces that do not take one explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let store = open_store(&config).await?;
    let certs = Certificates::load(&config.certfiles, &config.hosts, &data_dir)
        .context("cannot load TLS certificates")?;
    let tls = Arc::new(certs).server_config()?;
    let negotiation_timeout = config.negotiation_timeout;
    let listeners = config.listen.clone();
    let hosts = config.hosts.clone();
    let cluster_config = config.cluster.clone();
    let server = Server::new(config, store, catalogue)
        .map_err(|e| anyhow::anyhow!("cannot start modules: {e}"))?;
    let metrics = Arc::new(Metrics::with_storage(
        server.counters().clone(),
        server.stores().query_timings(),
    ));
    let cluster = match cluster_config {
        Some(c) => Some(start_cluster(&server, &c, &data_dir, &metrics).await?),
        None => None,
    };

    // In a cluster every node derives the dialback secret from the shared cookie, so a key one
    // node issued verifies on any other (DESIGN §7.4); alone, a random per-start secret.
    let dialback_secret = match &cluster {
        Some(_) => starling_cluster::cookie::Cookie::load_or_create(&data_dir.join("cookie"))
            .map(|c| starling_s2s::dialback::Secret::derive(c.as_bytes()))
            .context("cannot read the cluster cookie")?,
        None => starling_s2s::dialback::Secret::random(),
    };
    let s2s = start_s2s(&server, dialback_secret).context("cannot start the s2s manager")?;
    let mut s2s_addrs = Vec::new();
    let http_context = HttpContext::new(server.clone(), metrics.clone());
    let mut c2s = Vec::new();
    let mut http = Vec::new();
    let (http_stop, _) = watch::channel(false);
    for listener in &listeners {
        let addr = SocketAddr::new(listener.ip, listener.port);
        if listener.module == ListenerModule::Http {
            let socket = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let local = socket.local_addr()?;
            tracing::info!(addr = %local, tls = listener.tls, handlers = ?listener.request_handlers, "HTTP listener started");
            http.push((local, listener.tls));
            let mut stop = http_stop.subscribe();
            let shutdown = async move {
                // A dropped node (sender gone) stops the listener too.
                let _ = stop.wait_for(|stop| *stop).await;
            };
            let (ctx, listener, tls) = (http_context.clone(), listener.clone(), tls.clone());
            tokio::spawn(async move {
                let tls = listener.tls.then_some(tls);
                if let Err(e) = starling_http::serve(ctx, &listener, socket, tls, shutdown).await {
                    tracing::error!(%local, error = %e, "HTTP listener failed");
                }
            });
            continue;
        }
        if matches!(
            listener.module,
            ListenerModule::S2s | ListenerModule::Service
        ) {
            let socket = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let local = socket.local_addr()?;
            s2s_addrs.push((local, listener.module));
            if listener.module == ListenerModule::S2s {
                tracing::info!(addr = %local, direct_tls = listener.tls, "s2s listener started");
                let shaper = listener
                    .shaper
                    .as_deref()
                    .and_then(|name| server.config().shaper_rate(name));
                let (s2s, server, listener) = (s2s.clone(), server.clone(), listener.clone());
                tokio::spawn(async move {
                    s2s.serve(
                        server,
                        socket,
                        listener.tls,
                        listener.max_stanza_size,
                        listener.use_proxy_protocol,
                        shaper,
                    )
                    .await;
                });
            } else {
                tracing::info!(addr = %local, "component listener started");
                let settings = starling_s2s::component::ComponentSettings {
                    password: listener.password.clone(),
                    negotiation_timeout,
                    max_stanza_size: listener.max_stanza_size,
                    proxy_protocol: listener.use_proxy_protocol,
                };
                tokio::spawn(starling_s2s::component::serve(
                    server.clone(),
                    socket,
                    settings,
                ));
            }
            continue;
        }
        if listener.module != ListenerModule::C2s {
            tracing::warn!(%addr, module = ?listener.module, "listener module not supported yet; ignored");
            continue;
        }
        let socket = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = socket.local_addr()?;
        let settings = Arc::new(ListenerSettings {
            direct_tls: listener.tls,
            starttls: listener.starttls || listener.starttls_required,
            starttls_required: listener.starttls_required,
            plain_without_tls: listener.allow_plain_without_tls,
            max_stanza_size: listener.max_stanza_size,
            tls: Some(tls.clone()),
            negotiation_timeout,
            send_timeout: Duration::from_secs(15),
        });
        tracing::info!(addr = %local, direct_tls = listener.tls, starttls_required = listener.starttls_required, proxy_protocol = listener.use_proxy_protocol, "c2s listener started");
        // Behind a load balancer the PROXY header's address is the client's, for everything.
        let accept = starling_listener::accept::Accept::new(MAX_CONNECTIONS_PER_LISTENER)
            .with_proxy_protocol(listener.use_proxy_protocol);
        c2s.push((local, listener.tls));
        // Bans, connection limits and the shaper, checked once the client's address is known.
        let admission = Arc::new(starling_c2s::Admission {
            limits: starling_listener::limits::ConnLimits::new(
                starling_listener::limits::LimitSettings {
                    max_connections: listener.max_connections,
                    max_connections_per_ip: listener.max_connections_per_ip,
                    max_connections_rate_per_ip: listener
                        .max_connections_rate_per_ip
                        .map(f64::from),
                },
            ),
            shaper: listener
                .shaper
                .as_deref()
                .and_then(|name| server.config().shaper_rate(name)),
        });
        let server = server.clone();
        let mut state = server.state_changes();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = state.wait_for(|s| *s == NodeState::Stopping).await;
            };
            starling_listener::accept::serve_with(socket, accept, shutdown, move |tcp, peer| {
                starling_c2s::accept(
                    server.clone(),
                    settings.clone(),
                    admission.clone(),
                    tcp,
                    peer,
                )
            })
            .await;
        });
    }

    let control_socket = data_dir.join("starling.sock");
    {
        let server = server.clone();
        let path = control_socket.clone();
        tokio::spawn(async move {
            if let Err(e) = starling_commands::control::serve(server, &path).await {
                tracing::error!(path = %path.display(), error = %e, "control socket failed; starlingctl cannot reach this node");
            }
        });
    }
    http_context.set_ready();
    tracing::info!(hosts = ?hosts, data_dir = %data_dir.display(), "Starling started");
    Ok(Node {
        server,
        c2s,
        s2s: s2s_addrs,
        http,
        metrics,
        control_socket,
        cluster,
        http_stop,
    })
}

/// Joins the mesh: cookie at `data_dir/cookie` (created on first start), members from
/// `data_dir/members.json`, listener on `cluster.listen`.
async fn start_cluster(
    server: &Arc<Server>,
    config: &starling_config::ClusterConfig,
    data_dir: &std::path::Path,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<starling_cluster::Cluster> {
    let cookie = starling_cluster::cookie::Cookie::load_or_create(&data_dir.join("cookie"))
        .context("cannot read the cluster cookie")?;
    let settings = starling_cluster::ClusterSettings {
        node_name: config.node_name.clone(),
        listen: config.listen,
        data_dir: data_dir.to_owned(),
        cookie,
        metrics: Some(metrics.clone()),
        sql_discovery: config.discovery == starling_config::ClusterDiscovery::Sql,
    };
    starling_cluster::Cluster::start(server, settings)
        .await
        .context("cannot start clustering")
}

/// Builds the s2s manager from the `s2s_*` options and attaches it as the remote router.
fn start_s2s(
    server: &Arc<Server>,
    secret: starling_s2s::dialback::Secret,
) -> anyhow::Result<starling_s2s::S2s> {
    let config = server.config();
    let s2s_config = config.s2s.clone();
    let certfiles = match &s2s_config.certfile {
        Some(file) => vec![file.clone()],
        None => config.certfiles.clone(),
    };
    let certs = Certificates::load(&certfiles, &config.hosts, &config.data_dir)
        .context("cannot load s2s certificates")?;
    let trust = starling_s2s::tls::Trust::load(true, s2s_config.cafile.as_deref())?;
    let resolver: Arc<dyn starling_s2s::resolve::Resolver> =
        match starling_s2s::resolve::DnsResolver::system(s2s_config.dns_timeout) {
            Ok(r) => Arc::new(r),
            Err(e) => {
                tracing::warn!(error = %e, "no DNS resolver configuration; s2s uses static routes only");
                Arc::new(starling_s2s::resolve::NoDns)
            }
        };
    let settings = starling_s2s::S2sSettings {
        config: s2s_config,
        certs: Arc::new(certs),
        trust,
        secret,
        resolver,
        negotiation_timeout: config.negotiation_timeout,
    };
    let s2s = starling_s2s::S2s::new(settings, &config.hosts)?;
    s2s.attach(server);
    Ok(s2s)
}

impl Node {
    /// Waits until a stop is requested (by `starlingctl stop` or [`Node::stop`]) or `signal`
    /// resolves, then closes sessions and returns.
    pub async fn run_until(self, signal: impl Future<Output = ()>) {
        let mut state = self.server.state_changes();
        tokio::select! {
            _ = state.wait_for(|s| *s == NodeState::Stopping) => {
                tracing::info!("stop requested");
            }
            () = signal => {
                tracing::info!("signal received, stopping");
                self.server.begin_shutdown();
            }
        }
        self.drain().await;
    }

    /// Stops the node: listeners close, sessions get `<system-shutdown/>`.
    pub async fn stop(self) {
        self.server.begin_shutdown();
        self.drain().await;
    }

    async fn drain(self) {
        // Give sessions a moment to send `<system-shutdown/>` and their unavailable presence.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.server.sm().count_local() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.http_stop.send_replace(true);
        let _ = std::fs::remove_file(&self.control_socket);
        tracing::info!("Starling stopped");
    }
}
