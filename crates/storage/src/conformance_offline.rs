//! Conformance scenarios for [`crate::OfflineStore`] (XEP-0160 storage, XEP-0013 access).
//!
//! Same conventions as [`crate::conformance`]: each scenario takes a fresh (or shared) store,
//! uses its own host, panics on a wrong answer and returns unexpected storage errors.
//!
//! What is checked: arrival order and growing ids, the per-user quota (including zero), the
//! atomic take and the restore that keeps the order, per-message view and removal, purge,
//! account removal forgetting everything, and isolation between users and hosts.

use starling_xmpp::jid::BareJid;

use crate::{OfflineEntry, PushOutcome, StorageError, Stores};

/// Runs every offline scenario in turn on one store.
pub async fn run_all(s: &dyn Stores) -> Result<(), StorageError> {
    offline_push_and_order(s).await?;
    offline_quota(s).await?;
    offline_take_and_restore(s).await?;
    offline_view_and_remove(s).await?;
    offline_clear_and_remove_user(s).await?;
    offline_users_and_hosts_are_isolated(s).await?;
    Ok(())
}

/// Messages come back oldest first with growing ids, payloads byte for byte.
pub async fn offline_push_and_order(s: &dyn Stores) -> Result<(), StorageError> {
    let bob = jid("bob@offline-order.example");
    assert_eq!(s.offline_count(&bob).await?, 0);
    assert!(s.offline_messages(&bob).await?.is_empty());
    let mut ids = Vec::new();
    for n in 0..3 {
        let xml =
            format!("<message xmlns='jabber:client'><body>é {n} &amp; \u{1F600}</body></message>");
        match s
            .push_offline(&bob, "alice@offline-order.example/a", &xml, 1_000 + n, 10)
            .await?
        {
            PushOutcome::Stored(id) => ids.push(id),
            PushOutcome::QuotaExceeded => panic!("quota of 10 hit at {n}"),
        }
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {ids:?}");
    assert_eq!(s.offline_count(&bob).await?, 3);
    let stored = s.offline_messages(&bob).await?;
    assert_eq!(stored.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    for (n, entry) in (0..).zip(&stored) {
        assert_eq!(entry.stored_at, 1_000 + n);
        assert_eq!(entry.from, "alice@offline-order.example/a");
        assert!(
            entry.xml.contains(&format!("é {n} &amp; \u{1F600}")),
            "{}",
            entry.xml
        );
    }
    let headers = s.offline_headers(&bob).await?;
    assert_eq!(
        headers,
        ids.iter()
            .map(|id| (*id, "alice@offline-order.example/a".to_owned()))
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// The quota refuses without writing; freeing room admits again; zero admits nothing.
pub async fn offline_quota(s: &dyn Stores) -> Result<(), StorageError> {
    let bob = jid("bob@offline-quota.example");
    for n in 0..2 {
        let outcome = s.push_offline(&bob, "a@x", "<m/>", n, 2).await?;
        assert!(matches!(outcome, PushOutcome::Stored(_)), "{outcome:?}");
    }
    let over = s.push_offline(&bob, "a@x", "<m/>", 3, 2).await?;
    assert_eq!(over, PushOutcome::QuotaExceeded);
    assert_eq!(s.offline_count(&bob).await?, 2);
    // A larger quota for the same user admits more (the limit is the caller's decision).
    let more = s.push_offline(&bob, "a@x", "<m/>", 4, 3).await?;
    assert!(matches!(more, PushOutcome::Stored(_)));
    let first = s.offline_headers(&bob).await?.first().map(|h| h.0);
    assert!(s.remove_offline(&bob, first.unwrap_or(-1)).await?);
    let again = s.push_offline(&bob, "a@x", "<m/>", 5, 3).await?;
    assert!(matches!(again, PushOutcome::Stored(_)));
    let carol = jid("carol@offline-quota.example");
    let zero = s.push_offline(&carol, "a@x", "<m/>", 1, 0).await?;
    assert_eq!(zero, PushOutcome::QuotaExceeded);
    assert_eq!(s.offline_count(&carol).await?, 0);
    Ok(())
}

/// Taking empties the store at once; restoring puts messages back in their old order, and
/// later messages still sort after them.
pub async fn offline_take_and_restore(s: &dyn Stores) -> Result<(), StorageError> {
    let bob = jid("bob@offline-take.example");
    for n in 0..4 {
        s.push_offline(&bob, "a@x", &format!("<m n='{n}'/>"), n, 100)
            .await?;
    }
    let taken = s.take_offline(&bob).await?;
    assert_eq!(taken.len(), 4);
    assert!(taken.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(s.offline_count(&bob).await?, 0);
    assert!(s.take_offline(&bob).await?.is_empty(), "taken only once");
    // The last two could not be delivered: they go back, under their ids.
    let undelivered: Vec<OfflineEntry> = taken.iter().skip(2).cloned().collect();
    s.restore_offline(&bob, &undelivered).await?;
    assert_eq!(s.offline_messages(&bob).await?, undelivered);
    let PushOutcome::Stored(newer) = s.push_offline(&bob, "a@x", "<m n='4'/>", 9, 100).await?
    else {
        panic!("quota of 100 hit");
    };
    assert!(
        undelivered.iter().all(|e| e.id < newer),
        "ids never go back"
    );
    let order: Vec<String> = s
        .offline_messages(&bob)
        .await?
        .into_iter()
        .map(|e| e.xml)
        .collect();
    assert_eq!(order, ["<m n='2'/>", "<m n='3'/>", "<m n='4'/>"]);
    Ok(())
}

/// XEP-0013 view and remove address single messages by id.
pub async fn offline_view_and_remove(s: &dyn Stores) -> Result<(), StorageError> {
    let bob = jid("bob@offline-view.example");
    let PushOutcome::Stored(id) = s.push_offline(&bob, "a@x/r", "<m/>", 7, 10).await? else {
        panic!("quota hit");
    };
    let entry = s.offline_message(&bob, id).await?;
    assert_eq!(
        entry,
        Some(OfflineEntry {
            id,
            stored_at: 7,
            from: "a@x/r".into(),
            xml: "<m/>".into(),
        })
    );
    assert_eq!(s.offline_message(&bob, id + 1).await?, None);
    assert!(!s.remove_offline(&bob, id + 1).await?);
    assert!(s.remove_offline(&bob, id).await?);
    assert!(!s.remove_offline(&bob, id).await?, "already removed");
    assert_eq!(s.offline_message(&bob, id).await?, None);
    Ok(())
}

/// Purge removes every message; account removal forgets the messages and the id counter.
pub async fn offline_clear_and_remove_user(s: &dyn Stores) -> Result<(), StorageError> {
    let bob = jid("bob@offline-clear.example");
    for n in 0..3 {
        s.push_offline(&bob, "a@x", "<m/>", n, 10).await?;
    }
    assert_eq!(s.clear_offline(&bob).await?, 3);
    assert_eq!(s.clear_offline(&bob).await?, 0);
    assert_eq!(s.offline_count(&bob).await?, 0);
    s.push_offline(&bob, "a@x", "<m/>", 4, 10).await?;
    s.remove_offline_user(&bob).await?;
    assert_eq!(s.offline_count(&bob).await?, 0);
    // Removing a user with nothing stored is not an error.
    s.remove_offline_user(&jid("nobody@offline-clear.example"))
        .await?;
    Ok(())
}

/// One user's messages, quota and removal never touch another's, nor another host's.
pub async fn offline_users_and_hosts_are_isolated(s: &dyn Stores) -> Result<(), StorageError> {
    let a = jid("bob@offline-iso-a.example");
    let b = jid("bob@offline-iso-b.example");
    let c = jid("carol@offline-iso-a.example");
    for user in [&a, &b, &c] {
        s.push_offline(user, "x@y", user.as_str(), 1, 1).await?;
    }
    // Each has used its own quota of one.
    for user in [&a, &b, &c] {
        let outcome = s.push_offline(user, "x@y", "<m/>", 2, 1).await?;
        assert_eq!(outcome, PushOutcome::QuotaExceeded);
    }
    assert_eq!(s.take_offline(&a).await?.len(), 1);
    s.remove_offline_user(&c).await?;
    let left = s.offline_messages(&b).await?;
    assert_eq!(left.len(), 1);
    assert_eq!(left.first().map(|e| e.xml.as_str()), Some(b.as_str()));
    Ok(())
}

fn jid(s: &str) -> BareJid {
    match BareJid::parse(s) {
        Ok(j) => j,
        Err(e) => panic!("fixture jid {s}: {e}"),
    }
}
