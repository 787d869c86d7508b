//! XEP-0352 client state indication, sans I/O: what an inactive client's session holds back.
//!
//! While the client says it is `<inactive/>` (§4), stanzas whose only value is being current
//! are queued instead of written: presence updates, chat-state notifications (XEP-0085) and
//! PEP events, keeping only the latest per sender (and per PEP node). Everything else — a
//! message with a body, an IQ, a subscription request — is written at once, after the queue is
//! flushed, so the client sees stanzas in the order they were routed. `<active/>` flushes the
//! queue. The queue is bounded: when it is full it is flushed, as ejabberd's mod_client_state
//! does, rather than dropping anything.

use std::sync::Arc;

use starling_config::ModuleOptions;
use starling_xmpp::Element;
use starling_xmpp::jid::Jid;
use starling_xmpp::ns;
use starling_xmpp::stanza::{Kind, PresenceType, Stanza};

/// The client state indication namespace.
pub const NS: &str = "urn:xmpp:csi:0";
/// XEP-0085 chat state notifications.
pub const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
/// XEP-0060 event notifications (PEP).
pub const PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
/// Most stanzas held for an inactive client before the queue is flushed anyway.
pub const MAX_QUEUE: usize = 100;

/// `mod_client_state` options: which kinds of stanza are held back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Hold presence updates (`queue_presence`).
    pub queue_presence: bool,
    /// Hold chat-state-only messages (`queue_chat_states`).
    pub queue_chat_states: bool,
    /// Hold PEP notifications (`queue_pep`).
    pub queue_pep: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            queue_presence: true,
            queue_chat_states: true,
            queue_pep: true,
        }
    }
}

impl Settings {
    /// Settings from validated `mod_client_state` options (each defaults to true).
    pub fn from_options(options: &ModuleOptions) -> Self {
        Self {
            queue_presence: options.bool("queue_presence").unwrap_or(true),
            queue_chat_states: options.bool("queue_chat_states").unwrap_or(true),
            queue_pep: options.bool("queue_pep").unwrap_or(true),
        }
    }
}

/// What identifies a held stanza: a newer one with the same key replaces it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Key {
    Presence(Jid),
    ChatState(Jid),
    Pep(Jid, String),
}

/// The client state of one stream and the stanzas held while it is inactive.
#[derive(Debug, Default)]
pub struct ClientState {
    settings: Settings,
    inactive: bool,
    queue: Vec<(Key, Arc<Stanza>)>,
}

impl ClientState {
    /// An active client (§4: clients start active).
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            inactive: false,
            queue: Vec::new(),
        }
    }

    /// True after `<inactive/>` and before `<active/>`.
    pub fn is_inactive(&self) -> bool {
        self.inactive
    }

    /// Number of stanzas held.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The client sent `<inactive/>`.
    pub fn set_inactive(&mut self) {
        self.inactive = true;
    }

    /// The client sent `<active/>`: everything held, in order, to write now.
    pub fn set_active(&mut self) -> Vec<Arc<Stanza>> {
        self.inactive = false;
        self.flush()
    }

    /// Empties the queue (oldest first), e.g. when the stream is lost and the held stanzas
    /// must join stream management's unacknowledged queue.
    pub fn flush(&mut self) -> Vec<Arc<Stanza>> {
        self.queue.drain(..).map(|(_, s)| s).collect()
    }

    /// A stanza for the client: returns what to write now, in order (possibly nothing, if the
    /// stanza is held).
    pub fn outgoing(&mut self, stanza: Arc<Stanza>) -> Vec<Arc<Stanza>> {
        if !self.inactive {
            return vec![stanza];
        }
        let Some(key) = self.key(&stanza) else {
            // Urgent: whatever is held goes first, so the client sees routing order.
            let mut out = self.flush();
            out.push(stanza);
            return out;
        };
        // Only the latest per key matters; it takes the place at the end of the queue.
        self.queue.retain(|(k, _)| *k != key);
        if self.queue.len() >= MAX_QUEUE {
            let mut out = self.flush();
            out.push(stanza);
            return out;
        }
        self.queue.push((key, stanza));
        Vec::new()
    }

    fn key(&self, stanza: &Stanza) -> Option<Key> {
        let from = stanza.from().clone();
        let el = stanza.element();
        match stanza.kind() {
            Kind::Presence if self.settings.queue_presence => {
                match PresenceType::parse(stanza.type_attr()) {
                    Some(PresenceType::Available | PresenceType::Unavailable) => {
                        Some(Key::Presence(from))
                    }
                    _ => None,
                }
            }
            Kind::Message if !has_content(el) => {
                if self.settings.queue_chat_states && el.children().any(|c| c.ns() == CHATSTATES) {
                    return Some(Key::ChatState(from));
                }
                if self.settings.queue_pep
                    && let Some(event) = el.get_child("event", PUBSUB_EVENT)
                {
                    let node = event
                        .children()
                        .find_map(|c| c.attr("node"))
                        .unwrap_or_default()
                        .to_owned();
                    return Some(Key::Pep(from, node));
                }
                None
            }
            _ => None,
        }
    }
}

