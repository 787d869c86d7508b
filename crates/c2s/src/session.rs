//! One client connection, from accept to close (DESIGN.md §2.3).
//!
//! Negotiation runs under a deadline (`negotiation_timeout`): header, STARTTLS, SASL, bind.
//! Once bound, one `select!` serves the socket, the session inbox, the close signal and the
//! keepalive timer. Reads are paced: the next read happens only after every complete stanza
//! already received has been routed, so a fast sender is slowed by TCP rather than buffered.
//! Writes are bounded by `send_timeout`: a client that stops reading is disconnected.
//!
//! With XEP-0198 stream management (`mod_stream_mgmt`) every stanza written is also queued in
//! [`crate::sm`] until the client acknowledges it. When a resumable stream is lost without
//! `</stream:stream>`, the session *detaches*: the task keeps running without a socket, stays in
//! the directory and queues what it receives, until a new connection of the same user resumes
//! it (the new connection's task hands its transport over to this one, through the session
//! manager's resumable registry) or `resume_timeout` passes. Only then does the session end:
//! unavailable presence is broadcast and unacknowledged messages are re-routed (XEP-0198 §5).
//! XEP-0352 client state indication (`mod_client_state`) holds back presence and chat states
//! while the client is inactive ([`crate::csi`]).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use starling_config::{Config, ModuleOptions};
use starling_core::Server;
use starling_core::counters::{AuthMechanism, Transport as SessionTransport};
use starling_core::hooks::{HookResult, SessionClosed, UserReceivePacket, UserSendPacket};
use starling_core::module::StreamContext;
use starling_core::presence::{self, PresenceState};
use starling_core::server::unix_now;
use starling_core::sm::{BindError, Resumable, SessionChannels, SessionId, SessionMsg, Takeover};
use starling_xmpp::Element;
use starling_xmpp::codec::{self, Limits, STREAM_CLOSE, StreamEvent, StreamHeader, StreamParser};
use starling_xmpp::error::{
    ErrorType, StanzaError, StanzaErrorCondition, StreamError, StreamErrorCondition,
};
use starling_xmpp::jid::{BareJid, FullJid, Jid, nameprep, resourceprep};
use starling_xmpp::ns;
use starling_xmpp::sasl::{self, Mechanism, SaslError};
use starling_xmpp::scram::ChannelBindings;
use starling_xmpp::stanza::{IqType, Kind, Stanza, element, set_attr, text_element};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, timeout, timeout_at};
use tracing::Instrument;

use crate::auth::{Authenticator, Step};
use crate::csi::{self, ClientState};
use crate::features::{self, Offer, Phase};
use crate::framed::{FrameOut, FramedLink};
use crate::sm::{self, Fate, ResendOnTimeout, StreamManagement, TimerAction, Unacked};
use crate::transport::Transport;

// XEP-0198 resumption across cluster nodes; a child module so it can extend the session task.
#[path = "handover.rs"]
mod handover;

/// SASL failures tolerated on one stream before it is closed (RFC 6120 §6.4.5 asks for at
/// least two retries).
const MAX_AUTH_FAILURES: u32 = 5;
/// Read buffer size; stanzas larger than this arrive over several reads.
const READ_CHUNK: usize = 4096;

/// Per-listener policy for client connections, resolved from the config at start.
pub struct ListenerSettings {
    /// TLS from the first byte (XEP-0368).
    pub direct_tls: bool,
    /// STARTTLS is offered.
    pub starttls: bool,
    /// STARTTLS must be negotiated before anything else.
    pub starttls_required: bool,
    /// PLAIN and registration are allowed on unencrypted streams.
    pub plain_without_tls: bool,
    /// `max_stanza_size` after authentication.
    pub max_stanza_size: usize,
    /// The TLS configuration, if certificates are available.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Time allowed from accept to bound session.
    pub negotiation_timeout: Duration,
    /// Time a write may block before the client is considered gone.
    pub send_timeout: Duration,
}

impl ListenerSettings {
    /// Settings for WebSocket and BOSH sessions on an HTTP `listener`: its TLS (if any) is the
    /// HTTP connection's, so there is no STARTTLS and no handshake here; whether the peer is
    /// encrypted travels in the [`FramedLink`] instead.
    pub fn framed(listener: &starling_config::Listener, negotiation_timeout: Duration) -> Self {
        Self {
            direct_tls: false,
            starttls: false,
            starttls_required: false,
            plain_without_tls: listener.allow_plain_without_tls,
            max_stanza_size: listener.max_stanza_size,
            tls: None,
            negotiation_timeout,
            // As for TCP listeners (crates/server): a bridge that cannot take frames for this
            // long has a peer that stopped reading.
            send_timeout: Duration::from_secs(15),
        }
    }
}

/// Why reading stopped.
enum End {
    /// The peer closed the TCP connection.
    Eof,
    /// A socket error.
    Io(io::Error),
    /// The peer violated the protocol.
    Stream(StreamError),
    /// The peer sent `</stream:stream>`.
    Closed,
    /// The peer violated the protocol; the stream error is already serialised (it carries an
    /// application-specific condition).
    StreamXml(String),
}

impl End {
    /// True if the connection was lost rather than closed: a resumable session detaches.
    fn is_loss(&self) -> bool {
        matches!(self, Self::Eof | Self::Io(_))
    }
}

struct Conn {
    io: Option<Transport>,
    parser: StreamParser,
    buf: Vec<u8>,
    /// The last read returned less than a full buffer, so the TLS layer holds no decrypted
    /// bytes we have not seen: the next read may wait for socket readiness without a buffer.
    drained: bool,
    peer: SocketAddr,
    header_sent: bool,
    host: Option<String>,
    send_timeout: Duration,
    /// The listener's traffic shaper (`shaper`), pausing reads over its rate.
    shaper: Option<starling_listener::shaper::Shaper>,
}

impl Conn {
    fn io(&mut self) -> io::Result<&mut Transport> {
        self.io
            .as_mut()
            .ok_or_else(|| io::Error::other("transport lost during TLS upgrade"))
    }

    /// The next event, reading more bytes as needed.
    async fn next_event(&mut self) -> Result<StreamEvent, End> {
        loop {
            match self.parser.next_event() {
                Ok(Some(StreamEvent::Close)) => return Err(End::Closed),
                Ok(Some(event)) => return Ok(event),
                Ok(None) => {}
                Err(e) => return Err(End::Stream(e)),
            }
            self.read_more().await?;
        }
    }

    async fn read_more(&mut self) -> Result<(), End> {
        if let Some(link) = self.io.as_mut().and_then(Transport::framed) {
            // A dropped bridge is a lost connection, like a TCP EOF.
            let frame = link.inbound.recv().await.ok_or(End::Eof)?;
            self.parser.feed(&frame.into_stream_bytes());
            return Ok(());
        }
        // Over the shaper's rate, wait before reading so TCP pushes back on the client.
        if let Some(shaper) = self.shaper.as_ref() {
            shaper.ready().await;
        }
        if self.drained {
            // Wait for data holding no buffer: idle connections are the common case.
            let io = self.io.as_ref().ok_or(End::Eof)?;
            io.readable().await.map_err(End::Io)?;
        }
        if self.buf.len() < READ_CHUNK {
            self.buf.resize(READ_CHUNK, 0);
        }
        let Self { io, buf, .. } = self;
        let io = io.as_mut().ok_or(End::Eof)?;
        let n = io.read(buf).await.map_err(End::Io)?;
        if n == 0 {
            return Err(End::Eof);
        }
        self.drained = n < self.buf.len();
        let data = self.buf.get(..n).ok_or(End::Eof)?;
        self.parser.feed(data);
        if let Some(shaper) = self.shaper.as_mut() {
            shaper.record(n);
        }
        Ok(())
    }

