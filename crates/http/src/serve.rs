//! Serving a router on a bound socket, over plain TCP or TLS (`tls: true` on the listener).
//!
//! axum serves anything implementing its `Listener` trait. For TLS we implement it over a
//! channel of finished handshakes: a separate accept loop spawns one task per connection for
//! the handshake (bounded by [`HANDSHAKE_TIMEOUT`]), so a slow or silent client never holds up
//! the others, as it would if `accept` itself awaited each handshake. The certificates are the
//! node's `Certificates` (SNI-selected, like c2s); only ALPN differs (`http/1.1`).
//!
//! With `use_proxy_protocol: true` the same per-connection task first reads the PROXY v1/v2
//! header (`starling_listener::proxy`), closing connections without one, and the address it
//! names becomes the connection's [`PeerAddr`]; plain listeners then go through the same
//! channel of prepared connections ([`ProxiedListener`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use starling_config::Listener;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::HttpContext;

/// Longest a client may take to finish the TLS handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Finished handshakes waiting for axum to pick them up.
const HANDSHAKE_QUEUE: usize = 64;

/// Serves `listener`'s handlers on `socket` until `shutdown` resolves; TLS when `tls` is given.
pub async fn serve(
    ctx: HttpContext,
    listener: &Listener,
    socket: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let app = crate::router(&ctx, listener).into_make_service_with_connect_info::<PeerAddr>();
    let proxy = listener
        .use_proxy_protocol
        .then_some(starling_listener::accept::PROXY_HEADER_TIMEOUT);
    match (tls, proxy) {
        (None, None) => {
            axum::serve(socket, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        (None, Some(deadline)) => {
            let proxied = ProxiedListener::spawn(socket, deadline)?;
            axum::serve(proxied, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        (Some(config), proxy) => {
            let mut config = (*config).clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let tls = TlsListener::spawn(socket, TlsAcceptor::from(Arc::new(config)), proxy)?;
            axum::serve(tls, app).with_graceful_shutdown(shutdown).await
        }
    }
}

/// The client's address, for handlers: `ConnectInfo<PeerAddr>` (plain and TLS alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, TcpListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, ProxiedListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, ProxiedListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// A plain listener behind a load balancer: yields connections whose PROXY header has been
/// read, with the client's address.
struct ProxiedListener {
    ready: mpsc::Receiver<(TcpStream, SocketAddr)>,
    local: SocketAddr,
}

impl ProxiedListener {
    fn spawn(socket: TcpListener, deadline: Duration) -> io::Result<Self> {
        let local = socket.local_addr()?;
        let (tx, ready) = mpsc::channel(HANDSHAKE_QUEUE);
        tokio::spawn(proxy_accept_loop(socket, deadline, tx));
        Ok(Self { ready, local })
    }
}

async fn proxy_accept_loop(
    socket: TcpListener,
    deadline: Duration,
    tx: mpsc::Sender<(TcpStream, SocketAddr)>,
) {
    loop {
        let accepted = tokio::select! {
            () = tx.closed() => return,
            a = socket.accept() => a,
        };
        match accepted {
            Ok((mut tcp, peer)) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let proxied =
                        starling_listener::accept::proxied_peer(&mut tcp, peer, deadline).await;
                    if let Some(client) = proxied {
                        let _ = tx.send((tcp, client)).await;
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl axum::serve::Listener for ProxiedListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// A listener yielding connections whose TLS handshake is complete.
struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// `proxy`: read a PROXY header (within this deadline) before the TLS handshake.
    fn spawn(
        socket: TcpListener,
        acceptor: TlsAcceptor,
        proxy: Option<Duration>,
    ) -> io::Result<Self> {
        let local = socket.local_addr()?;
        let (tx, ready) = mpsc::channel(HANDSHAKE_QUEUE);
        tokio::spawn(accept_loop(socket, acceptor, proxy, tx));
        Ok(Self { ready, local })
    }
}

async fn accept_loop(
    socket: TcpListener,
    acceptor: TlsAcceptor,
    proxy: Option<Duration>,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let accepted = tokio::select! {
            // axum stopped serving (shutdown): stop accepting.
            () = tx.closed() => return,
            a = socket.accept() => a,
        };
        match accepted {
            Ok((mut tcp, peer)) => {
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let peer = match proxy {
                        None => peer,
                        Some(deadline) => {
                            match starling_listener::accept::proxied_peer(&mut tcp, peer, deadline)
                                .await
                            {
                                Some(client) => client,
                                None => return,
                            }
                        }
                    };
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "HTTPS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "HTTPS handshake timed out"),
                    }
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning (STYLE.md item 4).
                tracing::warn!(error = %e, "HTTPS accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop only ends once serving has stopped; nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
