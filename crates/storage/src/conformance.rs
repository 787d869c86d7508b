//! The conformance suite every storage backend must pass (DESIGN §6, §11).
//!
//! Each `pub async fn` is one scenario taking a `&dyn Stores`; a backend's tests call them
//! against a fresh, migrated database. Scenarios use their own hosts, so they may also run
//! one after another on a single database ([`run_all`]). Failures panic with `assert!`, like
//! any test; storage errors the scenario does not expect are returned.
//!
//! What is checked: accounts (create, duplicate, SCRAM key round trip, password change,
//! removal, listing, counting), rosters (RFC 6121 §2: put, get, replace, remove, version
//! bumps per §2.6, quota, the pending-in subscribe stanza of §3.1.3, groups), XEP-0012 last
//! activity, removal cascading to everything the account owns, non-ASCII usernames, and
//! isolation between hosts.

use starling_xmpp::jid::BareJid;
use starling_xmpp::scram::{Credentials, ScramHash, ScramKeys};

use crate::{RosterItem, StorageError, Stores, Subscription};

/// Runs every scenario in turn on one store.
pub async fn run_all(s: &dyn Stores) -> Result<(), StorageError> {
    accounts_create_and_duplicate(s).await?;
    accounts_credentials_round_trip(s).await?;
    accounts_set_credentials(s).await?;
    accounts_remove(s).await?;
    accounts_list_and_count(s).await?;
    accounts_refuse_domain_only_jid(s).await?;
    roster_put_get_replace(s).await?;
    roster_remove_item(s).await?;
    roster_versions_increase(s).await?;
    roster_quota(s).await?;
    roster_pending_in_round_trip(s).await?;
    roster_groups(s).await?;
    roster_refuses_remove_subscription(s).await?;
    last_activity(s).await?;
    remove_cascades(s).await?;
    unicode_usernames(s).await?;
    hosts_are_isolated(s).await?;
    Ok(())
}

/// Registering twice fails with `AlreadyExists` and keeps the first keys.
pub async fn accounts_create_and_duplicate(s: &dyn Stores) -> Result<(), StorageError> {
    let alice = jid("alice@create.example");
    assert!(!s.exists(&alice).await?);
    s.create(&alice, &credentials(1)).await?;
    assert!(s.exists(&alice).await?);
    let again = s.create(&alice, &credentials(2)).await;
    assert!(
        matches!(again, Err(StorageError::AlreadyExists)),
        "{again:?}"
    );
    let kept = s.credentials(&alice).await?;
    assert_credentials_eq(kept.as_ref(), &credentials(1));
    Ok(())
}

/// All three SCRAM key sets come back byte for byte, including NUL and 0xFF bytes.
pub async fn accounts_credentials_round_trip(s: &dyn Stores) -> Result<(), StorageError> {
    let bob = jid("bob@keys.example");
    assert!(s.credentials(&bob).await?.is_none());
    let creds = credentials(7);
    s.create(&bob, &creds).await?;
    assert_credentials_eq(s.credentials(&bob).await?.as_ref(), &creds);
    // Another account's keys are not mixed in.
    let carol = jid("carol@keys.example");
    s.create(&carol, &credentials(8)).await?;
    assert_credentials_eq(s.credentials(&bob).await?.as_ref(), &creds);
    Ok(())
}

/// A password change replaces every key set; changing an unknown account is `NotFound`.
pub async fn accounts_set_credentials(s: &dyn Stores) -> Result<(), StorageError> {
    let dave = jid("dave@passwd.example");
    let missing = s.set_credentials(&dave, &credentials(3)).await;
    assert!(
        matches!(missing, Err(StorageError::NotFound)),
        "{missing:?}"
    );
    assert!(
        !s.exists(&dave).await?,
        "set_credentials must not create the account"
    );
    s.create(&dave, &credentials(3)).await?;
    s.set_credentials(&dave, &credentials(4)).await?;
    assert_credentials_eq(s.credentials(&dave).await?.as_ref(), &credentials(4));
    Ok(())
}

/// Removing reports whether there was an account and forgets its keys.
pub async fn accounts_remove(s: &dyn Stores) -> Result<(), StorageError> {
    let erin = jid("erin@remove.example");
    assert!(!s.remove(&erin).await?);
    s.create(&erin, &credentials(5)).await?;
    assert!(s.remove(&erin).await?);
    assert!(!s.exists(&erin).await?);
    assert!(s.credentials(&erin).await?.is_none());
    assert!(!s.remove(&erin).await?);
    // The name is free again.
    s.create(&erin, &credentials(6)).await?;
    assert_credentials_eq(s.credentials(&erin).await?.as_ref(), &credentials(6));
    Ok(())
}