    /// Writes `data`: one complete element (or, on byte streams, a header or closing tag).
    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if self.io.as_mut().and_then(Transport::framed).is_some() {
            return self.send_frame(FrameOut::Element(data.to_vec())).await;
        }
        let send_timeout = self.send_timeout;
        let io = self.io()?;
        match timeout(send_timeout, async {
            io.write_all(data).await?;
            io.flush().await
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "send timeout")),
        }
    }

    /// Hands one frame to a WebSocket/BOSH bridge, waiting at most `send_timeout` for room.
    async fn send_frame(&mut self, frame: FrameOut) -> io::Result<()> {
        let send_timeout = self.send_timeout;
        let link = self
            .io()?
            .framed()
            .ok_or_else(|| io::Error::other("not a framed transport"))?;
        match timeout(send_timeout, link.outbound.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the HTTP side of the session is gone",
            )),
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "send timeout")),
        }
    }

    async fn write_element(&mut self, el: &Element) -> io::Result<()> {
        self.write(&codec::to_bytes(el)).await
    }

    /// Sends our stream header (a fresh id each time, as each restart is a new stream).
    async fn send_header(&mut self) -> io::Result<()> {
        let header = StreamHeader {
            id: Some(format!("{:032x}", rand::random::<u128>())),
            from: self.host.clone(),
            ..StreamHeader::default()
        };
        self.header_sent = true;
        if self.io.as_mut().and_then(Transport::framed).is_some() {
            return self.send_frame(FrameOut::Open(header)).await;
        }
        self.write(codec::stream_header(ns::CLIENT, &header).as_bytes())
            .await
    }

    /// Sends a stream error and closes (RFC 6120 §4.9.1.1); opens our stream first if needed.
    async fn fail(&mut self, error: StreamError) {
        tracing::info!(peer = %self.peer, condition = error.condition.name(), text = ?error.text, "stream error");
        if !self.header_sent {
            let _ = self.send_header().await;
        }
        self.fail_xml_quietly(&error.to_xml()).await;
    }

    /// Like [`Self::fail`] with a stream error already serialised.
    async fn fail_xml(&mut self, error_xml: &str) {
        tracing::info!(peer = %self.peer, error = error_xml, "stream error");
        if !self.header_sent {
            let _ = self.send_header().await;
        }
        self.fail_xml_quietly(error_xml).await;
    }

    /// Sends a serialised stream error and closes, our header being already sent.
    async fn fail_xml_quietly(&mut self, error_xml: &str) {
        if self.io.as_mut().and_then(Transport::framed).is_some() {
            let _ = self
                .send_frame(FrameOut::Element(error_xml.as_bytes().to_vec()))
                .await;
            self.close().await;
            return;
        }
        let mut out = error_xml.to_owned();
        out.push_str(STREAM_CLOSE);
        let _ = self.write(out.as_bytes()).await;
        self.shutdown().await;
    }

    async fn close(&mut self) {
        if self.io.as_mut().and_then(Transport::framed).is_some() {
            let _ = self.send_frame(FrameOut::Close).await;
        } else {
            let _ = self.write(STREAM_CLOSE.as_bytes()).await;
        }
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(io) = self.io.as_mut() {
            let _ = timeout(Duration::from_secs(1), io.shutdown()).await;
        }
    }
}

/// Serves one accepted client connection until it closes.
pub async fn run(
    server: Arc<Server>,
    settings: Arc<ListenerSettings>,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    run_shaped(server, settings, tcp, peer, None).await;
}

