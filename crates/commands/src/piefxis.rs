//! XEP-0227 (PIEFXIS) account migration: `import_piefxis FILE` and `export_piefxis DIR`,
//! with ejabberdctl's names, so that users move between ejabberd, Prosody and Starling with
//! one command.
//!
//! What moves: accounts (a plaintext `password` attribute, or XEP-0227 §4 SCRAM credentials,
//! kept as they are so no password needs resetting), rosters, vCards, private XML storage
//! and offline messages. Import reads the file and the files it `xi:include`s (ejabberd's
//! export is a main file including one file per host; includes are resolved next to the
//! including file and may not leave its directory). Existing accounts are never overwritten:
//! they are reported and skipped, so running an import twice changes nothing.
//!
//! ejabberd (23.01 at least) base64-encodes its already base64-encoded SCRAM values once
//! more; keys whose decoded form is itself the base64 of a key of the right length are
//! taken as such, and then the salt is decoded twice as well.
//!
//! Export writes one file with every host inline (`starling-export.xml`). Private XML
//! storage is not exported yet (the store has no way to list a user's namespaces).

use std::fmt;
use std::path::{Component, Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use starling_core::Server;
use starling_storage::{RosterItem, StorageError, StoredVcard, Subscription};
use starling_xmpp::Element;
use starling_xmpp::codec;
use starling_xmpp::jid::{BareJid, nodeprep};
use starling_xmpp::scram::{Credentials, ScramHash, ScramKeys};
use starling_xmpp::stanza::{element, set_attr, text_element};

/// XEP-0227 namespace.
pub const NS_PIE: &str = "urn:xmpp:pie:0";
/// XEP-0227 §4 SCRAM credentials namespace.
pub const NS_SCRAM: &str = "urn:xmpp:pie:0#scram";
const NS_XINCLUDE: &str = "http://www.w3.org/2001/XInclude";
const NS_ROSTER: &str = "jabber:iq:roster";
const NS_PRIVATE: &str = "jabber:iq:private";
const NS_VCARD: &str = starling_xmpp::vcard::NS;
/// How deep `xi:include`s may nest.
const MAX_INCLUDE_DEPTH: usize = 4;
/// The name of the file `export_piefxis` writes.
pub const EXPORT_FILE: &str = "starling-export.xml";

/// What an import did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Accounts created.
    pub users: u32,
    /// Roster items stored.
    pub roster_items: u32,
    /// vCards stored.
    pub vcards: u32,
    /// Private XML namespaces stored.
    pub private: u32,
    /// Offline messages stored.
    pub offline: u32,
    /// What was left out, and why (one line each).
    pub skipped: Vec<String>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Imported {} accounts, {} roster items, {} vCards, {} private XML entries, {} offline messages",
            self.users, self.roster_items, self.vcards, self.private, self.offline
        )?;
        for line in &self.skipped {
            write!(f, "\nskipped: {line}")?;
        }
        Ok(())
    }
}

/// Imports `path` into `server`'s store.
pub async fn import(server: &Server, path: &Path) -> Result<Summary, String> {
    let mut hosts = Vec::new();
    collect_hosts(path, 0, &mut hosts)?;
    let mut summary = Summary::default();
    for host_el in hosts {
        let Some(host) = host_el.attr("jid") else {
            summary.skipped.push("a <host/> without jid".to_owned());
            continue;
        };
        if !server.is_local(host) {
            summary.skipped.push(format!(
                "host {host}: not served by this node (add it to hosts first)"
            ));
            continue;
        }
        for user in host_el.children().filter(|c| c.is("user", NS_PIE)) {
            if let Err(why) = import_user(server, host, user, &mut summary).await {
                summary.skipped.push(why);
            }
        }
    }
    tracing::info!(file = %path.display(), users = summary.users, skipped = summary.skipped.len(), "XEP-0227 import");
    Ok(summary)
}