/// Listing is per host and sorted by bytes; counting agrees with it.
pub async fn accounts_list_and_count(s: &dyn Stores) -> Result<(), StorageError> {
    let host = "list.example";
    assert!(s.list(host).await?.is_empty());
    assert_eq!(s.count(host).await?, 0);
    for name in ["mallory", "bob", "zoé", "alice", "9lives"] {
        s.create(&jid(&format!("{name}@{host}")), &credentials(1))
            .await?;
    }
    // Byte order: digits before letters, non-ASCII last.
    assert_eq!(
        s.list(host).await?,
        ["9lives", "alice", "bob", "mallory", "zoé"]
    );
    assert_eq!(s.count(host).await?, 5);
    s.remove(&jid(&format!("bob@{host}"))).await?;
    assert_eq!(s.list(host).await?, ["9lives", "alice", "mallory", "zoé"]);
    assert_eq!(s.count(host).await?, 4);
    Ok(())
}

/// An account needs a localpart; a domain JID is refused, not stored under "".
pub async fn accounts_refuse_domain_only_jid(s: &dyn Stores) -> Result<(), StorageError> {
    let domain = jid("domainonly.example");
    let created = s.create(&domain, &credentials(1)).await;
    assert!(
        matches!(created, Err(StorageError::InvalidJid(_))),
        "{created:?}"
    );
    assert_eq!(s.count("domainonly.example").await?, 0);
    Ok(())
}

/// Items are stored, read one by one or all, and replaced whole.
pub async fn roster_put_get_replace(s: &dyn Stores) -> Result<(), StorageError> {
    let user = jid("juliet@roster.example");
    let romeo = jid("romeo@montague.example");
    let nurse = jid("nurse@capulet.example");
    assert!(s.roster(&user).await?.0.is_empty());
    assert!(s.item(&user, &romeo).await?.is_none());

    let mut item = RosterItem::new(romeo.clone());
    item.name = Some("Romeo".into());
    item.subscription = Subscription::Both;
    item.groups = vec!["Friends".into()];
    s.put_item(&user, &item, 100).await?;
    let gateway = RosterItem::new(jid("gateway.example"));
    s.put_item(&user, &gateway, 100).await?;
    let mut nurse_item = RosterItem::new(nurse.clone());
    nurse_item.ask_out = true;
    nurse_item.approved = true;
    s.put_item(&user, &nurse_item, 100).await?;

    assert_eq!(s.item(&user, &romeo).await?.as_ref(), Some(&item));
    assert_eq!(s.item(&user, &nurse).await?.as_ref(), Some(&nurse_item));
    let (items, _) = s.roster(&user).await?;
    assert_eq!(items.len(), 3);
    for expected in [&item, &gateway, &nurse_item] {
        assert!(
            items.contains(expected),
            "{expected:?} missing from {items:?}"
        );
    }

    // Replacing drops what the new item does not carry (name, groups).
    let mut replaced = RosterItem::new(romeo.clone());
    replaced.subscription = Subscription::To;
    s.put_item(&user, &replaced, 100).await?;
    assert_eq!(s.item(&user, &romeo).await?.as_ref(), Some(&replaced));
    assert_eq!(s.roster(&user).await?.0.len(), 3);
    Ok(())
}

/// Removing an item bumps the version; removing a missing one changes nothing.
pub async fn roster_remove_item(s: &dyn Stores) -> Result<(), StorageError> {
    let user = jid("juliet@rosterremove.example");
    let romeo = jid("romeo@montague.example");
    assert!(s.remove_item(&user, &romeo).await?.is_none());
    let mut item = RosterItem::new(romeo.clone());
    item.groups = vec!["Friends".into(), "Verona".into()];
    let put = s.put_item(&user, &item, 100).await?;
    let removed = s.remove_item(&user, &romeo).await?;
    let Some(removed) = removed else {
        panic!("remove_item found nothing");
    };
    assert_ne!(removed, put);
    assert_eq!(s.version(&user).await?, removed);
    assert!(s.item(&user, &romeo).await?.is_none());
    assert!(s.roster(&user).await?.0.is_empty());
    assert!(s.remove_item(&user, &romeo).await?.is_none());
    assert_eq!(
        s.version(&user).await?,
        removed,
        "a no-op must not bump the version"
    );
    // Re-adding does not resurrect the old groups.
    s.put_item(&user, &RosterItem::new(romeo.clone()), 100)
        .await?;
    assert_eq!(s.item(&user, &romeo).await?.map(|i| i.groups), Some(vec![]));
    Ok(())
}

