//! Test fixture: a real [`Server`] on SQLite in a temporary directory, with bound sessions
//! whose inboxes the tests read. Only compiled for tests.

use std::collections::VecDeque;
use std::sync::Arc;

use starling_config::{Config, OptionValue};
use starling_core::Server;
use starling_core::sm::{SessionChannels, SessionId, SessionMsg};
use starling_storage::Credentials;
use starling_storage_sql::SqlStore;
use starling_xmpp::Element;
use starling_xmpp::error::{StanzaError, StanzaErrorCondition};
use starling_xmpp::jid::{BareJid, FullJid, Jid};
use starling_xmpp::ns;
use starling_xmpp::stanza::{Stanza, element};

/// A server with every module of the catalogue started on `localhost`.
pub(crate) struct Fixture {
    pub(crate) server: Arc<Server>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// The embedded default configuration.
    pub(crate) async fn new() -> Self {
        Self::with(|_| {}).await
    }

    /// The embedded default configuration, changed by `edit` before the server starts.
    pub(crate) async fn with(edit: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqlStore::open_sqlite(&dir.path().join("test.db"))
            .await
            .unwrap();
        let mut config = Config::embedded_default(&crate::specs());
        // Tests start from each module's own defaults, not the embedded server policy
        // (which, for example, restricts registration to loopback).
        for module in config
            .modules
            .iter_mut()
            .chain(config.host_modules.values_mut().flatten())
        {
            module.options = starling_config::ModuleOptions::new();
        }
        edit(&mut config);
        let server = Server::new(config, Arc::new(store), &crate::catalogue()).unwrap();
        Self { server, _dir: dir }
    }

    /// Creates an account with password `secret`.
    pub(crate) async fn account(&self, jid: &str) -> BareJid {
        let user = BareJid::parse(jid).unwrap();
        let creds = Credentials::new("secret", Credentials::DEFAULT_ITERATIONS).unwrap();
        self.server.stores().create(&user, &creds).await.unwrap();
        user
    }

    /// Binds a session for `full`.
    pub(crate) async fn session(&self, full: &str) -> TestSession {
        let jid = FullJid::parse(full).unwrap();
        let (id, channels) = self.server.sm().bind(jid.clone(), None).unwrap();
        TestSession {
            jid,
            id,
            server: self.server.clone(),
            channels,
            queued: VecDeque::new(),
            next_id: 0,
        }
    }
}

/// Sets a module option in every module list of `config` (global and per host).
pub(crate) fn set_option(config: &mut Config, module: &str, key: &str, value: OptionValue) {
    let lists = std::iter::once(&mut config.modules).chain(config.host_modules.values_mut());
    for list in lists {
        for m in list.iter_mut().filter(|m| m.name == module) {
            m.options.insert(key, value.clone());
        }
    }
}

/// A bound session: sends stanzas as its client would, reads what the server delivers.
pub(crate) struct TestSession {
    pub(crate) jid: FullJid,
    pub(crate) id: SessionId,
    server: Arc<Server>,
    pub(crate) channels: SessionChannels,
    queued: VecDeque<Stanza>,
    next_id: u32,
}

impl TestSession {
    /// Sends an IQ of `kind` with `payload` (XML) to `to` and returns the reply; stanzas that
    /// arrive before it (roster pushes, presence) stay queued for [`Self::next`].
    pub(crate) async fn iq(&mut self, to: &str, kind: &str, payload: &str) -> Stanza {
        self.next_id += 1;
        let id = format!("q{}", self.next_id);
        let mut el = element("iq", ns::CLIENT, &[("type", kind), ("id", &id)]);
        el.append_child(payload.parse::<Element>().unwrap());
        let stanza = Stanza::new(el, self.jid.clone().into(), Jid::parse(to).unwrap()).unwrap();
        self.server.route(stanza).await;
        let mut reply = None;
        while let Ok(SessionMsg::Stanza(s)) = self.channels.inbox.try_recv() {
            let s = (*s).clone();
            if reply.is_none()
                && s.id() == Some(id.as_str())
                && matches!(s.type_attr(), Some("result" | "error"))
            {
                reply = Some(s);
            } else {
                self.queued.push_back(s);
            }
        }
        reply.unwrap_or_else(|| panic!("no reply to {id}"))
    }

    /// The next delivered stanza, if any.
    pub(crate) fn next(&mut self) -> Option<Stanza> {
        if let Some(s) = self.queued.pop_front() {
            return Some(s);
        }
        match self.channels.inbox.try_recv() {
            Ok(SessionMsg::Stanza(s)) => Some((*s).clone()),
            Err(_) => None,
        }
    }

    /// Everything delivered so far.
    pub(crate) fn drain(&mut self) -> Vec<Stanza> {
        std::iter::from_fn(|| self.next()).collect()
    }

    /// Marks the session available (as initial presence would) with priority 0.
    pub(crate) fn set_available(&self) {
        self.server
            .sm()
            .update(&self.jid, self.id, |e| e.available = true);
    }
}

/// The defined condition of an error reply.
pub(crate) fn error_condition(reply: &Stanza) -> Option<StanzaErrorCondition> {
    error_of(reply).map(|e| e.condition)
}

/// The error of an error reply.
pub(crate) fn error_of(reply: &Stanza) -> Option<StanzaError> {
    if reply.type_attr() != Some("error") {
        return None;
    }
    reply
        .element()
        .children()
        .find(|c| c.name() == "error")
        .and_then(StanzaError::from_element)
}
