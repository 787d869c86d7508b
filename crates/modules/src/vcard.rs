//! `mod_vcard`: XEP-0054 vcard-temp, with the XEP-0153 avatar hash kept beside each vCard.
//!
//! - **get to an account** (§3.1, §3.3): the account's stored vCard, or an empty `<vCard/>`
//!   when it never set one (the IQ-result XEP-0054 §3.1 allows, as ejabberd answers). vCards
//!   are public, as in ejabberd: any entity may read any account's vCard. An account that
//!   does not exist is `<service-unavailable/>` (RFC 6121 §8.5.1: no difference between "no
//!   such user" and "no such service").
//! - **set** (§3.2): only by the account itself; anyone else gets `<forbidden/>`. The new
//!   vCard replaces the old one whole. A vCard larger than `max_vcard_size` bytes (serialised)
//!   is `<not-acceptable/>`.
//! - **get to the host** (§3.1 applied to the server's own JID): the `vcard` option rendered
//!   as vcard-temp elements, or `FN`/`DESC` naming Starling. A set there is `<not-allowed/>`.
//!
//! XEP-0153 §3.1: when a vCard with `PHOTO/BINVAL` is set, the SHA-1 of the decoded image is
//! stored with it ([`photo_hash`]).
//!
//! `mod_vcard_xupdate` (ejabberd's module of that name, [`VcardXupdate`]) puts that hash into
//! the presence a session broadcasts (`presence_broadcast` hook), so that contacts of clients
//! that do not implement XEP-0153 still learn of avatar changes, and so that a resource that
//! did not download the vCard cannot advertise a stale hash (§4.2, "Multiple Resources"):
//! - available presence of an account that stored a vCard gets
//!   `<x xmlns='vcard-temp:x:update'><photo>HASH</photo></x>` (an empty `<photo/>` when the
//!   vCard has no photo, §4.1 rule 3), replacing the client's own update element, since the
//!   stored vCard is the truth the hash must describe;
//! - except when the client sent an empty `<photo/>`: that says "no avatar" on purpose and is
//!   kept, as XEP-0398 §4 requires and ejabberd does;
//! - an account with no stored vCard and unavailable presence are left as sent.
//!
//! Directed presence (MUC joins) passes `user_send_packet`, not this hook, and is not stamped.
//!
//! XEP-0055 search (ejabberd's `search`, `matches`, ...) is not implemented: those options are
//! accepted with a warning. Deleting an account deletes its vCard (`remove_user` hook).

use std::sync::Arc;

use starling_config::{ModuleOptions, ModuleSpec, OptionKind, OptionSpec, OptionValue};
use starling_core::BoxFuture;
use starling_core::Server;
use starling_core::hooks::{Hook, HookResult, PresenceBroadcast, RemoveUser};
use starling_core::module::{
    HostContext, IqHandler, IqResult, IqTarget, Module, ModuleError, Registrations,
};
use starling_storage::StoredVcard;
use starling_xmpp::Element;
use starling_xmpp::codec;
use starling_xmpp::error::{StanzaError, StanzaErrorCondition};
use starling_xmpp::stanza::{IqType, Stanza, text_element};

use crate::iq;

/// XEP-0054 namespace.
pub const VCARD: &str = starling_xmpp::vcard::NS;
/// XEP-0153 presence update namespace.
pub const VCARD_UPDATE: &str = "vcard-temp:x:update";
/// Default largest accepted vCard, in bytes of serialised XML.
pub const DEFAULT_MAX_VCARD_SIZE: i64 = 65_536;
/// Deepest nesting accepted in the `vcard` option (vcard-temp itself nests two levels).
const MAX_OPTION_DEPTH: usize = 8;

const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "vcard",
        kind: OptionKind::Any,
        doc: "The server's own vCard: a map of lowercase vCard fields (fn, nickname, url, \
              adr: [{work: true, street: ...}], ...) rendered as vcard-temp elements \
              (default FN Starling).",
    },
    OptionSpec {
        name: "max_vcard_size",
        kind: OptionKind::Int {
            min: 1,
            max: 16_777_216,
        },
        doc: "Largest vCard a user may store, in bytes of XML (Starling option, default 65536).",
    },
];