/// A message with a body or subject is meant to be read now.
fn has_content(el: &Element) -> bool {
    el.get_child("body", ns::CLIENT).is_some() || el.get_child("subject", ns::CLIENT).is_some()
}

#[cfg(test)]
mod tests {
    use starling_config::OptionValue;

    use super::*;

    fn st(xml: &str) -> Arc<Stanza> {
        let el: Element = xml.parse().unwrap();
        Arc::new(Stanza::from_element(el).unwrap())
    }

    fn presence(from: &str, show: &str) -> Arc<Stanza> {
        st(&format!(
            "<presence xmlns='jabber:client' from='{from}' to='a@x/r'><show>{show}</show></presence>"
        ))
    }

    fn composing(from: &str) -> Arc<Stanza> {
        st(&format!(
            "<message xmlns='jabber:client' from='{from}' to='a@x/r' type='chat'>\
             <composing xmlns='{CHATSTATES}'/></message>"
        ))
    }

    fn body(from: &str) -> Arc<Stanza> {
        st(&format!(
            "<message xmlns='jabber:client' from='{from}' to='a@x/r' type='chat'>\
             <body>hi</body><active xmlns='{CHATSTATES}'/></message>"
        ))
    }

    fn shows(v: &[Arc<Stanza>]) -> Vec<String> {
        v.iter()
            .map(|s| {
                s.element()
                    .get_child("show", ns::CLIENT)
                    .map(|c| c.text())
                    .unwrap_or_else(|| s.kind().name().to_owned())
            })
            .collect()
    }

    #[test]
    fn active_client_gets_everything_at_once() {
        let mut c = ClientState::new(Settings::default());
        assert!(!c.is_inactive());
        assert_eq!(c.outgoing(presence("b@x/1", "away")).len(), 1);
        assert_eq!(c.queued(), 0);
    }

    #[test]
    fn inactive_client_keeps_latest_presence_per_full_jid() {
        let mut c = ClientState::new(Settings::default());
        c.set_inactive();
        assert!(c.outgoing(presence("b@x/1", "away")).is_empty());
        assert!(c.outgoing(presence("b@x/2", "dnd")).is_empty());
        assert!(c.outgoing(presence("b@x/1", "xa")).is_empty());
        assert_eq!(c.queued(), 2);
        let out = c.set_active();
        assert_eq!(shows(&out), ["dnd", "xa"]);
        assert!(!c.is_inactive());
        assert_eq!(c.queued(), 0);
    }

    #[test]
    fn urgent_stanzas_flush_the_queue_first() {
        let mut c = ClientState::new(Settings::default());
        c.set_inactive();
        assert!(c.outgoing(presence("b@x/1", "away")).is_empty());
        assert!(c.outgoing(composing("b@x/1")).is_empty());
        assert!(c.outgoing(composing("b@x/1")).is_empty());
        assert_eq!(c.queued(), 2);
        let out = c.outgoing(body("b@x/1"));
        assert_eq!(shows(&out), ["away", "message", "message"]);
        assert!(out[2].element().get_child("body", ns::CLIENT).is_some());
        // Subscription requests and IQs are not held either.
        let sub = st("<presence xmlns='jabber:client' from='c@x' to='a@x' type='subscribe'/>");
        assert_eq!(c.outgoing(sub).len(), 1);
        let iq = st("<iq xmlns='jabber:client' from='x' to='a@x/r' type='get' id='1'/>");
        assert_eq!(c.outgoing(iq).len(), 1);
        assert!(c.is_inactive(), "still inactive after an urgent stanza");
    }

    #[test]
    fn pep_events_are_held_per_node() {
        let mut c = ClientState::new(Settings::default());
        c.set_inactive();
        let event = |node: &str| {
            st(&format!(
                "<message xmlns='jabber:client' from='b@x' to='a@x/r'>\
                 <event xmlns='{PUBSUB_EVENT}'><items node='{node}'/></event></message>"
            ))
        };
        assert!(c.outgoing(event("tune")).is_empty());
        assert!(c.outgoing(event("mood")).is_empty());
        assert!(c.outgoing(event("tune")).is_empty());
        assert_eq!(c.queued(), 2);
    }

    #[test]
    fn options_turn_queueing_off() {
        let mut o = ModuleOptions::new();
        o.insert("queue_presence", OptionValue::Bool(false));
        o.insert("queue_chat_states", OptionValue::Bool(false));
        let settings = Settings::from_options(&o);
        assert!(settings.queue_pep);
        let mut c = ClientState::new(settings);
        c.set_inactive();
        assert_eq!(c.outgoing(presence("b@x/1", "away")).len(), 1);
        assert_eq!(c.outgoing(composing("b@x/1")).len(), 1);
    }

    #[test]
    fn a_full_queue_is_flushed_not_dropped() {
        let mut c = ClientState::new(Settings::default());
        c.set_inactive();
        for n in 0..MAX_QUEUE {
            assert!(c.outgoing(presence(&format!("b@x/{n}"), "away")).is_empty());
        }
        let out = c.outgoing(presence("b@x/last", "away"));
        assert_eq!(out.len(), MAX_QUEUE + 1);
        assert_eq!(c.queued(), 0);
    }
}
