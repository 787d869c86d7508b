//! Conformance scenarios for [`crate::PrivacyStore`] (XEP-0016 lists, XEP-0191 blocklist).
//!
//! Like [`crate::conformance`], each `pub async fn` is one scenario on a `&dyn Stores`, with
//! its own host so that [`run_all`] can run them on one database. Checked: list round trip
//! (every item type, action and stanza kind, items sorted by order), replacement, names and
//! default, the default list read in one call, removal clearing the default, the list-count
//! quota, refusals (no items, duplicate orders, unknown default), whole-user removal and
//! isolation between users.

use starling_xmpp::jid::BareJid;

use crate::{
    PrivacyAction, PrivacyItem, PrivacyList, PrivacyMatch, PrivacyStanzas, StorageError, Stores,
    Subscription,
};

/// Runs every privacy scenario in turn on one store.
pub async fn run_all(s: &dyn Stores) -> Result<(), StorageError> {
    privacy_list_round_trip(s).await?;
    privacy_replace_and_names(s).await?;
    privacy_default_list(s).await?;
    privacy_remove_list(s).await?;
    privacy_quota_and_refusals(s).await?;
    privacy_remove_user_and_isolation(s).await?;
    Ok(())
}

/// Every item shape comes back as written, sorted by order.
pub async fn privacy_list_round_trip(s: &dyn Stores) -> Result<(), StorageError> {
    let user = jid("alice@trip.privacy.example");
    assert_eq!(s.privacy_list(&user, "x").await?, None);
    let items = vec![
        item(
            PrivacyMatch::Subscription(Subscription::None),
            PrivacyAction::Deny,
            30,
            PrivacyStanzas {
                presence_in: true,
                ..PrivacyStanzas::ALL
            },
        ),
        item(
            PrivacyMatch::Jid("romeo@montague.example/orchard".into()),
            PrivacyAction::Allow,
            5,
            PrivacyStanzas::ALL,
        ),
        item(
            PrivacyMatch::Group("Friends ✓".into()),
            PrivacyAction::Allow,
            10,
            PrivacyStanzas {
                message: true,
                iq: true,
                presence_in: false,
                presence_out: true,
            },
        ),
        item(
            PrivacyMatch::Always,
            PrivacyAction::Deny,
            u32::MAX,
            PrivacyStanzas::ALL,
        ),
    ];
    s.put_privacy_list(&user, "mixed", &items, 10).await?;
    let mut sorted = items.clone();
    sorted.sort_by_key(|i| i.order);
    assert_eq!(s.privacy_list(&user, "mixed").await?, Some(sorted));
    Ok(())
}

/// Putting a list again replaces all its items; names are listed sorted.
pub async fn privacy_replace_and_names(s: &dyn Stores) -> Result<(), StorageError> {
    let user = jid("bob@names.privacy.example");
    s.put_privacy_list(&user, "zeta", &[block("a@x", 1), block("b@x", 2)], 10)
        .await?;
    s.put_privacy_list(&user, "alpha", &[block("c@x", 1)], 10)
        .await?;
    s.put_privacy_list(&user, "zeta", &[block("d@x", 7)], 10)
        .await?;
    assert_eq!(
        s.privacy_list(&user, "zeta").await?,
        Some(vec![block("d@x", 7)])
    );
    let lists = s.privacy_lists(&user).await?;
    assert_eq!(lists.names, ["alpha", "zeta"]);
    assert_eq!(lists.default, None);
    Ok(())
}

/// The default list is set, read with its items in one call, changed and declined; an
/// unknown list cannot become the default.
pub async fn privacy_default_list(s: &dyn Stores) -> Result<(), StorageError> {
    let user = jid("carol@default.privacy.example");
    assert_eq!(s.default_privacy_list(&user).await?, None);
    let missing = s.set_default_privacy_list(&user, Some("nope")).await;
    assert!(
        matches!(missing, Err(StorageError::NotFound)),
        "{missing:?}"
    );
    assert_eq!(s.privacy_lists(&user).await?.default, None);
    s.put_privacy_list(&user, "one", &[block("a@x", 2), block("b@x", 1)], 10)
        .await?;
    s.put_privacy_list(&user, "two", &[block("c@x", 1)], 10)
        .await?;
    s.set_default_privacy_list(&user, Some("one")).await?;
    assert_eq!(
        s.default_privacy_list(&user).await?,
        Some(PrivacyList {
            name: "one".to_owned(),
            items: vec![block("b@x", 1), block("a@x", 2)]
        })
    );
    s.set_default_privacy_list(&user, Some("two")).await?;
    assert_eq!(
        s.privacy_lists(&user).await?.default.as_deref(),
        Some("two")
    );
    // A failed change keeps the old default.
    assert!(
        s.set_default_privacy_list(&user, Some("three"))
            .await
            .is_err()
    );
    assert_eq!(
        s.privacy_lists(&user).await?.default.as_deref(),
        Some("two")
    );
    s.set_default_privacy_list(&user, None).await?;
    assert_eq!(s.default_privacy_list(&user).await?, None);
    assert_eq!(s.privacy_lists(&user).await?.names.len(), 2);
    Ok(())
}