/// `mod_vcard`.
pub struct Vcard;

impl Module for Vcard {
    fn spec(&self) -> ModuleSpec {
        ModuleSpec {
            name: "mod_vcard",
            aliases: &["vcard"],
            options: OPTIONS,
        }
    }

    fn start(
        &self,
        _host: &HostContext<'_>,
        options: &ModuleOptions,
    ) -> Result<Registrations, ModuleError> {
        let max_size = options
            .int("max_vcard_size")
            .unwrap_or(DEFAULT_MAX_VCARD_SIZE);
        let max_size = usize::try_from(max_size).map_err(|_| ModuleError {
            module: "mod_vcard",
            message: format!("max_vcard_size {max_size} out of range"),
        })?;
        let server_vcard = server_vcard(options.value("vcard")).map_err(|message| ModuleError {
            module: "mod_vcard",
            message: format!("vcard: {message}"),
        })?;
        let mut registrations = Registrations::default()
            .iq(
                VCARD,
                IqTarget::Account,
                Arc::new(AccountVcard { max_size }),
            )
            .iq(
                VCARD,
                IqTarget::Host,
                Arc::new(HostVcard {
                    vcard: server_vcard,
                }),
            );
        registrations
            .hooks
            .remove_user
            .add(50, Arc::new(RemoveVcard));
        Ok(registrations)
    }
}

/// XEP-0054 §3.1–3.3 for accounts.
struct AccountVcard {
    max_size: usize,
}

impl IqHandler for AccountVcard {
    fn handle<'a>(&'a self, server: &'a Server, iq: &'a Stanza) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            let (kind, payload) = iq::request(iq)?;
            if payload.name() != "vCard" {
                return Err(iq::error(StanzaErrorCondition::BadRequest));
            }
            let user = iq::account(iq)?;
            if kind == IqType::Set {
                if !iq::from_account_itself(iq) {
                    return Err(iq::error(StanzaErrorCondition::Forbidden)
                        .with_text("only the owner may change a vCard"));
                }
                let vcard = stored_form(payload, self.max_size)?;
                server
                    .stores()
                    .set_vcard(&user, &vcard)
                    .await
                    .map_err(|e| iq::storage_failure("cannot store vcard", &user, &e))?;
                return Ok(None);
            }
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
            let stored = server
                .stores()
                .vcard(&user)
                .await
                .map_err(|e| iq::storage_failure("cannot load vcard", &user, &e))?;
            match stored {
                None => Ok(Some(Element::bare("vCard", VCARD))),
                Some(stored) => match stored.xml.parse::<Element>() {
                    Ok(vcard) => Ok(Some(vcard)),
                    Err(e) => {
                        tracing::error!(%user, error = %e, "stored vcard does not parse");
                        Err(iq::error(StanzaErrorCondition::InternalServerError))
                    }
                },
            }
        })
    }
}

/// The vCard as stored: serialised, size-checked, with its photo hash.
fn stored_form(vcard: &Element, max_size: usize) -> Result<StoredVcard, StanzaError> {
    let xml = String::from_utf8(codec::to_bytes(vcard))
        .map_err(|_| iq::error(StanzaErrorCondition::BadRequest))?;
    if xml.len() > max_size {
        return Err(
            iq::error(StanzaErrorCondition::NotAcceptable).with_text(format!(
                "vCard is {} bytes, the limit is {max_size}",
                xml.len()
            )),
        );
    }
    Ok(StoredVcard {
        xml,
        photo_hash: photo_hash(vcard),
    })
}

pub use starling_xmpp::vcard::photo_hash;

/// XEP-0054 for the server's own JID.
struct HostVcard {
    vcard: Element,
}

impl IqHandler for HostVcard {
    fn handle<'a>(&'a self, _server: &'a Server, iq: &'a Stanza) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            let payload = iq::get_payload(iq)?;
            if payload.name() != "vCard" {
                return Err(iq::error(StanzaErrorCondition::BadRequest));
            }
            Ok(Some(self.vcard.clone()))
        })
    }
}

