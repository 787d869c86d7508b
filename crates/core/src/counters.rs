//! The node's activity counters: plain atomics that the hot path bumps and `starling-metrics`
//! reads at scrape time (DESIGN.md §10, "everything observable").
//!
//! Core and the connection crates must not depend on a metrics library, and metric handles
//! must be resolved once, not looked up per stanza (DESIGN.md §8). So the counters are a fixed
//! set of arrays indexed by small enums: an increment is one relaxed atomic add, with no label
//! hashing and no lock. Every label is bounded by construction (an enum, never a JID or an
//! address). The exporter turns them into Prometheus families when `/metrics` is scraped.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use starling_xmpp::sasl::Mechanism;
use starling_xmpp::stanza::Kind;

/// How a client session reaches us; the `transport` label of the session gauge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// XMPP over TCP (RFC 6120), with STARTTLS or direct TLS.
    Tcp,
    /// XMPP over WebSocket (RFC 7395).
    WebSocket,
    /// BOSH (XEP-0124/0206).
    Bosh,
}

impl Transport {
    /// Every transport, in label order.
    pub const ALL: [Self; 3] = [Self::Tcp, Self::WebSocket, Self::Bosh];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::WebSocket => "websocket",
            Self::Bosh => "bosh",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Tcp => 0,
            Self::WebSocket => 1,
            Self::Bosh => 2,
        }
    }
}

/// The stanza kinds, in label order (`message`, `presence`, `iq`).
pub const KINDS: [Kind; 3] = [Kind::Message, Kind::Presence, Kind::Iq];

/// The label value of a stanza kind.
pub fn kind_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Message => "message",
        Kind::Presence => "presence",
        Kind::Iq => "iq",
    }
}

fn kind_index(kind: Kind) -> usize {
    match kind {
        Kind::Message => 0,
        Kind::Presence => 1,
        Kind::Iq => 2,
    }
}

/// The `mechanism` label of authentication attempts: a known SASL mechanism, or `None` for a
/// name we do not offer (so a client cannot invent label values).
pub type AuthMechanism = Option<Mechanism>;

/// Label value of an authentication mechanism (`other` for unknown names).
pub fn mechanism_label(mechanism: AuthMechanism) -> &'static str {
    mechanism.map_or("other", Mechanism::name)
}

/// Every mechanism label, in order.
pub fn mechanisms() -> impl Iterator<Item = AuthMechanism> {
    Mechanism::ALL.into_iter().map(Some).chain([None])
}

const MECHANISMS: usize = Mechanism::ALL.len() + 1;

fn mechanism_index(mechanism: AuthMechanism) -> usize {
    mechanism
        .and_then(|m| Mechanism::ALL.iter().position(|x| *x == m))
        .unwrap_or(Mechanism::ALL.len())
}

pub use starling_storage::timing::{HistogramSnapshot, LatencyHistogram, ROUTING_BUCKETS};

/// The node's counters. One per [`crate::Server`], reached through `Server::counters`.
#[derive(Debug, Default)]
pub struct Counters {
    stanzas_routed: [AtomicU64; 3],
    stanzas_delivered: [AtomicU64; 3],
    auth_success: [AtomicU64; MECHANISMS],
    auth_failure: [AtomicU64; MECHANISMS],
    sessions: [AtomicI64; 3],
    routing: LatencyHistogram,
    abuse: crate::ban::AbuseCounters,
    offline: [AtomicU64; OfflineEvent::ALL.len()],
}

/// What happened to offline messages (XEP-0160), the `event` label of
/// `starling_offline_messages_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfflineEvent {
    /// Stored for an unavailable user.
    Stored,
    /// Refused: the user's queue was full (`max_user_offline_messages`).
    Refused,
    /// Taken from storage to be delivered at login.
    Flushed,
    /// Put back into storage because delivery was interrupted.
    Restored,
}

impl OfflineEvent {
    /// Every event, in label order.
    pub const ALL: [Self; 4] = [Self::Stored, Self::Refused, Self::Flushed, Self::Restored];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::Refused => "refused",
            Self::Flushed => "flushed",
            Self::Restored => "restored",
        }
    }
}