/// Removing a list removes its items and clears the default if it was the default.
pub async fn privacy_remove_list(s: &dyn Stores) -> Result<(), StorageError> {
    let user = jid("dave@remove.privacy.example");
    assert!(!s.remove_privacy_list(&user, "none").await?);
    s.put_privacy_list(&user, "keep", &[block("a@x", 1)], 10)
        .await?;
    s.put_privacy_list(&user, "gone", &[block("b@x", 1)], 10)
        .await?;
    s.set_default_privacy_list(&user, Some("keep")).await?;
    assert!(s.remove_privacy_list(&user, "gone").await?);
    assert_eq!(s.privacy_list(&user, "gone").await?, None);
    assert_eq!(
        s.privacy_lists(&user).await?.default.as_deref(),
        Some("keep")
    );
    assert!(s.remove_privacy_list(&user, "keep").await?);
    assert_eq!(s.privacy_lists(&user).await?, Default::default());
    // A list re-created under the old name is not the default again.
    s.put_privacy_list(&user, "keep", &[block("a@x", 1)], 10)
        .await?;
    assert_eq!(s.default_privacy_list(&user).await?, None);
    Ok(())
}

/// The list count is capped for new lists only; invalid lists are refused and change nothing.
pub async fn privacy_quota_and_refusals(s: &dyn Stores) -> Result<(), StorageError> {
    let user = jid("erin@quota.privacy.example");
    s.put_privacy_list(&user, "a", &[block("a@x", 1)], 2)
        .await?;
    s.put_privacy_list(&user, "b", &[block("b@x", 1)], 2)
        .await?;
    let over = s.put_privacy_list(&user, "c", &[block("c@x", 1)], 2).await;
    assert!(matches!(over, Err(StorageError::QuotaExceeded)), "{over:?}");
    assert_eq!(s.privacy_list(&user, "c").await?, None);
    // Replacing an existing list at the limit is fine.
    s.put_privacy_list(&user, "b", &[block("z@x", 1)], 2)
        .await?;
    let empty = s.put_privacy_list(&user, "b", &[], 10).await;
    assert!(
        matches!(empty, Err(StorageError::InvalidValue(_))),
        "{empty:?}"
    );
    let dup = s
        .put_privacy_list(&user, "b", &[block("a@x", 1), block("b@x", 1)], 10)
        .await;
    assert!(matches!(dup, Err(StorageError::InvalidValue(_))), "{dup:?}");
    assert_eq!(
        s.privacy_list(&user, "b").await?,
        Some(vec![block("z@x", 1)])
    );
    Ok(())
}

/// `remove_privacy` deletes everything of one user and nothing of another user or host.
pub async fn privacy_remove_user_and_isolation(s: &dyn Stores) -> Result<(), StorageError> {
    let a = jid("frank@a.privacy.example");
    let b = jid("frank@b.privacy.example");
    for user in [&a, &b] {
        s.put_privacy_list(user, "l", &[block("x@y", 1)], 1).await?;
        s.set_default_privacy_list(user, Some("l")).await?;
    }
    s.remove_privacy(&a).await?;
    assert_eq!(s.privacy_lists(&a).await?, Default::default());
    assert_eq!(s.privacy_list(&a, "l").await?, None);
    assert_eq!(s.default_privacy_list(&a).await?, None);
    assert_eq!(
        s.default_privacy_list(&b).await?,
        Some(PrivacyList {
            name: "l".to_owned(),
            items: vec![block("x@y", 1)]
        })
    );
    // The quota counts per user: a's removal freed a's slot only.
    s.put_privacy_list(&a, "new", &[block("x@y", 1)], 1).await?;
    Ok(())
}

// --- fixtures ---

fn jid(s: &str) -> BareJid {
    match BareJid::parse(s) {
        Ok(j) => j,
        Err(e) => panic!("fixture jid {s:?}: {e}"),
    }
}

fn item(
    matcher: PrivacyMatch,
    action: PrivacyAction,
    order: u32,
    stanzas: PrivacyStanzas,
) -> PrivacyItem {
    PrivacyItem {
        matcher,
        action,
        order,
        stanzas,
    }
}

/// A blocklist-style item: deny everything to and from `jid`.
fn block(jid: &str, order: u32) -> PrivacyItem {
    item(
        PrivacyMatch::Jid(jid.to_owned()),
        PrivacyAction::Deny,
        order,
        PrivacyStanzas::ALL,
    )
}
