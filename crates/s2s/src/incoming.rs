//! Incoming s2s streams (RFC 6120 §4–§6 as receiving entity, XEP-0220 as receiving and
//! authoritative server, XEP-0368 direct TLS).
//!
//! A stream authenticates domain pairs (peer domain, our domain): with SASL EXTERNAL for the
//! domain in the header's `from` when its certificate validates, or with one dialback
//! `db:result` per pair, verified by connecting to the peer's authoritative server. Stanzas are
//! accepted only for authenticated pairs (`<invalid-from/>` otherwise). `db:verify` requests are
//! answered at any time: that is how other servers check keys we issued.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use minidom::Element;
use starling_config::S2sTls;
use starling_core::Server;
use starling_xmpp::codec::{Limits, StreamEvent, to_bytes};
use starling_xmpp::error::{StreamError, StreamErrorCondition};
use starling_xmpp::jid::Jid;
use starling_xmpp::ns;
use starling_xmpp::stanza::{Kind, Stanza, element};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::dialback::{self, Dialback};
use crate::stream::{StreamFailure, Transport, XmlStream};
use crate::wire::{features_bytes, incoming_features, rewrite_ns, s2s_header};
use crate::{AuthMethod, ConnInfo, Inner, outgoing, stream_id, update};

/// Per-connection state of an incoming stream.
struct State {
    /// Our domain the current stream header asked for.
    local: Option<String>,
    /// The header's `from`.
    peer: Option<String>,
    /// The current stream id (changes at each restart).
    id: String,
    /// Authenticated (peer domain, our domain) pairs.
    pairs: HashSet<(String, String)>,
}

/// Serves one incoming connection to its end.
pub(crate) async fn run(
    inner: Arc<Inner>,
    server: Arc<Server>,
    tcp: TcpStream,
    peer: SocketAddr,
    direct_tls: bool,
    max_stanza_size: usize,
    shaper: Option<u64>,
) {
    let info = Arc::new(Mutex::new(ConnInfo {
        local: String::new(),
        remote: "?".into(),
        addr: Some(peer),
        tls: false,
        auth: AuthMethod::None,
    }));
    let (id, stop) = inner.register_incoming(info.clone());
    let limits = Limits {
        max_stanza_size: Limits::PRE_AUTH_STANZA_SIZE,
        ..Limits::default()
    };
    let mut stream = XmlStream::new(Transport::Plain(tcp), ns::SERVER, limits);
    if let Some(rate) = shaper {
        stream.set_shaper(rate);
    }
    let deadline = Instant::now() + inner.settings.negotiation_timeout;
    let outcome = tokio::select! {
        r = serve(&inner, &server, &mut stream, &info, direct_tls, max_stanza_size, deadline) => r,
        () = stop.cancelled() => Err(StreamError::new(StreamErrorCondition::SystemShutdown)),
    };
    match outcome {
        Ok(()) => stream.close().await,
        Err(e) => {
            tracing::info!(%peer, error = %e, "s2s incoming stream closed with an error");
            stream.fail(&e).await;
        }
    }
    inner.unregister_incoming(id);
}