/// [`run`] with reads paced by `shaper` (see `crate::admission`).
pub async fn run_shaped(
    server: Arc<Server>,
    settings: Arc<ListenerSettings>,
    tcp: TcpStream,
    peer: SocketAddr,
    shaper: Option<starling_listener::shaper::Shaper>,
) {
    let span = tracing::info_span!("c2s", %peer, jid = tracing::field::Empty);
    async move {
        tracing::debug!("connection accepted");
        let deadline = Instant::now() + settings.negotiation_timeout;
        let mut io = Transport::Plain(tcp);
        if settings.direct_tls {
            let Some(tls) = settings.tls.clone() else {
                return;
            };
            io = match timeout_at(deadline, io.upgrade(tls)).await {
                Ok(Ok(io)) => io,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
        }
        let mut conn = Conn::new(io, peer, &settings.send_timeout);
        conn.shaper = shaper;
        serve(server, settings, conn, deadline).await;
    }
    .instrument(span)
    .await;
}

/// Serves one WebSocket or BOSH client, whose HTTP side holds the other end of `link`, until
/// the session ends. Everything after framing is the same as for TCP clients.
pub async fn run_framed(
    server: Arc<Server>,
    settings: Arc<ListenerSettings>,
    link: FramedLink,
    peer: SocketAddr,
) {
    let transport = link.kind();
    let span = tracing::info_span!("c2s", %peer, ?transport, jid = tracing::field::Empty);
    async move {
        tracing::debug!("framed session opened");
        let deadline = Instant::now() + settings.negotiation_timeout;
        let io = Transport::Framed(Box::new(link));
        let mut conn = Conn::new(io, peer, &settings.send_timeout);
        // Banned addresses are refused on every transport (TCP checks at accept, in
        // `crate::admission`); here the refusal is the stream error itself.
        if let Some(ban) = server.banned(peer.ip()) {
            server
                .counters()
                .abuse()
                .refused(starling_core::ban::Refusal::Banned);
            tracing::info!(
                failures = ban.failures,
                remaining_s = ban.remaining.as_secs(),
                "framed session refused: address banned"
            );
            conn.fail(
                StreamError::new(StreamErrorCondition::PolicyViolation)
                    .with_text(ban.refusal_text()),
            )
            .await;
            return;
        }
        serve(server, settings, conn, deadline).await;
    }
    .instrument(span)
    .await;
}

impl Conn {
    fn new(io: Transport, peer: SocketAddr, send_timeout: &Duration) -> Self {
        Self {
            io: Some(io),
            parser: StreamParser::new(
                ns::CLIENT,
                Limits {
                    max_stanza_size: Limits::PRE_AUTH_STANZA_SIZE,
                    ..Limits::default()
                },
            ),
            buf: Vec::new(),
            drained: false,
            peer,
            header_sent: false,
            host: None,
            send_timeout: *send_timeout,
            shaper: None,
        }
    }

    /// The transport label for the session counters.
    fn kind(&mut self) -> SessionTransport {
        self.io
            .as_mut()
            .and_then(Transport::framed)
            .map_or(SessionTransport::Tcp, |link| link.kind())
    }
}

/// Negotiates then serves an accepted connection (inside the connection's span).
async fn serve(
    server: Arc<Server>,
    settings: Arc<ListenerSettings>,
    mut conn: Conn,
    deadline: Instant,
) {
    {
        let mut authenticated: Option<BareJid> = None;
        let bound = loop {
            let negotiated = timeout_at(
                deadline,
                // Boxed: negotiation state (SASL, SCRAM) is transient; kept inline it would
                // size every session's task for the whole connection.
                Box::pin(negotiate(
                    &server,
                    &settings,
                    &mut conn,
                    authenticated.take(),
                )),
            )
            .await;
            match negotiated {
                Ok(Some(Negotiated::Bound(bound))) => break bound,
                Ok(Some(Negotiated::Resume { user, previd, h })) => {
                    let handed =
                        timeout_at(deadline, hand_over(&server, conn, &user, &previd, h)).await;
                    match handed {
                        Ok(Err(back)) => {
                            conn = *back;
                            // Another cluster node may own the session (crate::handover).
                            match timeout_at(deadline, handover::fetch(&server, &user, &previd, h))
                                .await
                            {
                                Ok(Ok(state)) => {
                                    handover::resume_here(server, conn, previd, state).await;
                                    return;
                                }
                                Ok(Err(
                                    starling_core::handover::HandoverRefused::HandledCountTooHigh {
                                        h,
                                        sent,
                                    },
                                )) => {
                                    let error = sm::HandledCountTooHigh { h, sent };
                                    conn.fail_xml(&error.stream_error_xml()).await;
                                    return;
                                }
                                Ok(Err(_)) | Err(_) => {}
                            }
                            // XEP-0198 §5: the client may still bind a new session.
                            let failed = format!(
                                "<failed xmlns='{}'><item-not-found xmlns='{}'/></failed>",
                                sm::NS,
                                ns::STANZAS
                            );
                            if conn.write(failed.as_bytes()).await.is_err() {
                                return;
                            }
                            authenticated = Some(user);
                        }
                        // The session that was resumed now owns the connection.
                        Ok(Ok(())) | Err(_) => return,
                    }
                }
                Ok(None) => return,
                Err(_) => {
                    conn.fail(
                        StreamError::new(StreamErrorCondition::ConnectionTimeout)
                            .with_text("negotiation took too long"),
                    )
                    .await;
                    return;
                }
            }
        };
        tracing::Span::current().record("jid", tracing::field::display(&bound.0));
        established(server, conn, bound, None).await;
    }
}

/// A bound session.
type Bound = (FullJid, SessionId, SessionChannels);

/// The outcome of negotiation.
enum Negotiated {
    /// A new session.
    Bound(Bound),
    /// XEP-0198 §5: the authenticated client asks to resume session `previd`.
    Resume {
        user: BareJid,
        previd: String,
        h: u32,
    },
}

/// Negotiates the stream up to a bound session or a resumption request. `authenticated` is
/// set when negotiation continues after a failed resumption.
async fn negotiate(
    server: &Arc<Server>,
    settings: &ListenerSettings,
    conn: &mut Conn,
    authenticated: Option<BareJid>,
) -> Option<Negotiated> {
    let mut phase = if authenticated.is_some() {
        Phase::Authenticated
    } else if conn.io.as_ref().is_some_and(Transport::is_secure) {
        Phase::Secure
    } else {
        Phase::Plain
    };
    let mut user: Option<BareJid> = authenticated;
    let mut auth: Option<Authenticator> = None;
    let mut failures = 0u32;
    // The mechanism of the exchange in progress, for the auth counters (`<response/>` does
    // not repeat it).
    let mut mechanism: AuthMechanism = None;
    let mut offer = Offer {
        tls_available: settings.tls.is_some() && settings.starttls,
        starttls_required: settings.starttls_required && settings.tls.is_some(),
        plain_without_tls: settings.plain_without_tls,
        channel_binding: false,
    };
    loop {
        let event = match conn.next_event().await {
            Ok(ev) => ev,
            Err(end) => {
                finish_negotiation(conn, end).await;
                return None;
            }
        };
        match event {
            StreamEvent::Open(header) => {
                let host = match check_header(server, &header) {
                    Ok(host) => host,
                    Err(e) => {
                        conn.fail(e).await;
                        return None;
                    }
                };
                conn.host = Some(host.clone());
                if conn.send_header().await.is_err() {
                    return None;
                }
                offer.channel_binding =
                    conn.io.as_ref().and_then(Transport::tls_exporter).is_some();
                let modules = server.host_modules(&host);
                let extra: Vec<(&str, &str)> = match (&modules, phase) {
                    (Some(m), Phase::Authenticated) => m.registrations.stream_features.clone(),
                    (Some(m), Phase::Secure) => m.registrations.pre_auth_features.clone(),
                    (Some(m), Phase::Plain) if settings.plain_without_tls => {
                        m.registrations.pre_auth_features.clone()
                    }
                    _ => Vec::new(),
                };
                if phase != Phase::Authenticated {
                    let bindings = ChannelBindings {
                        tls_exporter: conn.io.as_ref().and_then(Transport::tls_exporter),
                        tls_server_end_point: None,
                    };
                    auth = Some(Authenticator::new(
                        host,
                        features::mechanisms(phase, &offer),
                        bindings,
                    ));
                }
                let xml = features::features_xml(phase, &offer, &extra);
                if conn.write(xml.as_bytes()).await.is_err() {
                    return None;
                }
            }
            StreamEvent::Close => {
                conn.close().await;
                return None;
            }
            StreamEvent::Stanza(el) => {
                if conn.host.is_none() {
                    conn.fail(StreamError::new(StreamErrorCondition::NotWellFormed))
                        .await;
                    return None;
                }
                let name = el.name().to_owned();
                let el_ns = el.ns();
                match (name.as_str(), el_ns.as_str()) {
                    ("starttls", ns::TLS) => {
                        let Some(tls) = settings
                            .tls
                            .clone()
                            .filter(|_| phase == Phase::Plain && offer.tls_available)
                        else {
                            // RFC 6120 §5.4.2.2: failure, then close.
                            let _ = conn
                                .write(format!("<failure xmlns='{}'/>", ns::TLS).as_bytes())
                                .await;
                            conn.close().await;
                            return None;
                        };
                        if conn
                            .write(format!("<proceed xmlns='{}'/>", ns::TLS).as_bytes())
                            .await
                            .is_err()
                        {
                            return None;
                        }
                        let plain = conn.io.take()?;
                        match plain.upgrade(tls).await {
                            Ok(secure) => {
                                conn.io = Some(secure);
                                // The handshake may have decrypted bytes already: read first.
                                conn.drained = false;
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "STARTTLS handshake failed");
                                return None;
                            }
                        }
                        // The stream restarts over TLS (RFC 6120 §5.4.3.3).
                        conn.parser.reset();
                        conn.header_sent = false;
                        phase = Phase::Secure;
                    }
                    ("auth" | "response" | "abort", ns::SASL) => {
                        if phase == Phase::Authenticated {
                            conn.fail(
                                StreamError::new(StreamErrorCondition::PolicyViolation)
                                    .with_text("already authenticated"),
                            )
                            .await;
                            return None;
                        }
                        if phase == Phase::Plain && offer.starttls_required {
                            let xml = sasl::failure_xml(&SaslError::EncryptionRequired, None);
                            let _ = conn.write(xml.as_bytes()).await;
                            continue;
                        }
                        let Some(a) = auth.as_mut() else {
                            continue;
                        };
                        let step = match name.as_str() {
                            "auth" => {
                                mechanism = el.attr("mechanism").and_then(Mechanism::from_name);
                                a.auth(server.stores(), el.attr("mechanism"), &el.text())
                                    .await
                            }
                            "response" => a.response(server.stores(), &el.text()).await,
                            _ => a.abort(),
                        };
                        match step {
                            Step::Challenge(data) => {
                                let xml = format!(
                                    "<challenge xmlns='{}'>{}</challenge>",
                                    ns::SASL,
                                    sasl::encode_payload(&data)
                                );
                                if conn.write(xml.as_bytes()).await.is_err() {
                                    return None;
                                }
                            }
                            Step::Success {
                                user: u,
                                additional,
                            } => {
                                let xml = match additional {
                                    Some(d) => format!(
                                        "<success xmlns='{}'>{}</success>",
                                        ns::SASL,
                                        sasl::encode_payload(&d)
                                    ),
                                    None => format!("<success xmlns='{}'/>", ns::SASL),
                                };
                                if conn.write(xml.as_bytes()).await.is_err() {
                                    return None;
                                }
                                tracing::info!(peer = %conn.peer, user = %u, mechanism = el.attr("mechanism").unwrap_or("-"), "authenticated");
                                server.counters().auth(mechanism, true);
                                conn.parser.reset();
                                conn.parser.set_limits(Limits {
                                    max_stanza_size: settings.max_stanza_size,
                                    ..Limits::default()
                                });
                                conn.header_sent = false;
                                phase = Phase::Authenticated;
                                user = Some(u);
                                auth = None;
                            }
                            Step::Failure { error, user: tried } => {
                                failures += 1;
                                if error != SaslError::Aborted {
                                    server.counters().auth(mechanism, false);
                                    tracing::info!(peer = %conn.peer, user = tried.as_deref().unwrap_or("-"), condition = error.condition(), "authentication failed");
                                    // mod_fail2ban: a ban ends this stream too.
                                    if server.auth_failed(conn.peer.ip()) {
                                        failures = MAX_AUTH_FAILURES;
                                    }
                                }
                                let xml = sasl::failure_xml(&error, None);
                                if conn.write(xml.as_bytes()).await.is_err() {
                                    return None;
                                }
                                if failures >= MAX_AUTH_FAILURES {
                                    conn.fail(
                                        StreamError::new(StreamErrorCondition::PolicyViolation)
                                            .with_text("too many authentication failures"),
                                    )
                                    .await;
                                    return None;
                                }
                            }
                        }
                    }
                    ("iq", ns::CLIENT) => {
                        if let Some(user) = user.as_ref() {
                            match bind_or_session(server, conn, user, &el).await {
                                Ok(Some(bound)) => return Some(Negotiated::Bound(bound)),
                                Ok(None) => {}
                                Err(e) => {
                                    conn.fail(e).await;
                                    return None;
                                }
                            }
                        } else {
                            let secure = phase == Phase::Secure;
                            if let Err(e) =
                                pre_auth_iq(server, conn, secure || settings.plain_without_tls, &el)
                                    .await
                            {
                                conn.fail(e).await;
                                return None;
                            }
                        }
                    }
                    ("resume", sm::NS) if host_has(server, conn, STREAM_MGMT) => {
                        let h = el.attr("h").and_then(|h| h.parse::<u32>().ok());
                        match (user.as_ref(), el.attr("previd"), h) {
                            (Some(user), Some(previd), Some(h)) => {
                                return Some(Negotiated::Resume {
                                    user: user.clone(),
                                    previd: previd.to_owned(),
                                    h,
                                });
                            }
                            (Some(_), _, _) => {
                                let xml = sm_failed(StanzaErrorCondition::BadRequest);
                                if conn.write(xml.as_bytes()).await.is_err() {
                                    return None;
                                }
                            }
                            (None, _, _) => {
                                let xml = sm_failed(StanzaErrorCondition::UnexpectedRequest);
                                if conn.write(xml.as_bytes()).await.is_err() {
                                    return None;
                                }
                            }
                        }
                    }
                    ("enable", sm::NS) if host_has(server, conn, STREAM_MGMT) => {
                        // XEP-0198 §3: stream management is enabled after binding.
                        let xml = sm_failed(StanzaErrorCondition::UnexpectedRequest);
                        if conn.write(xml.as_bytes()).await.is_err() {
                            return None;
                        }
                    }
                    // Acks and client states mean nothing before a session exists.
                    ("r" | "a", sm::NS) if host_has(server, conn, STREAM_MGMT) => {}
                    ("active" | "inactive", csi::NS) if host_has(server, conn, CLIENT_STATE) => {}
                    _ if Kind::of(&el).is_some() => {
                        conn.fail(StreamError::new(StreamErrorCondition::NotAuthorized))
                            .await;
                        return None;
                    }
                    _ => {
                        conn.fail(StreamError::new(
                            StreamErrorCondition::UnsupportedStanzaType,
                        ))
                        .await;
                        return None;
                    }
                }
            }
        }
    }
}

