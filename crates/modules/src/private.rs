//! `mod_private`: XEP-0049 private XML storage, answered for the account itself.
//!
//! - **set** (§2.3): each child of `<query xmlns='jabber:iq:private'/>` is stored under its
//!   own namespace; several children of one namespace are stored together (§2.3 allows it) and
//!   replace whatever that namespace held. All namespaces of one set are stored or none.
//! - **get** (§2.3): for each child, the elements stored in its namespace, or the child itself
//!   (empty) when nothing is stored, as ejabberd and Prosody answer. §2.3 lets a client ask for
//!   one namespace per get; several are answered rather than refused.
//!
//! Errors as §2.3 and §3: a request to another account's JID is `<forbidden/>` (the preferred
//! of the two conditions §2.3 lists); a get without a child is `<bad-request/>` (the XEP's
//! "Bad Format"); a set without a child is `<not-acceptable/>` (§2.3, "Elements"); a child in a
//! reserved namespace (`jabber:*`, `vcard-temp`, §2.3's optional error) is `<not-acceptable/>`.
//! Beyond the XEP, a namespace's XML over `max_size` bytes is `<not-acceptable/>` and more than
//! `max_namespaces` namespaces per account is `<resource-constraint/>` (checked in the storing
//! transaction). Deleting an account deletes its private data (`remove_user` hook).
//!
//! XEP-0048 bookmarks stored here (`storage:bookmarks`) are not mirrored to PEP (XEP-0411);
//! clients that use PEP bookmarks (XEP-0402) store them there themselves.

use std::sync::Arc;

use starling_config::{ModuleOptions, ModuleSpec, OptionKind, OptionSpec};
use starling_core::BoxFuture;
use starling_core::Server;
use starling_core::hooks::{Hook, HookResult, RemoveUser};
use starling_core::module::{
    HostContext, IqHandler, IqResult, IqTarget, Module, ModuleError, Registrations,
};
use starling_storage::StorageError;
use starling_xmpp::Element;
use starling_xmpp::codec;
use starling_xmpp::error::{StanzaError, StanzaErrorCondition};
use starling_xmpp::jid::BareJid;
use starling_xmpp::stanza::{IqType, Stanza};

use crate::iq;

/// XEP-0049 namespace.
pub const PRIVATE: &str = "jabber:iq:private";
/// Default largest XML stored per namespace, in bytes.
pub const DEFAULT_MAX_SIZE: i64 = 65_536;
/// Default most namespaces per account.
pub const DEFAULT_MAX_NAMESPACES: i64 = 100;

const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "max_size",
        kind: OptionKind::Int {
            min: 1,
            max: 16_777_216,
        },
        doc: "Largest XML stored per namespace, in bytes (Starling option, default 65536).",
    },
    OptionSpec {
        name: "max_namespaces",
        kind: OptionKind::Int {
            min: 1,
            max: 100_000,
        },
        doc: "Most namespaces one account may store (Starling option, default 100).",
    },
];

/// `mod_private`.
pub struct Private;

impl Module for Private {
    fn spec(&self) -> ModuleSpec {
        ModuleSpec {
            name: "mod_private",
            aliases: &["private"],
            options: OPTIONS,
        }
    }

    fn start(
        &self,
        _host: &HostContext<'_>,
        options: &ModuleOptions,
    ) -> Result<Registrations, ModuleError> {
        let out_of_range = |key: &str| ModuleError {
            module: "mod_private",
            message: format!("{key} out of range"),
        };
        let max_size = usize::try_from(options.int("max_size").unwrap_or(DEFAULT_MAX_SIZE))
            .map_err(|_| out_of_range("max_size"))?;
        let max_namespaces = u32::try_from(
            options
                .int("max_namespaces")
                .unwrap_or(DEFAULT_MAX_NAMESPACES),
        )
        .map_err(|_| out_of_range("max_namespaces"))?;
        let mut registrations = Registrations::default().iq(
            PRIVATE,
            IqTarget::Account,
            Arc::new(PrivateHandler {
                max_size,
                max_namespaces,
            }),
        );
        registrations
            .hooks
            .remove_user
            .add(50, Arc::new(RemovePrivate));
        Ok(registrations)
    }
}