/// Renders the `vcard` option, or the default naming the server.
fn server_vcard(option: Option<&OptionValue>) -> Result<Element, String> {
    let mut vcard = Element::bare("vCard", VCARD);
    match option {
        None => {
            vcard.append_child(text_element("FN", VCARD, "Starling"));
            vcard.append_child(text_element("DESC", VCARD, "Starling XMPP server"));
        }
        Some(OptionValue::Map(fields)) => {
            for (key, value) in fields {
                append_field(&mut vcard, key, value, 1)?;
            }
        }
        Some(_) => return Err("expected a map of vCard fields".into()),
    }
    Ok(vcard)
}

/// Appends `key: value` as vcard-temp elements: `sort_string` becomes `SORT-STRING`, text
/// becomes content, `true` an empty flag element (`WORK`), a map nested elements and a list
/// one element per item (several `ADR` or `EMAIL`).
fn append_field(
    parent: &mut Element,
    key: &str,
    value: &OptionValue,
    depth: usize,
) -> Result<(), String> {
    if depth > MAX_OPTION_DEPTH {
        return Err(format!("{key}: nested too deeply"));
    }
    let name = key.to_ascii_uppercase().replace('_', "-");
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !valid {
        return Err(format!("{key:?} is not a vCard field name"));
    }
    match value {
        OptionValue::String(text) => {
            parent.append_child(text_element(&name, VCARD, text));
        }
        OptionValue::Int(i) => {
            parent.append_child(text_element(&name, VCARD, &i.to_string()));
        }
        OptionValue::Bool(true) => {
            parent.append_child(Element::bare(name, VCARD));
        }
        OptionValue::Bool(false) => {}
        OptionValue::Map(fields) => {
            let mut child = Element::bare(name, VCARD);
            for (key, value) in fields {
                append_field(&mut child, key, value, depth + 1)?;
            }
            parent.append_child(child);
        }
        OptionValue::List(items) => {
            for item in items {
                append_field(parent, key, item, depth + 1)?;
            }
        }
        OptionValue::Duration(_) | OptionValue::Infinity => {
            return Err(format!("{key}: expected text, a flag, a map or a list"));
        }
    }
    Ok(())
}

/// `mod_vcard_xupdate`: XEP-0153 avatar hashes in broadcast presence (see the module docs).
/// No options of its own (ejabberd's are cache settings, warned about by the loader).
pub struct VcardXupdate;

impl Module for VcardXupdate {
    fn spec(&self) -> ModuleSpec {
        ModuleSpec {
            name: "mod_vcard_xupdate",
            aliases: &["vcard_xupdate"],
            options: &[],
        }
    }

    fn start(
        &self,
        _host: &HostContext<'_>,
        _options: &ModuleOptions,
    ) -> Result<Registrations, ModuleError> {
        let mut registrations = Registrations::default();
        registrations
            .hooks
            .presence_broadcast
            .add(50, Arc::new(StampAvatarHash));
        Ok(registrations)
    }
}

/// `presence_broadcast`: sets the stored avatar hash in available presence.
struct StampAvatarHash;

impl Hook<PresenceBroadcast> for StampAvatarHash {
    fn call<'a>(
        &'a self,
        server: &'a Server,
        arg: &'a mut PresenceBroadcast,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            if arg.presence.attr("type").is_some() || says_no_avatar(&arg.presence) {
                return HookResult::Continue;
            }
            let user = arg.session.to_bare();
            let stored = match server.stores().vcard(&user).await {
                Ok(Some(stored)) => stored,
                Ok(None) => return HookResult::Continue,
                Err(e) => {
                    // Presence still goes out, as the client sent it.
                    tracing::error!(%user, error = %e, "cannot load vcard for avatar hash");
                    return HookResult::Continue;
                }
            };
            while arg.presence.remove_child("x", VCARD_UPDATE).is_some() {}
            arg.presence
                .append_child(update_element(stored.photo_hash.as_deref()));
            HookResult::Continue
        })
    }
}

/// True if the presence carries `<x xmlns='vcard-temp:x:update'><photo/></x>`.
fn says_no_avatar(presence: &Element) -> bool {
    presence
        .get_child("x", VCARD_UPDATE)
        .and_then(|x| x.get_child("photo", VCARD_UPDATE))
        .is_some_and(|photo| photo.text().trim().is_empty())
}