impl Counters {
    /// Counts one stanza entering the router.
    pub fn stanza_routed(&self, kind: Kind) {
        if let Some(c) = self.stanzas_routed.get(kind_index(kind)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Stanzas routed so far of `kind`.
    pub fn stanzas_routed(&self, kind: Kind) -> u64 {
        self.stanzas_routed
            .get(kind_index(kind))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Counts one stanza written to a client connection (c2s, WebSocket, BOSH).
    pub fn stanza_delivered(&self, kind: Kind) {
        if let Some(c) = self.stanzas_delivered.get(kind_index(kind)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Stanzas written to client connections so far, of `kind`.
    pub fn stanzas_delivered(&self, kind: Kind) -> u64 {
        self.stanzas_delivered
            .get(kind_index(kind))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Counts one SASL outcome. Aborts are not attempts and should not be counted.
    pub fn auth(&self, mechanism: AuthMechanism, success: bool) {
        let table = if success {
            &self.auth_success
        } else {
            &self.auth_failure
        };
        if let Some(c) = table.get(mechanism_index(mechanism)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Authentications so far with `mechanism` that succeeded (`success`) or failed.
    pub fn auths(&self, mechanism: AuthMechanism, success: bool) -> u64 {
        let table = if success {
            &self.auth_success
        } else {
            &self.auth_failure
        };
        table
            .get(mechanism_index(mechanism))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Counts a bound session of `transport` until the returned guard is dropped, so a session
    /// that ends by any path (error, panic unwinding its task) is uncounted.
    pub fn session_opened(self: &Arc<Self>, transport: Transport) -> SessionGauge {
        if let Some(g) = self.sessions.get(transport.index()) {
            g.fetch_add(1, Ordering::Relaxed);
        }
        SessionGauge {
            counters: self.clone(),
            transport,
        }
    }

    /// Sessions currently bound over `transport`.
    pub fn sessions(&self, transport: Transport) -> i64 {
        self.sessions
            .get(transport.index())
            .map_or(0, |g| g.load(Ordering::Relaxed))
    }

    /// The routing latency histogram (time to route one stanza received from a connection).
    pub fn routing(&self) -> &LatencyHistogram {
        &self.routing
    }

    /// Counts `n` offline messages that went through `event`.
    pub fn offline(&self, event: OfflineEvent, n: u64) {
        if let Some(c) = self.offline.get(event as usize) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Offline messages that went through `event` since start.
    pub fn offline_total(&self, event: OfflineEvent) -> u64 {
        self.offline
            .get(event as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Bans and refused connections ([`crate::ban`]).
    pub fn abuse(&self) -> &crate::ban::AbuseCounters {
        &self.abuse
    }
}

/// Keeps one session counted in [`Counters::sessions`] while alive.
#[derive(Debug)]
pub struct SessionGauge {
    counters: Arc<Counters>,
    transport: Transport,
}

impl SessionGauge {
    /// Moves the session to another transport's count (a resumption over a different
    /// transport, XEP-0198).
    pub fn set_transport(&mut self, transport: Transport) {
        if transport == self.transport {
            return;
        }
        if let Some(g) = self.counters.sessions.get(self.transport.index()) {
            g.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(g) = self.counters.sessions.get(transport.index()) {
            g.fetch_add(1, Ordering::Relaxed);
        }
        self.transport = transport;
    }
}

impl Drop for SessionGauge {
    fn drop(&mut self) {
        if let Some(g) = self.counters.sessions.get(self.transport.index()) {
            g.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn stanzas_and_auth_are_counted_per_label() {
        let c = Counters::default();
        c.stanza_routed(Kind::Message);
        c.stanza_routed(Kind::Message);
        c.stanza_routed(Kind::Iq);
        assert_eq!(c.stanzas_routed(Kind::Message), 2);
        assert_eq!(c.stanzas_routed(Kind::Presence), 0);
        assert_eq!(c.stanzas_routed(Kind::Iq), 1);

        c.auth(Some(Mechanism::Plain), true);
        c.auth(Some(Mechanism::ScramSha256), false);
        c.auth(None, false);
        assert_eq!(c.auths(Some(Mechanism::Plain), true), 1);
        assert_eq!(c.auths(Some(Mechanism::Plain), false), 0);
        assert_eq!(c.auths(Some(Mechanism::ScramSha256), false), 1);
        assert_eq!(c.auths(None, false), 1);
        assert_eq!(mechanisms().count(), MECHANISMS);
        assert_eq!(mechanism_label(None), "other");
        assert_eq!(mechanism_label(Some(Mechanism::Plain)), "PLAIN");
    }

    #[test]
    fn session_gauge_follows_the_guard() {
        let c = Arc::new(Counters::default());
        let a = c.session_opened(Transport::Tcp);
        let mut b = c.session_opened(Transport::Tcp);
        assert_eq!(c.sessions(Transport::Tcp), 2);
        b.set_transport(Transport::WebSocket);
        assert_eq!(c.sessions(Transport::Tcp), 1);
        assert_eq!(c.sessions(Transport::WebSocket), 1);
        drop(a);
        drop(b);
        for t in Transport::ALL {
            assert_eq!(c.sessions(t), 0, "{}", t.label());
        }
    }

    #[test]
    fn histogram_buckets_sum_and_count() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_micros(25));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(5));
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets.len(), ROUTING_BUCKETS.len() + 1);
        assert_eq!(s.buckets.first(), Some(&(0.000_025, 2)));
        assert_eq!(s.buckets.get(7), Some(&(0.005, 1)));
        assert_eq!(s.buckets.last(), Some(&(f64::INFINITY, 1)));
        assert_eq!(s.buckets.iter().map(|(_, n)| n).sum::<u64>(), 4);
        assert!((s.sum - 5.003_035).abs() < 1e-9, "{}", s.sum);
    }
}