/// Every change yields a new, larger counter; reads return the latest one.
pub async fn roster_versions_increase(s: &dyn Stores) -> Result<(), StorageError> {
    let user = jid("juliet@versions.example");
    let initial = s.version(&user).await?;
    assert_eq!(s.roster(&user).await?.1, initial);
    let mut seen = vec![counter(&initial)];
    for n in 0..5 {
        let contact = jid(&format!("c{n}@versions.example"));
        let v = s.put_item(&user, &RosterItem::new(contact), 100).await?;
        seen.push(counter(&v));
        assert_eq!(s.version(&user).await?, v);
        assert_eq!(s.roster(&user).await?.1, v);
    }
    let v = s.remove_item(&user, &jid("c0@versions.example")).await?;
    seen.push(counter(v.as_deref().unwrap_or("")));
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "not increasing: {seen:?}"
    );
    // Another user's counter is separate.
    let other = jid("romeo@versions.example");
    assert!(s.roster(&other).await?.0.is_empty());
    s.put_item(&other, &RosterItem::new(jid("x@versions.example")), 100)
        .await?;
    assert_eq!(s.version(&user).await?, v.unwrap_or_default());
    Ok(())
}

/// New items beyond `max_items` are refused, without a version bump; replacing is allowed.
pub async fn roster_quota(s: &dyn Stores) -> Result<(), StorageError> {
    let user = jid("juliet@quota.example");
    for n in 0..3 {
        s.put_item(
            &user,
            &RosterItem::new(jid(&format!("c{n}@quota.example"))),
            3,
        )
        .await?;
    }
    let before = s.version(&user).await?;
    let over = s
        .put_item(&user, &RosterItem::new(jid("c3@quota.example")), 3)
        .await;
    assert!(matches!(over, Err(StorageError::QuotaExceeded)), "{over:?}");
    assert_eq!(s.version(&user).await?, before);
    assert_eq!(s.roster(&user).await?.0.len(), 3);
    assert!(s.item(&user, &jid("c3@quota.example")).await?.is_none());

    let mut replaced = RosterItem::new(jid("c1@quota.example"));
    replaced.subscription = Subscription::From;
    s.put_item(&user, &replaced, 3).await?;
    assert_eq!(
        s.item(&user, &replaced.jid).await?.as_ref(),
        Some(&replaced)
    );

    // A zero quota refuses everything new.
    let zero = s.put_item(&jid("romeo@quota.example"), &replaced, 0).await;
    assert!(matches!(zero, Err(StorageError::QuotaExceeded)), "{zero:?}");
    Ok(())
}

/// The contact's subscribe stanza is kept verbatim for redelivery (RFC 6121 §3.1.3).
pub async fn roster_pending_in_round_trip(s: &dyn Stores) -> Result<(), StorageError> {
    let user = jid("juliet@pending.example");
    let stanza = "<presence xmlns='jabber:client' from='romeo@montague.example' \
                  to='juliet@pending.example' type='subscribe' id='x&amp;1'>\
                  <status>Pâris? Non — c’est Roméo 🌹</status>\
                  <nick xmlns='http://jabber.org/protocol/nick'>R\"o'meo</nick></presence>";
    let mut item = RosterItem::new(jid("romeo@montague.example"));
    item.pending_in = Some(stanza.to_owned());
    s.put_item(&user, &item, 10).await?;
    let stored = s.item(&user, &item.jid).await?;
    assert_eq!(stored.and_then(|i| i.pending_in).as_deref(), Some(stanza));

    // Approving clears it.
    item.pending_in = None;
    item.subscription = Subscription::From;
    s.put_item(&user, &item, 10).await?;
    assert_eq!(
        s.item(&user, &item.jid).await?.and_then(|i| i.pending_in),
        None
    );
    Ok(())
}

