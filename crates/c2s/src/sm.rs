//! XEP-0198 stream management, sans I/O: the counters, the queue of unacknowledged stanzas
//! and the acknowledgement arithmetic of one stream.
//!
//! Implements XEP-0198 §3 (enabling: `<enable/>` → `<enabled/>`), §4 (acks: `<r/>`, `<a h/>`,
//! counters modulo 2^32, the `handled-count-too-high` error), §5 (resumption: `<resume/>` →
//! `<resumed/>`, resending what the client did not acknowledge) and the policy for stanzas
//! still unacknowledged when a session ends (ejabberd's `resend_on_timeout`). The connection
//! task in [`crate::session`] feeds it events and the current time and performs the writes,
//! timers and routing it asks for; nothing here touches a socket or a clock.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use starling_config::ModuleOptions;
use starling_xmpp::Element;
use starling_xmpp::error::StreamErrorCondition;
use starling_xmpp::ns;
use starling_xmpp::stanza::{IqType, Kind, MessageType, Stanza, element, set_attr};

/// The stream management namespace (XEP-0198 version 3).
pub const NS: &str = "urn:xmpp:sm:3";

/// Default `resume_timeout` (ejabberd's: 5 minutes).
pub const DEFAULT_RESUME_TIMEOUT: Duration = Duration::from_secs(300);
/// Default `max_ack_queue` (ejabberd's).
pub const DEFAULT_MAX_ACK_QUEUE: usize = 5000;
/// Default `ack_timeout` (ejabberd's: 1 minute).
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(60);
/// An ack is requested once this many stanzas were sent since the last request...
pub const REQUEST_AFTER_STANZAS: u32 = 5;
/// ...or when the oldest stanza sent since the last request is this old, so that a quiet
/// stream still learns what arrived without an `<r/>` after every stanza.
pub const REQUEST_DELAY: Duration = Duration::from_secs(2);

/// What happens to unacknowledged messages when a session ends (ejabberd's
/// `resend_on_timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResendOnTimeout {
    /// `false`: the sender gets a `<service-unavailable/>` error.
    Never,
    /// `true`: re-routed (other resources, offline storage, or a bounce).
    Always,
    /// `if_offline`: re-routed if the account has no other session, else bounced.
    IfOffline,
}

/// `mod_stream_mgmt` options, read by the connection from the host's config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Time a detached session waits for resumption; zero disables resumption.
    pub resume_timeout: Duration,
    /// The longest timeout a client may ask for with `max` (defaults to `resume_timeout`).
    pub max_resume_timeout: Duration,
    /// Most unacknowledged stanzas kept; `None` is `infinity`.
    pub max_ack_queue: Option<usize>,
    /// Time allowed for an `<a/>` after an `<r/>`; `None` is `infinity`.
    pub ack_timeout: Option<Duration>,
    /// Fate of unacknowledged messages when the session ends.
    pub resend_on_timeout: ResendOnTimeout,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            resume_timeout: DEFAULT_RESUME_TIMEOUT,
            max_resume_timeout: DEFAULT_RESUME_TIMEOUT,
            max_ack_queue: Some(DEFAULT_MAX_ACK_QUEUE),
            ack_timeout: Some(DEFAULT_ACK_TIMEOUT),
            resend_on_timeout: ResendOnTimeout::Always,
        }
    }
}

impl Settings {
    /// Settings from validated `mod_stream_mgmt` options; absent options take their defaults.
    pub fn from_options(options: &ModuleOptions) -> Self {
        let resume_timeout = options
            .duration("resume_timeout")
            .unwrap_or(DEFAULT_RESUME_TIMEOUT);
        let max_resume_timeout = options
            .duration("max_resume_timeout")
            .unwrap_or(resume_timeout)
            .max(resume_timeout);
        let max_ack_queue = match options.int("max_ack_queue") {
            None => Some(DEFAULT_MAX_ACK_QUEUE),
            Some(i64::MAX) => None,
            Some(n) => Some(usize::try_from(n.max(1)).unwrap_or(usize::MAX)),
        };
        let ack_timeout = match options.duration("ack_timeout") {
            None => Some(DEFAULT_ACK_TIMEOUT),
            Some(Duration::MAX) => None,
            Some(d) => Some(d),
        };
        let resend_on_timeout = match options.string("resend_on_timeout") {
            Some("false") => ResendOnTimeout::Never,
            Some("if_offline") => ResendOnTimeout::IfOffline,
            _ => ResendOnTimeout::Always,
        };
        Self {
            resume_timeout,
            max_resume_timeout,
            max_ack_queue,
            ack_timeout,
            resend_on_timeout,
        }
    }

