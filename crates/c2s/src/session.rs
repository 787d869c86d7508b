//! One client connection, from accept to close (DESIGN.md §2.3).
//!
//! Negotiation runs under a deadline (`negotiation_timeout`): header, STARTTLS, SASL, bind.
//! Once bound, one `select!` serves the socket, the session inbox, the close signal and the
//! keepalive timer. Reads are paced: the next read happens only after every complete stanza
//! already received has been routed, so a fast sender is slowed by TCP rather than buffered.
//! Writes are bounded by `send_timeout`: a client that stops reading is disconnected.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use starling_config::Config;
use starling_core::Server;
use starling_core::hooks::{HookResult, SessionClosed, UserReceivePacket, UserSendPacket};
use starling_core::module::StreamContext;
use starling_core::presence::{self, PresenceState};
use starling_core::sm::{BindError, SessionChannels, SessionId, SessionMsg};
use starling_xmpp::Element;
use starling_xmpp::codec::{self, Limits, STREAM_CLOSE, StreamEvent, StreamHeader, StreamParser};
use starling_xmpp::error::{
    ErrorType, StanzaError, StanzaErrorCondition, StreamError, StreamErrorCondition,
};
use starling_xmpp::jid::{BareJid, FullJid, Jid, nameprep, resourceprep};
use starling_xmpp::ns;
use starling_xmpp::sasl::{self, SaslError};
use starling_xmpp::scram::ChannelBindings;
use starling_xmpp::stanza::{IqType, Kind, Stanza, element, set_attr, text_element};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::Instrument;

use crate::auth::{Authenticator, Step};
use crate::features::{self, Offer, Phase};
use crate::transport::Transport;

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
}

struct Conn {
    io: Option<Transport>,
    parser: StreamParser,
    buf: Vec<u8>,
    peer: SocketAddr,
    header_sent: bool,
    host: Option<String>,
    send_timeout: Duration,
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
        if self.buf.len() < READ_CHUNK {
            self.buf.resize(READ_CHUNK, 0);
        }
        let Self { io, buf, .. } = self;
        let io = io.as_mut().ok_or(End::Eof)?;
        let n = io.read(buf).await.map_err(End::Io)?;
        if n == 0 {
            return Err(End::Eof);
        }
        let data = buf.get(..n).ok_or(End::Eof)?;
        self.parser.feed(data);
        Ok(())
    }

    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
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
        self.write(codec::stream_header(ns::CLIENT, &header).as_bytes())
            .await
    }

    /// Sends a stream error and closes (RFC 6120 §4.9.1.1); opens our stream first if needed.
    async fn fail(&mut self, error: StreamError) {
        tracing::info!(peer = %self.peer, condition = error.condition.name(), text = ?error.text, "stream error");
        if !self.header_sent {
            let _ = self.send_header().await;
        }
        let mut out = error.to_xml();
        out.push_str(STREAM_CLOSE);
        let _ = self.write(out.as_bytes()).await;
        self.shutdown().await;
    }

    async fn close(&mut self) {
        let _ = self.write(STREAM_CLOSE.as_bytes()).await;
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
        let mut conn = Conn {
            io: Some(io),
            parser: StreamParser::new(
                ns::CLIENT,
                Limits {
                    max_stanza_size: Limits::PRE_AUTH_STANZA_SIZE,
                    ..Limits::default()
                },
            ),
            buf: Vec::new(),
            peer,
            header_sent: false,
            host: None,
            send_timeout: settings.send_timeout,
        };
        let negotiated = timeout_at(deadline, negotiate(&server, &settings, &mut conn)).await;
        let bound = match negotiated {
            Ok(Some(bound)) => bound,
            Ok(None) => return,
            Err(_) => {
                conn.fail(
                    StreamError::new(StreamErrorCondition::ConnectionTimeout)
                        .with_text("negotiation took too long"),
                )
                .await;
                return;
            }
        };
        tracing::Span::current().record("jid", tracing::field::display(&bound.0));
        established(server, conn, bound).await;
    }
    .instrument(span)
    .await;
}

/// The outcome of negotiation: a bound session.
type Bound = (FullJid, SessionId, SessionChannels);