async fn serve(
    inner: &Inner,
    server: &Server,
    stream: &mut XmlStream,
    info: &crate::SharedInfo,
    direct_tls: bool,
    max_stanza_size: usize,
    deadline: Instant,
) -> Result<(), StreamError> {
    let policy = inner.settings.config.use_starttls;
    if direct_tls {
        stream
            .accept_tls(inner.server_tls.clone(), deadline)
            .await
            .map_err(|e| failure(e, false))?;
        update(info, |i| i.tls = true);
    }
    let mut state = State {
        local: None,
        peer: None,
        id: String::new(),
        pairs: HashSet::new(),
    };
    let idle = inner.settings.config.timeout;
    loop {
        // Negotiation has one deadline; an authenticated stream may idle for s2s_timeout.
        let until = if state.pairs.is_empty() {
            deadline
        } else {
            Instant::now() + idle
        };
        let event = match stream.next(until).await {
            Ok(e) => e,
            Err(StreamFailure::Closed(_)) => return Ok(()),
            Err(e) => return Err(failure(e, state.local.is_some())),
        };
        match event {
            StreamEvent::Open(header) => {
                let to = header.to.as_deref().map(str::to_ascii_lowercase);
                let from = header.from.as_deref().map(str::to_ascii_lowercase);
                state.id = stream_id();
                let ours = to.as_deref().filter(|d| is_served(server, d));
                // Our header first: a stream error must be sent inside our stream.
                stream
                    .send(
                        s2s_header(ours.or(to.as_deref()), from.as_deref(), Some(&state.id))
                            .as_bytes(),
                    )
                    .await
                    .map_err(|e| failure(e, true))?;
                let Some(local) = ours else {
                    return Err(StreamError::new(StreamErrorCondition::HostUnknown)
                        .with_text("this server does not serve that domain"));
                };
                state.local = Some(local.to_owned());
                state.peer = from.clone();
                update(info, |i| {
                    i.local = local.to_owned();
                    if let Some(f) = &from {
                        i.remote = f.clone();
                    }
                });
                if header
                    .version
                    .as_deref()
                    .is_some_and(|v| v.starts_with("1."))
                {
                    let secure = stream.is_secure();
                    let starttls = (!secure && policy != S2sTls::Disabled)
                        .then_some(matches!(policy, S2sTls::Required | S2sTls::RequiredTrusted));
                    let external = peer_certificate_valid(inner, stream, from.as_deref())
                        && !from
                            .as_ref()
                            .is_some_and(|f| state.pairs.contains(&(f.clone(), local.to_owned())));
                    let dialback = dialback_allowed(policy, secure);
                    let features = incoming_features(starttls, external, dialback);
                    stream
                        .send(&features_bytes(&features))
                        .await
                        .map_err(|e| failure(e, true))?;
                }
            }
            StreamEvent::Close => return Ok(()),
            StreamEvent::Stanza(el) => {
                if el.ns() == ns::TLS && el.name() == "starttls" {
                    if stream.is_secure() || policy == S2sTls::Disabled {
                        return Err(StreamError::new(StreamErrorCondition::PolicyViolation)
                            .with_text("STARTTLS not available"));
                    }
                    stream
                        .send(&to_bytes(&element("proceed", ns::TLS, &[])))
                        .await
                        .map_err(|e| failure(e, true))?;
                    stream
                        .accept_tls(inner.server_tls.clone(), deadline)
                        .await
                        .map_err(|e| failure(e, true))?;
                    update(info, |i| i.tls = true);
                } else if el.ns() == ns::SASL && el.name() == "auth" {
                    sasl_external(
                        inner,
                        server,
                        stream,
                        &mut state,
                        info,
                        &el,
                        max_stanza_size,
                    )
                    .await?;
                } else if el.ns() == dialback::NS {
                    on_dialback(
                        inner,
                        server,
                        stream,
                        &mut state,
                        info,
                        &el,
                        max_stanza_size,
                    )
                    .await?;
                } else if Kind::of(&el).is_some() {
                    on_stanza(server, &state, el).await?;
                } else {
                    return Err(StreamError::new(
                        StreamErrorCondition::UnsupportedStanzaType,
                    ));
                }
            }
        }
    }
}

fn is_served(server: &Server, domain: &str) -> bool {
    server.is_local(domain) || server.route_for(domain).is_some()
}

/// Dialback is refused under `required_trusted`, and without TLS under `required`.
fn dialback_allowed(policy: S2sTls, secure: bool) -> bool {
    match policy {
        S2sTls::Disabled | S2sTls::Optional => true,
        S2sTls::Required => secure,
        S2sTls::RequiredTrusted => false,
    }
}

fn peer_certificate_valid(inner: &Inner, stream: &XmlStream, domain: Option<&str>) -> bool {
    match (stream.transport(), domain) {
        (Some(t), Some(d)) if t.is_secure() => inner.settings.trust.validates(&t.peer_chain(), d),
        _ => false,
    }
}

fn failure(f: StreamFailure, _header_sent: bool) -> StreamError {
    match f {
        StreamFailure::Protocol(e) => e,
        StreamFailure::Timeout => StreamError::new(StreamErrorCondition::ConnectionTimeout),
        other => {
            StreamError::new(StreamErrorCondition::UndefinedCondition).with_text(other.to_string())
        }
    }
}

fn authenticated(
    stream: &mut XmlStream,
    state: &mut State,
    info: &crate::SharedInfo,
    peer: &str,
    local: &str,
    method: AuthMethod,
    max_stanza_size: usize,
) {
    state.pairs.insert((peer.to_owned(), local.to_owned()));
    stream.set_limits(Limits {
        max_stanza_size,
        ..Limits::default()
    });
    update(info, |i| {
        i.remote = peer.to_owned();
        i.local = local.to_owned();
        i.auth = method;
    });
    tracing::info!(%peer, %local, method = ?method, "s2s incoming stream authenticated");
}

