//! Conformance scenarios for [`crate::PepStore`] (XEP-0163 nodes and items), run by every
//! backend like [`crate::conformance`].
//!
//! Checked: auto-creation on publish with the offered configuration (and the stored one
//! winning afterwards), replacement of an item by id (it becomes the newest), trimming to
//! `max_items`, non-persistent nodes keeping nothing, the three item queries, retraction,
//! reconfiguration trimming, node deletion, the node quota (nothing stored on refusal),
//! account removal, and isolation between accounts and hosts.

use starling_xmpp::jid::BareJid;

use crate::{PepItem, PepItemsQuery, PepNode, StorageError, Stores};

/// Runs every scenario in turn on one store.
pub async fn run_all(s: &dyn Stores) -> Result<(), StorageError> {
    pep_publish_creates_node(s).await?;
    pep_items_are_trimmed_and_replaced(s).await?;
    pep_item_queries(s).await?;
    pep_retract_and_delete(s).await?;
    pep_reconfigure(s).await?;
    pep_node_quota(s).await?;
    pep_remove_user(s).await?;
    pep_isolation(s).await?;
    Ok(())
}

fn jid(s: &str) -> BareJid {
    BareJid::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn node(name: &str, max_items: u32) -> PepNode {
    PepNode {
        name: name.to_owned(),
        access_model: "presence".to_owned(),
        max_items,
        persist_items: true,
        send_last_published_item: "on_sub_and_presence".to_owned(),
        roster_groups: Vec::new(),
    }
}

fn item(id: &str, payload: &str, at: i64) -> PepItem {
    PepItem {
        id: id.to_owned(),
        payload: payload.to_owned(),
        publisher: "alice@pep.example/phone".to_owned(),
        published_at: at,
    }
}

fn ids(items: &[PepItem]) -> Vec<&str> {
    items.iter().map(|i| i.id.as_str()).collect()
}

/// Publishing to a missing node creates it with the offered configuration; later offers do
/// not change it.
pub async fn pep_publish_creates_node(s: &dyn Stores) -> Result<(), StorageError> {
    let alice = jid("alice@pep.example");
    assert_eq!(s.pep_node(&alice, "urn:xmpp:avatar:metadata").await?, None);
    let mut config = node("urn:xmpp:avatar:metadata", 1);
    config.roster_groups = vec!["Friends".into(), "Family".into()];
    let first = item("abc", "<metadata xmlns='urn:xmpp:avatar:metadata'/>", 1_000);
    s.publish_pep_item(&alice, &config, &first, 10).await?;
    assert_eq!(
        s.pep_node(&alice, "urn:xmpp:avatar:metadata").await?,
        Some(config.clone())
    );
    let mut other = node("urn:xmpp:avatar:metadata", 5);
    other.access_model = "open".into();
    s.publish_pep_item(&alice, &other, &item("def", "<x xmlns='y'/>", 2_000), 10)
        .await?;
    let stored = s.pep_node(&alice, "urn:xmpp:avatar:metadata").await?;
    assert_eq!(stored, Some(config), "the stored configuration wins");
    let items = s
        .pep_items(&alice, "urn:xmpp:avatar:metadata", PepItemsQuery::All)
        .await?;
    assert_eq!(
        ids(&items),
        vec!["def"],
        "max_items 1 keeps the newest only"
    );
    assert_eq!(
        items.first().map(|i| i.payload.as_str()),
        Some("<x xmlns='y'/>")
    );
    assert_eq!(s.pep_nodes(&alice).await?.len(), 1);
    Ok(())
}

/// Items beyond `max_items` go, oldest first; republishing an id makes it the newest even with
/// an older clock; non-persistent nodes keep nothing.
pub async fn pep_items_are_trimmed_and_replaced(s: &dyn Stores) -> Result<(), StorageError> {
    let bob = jid("bob@pep.example");
    let config = node("urn:xmpp:bookmarks:1", 3);
    for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
        let at = 10 + i64::try_from(i).unwrap_or(0);
        s.publish_pep_item(&bob, &config, &item(id, "<p xmlns='x'/>", at), 10)
            .await?;
    }
    let items = s
        .pep_items(&bob, "urn:xmpp:bookmarks:1", PepItemsQuery::All)
        .await?;
    assert_eq!(ids(&items), vec!["d", "c", "b"]);
    // Same id again, with a clock that went backwards: still the newest, payload replaced.
    s.publish_pep_item(&bob, &config, &item("b", "<p xmlns='x'>2</p>", 1), 10)
        .await?;
    let items = s
        .pep_items(&bob, "urn:xmpp:bookmarks:1", PepItemsQuery::All)
        .await?;
    assert_eq!(ids(&items), vec!["b", "d", "c"]);
    assert_eq!(
        items.first().map(|i| i.payload.as_str()),
        Some("<p xmlns='x'>2</p>")
    );
    assert!(items.windows(2).all(|w| match w {
        [newer, older] => newer.published_at > older.published_at,
        _ => true,
    }));
    let mut volatile = node("urn:xmpp:tune", 10);
    volatile.persist_items = false;
    s.publish_pep_item(
        &bob,
        &volatile,
        &item("t", "<tune xmlns='urn:xmpp:tune'/>", 5),
        10,
    )
    .await?;
    assert!(s.pep_node(&bob, "urn:xmpp:tune").await?.is_some());
    assert!(
        s.pep_items(&bob, "urn:xmpp:tune", PepItemsQuery::All)
            .await?
            .is_empty()
    );
    Ok(())
}

