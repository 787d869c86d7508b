//! One BOSH session as a sans-I/O state machine (XEP-0124, XEP-0206): requests, frames from
//! the c2s session and the clock go in; responses to send and frames for the c2s session come
//! out. No task, socket or clock in here, so every rule below is unit-tested with injected
//! time.
//!
//! - §7.1 creation: `wait`, `hold` (clamped to the operator's maxima), `requests = hold + 1`;
//!   the creation response carries the session attributes plus XEP-0206's `authid` (the c2s
//!   stream id), `xmpp:version` and `xmpp:restartlogic`, and is held until the stream
//!   features arrive so the client needs no extra round trip.
//! - §§12, 14.1 ordering: requests are processed in `rid` order; a request ahead of a gap
//!   waits until the gap is filled; a `rid` outside the window (`requests` ahead of the next
//!   expected one, or older than the cached responses) ends the session with `item-not-found`.
//! - §14.3 retransmission: a `rid` already answered gets the same response again (the last
//!   `requests + 1` are cached); one still held or queued moves to the newer HTTP request and
//!   the older one gets an empty body.
//! - §§8, 11 holding: at most `hold` requests are held; the oldest gets everything queued for
//!   the client as soon as anything is; a request held for `wait` gets an empty body; more than
//!   `requests` outstanding at once ends the session with `policy-violation`.
//! - §10 pause: every held request is answered and the inactivity timeout becomes the pause
//!   (at most `maxpause`).
//! - §13 termination: the client's `type='terminate'` passes its payload and then `Close` to
//!   the c2s session; the c2s session's close (or its end) answers the next request with
//!   `type='terminate'`, with `condition='remote-stream-error'` if a stream error is in it
//!   (XEP-0206 §7).
//! - §7.1 `inactivity`: with no request held for that long the session is dropped *without*
//!   `Close`, as a lost connection, so stream management may resume it.
//!
//! Elements for the client are queued up to a byte bound; past it the client is not keeping up
//! and the session is dropped as lost (the queue is not allowed to grow without limit).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use starling_c2s::framed::{FrameIn, FrameOut};

use super::wire::{self, Body};

/// The highest XEP-0124 version we implement.
pub const VERSION: (u32, u32) = (1, 11);
/// Shortest polling interval we advertise (seconds); not enforced: an over-eager poller
/// is bounded by `requests` anyway.
pub const POLLING: u64 = 2;

/// XEP-0124 §17.2 terminal binding conditions we send.
pub mod condition {
    /// The request is malformed.
    pub const BAD_REQUEST: &str = "bad-request";
    /// The `to` domain is not served here.
    pub const HOST_UNKNOWN: &str = "host-unknown";
    /// Unknown `sid`, or a `rid` outside the window.
    pub const ITEM_NOT_FOUND: &str = "item-not-found";
    /// Too many simultaneous requests, too long a pause, or a client not keeping up.
    pub const POLICY_VIOLATION: &str = "policy-violation";
    /// The c2s session ended without closing its stream.
    pub const REMOTE_CONNECTION_FAILED: &str = "remote-connection-failed";
    /// The c2s session sent a stream error (XEP-0206 §7); it is in the body.
    pub const REMOTE_STREAM_ERROR: &str = "remote-stream-error";
    /// Anything else (the node holds too many sessions).
    pub const UNDEFINED: &str = "undefined-condition";
}

/// The operator's limits (from `mod_bosh`'s options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The longest `wait` granted.
    pub max_wait: Duration,
    /// The most requests held at once.
    pub max_hold: u64,
    /// `inactivity`.
    pub inactivity: Duration,
    /// `maxpause`.
    pub max_pause: Duration,
    /// Bytes queued for the client before the session is dropped.
    pub queue_limit: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_wait: Duration::from_secs(60),
            max_hold: 1,
            inactivity: Duration::from_secs(30),
            max_pause: Duration::from_secs(120),
            queue_limit: 1 << 20,
        }
    }
}

/// What was granted to one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// `wait`.
    pub wait: Duration,
    /// `hold`.
    pub hold: usize,
    /// `requests`: `hold + 1`.
    pub requests: usize,
    /// The limits it was granted under.
    pub policy: Policy,
}