/// XEP-0049 get and set.
struct PrivateHandler {
    max_size: usize,
    max_namespaces: u32,
}

impl IqHandler for PrivateHandler {
    fn handle<'a>(&'a self, server: &'a Server, iq: &'a Stanza) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            let (kind, query) = iq::request(iq)?;
            if query.name() != "query" {
                return Err(iq::error(StanzaErrorCondition::BadRequest));
            }
            if !iq::from_account_itself(iq) {
                return Err(iq::error(StanzaErrorCondition::Forbidden)
                    .with_text("private data belongs to its owner only"));
            }
            let user = iq::account(iq)?;
            let children: Vec<&Element> = query.children().collect();
            if children.is_empty() {
                let condition = match kind {
                    IqType::Set => StanzaErrorCondition::NotAcceptable,
                    _ => StanzaErrorCondition::BadRequest,
                };
                return Err(iq::error(condition).with_text("no namespace given"));
            }
            if let Some(reserved) = children.iter().find(|c| is_reserved(&c.ns())) {
                return Err(iq::error(StanzaErrorCondition::NotAcceptable)
                    .with_text(format!("namespace {} is reserved", reserved.ns())));
            }
            match kind {
                IqType::Set => self.set(server, &user, &children).await,
                _ => get(server, &user, &children).await,
            }
        })
    }
}

impl PrivateHandler {
    async fn set(&self, server: &Server, user: &BareJid, children: &[&Element]) -> IqResult {
        let entries = group_by_namespace(children, self.max_size)?;
        match server
            .stores()
            .set_private_data(user, &entries, self.max_namespaces)
            .await
        {
            Ok(()) => Ok(None),
            Err(StorageError::QuotaExceeded) => Err(iq::error(
                StanzaErrorCondition::ResourceConstraint,
            )
            .with_text(format!(
                "at most {} namespaces may be stored",
                self.max_namespaces
            ))),
            Err(e) => Err(iq::storage_failure("cannot store private data", user, &e)),
        }
    }
}

/// The stored elements of each requested namespace, in the order asked.
async fn get(server: &Server, user: &BareJid, children: &[&Element]) -> IqResult {
    let mut result = Element::bare("query", PRIVATE);
    let mut seen: Vec<String> = Vec::new();
    for child in children {
        let ns = child.ns();
        if seen.contains(&ns) {
            continue;
        }
        let stored = server
            .stores()
            .private_data(user, &ns)
            .await
            .map_err(|e| iq::storage_failure("cannot load private data", user, &e))?;
        match stored {
            Some(xml) => {
                for element in parse_stored(&xml).map_err(|e| {
                    tracing::error!(%user, namespace = %ns, error = %e, "stored private data does not parse");
                    iq::error(StanzaErrorCondition::InternalServerError)
                })? {
                    result.append_child(element);
                }
            }
            None => {
                result.append_child((*child).clone());
            }
        }
        seen.push(ns);
    }
    Ok(Some(result))
}

/// Serialises the children per namespace, in first-seen order, refusing one over `max_size`.
fn group_by_namespace(
    children: &[&Element],
    max_size: usize,
) -> Result<Vec<(String, String)>, StanzaError> {
    let mut entries: Vec<(String, String)> = Vec::new();
    for child in children {
        let ns = child.ns();
        let xml = String::from_utf8(codec::to_bytes(child))
            .map_err(|_| iq::error(StanzaErrorCondition::BadRequest))?;
        match entries.iter_mut().find(|(n, _)| *n == ns) {
            Some((_, data)) => data.push_str(&xml),
            None => entries.push((ns, xml)),
        }
    }
    if let Some((ns, data)) = entries.iter().find(|(_, data)| data.len() > max_size) {
        return Err(
            iq::error(StanzaErrorCondition::NotAcceptable).with_text(format!(
                "{ns}: {} bytes, the limit is {max_size}",
                data.len()
            )),
        );
    }
    Ok(entries)
}