async fn finish_negotiation(conn: &mut Conn, end: End) {
    match end {
        End::Stream(e) => conn.fail(e).await,
        End::StreamXml(xml) => conn.fail_xml(&xml).await,
        End::Closed => conn.close().await,
        End::Eof => {}
        End::Io(e) => tracing::debug!(error = %e, "read failed"),
    }
}

/// Checks the client's stream header (RFC 6120 §4.7, §4.9.3).
fn check_header(server: &Server, header: &StreamHeader) -> Result<String, StreamError> {
    if header.version.is_none() {
        return Err(StreamError::new(StreamErrorCondition::UnsupportedVersion)
            .with_text("XMPP 1.0 streams only"));
    }
    let Some(to) = header.to.as_deref() else {
        return Err(StreamError::new(StreamErrorCondition::HostUnknown)
            .with_text("the stream header has no 'to'"));
    };
    let host = nameprep(to).map_err(|_| StreamError::new(StreamErrorCondition::HostUnknown))?;
    if !server.is_local(&host) {
        return Err(StreamError::new(StreamErrorCondition::HostUnknown)
            .with_text(format!("{host} is not served here")));
    }
    Ok(host)
}

/// An IQ on an authenticated, unbound stream: resource binding or legacy session.
async fn bind_or_session(
    server: &Arc<Server>,
    conn: &mut Conn,
    user: &BareJid,
    el: &Element,
) -> Result<Option<Bound>, StreamError> {
    let id = el.attr("id").unwrap_or("").to_owned();
    let kind = IqType::parse(el.attr("type"));
    if let Some(bind) = el
        .get_child("bind", ns::BIND)
        .filter(|_| kind == Some(IqType::Set))
    {
        let resource = match bind.get_child("resource", ns::BIND).map(|r| r.text()) {
            Some(r) if !r.trim().is_empty() => match resourceprep(r.trim()) {
                Ok(r) => r,
                Err(_) => {
                    send_iq_error(
                        conn,
                        el,
                        StanzaError::new(StanzaErrorCondition::BadRequest)
                            .with_text("invalid resource"),
                    )
                    .await;
                    return Ok(None);
                }
            },
            _ => format!("{:016x}", rand::random::<u64>()),
        };
        let Ok(full) = user.with_resource(&resource) else {
            send_iq_error(conn, el, StanzaError::new(StanzaErrorCondition::BadRequest)).await;
            return Ok(None);
        };
        match server
            .sm()
            .bind(full.clone(), server.config().max_user_sessions)
        {
            Ok((sid, channels)) => {
                let mut result = element("iq", ns::CLIENT, &[("type", "result"), ("id", &id)]);
                let mut b = element("bind", ns::BIND, &[]);
                b.append_child(text_element("jid", ns::BIND, full.as_str()));
                result.append_child(b);
                if conn.write_element(&result).await.is_err() {
                    server.sm().unbind(&full, sid);
                    return Err(StreamError::new(StreamErrorCondition::UndefinedCondition));
                }
                tracing::info!(jid = %full, "session bound");
                return Ok(Some((full, sid, channels)));
            }
            Err(BindError::TooManySessions) => {
                send_iq_error(
                    conn,
                    el,
                    StanzaError::new(StanzaErrorCondition::ResourceConstraint)
                        .with_type(ErrorType::Wait)
                        .with_text("too many sessions for this account"),
                )
                .await;
                return Ok(None);
            }
        }
    }
    if el.get_child("session", ns::SESSION).is_some() {
        let result = element("iq", ns::CLIENT, &[("type", "result"), ("id", &id)]);
        let _ = conn.write_element(&result).await;
        return Ok(None);
    }
    Err(StreamError::new(StreamErrorCondition::NotAuthorized).with_text("bind a resource first"))
}

/// An IQ before authentication: only module-registered stream handlers (in-band registration).
async fn pre_auth_iq(
    server: &Arc<Server>,
    conn: &mut Conn,
    secure: bool,
    el: &Element,
) -> Result<(), StreamError> {
    let host = conn.host.clone().unwrap_or_default();
    let payload = el.children().next();
    let handler = payload.and_then(|p| {
        server
            .host_modules(&host)
            .and_then(|m| m.stream_iq_handler(&p.ns()).cloned())
    });
    let Some(handler) = handler else {
        return Err(StreamError::new(StreamErrorCondition::NotAuthorized));
    };
    if !IqType::parse(el.attr("type")).is_some_and(IqType::is_request) {
        return Ok(());
    }
    let ctx = StreamContext {
        host,
        ip: conn.peer.ip(),
        secure,
    };
    match handler.handle(server, &ctx, el).await {
        Ok(payload) => {
            let id = el.attr("id").unwrap_or("");
            let mut result = element("iq", ns::CLIENT, &[("type", "result"), ("id", id)]);
            if let Some(p) = payload {
                result.append_child(p);
            }
            let _ = conn.write_element(&result).await;
        }
        Err(error) => send_iq_error(conn, el, error).await,
    }
    Ok(())
}