impl Policy {
    /// The parameters for a creation request: the client's wishes within our limits (a missing
    /// `wait` gets the maximum, a missing `hold` gets 1).
    pub fn grant(&self, body: &Body) -> Params {
        let wait = body
            .wait
            .map_or(self.max_wait, |w| Duration::from_secs(w).min(self.max_wait));
        let hold = body.hold.unwrap_or(1).min(self.max_hold);
        let hold = usize::try_from(hold).unwrap_or(1);
        Params {
            wait,
            hold,
            requests: hold.saturating_add(1),
            policy: *self,
        }
    }
}

/// Identifies one HTTP request waiting for its response (assigned by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub u64);

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Answer the HTTP request `token` with `body` (HTTP 200).
    Respond {
        /// The request.
        token: Token,
        /// The response `<body/>`.
        body: String,
    },
    /// Pass a frame to the c2s session.
    Deliver(FrameIn),
    /// Drop the link to the c2s session without `Close`: the connection is lost.
    Lost,
}

/// A request being held.
#[derive(Debug)]
struct Held {
    rid: u64,
    token: Token,
    deadline: Instant,
}

/// Where the session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Exchanging.
    Open,
    /// The c2s session closed its stream (or ended): the next response terminates.
    Closing(Option<&'static str>),
    /// Over: nothing more is sent or delivered.
    Ended,
}

/// One BOSH session.
#[derive(Debug)]
pub struct Session {
    sid: String,
    /// The served domain (`from` in the creation response).
    domain: String,
    params: Params,
    ver: String,
    creation_rid: u64,
    /// The creation response is not sent yet.
    creating: bool,
    /// The c2s session's first stream id (XEP-0206 `authid`).
    authid: Option<String>,
    /// The next `rid` to process.
    next_rid: u64,
    /// Requests ahead of a gap, by `rid`.
    pending: BTreeMap<u64, (Token, Body)>,
    /// Held requests, oldest first.
    held: VecDeque<Held>,
    /// Elements for the client.
    queue: Vec<Vec<u8>>,
    queued_bytes: usize,
    /// Recent responses by `rid`, for retransmission.
    answered: VecDeque<(u64, String)>,
    /// The last request or response.
    last_seen: Instant,
    /// A client pause runs until then.
    paused_until: Option<Instant>,
    phase: Phase,
}

impl Session {
    /// A session for creation request `body` (whose `rid` the caller checked), answered later
    /// on `token`. The first action opens the c2s stream.
    pub fn new(
        sid: String,
        domain: String,
        params: Params,
        rid: u64,
        token: Token,
        body: Body,
        now: Instant,
    ) -> (Self, Vec<Action>) {
        let ver = negotiate_version(body.ver.as_deref());
        let mut session = Self {
            sid,
            domain,
            params,
            ver,
            creation_rid: rid,
            creating: true,
            authid: None,
            next_rid: rid.saturating_add(1),
            pending: BTreeMap::new(),
            held: VecDeque::new(),
            queue: Vec::new(),
            queued_bytes: 0,
            answered: VecDeque::new(),
            last_seen: now,
            paused_until: None,
            phase: Phase::Open,
        };
        let mut out = vec![Action::Deliver(FrameIn::Open {
            to: body.to.clone().or_else(|| Some(session.domain.clone())),
            lang: body.lang.clone(),
            version: Some(body.xmpp_version.clone().unwrap_or_else(|| "1.0".into())),
        })];
        out.extend(
            body.payload
                .into_iter()
                .map(|e| Action::Deliver(FrameIn::Element(e))),
        );
        session.held.push_back(Held {
            rid,
            token,
            deadline: now + params.wait,
        });
        (session, out)
    }

    /// The session id.
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// What was granted.
    pub fn params(&self) -> Params {
        self.params
    }

    /// True once the session is over: the caller drops it.
    pub fn is_ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// True while frames from the c2s session are still wanted.
    pub fn wants_frames(&self) -> bool {
        self.phase == Phase::Open
    }