/// Reads `path` and appends its `<host/>` elements, following `xi:include`s.
fn collect_hosts(path: &Path, depth: usize, out: &mut Vec<Element>) -> Result<(), String> {
    if depth > MAX_INCLUDE_DEPTH {
        return Err(format!("{}: xi:include nested too deep", path.display()));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let root: Element = text
        .trim_start_matches('\u{feff}')
        .parse()
        .map_err(|e| format!("{}: not well-formed XML: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let visit = |el: &Element, out: &mut Vec<Element>| -> Result<(), String> {
        if el.is("host", NS_PIE) {
            out.push(el.clone());
        } else if el.is("include", NS_XINCLUDE) {
            let href = el
                .attr("href")
                .ok_or_else(|| format!("{}: xi:include without href", path.display()))?;
            let included = include_path(base, href)
                .ok_or_else(|| format!("{}: refusing xi:include {href:?}", path.display()))?;
            collect_hosts(&included, depth + 1, out)?;
        }
        Ok(())
    };
    if root.is("server-data", NS_PIE) {
        for child in root.children() {
            visit(child, out)?;
        }
        Ok(())
    } else if root.is("host", NS_PIE) {
        visit(&root, out)
    } else {
        Err(format!(
            "{}: expected <server-data xmlns='{NS_PIE}'/>, found <{}/> in {:?}",
            path.display(),
            root.name(),
            root.ns()
        ))
    }
}

/// A relative `href` inside `base`; `None` for URLs, absolute paths and `..`.
fn include_path(base: &Path, href: &str) -> Option<PathBuf> {
    if href.contains("://") {
        return None;
    }
    let rel = Path::new(href);
    rel.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| base.join(rel))
}

async fn import_user(
    server: &Server,
    host: &str,
    user_el: &Element,
    summary: &mut Summary,
) -> Result<(), String> {
    let name = user_el.attr("name").unwrap_or_default();
    let node = nodeprep(name).map_err(|_| format!("user {name:?}@{host}: invalid user name"))?;
    let user = BareJid::new(Some(&node), host).map_err(|e| format!("user {name}@{host}: {e}"))?;
    let stores = server.stores();
    if stores.exists(&user).await.map_err(|e| storage(&user, &e))? {
        return Err(format!("{user}: already exists, left as it is"));
    }
    let creds = credentials(user_el)
        .await
        .map_err(|why| format!("{user}: {why}"))?;
    stores
        .create(&user, &creds)
        .await
        .map_err(|e| storage(&user, &e))?;
    summary.users += 1;

    for child in user_el.children() {
        if child.is("query", NS_ROSTER) {
            for item in child.children().filter(|c| c.name() == "item") {
                match roster_item(item) {
                    Some(item) => {
                        stores
                            .put_item(&user, &item, u32::MAX)
                            .await
                            .map_err(|e| storage(&user, &e))?;
                        summary.roster_items += 1;
                    }
                    None => summary.skipped.push(format!(
                        "{user}: roster item {:?} (invalid)",
                        item.attr("jid").unwrap_or_default()
                    )),
                }
            }
        } else if child.is("vCard", NS_VCARD) {
            let stored = StoredVcard {
                xml: String::from_utf8_lossy(&codec::to_bytes(child)).into_owned(),
                photo_hash: starling_xmpp::vcard::photo_hash(child),
            };
            stores
                .set_vcard(&user, &stored)
                .await
                .map_err(|e| storage(&user, &e))?;
            summary.vcards += 1;
        } else if child.is("query", NS_PRIVATE) {
            let entries: Vec<(String, String)> = child
                .children()
                .map(|c| {
                    (
                        c.ns(),
                        String::from_utf8_lossy(&codec::to_bytes(c)).into_owned(),
                    )
                })
                .collect();
            if !entries.is_empty() {
                stores
                    .set_private_data(&user, &entries, u32::MAX)
                    .await
                    .map_err(|e| storage(&user, &e))?;
                summary.private += u32::try_from(entries.len()).unwrap_or(u32::MAX);
            }
        } else if child.name() == "offline-messages" {
            let now = starling_core::server::unix_now_micros();
            for message in child.children().filter(|c| c.name() == "message") {
                let from = message.attr("from").unwrap_or(host).to_owned();
                let xml = String::from_utf8_lossy(&codec::to_bytes(message)).into_owned();
                stores
                    .push_offline(&user, &from, &xml, now, u32::MAX)
                    .await
                    .map_err(|e| storage(&user, &e))?;
                summary.offline += 1;
            }
        }
    }
    Ok(())
}

fn storage(user: &BareJid, e: &StorageError) -> String {
    format!("{user}: database error: {e}")
}

fn roster_item(item: &Element) -> Option<RosterItem> {
    let jid: BareJid = item.attr("jid")?.parse().ok()?;
    let mut out = RosterItem::new(jid);
    out.name = item
        .attr("name")
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    out.subscription = match item.attr("subscription") {
        None => Subscription::None,
        Some(s) => match Subscription::parse(s)? {
            Subscription::Remove => return None,
            other => other,
        },
    };
    out.ask_out = item.attr("ask") == Some("subscribe");
    for group in item.children().filter(|c| c.name() == "group") {
        let g = group.text();
        if !g.is_empty() && !out.groups.contains(&g) {
            out.groups.push(g);
        }
    }
    Some(out)
}

/// The account's credentials: derived from a plaintext `password`, or taken from SCRAM
/// credentials.
async fn credentials(user: &Element) -> Result<Credentials, String> {
    if let Some(password) = user.attr("password").filter(|p| !p.is_empty()) {
        let password = password.to_owned();
        return tokio::task::spawn_blocking(move || {
            Credentials::new(&password, Credentials::DEFAULT_ITERATIONS)
        })
        .await
        .map_err(|_| "password hashing failed".to_owned())?
        .map_err(|_| "the password cannot be prepared (RFC 8265)".to_owned());
    }
    let mut keys = Vec::new();
    for scram in user
        .children()
        .filter(|c| c.is("scram-credentials", NS_SCRAM))
    {
        keys.push(scram_keys(scram)?);
    }
    Credentials::from_keys(keys).ok_or_else(|| "no password and no SCRAM credentials".to_owned())
}

fn scram_keys(el: &Element) -> Result<ScramKeys, String> {
    let mechanism = el.attr("mechanism").unwrap_or_default();
    let hash = mechanism
        .strip_prefix("SCRAM-")
        .map(|h| h.trim_end_matches("-PLUS"))
        .and_then(ScramHash::from_name)
        .ok_or_else(|| format!("unsupported SCRAM mechanism {mechanism:?}"))?;
    let field = |name: &str| {
        el.children()
            .find(|c| c.name() == name)
            .map(|c| c.text().trim().to_owned())
            .ok_or_else(|| format!("{mechanism}: no <{name}/>"))
    };
    let iterations: u32 = field("iter-count")?
        .parse()
        .map_err(|_| format!("{mechanism}: bad iteration count"))?;
    let decode = |name: &str| -> Result<Vec<u8>, String> {
        STANDARD
            .decode(field(name)?)
            .map_err(|_| format!("{mechanism}: <{name}/> is not base64"))
    };
    let (salt, stored, server) = (
        decode("salt")?,
        decode("stored-key")?,
        decode("server-key")?,
    );
    let len = hash.output_len();
    let (salt, stored, server) = if stored.len() == len && server.len() == len {
        (salt, stored, server)
    } else {
        // ejabberd's double encoding (see the module documentation).
        let again = |v: &[u8]| STANDARD.decode(v).ok();
        match (again(&salt), again(&stored), again(&server)) {
            (Some(salt), Some(stored), Some(server))
                if stored.len() == len && server.len() == len =>
            {
                (salt, stored, server)
            }
            _ => return Err(format!("{mechanism}: keys of the wrong length")),
        }
    };
    if iterations == 0 || salt.is_empty() {
        return Err(format!("{mechanism}: empty salt or zero iterations"));
    }
    Ok(ScramKeys {
        hash,
        salt,
        iterations,
        stored_key: stored,
        server_key: server,
    })
}

/// Exports every account of every host (or of `only_host`) to `dir/starling-export.xml`.
pub async fn export(
    server: &Server,
    dir: &Path,
    only_host: Option<&str>,
) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut root = element("server-data", NS_PIE, &[]);
    let stores = server.stores();
    let mut users = 0u32;
    for host in server.hosts() {
        if only_host.is_some_and(|h| h != host) {
            continue;
        }
        let mut host_el = element("host", NS_PIE, &[("jid", &host)]);
        let names = stores
            .list(&host)
            .await
            .map_err(|e| format!("{host}: database error: {e}"))?;
        for name in names {
            let Ok(user) = BareJid::new(Some(&name), &host) else {
                continue;
            };
            host_el.append_child(export_user(server, &user, &name).await?);
            users += 1;
        }
        root.append_child(host_el);
    }
    let path = dir.join(EXPORT_FILE);
    let mut bytes = b"<?xml version='1.0' encoding='UTF-8'?>\n".to_vec();
    bytes.extend(codec::to_bytes(&root));
    std::fs::write(&path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    tracing::info!(file = %path.display(), users, "XEP-0227 export");
    Ok(path)
}

async fn export_user(server: &Server, user: &BareJid, name: &str) -> Result<Element, String> {
    let stores = server.stores();
    let mut el = element("user", NS_PIE, &[("name", name)]);
    if let Some(creds) = stores
        .credentials(user)
        .await
        .map_err(|e| storage(user, &e))?
    {
        for keys in creds.iter() {
            let mechanism = format!("SCRAM-{}", keys.hash.name());
            let mut scram = element("scram-credentials", NS_SCRAM, &[("mechanism", &mechanism)]);
            scram.append_child(text_element(
                "iter-count",
                NS_SCRAM,
                &keys.iterations.to_string(),
            ));
            scram.append_child(text_element("salt", NS_SCRAM, &STANDARD.encode(&keys.salt)));
            scram.append_child(text_element(
                "server-key",
                NS_SCRAM,
                &STANDARD.encode(&keys.server_key),
            ));
            scram.append_child(text_element(
                "stored-key",
                NS_SCRAM,
                &STANDARD.encode(&keys.stored_key),
            ));
            el.append_child(scram);
        }
    }
    let (items, _) = stores.roster(user).await.map_err(|e| storage(user, &e))?;
    if !items.is_empty() {
        let mut query = element("query", NS_ROSTER, &[]);
        for item in items {
            let mut i = element(
                "item",
                NS_ROSTER,
                &[
                    ("jid", item.jid.as_str()),
                    ("subscription", item.subscription.as_str()),
                ],
            );
            if let Some(n) = &item.name {
                set_attr(&mut i, "name", n.as_str());
            }
            if item.ask_out {
                set_attr(&mut i, "ask", "subscribe");
            }
            for g in &item.groups {
                i.append_child(text_element("group", NS_ROSTER, g));
            }
            query.append_child(i);
        }
        el.append_child(query);
    }
    if let Some(vcard) = stores.vcard(user).await.map_err(|e| storage(user, &e))?
        && let Ok(parsed) = vcard.xml.parse::<Element>()
    {
        el.append_child(parsed);
    }
    let offline = stores
        .offline_messages(user)
        .await
        .map_err(|e| storage(user, &e))?;
    if !offline.is_empty() {
        let mut box_el = element("offline-messages", NS_PIE, &[]);
        for entry in offline {
            if let Ok(message) = entry.xml.parse::<Element>() {
                box_el.append_child(message);
            }
        }
        el.append_child(box_el);
    }
    Ok(el)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn includes_stay_inside_the_directory() {
        let base = Path::new("/exports");
        assert_eq!(
            include_path(base, "host_a.xml"),
            Some(PathBuf::from("/exports/host_a.xml"))
        );
        assert!(include_path(base, "../etc/passwd").is_none());
        assert!(include_path(base, "/etc/passwd").is_none());
        assert!(include_path(base, "http://example.org/x.xml").is_none());
    }

    #[test]
    fn scram_keys_single_and_double_encoded() {
        let keys = |salt: &str, stored: Vec<u8>, server: Vec<u8>| {
            let xml = format!(
                "<scram-credentials xmlns='{NS_SCRAM}' mechanism='SCRAM-SHA-1'>\
                 <iter-count>4096</iter-count><salt>{salt}</salt>\
                 <server-key>{}</server-key><stored-key>{}</stored-key></scram-credentials>",
                STANDARD.encode(server),
                STANDARD.encode(stored)
            );
            scram_keys(&xml.parse::<Element>().unwrap())
        };
        let plain = keys(&STANDARD.encode(b"salty"), vec![1; 20], vec![2; 20]).unwrap();
        assert_eq!(plain.salt, b"salty");
        assert_eq!(plain.stored_key, vec![1; 20]);
        // ejabberd: each value is the base64 of the base64 text.
        let b64 = |v: &[u8]| STANDARD.encode(v).into_bytes();
        let double = keys(
            &STANDARD.encode(b64(b"salty")),
            b64(&[3; 20]),
            b64(&[4; 20]),
        )
        .unwrap();
        assert_eq!(double.salt, b"salty");
        assert_eq!(double.server_key, vec![4; 20]);
        assert!(keys("c2FsdA==", vec![1; 7], vec![2; 7]).is_err());
    }

    #[test]
    fn roster_items_are_read_leniently_but_remove_is_refused() {
        let item: Element = format!(
            "<item xmlns='{NS_ROSTER}' jid='bob@example.org' name='Bob' subscription='both' ask='subscribe'>\
             <group>A</group><group>A</group><group>B</group></item>"
        )
        .parse()
        .unwrap();
        let parsed = roster_item(&item).unwrap();
        assert_eq!(parsed.subscription, Subscription::Both);
        assert!(parsed.ask_out);
        assert_eq!(parsed.groups, vec!["A", "B"]);
        let remove: Element =
            format!("<item xmlns='{NS_ROSTER}' jid='bob@example.org' subscription='remove'/>")
                .parse()
                .unwrap();
        assert!(roster_item(&remove).is_none());
    }
}
