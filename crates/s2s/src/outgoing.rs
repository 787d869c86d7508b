//! Outgoing s2s connections (RFC 6120 §4–§6, XEP-0220 §2.1, XEP-0368): resolve, connect,
//! STARTTLS, authenticate with SASL EXTERNAL or dialback, then write queued stanzas until idle.
//! Also the short-lived connections a receiving server opens to verify a dialback key.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use minidom::Element;
use starling_config::S2sTls;
use starling_core::Server;
use starling_xmpp::codec::{Limits, StreamEvent};
use starling_xmpp::error::StanzaErrorCondition;
use starling_xmpp::ns;
use starling_xmpp::stanza::{Stanza, element};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::dialback::Dialback;
use crate::stream::{StreamFailure, Transport, XmlStream};
use crate::wire::{PeerFeatures, s2s_header, stanza_bytes};
use crate::{AuthMethod, Inner, SharedInfo, update};

/// Per-address connect timeout (a black-holed address must not eat the whole deadline).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection could not be established; decides the bounce condition.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OutError {
    /// No address, connection refused, or the peer refused us.
    #[error("{0}")]
    NotFound(String),
    /// A deadline passed.
    #[error("timed out")]
    Timeout,
}

impl From<StreamFailure> for OutError {
    fn from(f: StreamFailure) -> Self {
        match f {
            StreamFailure::Timeout => Self::Timeout,
            other => Self::NotFound(other.to_string()),
        }
    }
}

/// The outgoing connection task for `key = (local, remote)`.
pub(crate) async fn run(
    inner: Arc<Inner>,
    server: Arc<Server>,
    key: (String, String),
    id: u64,
    mut rx: mpsc::Receiver<Stanza>,
    info: SharedInfo,
    stop: CancellationToken,
) {
    let (local, remote) = (&key.0, &key.1);
    let deadline = Instant::now() + inner.settings.negotiation_timeout;
    let established = tokio::select! {
        r = establish(&inner, local, remote, &info, deadline) => r,
        () = stop.cancelled() => Err(OutError::NotFound("stopped".into())),
    };
    let condition = match established {
        Ok(mut stream) => {
            inner.succeeded(remote);
            tracing::info!(%local, %remote, "s2s outgoing connection established");
            let bounced = deliver(&inner, &mut stream, &mut rx, &stop).await;
            if let Some(s) = bounced {
                starling_core::router::bounce(
                    &server,
                    &s,
                    StanzaErrorCondition::RemoteServerTimeout,
                )
                .await;
            }
            stream.close().await;
            StanzaErrorCondition::RemoteServerTimeout
        }
        Err(e) => {
            tracing::warn!(%local, %remote, error = %e, "s2s outgoing connection failed");
            inner.failed(remote);
            match e {
                OutError::NotFound(_) => StanzaErrorCondition::RemoteServerNotFound,
                OutError::Timeout => StanzaErrorCondition::RemoteServerTimeout,
            }
        }
    };
    // Leave the table first so no new stanza is queued here, then bounce what is left.
    inner.unregister_outgoing(&key, id);
    rx.close();
    while let Ok(s) = rx.try_recv() {
        starling_core::router::bounce(&server, &s, condition).await;
    }
}

/// Writes queued stanzas until idle, closed, or stopped. Returns a stanza that could not be
/// written.
async fn deliver(
    inner: &Inner,
    stream: &mut XmlStream,
    rx: &mut mpsc::Receiver<Stanza>,
    stop: &CancellationToken,
) -> Option<Stanza> {
    let idle = inner.settings.config.timeout;
    let mut idle_at = Instant::now() + idle;
    let far = || Instant::now() + Duration::from_secs(365 * 24 * 3600);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return None,
            s = rx.recv() => {
                let s = s?;
                if stream.send(&stanza_bytes(&s, ns::SERVER)).await.is_err() {
                    return Some(s);
                }
                idle_at = Instant::now() + idle;
            }
            event = stream.next(far()) => match event {
                // Nothing is expected on an outgoing stream but keepalives (handled by the
                // parser) and the peer's close.
                Ok(StreamEvent::Stanza(el)) => {
                    tracing::debug!(name = el.name(), "ignoring element on outgoing s2s stream");
                }
                Ok(StreamEvent::Open(_)) => {}
                Ok(StreamEvent::Close) | Err(_) => return None,
            },
            () = tokio::time::sleep_until(idle_at) => return None,
        }
    }
}

