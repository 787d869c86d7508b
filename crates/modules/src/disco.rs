//! `mod_disco`: XEP-0030 service discovery for the host and, on their behalf, for accounts.
//!
//! The host's features are derived from what the started modules actually handle
//! ([`starling_core::module::HostModules::features`], DESIGN.md §2.2), so the list can never advertise a namespace
//! nobody answers. Implements XEP-0030 §3.1 (info, identity `server/im`), §3.2 (`node`
//! queries: nodes published by modules, such as ad-hoc commands; others are `<item-not-found/>`), §4 (items: the host's services,
//! such as `conference.HOST`), and the account identity `account/registered`
//! of the XEP-0030 registry for queries to a user's bare JID.

use std::sync::Arc;

use starling_config::{ModuleOptions, ModuleSpec};
use starling_core::BoxFuture;
use starling_core::Server;
use starling_core::module::{
    DiscoNodes, HostContext, IqHandler, IqResult, IqTarget, Module, ModuleError, Registrations,
};
use starling_xmpp::Element;
use starling_xmpp::error::StanzaErrorCondition;
use starling_xmpp::ns;
use starling_xmpp::stanza::{Stanza, element};

use crate::iq;

/// The name in the host's identity.
pub const SERVER_NAME: &str = "Starling";

/// `mod_disco`.
pub struct Disco;

impl Module for Disco {
    fn spec(&self) -> ModuleSpec {
        ModuleSpec {
            name: "mod_disco",
            aliases: &["disco"],
            options: &[],
        }
    }

    fn start(
        &self,
        _host: &HostContext<'_>,
        _options: &ModuleOptions,
    ) -> Result<Registrations, ModuleError> {
        Ok(Registrations::default()
            .iq(ns::DISCO_INFO, IqTarget::Host, Arc::new(HostInfo))
            .iq(ns::DISCO_ITEMS, IqTarget::Host, Arc::new(HostItems))
            .iq(ns::DISCO_INFO, IqTarget::Account, Arc::new(AccountInfo)))
    }
}

/// disco#info to the server's domain.
struct HostInfo;

impl IqHandler for HostInfo {
    fn handle<'a>(&'a self, server: &'a Server, iq: &'a Stanza) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            let payload = iq::get_payload(iq)?;
            if let Some(node) = payload.attr("node") {
                return node_query(server, iq, node, |p, s, from, n| p.info(s, from, n));
            }
            let features = server
                .host_modules(iq.to().domain())
                .map(|m| m.features(IqTarget::Host))
                .unwrap_or_default();
            Ok(Some(info(
                &[("server", "im", Some(SERVER_NAME))],
                with_disco(features),
            )))
        })
    }
}

/// disco#items to the server's domain: the services modules run for it (MUC, upload, ...).
struct HostItems;

impl IqHandler for HostItems {
    fn handle<'a>(&'a self, server: &'a Server, iq: &'a Stanza) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            let payload = iq::get_payload(iq)?;
            if let Some(node) = payload.attr("node") {
                return node_query(server, iq, node, |p, s, from, n| p.items(s, from, n));
            }
            let mut query = element("query", ns::DISCO_ITEMS, &[]);
            if let Some(modules) = server.host_modules(iq.to().domain()) {
                for service in &modules.registrations.services {
                    query.append_child(element(
                        "item",
                        ns::DISCO_ITEMS,
                        &[("jid", &service.domain), ("name", &service.name)],
                    ));
                }
            }
            Ok(Some(query))
        })
    }
}

/// disco#info to an account's bare JID, answered by the server (XEP-0030 §3.1, "account").
struct AccountInfo;

