//! The accept loop (mini-redis `Listener::run` shape): a semaphore caps concurrent connections,
//! and accept errors (EMFILE, ENFILE, ECONNABORTED) back off instead of spinning, a failure mode
//! Stalwart's changelog records for its own accept loop.
//!
//! Behind a load balancer ([`Accept::proxy_protocol`]), each connection must start with a
//! PROXY v1/v2 header ([`crate::proxy`]); the address it names replaces the socket's peer
//! address for everything downstream (logs, per-IP limits, bans). A connection without a valid
//! header is closed before the handler runs.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::proxy;

/// Longest a balancer may take to send the PROXY header after connecting; it sends the
/// header at once, so only a misdirected client or an attacker ever waits this long.
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// How a listener accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accept {
    /// Most connections handled at once; further clients wait in the kernel's backlog.
    pub max_connections: usize,
    /// `Some(deadline)`: every connection starts with a PROXY header, read within `deadline`
    /// (`use_proxy_protocol: true`).
    pub proxy_protocol: Option<Duration>,
}

impl Accept {
    /// Direct connections (no PROXY header), at most `max_connections` at once.
    pub fn new(max_connections: usize) -> Self {
        Self {
            max_connections,
            proxy_protocol: None,
        }
    }

    /// Expects a PROXY header on every connection when `enabled`, with
    /// [`PROXY_HEADER_TIMEOUT`].
    #[must_use]
    pub fn with_proxy_protocol(mut self, enabled: bool) -> Self {
        self.proxy_protocol = enabled.then_some(PROXY_HEADER_TIMEOUT);
        self
    }
}

/// Accepts connections on `listener` until `shutdown` resolves, running `handler` for each in
/// its own task. At most `max_connections` run at once; further clients wait in the kernel's
/// backlog, which pushes back on floods without costing memory here.
pub async fn serve<H, F>(
    listener: TcpListener,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
    handler: H,
) where
    H: Fn(TcpStream, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    serve_with(listener, Accept::new(max_connections), shutdown, handler).await;
}

/// [`serve`] with the options of `accept`: with the PROXY protocol on, the handler receives
/// the client's address from the header, and runs only once a valid header was read.
pub async fn serve_with<H, F>(
    listener: TcpListener,
    accept: Accept,
    shutdown: impl Future<Output = ()>,
    handler: H,
) where
    H: Fn(TcpStream, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(accept.max_connections.max(1)));
    let handler = Arc::new(handler);
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => return,
            permit = limit.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, peer)) => {
                backoff = Duration::from_millis(5);
                // Small writes (stanzas) must not wait for Nagle.
                let _ = socket.set_nodelay(true);
                match accept.proxy_protocol {
                    None => {
                        // Boxed: awaiting a future captured by an async block stores it twice
                        // in the block's state (capture and await slot), doubling every
                        // connection's task.
                        let task = Box::pin(handler(socket, peer));
                        tokio::spawn(async move {
                            task.await;
                            drop(permit);
                        });
                    }
                    // The header is read in the connection's task, so a slow or silent
                    // client never holds up the accept loop.
                    Some(deadline) => {
                        let handler = handler.clone();
                        tokio::spawn(async move {
                            let mut socket = socket;
                            if let Some(client) = proxied_peer(&mut socket, peer, deadline).await {
                                let task = Box::pin(handler(socket, client));
                                task.await;
                            }
                            drop(permit);
                        });
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed, backing off {:?}", backoff);
                drop(permit);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Reads the PROXY header of a connection from `peer` (the balancer): the client's address,
/// `peer` itself when the header names none (the balancer's own health checks), or `None` when
/// the connection must be closed (the reason is logged).
pub async fn proxied_peer(
    socket: &mut TcpStream,
    peer: SocketAddr,
    deadline: Duration,
) -> Option<SocketAddr> {
    match proxy::read_header(socket, deadline).await {
        Ok(source) => {
            let client = source.unwrap_or(peer);
            tracing::debug!(proxy = %peer, %client, "PROXY header read");
            Some(client)
        }
        Err(e) => {
            tracing::info!(%peer, reason = %e, "connection closed: PROXY protocol header expected");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::mpsc;

    use super::*;

    /// A listener whose handler reports each connection's address and first 5 bytes.
    async fn start(accept: Accept) -> (SocketAddr, mpsc::Receiver<(SocketAddr, [u8; 5])>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(serve_with(
            listener,
            accept,
            std::future::pending(),
            move |mut tcp: TcpStream, peer| {
                let tx = tx.clone();
                async move {
                    let mut first = [0u8; 5];
                    if tcp.read_exact(&mut first).await.is_ok() {
                        let _ = tx.send((peer, first)).await;
                    }
                }
            },
        ));
        (addr, rx)
    }

    async fn next(rx: &mut mpsc::Receiver<(SocketAddr, [u8; 5])>) -> (SocketAddr, [u8; 5]) {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn without_proxy_protocol_the_socket_peer_is_used() {
        let (addr, mut rx) = start(Accept::new(10)).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        let (peer, first) = next(&mut rx).await;
        assert_eq!(peer, c.local_addr().unwrap());
        assert_eq!(&first, b"hello");
    }

    #[tokio::test]
    async fn proxy_header_replaces_the_peer_and_is_stripped() {
        let (addr, mut rx) = start(Accept::new(10).with_proxy_protocol(true)).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 5222\r\nhello")
            .await
            .unwrap();
        assert_eq!(
            next(&mut rx).await,
            ("192.0.2.7:40000".parse().unwrap(), *b"hello")
        );

        // UNKNOWN (and v2 LOCAL) keep the balancer's address.
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"PROXY UNKNOWN\r\nhello").await.unwrap();
        assert_eq!(next(&mut rx).await, (c.local_addr().unwrap(), *b"hello"));
    }

    #[tokio::test]
    async fn a_connection_without_header_is_closed() {
        let (addr, mut rx) = start(Accept::new(10).with_proxy_protocol(true)).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"<?xml version='1.0'?><stream:stream>")
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without a reply");
        assert!(rx.try_recv().is_err(), "the handler never ran");
    }
}