    /// The resumption timeout for a client asking for `requested` seconds (XEP-0198 §3 `max`),
    /// `None` if resumption is disabled.
    pub fn resume_timeout_for(&self, requested: Option<u64>) -> Option<Duration> {
        if self.resume_timeout.is_zero() {
            return None;
        }
        let timeout = match requested {
            Some(secs) => Duration::from_secs(secs).min(self.max_resume_timeout),
            None => self.resume_timeout,
        };
        (!timeout.is_zero()).then_some(timeout)
    }
}

/// A peer's `<a h/>` acknowledged more stanzas than were sent (XEP-0198 §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandledCountTooHigh {
    /// The `h` received.
    pub h: u32,
    /// The number of stanzas sent (modulo 2^32).
    pub sent: u32,
}

impl HandledCountTooHigh {
    /// The stream error to close with: `<undefined-condition/>` plus the XEP's
    /// application-specific `<handled-count-too-high/>`, serialised.
    pub fn stream_error_xml(&self) -> String {
        format!(
            "<stream:error><{cond} xmlns='{errs}'/><handled-count-too-high xmlns='{NS}' \
             h='{h}' send-count='{sent}'/><text xmlns='{errs}' xml:lang='en'>You acknowledged \
             {h} stanzas, but only {sent} were sent</text></stream:error>",
            cond = StreamErrorCondition::UndefinedCondition.name(),
            errs = ns::STREAM_ERRORS,
            h = self.h,
            sent = self.sent,
        )
    }
}

/// The unacknowledged queue reached `max_ack_queue`: the session must end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueFull;

/// What the ack timer asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerAction {
    /// Nothing is due.
    Nothing,
    /// Send `<r/>`.
    RequestAck,
    /// The `<r/>` went unanswered for `ack_timeout`: consider the connection lost.
    AckTimedOut,
}

/// One unacknowledged stanza and when (Unix seconds) it was sent, for `<delay/>`.
#[derive(Clone, Debug)]
pub struct Unacked {
    /// The stanza as sent.
    pub stanza: Arc<Stanza>,
    /// When it was queued, in seconds since the Unix epoch.
    pub queued_at: i64,
}

/// The stream management state of a session after `<enable/>`.
#[derive(Debug)]
pub struct StreamManagement {
    /// The stream id and timeout when resumption was granted.
    resume: Option<(String, Duration)>,
    /// Stanzas received from the client (the `h` we report), modulo 2^32.
    inbound: u32,
    /// The client's last `h`: stanzas it confirmed, modulo 2^32.
    acked: u32,
    /// Stanzas sent and not yet acknowledged, oldest first.
    unacked: VecDeque<Unacked>,
    max_queue: Option<usize>,
    ack_timeout: Option<Duration>,
    /// Stanzas sent since the last `<r/>`, and when the first of them was.
    unrequested: u32,
    unrequested_since: Option<Instant>,
    /// When the outstanding `<r/>` was sent.
    requested_at: Option<Instant>,
}

impl StreamManagement {
    /// Stream management enabled with `settings`; `resume` is the id and timeout when the
    /// client asked for (and was granted) resumption.
    pub fn new(settings: &Settings, resume: Option<(String, Duration)>) -> Self {
        Self {
            resume,
            inbound: 0,
            acked: 0,
            unacked: VecDeque::new(),
            max_queue: settings.max_ack_queue,
            ack_timeout: settings.ack_timeout,
            unrequested: 0,
            unrequested_since: None,
            requested_at: None,
        }
    }

    /// The state of a session resumed through this node after its previous owner handed it
    /// over (`starling_core::handover`): `inbound` stanzas received from the client, `acked`
    /// confirmed by it, and what it has not confirmed, oldest first.
    pub fn restored(
        settings: &Settings,
        resume: (String, Duration),
        inbound: u32,
        acked: u32,
        unacked: Vec<Unacked>,
    ) -> Self {
        let mut sm = Self::new(settings, Some(resume));
        sm.inbound = inbound;
        sm.acked = acked;
        sm.unacked = unacked.into();
        sm
    }

    /// What the session state tells the node taking it over: the inbound count and the
    /// client's acknowledged count.
    pub fn counts(&self) -> (u32, u32) {
        (self.inbound, self.acked)
    }