    /// When [`Self::on_timeout`] must run next.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.is_ended() {
            return None;
        }
        let held = self.held.iter().map(|h| h.deadline).min();
        held.or_else(|| Some(self.inactivity_deadline()))
    }

    fn inactivity_deadline(&self) -> Instant {
        let idle = self.last_seen + self.params.policy.inactivity;
        self.paused_until.map_or(idle, |p| p.max(idle))
    }

    /// A request for this session arrived on `token`.
    pub fn on_request(&mut self, token: Token, body: Body, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.is_ended() {
            out.push(respond(
                token,
                wire::terminate(Some(condition::ITEM_NOT_FOUND), &[]),
            ));
            return out;
        }
        self.last_seen = now;
        let Some(rid) = body.rid else {
            self.fail(Some(token), condition::BAD_REQUEST, &mut out);
            return out;
        };
        // A retransmission of a request not answered yet: answer on the newer connection.
        if let Some(held) = self.held.iter_mut().find(|h| h.rid == rid) {
            let old = std::mem::replace(&mut held.token, token);
            out.push(respond(old, wire::render(&[], &[])));
            return out;
        }
        if let Some((queued, _)) = self.pending.get_mut(&rid) {
            let old = std::mem::replace(queued, token);
            out.push(respond(old, wire::render(&[], &[])));
            return out;
        }
        if rid < self.next_rid {
            match self.answered.iter().find(|(r, _)| *r == rid) {
                Some((_, body)) => out.push(respond(token, body.clone())),
                None => self.fail(Some(token), condition::ITEM_NOT_FOUND, &mut out),
            }
            return out;
        }
        let window_end = self.next_rid.saturating_add(self.params.requests as u64);
        if rid >= window_end {
            self.fail(Some(token), condition::ITEM_NOT_FOUND, &mut out);
            return out;
        }
        if self.held.len() + self.pending.len() + 1 > self.params.requests {
            self.fail(Some(token), condition::POLICY_VIOLATION, &mut out);
            return out;
        }
        self.pending.insert(rid, (token, body));
        while let Some((token, body)) = self.pending.remove(&self.next_rid) {
            let rid = self.next_rid;
            self.next_rid = rid.saturating_add(1);
            self.process(rid, token, body, now, &mut out);
            if self.is_ended() {
                return out;
            }
        }
        self.flush(now, &mut out);
        out
    }

    /// The c2s session sent `frame`, or ended (`None`).
    pub fn on_frame(&mut self, frame: Option<FrameOut>, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.phase != Phase::Open {
            return out;
        }
        match frame {
            Some(FrameOut::Open(header)) => {
                if self.authid.is_none() {
                    self.authid = header.id;
                }
            }
            Some(FrameOut::Element(bytes)) => {
                self.queued_bytes = self.queued_bytes.saturating_add(bytes.len());
                self.queue.push(bytes);
                if self.queued_bytes > self.params.policy.queue_limit {
                    tracing::info!(sid = %self.sid, "BOSH client not keeping up; session dropped");
                    self.lose(condition::POLICY_VIOLATION, &mut out);
                    return out;
                }
            }
            Some(FrameOut::Close) => self.phase = Phase::Closing(self.stream_error()),
            None => {
                let why = self
                    .stream_error()
                    .or(Some(condition::REMOTE_CONNECTION_FAILED));
                self.phase = Phase::Closing(why);
            }
        }
        self.flush(now, &mut out);
        out
    }

    /// Time passed: answer requests held for `wait`, drop an inactive session.
    pub fn on_timeout(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.is_ended() {
            return out;
        }
        while let Some(pos) = self.held.iter().position(|h| h.deadline <= now) {
            self.answer_at(pos, now, &mut out);
            if self.is_ended() {
                return out;
            }
        }
        if self.held.is_empty() && now >= self.inactivity_deadline() {
            tracing::debug!(sid = %self.sid, "BOSH session inactive; dropped as lost");
            self.lose(condition::ITEM_NOT_FOUND, &mut out);
        }
        out
    }

    /// Handles request `rid`, now next in order.
    fn process(&mut self, rid: u64, token: Token, body: Body, now: Instant, out: &mut Vec<Action>) {
        if self.phase != Phase::Open {
            // The stream is closing: this request carries the terminate response.
            self.hold(rid, token, now);
            return;
        }
        if body.terminate {
            out.extend(
                body.payload
                    .into_iter()
                    .map(|e| Action::Deliver(FrameIn::Element(e))),
            );
            out.push(Action::Deliver(FrameIn::Close));
            let queue = self.take_queue();
            for held in std::mem::take(&mut self.held) {
                out.push(respond(held.token, wire::terminate(None, &[])));
            }
            out.push(respond(token, wire::terminate(None, &queue)));
            self.end_pending(condition::ITEM_NOT_FOUND, out);
            self.phase = Phase::Ended;
            return;
        }
        if let Some(pause) = body.pause {
            let pause = Duration::from_secs(pause);
            if pause > self.params.policy.max_pause {
                self.fail(Some(token), condition::POLICY_VIOLATION, out);
                return;
            }
            self.hold(rid, token, now);
            while !self.held.is_empty() {
                self.answer_at(0, now, out);
            }
            self.paused_until = Some(now + pause);
            return;
        }
        self.paused_until = None;
        if body.restart {
            // XEP-0206 §5: a restart carries no payload; the stream starts over.
            out.push(Action::Deliver(FrameIn::Open {
                to: body.to.or_else(|| Some(self.domain.clone())),
                lang: body.lang,
                version: Some("1.0".into()),
            }));
        } else {
            out.extend(
                body.payload
                    .into_iter()
                    .map(|e| Action::Deliver(FrameIn::Element(e))),
            );
        }
        self.hold(rid, token, now);
    }

    fn hold(&mut self, rid: u64, token: Token, now: Instant) {
        self.held.push_back(Held {
            rid,
            token,
            deadline: now + self.params.wait,
        });
    }

    /// Answers what can be answered now.
    fn flush(&mut self, now: Instant, out: &mut Vec<Action>) {
        if let Phase::Closing(_) = self.phase {
            while !self.held.is_empty() && !self.is_ended() {
                self.answer_at(0, now, out);
            }
            return;
        }
        while self.held.len() > self.hold_limit() {
            self.answer_at(0, now, out);
        }
        if !self.queue.is_empty() && !self.held.is_empty() {
            self.answer_at(0, now, out);
        }
    }

    /// The creation request is held for the stream features even when `hold` is 0.
    fn hold_limit(&self) -> usize {
        match self.held.front() {
            Some(h) if self.creating && h.rid == self.creation_rid => self.params.hold.max(1),
            _ => self.params.hold,
        }
    }

    /// Answers the held request at `pos` with everything queued.
    fn answer_at(&mut self, pos: usize, now: Instant, out: &mut Vec<Action>) {
        let Some(held) = self.held.remove(pos) else {
            return;
        };
        let queue = self.take_queue();
        let body = if let Phase::Closing(why) = self.phase {
            // Every held request learns the session is over; then it is.
            let body = wire::terminate(why, &queue);
            if self.held.is_empty() {
                self.phase = Phase::Ended;
                self.end_pending(condition::ITEM_NOT_FOUND, out);
            }
            body
        } else if self.creating && held.rid == self.creation_rid {
            self.creating = false;
            wire::render(&self.creation_attributes(), &queue)
        } else {
            wire::render(&[], &queue)
        };
        self.last_seen = now;
        self.answered.push_back((held.rid, body.clone()));
        while self.answered.len() > self.params.requests.saturating_add(1) {
            self.answered.pop_front();
        }
        out.push(respond(held.token, body));
    }

    fn creation_attributes(&self) -> Vec<(&'static str, String)> {
        let secs = |d: Duration| d.as_secs().max(u64::from(d.subsec_nanos() > 0)).to_string();
        let mut attrs = vec![
            ("sid", self.sid.clone()),
            ("wait", self.params.wait.as_secs().to_string()),
            ("requests", self.params.requests.to_string()),
            ("hold", self.params.hold.to_string()),
            ("inactivity", secs(self.params.policy.inactivity)),
            ("maxpause", secs(self.params.policy.max_pause)),
            ("polling", POLLING.to_string()),
            ("ver", self.ver.clone()),
            ("from", self.domain.clone()),
        ];
        if let Some(authid) = &self.authid {
            attrs.push(("authid", authid.clone()));
        }
        attrs.push(("xmpp:version", "1.0".to_owned()));
        attrs.push(("xmpp:restartlogic", "true".to_owned()));
        attrs
    }

    fn take_queue(&mut self) -> Vec<Vec<u8>> {
        self.queued_bytes = 0;
        std::mem::take(&mut self.queue)
    }

    /// `remote-stream-error` if the c2s session's last words include a stream error.
    fn stream_error(&self) -> Option<&'static str> {
        self.queue
            .iter()
            .any(|e| {
                e.starts_with(b"<stream:error") || e.starts_with(b"<error xmlns='http://etherx")
            })
            .then_some(condition::REMOTE_STREAM_ERROR)
    }

    /// Ends the session with `condition`, closing the c2s stream.
    fn fail(&mut self, token: Option<Token>, condition: &'static str, out: &mut Vec<Action>) {
        tracing::debug!(sid = %self.sid, condition, "BOSH session terminated");
        self.terminate_all(token, condition, out);
        if self.phase == Phase::Open {
            out.push(Action::Deliver(FrameIn::Close));
        }
        self.phase = Phase::Ended;
    }

    /// Ends the session without closing the c2s stream (a lost connection).
    fn lose(&mut self, condition: &'static str, out: &mut Vec<Action>) {
        self.terminate_all(None, condition, out);
        if self.phase == Phase::Open {
            out.push(Action::Lost);
        }
        self.phase = Phase::Ended;
    }

    fn terminate_all(
        &mut self,
        token: Option<Token>,
        condition: &'static str,
        out: &mut Vec<Action>,
    ) {
        for held in std::mem::take(&mut self.held) {
            out.push(respond(held.token, wire::terminate(Some(condition), &[])));
        }
        self.end_pending(condition, out);
        if let Some(token) = token {
            out.push(respond(token, wire::terminate(Some(condition), &[])));
        }
    }

    fn end_pending(&mut self, condition: &'static str, out: &mut Vec<Action>) {
        for (_, (token, _)) in std::mem::take(&mut self.pending) {
            out.push(respond(token, wire::terminate(Some(condition), &[])));
        }
    }
}