/// The elements of one stored namespace (one or more serialised elements, concatenated).
fn parse_stored(xml: &str) -> Result<Vec<Element>, String> {
    // A wrapper gives the concatenation a single root; each stored element declares its own
    // namespace, so the wrapper's never leaks into them.
    let wrapped = format!("<stored xmlns='{PRIVATE}'>{xml}</stored>");
    let root = wrapped.parse::<Element>().map_err(|e| e.to_string())?;
    Ok(root.children().cloned().collect())
}

/// §2.3: namespaces the protocol itself uses may not be stored.
fn is_reserved(ns: &str) -> bool {
    ns.starts_with("jabber:") || ns == "vcard-temp"
}

/// `remove_user`: private data goes with the account.
struct RemovePrivate;

impl Hook<RemoveUser> for RemovePrivate {
    fn call<'a>(
        &'a self,
        server: &'a Server,
        arg: &'a mut RemoveUser,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            if let Err(e) = server.stores().remove_private_data(&arg.user).await {
                tracing::error!(user = %arg.user, error = %e, "cannot remove private data");
            }
            HookResult::Continue
        })
    }
}

#[cfg(test)]
mod tests {
    use starling_config::OptionValue;
    use starling_xmpp::error::StanzaErrorCondition as C;

    use super::*;
    use crate::fixture::{Fixture, error_condition, set_option};

    const BOOKMARKS: &str = "<query xmlns='jabber:iq:private'>\
        <storage xmlns='storage:bookmarks'>\
        <conference name='Council' autojoin='true' jid='council@conference.localhost'>\
        <nick>alice</nick></conference></storage></query>";
    const GET_BOOKMARKS: &str =
        "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query>";

    async fn fixture() -> Fixture {
        Fixture::with(|config| {
            set_option(config, "mod_private", "max_size", OptionValue::Int(300));
            set_option(config, "mod_private", "max_namespaces", OptionValue::Int(2));
        })
        .await
    }

    #[tokio::test]
    async fn bookmarks_round_trip() {
        let f = fixture().await;
        f.account("alice@localhost").await;
        let mut s = f.session("alice@localhost/a").await;
        // Nothing stored yet: the empty element comes back.
        let reply = s.iq("alice@localhost", "get", GET_BOOKMARKS).await;
        let query = reply.payload().unwrap();
        let storage = query.get_child("storage", "storage:bookmarks").unwrap();
        assert_eq!(storage.children().count(), 0);

        let reply = s.iq("alice@localhost", "set", BOOKMARKS).await;
        assert_eq!(reply.type_attr(), Some("result"));
        let reply = s.iq("alice@localhost", "get", GET_BOOKMARKS).await;
        let storage = reply
            .payload()
            .unwrap()
            .get_child("storage", "storage:bookmarks")
            .unwrap();
        let conference = storage
            .get_child("conference", "storage:bookmarks")
            .unwrap();
        assert_eq!(conference.attr("jid"), Some("council@conference.localhost"));
        assert_eq!(
            conference
                .get_child("nick", "storage:bookmarks")
                .unwrap()
                .text(),
            "alice"
        );
    }

    #[tokio::test]
    async fn several_elements_of_one_namespace_are_kept_together() {
        let f = fixture().await;
        f.account("alice@localhost").await;
        let mut s = f.session("alice@localhost/a").await;
        let set = "<query xmlns='jabber:iq:private'><a xmlns='x:y'>1</a><b xmlns='x:y'>2</b>\
                   <c xmlns='other:ns'/></query>";
        let reply = s.iq("alice@localhost", "set", set).await;
        assert_eq!(reply.type_attr(), Some("result"));
        let reply = s
            .iq(
                "alice@localhost",
                "get",
                "<query xmlns='jabber:iq:private'><a xmlns='x:y'/></query>",
            )
            .await;
        let names: Vec<String> = reply
            .payload()
            .unwrap()
            .children()
            .map(|c| format!("{}={}", c.name(), c.text()))
            .collect();
        assert_eq!(names, vec!["a=1", "b=2"]);
    }