    /// The resumption id, if the session is resumable.
    pub fn resume_id(&self) -> Option<&str> {
        self.resume.as_ref().map(|(id, _)| id.as_str())
    }

    /// How long a detached session waits for resumption, if it is resumable.
    pub fn resume_timeout(&self) -> Option<Duration> {
        self.resume.as_ref().map(|(_, t)| *t)
    }

    /// The `<enabled/>` answer (§3).
    pub fn enabled_xml(&self) -> String {
        match &self.resume {
            Some((id, timeout)) => format!(
                "<enabled xmlns='{NS}' id='{id}' resume='true' max='{}'/>",
                timeout.as_secs()
            ),
            None => format!("<enabled xmlns='{NS}'/>"),
        }
    }

    /// The client sent a stanza (after `<enable/>`).
    pub fn handled(&mut self) {
        self.inbound = self.inbound.wrapping_add(1);
    }

    /// The answer to the client's `<r/>` (§4).
    pub fn ack_xml(&self) -> String {
        format!("<a xmlns='{NS}' h='{}'/>", self.inbound)
    }

    /// The `<resumed/>` answer for a resumption of `previd` (§5).
    pub fn resumed_element(&self, previd: &str) -> Element {
        element(
            "resumed",
            NS,
            &[("previd", previd), ("h", &self.inbound.to_string())],
        )
    }

    /// Number of stanzas sent, modulo 2^32.
    pub fn sent(&self) -> u32 {
        // The queue never exceeds `max_ack_queue`, far below 2^32; a longer one would only make
        // the count wrap like the counter itself.
        self.acked
            .wrapping_add(u32::try_from(self.unacked.len()).unwrap_or(u32::MAX))
    }

    /// Number of unacknowledged stanzas.
    pub fn unacked_len(&self) -> usize {
        self.unacked.len()
    }

    /// A stanza goes to the client (or, while detached, would have): queue it until acked.
    /// `Ok(true)` asks the caller to send `<r/>` now.
    pub fn on_sent(
        &mut self,
        stanza: Arc<Stanza>,
        now: Instant,
        unix_now: i64,
    ) -> Result<bool, QueueFull> {
        self.unacked.push_back(Unacked {
            stanza,
            queued_at: unix_now,
        });
        if self.max_queue.is_some_and(|max| self.unacked.len() > max) {
            return Err(QueueFull);
        }
        self.unrequested = self.unrequested.saturating_add(1);
        self.unrequested_since.get_or_insert(now);
        Ok(self.requested_at.is_none() && self.unrequested >= REQUEST_AFTER_STANZAS)
    }

    /// Records that `<r/>` was sent at `now`.
    pub fn on_request_sent(&mut self, now: Instant) {
        self.requested_at = Some(now);
        self.unrequested = 0;
        self.unrequested_since = None;
    }

    /// The client's `<a h/>` (§4): drops what it confirmed.
    pub fn on_ack(&mut self, h: u32) -> Result<(), HandledCountTooHigh> {
        let newly = usize::try_from(h.wrapping_sub(self.acked)).unwrap_or(usize::MAX);
        if newly > self.unacked.len() {
            return Err(HandledCountTooHigh {
                h,
                sent: self.sent(),
            });
        }
        self.unacked.drain(..newly);
        self.acked = h;
        self.requested_at = None;
        Ok(())
    }

    /// When [`Self::on_timer`] must next be called, if ever.
    pub fn next_timer(&self) -> Option<Instant> {
        match self.requested_at {
            Some(at) => self.ack_timeout.and_then(|t| at.checked_add(t)),
            None if self.unacked.is_empty() => None,
            None => self
                .unrequested_since
                .and_then(|at| at.checked_add(REQUEST_DELAY)),
        }
    }

    /// The ack timer fired at `now`.
    pub fn on_timer(&self, now: Instant) -> TimerAction {
        match self.next_timer() {
            Some(due) if due <= now => {
                if self.requested_at.is_some() {
                    TimerAction::AckTimedOut
                } else {
                    TimerAction::RequestAck
                }
            }
            _ => TimerAction::Nothing,
        }
    }

    /// A resumption with the client's `h` (§5): acknowledges up to `h` and returns the stanzas
    /// to send again, in order. They stay queued (with their sequence numbers) until acked.
    pub fn on_resume(&mut self, h: u32) -> Result<Vec<Arc<Stanza>>, HandledCountTooHigh> {
        self.on_ack(h)?;
        self.unrequested = 0;
        self.unrequested_since = None;
        Ok(self.unacked.iter().map(|u| u.stanza.clone()).collect())
    }

