//! Test harness: real Starling nodes started in-process on ephemeral loopback ports, and a
//! raw-XML client that speaks the protocol byte by byte, for tests that must see exactly what
//! the server sends (stream errors, features, stanza errors).
//!
//! Everything has a deadline: a test that waits for a stanza that never comes fails after
//! [`TIMEOUT`] instead of hanging.

#![forbid(unsafe_code)]

pub mod haproxy;
pub mod postgres;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use starling_core::Server;
use starling_server::Node;
use starling_xmpp::Element;
use starling_xmpp::codec::{Limits, StreamEvent, StreamParser};
use starling_xmpp::ns;
use starling_xmpp::scram::Credentials;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for anything.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The host every test node serves.
pub const HOST: &str = "localhost";

/// A node running in this process with its own data directory.
pub struct TestNode {
    node: Option<Node>,
    /// The routing core, for direct inspection.
    pub server: Arc<Server>,
    /// STARTTLS listener.
    pub starttls: SocketAddr,
    /// Direct-TLS listener.
    pub direct_tls: SocketAddr,
    /// The data directory (removed on drop).
    pub dir: tempfile::TempDir,
}

impl TestNode {
    /// A node with the default modules and `extra` YAML appended to its config (top-level
    /// keys other than hosts, data_dir, listen and modules).
    pub async fn start_with(extra: &str) -> anyhow::Result<Self> {
        Self::start_with_modules("", extra).await
    }

    /// A node with the default modules plus `extra_modules` (YAML lines of the `modules:`
    /// mapping, e.g. `"mod_mam: {default: always}"`, one module per line), and
    /// `extra_toplevel` YAML appended to its config as in [`Self::start_with`].
    pub async fn start_with_modules(
        extra_modules: &str,
        extra_toplevel: &str,
    ) -> anyhow::Result<Self> {
        let extra_modules: String = extra_modules
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("  {}\n", l.trim_end()))
            .collect();
        let extra = extra_toplevel;
        let dir = tempfile::tempdir()?;
        let yaml = format!(
            "hosts: [{HOST}]\n\
             data_dir: {data}\n\
             loglevel: warning\n\
             listen:\n  \
               - {{port: 0, ip: 127.0.0.1, module: ejabberd_c2s, starttls_required: true}}\n  \
               - {{port: 0, ip: 127.0.0.1, module: ejabberd_c2s, tls: true}}\n\
             modules:\n  \
               mod_disco: {{}}\n  mod_ping: {{}}\n  mod_version: {{}}\n  mod_time: {{}}\n  \
               mod_last: {{}}\n  mod_roster: {{versioning: true}}\n  mod_register: {{}}\n\
             {extra_modules}\
             {extra}\n",
            data = dir.path().join("data").display(),
        );
        let specs = starling_modules::specs();
        let config = starling_config::load_str(&yaml, "test.yml", &specs)
            .map_err(|d| anyhow!("test config rejected:\n{d}"))?;
        let node = starling_server::start(config, &starling_modules::catalogue()).await?;
        let starttls = node
            .c2s
            .iter()
            .find(|(_, tls)| !tls)
            .map(|(a, _)| *a)
            .context("no STARTTLS listener")?;
        let direct_tls = node
            .c2s
            .iter()
            .find(|(_, tls)| *tls)
            .map(|(a, _)| *a)
            .context("no direct-TLS listener")?;
        Ok(Self {
            server: node.server.clone(),
            node: Some(node),
            starttls,
            direct_tls,
            dir,
        })
    }

    /// A node with the default configuration.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with("").await
    }

    /// Creates an account directly in the store.
    pub async fn register(&self, user: &str, password: &str) -> anyhow::Result<()> {
        let jid = starling_xmpp::jid::BareJid::new(Some(user), HOST)?;
        let password = password.to_owned();
        let creds = tokio::task::spawn_blocking(move || Credentials::new(&password, 4096))
            .await?
            .map_err(|e| anyhow!("{e}"))?;
        self.server
            .stores()
            .create(&jid, &creds)
            .await
            .map_err(|e| anyhow!("{e}"))
    }

    /// Logs `user` in over STARTTLS with PLAIN and binds `resource`.
    pub async fn login(
        &self,
        user: &str,
        password: &str,
        resource: &str,
    ) -> anyhow::Result<Client> {
        let mut c = Client::connect(self.starttls).await?;
        c.open().await?;
        c.starttls().await?;
        c.auth_plain(user, password).await?;
        c.bind(resource).await?;
        Ok(c)
    }

    /// Stops the node and waits for its sessions to close.
    pub async fn stop(mut self) {
        if let Some(node) = self.node.take() {
            node.stop().await;
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(node) = &self.node {
            node.server.begin_shutdown();
        }
    }
}