    #[tokio::test]
    async fn refusals() {
        let f = fixture().await;
        f.account("alice@localhost").await;
        f.account("bob@localhost").await;
        let mut alice = f.session("alice@localhost/a").await;
        let mut bob = f.session("bob@localhost/b").await;
        alice.iq("alice@localhost", "set", BOOKMARKS).await;
        // Someone else's data, read or write.
        let reply = bob.iq("alice@localhost", "get", GET_BOOKMARKS).await;
        assert_eq!(error_condition(&reply), Some(C::Forbidden));
        let reply = bob.iq("alice@localhost", "set", BOOKMARKS).await;
        assert_eq!(error_condition(&reply), Some(C::Forbidden));
        // Empty queries.
        let empty = "<query xmlns='jabber:iq:private'/>";
        let reply = alice.iq("alice@localhost", "get", empty).await;
        assert_eq!(error_condition(&reply), Some(C::BadRequest));
        let reply = alice.iq("alice@localhost", "set", empty).await;
        assert_eq!(error_condition(&reply), Some(C::NotAcceptable));
        // Reserved namespaces, including a child that inherits jabber:iq:private.
        for reserved in [
            "<query xmlns='jabber:iq:private'><vCard xmlns='vcard-temp'/></query>",
            "<query xmlns='jabber:iq:private'><q xmlns='jabber:iq:roster'/></query>",
            "<query xmlns='jabber:iq:private'><bare/></query>",
        ] {
            let reply = alice.iq("alice@localhost", "set", reserved).await;
            assert_eq!(
                error_condition(&reply),
                Some(C::NotAcceptable),
                "{reserved}"
            );
        }
        // Too large for one namespace.
        let big = format!(
            "<query xmlns='jabber:iq:private'><n xmlns='big:ns'>{}</n></query>",
            "x".repeat(400)
        );
        let reply = alice.iq("alice@localhost", "set", &big).await;
        assert_eq!(error_condition(&reply), Some(C::NotAcceptable));
        // Quota: bookmarks plus one more fit, a third namespace does not.
        let one = "<query xmlns='jabber:iq:private'><n xmlns='one:ns'/></query>";
        let two = "<query xmlns='jabber:iq:private'><n xmlns='two:ns'/></query>";
        let reply = alice.iq("alice@localhost", "set", one).await;
        assert_eq!(reply.type_attr(), Some("result"));
        let reply = alice.iq("alice@localhost", "set", two).await;
        assert_eq!(error_condition(&reply), Some(C::ResourceConstraint));
    }

    #[tokio::test]
    async fn removing_the_account_removes_private_data() {
        let f = fixture().await;
        let alice = f.account("alice@localhost").await;
        let mut s = f.session("alice@localhost/a").await;
        s.iq("alice@localhost", "set", BOOKMARKS).await;
        assert!(f.server.remove_user(&alice, "bye").await.unwrap());
        let stored = f
            .server
            .stores()
            .private_data(&alice, "storage:bookmarks")
            .await
            .unwrap();
        assert_eq!(stored, None);
    }

    #[test]
    fn stored_concatenations_parse_back() {
        let elements = parse_stored("<a xmlns='x:y'>1</a><b xmlns='x:y'/>").unwrap();
        assert_eq!(elements.len(), 2);
        assert!(elements.iter().all(|e| e.ns() == "x:y"));
        assert!(parse_stored("<a xmlns='x:y'>").is_err());
    }

    #[test]
    fn reserved_namespaces() {
        assert!(is_reserved("jabber:iq:roster"));
        assert!(is_reserved("vcard-temp"));
        assert!(!is_reserved("storage:bookmarks"));
        assert!(!is_reserved("urn:xmpp:bookmarks:1"));
    }
}
