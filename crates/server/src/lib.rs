//! Wiring of a Starling node: store, TLS, modules, listeners and the control socket.
//!
//! The `starling` binary is a thin shell over [`start`]; tests start nodes in-process through
//! the same function, on ephemeral ports, so what is tested is what ships.

#![forbid(unsafe_code)]

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
use starling_listener::tls::Certificates;
use starling_storage_sql::SqlStore;
use tokio::net::TcpListener;

/// Most concurrent connections per listener (further ones wait in the kernel backlog).
const MAX_CONNECTIONS_PER_LISTENER: usize = 100_000;

/// A running node.
pub struct Node {
    /// The routing core.
    pub server: Arc<Server>,
    /// Bound client listeners, in config order: (address, direct TLS).
    pub c2s: Vec<(SocketAddr, bool)>,
    /// The control socket path.
    pub control_socket: PathBuf,
}

/// Opens the store, loads certificates, starts modules, listeners and the control socket.
/// Listeners on port 0 get an ephemeral port, reported in [`Node::c2s`].
pub async fn start(config: Config, catalogue: &[Arc<dyn Module>]) -> anyhow::Result<Node> {
    // rustls needs a process-wide provider for the pieces that do not take one explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let db_path = data_dir.join("starling.db");
    let store = SqlStore::open_sqlite(&db_path)
        .await
        .with_context(|| format!("cannot open database {}", db_path.display()))?;
    let certs = Certificates::load(&config.certfiles, &config.hosts, &data_dir)
        .context("cannot load TLS certificates")?;
    let tls = Arc::new(certs).server_config()?;
    let negotiation_timeout = config.negotiation_timeout;
    let listeners = config.listen.clone();
    let hosts = config.hosts.clone();
    let server = Server::new(config, Arc::new(store), catalogue)
        .map_err(|e| anyhow::anyhow!("cannot start modules: {e}"))?;

    let mut c2s = Vec::new();
    for listener in &listeners {
        let addr = SocketAddr::new(listener.ip, listener.port);
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
        tracing::info!(addr = %local, direct_tls = listener.tls, starttls_required = listener.starttls_required, "c2s listener started");
        c2s.push((local, listener.tls));
        let server = server.clone();
        let mut state = server.state_changes();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = state.wait_for(|s| *s == NodeState::Stopping).await;
            };
            starling_listener::accept::serve(
                socket,
                MAX_CONNECTIONS_PER_LISTENER,
                shutdown,
                move |tcp, peer| starling_c2s::run(server.clone(), settings.clone(), tcp, peer),
            )
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
    tracing::info!(hosts = ?hosts, data_dir = %data_dir.display(), "Starling started");
    Ok(Node {
        server,
        c2s,
        control_socket,
    })
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
        while self.server.sm().count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = std::fs::remove_file(&self.control_socket);
        tracing::info!("Starling stopped");
    }
}
