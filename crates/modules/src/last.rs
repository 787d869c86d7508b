//! `mod_last`: XEP-0012 last activity.
//!
//! Two queries are answered by the server:
//! - to the host (§5, "Server Query"): the server's uptime in seconds;
//! - to an account's bare JID (§4, "Offline User Query"), for the account itself or a contact
//!   the account shares its presence with (roster subscription `from` or `both`, the same
//!   rule as presence probes, RFC 6121 §4.3.2): `0` while the account has an available
//!   resource (it is active now), else the seconds since its last logout with the status
//!   text of its last unavailable presence, or `<item-not-found/>` if none was recorded.
//!   Anyone else gets `<forbidden/>`.
//!
//! The logout time itself is recorded by `starling_core::presence::session_closed`.

use std::sync::Arc;

use starling_config::{ModuleOptions, ModuleSpec};
use starling_core::BoxFuture;
use starling_core::Server;
use starling_core::module::{
    HostContext, IqHandler, IqResult, IqTarget, Module, ModuleError, Registrations,
};
use starling_core::roster::is_subscriber;
use starling_core::server::unix_now;
use starling_xmpp::Element;
use starling_xmpp::error::StanzaErrorCondition;
use starling_xmpp::ns;
use starling_xmpp::stanza::{Stanza, element};

use crate::iq;

/// `mod_last`.
pub struct Last;

impl Module for Last {
    fn spec(&self) -> ModuleSpec {
        ModuleSpec {
            name: "mod_last",
            aliases: &["last"],
            options: &[],
        }
    }

    fn start(
        &self,
        _host: &HostContext<'_>,
        _options: &ModuleOptions,
    ) -> Result<Registrations, ModuleError> {
        Ok(Registrations::default()
            .iq(ns::LAST, IqTarget::Host, Arc::new(Uptime))
            .iq(ns::LAST, IqTarget::Account, Arc::new(AccountLast)))
    }
}

/// XEP-0012 §5: the server's uptime.
struct Uptime;

impl IqHandler for Uptime {
    fn handle<'a>(&'a self, server: &'a Server, iq: &'a Stanza) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            iq::get_payload(iq)?;
            Ok(Some(query(server.uptime().as_secs(), None)))
        })
    }
}

/// XEP-0012 §4: an account's last logout.
struct AccountLast;

impl IqHandler for AccountLast {
    fn handle<'a>(&'a self, server: &'a Server, iq: &'a Stanza) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            iq::get_payload(iq)?;
            let user = iq::account(iq)?;
            if !iq::from_account_itself(iq) {
                let contact = iq.from().to_bare();
                let item = server
                    .stores()
                    .item(&user, &contact)
                    .await
                    .map_err(|e| iq::storage_failure("cannot load roster item", &user, &e))?;
                if !item.as_ref().is_some_and(is_subscriber) {
                    return Err(iq::error(StanzaErrorCondition::Forbidden)
                        .with_text("not subscribed to this user's presence"));
                }
            }
            if !server.sm().available_of(&user).is_empty() {
                return Ok(Some(query(0, None)));
            }
            let last = server
                .stores()
                .last(&user)
                .await
                .map_err(|e| iq::storage_failure("cannot load last activity", &user, &e))?;
            match last {
                Some((at, status)) => {
                    // A clock stepped backwards must not produce a negative age.
                    let age = u64::try_from(unix_now().saturating_sub(at)).unwrap_or(0);
                    Ok(Some(query(age, Some(&status))))
                }
                None => Err(iq::error(StanzaErrorCondition::ItemNotFound)),
            }
        })
    }
}

/// `<query xmlns='jabber:iq:last' seconds='N'>status</query>`.
fn query(seconds: u64, status: Option<&str>) -> Element {
    let mut q = element("query", ns::LAST, &[("seconds", &seconds.to_string())]);
    if let Some(status) = status.filter(|s| !s.is_empty()) {
        q.append_text(status);
    }
    q
}