/// Groups keep their order, collapse duplicates, allow any text, and are replaced whole.
pub async fn roster_groups(s: &dyn Stores) -> Result<(), StorageError> {
    let user = jid("juliet@groups.example");
    let mut item = RosterItem::new(jid("romeo@montague.example"));
    item.groups = vec![
        "Zeta".into(),
        "Amis de Vérone".into(),
        "Zeta".into(),
        "家族".into(),
        "a'b\"c".into(),
    ];
    s.put_item(&user, &item, 10).await?;
    let expected = ["Zeta", "Amis de Vérone", "家族", "a'b\"c"];
    assert_eq!(
        s.item(&user, &item.jid).await?.map(|i| i.groups),
        Some(to_vec(&expected))
    );
    let (items, _) = s.roster(&user).await?;
    assert_eq!(
        items.first().map(|i| i.groups.clone()),
        Some(to_vec(&expected))
    );

    // Two contacts may share a group name without interfering.
    let mut other = RosterItem::new(jid("mercutio@montague.example"));
    other.groups = vec!["Zeta".into()];
    s.put_item(&user, &other, 10).await?;

    item.groups = vec!["Famille".into()];
    s.put_item(&user, &item, 10).await?;
    assert_eq!(
        s.item(&user, &item.jid).await?.map(|i| i.groups),
        Some(to_vec(&["Famille"]))
    );
    assert_eq!(
        s.item(&user, &other.jid).await?.map(|i| i.groups),
        Some(to_vec(&["Zeta"]))
    );
    Ok(())
}

/// `subscription='remove'` exists only on the wire; storing it is refused.
pub async fn roster_refuses_remove_subscription(s: &dyn Stores) -> Result<(), StorageError> {
    let user = jid("juliet@wire.example");
    let mut item = RosterItem::new(jid("romeo@montague.example"));
    item.subscription = Subscription::Remove;
    let put = s.put_item(&user, &item, 10).await;
    assert!(matches!(put, Err(StorageError::InvalidValue(_))), "{put:?}");
    assert!(s.roster(&user).await?.0.is_empty());
    Ok(())
}

/// XEP-0012: the last logout is recorded, overwritten, and per user.
pub async fn last_activity(s: &dyn Stores) -> Result<(), StorageError> {
    let user = jid("juliet@last.example");
    assert_eq!(s.last(&user).await?, None);
    s.set_last(&user, 1_700_000_000, "").await?;
    assert_eq!(s.last(&user).await?, Some((1_700_000_000, String::new())));
    s.set_last(&user, 1_700_000_100, "Parting is such sweet sorrow ☾")
        .await?;
    assert_eq!(
        s.last(&user).await?,
        Some((1_700_000_100, "Parting is such sweet sorrow ☾".to_owned()))
    );
    assert_eq!(s.last(&jid("romeo@last.example")).await?, None);
    // Times before 1970 and far in the future are plain integers to the store.
    s.set_last(&user, -1, "x").await?;
    assert_eq!(s.last(&user).await?, Some((-1, "x".to_owned())));
    Ok(())
}

/// Removing an account removes its roster, roster version and last activity, and only its.
pub async fn remove_cascades(s: &dyn Stores) -> Result<(), StorageError> {
    let juliet = jid("juliet@cascade.example");
    let romeo = jid("romeo@cascade.example");
    for user in [&juliet, &romeo] {
        s.create(user, &credentials(1)).await?;
        let mut item = RosterItem::new(jid("nurse@cascade.example"));
        item.groups = vec!["Household".into()];
        s.put_item(user, &item, 10).await?;
        s.set_last(user, 42, "bye").await?;
    }
    let romeo_version = s.version(&romeo).await?;
    let juliet_version = s.version(&juliet).await?;
    assert!(s.remove(&juliet).await?);
    assert!(!s.exists(&juliet).await?);
    assert_eq!(s.roster(&juliet).await?, (vec![], "0".to_owned()));
    assert_eq!(s.last(&juliet).await?, None);

    assert!(s.exists(&romeo).await?);
    assert_eq!(s.roster(&romeo).await?.0.len(), 1);
    assert_eq!(s.version(&romeo).await?, romeo_version);
    assert_eq!(s.last(&romeo).await?, Some((42, "bye".to_owned())));

    // A re-created account starts empty and never reuses a version of the old roster.
    s.create(&juliet, &credentials(2)).await?;
    assert!(s.roster(&juliet).await?.0.is_empty());
    let v = s
        .put_item(&juliet, &RosterItem::new(jid("nurse@cascade.example")), 10)
        .await?;
    assert_ne!(v, juliet_version);
    Ok(())
}

