//! Client side of XMPP stream negotiation for the load tool (RFC 6120 §4–§7, XEP-0077 §3.1,
//! XEP-0368 direct TLS).
//!
//! Owns the steps a benchmark connection goes through: TCP connect, STARTTLS (or direct TLS),
//! SASL PLAIN (RFC 4616) or in-band registration, resource binding and initial presence. The
//! certificate is not checked (the servers under test use throw-away self-signed certificates on
//! loopback) but handshake signatures are, so the TLS work matches a real client's.

use std::{sync::Arc, time::Duration};

use anyhow::{Result, anyhow, bail};
use base64::Engine as _;
use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use crate::scan::{Frame, Scanner, attr, child_text, element_name};

/// Largest element the load tool buffers; stanzas in this benchmark are a few hundred bytes.
const MAX_ELEMENT: usize = 256 * 1024;
/// Socket read size: small, because thousands of connections each own one.
pub(crate) const READ_CHUNK: usize = 4096;

/// How TLS is established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum TlsMode {
    /// `<starttls/>` on the plain c2s port (RFC 6120 §5).
    Starttls,
    /// TLS from the first byte (XEP-0368).
    Direct,
}

/// Where and as whom to connect.
#[derive(Clone)]
pub(crate) struct Target {
    /// Socket address of the server's c2s listener.
    pub(crate) addr: std::net::SocketAddr,
    /// XMPP domain served (the `to` of the stream header and TLS SNI).
    pub(crate) domain: String,
    /// STARTTLS or direct TLS.
    pub(crate) tls: TlsMode,
    /// Shared TLS client configuration.
    pub(crate) connector: TlsConnector,
}

/// An XML stream over some byte transport, with its framing state.
pub(crate) struct XmlStream<S> {
    /// The transport; read directly by the session loop after login.
    pub(crate) io: S,
    /// Framing state of the bytes read so far.
    pub(crate) scanner: Scanner,
    buf: Box<[u8]>,
}

/// An established, bound client session.
pub(crate) type Session = XmlStream<TlsStream<TcpStream>>;

/// What in-band registration found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Registered {
    /// The account was created.
    Created,
    /// The account already existed (`<conflict/>`), which is fine for a re-run.
    Existed,
}

impl<S: AsyncRead + AsyncWrite + Unpin> XmlStream<S> {
    fn new(io: S) -> Self {
        Self {
            io,
            scanner: Scanner::new(MAX_ELEMENT),
            buf: vec![0; READ_CHUNK].into_boxed_slice(),
        }
    }

    /// Writes and flushes `data`.
    pub(crate) async fn send(&mut self, data: &str) -> Result<()> {
        self.io.write_all(data.as_bytes()).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Reads until one frame is complete.
    pub(crate) async fn next_frame(&mut self) -> Result<Frame> {
        loop {
            if let Some(frame) = self.scanner.next_frame()? {
                return Ok(frame);
            }
            let n = self.io.read(&mut self.buf).await?;
            if n == 0 {
                bail!("server closed the connection");
            }
            self.scanner.feed(self.buf.get(..n).unwrap_or_default())?;
        }
    }

    /// Reads the next depth-1 element, failing on stream errors or end of stream.
    async fn next_element(&mut self) -> Result<String> {
        loop {
            match self.next_frame().await? {
                Frame::StreamOpen(_) => {}
                Frame::StreamClose => bail!("server closed the stream"),
                Frame::Element(e)
                    if element_name(&e).ends_with("error") && e.contains("streams") =>
                {
                    bail!("stream error: {e}")
                }
                Frame::Element(e) => return Ok(e),
            }
        }
    }

    /// Opens a stream (RFC 6120 §4.7) and returns the `<stream:features/>` element.
    async fn open(&mut self, domain: &str) -> Result<String> {
        self.scanner.reset();
        self.send(&stream_header(domain)).await?;
        loop {
            let e = self.next_element().await?;
            if element_name(&e).ends_with("features") {
                return Ok(e);
            }
        }
    }

    /// Reads elements until an `<iq/>` with the given id arrives.
    async fn iq_reply(&mut self, id: &str) -> Result<String> {
        loop {
            let e = self.next_element().await?;
            if element_name(&e) == "iq" && attr(&e, "id") == Some(id) {
                return Ok(e);
            }
        }
    }
}

/// Builds the shared TLS client configuration (ring provider, any certificate accepted).
pub(crate) fn tls_connector() -> Result<TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { provider }))
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Connects and negotiates TLS, returning the secured stream and its features.
async fn secure(target: &Target) -> Result<(XmlStream<TlsStream<TcpStream>>, String)> {
    let tcp = TcpStream::connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    let server_name = ServerName::try_from(target.domain.clone())?;
    let tcp = match target.tls {
        TlsMode::Direct => tcp,
        TlsMode::Starttls => {
            let mut plain = XmlStream::new(tcp);
            let features = plain.open(&target.domain).await?;
            if !features.contains("urn:ietf:params:xml:ns:xmpp-tls") {
                bail!("server does not offer STARTTLS: {features}");
            }
            plain
                .send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                .await?;
            let reply = plain.next_element().await?;
            if element_name(&reply) != "proceed" {
                bail!("STARTTLS refused: {reply}");
            }
            if plain.scanner.has_pending() {
                // Bytes after <proceed/> would be plaintext injected before the handshake.
                bail!("unexpected data after <proceed/>");
            }
            plain.io
        }
    };
    let tls = target.connector.connect(server_name, tcp).await?;
    let mut stream = XmlStream::new(tls);
    let features = stream.open(&target.domain).await?;
    Ok((stream, features))
}