/// `<x xmlns='vcard-temp:x:update'><photo>HASH</photo></x>`, the photo empty without a hash.
fn update_element(hash: Option<&str>) -> Element {
    let mut x = Element::bare("x", VCARD_UPDATE);
    x.append_child(text_element("photo", VCARD_UPDATE, hash.unwrap_or("")));
    x
}

/// `remove_user`: the vCard goes with the account.
struct RemoveVcard;

impl Hook<RemoveUser> for RemoveVcard {
    fn call<'a>(
        &'a self,
        server: &'a Server,
        arg: &'a mut RemoveUser,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            if let Err(e) = server.stores().remove_vcard(&arg.user).await {
                tracing::error!(user = %arg.user, error = %e, "cannot remove vcard");
            }
            HookResult::Continue
        })
    }
}

#[cfg(test)]
mod tests {
    use starling_xmpp::error::StanzaErrorCondition as C;

    use starling_xmpp::stanza::set_attr;

    use super::*;
    use crate::fixture::{Fixture, error_condition, set_option};

    const GET: &str = "<vCard xmlns='vcard-temp'/>";
    /// Base64 of the bytes `hello`; SHA-1 of `hello` is aaf4c61d...
    const WITH_PHOTO: &str = "<vCard xmlns='vcard-temp'><FN>Alice</FN><PHOTO>\
                              <TYPE>image/png</TYPE><BINVAL>aGVs\n bG8=</BINVAL></PHOTO></vCard>";
    const HELLO_SHA1: &str = "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d";

    async fn fixture() -> Fixture {
        Fixture::with(|config| {
            set_option(config, "mod_vcard", "max_vcard_size", OptionValue::Int(400));
        })
        .await
    }

    #[tokio::test]
    async fn own_vcard_is_empty_then_round_trips_with_its_photo_hash() {
        let f = fixture().await;
        let alice = f.account("alice@localhost").await;
        let mut s = f.session("alice@localhost/a").await;
        let reply = s.iq("alice@localhost", "get", GET).await;
        assert_eq!(reply.type_attr(), Some("result"));
        let empty = reply.payload().unwrap();
        assert!(empty.is("vCard", VCARD));
        assert_eq!(empty.children().count(), 0);

        let reply = s.iq("alice@localhost", "set", WITH_PHOTO).await;
        assert_eq!(reply.type_attr(), Some("result"));
        assert!(reply.payload().is_none());
        let stored = f.server.stores().vcard(&alice).await.unwrap().unwrap();
        assert_eq!(stored.photo_hash.as_deref(), Some(HELLO_SHA1));

        let reply = s.iq("alice@localhost", "get", GET).await;
        let card = reply.payload().unwrap();
        assert_eq!(card.get_child("FN", VCARD).unwrap().text(), "Alice");
        assert!(card.get_child("PHOTO", VCARD).is_some());
    }

    #[tokio::test]
    async fn others_read_but_cannot_write() {
        let f = fixture().await;
        f.account("alice@localhost").await;
        f.account("bob@localhost").await;
        let mut alice = f.session("alice@localhost/a").await;
        let mut bob = f.session("bob@localhost/b").await;
        alice
            .iq(
                "alice@localhost",
                "set",
                "<vCard xmlns='vcard-temp'><NICKNAME>ally</NICKNAME></vCard>",
            )
            .await;
        let reply = bob.iq("alice@localhost", "get", GET).await;
        let card = reply.payload().unwrap();
        assert_eq!(card.get_child("NICKNAME", VCARD).unwrap().text(), "ally");
        let reply = bob
            .iq(
                "alice@localhost",
                "set",
                "<vCard xmlns='vcard-temp'><NICKNAME>pwned</NICKNAME></vCard>",
            )
            .await;
        assert_eq!(error_condition(&reply), Some(C::Forbidden));
        // Unknown accounts look like no service at all.
        let reply = bob.iq("ghost@localhost", "get", GET).await;
        assert_eq!(error_condition(&reply), Some(C::ServiceUnavailable));
        // Bob never set one: Alice sees an empty vCard.
        let reply = alice.iq("bob@localhost", "get", GET).await;
        assert_eq!(reply.payload().unwrap().children().count(), 0);
    }