fn respond(token: Token, body: String) -> Action {
    Action::Respond { token, body }
}

/// The highest version we support that does not exceed the client's (§7.1 `ver`).
fn negotiate_version(client: Option<&str>) -> String {
    let parsed = client.and_then(|v| {
        let (major, minor) = v.trim().split_once('.')?;
        Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?))
    });
    let (major, minor) = match parsed {
        Some(v) if v < VERSION => v,
        _ => VERSION,
    };
    format!("{major}.{minor}")
}

#[cfg(test)]
mod tests {
    use starling_xmpp::Element;
    use starling_xmpp::codec::StreamHeader;

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    fn body(rid: u64) -> Body {
        Body {
            rid: Some(rid),
            sid: Some("s".into()),
            ..Body::default()
        }
    }

    fn with_payload(rid: u64, payload: &str) -> Body {
        Body {
            payload: vec![payload.as_bytes().to_vec()],
            ..body(rid)
        }
    }

    fn policy() -> Policy {
        Policy {
            max_wait: WAIT,
            ..Policy::default()
        }
    }

    /// A session created with rid 100, hold 1, whose creation response (with features) is sent.
    fn open(t0: Instant) -> Session {
        let create = Body {
            rid: Some(100),
            to: Some("example.org".into()),
            wait: Some(60),
            hold: Some(1),
            ver: Some("1.6".into()),
            xmpp_version: Some("1.0".into()),
            ..Body::default()
        };
        let params = policy().grant(&create);
        let (mut s, out) = Session::new(
            "s".into(),
            "example.org".into(),
            params,
            100,
            Token(0),
            create,
            t0,
        );
        assert!(matches!(
            out.as_slice(),
            [Action::Deliver(FrameIn::Open { .. })]
        ));
        let header = StreamHeader {
            id: Some("stream-1".into()),
            ..StreamHeader::default()
        };
        assert!(s.on_frame(Some(FrameOut::Open(header)), t0).is_empty());
        let out = s.on_frame(Some(FrameOut::Element(b"<stream:features/>".to_vec())), t0);
        let [Action::Respond { token, body }] = out.as_slice() else {
            panic!("{out:?}");
        };
        assert_eq!(*token, Token(0));
        let el: Element = body.parse().unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(el.attr("sid"), Some("s"));
        assert_eq!(el.attr("wait"), Some("10"));
        assert_eq!(el.attr("hold"), Some("1"));
        assert_eq!(el.attr("requests"), Some("2"));
        assert_eq!(el.attr("inactivity"), Some("30"));
        assert_eq!(el.attr("ver"), Some("1.6"));
        assert_eq!(el.attr("from"), Some("example.org"));
        assert_eq!(el.attr("authid"), Some("stream-1"));
        assert!(body.contains("xmpp:restartlogic='true'"), "{body}");
        assert!(el.has_child("features", wire::NS_STREAM));
        s
    }