impl IqHandler for AccountInfo {
    fn handle<'a>(&'a self, server: &'a Server, iq: &'a Stanza) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            let payload = iq::get_payload(iq)?;
            let user = iq::account(iq)?;
            // Answering for an account that does not exist would confirm nothing useful and
            // would differ from what an unknown account's bare JID gets for every other
            // namespace, so such queries get the RFC 6121 §8.5.1 answer.
            if !iq::from_account_itself(iq) {
                let exists = server
                    .stores()
                    .exists(&user)
                    .await
                    .map_err(|e| iq::storage_failure("cannot check account", &user, &e))?;
                if !exists {
                    return Err(iq::error(StanzaErrorCondition::ServiceUnavailable));
                }
            }
            refuse_nodes(payload)?;
            let features = server
                .host_modules(user.domain())
                .map(|m| m.features(IqTarget::Account))
                .unwrap_or_default();
            Ok(Some(info(&[("account", "registered", None)], features)))
        })
    }
}

/// XEP-0030 §3.2: a node of the host's JID, answered by the module that publishes it (ad-hoc
/// commands); nodes nobody publishes are `<item-not-found/>`.
fn node_query(
    server: &Server,
    iq: &Stanza,
    node: &str,
    ask: impl Fn(&dyn DiscoNodes, &Server, &starling_xmpp::jid::Jid, &str) -> Option<Element>,
) -> IqResult {
    server
        .host_modules(iq.to().domain())
        .and_then(|m| {
            m.registrations
                .disco_nodes
                .iter()
                .find_map(|p| ask(p.as_ref(), server, iq.from(), node))
        })
        .map(Some)
        .ok_or_else(|| iq::error(StanzaErrorCondition::ItemNotFound))
}

/// XEP-0030 §3.2: accounts publish no nodes here, so any `node` is unknown.
fn refuse_nodes(payload: &Element) -> Result<(), starling_xmpp::error::StanzaError> {
    match payload.attr("node") {
        Some(_) => Err(iq::error(StanzaErrorCondition::ItemNotFound)),
        None => Ok(()),
    }
}