    #[tokio::test]
    async fn oversized_and_malformed_sets_are_refused() {
        let f = fixture().await;
        let alice = f.account("alice@localhost").await;
        let mut s = f.session("alice@localhost/a").await;
        let big = format!(
            "<vCard xmlns='vcard-temp'><NOTE>{}</NOTE></vCard>",
            "x".repeat(500)
        );
        let reply = s.iq("alice@localhost", "set", &big).await;
        assert_eq!(error_condition(&reply), Some(C::NotAcceptable));
        assert!(f.server.stores().vcard(&alice).await.unwrap().is_none());
        let reply = s
            .iq("alice@localhost", "set", "<card xmlns='vcard-temp'/>")
            .await;
        assert_eq!(error_condition(&reply), Some(C::BadRequest));
    }

    #[tokio::test]
    async fn server_vcard_defaults_to_starling_and_is_read_only() {
        let f = fixture().await;
        let mut s = f.session("alice@localhost/a").await;
        let reply = s.iq("localhost", "get", GET).await;
        let card = reply.payload().unwrap();
        assert_eq!(card.get_child("FN", VCARD).unwrap().text(), "Starling");
        let reply = s.iq("localhost", "set", GET).await;
        assert_eq!(error_condition(&reply), Some(C::NotAllowed));
    }

    #[tokio::test]
    async fn server_vcard_option_is_rendered() {
        let option = OptionValue::Map(vec![
            ("fn".into(), OptionValue::String("Example Server".into())),
            ("sort_string".into(), OptionValue::String("ex".into())),
            (
                "adr".into(),
                OptionValue::List(vec![OptionValue::Map(vec![
                    ("work".into(), OptionValue::Bool(true)),
                    ("home".into(), OptionValue::Bool(false)),
                    ("street".into(), OptionValue::String("Elm Street 6".into())),
                ])]),
            ),
        ]);
        let f = Fixture::with(|config| set_option(config, "mod_vcard", "vcard", option)).await;
        let mut s = f.session("alice@localhost/a").await;
        let reply = s.iq("localhost", "get", GET).await;
        let card = reply.payload().unwrap();
        assert_eq!(
            card.get_child("FN", VCARD).unwrap().text(),
            "Example Server"
        );
        assert_eq!(card.get_child("SORT-STRING", VCARD).unwrap().text(), "ex");
        let adr = card.get_child("ADR", VCARD).unwrap();
        assert!(adr.get_child("WORK", VCARD).is_some());
        assert!(adr.get_child("HOME", VCARD).is_none());
        assert_eq!(
            adr.get_child("STREET", VCARD).unwrap().text(),
            "Elm Street 6"
        );
    }

    #[test]
    fn ejabberd_options_load_with_warnings() {
        let yaml = "hosts: [localhost]\nmodules:\n  mod_vcard:\n    search: false\n    \
                    db_type: sql\n    max_vcard_size: 1024\n    \
                    vcard: {fn: Example, email: [{internet: true, userid: a@example.org}]}\n";
        let config = starling_config::load_str(yaml, "t.yml", &crate::specs()).unwrap();
        assert!(!config.warnings.is_empty());
        let card = server_vcard(
            config
                .modules
                .iter()
                .find(|m| m.name == "mod_vcard")
                .and_then(|m| m.options.value("vcard")),
        )
        .unwrap();
        let email = card.get_child("EMAIL", VCARD).unwrap();
        assert!(email.get_child("INTERNET", VCARD).is_some());
        assert_eq!(
            email.get_child("USERID", VCARD).unwrap().text(),
            "a@example.org"
        );
    }

    #[test]
    fn bad_server_vcard_options_are_errors() {
        assert!(server_vcard(Some(&OptionValue::String("x".into()))).is_err());
        let bad_name = OptionValue::Map(vec![("a b".into(), OptionValue::Bool(true))]);
        assert!(server_vcard(Some(&bad_name)).is_err());
        let duration = OptionValue::Map(vec![(
            "fn".into(),
            OptionValue::Duration(std::time::Duration::from_secs(1)),
        )]);
        assert!(server_vcard(Some(&duration)).is_err());
    }