/// Opens a stream from `local` to `remote` up to the point of authentication: connected,
/// header exchanged, TLS negotiated as policy asks. Returns the stream, the stream id the
/// receiving server gave, and its features.
pub(crate) async fn open(
    inner: &Inner,
    local: &str,
    remote: &str,
    info: Option<&SharedInfo>,
    deadline: Instant,
) -> Result<(XmlStream, String, PeerFeatures), OutError> {
    let policy = inner.settings.config.use_starttls;
    let targets = match inner.settings.config.static_routes.get(remote) {
        Some(addr) => vec![crate::resolve::Target {
            addr: *addr,
            direct_tls: false,
        }],
        None => tokio::time::timeout_at(deadline, inner.settings.resolver.resolve(remote))
            .await
            .map_err(|_| OutError::Timeout)?
            .map_err(|e| OutError::NotFound(e.to_string()))?,
    };
    let mut connected = None;
    let mut last_error = String::from("no address");
    for target in targets {
        let budget = deadline.min(Instant::now() + CONNECT_TIMEOUT);
        match tokio::time::timeout_at(budget, TcpStream::connect(target.addr)).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                connected = Some((tcp, target));
                break;
            }
            Ok(Err(e)) => last_error = format!("{}: {e}", target.addr),
            Err(_) => last_error = format!("{}: connect timed out", target.addr),
        }
        if Instant::now() >= deadline {
            return Err(OutError::Timeout);
        }
    }
    let Some((tcp, target)) = connected else {
        return Err(OutError::NotFound(last_error));
    };
    if let Some(info) = info {
        update(info, |i| i.addr = Some(target.addr));
    }
    let limits = Limits {
        max_stanza_size: Limits::PRE_AUTH_STANZA_SIZE,
        ..Limits::default()
    };
    let mut stream = XmlStream::new(Transport::Plain(tcp), ns::SERVER, limits);
    let tls_config = inner.client_tls(local);
    if target.direct_tls {
        let config = tls_config
            .clone()
            .ok_or_else(|| OutError::NotFound("no TLS configuration".into()))?;
        stream.connect_tls(config, remote, deadline).await?;
    }
    loop {
        stream
            .send(s2s_header(Some(local), Some(remote), None).as_bytes())
            .await?;
        let StreamEvent::Open(header) = stream.next(deadline).await? else {
            return Err(OutError::NotFound("no stream header".into()));
        };
        let Some(id) = header.id.clone() else {
            return Err(OutError::NotFound("the peer gave no stream id".into()));
        };
        let features = if header
            .version
            .as_deref()
            .is_some_and(|v| v.starts_with("1."))
        {
            match stream.next(deadline).await? {
                StreamEvent::Stanza(el) if el.name() == "features" => PeerFeatures::parse(&el),
                _ => return Err(OutError::NotFound("no stream features".into())),
            }
        } else {
            PeerFeatures::default()
        };
        let want_tls = policy != S2sTls::Disabled && !stream.is_secure();
        if want_tls && features.starttls {
            let Some(config) = tls_config.clone() else {
                return Err(OutError::NotFound("no TLS configuration".into()));
            };
            stream
                .send(&starling_xmpp::codec::to_bytes(&element(
                    "starttls",
                    ns::TLS,
                    &[],
                )))
                .await?;
            match stream.next(deadline).await? {
                StreamEvent::Stanza(el) if el.name() == "proceed" => {}
                _ => return Err(OutError::NotFound("STARTTLS refused".into())),
            }
            stream.connect_tls(config, remote, deadline).await?;
            if let Some(info) = info {
                update(info, |i| i.tls = true);
            }
            continue;
        }
        if !stream.is_secure() && matches!(policy, S2sTls::Required | S2sTls::RequiredTrusted) {
            stream.close().await;
            return Err(OutError::NotFound(
                "the peer does not offer STARTTLS, which s2s_use_starttls requires".into(),
            ));
        }
        if stream.is_secure()
            && let Some(info) = info
        {
            update(info, |i| i.tls = true);
        }
        return Ok((stream, id, features));
    }
}

