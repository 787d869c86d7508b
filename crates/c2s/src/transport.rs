//! The byte stream under a session: plain TCP before STARTTLS, TLS after it (or from the
//! start, for direct TLS). Upgrading consumes the plain variant, so a STARTTLS'd session can no
//! longer reach the plain socket. WebSocket and BOSH sessions have no byte stream of their own:
//! their frames come and go over a [`FramedLink`], which the session reads and writes element by
//! element (it never goes through the `AsyncRead`/`AsyncWrite` impls below).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::framed::FramedLink;

fn not_a_byte_stream() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "framed transport: use the frame channels",
    )
}

/// A client connection's byte stream.
pub enum Transport {
    /// Before STARTTLS.
    Plain(TcpStream),
    /// After STARTTLS or direct TLS.
    Tls(Box<TlsStream<TcpStream>>),
    /// WebSocket or BOSH, through an HTTP bridge.
    Framed(Box<FramedLink>),
}

impl Transport {
    /// True once encrypted.
    pub fn is_secure(&self) -> bool {
        match self {
            Self::Plain(_) => false,
            Self::Tls(_) => true,
            Self::Framed(link) => link.is_secure(),
        }
    }

    /// The framed link, for WebSocket and BOSH sessions.
    pub fn framed(&mut self) -> Option<&mut FramedLink> {
        match self {
            Self::Framed(link) => Some(link),
            _ => None,
        }
    }

    /// Runs the TLS handshake over the plain socket (STARTTLS or direct TLS).
    pub async fn upgrade(self, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        match self {
            Self::Plain(tcp) => {
                let tls = TlsAcceptor::from(config).accept(tcp).await?;
                Ok(Self::Tls(Box::new(tls)))
            }
            Self::Tls(_) => Err(io::Error::other("stream is already encrypted")),
            Self::Framed(_) => Err(io::Error::other("framed transports have no STARTTLS")),
        }
    }

    /// RFC 9266 `tls-exporter` channel-binding data, offered only on TLS 1.3 where it is
    /// defined without further conditions.
    pub fn tls_exporter(&self) -> Option<Vec<u8>> {
        let Self::Tls(tls) = self else {
            return None;
        };
        let (_, conn) = tls.get_ref();
        if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
            return None;
        }
        let mut out = [0u8; 32];
        conn.export_keying_material(&mut out, b"EXPORTER-Channel-Binding", None)
            .ok()?;
        Some(out.to_vec())
    }

    /// Waits until the socket has bytes to read, without holding a read buffer meanwhile.
    /// For TLS this is the socket under the TLS layer: callers must first drain what the TLS
    /// layer already decrypted (a read that filled its buffer may have left more).
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Self::Plain(tcp) => tcp.readable().await,
            Self::Tls(tls) => tls.get_ref().0.readable().await,
            Self::Framed(_) => Ok(()),
        }
    }

    /// The TLS server name the client asked for (SNI), if any.
    pub fn sni(&self) -> Option<String> {
        match self {
            Self::Tls(tls) => tls.get_ref().1.server_name().map(str::to_owned),
            Self::Plain(_) | Self::Framed(_) => None,
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Self::Framed(_) => Poll::Ready(Err(not_a_byte_stream())),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Self::Framed(_) => Poll::Ready(Err(not_a_byte_stream())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s).poll_flush(cx),
            Self::Framed(_) => Poll::Ready(Err(not_a_byte_stream())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
            // Closing is the `FrameOut::Close` the session sends; nothing more to do.
            Self::Framed(_) => Poll::Ready(Ok(())),
        }
    }
}