async fn tcp_from(from: std::net::IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if from.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(addr).await
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A raw XMPP client.
pub struct Client {
    io: Option<Box<dyn Io>>,
    parser: StreamParser,
    /// The full JID once bound.
    pub jid: Option<String>,
    /// The features of the last stream opened.
    pub features: Option<Element>,
}

impl Client {
    /// Connects over plain TCP (for STARTTLS listeners).
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr)).await??;
        Ok(Self::over(Box::new(tcp)))
    }

    /// Connects with TLS from the first byte (XEP-0368 listeners).
    pub async fn connect_tls(addr: SocketAddr) -> anyhow::Result<Self> {
        let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr)).await??;
        let tls = tls_connect(tcp).await?;
        Ok(Self::over(Box::new(tls)))
    }

    /// Connects over plain TCP from the local address `from` (a 127.0.0.x alias, so that a
    /// server behind a proxy can be checked to see this address and not the proxy's).
    pub async fn connect_from(from: std::net::IpAddr, addr: SocketAddr) -> anyhow::Result<Self> {
        let tcp = tokio::time::timeout(TIMEOUT, tcp_from(from, addr)).await??;
        Ok(Self::over(Box::new(tcp)))
    }

    /// [`Self::connect_tls`] from the local address `from`.
    pub async fn connect_tls_from(
        from: std::net::IpAddr,
        addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        let tcp = tokio::time::timeout(TIMEOUT, tcp_from(from, addr)).await??;
        let tls = tls_connect(tcp).await?;
        Ok(Self::over(Box::new(tls)))
    }

    fn over(io: Box<dyn Io>) -> Self {
        Self {
            io: Some(io),
            parser: StreamParser::new(
                ns::CLIENT,
                Limits {
                    max_stanza_size: 1 << 20,
                    ..Limits::default()
                },
            ),
            jid: None,
            features: None,
        }
    }

    fn io(&mut self) -> anyhow::Result<&mut Box<dyn Io>> {
        self.io.as_mut().context("connection gone")
    }

    /// Sends raw bytes.
    pub async fn send(&mut self, xml: &str) -> anyhow::Result<()> {
        let io = self.io()?;
        io.write_all(xml.as_bytes()).await?;
        io.flush().await?;
        Ok(())
    }

    /// The next stream event, or an error after [`TIMEOUT`] or on EOF.
    pub async fn next(&mut self) -> anyhow::Result<StreamEvent> {
        tokio::time::timeout(TIMEOUT, self.next_inner())
            .await
            .map_err(|_| anyhow!("timed out waiting for the server"))?
    }

    async fn next_inner(&mut self) -> anyhow::Result<StreamEvent> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(ev) = self.parser.next_event().map_err(|e| anyhow!("{e}"))? {
                return Ok(ev);
            }
            let n = self.io()?.read(&mut buf).await?;
            if n == 0 {
                bail!("connection closed by the server");
            }
            self.parser.feed(buf.get(..n).unwrap_or_default());
        }
    }

    /// The next first-level element.
    pub async fn element(&mut self) -> anyhow::Result<Element> {
        match self.next().await? {
            StreamEvent::Stanza(el) => Ok(el),
            other => bail!("expected an element, got {other:?}"),
        }
    }

    /// Waits for an element matching `pred`, skipping others (presence noise, pushes).
    pub async fn wait_for(&mut self, pred: impl Fn(&Element) -> bool) -> anyhow::Result<Element> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let el = tokio::time::timeout_at(deadline, self.next_inner())
                .await
                .map_err(|_| anyhow!("timed out waiting for a matching element"))??;
            if let StreamEvent::Stanza(el) = el
                && pred(&el)
            {
                return Ok(el);
            }
        }
    }

    /// Expects a stream error and returns its condition name; then the stream must close.
    pub async fn stream_error(&mut self) -> anyhow::Result<String> {
        loop {
            match self.next().await? {
                StreamEvent::Stanza(el) if el.is("error", ns::STREAM) => {
                    let cond = el
                        .children()
                        .find(|c| c.ns() == ns::STREAM_ERRORS && c.name() != "text")
                        .map(|c| c.name().to_owned())
                        .context("stream error without condition")?;
                    return Ok(cond);
                }
                StreamEvent::Open(_) | StreamEvent::Stanza(_) => {}
                StreamEvent::Close => bail!("stream closed without an error"),
            }
        }
    }

    /// Opens the stream to [`HOST`] and reads the header and features.
    pub async fn open(&mut self) -> anyhow::Result<Element> {
        self.send(&format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{HOST}' version='1.0'>"
        ))
        .await?;
        match self.next().await? {
            StreamEvent::Open(_) => {}
            other => bail!("expected a stream header, got {other:?}"),
        }
        let features = self.element().await?;
        if !features.is("features", ns::STREAM) {
            bail!(
                "expected features, got {}",
                String::from_utf8_lossy(&starling_xmpp::codec::to_bytes(&features))
            );
        }
        self.features = Some(features.clone());
        Ok(features)
    }

    /// Negotiates STARTTLS and reopens the stream.
    pub async fn starttls(&mut self) -> anyhow::Result<Element> {
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await?;
        let proceed = self.element().await?;
        if proceed.name() != "proceed" {
            bail!("STARTTLS refused: {}", proceed.name());
        }
        let io = self.io.take().context("connection gone")?;
        let tls = tls_connect(io).await?;
        self.io = Some(Box::new(tls));
        self.parser.reset();
        self.open().await
    }

    /// SASL PLAIN; on success reopens the stream. Returns the failure condition otherwise.
    pub async fn try_auth_plain(
        &mut self,
        user: &str,
        password: &str,
    ) -> anyhow::Result<Result<(), String>> {
        let payload =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"
        ))
        .await?;
        let reply = self.element().await?;
        match reply.name() {
            "success" => {
                self.parser.reset();
                self.open().await?;
                Ok(Ok(()))
            }
            "failure" => Ok(Err(reply
                .children()
                .next()
                .map(|c| c.name().to_owned())
                .unwrap_or_default())),
            other => bail!("unexpected SASL reply {other}"),
        }
    }

    /// SASL PLAIN that must succeed.
    pub async fn auth_plain(&mut self, user: &str, password: &str) -> anyhow::Result<()> {
        self.try_auth_plain(user, password)
            .await?
            .map_err(|c| anyhow!("authentication failed: {c}"))
    }

    /// Binds a resource and returns the full JID.
    pub async fn bind(&mut self, resource: &str) -> anyhow::Result<String> {
        self.send(&format!(
            "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>{resource}</resource></bind></iq>"
        ))
        .await?;
        let reply = self.element().await?;
        let jid = reply
            .get_child("bind", ns::BIND)
            .and_then(|b| b.get_child("jid", ns::BIND))
            .map(|j| j.text())
            .with_context(|| {
                format!(
                    "bind failed: {}",
                    String::from_utf8_lossy(&starling_xmpp::codec::to_bytes(&reply))
                )
            })?;
        self.jid = Some(jid.clone());
        Ok(jid)
    }

    /// Sends an IQ and waits for its result or error (matching id).
    pub async fn iq(&mut self, xml: &str, id: &str) -> anyhow::Result<Element> {
        self.send(xml).await?;
        self.wait_for(|e| {
            e.name() == "iq"
                && e.attr("id") == Some(id)
                && matches!(e.attr("type"), Some("result" | "error"))
        })
        .await
    }
}

/// The stanza error condition of an error stanza.
pub fn error_condition(el: &Element) -> Option<String> {
    el.get_child("error", ns::CLIENT)?
        .children()
        .find(|c| c.ns() == ns::STANZAS && c.name() != "text")
        .map(|c| c.name().to_owned())
}

/// Accepts any server certificate: test nodes use a generated self-signed one.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn tls_connect<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
) -> anyhow::Result<tokio_rustls::client::TlsStream<S>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(HOST)?;
    Ok(tokio::time::timeout(TIMEOUT, connector.connect(name, io)).await??)
}