/// Connects and authenticates `local` to `remote`.
async fn establish(
    inner: &Inner,
    local: &str,
    remote: &str,
    info: &SharedInfo,
    deadline: Instant,
) -> Result<XmlStream, OutError> {
    let policy = inner.settings.config.use_starttls;
    let (mut stream, id, features) = open(inner, local, remote, Some(info), deadline).await?;
    let peer_valid = stream
        .transport()
        .is_some_and(|t| inner.settings.trust.validates(&t.peer_chain(), remote));
    if policy == S2sTls::RequiredTrusted && !peer_valid {
        stream.close().await;
        return Err(OutError::NotFound(format!(
            "the certificate of {remote} does not validate, and s2s_use_starttls is required_trusted"
        )));
    }
    // RFC 6120 §13.7.2: EXTERNAL only when both certificates check out; the peer offering the
    // mechanism says ours did, `peer_valid` says theirs did.
    if stream.is_secure() && features.external && peer_valid {
        let authzid = base64::engine::general_purpose::STANDARD.encode(local);
        let mut auth = element("auth", ns::SASL, &[("mechanism", "EXTERNAL")]);
        auth.append_text_node(authzid);
        stream.send(&starling_xmpp::codec::to_bytes(&auth)).await?;
        match stream.next(deadline).await? {
            StreamEvent::Stanza(el) if el.name() == "success" && el.ns() == ns::SASL => {
                stream.restart();
                stream
                    .send(s2s_header(Some(local), Some(remote), None).as_bytes())
                    .await?;
                // Header, then (empty) features.
                match stream.next(deadline).await? {
                    StreamEvent::Open(_) => {}
                    _ => return Err(OutError::NotFound("no stream header after SASL".into())),
                }
                match stream.next(deadline).await? {
                    StreamEvent::Stanza(el) if el.name() == "features" => {}
                    _ => return Err(OutError::NotFound("no features after SASL".into())),
                }
                update(info, |i| i.auth = AuthMethod::External);
                return Ok(stream);
            }
            StreamEvent::Stanza(el) if el.name() == "failure" => {
                tracing::info!(%local, %remote, "SASL EXTERNAL refused; trying dialback");
            }
            _ => return Err(OutError::NotFound("unexpected answer to SASL".into())),
        }
    }
    if policy == S2sTls::RequiredTrusted {
        stream.close().await;
        return Err(OutError::NotFound(
            "SASL EXTERNAL failed and dialback is not allowed (required_trusted)".into(),
        ));
    }
    let key = inner.settings.secret.key(remote, local, &id);
    let request = Dialback::ResultRequest {
        from: local.to_owned(),
        to: remote.to_owned(),
        key,
    };
    stream
        .send(&crate::dialback::to_wire(&request.to_element()))
        .await?;
    loop {
        match stream.next(deadline).await? {
            StreamEvent::Stanza(el) => match Dialback::parse(&el) {
                Some(Dialback::ResultAnswer { from, to, valid })
                    if from == remote && to == local =>
                {
                    if valid {
                        update(info, |i| i.auth = AuthMethod::Dialback);
                        return Ok(stream);
                    }
                    stream.close().await;
                    return Err(OutError::NotFound(format!(
                        "{remote} refused our dialback key"
                    )));
                }
                _ => ignore(&el),
            },
            _ => return Err(OutError::NotFound("stream closed during dialback".into())),
        }
    }
}

fn ignore(el: &Element) {
    tracing::debug!(name = el.name(), ns = %el.ns(), "ignoring element during s2s negotiation");
}

/// As receiving server `local`, asks the authoritative server of `remote` whether `key` is
/// the one it issued for stream `id` (XEP-0220 §2.3). Any failure counts as invalid.
pub(crate) async fn verify(inner: &Inner, local: &str, remote: &str, id: &str, key: &str) -> bool {
    let deadline = Instant::now() + inner.settings.negotiation_timeout;
    let attempt = async {
        let (mut stream, _, _) = open(inner, local, remote, None, deadline).await.ok()?;
        let request = Dialback::VerifyRequest {
            from: local.to_owned(),
            to: remote.to_owned(),
            id: id.to_owned(),
            key: key.to_owned(),
        };
        stream
            .send(&crate::dialback::to_wire(&request.to_element()))
            .await
            .ok()?;
        let verdict = loop {
            match stream.next(deadline).await.ok()? {
                StreamEvent::Stanza(el) => match Dialback::parse(&el) {
                    Some(Dialback::VerifyAnswer {
                        id: answered,
                        valid,
                        ..
                    }) if answered == id => {
                        break valid;
                    }
                    _ => ignore(&el),
                },
                _ => return None,
            }
        };
        stream.close().await;
        Some(verdict)
    };
    let verdict = attempt.await.unwrap_or(false);
    tracing::info!(%local, %remote, valid = verdict, "dialback key verified with the authoritative server");
    verdict
}