    /// The session is ending: everything not acknowledged, oldest first.
    pub fn take_unacked(&mut self) -> Vec<Unacked> {
        self.requested_at = None;
        self.unrequested_since = None;
        self.unacked.drain(..).collect()
    }
}

/// What becomes of a stanza the client never acknowledged when its session ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Route it again (with `<delay/>`): another resource, offline storage or a bounce.
    Reroute,
    /// Answer the sender with `<service-unavailable/>`.
    Bounce,
    /// Forget it (presence, IQ responses, errors: stale or without an answer to give).
    Drop,
}

/// The fate of an unacknowledged stanza (ejabberd's `route_unacked_stanzas`): presence is
/// dropped, IQ requests get an error, messages are re-routed when `resend` (see
/// [`ResendOnTimeout`]) and bounced otherwise.
pub fn fate(stanza: &Stanza, resend: bool) -> Fate {
    match stanza.kind() {
        Kind::Presence => Fate::Drop,
        Kind::Iq => {
            if IqType::parse(stanza.type_attr()).is_some_and(IqType::is_request) {
                Fate::Bounce
            } else {
                Fate::Drop
            }
        }
        Kind::Message => match MessageType::parse(stanza.type_attr()) {
            MessageType::Error => Fate::Drop,
            _ if resend => Fate::Reroute,
            _ => Fate::Bounce,
        },
    }
}

/// The element of `stanza` with a XEP-0203 `<delay/>` from `host` stamped `unix_secs`, unless
/// it already carries one (an offline message keeps its original time).
pub fn with_delay(stanza: &Stanza, host: &str, unix_secs: i64) -> Element {
    let mut el = stanza.element().clone();
    if el.get_child("delay", ns::DELAY).is_none() {
        let mut delay = element("delay", ns::DELAY, &[("from", host)]);
        set_attr(&mut delay, "stamp", xep0082_datetime(unix_secs));
        delay.append_text_node("Resent");
        el.append_child(delay);
    }
    el
}

