//! Serving a router on a bound socket, over plain TCP or TLS (`tls: true` on the listener).
//!
//! axum serves anything implementing its `Listener` trait. For TLS we implement it over a
//! channel of finished handshakes: a separate accept loop spawns one task per connection for
//! the handshake (bounded by [`HANDSHAKE_TIMEOUT`]), so a slow or silent client never holds up
//! the others, as it would if `accept` itself awaited each handshake. The certificates are the
//! node's `Certificates` (SNI-selected, like c2s); only ALPN differs (`http/1.1`).

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
    match tls {
        None => {
            axum::serve(socket, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(config) => {
            let mut config = (*config).clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let tls = TlsListener::spawn(socket, TlsAcceptor::from(Arc::new(config)))?;
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

/// A listener yielding connections whose TLS handshake is complete.
struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    fn spawn(socket: TcpListener, acceptor: TlsAcceptor) -> io::Result<Self> {
        let local = socket.local_addr()?;
        let (tx, ready) = mpsc::channel(HANDSHAKE_QUEUE);
        tokio::spawn(accept_loop(socket, acceptor, tx));
        Ok(Self { ready, local })
    }
}

async fn accept_loop(
    socket: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let accepted = tokio::select! {
            // axum stopped serving (shutdown): stop accepting.
            () = tx.closed() => return,
            a = socket.accept() => a,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
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