/// Logs in with SASL PLAIN, binds `resource` and sends initial presence (RFC 6120 §6–§7,
/// RFC 6121 §4.2).
pub(crate) async fn login(
    target: &Target,
    user: &str,
    password: &str,
    resource: &str,
) -> Result<Session> {
    let (mut stream, features) = secure(target).await?;
    if !features.contains(">PLAIN<") {
        bail!("server does not offer SASL PLAIN: {features}");
    }
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    stream
        .send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{credentials}</auth>"
        ))
        .await?;
    let outcome = stream.next_element().await?;
    if element_name(&outcome) != "success" {
        bail!("authentication failed for {user}: {outcome}");
    }
    let features = stream.open(&target.domain).await?;
    if !features.contains("urn:ietf:params:xml:ns:xmpp-bind") {
        bail!("server does not offer resource binding: {features}");
    }
    stream
        .send(&format!(
            "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>{resource}</resource></bind></iq>"
        ))
        .await?;
    let bound = stream.iq_reply("bind1").await?;
    if attr(&bound, "type") != Some("result") {
        bail!("bind failed for {user}: {bound}");
    }
    if child_text(&bound, "jid").is_none() {
        bail!("bind result without a jid: {bound}");
    }
    stream.send("<presence/>").await?;
    Ok(stream)
}

/// Creates the account with XEP-0077 in-band registration, then closes the stream.
pub(crate) async fn register(target: &Target, user: &str, password: &str) -> Result<Registered> {
    let (mut stream, _features) = secure(target).await?;
    stream
        .send(&format!(
            "<iq type='set' id='reg1'><query xmlns='jabber:iq:register'>\
             <username>{user}</username><password>{password}</password></query></iq>"
        ))
        .await?;
    let reply = stream.iq_reply("reg1").await?;
    let outcome = match attr(&reply, "type") {
        Some("result") => Registered::Created,
        Some("error") if reply.contains("<conflict") => Registered::Existed,
        _ => return Err(anyhow!("registration of {user} failed: {reply}")),
    };
    // Best effort: the account exists whatever happens to the goodbye.
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.send("</stream:stream>")).await;
    Ok(outcome)
}

/// The opening tag of a client stream to `domain`.
fn stream_header(domain: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
    )
}

/// A chat message whose body carries the run id, sequence number and send time.
pub(crate) fn chat_message(to: &str, body: &str) -> String {
    format!("<message to='{to}' type='chat'><body>{body}</body></message>")
}

/// Accepts any certificate but still checks the handshake signature with the provider's
/// algorithms, so the server's private-key work is the same as with a verifying client.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    #[test]
    fn header_and_message_shapes() {
        let h = stream_header("bench.test");
        assert!(h.contains("to='bench.test'"));
        assert!(h.ends_with("version='1.0'>"));
        let m = chat_message("bench1@bench.test/b", "sb 1 2 3");
        assert_eq!(attr(&m, "to"), Some("bench1@bench.test/b"));
        assert_eq!(child_text(&m, "body"), Some("sb 1 2 3"));
    }

    #[test]
    fn builds_a_connector() {
        assert!(tls_connector().is_ok());
    }

    /// Plays the server side of a negotiation over an in-memory pipe, split at odd places.
    #[tokio::test]
    async fn open_and_iq_reply_over_a_pipe() {
        let (client, mut server) = duplex(1024);
        let mut stream = XmlStream::new(client);
        let server_side = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let mut seen = Vec::new();
            while !String::from_utf8_lossy(&seen).contains("version='1.0'>") {
                let n = server.read(&mut buf).await.unwrap();
                seen.extend_from_slice(&buf[..n]);
            }
            for chunk in [
                "<?xml version='1.0'?><stream:stream xmlns='jabber:client' ",
                "xmlns:stream='http://etherx.jabber.org/streams' version='1.0' id='1'>",
                "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>",
                "<mechanism>PLAIN</mechanism></mechanisms></stream:fea",
                "tures><iq id='other' type='result'/><iq type='result' id='x1'>",
                "<bind><jid>a@b/c</jid></bind></iq>",
            ] {
                server.write_all(chunk.as_bytes()).await.unwrap();
            }
            server
        });
        let features = stream.open("b").await.unwrap();
        assert!(features.contains(">PLAIN<"));
        let reply = stream.iq_reply("x1").await.unwrap();
        assert_eq!(child_text(&reply, "jid"), Some("a@b/c"));
        let mut server = server_side.await.unwrap();
        server
            .write_all(b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>")
            .await
            .unwrap();
        let err = stream.next_element().await.unwrap_err();
        assert!(err.to_string().contains("stream error"));
        drop(server);
        assert!(stream.next_frame().await.is_err());
    }
}
