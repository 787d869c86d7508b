//! The accept loop (mini-redis `Listener::run` shape): a semaphore caps concurrent connections,
//! and accept errors (EMFILE, ENFILE, ECONNABORTED) back off instead of spinning, a failure mode
//! Stalwart's changelog records for its own accept loop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Accepts connections on `listener` until `shutdown` resolves, running `handler` for each in
/// its own task. At most `max_connections` run at once; further clients wait in the kernel's
/// backlog, which pushes back on floods without costing memory here.
pub async fn serve<H, F>(
    listener: TcpListener,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
    handler: H,
) where
    H: Fn(TcpStream, SocketAddr) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(max_connections.max(1)));
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
                // Boxed: awaiting a future captured by an async block stores it twice in the
                // block's state (capture and await slot), doubling every connection's task.
                let task = Box::pin(handler(socket, peer));
                tokio::spawn(async move {
                    task.await;
                    drop(permit);
                });
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
