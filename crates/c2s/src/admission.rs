//! Admission of a client connection, before any byte is read: the ban table (`mod_fail2ban`,
//! `starling_core::ban`) and the listener's connection limits (`starling_listener::limits`),
//! then the session itself, shaped if the listener names a shaper.
//!
//! This runs in the accept handler, so it sees the client's address after the PROXY header
//! (if any) was read, and before TLS. A refused client gets a stream header and a
//! `<policy-violation/>` stream error with a text (RFC 6120 §4.9.1.1: an error before the
//! client's header is sent after our own header), over TLS on direct-TLS listeners, then the
//! connection is closed; each refusal is logged with the address and counted
//! (`starling_connections_refused_total{reason}`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use starling_core::Server;
use starling_core::ban::Refusal;
use starling_listener::limits::{ConnLimits, Refused};
use starling_listener::shaper::Shaper;
use starling_xmpp::codec::{self, STREAM_CLOSE, StreamHeader};
use starling_xmpp::error::{StreamError, StreamErrorCondition};
use starling_xmpp::ns;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::session::{ListenerSettings, run_shaped};

/// Time allowed to tell a refused client why (TLS handshake included).
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// What a c2s listener checks at accept, beyond [`ListenerSettings`].
#[derive(Debug)]
pub struct Admission {
    /// The listener's connection limits.
    pub limits: Arc<ConnLimits>,
    /// Read rate of each connection in bytes per second (`shaper`), if shaped.
    pub shaper: Option<u64>,
}

/// Checks the ban table and the limits for `peer`, then serves the connection (holding its
/// slot until it ends) or refuses it.
pub async fn accept(
    server: Arc<Server>,
    settings: Arc<ListenerSettings>,
    admission: Arc<Admission>,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    if let Some(ban) = server.banned(peer.ip()) {
        server.counters().abuse().refused(Refusal::Banned);
        tracing::info!(%peer, failures = ban.failures, remaining_s = ban.remaining.as_secs(), "connection refused: address banned");
        refuse(&settings, tcp, &ban.refusal_text()).await;
        return;
    }
    let guard = match admission.limits.admit(peer.ip()) {
        Ok(guard) => guard,
        Err(why) => {
            server.counters().abuse().refused(refusal_reason(why));
            tracing::info!(%peer, reason = why.text(), "connection refused: limit reached");
            refuse(&settings, tcp, why.text()).await;
            return;
        }
    };
    let shaper = admission
        .shaper
        .map(|rate| Shaper::new(rate, std::time::Instant::now()));
    run_shaped(server, settings, tcp, peer, shaper).await;
    drop(guard);
}

/// The metrics label of a limit refusal.
fn refusal_reason(why: Refused) -> Refusal {
    match why {
        Refused::MaxConnections => Refusal::MaxConnections,
        Refused::PerIp => Refusal::PerIp,
        Refused::Rate => Refusal::Rate,
    }
}

/// The bytes a refused client gets: our stream header, the error, the close tag.
fn refusal_bytes(text: &str) -> Vec<u8> {
    let header = StreamHeader {
        id: Some(format!("{:032x}", rand::random::<u128>())),
        ..StreamHeader::default()
    };
    let error = StreamError::new(StreamErrorCondition::PolicyViolation).with_text(text);
    let mut out = codec::stream_header(ns::CLIENT, &header);
    out.push_str(&error.to_xml());
    out.push_str(STREAM_CLOSE);
    out.into_bytes()
}

/// Tells a refused client why and closes, over TLS on a direct-TLS listener.
async fn refuse(settings: &ListenerSettings, tcp: TcpStream, text: &str) {
    let bytes = refusal_bytes(text);
    let _ = timeout(REFUSAL_TIMEOUT, async {
        if settings.direct_tls {
            let Some(tls) = settings.tls.clone() else {
                return;
            };
            if let Ok(mut stream) = tokio_rustls::TlsAcceptor::from(tls).accept(tcp).await {
                write_and_close(&mut stream, &bytes).await;
            }
        } else {
            let mut tcp = tcp;
            write_and_close(&mut tcp, &bytes).await;
        }
    })
    .await;
}

async fn write_and_close<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) {
    if stream.write_all(bytes).await.is_ok() {
        let _ = stream.flush().await;
    }
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_is_a_header_and_a_policy_violation() {
        let text = String::from_utf8(refusal_bytes("too many connections")).unwrap();
        assert!(text.starts_with("<?xml"), "{text}");
        assert!(text.contains("<stream:stream"), "{text}");
        assert!(text.contains("<policy-violation"), "{text}");
        assert!(text.contains("too many connections"), "{text}");
        assert!(text.ends_with(STREAM_CLOSE), "{text}");
    }

    #[test]
    fn refusals_map_to_metric_reasons() {
        assert_eq!(refusal_reason(Refused::PerIp), Refusal::PerIp);
        assert_eq!(refusal_reason(Refused::Rate), Refusal::Rate);
        assert_eq!(
            refusal_reason(Refused::MaxConnections),
            Refusal::MaxConnections
        );
    }
}
