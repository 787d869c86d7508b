//! One XML stream over a socket: the transport (plain, or TLS as either side), the sans-I/O
//! parser, and read/write with deadlines. Upgrading to TLS consumes the plain transport and
//! resets the parser (RFC 6120 §5.4.3.3), so nothing sent in the clear is acted on afterwards.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::{CertificateDer, ServerName};
use starling_xmpp::codec::{Limits, StreamEvent, StreamParser};
use starling_xmpp::error::{StreamError, StreamErrorCondition};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The byte stream.
pub(crate) enum Transport {
    /// No TLS.
    Plain(TcpStream),
    /// We accepted TLS.
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// We initiated TLS.
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Transport {
    pub(crate) fn is_secure(&self) -> bool {
        !matches!(self, Self::Plain(_))
    }

    /// The peer's certificate chain, end entity first (empty without TLS or certificate).
    pub(crate) fn peer_chain(&self) -> Vec<CertificateDer<'static>> {
        let certs = match self {
            Self::Plain(_) => None,
            Self::Server(tls) => tls.get_ref().1.peer_certificates(),
            Self::Client(tls) => tls.get_ref().1.peer_certificates(),
        };
        certs
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default()
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
            Self::Server(s) => Pin::new(s).poll_read(cx, buf),
            Self::Client(s) => Pin::new(s).poll_read(cx, buf),
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
            Self::Server(s) => Pin::new(s).poll_write(cx, buf),
            Self::Client(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Server(s) => Pin::new(s).poll_flush(cx),
            Self::Client(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Server(s) => Pin::new(s).poll_shutdown(cx),
            Self::Client(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamFailure {
    /// Socket error or EOF.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// A deadline passed.
    #[error("timed out")]
    Timeout,
    /// The peer violated the protocol (we send this stream error).
    #[error("{0}")]
    Protocol(StreamError),
    /// The peer sent a stream error or closed its stream.
    #[error("closed by peer{}", .0.as_deref().map(|c| format!(": {c}")).unwrap_or_default())]
    Closed(Option<String>),
}

/// An XML stream with its parser.
pub(crate) struct XmlStream {
    io: Option<Transport>,
    parser: StreamParser,
    buf: Box<[u8; 4096]>,
    write_timeout: Duration,
    /// The listener's traffic shaper (`shaper` on the s2s listener): reads pause over its rate.
    shaper: Option<starling_listener::shaper::Shaper>,
}

impl XmlStream {
    pub(crate) fn new(io: Transport, content_ns: &'static str, limits: Limits) -> Self {
        Self {
            io: Some(io),
            parser: StreamParser::new(content_ns, limits),
            buf: Box::new([0; 4096]),
            write_timeout: Duration::from_secs(15),
            shaper: None,
        }
    }

    /// Paces reads to `rate` bytes per second (TCP pushes back on the peer).
    pub(crate) fn set_shaper(&mut self, rate: u64) {
        self.shaper = Some(starling_listener::shaper::Shaper::new(
            rate,
            std::time::Instant::now(),
        ));
    }

    pub(crate) fn transport(&self) -> Option<&Transport> {
        self.io.as_ref()
    }

    pub(crate) fn is_secure(&self) -> bool {
        self.io.as_ref().is_some_and(Transport::is_secure)
    }

    pub(crate) fn set_limits(&mut self, limits: Limits) {
        self.parser.set_limits(limits);
    }

    fn io(&mut self) -> io::Result<&mut Transport> {
        self.io
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "transport lost"))
    }

    /// Writes bytes, bounded by the write timeout.
    pub(crate) async fn send(&mut self, bytes: &[u8]) -> Result<(), StreamFailure> {
        let timeout = self.write_timeout;
        let io = self.io()?;
        match tokio::time::timeout(timeout, async {
            io.write_all(bytes).await?;
            io.flush().await
        })
        .await
        {
            Ok(r) => Ok(r?),
            Err(_) => Err(StreamFailure::Timeout),
        }
    }

    /// The next stream event, waiting at most until `deadline`. Stream errors from the peer
    /// come back as [`StreamFailure::Closed`].
    pub(crate) async fn next(&mut self, deadline: Instant) -> Result<StreamEvent, StreamFailure> {
        loop {
            match self.parser.next_event() {
                Ok(Some(StreamEvent::Stanza(el)))
                    if el.name() == "error" && el.ns() == starling_xmpp::ns::STREAM =>
                {
                    let condition = el.children().next().map(|c| c.name().to_owned());
                    return Err(StreamFailure::Closed(condition));
                }
                Ok(Some(event)) => return Ok(event),
                Ok(None) => {}
                Err(e) => return Err(StreamFailure::Protocol(e)),
            }
            if let Some(shaper) = self.shaper.as_ref()
                && tokio::time::timeout_at(deadline, shaper.ready())
                    .await
                    .is_err()
            {
                return Err(StreamFailure::Timeout);
            }
            let (io, buf) = match self.io.as_mut() {
                Some(io) => (io, &mut self.buf),
                None => return Err(StreamFailure::Io(io::ErrorKind::NotConnected.into())),
            };
            let n = match tokio::time::timeout_at(deadline, io.read(&mut buf[..])).await {
                Ok(r) => r?,
                Err(_) => return Err(StreamFailure::Timeout),
            };
            if n == 0 {
                return Err(StreamFailure::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            if let Some(shaper) = self.shaper.as_mut() {
                shaper.record(n);
            }
            self.parser.feed(buf.get(..n).unwrap_or_default());
        }
    }

    /// Accepts TLS on the plain socket (after `<proceed/>`), resetting the parser.
    pub(crate) async fn accept_tls(
        &mut self,
        config: Arc<rustls::ServerConfig>,
        deadline: Instant,
    ) -> Result<(), StreamFailure> {
        let Some(Transport::Plain(tcp)) = self.io.take() else {
            return Err(StreamFailure::Protocol(
                StreamError::new(StreamErrorCondition::PolicyViolation)
                    .with_text("already encrypted"),
            ));
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tls = tokio::time::timeout_at(deadline, acceptor.accept(tcp))
            .await
            .map_err(|_| StreamFailure::Timeout)??;
        self.io = Some(Transport::Server(Box::new(tls)));
        self.parser.reset();
        Ok(())
    }

    /// Starts TLS as the client (after receiving `<proceed/>`), resetting the parser.
    pub(crate) async fn connect_tls(
        &mut self,
        config: Arc<rustls::ClientConfig>,
        domain: &str,
        deadline: Instant,
    ) -> Result<(), StreamFailure> {
        let Some(Transport::Plain(tcp)) = self.io.take() else {
            return Err(StreamFailure::Io(io::Error::other("already encrypted")));
        };
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| StreamFailure::Io(io::Error::other(e)))?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = tokio::time::timeout_at(deadline, connector.connect(name, tcp))
            .await
            .map_err(|_| StreamFailure::Timeout)??;
        self.io = Some(Transport::Client(Box::new(tls)));
        self.parser.reset();
        Ok(())
    }

    /// Restarts the stream after SASL success (RFC 6120 §6.4.6).
    pub(crate) fn restart(&mut self) {
        self.parser.reset();
    }

    /// Sends a stream error and closes our side; errors are ignored (the stream is over).
    pub(crate) async fn fail(&mut self, error: &StreamError) {
        let mut out = error.to_xml();
        out.push_str(starling_xmpp::codec::STREAM_CLOSE);
        let _ = self.send(out.as_bytes()).await;
        self.shutdown().await;
    }

    /// Closes our side of the stream and the socket.
    pub(crate) async fn close(&mut self) {
        let _ = self
            .send(starling_xmpp::codec::STREAM_CLOSE.as_bytes())
            .await;
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(io) = self.io.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(2), io.shutdown()).await;
        }
    }
}