    #[test]
    fn photo_hash_needs_decodable_binval() {
        let parse = |xml: &str| xml.parse::<Element>().unwrap();
        assert_eq!(photo_hash(&parse(WITH_PHOTO)).as_deref(), Some(HELLO_SHA1));
        let ext =
            "<vCard xmlns='vcard-temp'><PHOTO><EXTVAL>https://x/a.png</EXTVAL></PHOTO></vCard>";
        assert_eq!(photo_hash(&parse(ext)), None);
        let junk = "<vCard xmlns='vcard-temp'><PHOTO><BINVAL>!!!</BINVAL></PHOTO></vCard>";
        assert_eq!(photo_hash(&parse(junk)), None);
        assert_eq!(photo_hash(&parse(GET)), None);
    }

    #[tokio::test]
    async fn removing_the_account_removes_the_vcard() {
        let f = fixture().await;
        let alice = f.account("alice@localhost").await;
        let mut s = f.session("alice@localhost/a").await;
        s.iq("alice@localhost", "set", WITH_PHOTO).await;
        assert!(f.server.remove_user(&alice, "bye").await.unwrap());
        assert!(f.server.stores().vcard(&alice).await.unwrap().is_none());
    }

    fn presence(children: &str) -> PresenceBroadcast {
        let xml = format!(
            "<presence xmlns='jabber:client' from='alice@localhost/a'>{children}</presence>"
        );
        PresenceBroadcast {
            session: starling_xmpp::jid::FullJid::parse("alice@localhost/a").unwrap(),
            presence: xml.parse().unwrap(),
        }
    }

    fn photo_of(p: &PresenceBroadcast) -> Vec<String> {
        p.presence
            .children()
            .filter(|c| c.is("x", VCARD_UPDATE))
            .map(|x| {
                x.get_child("photo", VCARD_UPDATE)
                    .map(Element::text)
                    .unwrap_or_else(|| "<none>".into())
            })
            .collect()
    }

    #[tokio::test]
    async fn broadcast_presence_gets_the_stored_hash() {
        let f = fixture().await;
        f.account("alice@localhost").await;
        let server = &*f.server;
        // No vCard stored: presence left as sent.
        let mut p = presence("<x xmlns='vcard-temp:x:update'><photo>0000</photo></x>");
        StampAvatarHash.call(server, &mut p).await;
        assert_eq!(photo_of(&p), vec!["0000"]);
        let mut s = f.session("alice@localhost/a").await;
        s.iq(
            "alice@localhost",
            "set",
            "<vCard xmlns='vcard-temp'><FN>A</FN></vCard>",
        )
        .await;
        // A vCard without a photo: an empty photo element.
        let mut p = presence("<status>hi</status>");
        StampAvatarHash.call(server, &mut p).await;
        assert_eq!(photo_of(&p), vec![""]);
        s.iq("alice@localhost", "set", WITH_PHOTO).await;
        // The client's stale or missing hash is replaced by the stored one, once.
        for children in [
            "",
            "<x xmlns='vcard-temp:x:update'/>",
            "<x xmlns='vcard-temp:x:update'><photo>0000</photo></x>",
        ] {
            let mut p = presence(children);
            StampAvatarHash.call(server, &mut p).await;
            assert_eq!(photo_of(&p), vec![HELLO_SHA1], "{children}");
        }
        // An explicit "no avatar" and unavailable presence are kept.
        let mut p = presence("<x xmlns='vcard-temp:x:update'><photo/></x>");
        StampAvatarHash.call(server, &mut p).await;
        assert_eq!(photo_of(&p), vec![""]);
        let mut p = presence("");
        set_attr(&mut p.presence, "type", "unavailable");
        StampAvatarHash.call(server, &mut p).await;
        assert!(photo_of(&p).is_empty());
    }

    #[tokio::test]
    async fn disco_lists_vcard_temp_for_accounts_and_host() {
        let f = fixture().await;
        let modules = f.server.host_modules("localhost").unwrap();
        assert!(modules.features(IqTarget::Account).contains(&VCARD));
        assert!(modules.features(IqTarget::Host).contains(&VCARD));
    }
}