/// Non-ASCII localparts (already PRECIS-normalised) are distinct keys, stored verbatim.
pub async fn unicode_usernames(s: &dyn Stores) -> Result<(), StorageError> {
    let host = "unicode.example";
    let names = [
        "josé",
        "jose",
        "ñandú",
        "дмитрий",
        "李小龍",
        "ⅻ",
        "🐦starling",
    ];
    let mut created = Vec::new();
    for (n, name) in names.iter().enumerate() {
        let Ok(user) = BareJid::new(Some(name), host) else {
            // The JID layer's PRECIS profile may refuse a name (e.g. symbols); skip it.
            continue;
        };
        s.create(&user, &credentials(n as u8)).await?;
        s.set_last(&user, n as i64, user.node().unwrap_or_default())
            .await?;
        created.push((n, user));
    }
    assert!(created.len() >= 5, "too few names accepted: {created:?}");
    for (n, user) in &created {
        assert!(s.exists(user).await?);
        assert_credentials_eq(s.credentials(user).await?.as_ref(), &credentials(*n as u8));
        let status = user.node().unwrap_or_default().to_owned();
        assert_eq!(s.last(user).await?, Some((*n as i64, status)));
    }
    let mut expected: Vec<String> = created
        .iter()
        .filter_map(|(_, u)| u.node().map(str::to_owned))
        .collect();
    expected.sort_unstable();
    assert_eq!(s.list(host).await?, expected);

    // A non-ASCII user with a non-ASCII contact.
    let user = &created[0].1;
    let contact = jid("roméo@münchen.example");
    s.put_item(user, &RosterItem::new(contact.clone()), 10)
        .await?;
    assert_eq!(s.item(user, &contact).await?.map(|i| i.jid), Some(contact));
    Ok(())
}

/// Same usernames on two hosts are two accounts; nothing leaks across.
pub async fn hosts_are_isolated(s: &dyn Stores) -> Result<(), StorageError> {
    let a = jid("juliet@a.isolated.example");
    let b = jid("juliet@b.isolated.example");
    s.create(&a, &credentials(1)).await?;
    assert!(!s.exists(&b).await?);
    assert!(s.credentials(&b).await?.is_none());
    s.create(&b, &credentials(2)).await?;
    assert_credentials_eq(s.credentials(&a).await?.as_ref(), &credentials(1));
    assert_credentials_eq(s.credentials(&b).await?.as_ref(), &credentials(2));

    let contact = jid("romeo@montague.example");
    s.put_item(&a, &RosterItem::new(contact.clone()), 1).await?;
    // b's quota is its own: a's item does not count.
    s.put_item(&b, &RosterItem::new(jid("nurse@capulet.example")), 1)
        .await?;
    assert!(s.item(&b, &contact).await?.is_none());
    assert_eq!(s.roster(&b).await?.0.len(), 1);
    s.set_last(&a, 1, "a").await?;
    assert_eq!(s.last(&b).await?, None);

    assert_eq!(s.list("a.isolated.example").await?, ["juliet"]);
    assert_eq!(s.count("b.isolated.example").await?, 1);
    assert!(s.remove(&a).await?);
    assert!(s.exists(&b).await?);
    assert_eq!(s.roster(&b).await?.0.len(), 1);
    Ok(())
}

// --- fixtures ---

/// Parses a JID the suite writes by hand.
fn jid(s: &str) -> BareJid {
    match BareJid::parse(s) {
        Ok(j) => j,
        Err(e) => panic!("fixture jid {s:?}: {e}"),
    }
}

/// Deterministic, distinct keys per `seed`, with NUL and 0xFF bytes to catch text handling.
fn credentials(seed: u8) -> Credentials {
    let keys = |hash: ScramHash, len: usize, tag: u8| ScramKeys {
        hash,
        salt: vec![0, seed, tag, 0xff, b'\'', 0],
        iterations: 4096 + u32::from(seed),
        stored_key: (0..len).map(|i| (i as u8) ^ seed ^ tag).collect(),
        server_key: (0..len)
            .map(|i| (i as u8).wrapping_mul(3) ^ seed ^ tag)
            .collect(),
    };
    let all = [
        keys(ScramHash::Sha1, 20, 1),
        keys(ScramHash::Sha256, 32, 2),
        keys(ScramHash::Sha512, 64, 3),
    ];
    // Odd seeds keep one hash only, as an account imported from another server may.
    let kept: Vec<ScramKeys> = if seed % 2 == 1 {
        all.into_iter()
            .filter(|k| k.hash == ScramHash::Sha1)
            .collect()
    } else {
        all.into()
    };
    Credentials::from_keys(kept).unwrap_or_else(|| unreachable!("at least one hash is kept"))
}

fn assert_credentials_eq(actual: Option<&Credentials>, expected: &Credentials) {
    assert_eq!(actual, Some(expected), "stored SCRAM keys differ");
}

/// A roster version as the counter it is (RFC 6121 §2.6 leaves the format to the server).
fn counter(version: &str) -> u64 {
    match version.parse() {
        Ok(n) => n,
        Err(e) => panic!("version {version:?} is not a counter: {e}"),
    }
}

fn to_vec(groups: &[&str]) -> Vec<String> {
    groups.iter().map(|g| (*g).to_owned()).collect()
}