/// The handled features plus the two disco namespaces, which a disco responder always has
/// (XEP-0030 §3.1), sorted and without duplicates.
fn with_disco(mut features: Vec<&'static str>) -> Vec<&'static str> {
    features.extend([ns::DISCO_INFO, ns::DISCO_ITEMS]);
    features.sort_unstable();
    features.dedup();
    features
}

/// `<query xmlns=disco#info><identity/>..<feature/>..</query>`.
fn info(identities: &[(&str, &str, Option<&str>)], features: Vec<&str>) -> Element {
    let mut query = element("query", ns::DISCO_INFO, &[]);
    for (category, kind, name) in identities {
        let mut attrs = vec![("category", *category), ("type", *kind)];
        if let Some(name) = name {
            attrs.push(("name", name));
        }
        query.append_child(element("identity", ns::DISCO_INFO, &attrs));
    }
    for var in features {
        query.append_child(element("feature", ns::DISCO_INFO, &[("var", var)]));
    }
    query
}

#[cfg(test)]
mod tests {
    use starling_xmpp::error::StanzaErrorCondition as C;

    use super::*;
    use crate::fixture::{Fixture, error_condition};

    fn features(reply: &Stanza) -> Vec<String> {
        reply
            .payload()
            .map(|q| {
                q.children()
                    .filter(|c| c.is("feature", ns::DISCO_INFO))
                    .filter_map(|c| c.attr("var").map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn host_info_lists_identity_and_handled_namespaces() {
        let f = Fixture::new().await;
        let mut s = f.session("alice@localhost/a").await;
        let reply = s
            .iq(
                "localhost",
                "get",
                "<query xmlns='http://jabber.org/protocol/disco#info'/>",
            )
            .await;
        assert_eq!(reply.type_attr(), Some("result"));
        let query = reply.payload().unwrap();
        let identity = query.get_child("identity", ns::DISCO_INFO).unwrap();
        assert_eq!(identity.attr("category"), Some("server"));
        assert_eq!(identity.attr("type"), Some("im"));
        assert_eq!(identity.attr("name"), Some("Starling"));
        let vars = features(&reply);
        for ns in [
            ns::DISCO_INFO,
            ns::DISCO_ITEMS,
            ns::PING,
            ns::VERSION,
            ns::TIME,
            ns::LAST,
            ns::REGISTER,
        ] {
            assert!(vars.iter().any(|v| v == ns), "{ns} missing from {vars:?}");
        }
        // Account-only namespaces are not host features.
        assert!(!vars.iter().any(|v| v == ns::ROSTER));
        let mut sorted = vars.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, vars, "sorted, no duplicates");
    }

    #[tokio::test]
    async fn unknown_node_and_set_are_refused() {
        let f = Fixture::new().await;
        let mut s = f.session("alice@localhost/a").await;
        let reply = s
            .iq(
                "localhost",
                "get",
                "<query xmlns='http://jabber.org/protocol/disco#info' node='x'/>",
            )
            .await;
        assert_eq!(error_condition(&reply), Some(C::ItemNotFound));
        let reply = s
            .iq(
                "localhost",
                "get",
                "<query xmlns='http://jabber.org/protocol/disco#items' node='x'/>",
            )
            .await;
        assert_eq!(error_condition(&reply), Some(C::ItemNotFound));
        let reply = s
            .iq(
                "localhost",
                "set",
                "<query xmlns='http://jabber.org/protocol/disco#info'/>",
            )
            .await;
        assert_eq!(error_condition(&reply), Some(C::NotAllowed));
    }

    #[tokio::test]
    async fn host_items_list_the_hosts_services() {
        let f = Fixture::new().await;
        let mut s = f.session("alice@localhost/a").await;
        let reply = s
            .iq(
                "localhost",
                "get",
                "<query xmlns='http://jabber.org/protocol/disco#items'/>",
            )
            .await;
        assert_eq!(reply.type_attr(), Some("result"));
        let items: Vec<String> = reply
            .payload()
            .unwrap()
            .children()
            .filter_map(|i| i.attr("jid").map(str::to_owned))
            .collect();
        let services: Vec<String> = f
            .server
            .host_modules("localhost")
            .unwrap()
            .registrations
            .services
            .iter()
            .map(|s| s.domain.clone())
            .collect();
        assert_eq!(items, services);
        // Every listed service is routed.
        for domain in &items {
            assert!(
                f.server.route_for(domain).is_some(),
                "{domain} is not routed"
            );
        }
    }

    #[tokio::test]
    async fn account_info_for_self_and_existing_accounts_only() {
        let f = Fixture::new().await;
        f.account("bob@localhost").await;
        let mut s = f.session("alice@localhost/a").await;
        // Alice (no account in the store) asks about herself: answered.
        let reply = s
            .iq(
                "alice@localhost",
                "get",
                "<query xmlns='http://jabber.org/protocol/disco#info'/>",
            )
            .await;
        assert_eq!(reply.type_attr(), Some("result"));
        let identity = reply
            .payload()
            .unwrap()
            .get_child("identity", ns::DISCO_INFO)
            .unwrap();
        assert_eq!(identity.attr("category"), Some("account"));
        assert_eq!(identity.attr("type"), Some("registered"));
        let vars = features(&reply);
        assert!(vars.iter().any(|v| v == ns::ROSTER), "{vars:?}");
        assert!(vars.iter().any(|v| v == ns::LAST), "{vars:?}");
        // Bob exists: answered.
        let reply = s
            .iq(
                "bob@localhost",
                "get",
                "<query xmlns='http://jabber.org/protocol/disco#info'/>",
            )
            .await;
        assert_eq!(reply.type_attr(), Some("result"));
        // Nobody: service-unavailable.
        let reply = s
            .iq(
                "nobody@localhost",
                "get",
                "<query xmlns='http://jabber.org/protocol/disco#info'/>",
            )
            .await;
        assert_eq!(error_condition(&reply), Some(C::ServiceUnavailable));
    }
}