async fn sasl_external(
    inner: &Inner,
    server: &Server,
    stream: &mut XmlStream,
    state: &mut State,
    info: &crate::SharedInfo,
    el: &Element,
    max_stanza_size: usize,
) -> Result<(), StreamError> {
    let (Some(peer), Some(local)) = (state.peer.clone(), state.local.clone()) else {
        return sasl_failure(stream, "not-authorized").await;
    };
    let authzid = match el.text().trim() {
        "" | "=" => Some(peer.clone()),
        text => base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .map(|s| s.to_ascii_lowercase()),
    };
    let ok = el.attr("mechanism") == Some("EXTERNAL")
        && authzid.as_deref() == Some(peer.as_str())
        && peer_certificate_valid(inner, stream, Some(&peer))
        && inner.allowed(server, &peer, None);
    if !ok {
        tracing::warn!(%peer, "s2s SASL EXTERNAL refused");
        return sasl_failure(stream, "not-authorized").await;
    }
    stream
        .send(&to_bytes(&element("success", ns::SASL, &[])))
        .await
        .map_err(|e| failure(e, true))?;
    stream.restart();
    authenticated(
        stream,
        state,
        info,
        &peer,
        &local,
        AuthMethod::External,
        max_stanza_size,
    );
    Ok(())
}

async fn sasl_failure(stream: &mut XmlStream, condition: &str) -> Result<(), StreamError> {
    let mut f = element("failure", ns::SASL, &[]);
    f.append_child(element(condition, ns::SASL, &[]));
    stream
        .send(&to_bytes(&f))
        .await
        .map_err(|e| failure(e, true))
}

async fn on_dialback(
    inner: &Inner,
    server: &Server,
    stream: &mut XmlStream,
    state: &mut State,
    info: &crate::SharedInfo,
    el: &Element,
    max_stanza_size: usize,
) -> Result<(), StreamError> {
    let policy = inner.settings.config.use_starttls;
    match Dialback::parse(el) {
        Some(Dialback::ResultRequest { from, to, key }) => {
            let refusal = if !is_served(server, &to) {
                Some("item-not-found")
            } else if !dialback_allowed(policy, stream.is_secure())
                || !inner.allowed(server, &from, None)
            {
                Some("policy-violation")
            } else if !crate::wire::is_dns_domain(&from)
                && !inner.settings.config.static_routes.contains_key(&from)
            {
                Some("remote-server-not-found")
            } else {
                None
            };
            if let Some(condition) = refusal {
                tracing::warn!(peer = %from, local = %to, condition, "s2s dialback request refused");
                return stream
                    .send(&dialback::to_wire(&dialback::result_error(
                        &to, &from, condition,
                    )))
                    .await
                    .map_err(|e| failure(e, true));
            }
            let valid = outgoing::verify(inner, &to, &from, &state.id, &key).await;
            let answer = Dialback::ResultAnswer {
                from: to.clone(),
                to: from.clone(),
                valid,
            };
            stream
                .send(&dialback::to_wire(&answer.to_element()))
                .await
                .map_err(|e| failure(e, true))?;
            if !valid {
                return Err(StreamError::new(StreamErrorCondition::NotAuthorized)
                    .with_text("dialback key not confirmed by the authoritative server"));
            }
            authenticated(
                stream,
                state,
                info,
                &from,
                &to,
                AuthMethod::Dialback,
                max_stanza_size,
            );
            Ok(())
        }
        Some(Dialback::VerifyRequest { from, to, id, key }) => {
            let valid = server.is_local(&to) && inner.settings.secret.verify(&from, &to, &id, &key);
            let answer = Dialback::VerifyAnswer {
                from: to,
                to: from,
                id,
                valid,
            };
            stream
                .send(&dialback::to_wire(&answer.to_element()))
                .await
                .map_err(|e| failure(e, true))
        }
        _ => Ok(()),
    }
}

async fn on_stanza(server: &Server, state: &State, el: Element) -> Result<(), StreamError> {
    let from = el.attr("from").and_then(|f| Jid::parse(f).ok());
    let to = el.attr("to").and_then(|t| Jid::parse(t).ok());
    let (Some(from), Some(to)) = (from, to) else {
        return Err(StreamError::new(StreamErrorCondition::ImproperAddressing));
    };
    let pair = (from.domain().to_owned(), to.domain().to_owned());
    if !state.pairs.contains(&pair) {
        tracing::warn!(from = %from.domain(), to = %to.domain(), "s2s stanza from a domain the stream did not authenticate");
        return Err(StreamError::new(StreamErrorCondition::InvalidFrom));
    }
    let el = rewrite_ns(&el, ns::SERVER, ns::CLIENT);
    match Stanza::new(el, from, to) {
        Ok(stanza) => {
            // Bounded in time like c2s's paced reads: routing runs to completion here.
            let _ = tokio::time::timeout(Duration::from_secs(30), server.route(stanza)).await;
            Ok(())
        }
        Err(_) => Err(StreamError::new(StreamErrorCondition::InvalidXml)),
    }
}