/// Writes an IQ error for a request received before the session is routable.
async fn send_iq_error(conn: &mut Conn, request: &Element, error: StanzaError) {
    let mut reply = request.clone();
    set_attr(&mut reply, "type", "error");
    reply.append_child(error.to_element(ns::CLIENT));
    let _ = conn.write_element(&reply).await;
}

/// Server-to-client keepalive settings from mod_ping (XEP-0199 §4.2).
struct Keepalive {
    interval: Duration,
    ack_timeout: Duration,
    kill: bool,
}

fn keepalive(config: &Config, host: &str) -> Option<Keepalive> {
    let modules = config.host_modules.get(host).unwrap_or(&config.modules);
    let ping = modules.iter().find(|m| m.name == "mod_ping")?;
    if !ping.options.bool("send_pings").unwrap_or(false) {
        return None;
    }
    Some(Keepalive {
        interval: ping
            .options
            .duration("ping_interval")
            .unwrap_or(Duration::from_secs(60))
            .max(Duration::from_secs(1)),
        ack_timeout: ping
            .options
            .duration("ping_ack_timeout")
            .unwrap_or(Duration::from_secs(32)),
        kill: ping.options.string("timeout_action") == Some("kill"),
    })
}

/// `mod_stream_mgmt`: XEP-0198 is offered on hosts that run it.
const STREAM_MGMT: &str = "mod_stream_mgmt";
/// `mod_client_state`: XEP-0352 is offered on hosts that run it.
const CLIENT_STATE: &str = "mod_client_state";

/// The options of `module` on `host`, if it runs there (c2s reads its own modules' options from
/// the config, as it does mod_ping's; it does not depend on the modules crate).
fn module_options<'a>(config: &'a Config, host: &str, module: &str) -> Option<&'a ModuleOptions> {
    let modules = config.host_modules.get(host).unwrap_or(&config.modules);
    modules
        .iter()
        .find(|m| m.name == module)
        .map(|m| &m.options)
}

/// True if the stream's host runs `module`.
fn host_has(server: &Server, conn: &Conn, module: &str) -> bool {
    conn.host
        .as_deref()
        .and_then(|h| server.host_modules(h))
        .is_some_and(|m| m.has(module))
}

/// A XEP-0198 `<failed/>` with a stanza error condition.
fn sm_failed(condition: StanzaErrorCondition) -> String {
    format!(
        "<failed xmlns='{}'><{} xmlns='{}'/></failed>",
        sm::NS,
        condition.name(),
        ns::STANZAS
    )
}

/// What a resuming connection's task hands to the task owning the session (the payload of a
/// [`Takeover`]).
struct Resume {
    conn: Conn,
    user: BareJid,
    previd: String,
    h: u32,
    /// `Ok` once the owner took the connection; `Err` gives it back (resumption refused).
    reply: oneshot::Sender<Result<(), Box<Conn>>>,
}

/// Hands `conn` to the task owning resumable session `previd` (XEP-0198 §5). `Err` gives the
/// connection back when there is no such session for `user`.
async fn hand_over(
    server: &Server,
    conn: Conn,
    user: &BareJid,
    previd: &str,
    h: u32,
) -> Result<(), Box<Conn>> {
    let Some(owner) = server
        .sm()
        .resumable(previd)
        .filter(|r| r.jid.to_bare() == *user)
    else {
        tracing::info!(%user, "cannot resume: unknown or expired session");
        return Err(Box::new(conn));
    };
    let (reply, answer) = oneshot::channel();
    let resume: Takeover = Box::new(Resume {
        conn,
        user: user.clone(),
        previd: previd.to_owned(),
        h,
        reply,
    });
    if let Err(mpsc::error::SendError(back)) = owner.takeover.send(resume).await {
        // The owner ended in the meantime.
        return match back.downcast::<Resume>() {
            Ok(resume) => Err(Box::new(resume.conn)),
            Err(_) => Ok(()),
        };
    }
    // A dropped reply means the owner ended holding the connection: nothing left to do here.
    answer.await.unwrap_or(Ok(()))
}

/// The channels a session task listens to.
struct Channels {
    inbox: mpsc::Receiver<SessionMsg>,
    close: watch::Receiver<Option<StreamError>>,
    takeovers: mpsc::Receiver<Takeover>,
}

/// Why the attached loop returned.
enum Exit {
    /// The stream ended (closed, failed or lost).
    End(End),
    /// The core closed the session (conflict, kick, shutdown); the error goes to the client.
    Closed(StreamError),
    /// The session was resumed on another connection; `None` if that one failed at once.
    Moved(Option<Box<Conn>>),
    /// The session was handed over to another cluster node (`handover`).
    HandedOff,
}

/// Why the detached loop returned.
enum DetachedExit {
    /// Resumed on this connection.
    Resumed(Box<Conn>),
    /// The session ends (timeout, close signal, queue overflow); the status for presence.
    End(Option<String>),
    /// The session was handed over to another cluster node (`handover`).
    HandedOff,
}

/// The outcome of a takeover request.
enum TakeOver {
    /// Not for this session; nothing changed.
    Rejected,
    /// Resumed on this connection.
    Attached(Box<Conn>),
    /// Resumption accepted but the new connection failed at once: the session is detached.
    Lost,
    /// Handed over to another cluster node: this task ends without a trace (`handover`).
    HandedOff,
}

/// A bound session, owned by its task; dropping it leaves the directory even if the task
/// panics (DESIGN.md §12).
struct Established {
    server: Arc<Server>,
    full: FullJid,
    bare: BareJid,
    host: String,
    id: SessionId,
    presence: PresenceState,
    pending_ping: Option<(String, Instant)>,
    keepalive: Option<Keepalive>,
    last_read: Instant,
    /// `mod_stream_mgmt` settings when the host runs it.
    sm_settings: Option<sm::Settings>,
    /// Stream management, once enabled.
    sm: Option<StreamManagement>,
    /// Client state indication, when the host runs `mod_client_state`.
    csi: Option<ClientState>,
    /// Given to the session manager with a resumable registration.
    takeover: mpsc::Sender<Takeover>,
    /// The client enabled XEP-0280 carbons (carried over by a handover).
    carbons: bool,
}

impl Drop for Established {
    fn drop(&mut self) {
        self.server.sm().unbind(&self.full, self.id);
        if let Some(sm_id) = self.sm.as_ref().and_then(StreamManagement::resume_id) {
            self.server.sm().forget_resumable(sm_id, self.id);
        }
    }
}