    fn responses(out: &[Action]) -> Vec<(Token, String)> {
        out.iter()
            .filter_map(|a| match a {
                Action::Respond { token, body } => Some((*token, body.clone())),
                _ => None,
            })
            .collect()
    }

    fn delivered(out: &[Action]) -> Vec<FrameIn> {
        out.iter()
            .filter_map(|a| match a {
                Action::Deliver(f) => Some(f.clone()),
                _ => None,
            })
            .collect()
    }

    fn is_empty_body(body: &str) -> bool {
        body.ends_with("/>") && !body.contains("type=")
    }

    #[test]
    fn grant_clamps_the_clients_wishes() {
        let p = policy().grant(&Body {
            wait: Some(3600),
            hold: Some(5),
            ..Body::default()
        });
        assert_eq!((p.wait, p.hold, p.requests), (WAIT, 1, 2));
        let p = policy().grant(&Body {
            wait: Some(3),
            hold: Some(0),
            ..Body::default()
        });
        assert_eq!((p.wait, p.hold, p.requests), (Duration::from_secs(3), 0, 1));
        let p = policy().grant(&Body::default());
        assert_eq!((p.wait, p.hold), (WAIT, 1));
        assert_eq!(negotiate_version(Some("1.6")), "1.6");
        assert_eq!(negotiate_version(Some("1.12")), "1.11");
        assert_eq!(negotiate_version(Some("2.0")), "1.11");
        assert_eq!(negotiate_version(Some("junk")), "1.11");
        assert_eq!(negotiate_version(None), "1.11");
    }

