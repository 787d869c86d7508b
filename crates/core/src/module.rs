//! The module interface (DESIGN.md §2.2): a module declares what it handles, the core installs it.
//!
//! Modules never reach into the router; `start` returns a [`Registrations`] value (IQ handlers by
//! namespace and target, disco features), which the server keeps as an immutable per-host
//! snapshot. Service discovery is derived from these registrations, so disco#info lists exactly
//! what is handled.

use std::sync::Arc;

use starling_config::{ModuleOptions, ModuleSpec};
use starling_xmpp::Element;
use starling_xmpp::error::StanzaError;
use starling_xmpp::jid::Jid;
use starling_xmpp::stanza::Stanza;

use crate::BoxFuture;
use crate::hooks::HookSet;
use crate::server::Server;

/// Who an IQ handler answers for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IqTarget {
    /// IQs addressed to the server's domain (`to='example.org'`).
    Host,
    /// IQs addressed to an account's bare JID (or with no `to`), answered by the server on
    /// the account's behalf (roster, vCard, last activity).
    Account,
}

/// What an IQ handler answers: a result payload (or an empty result), or a stanza error.
pub type IqResult = Result<Option<Element>, StanzaError>;

/// Handles IQ requests (`get`/`set`) for one namespace.
pub trait IqHandler: Send + Sync {
    /// Answers `iq`, whose first child is in the registered namespace.
    fn handle<'a>(&'a self, server: &'a Server, iq: &'a Stanza) -> BoxFuture<'a, IqResult>;
}

/// What an IQ handler on a not-yet-authenticated stream knows about the stream.
#[derive(Clone, Debug)]
pub struct StreamContext {
    /// The host the stream is for.
    pub host: String,
    /// The peer's IP address (after PROXY protocol, if any).
    pub ip: std::net::IpAddr,
    /// True once the stream is encrypted.
    pub secure: bool,
}

/// Handles IQs sent before authentication (XEP-0077 in-band registration is the only use).
pub trait StreamIqHandler: Send + Sync {
    /// Answers `iq` (an element with no trusted addresses).
    fn handle<'a>(
        &'a self,
        server: &'a Server,
        stream: &'a StreamContext,
        iq: &'a Element,
    ) -> BoxFuture<'a, IqResult>;
}

/// A service with its own domain: a subdomain of a host (`conference.HOST`, `upload.HOST`) or
/// an external component. The router hands it every stanza for its domain (DESIGN §2.1).
pub trait Service: Send + Sync {
    /// Handles a stanza addressed to the service's domain (any localpart and resource).
    fn route<'a>(&'a self, server: &'a Server, stanza: Stanza) -> BoxFuture<'a, ()>;

    /// The route was taken away: another cluster member's registration of the same domain
    /// won a race ([`crate::routes`]). A connection closes with `<conflict/>`.
    fn revoked(&self) {}

    /// True if each entity of the service (`name@domain`) runs on one cluster node, chosen by
    /// the cluster's placement ([`crate::placement`]); stanzas for it are forwarded there.
    fn placed(&self) -> bool {
        false
    }

    /// The cluster's members changed: a [`Self::placed`] service hands off the entities that
    /// are now placed on another node; when the node is stopping
    /// ([`crate::server::NodeState::Stopping`]), all of them. Must not block (spawn the work).
    fn placement_changed(&self, server: &Server) {
        let _ = server;
    }
}

/// Answers XEP-0030 queries for nodes of the host's own JID (§3.2), such as the XEP-0050
/// command list. mod_disco asks each registered provider in turn; the first answer wins.
pub trait DiscoNodes: Send + Sync {
    /// The disco#info `<query/>` for `node`, asked by `from`; `None` if the node is not this
    /// provider's (or `from` may not see it).
    fn info(&self, server: &Server, from: &Jid, node: &str) -> Option<Element>;
    /// The disco#items `<query/>` for `node`, asked by `from`; `None` as for [`Self::info`].
    fn items(&self, server: &Server, from: &Jid, node: &str) -> Option<Element>;
}

/// A service a module runs for a host.
#[derive(Clone)]
pub struct ServiceRegistration {
    /// The service's domain, already expanded (`conference.example.org`).
    pub domain: String,
    /// Human-readable name for disco#items (`Chatrooms`).
    pub name: String,
    /// The handler.
    pub handler: Arc<dyn Service>,
}

/// One IQ registration.
#[derive(Clone)]
pub struct IqRegistration {
    /// Namespace of the payload element.
    pub ns: &'static str,
    /// Host or account.
    pub target: IqTarget,
    /// The handler.
    pub handler: Arc<dyn IqHandler>,
}

/// A disco#info feature, advertised for a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Feature {
    /// The `var`.
    pub var: &'static str,
    /// Where it is advertised.
    pub target: IqTarget,
}