/// A XEP-0082 `DateTime` in UTC (`1970-01-01T00:00:00Z`) for seconds since the Unix epoch.
pub fn xep0082_datetime(unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (era-based: 400-year cycles of
/// 146 097 days, with years starting in March so the leap day comes last).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A fresh, unguessable stream management id (128 random bits, hex).
pub fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use starling_config::OptionValue;

    use super::*;

    #[test]
    fn a_restored_session_continues_the_counts() {
        let unacked = vec![Unacked {
            stanza: msg(1),
            queued_at: 5,
        }];
        let mut sm = StreamManagement::restored(
            &Settings::default(),
            ("id".into(), Duration::from_secs(60)),
            7,
            u32::MAX,
            unacked,
        );
        assert_eq!(sm.counts(), (7, u32::MAX));
        assert_eq!(sm.sent(), 0, "wraps like the counter");
        assert_eq!(sm.resume_id(), Some("id"));
        // The client's next h confirms the handed-over stanza across the wrap.
        assert_eq!(sm.on_resume(0).unwrap().len(), 0);
        assert_eq!(sm.unacked_len(), 0);
        assert!(sm.on_ack(1).is_err());
    }

    fn stanza(xml: &str) -> Arc<Stanza> {
        let el: Element = xml.parse().unwrap();
        Arc::new(Stanza::from_element(el).unwrap())
    }

    fn msg(n: u32) -> Arc<Stanza> {
        stanza(&format!(
            "<message xmlns='jabber:client' from='b@x/r' to='a@x/r' id='m{n}'><body>{n}</body></message>"
        ))
    }

    fn resumable() -> StreamManagement {
        StreamManagement::new(
            &Settings::default(),
            Some(("abc".into(), Duration::from_secs(300))),
        )
    }

    #[test]
    fn enabled_and_ack_answers() {
        let mut sm = resumable();
        assert_eq!(
            sm.enabled_xml(),
            "<enabled xmlns='urn:xmpp:sm:3' id='abc' resume='true' max='300'/>"
        );
        let plain = StreamManagement::new(&Settings::default(), None);
        assert_eq!(plain.enabled_xml(), "<enabled xmlns='urn:xmpp:sm:3'/>");
        assert_eq!(plain.resume_id(), None);
        sm.handled();
        sm.handled();
        assert_eq!(sm.ack_xml(), "<a xmlns='urn:xmpp:sm:3' h='2'/>");
        let resumed = sm.resumed_element("a'b");
        assert!(resumed.is("resumed", NS));
        assert_eq!(resumed.attr("previd"), Some("a'b"));
        assert_eq!(resumed.attr("h"), Some("2"));
    }

    #[test]
    fn acks_drop_confirmed_stanzas_and_reject_too_high_counts() {
        let mut sm = resumable();
        let now = Instant::now();
        for n in 0..3 {
            assert_eq!(sm.on_sent(msg(n), now, 0), Ok(false));
        }
        assert_eq!(sm.sent(), 3);
        sm.on_ack(2).unwrap();
        assert_eq!(sm.unacked_len(), 1);
        // Acks are cumulative: repeating one changes nothing.
        sm.on_ack(2).unwrap();
        assert_eq!(sm.unacked_len(), 1);
        assert_eq!(sm.on_ack(5), Err(HandledCountTooHigh { h: 5, sent: 3 }));
        assert_eq!(sm.unacked_len(), 1, "a bad ack changes nothing");
        sm.on_ack(3).unwrap();
        assert_eq!(sm.unacked_len(), 0);
        let xml = HandledCountTooHigh { h: 5, sent: 3 }.stream_error_xml();
        assert!(xml.contains("<undefined-condition"));
        assert!(xml.contains("h='5' send-count='3'"));
        assert!(xml.starts_with("<stream:error>") && xml.ends_with("</stream:error>"));
    }

    #[test]
    fn counters_wrap_modulo_2_pow_32() {
        let mut sm = resumable();
        sm.inbound = u32::MAX;
        sm.handled();
        assert_eq!(sm.ack_xml(), "<a xmlns='urn:xmpp:sm:3' h='0'/>");
        sm.acked = u32::MAX - 1;
        let now = Instant::now();
        for n in 0..3 {
            sm.on_sent(msg(n), now, 0).unwrap();
        }
        assert_eq!(sm.sent(), 1);
        // h = 0 confirms two stanzas across the wrap.
        sm.on_ack(0).unwrap();
        assert_eq!(sm.unacked_len(), 1);
        sm.on_ack(1).unwrap();
        assert_eq!(sm.unacked_len(), 0);
        assert!(sm.on_ack(2).is_err());
    }

    #[test]
    fn requests_after_n_stanzas_or_a_delay_and_times_out() {
        let mut sm = resumable();
        let t0 = Instant::now();
        assert_eq!(sm.next_timer(), None);
        for n in 0..REQUEST_AFTER_STANZAS - 1 {
            assert_eq!(sm.on_sent(msg(n), t0, 0), Ok(false));
        }
        assert_eq!(sm.on_sent(msg(9), t0, 0), Ok(true));
        sm.on_request_sent(t0);
        // While a request is outstanding no other is asked for.
        for n in 0..REQUEST_AFTER_STANZAS {
            assert_eq!(sm.on_sent(msg(n), t0, 0), Ok(false));
        }
        assert_eq!(sm.next_timer(), Some(t0 + DEFAULT_ACK_TIMEOUT));
        assert_eq!(sm.on_timer(t0), TimerAction::Nothing);
        assert_eq!(
            sm.on_timer(t0 + DEFAULT_ACK_TIMEOUT),
            TimerAction::AckTimedOut
        );
        // The answer clears the request; what is left unrequested is asked for after a delay.
        sm.on_ack(3).unwrap();
        let t1 = t0 + Duration::from_secs(1);
        sm.on_request_sent(t1);
        sm.on_ack(5).unwrap();
        sm.on_sent(msg(1), t1, 0).unwrap();
        assert_eq!(sm.next_timer(), Some(t1 + REQUEST_DELAY));
        assert_eq!(sm.on_timer(t1 + REQUEST_DELAY), TimerAction::RequestAck);
    }

    #[test]
    fn queue_limit_is_enforced() {
        let settings = Settings {
            max_ack_queue: Some(2),
            ..Settings::default()
        };
        let mut sm = StreamManagement::new(&settings, None);
        let now = Instant::now();
        sm.on_sent(msg(1), now, 0).unwrap();
        sm.on_sent(msg(2), now, 0).unwrap();
        assert_eq!(sm.on_sent(msg(3), now, 0), Err(QueueFull));
        let unlimited = Settings {
            max_ack_queue: None,
            ..Settings::default()
        };
        let mut sm = StreamManagement::new(&unlimited, None);
        for n in 0..10 {
            sm.on_sent(msg(n), now, 0).unwrap();
        }
    }

    #[test]
    fn resume_returns_the_unacked_tail_in_order() {
        let mut sm = resumable();
        let now = Instant::now();
        for n in 0..4 {
            sm.on_sent(msg(n), now, 0).unwrap();
        }
        let resend = sm.on_resume(1).unwrap();
        let ids: Vec<_> = resend.iter().map(|s| s.id().unwrap().to_owned()).collect();
        assert_eq!(ids, ["m1", "m2", "m3"]);
        // Still queued under the same numbers: acking 4 empties the queue.
        sm.on_ack(4).unwrap();
        assert_eq!(sm.unacked_len(), 0);
        assert!(sm.on_resume(9).is_err());
        sm.on_sent(msg(7), now, 42).unwrap();
        let left = sm.take_unacked();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].queued_at, 42);
        assert_eq!(sm.unacked_len(), 0);
    }

    #[test]
    fn fates_follow_ejabberd() {
        let chat = msg(1);
        assert_eq!(fate(&chat, true), Fate::Reroute);
        assert_eq!(fate(&chat, false), Fate::Bounce);
        let error = stanza("<message xmlns='jabber:client' from='b@x' to='a@x/r' type='error'/>");
        assert_eq!(fate(&error, true), Fate::Drop);
        let presence = stanza("<presence xmlns='jabber:client' from='b@x/r' to='a@x/r'/>");
        assert_eq!(fate(&presence, true), Fate::Drop);
        let get = stanza("<iq xmlns='jabber:client' from='b@x/r' to='a@x/r' type='get' id='1'/>");
        assert_eq!(fate(&get, true), Fate::Bounce);
        let result =
            stanza("<iq xmlns='jabber:client' from='b@x/r' to='a@x/r' type='result' id='1'/>");
        assert_eq!(fate(&result, true), Fate::Drop);
    }

    #[test]
    fn delay_is_added_once() {
        let el = with_delay(&msg(1), "x", 1_700_000_000);
        let delay = el.get_child("delay", ns::DELAY).unwrap();
        assert_eq!(delay.attr("stamp"), Some("2023-11-14T22:13:20Z"));
        assert_eq!(delay.attr("from"), Some("x"));
        let again = with_delay(&Stanza::from_element(el).unwrap(), "x", 0);
        assert_eq!(
            again
                .children()
                .filter(|c| c.is("delay", ns::DELAY))
                .count(),
            1
        );
        assert_eq!(xep0082_datetime(0), "1970-01-01T00:00:00Z");
        assert_eq!(xep0082_datetime(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(xep0082_datetime(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn settings_from_options_and_timeouts() {
        let s = Settings::from_options(&ModuleOptions::new());
        assert_eq!(s, Settings::default());
        assert_eq!(s.resume_timeout_for(None), Some(DEFAULT_RESUME_TIMEOUT));
        // A client may ask for less, not more than max_resume_timeout.
        assert_eq!(
            s.resume_timeout_for(Some(60)),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            s.resume_timeout_for(Some(10_000)),
            Some(DEFAULT_RESUME_TIMEOUT)
        );
        let mut o = ModuleOptions::new();
        o.insert("resume_timeout", OptionValue::Duration(Duration::ZERO));
        o.insert("max_ack_queue", OptionValue::Infinity);
        o.insert("ack_timeout", OptionValue::Infinity);
        o.insert(
            "resend_on_timeout",
            OptionValue::String("if_offline".into()),
        );
        let s = Settings::from_options(&o);
        assert_eq!(s.resume_timeout_for(None), None, "zero disables resumption");
        assert_eq!(s.max_ack_queue, None);
        assert_eq!(s.ack_timeout, None);
        assert_eq!(s.resend_on_timeout, ResendOnTimeout::IfOffline);
        let mut o = ModuleOptions::new();
        o.insert(
            "resume_timeout",
            OptionValue::Duration(Duration::from_secs(60)),
        );
        o.insert(
            "max_resume_timeout",
            OptionValue::Duration(Duration::from_secs(600)),
        );
        o.insert("resend_on_timeout", OptionValue::String("false".into()));
        let s = Settings::from_options(&o);
        assert_eq!(
            s.resume_timeout_for(Some(600)),
            Some(Duration::from_secs(600))
        );
        assert_eq!(s.resend_on_timeout, ResendOnTimeout::Never);
    }
}