#[cfg(test)]
mod tests {
    use starling_storage::{RosterItem, Subscription};
    use starling_xmpp::error::StanzaErrorCondition as C;
    use starling_xmpp::jid::BareJid;

    use super::*;
    use crate::fixture::{Fixture, error_condition};

    const QUERY: &str = "<query xmlns='jabber:iq:last'/>";

    fn seconds(reply: &Stanza) -> u64 {
        reply
            .payload()
            .and_then(|q| q.attr("seconds"))
            .and_then(|s| s.parse().ok())
            .unwrap()
    }

    async fn subscribe(f: &Fixture, user: &BareJid, contact: &str, sub: Subscription) {
        let mut item = RosterItem::new(BareJid::parse(contact).unwrap());
        item.subscription = sub;
        f.server.stores().put_item(user, &item, 100).await.unwrap();
    }

    #[tokio::test]
    async fn host_query_returns_uptime() {
        let f = Fixture::new().await;
        let mut s = f.session("alice@localhost/a").await;
        let reply = s.iq("localhost", "get", QUERY).await;
        assert_eq!(reply.type_attr(), Some("result"));
        assert!(seconds(&reply) <= f.server.uptime().as_secs());
    }

    #[tokio::test]
    async fn offline_user_query_needs_a_subscription() {
        let f = Fixture::new().await;
        let bob = f.account("bob@localhost").await;
        f.server
            .stores()
            .set_last(&bob, unix_now() - 100, "gone fishing")
            .await
            .unwrap();
        let mut alice = f.session("alice@localhost/a").await;
        // Not in Bob's roster: forbidden.
        let reply = alice.iq("bob@localhost", "get", QUERY).await;
        assert_eq!(error_condition(&reply), Some(C::Forbidden));
        // Bob's presence goes *to* Alice only when her item is from/both; `to` is not enough.
        subscribe(&f, &bob, "alice@localhost", Subscription::To).await;
        let reply = alice.iq("bob@localhost", "get", QUERY).await;
        assert_eq!(error_condition(&reply), Some(C::Forbidden));
        subscribe(&f, &bob, "alice@localhost", Subscription::From).await;
        let reply = alice.iq("bob@localhost", "get", QUERY).await;
        assert_eq!(reply.type_attr(), Some("result"));
        let secs = seconds(&reply);
        assert!((100..110).contains(&secs), "{secs}");
        assert_eq!(reply.payload().unwrap().text(), "gone fishing");
    }

    #[tokio::test]
    async fn online_user_is_zero_and_unknown_is_item_not_found() {
        let f = Fixture::new().await;
        let bob = f.account("bob@localhost").await;
        subscribe(&f, &bob, "alice@localhost", Subscription::Both).await;
        let mut alice = f.session("alice@localhost/a").await;
        // No logout recorded yet.
        let reply = alice.iq("bob@localhost", "get", QUERY).await;
        assert_eq!(error_condition(&reply), Some(C::ItemNotFound));
        // Bound but not available yet: still offline for XEP-0012.
        let bob_session = f.session("bob@localhost/b").await;
        let reply = alice.iq("bob@localhost", "get", QUERY).await;
        assert_eq!(error_condition(&reply), Some(C::ItemNotFound));
        bob_session.set_available();
        let reply = alice.iq("bob@localhost", "get", QUERY).await;
        assert_eq!(seconds(&reply), 0);
    }

    #[tokio::test]
    async fn the_user_may_ask_about_itself() {
        let f = Fixture::new().await;
        let alice = f.account("alice@localhost").await;
        f.server
            .stores()
            .set_last(&alice, unix_now(), "")
            .await
            .unwrap();
        let mut s = f.session("alice@localhost/a").await;
        let reply = s.iq("alice@localhost", "get", QUERY).await;
        assert_eq!(reply.type_attr(), Some("result"));
        assert!(seconds(&reply) < 10);
        assert_eq!(reply.payload().unwrap().text(), "");
    }
}