async fn negotiate(
    server: &Arc<Server>,
    settings: &ListenerSettings,
    conn: &mut Conn,
) -> Option<Bound> {
    let mut phase = if conn.io.as_ref().is_some_and(Transport::is_secure) {
        Phase::Secure
    } else {
        Phase::Plain
    };
    let mut user: Option<BareJid> = None;
    let mut auth: Option<Authenticator> = None;
    let mut failures = 0u32;
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
                            Ok(secure) => conn.io = Some(secure),
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
                                    tracing::info!(peer = %conn.peer, user = tried.as_deref().unwrap_or("-"), condition = error.condition(), "authentication failed");
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
                                Ok(Some(bound)) => return Some(bound),
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

/// Removes the session from the directory even if the task panics (DESIGN.md §12).
struct Unbind {
    server: Arc<Server>,
    jid: FullJid,
    id: SessionId,
}

impl Drop for Unbind {
    fn drop(&mut self) {
        self.server.sm().unbind(&self.jid, self.id);
    }
}

struct Established {
    server: Arc<Server>,
    full: FullJid,
    bare: BareJid,
    host: String,
    presence: PresenceState,
    pending_ping: Option<(String, Instant)>,
}

async fn established(server: Arc<Server>, mut conn: Conn, bound: Bound) {
    let (full, id, channels) = bound;
    let SessionChannels {
        mut inbox,
        mut close,
    } = channels;
    let _guard = Unbind {
        server: server.clone(),
        jid: full.clone(),
        id,
    };
    let host = full.domain().to_owned();
    let keepalive = keepalive(&server.config(), &host);
    let mut session = Established {
        server: server.clone(),
        bare: full.to_bare(),
        presence: PresenceState::new(full.clone(), id),
        full,
        host,
        pending_ping: None,
    };
    let mut last_read = Instant::now();
    let mut status: Option<String> = None;
    // Stanzas already parsed from the bytes that completed negotiation.
    let ending: End = 'outer: loop {
        // Route everything already received before reading again (paced reads).
        loop {
            match conn.parser.next_event() {
                Ok(Some(StreamEvent::Stanza(el))) => {
                    if let Err(e) = session.client_stanza(el).await {
                        break 'outer End::Stream(e);
                    }
                }
                Ok(Some(StreamEvent::Close)) => {
                    break 'outer End::Closed;
                }
                Ok(Some(StreamEvent::Open(_))) => {
                    break 'outer End::Stream(StreamError::new(StreamErrorCondition::InvalidXml));
                }
                Ok(None) => break,
                Err(e) => {
                    break 'outer End::Stream(e);
                }
            }
        }
        if conn.parser.buffered() == 0 {
            // An idle connection holds no parse buffer.
            conn.parser.shrink();
        }
        let next_ping = keepalive.as_ref().map(|k| match &session.pending_ping {
            Some((_, sent)) => *sent + k.ack_timeout,
            None => last_read + k.interval,
        });
        tokio::select! {
            // The close signal first: a replaced session's inbox closes at the same moment, and
            // the client must learn why (`<conflict/>`), not just see the socket drop.
            biased;
            changed = close.changed() => {
                let error = if changed.is_ok() { close.borrow().clone() } else { None };
                if let Some(error) = error {
                    // Stanzas queued before the close (e.g. the result of an account removal)
                    // still go out, ahead of the stream error.
                    while let Ok(SessionMsg::Stanza(stanza)) = inbox.try_recv() {
                        if conn.write(&stanza.bytes()).await.is_err() {
                            break;
                        }
                    }
                    status = error.text.clone();
                    break 'outer End::Stream(error);
                }
            }
            msg = inbox.recv() => {
                match msg {
                    Some(SessionMsg::Stanza(stanza)) => {
                        if !session.receive_hook(&stanza).await {
                            continue;
                        }
                        if conn.write(&stanza.bytes()).await.is_err() {
                            break 'outer End::Eof;
                        }
                    }
                    None => break 'outer End::Eof,
                }
            }
            read = conn.read_more() => {
                match read {
                    Ok(()) => {
                        last_read = Instant::now();
                    }
                    Err(end) => {
                        break 'outer end;
                    }
                }
            }
            () = sleep_until_opt(next_ping) => {
                let Some(k) = keepalive.as_ref() else { continue };
                if session.pending_ping.is_some() {
                    session.pending_ping = None;
                    if k.kill {
                        break 'outer End::Stream(StreamError::new(StreamErrorCondition::ConnectionTimeout).with_text("no answer to ping"));
                    }
                    last_read = Instant::now();
                } else {
                    let ping_id = format!("ping{:016x}", rand::random::<u64>());
                    let mut iq = element("iq", ns::CLIENT, &[("type", "get"), ("id", &ping_id), ("from", &session.host), ("to", session.full.as_str())]);
                    iq.append_child(element("ping", ns::PING, &[]));
                    if conn.write_element(&iq).await.is_err() {
                        break 'outer End::Eof;
                    }
                    session.pending_ping = Some((ping_id, Instant::now()));
                }
            }
        }
    };
    // Leave the directory before broadcasting so nothing more is queued for us.
    let server2 = session.server.clone();
    server2.sm().unbind(&session.full, id);
    presence::session_closed(&server2, &mut session.presence, status.as_deref()).await;
    if let Some(modules) = server2.host_modules(&session.host) {
        let mut arg = SessionClosed {
            session: session.full.clone(),
        };
        modules.hooks().session_closed.run(&server2, &mut arg).await;
    }
    match ending {
        End::Stream(e) => conn.fail(e).await,
        End::Closed => conn.close().await,
        End::Io(e) => tracing::debug!(error = %e, "connection lost"),
        End::Eof => {}
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
    /// `user_receive_packet`: false if a module consumed the stanza (privacy lists, CSI).
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