/// All, the newest N, and by id (unknown ids skipped, duplicates once, newest first).
pub async fn pep_item_queries(s: &dyn Stores) -> Result<(), StorageError> {
    let carol = jid("carol@pep.example");
    let config = node("eu.siacs.conversations.axolotl.bundles:1", 100);
    for (id, at) in [("one", 1), ("two", 2), ("three", 3)] {
        s.publish_pep_item(&carol, &config, &item(id, "", at), 10)
            .await?;
    }
    let n = "eu.siacs.conversations.axolotl.bundles:1";
    assert_eq!(
        ids(&s.pep_items(&carol, n, PepItemsQuery::Newest(2)).await?),
        vec!["three", "two"]
    );
    assert!(
        s.pep_items(&carol, n, PepItemsQuery::Newest(0))
            .await?
            .is_empty()
    );
    let wanted = vec![
        "one".to_owned(),
        "nope".to_owned(),
        "three".to_owned(),
        "one".to_owned(),
    ];
    assert_eq!(
        ids(&s.pep_items(&carol, n, PepItemsQuery::Ids(&wanted)).await?),
        vec!["three", "one"]
    );
    assert!(
        s.pep_items(&carol, "missing", PepItemsQuery::All)
            .await?
            .is_empty()
    );
    Ok(())
}

/// Retracting an item and deleting a node report whether there was one.
pub async fn pep_retract_and_delete(s: &dyn Stores) -> Result<(), StorageError> {
    let dave = jid("dave@pep.example");
    let config = node("http://jabber.org/protocol/mood", 5);
    s.publish_pep_item(&dave, &config, &item("m1", "", 1), 10)
        .await?;
    s.publish_pep_item(&dave, &config, &item("m2", "", 2), 10)
        .await?;
    let n = "http://jabber.org/protocol/mood";
    assert!(s.retract_pep_item(&dave, n, "m1").await?);
    assert!(!s.retract_pep_item(&dave, n, "m1").await?);
    assert_eq!(
        ids(&s.pep_items(&dave, n, PepItemsQuery::All).await?),
        vec!["m2"]
    );
    assert!(s.delete_pep_node(&dave, n).await?);
    assert!(!s.delete_pep_node(&dave, n).await?);
    assert_eq!(s.pep_node(&dave, n).await?, None);
    assert!(s.pep_items(&dave, n, PepItemsQuery::All).await?.is_empty());
    Ok(())
}

