//! BOSH (XEP-0124 *Bidirectional-streams Over Synchronous HTTP*, XEP-0206 *XMPP Over BOSH*):
//! the HTTP handler, the node's session table and one driver task per session.
//!
//! The protocol rules live in the sans-I/O [`session::Session`] (request ids, holding, `wait`,
//! retransmission, pause, termination, inactivity) and [`wire`] (the `<body/>` wrapper). This
//! module only moves things around:
//!
//! - `POST` parses the body. Without `sid` it creates a session: a random 128-bit `sid`, a c2s
//!   session started with [`starling_c2s::run_framed`] on a [`framed::link`] (so SASL, bind,
//!   stream management and limits are the TCP ones), and a driver task owning the
//!   [`session::Session`] and the link's [`framed::Bridge`]. With a `sid`, the request is handed
//!   to that session's driver, and the HTTP response waits for the driver's answer.
//! - `GET` explains what the endpoint is; `OPTIONS` answers CORS preflights, and every response
//!   carries `Access-Control-Allow-Origin: *` so browser clients on other origins work.
//!
//! Errors (XEP-0124 §17): an unknown `sid` is answered HTTP 200 with `type='terminate'
//! condition='item-not-found'` (the current version's terminal binding conditions instead of
//! the legacy HTTP 404); a body that is not a well-formed `<body/>` gets HTTP 400 with
//! `condition='bad-request'`, because without a parsed body we cannot tell a BOSH client from
//! anything else. Bodies over the listener's `max_stanza_size` plus [`BODY_SLACK`] get HTTP 413.
//!
//! Sessions are per node (and per listener): in a cluster, a load balancer must send all of a
//! session's requests to the node that created it (sticky sessions, `docs/WEB.md`). Once bound,
//! the session is an ordinary entry of the cluster-wide session table.
//!
//! Options come from `mod_bosh` (see `starling_modules::bosh`), read when the listener starts.

pub mod session;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use starling_c2s::ListenerSettings;
use starling_c2s::framed::{self, FrameIn, FrameOut};
use starling_config::{Config, Listener, ModuleOptions};
use starling_core::Server;
use starling_core::counters::Transport as SessionTransport;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout};

use self::session::{Action, Policy, Session, Token, condition};
use self::wire::Body;
use crate::PeerAddr;

/// The module whose options configure BOSH.
pub const MODULE: &str = "mod_bosh";
/// Sessions per listener unless `max_sessions` says otherwise.
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;
/// Bytes a request body may exceed `max_stanza_size` by (the wrapper and a few small stanzas).
pub const BODY_SLACK: usize = 8192;
/// Longest time any BOSH timer is set to, whatever the config says (`infinity` included).
const LONGEST: Duration = Duration::from_secs(86_400);
/// Requests queued for one driver before more are refused as over-active.
const CALL_QUEUE: usize = 8;
/// How long an ended session's driver keeps reading the c2s session's last frames.
const DRAIN: Duration = Duration::from_secs(5);
/// How much longer than `wait` an HTTP request waits for its driver (which answers by `wait`).
const REPLY_GRACE: Duration = Duration::from_secs(30);

/// What every BOSH request on one listener shares.
#[derive(Clone)]
struct BoshState {
    server: Arc<Server>,
    settings: Arc<ListenerSettings>,
    /// The HTTP listener is TLS: the peer is encrypted (PLAIN may be offered).
    secure: bool,
    policy: Policy,
    registry: Arc<Registry>,
}

/// The sessions of one listener by `sid`. A std mutex: held only for a map operation, never
/// across an await.
struct Registry {
    sessions: Mutex<HashMap<String, mpsc::Sender<Call>>>,
    max: usize,
}

impl Registry {
    fn insert(&self, sid: &str, calls: mpsc::Sender<Call>) -> bool {
        let Ok(mut sessions) = self.sessions.lock() else {
            return false;
        };
        if sessions.len() >= self.max {
            return false;
        }
        sessions.insert(sid.to_owned(), calls);
        true
    }