/// Everything a started module contributes to a host.
#[derive(Clone, Default)]
pub struct Registrations {
    /// IQ handlers.
    pub iq: Vec<IqRegistration>,
    /// Disco features (IQ namespaces are advertised automatically; list others here).
    pub features: Vec<Feature>,
    /// Stream features for c2s after authentication (`(element name, namespace)`), e.g.
    /// roster versioning.
    pub stream_features: Vec<(&'static str, &'static str)>,
    /// Stream features offered before authentication (in-band registration).
    pub pre_auth_features: Vec<(&'static str, &'static str)>,
    /// IQ handlers for unauthenticated streams, by namespace.
    pub stream_iq: Vec<(&'static str, Arc<dyn StreamIqHandler>)>,
    /// Hook handlers.
    pub hooks: HookSet,
    /// Services on their own domains.
    pub services: Vec<ServiceRegistration>,
    /// Disco node providers for the host's JID.
    pub disco_nodes: Vec<Arc<dyn DiscoNodes>>,
}

impl Registrations {
    /// Adds an IQ handler.
    pub fn iq(mut self, ns: &'static str, target: IqTarget, handler: Arc<dyn IqHandler>) -> Self {
        self.iq.push(IqRegistration {
            ns,
            target,
            handler,
        });
        self
    }

    /// Adds a disco feature.
    pub fn feature(mut self, var: &'static str, target: IqTarget) -> Self {
        self.features.push(Feature { var, target });
        self
    }

    /// Adds a c2s stream feature.
    pub fn stream_feature(mut self, name: &'static str, ns: &'static str) -> Self {
        self.stream_features.push((name, ns));
        self
    }

    /// Adds a handler for IQs on unauthenticated streams, and its pre-auth stream feature.
    pub fn stream_iq(
        mut self,
        ns: &'static str,
        handler: Arc<dyn StreamIqHandler>,
        feature: Option<(&'static str, &'static str)>,
    ) -> Self {
        self.stream_iq.push((ns, handler));
        self.pre_auth_features.extend(feature);
        self
    }

    /// Merges another module's registrations into this one.
    pub fn extend(&mut self, other: Self) {
        self.iq.extend(other.iq);
        self.features.extend(other.features);
        self.stream_features.extend(other.stream_features);
        self.pre_auth_features.extend(other.pre_auth_features);
        self.stream_iq.extend(other.stream_iq);
        self.hooks.extend(other.hooks);
        self.services.extend(other.services);
        self.disco_nodes.extend(other.disco_nodes);
    }

    /// Adds a provider of disco nodes on the host's JID.
    pub fn disco_nodes(mut self, provider: Arc<dyn DiscoNodes>) -> Self {
        self.disco_nodes.push(provider);
        self
    }

    /// Adds a service on its own domain.
    pub fn service(
        mut self,
        domain: String,
        name: impl Into<String>,
        handler: Arc<dyn Service>,
    ) -> Self {
        self.services.push(ServiceRegistration {
            domain,
            name: name.into(),
            handler,
        });
        self
    }
}

/// What a module learns about the host it starts on.
pub struct HostContext<'a> {
    /// The host (domain) being started.
    pub host: &'a str,
}

/// Why a module could not start.
#[derive(Debug, thiserror::Error)]
#[error("{module}: {message}")]
pub struct ModuleError {
    /// Module name.
    pub module: &'static str,
    /// What went wrong.
    pub message: String,
}

/// A server module (`mod_roster`, `mod_disco`, ...).
pub trait Module: Send + Sync + 'static {
    /// Canonical name, aliases and option specifications, used by the config loader.
    fn spec(&self) -> ModuleSpec;
    /// Starts the module on one host with its validated options.
    fn start(
        &self,
        host: &HostContext<'_>,
        options: &ModuleOptions,
    ) -> Result<Registrations, ModuleError>;
}

/// The modules of one host, after start: an immutable snapshot.
#[derive(Default)]
pub struct HostModules {
    /// Names of the started modules.
    pub names: Vec<&'static str>,
    /// Merged registrations.
    pub registrations: Registrations,
}

impl HostModules {
    /// The handler for a namespace and target.
    pub fn iq_handler(&self, ns: &str, target: IqTarget) -> Option<&Arc<dyn IqHandler>> {
        self.registrations
            .iq
            .iter()
            .find(|r| r.target == target && r.ns == ns)
            .map(|r| &r.handler)
    }

    /// The pre-authentication handler for a namespace.
    pub fn stream_iq_handler(&self, ns: &str) -> Option<&Arc<dyn StreamIqHandler>> {
        self.registrations
            .stream_iq
            .iter()
            .find(|(n, _)| *n == ns)
            .map(|(_, h)| h)
    }

    /// Disco features for a target: registered features plus handled IQ namespaces, sorted.
    pub fn features(&self, target: IqTarget) -> Vec<&'static str> {
        let mut vars: Vec<&'static str> = self
            .registrations
            .iq
            .iter()
            .filter(|r| r.target == target)
            .map(|r| r.ns)
            .chain(
                self.registrations
                    .features
                    .iter()
                    .filter(|f| f.target == target)
                    .map(|f| f.var),
            )
            .collect();
        vars.sort_unstable();
        vars.dedup();
        vars
    }

    /// The hooks of this host.
    pub fn hooks(&self) -> &HookSet {
        &self.registrations.hooks
    }

    /// True if the named module runs on this host.
    pub fn has(&self, name: &str) -> bool {
        self.names.contains(&name)
    }
}