async fn established(
    server: Arc<Server>,
    mut conn: Conn,
    bound: Bound,
    restored: Option<handover::Restored>,
) {
    let (full, id, channels) = bound;
    // Counted while the session exists, attached or detached; the guard uncounts on any exit.
    // (A session resumed over another transport stays counted under its first one.)
    let _counted = server.counters().session_opened(conn.kind());
    let SessionChannels { inbox, close } = channels;
    let (takeover, takeovers) = mpsc::channel(1);
    let mut channels = Channels {
        inbox,
        close,
        takeovers,
    };
    let host = full.domain().to_owned();
    let config = server.config();
    let mut session = Established {
        server: server.clone(),
        bare: full.to_bare(),
        presence: PresenceState::new(full.clone(), id),
        id,
        keepalive: keepalive(&config, &host),
        sm_settings: module_options(&config, &host, STREAM_MGMT).map(sm::Settings::from_options),
        csi: module_options(&config, &host, CLIENT_STATE)
            .map(|o| ClientState::new(csi::Settings::from_options(o))),
        sm: None,
        full,
        host,
        pending_ping: None,
        last_read: Instant::now(),
        takeover,
        carbons: false,
    };
    drop(config);
    let mut link = Some(Box::new(conn));
    if let Some(restored) = restored
        && let Some(conn) = link.take()
    {
        link = session.restore(conn, restored).await;
    }
    let mut status: Option<String> = None;
    let mut handed_off = false;
    let (ending, conn) = loop {
        if let Some(mut conn) = link.take() {
            match session.attached(&mut conn, &mut channels).await {
                Exit::End(end) if end.is_loss() && session.resumable() => {
                    tracing::info!(jid = %session.full, "connection lost, session detached");
                    drop(conn);
                    if !session.detach() {
                        break (End::Eof, None);
                    }
                }
                Exit::End(end) => break (end, Some(conn)),
                Exit::Closed(error) => {
                    status = error.text.clone();
                    break (End::Stream(error), Some(conn));
                }
                Exit::Moved(next) => {
                    // The old connection is presumed dead; the client moved on.
                    conn.shutdown().await;
                    link = next;
                }
                Exit::HandedOff => {
                    conn.shutdown().await;
                    handed_off = true;
                    break (End::Eof, None);
                }
            }
        } else {
            let until = session
                .sm
                .as_ref()
                .and_then(StreamManagement::resume_timeout)
                .and_then(|t| Instant::now().checked_add(t));
            match session.detached(&mut channels, until).await {
                DetachedExit::Resumed(conn) => link = Some(conn),
                DetachedExit::End(text) => {
                    status = text;
                    break (End::Eof, None);
                }
                DetachedExit::HandedOff => {
                    handed_off = true;
                    break (End::Eof, None);
                }
            }
        }
    };
    if handed_off {
        // The session lives on another node now: no unavailable presence, nothing re-routed.
        tracing::info!(jid = %session.full, "session moved to another node");
        return;
    }
    session.finish(channels, status.as_deref()).await;
    if let Some(mut conn) = conn {
        match ending {
            End::Stream(e) => conn.fail(e).await,
            End::StreamXml(xml) => conn.fail_xml(&xml).await,
            End::Closed => conn.close().await,
            End::Io(e) => tracing::debug!(error = %e, "connection lost"),
            End::Eof => {}
        }
    }
    tracing::info!(jid = %session.full, "session closed");
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Established {
    /// True if a lost connection detaches the session instead of ending it.
    fn resumable(&self) -> bool {
        self.sm
            .as_ref()
            .is_some_and(|sm| sm.resume_timeout().is_some())
    }

    /// Serves the session over `conn` until the stream ends or moves.
    async fn attached(&mut self, conn: &mut Conn, ch: &mut Channels) -> Exit {
        self.last_read = Instant::now();
        self.pending_ping = None;
        loop {
            // Route everything already received before reading again (paced reads).
            loop {
                match conn.parser.next_event() {
                    Ok(Some(StreamEvent::Stanza(el))) => {
                        if let Err(end) = self.client_element(conn, el).await {
                            return Exit::End(end);
                        }
                    }
                    Ok(Some(StreamEvent::Close)) => return Exit::End(End::Closed),
                    Ok(Some(StreamEvent::Open(_))) => {
                        return Exit::End(End::Stream(StreamError::new(
                            StreamErrorCondition::InvalidXml,
                        )));
                    }
                    Ok(None) => break,
                    Err(e) => return Exit::End(End::Stream(e)),
                }
            }
            if conn.parser.buffered() == 0 {
                // An idle connection holds no parse or read buffer.
                conn.parser.shrink();
                if conn.drained {
                    conn.buf = Vec::new();
                }
            }
            let next_ping = self.keepalive.as_ref().map(|k| match &self.pending_ping {
                Some((_, sent)) => *sent + k.ack_timeout,
                None => self.last_read + k.interval,
            });
            let sm_timer = self
                .sm
                .as_ref()
                .and_then(StreamManagement::next_timer)
                .map(Instant::from_std);
            tokio::select! {
                // The close signal first: a replaced session's inbox closes at the same moment,
                // and the client must learn why (`<conflict/>`), not just see the socket drop.
                biased;
                changed = ch.close.changed() => {
                    let Some(error) = close_error(changed.is_ok(), &ch.close) else {
                        // Gone from the directory without a reason: nothing more will come.
                        return Exit::End(End::Closed);
                    };
                    // Stanzas queued before the close (e.g. the result of an account removal)
                    // still go out, ahead of the stream error.
                    while let Ok(SessionMsg::Stanza(stanza)) = ch.inbox.try_recv() {
                        if self.emit(conn, stanza).await.is_err() {
                            break;
                        }
                    }
                    return Exit::Closed(error);
                }
                takeover = ch.takeovers.recv() => {
                    let Some(takeover) = takeover else { continue };
                    match self.take_over(takeover, ch).await {
                        TakeOver::Rejected => {}
                        TakeOver::Attached(next) => return Exit::Moved(Some(next)),
                        TakeOver::Lost => return Exit::Moved(None),
                        TakeOver::HandedOff => return Exit::HandedOff,
                    }
                }
                msg = ch.inbox.recv() => {
                    let Some(SessionMsg::Stanza(stanza)) = msg else {
                        // Gone from the directory: an end, not a loss to detach from.
                        return Exit::End(End::Closed);
                    };
                    if let Err(end) = self.deliver(conn, stanza).await {
                        return Exit::End(end);
                    }
                }
                read = conn.read_more() => {
                    match read {
                        Ok(()) => self.last_read = Instant::now(),
                        Err(end) => return Exit::End(end),
                    }
                }
                () = sleep_until_opt(sm_timer) => {
                    if let Err(end) = self.sm_timer(conn).await {
                        return Exit::End(end);
                    }
                }
                () = sleep_until_opt(next_ping) => {
                    if let Err(end) = self.keepalive_timer(conn).await {
                        return Exit::End(end);
                    }
                }
            }
        }
    }

    /// The connection is gone but the session may be resumed: what the client was not sent
    /// yet joins the unacknowledged queue. False if that overflows it (the session ends).
    fn detach(&mut self) -> bool {
        self.pending_ping = None;
        let held = self.csi.as_mut().map(ClientState::set_active);
        let Some(sm) = self.sm.as_mut() else {
            return false;
        };
        let now = Instant::now().into_std();
        for stanza in held.into_iter().flatten() {
            if sm.on_sent(stanza, now, unix_now()).is_err() {
                return false;
            }
        }
        true
    }

    /// Serves a detached session until it is resumed or ends (`until` is the resumption
    /// deadline).
    async fn detached(&mut self, ch: &mut Channels, until: Option<Instant>) -> DetachedExit {
        loop {
            tokio::select! {
                biased;
                changed = ch.close.changed() => {
                    let error = close_error(changed.is_ok(), &ch.close);
                    tracing::info!(jid = %self.full, "detached session closed");
                    return DetachedExit::End(error.and_then(|e| e.text));
                }
                takeover = ch.takeovers.recv() => {
                    let Some(takeover) = takeover else { continue };
                    match self.take_over(takeover, ch).await {
                        TakeOver::Attached(conn) => return DetachedExit::Resumed(conn),
                        TakeOver::HandedOff => return DetachedExit::HandedOff,
                        TakeOver::Rejected | TakeOver::Lost => {}
                    }
                }
                msg = ch.inbox.recv() => {
                    let Some(SessionMsg::Stanza(stanza)) = msg else {
                        return DetachedExit::End(None);
                    };
                    if !self.receive_hook(&stanza).await {
                        continue;
                    }
                    let Some(sm) = self.sm.as_mut() else {
                        return DetachedExit::End(None);
                    };
                    if sm.on_sent(stanza, Instant::now().into_std(), unix_now()).is_err() {
                        tracing::info!(jid = %self.full, "too many unacknowledged stanzas for a detached session");
                        return DetachedExit::End(None);
                    }
                }
                () = sleep_until_opt(until) => {
                    tracing::info!(jid = %self.full, "session resumption timed out");
                    return DetachedExit::End(None);
                }
            }
        }
    }

    /// A resuming connection wants this session (XEP-0198 §5).
    async fn take_over(&mut self, takeover: Takeover, ch: &mut Channels) -> TakeOver {
        let resume = match takeover.downcast::<Resume>() {
            Ok(resume) => resume,
            // A client resuming through another cluster node.
            Err(other) => {
                return match other.downcast::<starling_core::handover::HandoverRequest>() {
                    Ok(request) => self.hand_off(*request, ch).await,
                    Err(_) => TakeOver::Rejected,
                };
            }
        };
        let Resume {
            mut conn,
            user,
            previd,
            h,
            reply,
        } = *resume;
        let sm = match self.sm.as_mut() {
            Some(sm) if user == self.bare && sm.resume_id() == Some(previd.as_str()) => sm,
            _ => {
                let _ = reply.send(Err(Box::new(conn)));
                return TakeOver::Rejected;
            }
        };
        let resend = match sm.on_resume(h) {
            Ok(resend) => resend,
            Err(too_high) => {
                // The new stream is broken; this session stays as it was.
                let _ = reply.send(Ok(()));
                conn.fail_xml(&too_high.stream_error_xml()).await;
                return TakeOver::Rejected;
            }
        };
        let mut conn = Box::new(conn);
        let resumed = sm.resumed_element(&previd);
        let _ = reply.send(Ok(()));
        tracing::info!(jid = %self.full, peer = %conn.peer, resent = resend.len(), "session resumed");
        if conn.write_element(&resumed).await.is_err() {
            return TakeOver::Lost;
        }
        for stanza in &resend {
            if conn.write(&stanza.bytes()).await.is_err() {
                return TakeOver::Lost;
            }
        }
        if !resend.is_empty()
            && let Some(sm) = self.sm.as_mut()
        {
            // Learn soon what the client got of the resent stanzas.
            let request = format!("<r xmlns='{}'/>", sm::NS);
            if conn.write(request.as_bytes()).await.is_err() {
                return TakeOver::Lost;
            }
            sm.on_request_sent(Instant::now().into_std());
        }
        TakeOver::Attached(conn)
    }

    /// The session ends: leave the directory, tell contacts, and give each stanza the client
    /// never acknowledged its fate (re-routed, bounced or dropped).
    async fn finish(&mut self, mut ch: Channels, status: Option<&str>) {
        // Leave the directory before broadcasting so nothing more is queued for us.
        self.server.sm().unbind(&self.full, self.id);
        if let Some(sm_id) = self.sm.as_ref().and_then(StreamManagement::resume_id) {
            self.server.sm().forget_resumable(sm_id, self.id);
        }
        // A connection that wanted to resume us gets `<failed/>` and may bind instead.
        ch.takeovers.close();
        while let Ok(takeover) = ch.takeovers.try_recv() {
            if let Ok(resume) = takeover.downcast::<Resume>() {
                let Resume { conn, reply, .. } = *resume;
                let _ = reply.send(Err(Box::new(conn)));
            }
        }
        let mut late = Vec::new();
        while let Ok(SessionMsg::Stanza(stanza)) = ch.inbox.try_recv() {
            late.push(stanza);
        }
        let server = self.server.clone();
        presence::session_closed(&server, &mut self.presence, status).await;
        if let Some(modules) = server.host_modules(&self.host) {
            let mut arg = SessionClosed {
                session: self.full.clone(),
            };
            modules.hooks().session_closed.run(&server, &mut arg).await;
        }
        let Some(sm) = self.sm.as_mut() else {
            return;
        };
        let mut unacked = sm.take_unacked();
        let now = unix_now();
        unacked.extend(late.into_iter().map(|stanza| Unacked {
            stanza,
            queued_at: now,
        }));
        if unacked.is_empty() {
            return;
        }
        let resend = match self.sm_settings.as_ref().map(|s| s.resend_on_timeout) {
            Some(ResendOnTimeout::Never) => false,
            Some(ResendOnTimeout::IfOffline) => server.sm().sessions_of(&self.bare).is_empty(),
            Some(ResendOnTimeout::Always) | None => true,
        };
        tracing::debug!(jid = %self.full, count = unacked.len(), resend, "routing unacknowledged stanzas");
        for Unacked { stanza, queued_at } in unacked {
            match sm::fate(&stanza, resend) {
                Fate::Reroute => {
                    let el = sm::with_delay(&stanza, &self.host, queued_at);
                    if let Ok(again) = Stanza::new(el, stanza.from().clone(), stanza.to().clone()) {
                        server.route(again).await;
                    }
                }
                Fate::Bounce => {
                    starling_core::router::bounce_with(
                        &server,
                        &stanza,
                        StanzaError::new(StanzaErrorCondition::ServiceUnavailable)
                            .with_text("User session terminated"),
                    )
                    .await;
                }
                Fate::Drop => {}
            }
        }
    }

    /// A stanza routed to this session: hooks, client state, then the wire.
    async fn deliver(&mut self, conn: &mut Conn, stanza: Arc<Stanza>) -> Result<(), End> {
        if !self.receive_hook(&stanza).await {
            return Ok(());
        }
        let out = match self.csi.as_mut() {
            Some(csi) => csi.outgoing(stanza),
            None => vec![stanza],
        };
        for stanza in out {
            self.emit(conn, stanza).await?;
        }
        Ok(())
    }

    /// Writes a stanza, counting it for stream management.
    async fn emit(&mut self, conn: &mut Conn, stanza: Arc<Stanza>) -> Result<(), End> {
        let request = match self.sm.as_mut() {
            Some(sm) => sm
                .on_sent(stanza.clone(), Instant::now().into_std(), unix_now())
                .map_err(|_| {
                    End::Stream(
                        StreamError::new(StreamErrorCondition::PolicyViolation)
                            .with_text("too many unacknowledged stanzas"),
                    )
                })?,
            None => false,
        };
        conn.write(&stanza.bytes()).await.map_err(End::Io)?;
        self.server.counters().stanza_delivered(stanza.kind());
        if request {
            self.request_ack(conn).await?;
        }
        Ok(())
    }

    async fn request_ack(&mut self, conn: &mut Conn) -> Result<(), End> {
        let request = format!("<r xmlns='{}'/>", sm::NS);
        conn.write(request.as_bytes()).await.map_err(End::Io)?;
        if let Some(sm) = self.sm.as_mut() {
            sm.on_request_sent(Instant::now().into_std());
        }
        Ok(())
    }

    async fn sm_timer(&mut self, conn: &mut Conn) -> Result<(), End> {
        let Some(sm) = self.sm.as_ref() else {
            return Ok(());
        };
        match sm.on_timer(Instant::now().into_std()) {
            TimerAction::Nothing => Ok(()),
            TimerAction::RequestAck => self.request_ack(conn).await,
            TimerAction::AckTimedOut => {
                // ejabberd's ack_timeout: the connection is presumed dead (a resumable session
                // detaches).
                tracing::info!(jid = %self.full, "timed out waiting for stream acknowledgement");
                Err(End::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "stream management ack timeout",
                )))
            }
        }
    }

    async fn keepalive_timer(&mut self, conn: &mut Conn) -> Result<(), End> {
        let Some(kill) = self.keepalive.as_ref().map(|k| k.kill) else {
            return Ok(());
        };
        if self.pending_ping.is_some() {
            self.pending_ping = None;
            if kill {
                return Err(End::Stream(
                    StreamError::new(StreamErrorCondition::ConnectionTimeout)
                        .with_text("no answer to ping"),
                ));
            }
            self.last_read = Instant::now();
            return Ok(());
        }
        let ping_id = format!("ping{:016x}", rand::random::<u64>());
        let mut iq = element("iq", ns::CLIENT, &[("type", "get"), ("id", &ping_id)]);
        iq.append_child(element("ping", ns::PING, &[]));
        let host = Jid::parse(&self.host).map_err(|_| End::Eof)?;
        let stanza = Stanza::new(iq, host, self.full.clone().into()).map_err(|_| End::Eof)?;
        self.emit(conn, Arc::new(stanza)).await?;
        self.pending_ping = Some((ping_id, Instant::now()));
        Ok(())
    }

    /// A first-level element from the client: a stanza, or a stream management or client
    /// state nonza on hosts that run those modules.
    async fn client_element(&mut self, conn: &mut Conn, el: Element) -> Result<(), End> {
        if Kind::of(&el).is_some() {
            self.client_stanza(el).await.map_err(End::Stream)?;
            if let Some(sm) = self.sm.as_mut() {
                sm.handled();
            }
            return Ok(());
        }
        let el_ns = el.ns();
        if el_ns == sm::NS && self.sm_settings.is_some() {
            return self.sm_nonza(conn, &el).await;
        }
        if el_ns == csi::NS
            && let Some(state) = self.csi.as_mut()
        {
            match el.name() {
                "inactive" => state.set_inactive(),
                "active" => {
                    for stanza in state.set_active() {
                        self.emit(conn, stanza).await?;
                    }
                }
                _ => {
                    return Err(End::Stream(StreamError::new(
                        StreamErrorCondition::UnsupportedStanzaType,
                    )));
                }
            }
            return Ok(());
        }
        Err(End::Stream(StreamError::new(
            StreamErrorCondition::UnsupportedStanzaType,
        )))
    }

    /// XEP-0198 elements after binding.
    async fn sm_nonza(&mut self, conn: &mut Conn, el: &Element) -> Result<(), End> {
        let unexpected = || sm_failed(StanzaErrorCondition::UnexpectedRequest);
        match el.name() {
            "enable" => {
                let Some(settings) = self.sm_settings.as_ref().filter(|_| self.sm.is_none()) else {
                    // §3: only one attempt to enable per stream.
                    return conn.write(unexpected().as_bytes()).await.map_err(End::Io);
                };
                let wants_resume = matches!(el.attr("resume"), Some("true" | "1"));
                let max = el.attr("max").and_then(|m| m.parse::<u64>().ok());
                let resume = wants_resume
                    .then(|| settings.resume_timeout_for(max))
                    .flatten()
                    .map(|timeout| (sm::new_id(), timeout));
                let state = StreamManagement::new(settings, resume);
                if let Some(sm_id) = state.resume_id() {
                    self.server.sm().register_resumable(
                        sm_id,
                        Resumable {
                            jid: self.full.clone(),
                            id: self.id,
                            takeover: self.takeover.clone(),
                        },
                    );
                }
                let enabled = state.enabled_xml();
                self.sm = Some(state);
                conn.write(enabled.as_bytes()).await.map_err(End::Io)
            }
            "r" => match self.sm.as_ref() {
                Some(sm) => {
                    let ack = sm.ack_xml();
                    conn.write(ack.as_bytes()).await.map_err(End::Io)
                }
                None => conn.write(unexpected().as_bytes()).await.map_err(End::Io),
            },
            "a" => {
                let Some(sm) = self.sm.as_mut() else {
                    return Ok(());
                };
                let Some(h) = el.attr("h").and_then(|h| h.parse::<u32>().ok()) else {
                    return Err(End::Stream(
                        StreamError::new(StreamErrorCondition::BadFormat)
                            .with_text("<a/> needs a numeric 'h'"),
                    ));
                };
                sm.on_ack(h)
                    .map_err(|too_high| End::StreamXml(too_high.stream_error_xml()))
            }
            // §5: resumption is only possible before binding.
            "resume" => conn.write(unexpected().as_bytes()).await.map_err(End::Io),
            _ => Err(End::Stream(StreamError::new(
                StreamErrorCondition::UnsupportedStanzaType,
            ))),
        }
    }

    /// `user_receive_packet`: false if a module consumed the stanza (privacy lists).
    async fn receive_hook(&self, stanza: &Arc<Stanza>) -> bool {
        let Some(modules) = self.server.host_modules(&self.host) else {
            return true;
        };
        if modules.hooks().user_receive_packet.is_empty() {
            return true;
        }
        let mut arg = UserReceivePacket {
            session: self.full.clone(),
            stanza: stanza.clone(),
        };
        modules
            .hooks()
            .user_receive_packet
            .run(&self.server, &mut arg)
            .await
            == HookResult::Continue
    }

    /// A first-level element from the bound client (ejabberd's `user_send_packet` point).
    async fn client_stanza(&mut self, mut el: Element) -> Result<(), StreamError> {
        let Some(kind) = Kind::of(&el) else {
            return Err(StreamError::new(
                StreamErrorCondition::UnsupportedStanzaType,
            ));
        };
        // RFC 6120 §8.1.2.1: the server stamps `from`; a different one is a spoofing attempt.
        if let Some(from) = el.attr("from") {
            match Jid::parse(from) {
                Ok(j) if j == self.full || j == self.bare => {}
                _ => return Err(StreamError::new(StreamErrorCondition::InvalidFrom)),
            }
        }
        set_attr(&mut el, "from", self.full.as_str());
        if let Some(on) = handover::carbons_toggle(&el, &self.bare) {
            self.carbons = on;
        }
        if kind == Kind::Iq
            && el.attr("type") == Some("set")
            && el.get_child("session", ns::SESSION).is_some()
            && el.attr("to").is_none_or(|to| to == self.host)
        {
            // RFC 3921 session establishment, which we advertise as optional (RFC 6121
            // appendix E): older clients (strophe.js) send it after binding; it is a no-op.
            let id = el.attr("id").unwrap_or_default();
            let result = element("iq", ns::CLIENT, &[("type", "result"), ("id", id)]);
            if let Ok(from) = Jid::parse(&self.host)
                && let Ok(reply) = Stanza::new(result, from, self.full.clone().into())
            {
                self.server.route(reply).await;
            }
            return Ok(());
        }
        if kind == Kind::Presence && el.attr("to").is_none() {
            // Presence broadcasts are not stanzas to anyone yet: no user_send_packet.
            presence::from_client(&self.server, &mut self.presence, el).await;
            return Ok(());
        }
        let to = match el.attr("to").map(Jid::parse) {
            None => Jid::from(self.bare.clone()),
            Some(Ok(to)) => to,
            Some(Err(_)) => {
                let own: Jid = self.bare.clone().into();
                if let Ok(stanza) = Stanza::new(el, self.full.clone().into(), own) {
                    starling_core::router::bounce(
                        &self.server,
                        &stanza,
                        StanzaErrorCondition::JidMalformed,
                    )
                    .await;
                }
                return Ok(());
            }
        };
        if kind == Kind::Iq
            && let Some((ping_id, _)) = &self.pending_ping
            && el.attr("id") == Some(ping_id.as_str())
            && matches!(
                IqType::parse(el.attr("type")),
                Some(IqType::Result | IqType::Error)
            )
        {
            self.pending_ping = None;
            return Ok(());
        }
        let stanza = match Stanza::new(el, self.full.clone().into(), to) {
            Ok(stanza) => stanza,
            Err(e) => {
                tracing::debug!(error = %e, "dropped unroutable stanza");
                return Ok(());
            }
        };
        let stanza = match self.server.host_modules(&self.host) {
            Some(modules) if !modules.hooks().user_send_packet.is_empty() => {
                let mut arg = UserSendPacket {
                    session: self.full.clone(),
                    stanza,
                };
                if modules
                    .hooks()
                    .user_send_packet
                    .run(&self.server, &mut arg)
                    .await
                    == HookResult::Stop
                {
                    return Ok(());
                }
                arg.stanza
            }
            _ => stanza,
        };
        if kind == Kind::Presence {
            presence::from_client(&self.server, &mut self.presence, stanza.into_element()).await;
        } else {
            self.server.route(stanza).await;
        }
        Ok(())
    }
}

/// The reason the core closed the session, if it did (`changed` is false when the directory
/// entry, and so the sender, is gone).
fn close_error(changed: bool, close: &watch::Receiver<Option<StreamError>>) -> Option<StreamError> {
    if changed {
        close.borrow().clone()
    } else {
        None
    }
}