    fn get(&self, sid: &str) -> Option<mpsc::Sender<Call>> {
        self.sessions.lock().ok()?.get(sid).cloned()
    }

    fn remove(&self, sid: &str) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.remove(sid);
        }
    }
}

/// One HTTP request handed to a session's driver.
struct Call {
    body: Body,
    reply: oneshot::Sender<String>,
}

/// The routes of this transport, relative to its path prefix.
pub fn routes(server: Arc<Server>, listener: &Listener) -> Router {
    let config = server.config();
    let (policy, max_sessions) = limits(options(&config));
    let settings = ListenerSettings::framed(listener, config.negotiation_timeout);
    let max_body = settings.max_stanza_size.saturating_add(BODY_SLACK);
    let state = BoshState {
        server,
        secure: listener.tls,
        settings: Arc::new(settings),
        policy,
        registry: Arc::new(Registry {
            sessions: Mutex::new(HashMap::new()),
            max: max_sessions,
        }),
    };
    Router::new()
        .route("/", get(explain).post(request).options(preflight))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// `mod_bosh`'s options: the top-level module list first, then any host's.
fn options(config: &Config) -> Option<&ModuleOptions> {
    config
        .modules
        .iter()
        .chain(config.host_modules.values().flatten())
        .find(|m| m.name == MODULE)
        .map(|m| &m.options)
}

/// The policy and session cap from `mod_bosh`'s options (defaults without them).
fn limits(options: Option<&ModuleOptions>) -> (Policy, usize) {
    let mut policy = Policy::default();
    let mut max_sessions = DEFAULT_MAX_SESSIONS;
    if let Some(options) = options {
        let duration =
            |key: &str, default: Duration| options.duration(key).unwrap_or(default).min(LONGEST);
        policy.inactivity = duration("max_inactivity", policy.inactivity);
        policy.max_pause = duration("max_pause", policy.max_pause);
        policy.max_wait = duration("max_wait", policy.max_wait);
        if let Some(hold) = options.int("max_hold").and_then(|h| u64::try_from(h).ok()) {
            policy.max_hold = hold;
        }
        if let Some(max) = options
            .int("max_sessions")
            .and_then(|m| usize::try_from(m).ok())
        {
            max_sessions = max;
        }
    }
    (policy, max_sessions)
}

/// `GET`: what this is, for someone who opened the URL in a browser.
async fn explain() -> Response {
    let page = "<!DOCTYPE html>\n<html><head><title>Starling BOSH</title></head><body>\
        <h1>XMPP over BOSH</h1><p>This is a BOSH endpoint (XEP-0124, XEP-0206) of the Starling \
        XMPP server. Point an XMPP client's BOSH URL here; it talks to it with POST \
        requests.</p></body></html>\n";
    with_cors(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response())
}

/// `OPTIONS`: a CORS preflight.
async fn preflight() -> Response {
    let mut response = StatusCode::OK.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    with_cors(response)
}

fn with_cors(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

/// A `<body/>` response.
fn xml(status: StatusCode, body: String) -> Response {
    with_cors(
        (
            status,
            [
                (header::CONTENT_TYPE, "text/xml; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
    )
}

fn terminate(status: StatusCode, condition: &str) -> Response {
    xml(status, wire::terminate(Some(condition), &[]))
}

/// `POST`: one BOSH request.
async fn request(
    State(state): State<BoshState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    bytes: Bytes,
) -> Response {
    let body = match wire::parse(&bytes) {
        Ok(body) => body,
        Err(why) => {
            tracing::debug!(%peer, %why, "malformed BOSH body");
            return terminate(StatusCode::BAD_REQUEST, condition::BAD_REQUEST);
        }
    };
    match body.sid.clone() {
        None => create(state, body, peer).await,
        Some(sid) => forward(&state, &sid, body).await,
    }
}

/// A session creation request (XEP-0124 §7.1, XEP-0206 §4).
async fn create(state: BoshState, body: Body, peer: SocketAddr) -> Response {
    let Some(rid) = body.rid else {
        return terminate(StatusCode::BAD_REQUEST, condition::BAD_REQUEST);
    };
    let config = state.server.config();
    let domain = body.to.as_deref().map(str::to_lowercase);
    let Some(domain) = domain.filter(|d| config.hosts.iter().any(|h| h == d)) else {
        return terminate(StatusCode::OK, condition::HOST_UNKNOWN);
    };
    let params = state.policy.grant(&body);
    let sid = format!("{:032x}", rand::random::<u128>());
    let (calls_tx, calls) = mpsc::channel(CALL_QUEUE);
    if !state.registry.insert(&sid, calls_tx) {
        tracing::warn!(%peer, max = state.registry.max, "BOSH session limit reached");
        return terminate(StatusCode::SERVICE_UNAVAILABLE, condition::UNDEFINED);
    }
    let (link, bridge) = framed::link(SessionTransport::Bosh, state.secure);
    tokio::spawn(starling_c2s::run_framed(
        state.server.clone(),
        state.settings.clone(),
        link,
        peer,
    ));
    let (reply, answer) = oneshot::channel();
    let now = tokio::time::Instant::now().into_std();
    let (session, first) = Session::new(sid, domain, params, rid, Token(0), body, now);
    tracing::debug!(%peer, sid = session.sid(), "BOSH session created");
    let mut driver = Driver::new(bridge, state.registry.clone());
    driver.waiting.insert(Token(0), reply);
    tokio::spawn(driver.run(session, first, calls));
    await_answer(answer, params.wait).await
}

/// A request for an existing session.
async fn forward(state: &BoshState, sid: &str, body: Body) -> Response {
    let Some(calls) = state.registry.get(sid) else {
        return terminate(StatusCode::OK, condition::ITEM_NOT_FOUND);
    };
    let (reply, answer) = oneshot::channel();
    if calls.try_send(Call { body, reply }).is_err() {
        // More queued requests than any well-behaved client has outstanding.
        return terminate(StatusCode::OK, condition::POLICY_VIOLATION);
    }
    await_answer(answer, state.policy.max_wait).await
}

async fn await_answer(answer: oneshot::Receiver<String>, wait: Duration) -> Response {
    match timeout(wait.saturating_add(REPLY_GRACE), answer).await {
        Ok(Ok(body)) => xml(StatusCode::OK, body),
        // The session ended before answering.
        Ok(Err(_)) => terminate(StatusCode::OK, condition::ITEM_NOT_FOUND),
        // Cannot happen with a live driver (it answers by `wait`); an empty body is harmless.
        Err(_) => xml(StatusCode::OK, wire::render(&[], &[])),
    }
}

/// The task between a [`Session`], its HTTP requests and its c2s session.
struct Driver {
    /// HTTP requests waiting for their response.
    waiting: HashMap<Token, oneshot::Sender<String>>,
    next_token: u64,
    /// Frames for the c2s session, in order; `None` once the link is dropped.
    inbound: Option<mpsc::Sender<FrameIn>>,
    to_session: std::collections::VecDeque<FrameIn>,
    outbound: mpsc::Receiver<FrameOut>,
    outbound_open: bool,
    registry: Arc<Registry>,
}

impl Driver {
    fn new(bridge: framed::Bridge, registry: Arc<Registry>) -> Self {
        let framed::Bridge { inbound, outbound } = bridge;
        Self {
            waiting: HashMap::new(),
            next_token: 1,
            inbound: Some(inbound),
            to_session: std::collections::VecDeque::new(),
            outbound,
            outbound_open: true,
            registry,
        }
    }

    /// One task, one `select!`: requests, frames both ways and the session's timer. Frames
    /// for the c2s session wait in `to_session` for room in its queue while its frames keep
    /// being read, so neither side can block the other.
    async fn run(
        mut self,
        mut session: Session,
        first: Vec<Action>,
        mut calls: mpsc::Receiver<Call>,
    ) {
        self.apply(first);
        let sid = session.sid().to_owned();
        let mut drain_until: Option<tokio::time::Instant> = None;
        loop {
            if session.is_ended() && drain_until.is_none() {
                // No new requests; the ones queued are answered `item-not-found` by their
                // handlers when `calls` is dropped.
                self.registry.remove(&sid);
                calls.close();
                drain_until = Some(tokio::time::Instant::now() + DRAIN);
            }
            let delivering = !self.to_session.is_empty() && self.inbound.is_some();
            if drain_until.is_some() && !delivering && !self.outbound_open {
                break;
            }
            let deadline = match drain_until {
                Some(until) => Some(until),
                None => session.next_deadline().map(tokio::time::Instant::from_std),
            };
            let inbound = self.inbound.clone();
            tokio::select! {
                call = calls.recv(), if drain_until.is_none() => {
                    let Some(Call { body, reply }) = call else { continue };
                    let token = Token(self.next_token);
                    self.next_token = self.next_token.wrapping_add(1);
                    self.waiting.insert(token, reply);
                    let actions = session.on_request(token, body, now());
                    self.apply(actions);
                }
                permit = reserve(inbound), if delivering => match permit {
                    Some(permit) => {
                        if let Some(frame) = self.to_session.pop_front() {
                            permit.send(frame);
                        }
                    }
                    // The c2s session is gone; its end arrives on `outbound`.
                    None => {
                        self.inbound = None;
                        self.to_session.clear();
                    }
                },
                frame = self.outbound.recv(), if self.outbound_open => {
                    if frame.is_none() {
                        self.outbound_open = false;
                    }
                    if session.wants_frames() {
                        let actions = session.on_frame(frame, now());
                        self.apply(actions);
                    }
                }
                () = sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                    if drain_until.is_some() {
                        break;
                    }
                    let actions = session.on_timeout(now());
                    self.apply(actions);
                }
            }
        }
        self.registry.remove(&sid);
        tracing::debug!(%sid, "BOSH session ended");
    }

    fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Respond { token, body } => {
                    // The client may have gone; the response stays cached for a retransmission.
                    if let Some(reply) = self.waiting.remove(&token) {
                        let _ = reply.send(body);
                    }
                }
                Action::Deliver(frame) => {
                    if self.inbound.is_some() {
                        self.to_session.push_back(frame);
                    }
                }
                Action::Lost => {
                    // Dropping the sender without `Close`: the c2s session sees a lost
                    // connection and, with stream management, waits for resumption.
                    self.inbound = None;
                    self.to_session.clear();
                }
            }
        }
    }
}

async fn reserve(inbound: Option<mpsc::Sender<FrameIn>>) -> Option<mpsc::OwnedPermit<FrameIn>> {
    inbound?.reserve_owned().await.ok()
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
mod tests {
    use starling_config::OptionValue;

    use super::*;

    #[test]
    fn limits_from_options() {
        let (policy, max) = limits(None);
        assert_eq!(policy, Policy::default());
        assert_eq!(max, DEFAULT_MAX_SESSIONS);
        let mut options = ModuleOptions::new();
        options.insert(
            "max_inactivity",
            OptionValue::Duration(Duration::from_secs(2)),
        );
        options.insert("max_wait", OptionValue::Duration(Duration::MAX));
        options.insert("max_hold", OptionValue::Int(2));
        options.insert("max_sessions", OptionValue::Int(5));
        let (policy, max) = limits(Some(&options));
        assert_eq!(policy.inactivity, Duration::from_secs(2));
        assert_eq!(policy.max_wait, LONGEST, "infinity is clamped");
        assert_eq!(policy.max_hold, 2);
        assert_eq!(max, 5);
    }

    #[test]
    fn registry_is_bounded() {
        let registry = Registry {
            sessions: Mutex::new(HashMap::new()),
            max: 1,
        };
        let (tx, _rx) = mpsc::channel(1);
        assert!(registry.insert("a", tx.clone()));
        assert!(!registry.insert("b", tx));
        assert!(registry.get("a").is_some());
        assert!(registry.get("b").is_none());
        registry.remove("a");
        assert!(registry.get("a").is_none());
    }
}