    #[test]
    fn payload_goes_to_the_session_and_replies_ride_the_held_request() {
        let t0 = Instant::now();
        let mut s = open(t0);
        let out = s.on_request(
            Token(1),
            with_payload(101, "<iq xmlns='jabber:client'/>"),
            t0,
        );
        assert_eq!(
            delivered(&out),
            vec![FrameIn::Element(b"<iq xmlns='jabber:client'/>".to_vec())]
        );
        assert!(responses(&out).is_empty(), "held: {out:?}");
        let out = s.on_frame(
            Some(FrameOut::Element(
                b"<iq xmlns='jabber:client' type='result'/>".to_vec(),
            )),
            t0,
        );
        let r = responses(&out);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, Token(1));
        assert!(r[0].1.contains("type='result'"));
        assert!(
            !r[0].1.contains("sid="),
            "only the creation response has attributes"
        );
    }

    #[test]
    fn hold_answers_the_oldest_when_exceeded() {
        let t0 = Instant::now();
        let mut s = open(t0);
        assert!(responses(&s.on_request(Token(1), body(101), t0)).is_empty());
        let out = s.on_request(Token(2), body(102), t0);
        let r = responses(&out);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, Token(1));
        assert!(is_empty_body(&r[0].1));
        // Queued elements go on the one held request.
        let out = s.on_frame(Some(FrameOut::Element(b"<m/>".to_vec())), t0);
        assert_eq!(responses(&out)[0].0, Token(2));
    }

    #[test]
    fn wait_expiry_gives_an_empty_response() {
        let t0 = Instant::now();
        let mut s = open(t0);
        s.on_request(Token(1), body(101), t0);
        assert_eq!(s.next_deadline(), Some(t0 + WAIT));
        assert!(
            s.on_timeout(t0 + WAIT - Duration::from_millis(1))
                .is_empty()
        );
        let out = s.on_timeout(t0 + WAIT);
        let r = responses(&out);
        assert_eq!(r.len(), 1);
        assert!(is_empty_body(&r[0].1));
        // Nothing held: the inactivity deadline runs from that response.
        assert_eq!(s.next_deadline(), Some(t0 + WAIT + Duration::from_secs(30)));
    }

    #[test]
    fn out_of_order_requests_wait_for_the_gap() {
        let t0 = Instant::now();
        let mut s = open(t0);
        let out = s.on_request(Token(2), with_payload(102, "<b/>"), t0);
        assert!(out.is_empty(), "{out:?}");
        let out = s.on_request(Token(1), with_payload(101, "<a/>"), t0);
        assert_eq!(
            delivered(&out),
            vec![
                FrameIn::Element(b"<a/>".to_vec()),
                FrameIn::Element(b"<b/>".to_vec())
            ]
        );
        // 101 answered (hold 1), 102 held.
        assert_eq!(
            responses(&out).iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![Token(1)]
        );
    }

    #[test]
    fn retransmission_gets_the_cached_response() {
        let t0 = Instant::now();
        let mut s = open(t0);
        s.on_request(Token(1), body(101), t0);
        let out = s.on_frame(Some(FrameOut::Element(b"<m/>".to_vec())), t0);
        let first = responses(&out)[0].1.clone();
        let out = s.on_request(Token(2), body(101), t0);
        assert_eq!(responses(&out), vec![(Token(2), first)]);
        assert!(delivered(&out).is_empty(), "not processed twice");
        // The creation response is cached too.
        let out = s.on_request(Token(3), body(100), t0);
        assert!(responses(&out)[0].1.contains("authid='stream-1'"));
        assert!(!s.is_ended());
    }

    #[test]
    fn retransmission_of_a_held_request_moves_it() {
        let t0 = Instant::now();
        let mut s = open(t0);
        s.on_request(Token(1), body(101), t0);
        let out = s.on_request(Token(2), body(101), t0);
        assert_eq!(responses(&out)[0].0, Token(1));
        let out = s.on_frame(Some(FrameOut::Element(b"<m/>".to_vec())), t0);
        assert_eq!(responses(&out)[0].0, Token(2));
    }

    #[test]
    fn rid_outside_the_window_ends_the_session() {
        let t0 = Instant::now();
        let mut s = open(t0);
        s.on_request(Token(1), body(101), t0);
        // next expected 102, requests 2: 104 is out.
        let out = s.on_request(Token(2), body(104), t0);
        let r = responses(&out);
        assert_eq!(r.len(), 2, "the held request and the offender: {out:?}");
        assert!(
            r.iter()
                .all(|(_, b)| b.contains("condition='item-not-found'"))
        );
        assert_eq!(delivered(&out), vec![FrameIn::Close]);
        assert!(s.is_ended());
        // Too old to be cached.
        let mut s = open(t0);
        for rid in 101..106 {
            s.on_request(Token(rid), body(rid), t0);
        }
        let out = s.on_request(Token(99), body(100), t0);
        assert!(responses(&out)[0].1.contains("item-not-found"));
    }

    #[test]
    fn too_many_requests_is_a_policy_violation() {
        let t0 = Instant::now();
        let mut s = open(t0);
        s.on_request(Token(1), body(101), t0);
        // 103 cannot have been sent legitimately while 101 is unanswered (requests 2)...
        assert!(s.on_request(Token(3), body(103), t0).is_empty());
        // ...and 102 makes three outstanding.
        let out = s.on_request(Token(2), body(102), t0);
        assert_eq!(responses(&out).len(), 3);
        assert!(
            responses(&out)
                .iter()
                .all(|(_, b)| b.contains("policy-violation"))
        );
        assert!(s.is_ended());
        let mut s = open(t0);
        s.on_request(Token(1), body(101), t0);
        s.on_request(Token(3), body(103), t0);
        let out = s.on_request(Token(4), body(102 + 1), t0);
        // A retransmission of the queued 103: not a new request.
        assert!(!s.is_ended(), "{out:?}");
        let mut s = Session::new(
            "s".into(),
            "d".into(),
            policy().grant(&Body {
                hold: Some(0),
                ..Body::default()
            }),
            1,
            Token(0),
            Body::default(),
            t0,
        )
        .0;
        // requests = 1 and the creation request is still held.
        let out = s.on_request(Token(1), body(2), t0);
        assert!(
            responses(&out)
                .iter()
                .all(|(_, b)| b.contains("policy-violation"))
        );
        assert!(s.is_ended());
    }

    #[test]
    fn client_terminate_passes_payload_then_close() {
        let t0 = Instant::now();
        let mut s = open(t0);
        s.on_request(Token(1), body(101), t0);
        let out = s.on_request(
            Token(2),
            Body {
                terminate: true,
                ..with_payload(102, "<presence type='unavailable'/>")
            },
            t0,
        );
        assert_eq!(
            delivered(&out),
            vec![
                FrameIn::Element(b"<presence type='unavailable'/>".to_vec()),
                FrameIn::Close
            ]
        );
        let r = responses(&out);
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|(_, b)| b.contains("type='terminate'")));
        assert!(s.is_ended());
        assert!(!s.wants_frames());
    }

    #[test]
    fn session_close_terminates_with_the_stream_error() {
        let t0 = Instant::now();
        let mut s = open(t0);
        s.on_request(Token(1), body(101), t0);
        s.on_frame(
            Some(FrameOut::Element(
                b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
                    .to_vec(),
            )),
            t0,
        );
        // The error went out on the held request; the close arrives with nothing held...
        let out = s.on_frame(Some(FrameOut::Close), t0);
        assert!(out.is_empty());
        // ...so the next request carries the terminate.
        let out = s.on_request(Token(2), body(102), t0);
        let r = responses(&out);
        assert!(r[0].1.contains("type='terminate'"));
        assert!(s.is_ended());
        // With a request held, the error and the terminate travel together.
        let mut s = open(t0);
        s.on_request(Token(1), body(101), t0);
        s.on_request(Token(2), body(102), t0);
        let out = s.on_frame(None, t0);
        assert!(responses(&out)[0].1.contains("remote-connection-failed"));
        let mut s = open(t0);
        s.on_request(Token(1), body(101), t0);
        let error =
            b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>";
        let mut out = Vec::new();
        s.queue.push(error.to_vec());
        out.extend(s.on_frame(Some(FrameOut::Close), t0));
        let r = responses(&out);
        assert!(r[0].1.contains("condition='remote-stream-error'"), "{r:?}");
        assert!(r[0].1.contains("<stream:error>"));
    }

    #[test]
    fn restart_reopens_the_stream() {
        let t0 = Instant::now();
        let mut s = open(t0);
        let out = s.on_request(
            Token(1),
            Body {
                restart: true,
                lang: Some("en".into()),
                ..body(101)
            },
            t0,
        );
        assert_eq!(
            delivered(&out),
            vec![FrameIn::Open {
                to: Some("example.org".into()),
                lang: Some("en".into()),
                version: Some("1.0".into())
            }]
        );
        // Held until the new features.
        assert!(responses(&out).is_empty());
        s.on_frame(Some(FrameOut::Open(StreamHeader::default())), t0);
        let out = s.on_frame(Some(FrameOut::Element(b"<stream:features/>".to_vec())), t0);
        assert!(responses(&out)[0].1.contains("features"));
    }

    #[test]
    fn inactivity_drops_the_session_as_lost() {
        let t0 = Instant::now();
        let mut s = open(t0);
        let deadline = t0 + Duration::from_secs(30);
        assert_eq!(s.next_deadline(), Some(deadline));
        assert!(s.on_timeout(deadline - Duration::from_millis(1)).is_empty());
        let out = s.on_timeout(deadline);
        assert_eq!(out, vec![Action::Lost]);
        assert!(s.is_ended());
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn pause_answers_everything_and_stretches_inactivity() {
        let t0 = Instant::now();
        let mut s = open(t0);
        s.on_request(Token(1), body(101), t0);
        let out = s.on_request(
            Token(2),
            Body {
                pause: Some(100),
                ..body(102)
            },
            t0,
        );
        assert_eq!(responses(&out).len(), 2);
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(100)));
        assert!(s.on_timeout(t0 + Duration::from_secs(99)).is_empty());
        // Coming back ends the pause.
        s.on_request(Token(3), body(103), t0 + Duration::from_secs(99));
        assert!(!s.is_ended());
        // Too long a pause.
        let out = s.on_request(
            Token(4),
            Body {
                pause: Some(1000),
                ..body(104)
            },
            t0 + Duration::from_secs(99),
        );
        assert!(
            responses(&out)
                .iter()
                .any(|(_, b)| b.contains("policy-violation"))
        );
        assert!(s.is_ended());
    }

    #[test]
    fn a_client_not_keeping_up_is_dropped() {
        let t0 = Instant::now();
        let mut s = open(t0);
        let big = vec![b'x'; 600 * 1024];
        assert!(
            s.on_frame(Some(FrameOut::Element(big.clone())), t0)
                .is_empty()
        );
        let out = s.on_frame(Some(FrameOut::Element(big)), t0);
        assert_eq!(out, vec![Action::Lost]);
        assert!(s.is_ended());
    }

    #[test]
    fn requests_after_the_end_are_refused() {
        let t0 = Instant::now();
        let mut s = open(t0);
        s.on_timeout(t0 + Duration::from_secs(31));
        let out = s.on_request(Token(1), body(101), t0);
        assert!(responses(&out)[0].1.contains("item-not-found"));
    }
}