/// `put_pep_node` creates, or reconfigures and trims.
pub async fn pep_reconfigure(s: &dyn Stores) -> Result<(), StorageError> {
    let erin = jid("erin@pep.example");
    let n = "urn:xmpp:bookmarks:1";
    let mut config = node(n, 10);
    config.access_model = "whitelist".into();
    s.put_pep_node(&erin, &config, 10).await?;
    assert_eq!(s.pep_node(&erin, n).await?, Some(config.clone()));
    for (id, at) in [("x", 1), ("y", 2), ("z", 3)] {
        s.publish_pep_item(&erin, &config, &item(id, "", at), 10)
            .await?;
    }
    config.max_items = 2;
    config.roster_groups = vec!["Work".into()];
    s.put_pep_node(&erin, &config, 10).await?;
    assert_eq!(s.pep_node(&erin, n).await?, Some(config.clone()));
    assert_eq!(
        ids(&s.pep_items(&erin, n, PepItemsQuery::All).await?),
        vec!["z", "y"]
    );
    config.persist_items = false;
    s.put_pep_node(&erin, &config, 10).await?;
    assert!(s.pep_items(&erin, n, PepItemsQuery::All).await?.is_empty());
    Ok(())
}

/// A creation over the node quota stores nothing; existing nodes still take items.
pub async fn pep_node_quota(s: &dyn Stores) -> Result<(), StorageError> {
    let frank = jid("frank@pep.example");
    s.put_pep_node(&frank, &node("one", 1), 2).await?;
    s.publish_pep_item(&frank, &node("two", 1), &item("i", "", 1), 2)
        .await?;
    let refused = s.put_pep_node(&frank, &node("three", 1), 2).await;
    assert!(matches!(refused, Err(StorageError::QuotaExceeded)));
    let refused = s
        .publish_pep_item(&frank, &node("four", 1), &item("i", "", 1), 2)
        .await;
    assert!(matches!(refused, Err(StorageError::QuotaExceeded)));
    assert_eq!(s.pep_node(&frank, "three").await?, None);
    assert_eq!(s.pep_node(&frank, "four").await?, None);
    assert!(
        s.pep_items(&frank, "four", PepItemsQuery::All)
            .await?
            .is_empty()
    );
    s.publish_pep_item(&frank, &node("one", 1), &item("j", "", 2), 2)
        .await?;
    assert_eq!(s.pep_nodes(&frank).await?.len(), 2);
    Ok(())
}

/// Removing an account's PEP data removes every node and item, and only its own.
pub async fn pep_remove_user(s: &dyn Stores) -> Result<(), StorageError> {
    let gina = jid("gina@pep-remove.example");
    let hugo = jid("hugo@pep-remove.example");
    for user in [&gina, &hugo] {
        s.publish_pep_item(user, &node("a", 5), &item("1", "", 1), 10)
            .await?;
        s.publish_pep_item(user, &node("b", 5), &item("1", "", 1), 10)
            .await?;
    }
    assert_eq!(s.remove_pep(&gina).await?, 2);
    assert!(s.pep_nodes(&gina).await?.is_empty());
    assert!(
        s.pep_items(&gina, "a", PepItemsQuery::All)
            .await?
            .is_empty()
    );
    assert_eq!(s.remove_pep(&gina).await?, 0);
    assert_eq!(s.pep_nodes(&hugo).await?.len(), 2);
    assert_eq!(s.pep_items(&hugo, "a", PepItemsQuery::All).await?.len(), 1);
    Ok(())
}

/// The same username on another host, and another user on the same host, see nothing.
pub async fn pep_isolation(s: &dyn Stores) -> Result<(), StorageError> {
    let here = jid("ivy@pep-iso.example");
    let there = jid("ivy@pep-iso.other");
    let neighbour = jid("jack@pep-iso.example");
    s.publish_pep_item(&here, &node("n", 5), &item("1", "<a xmlns='b'/>", 1), 10)
        .await?;
    for other in [&there, &neighbour] {
        assert_eq!(s.pep_node(other, "n").await?, None);
        assert!(
            s.pep_items(other, "n", PepItemsQuery::All)
                .await?
                .is_empty()
        );
        assert!(!s.retract_pep_item(other, "n", "1").await?);
        assert!(!s.delete_pep_node(other, "n").await?);
    }
    assert_eq!(s.pep_items(&here, "n", PepItemsQuery::All).await?.len(), 1);
    Ok(())
}
