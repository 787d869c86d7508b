//! Conformance scenarios for [`crate::VcardStore`] (XEP-0054/XEP-0153) and
//! [`crate::PrivateStore`] (XEP-0049), run by every backend like [`crate::conformance`].
//!
//! Checked: vCard round trip and replacement with and without a photo hash, deletion, private
//! storage per namespace with several namespaces in one write, replacement, the namespace
//! quota (all or nothing), deletion, and isolation between accounts and hosts.

use starling_xmpp::jid::BareJid;

use crate::{StorageError, StoredVcard, Stores};

/// Runs every scenario in turn on one store.
pub async fn run_all(s: &dyn Stores) -> Result<(), StorageError> {
    vcard_round_trip(s).await?;
    vcard_remove(s).await?;
    private_round_trip(s).await?;
    private_quota(s).await?;
    private_remove(s).await?;
    vcard_and_private_are_isolated(s).await?;
    Ok(())
}

/// A vCard comes back as stored; a second set replaces it, hash included.
pub async fn vcard_round_trip(s: &dyn Stores) -> Result<(), StorageError> {
    let alice = jid("alice@vcard.example");
    assert_eq!(s.vcard(&alice).await?, None);
    let first = StoredVcard {
        xml: "<vCard xmlns='vcard-temp'><FN>Alice ✓</FN></vCard>".into(),
        photo_hash: None,
    };
    s.set_vcard(&alice, &first).await?;
    assert_eq!(s.vcard(&alice).await?, Some(first));
    let second = StoredVcard {
        xml: "<vCard xmlns='vcard-temp'><PHOTO><BINVAL>AAEC</BINVAL></PHOTO></vCard>".into(),
        photo_hash: Some("0123456789abcdef0123456789abcdef01234567".into()),
    };
    s.set_vcard(&alice, &second).await?;
    assert_eq!(s.vcard(&alice).await?, Some(second));
    Ok(())
}

/// Removing a vCard reports whether there was one.
pub async fn vcard_remove(s: &dyn Stores) -> Result<(), StorageError> {
    let bob = jid("bob@vcard-remove.example");
    assert!(!s.remove_vcard(&bob).await?);
    let card = StoredVcard {
        xml: "<vCard xmlns='vcard-temp'/>".into(),
        photo_hash: None,
    };
    s.set_vcard(&bob, &card).await?;
    assert!(s.remove_vcard(&bob).await?);
    assert_eq!(s.vcard(&bob).await?, None);
    Ok(())
}

/// Several namespaces in one write; a later write replaces only its own namespaces.
pub async fn private_round_trip(s: &dyn Stores) -> Result<(), StorageError> {
    let carol = jid("carol@private.example");
    assert_eq!(s.private_data(&carol, "storage:bookmarks").await?, None);
    let entries = vec![
        (
            "storage:bookmarks".to_owned(),
            "<storage xmlns='storage:bookmarks'/>".to_owned(),
        ),
        (
            "exodus:prefs".to_owned(),
            "<exodus xmlns='exodus:prefs'><defaultnick>Hamlet</defaultnick></exodus>".to_owned(),
        ),
    ];
    s.set_private_data(&carol, &entries, 10).await?;
    for (ns, xml) in &entries {
        assert_eq!(
            s.private_data(&carol, ns).await?.as_deref(),
            Some(xml.as_str())
        );
    }
    let update = vec![(
        "storage:bookmarks".to_owned(),
        "<storage xmlns='storage:bookmarks'><url name='x' url='https://x'/></storage>".to_owned(),
    )];
    s.set_private_data(&carol, &update, 10).await?;
    assert_eq!(
        s.private_data(&carol, "storage:bookmarks").await?,
        update.first().map(|(_, xml)| xml.clone())
    );
    assert_eq!(
        s.private_data(&carol, "exodus:prefs").await?,
        entries.get(1).map(|(_, xml)| xml.clone())
    );
    Ok(())
}

/// The namespace quota: replacing within the limit works, a write over it stores nothing.
pub async fn private_quota(s: &dyn Stores) -> Result<(), StorageError> {
    let dave = jid("dave@private-quota.example");
    let entry = |ns: &str| (ns.to_owned(), format!("<x xmlns='{ns}'/>"));
    s.set_private_data(&dave, &[entry("a:1"), entry("a:2")], 2)
        .await?;
    // Replacing an existing namespace does not count twice.
    s.set_private_data(&dave, &[entry("a:2")], 2).await?;
    let over = s
        .set_private_data(&dave, &[entry("a:1"), entry("a:3")], 2)
        .await;
    assert!(matches!(over, Err(StorageError::QuotaExceeded)), "{over:?}");
    // All or nothing: the namespace that fit was not written either.
    assert_eq!(s.private_data(&dave, "a:3").await?, None);
    assert_eq!(
        s.private_data(&dave, "a:1").await?.as_deref(),
        Some("<x xmlns='a:1'/>")
    );
    Ok(())
}

/// Removing private data deletes every namespace of that account only.
pub async fn private_remove(s: &dyn Stores) -> Result<(), StorageError> {
    let erin = jid("erin@private-remove.example");
    let frank = jid("frank@private-remove.example");
    let entries = vec![
        ("n:1".to_owned(), "<a xmlns='n:1'/>".to_owned()),
        ("n:2".to_owned(), "<b xmlns='n:2'/>".to_owned()),
    ];
    s.set_private_data(&erin, &entries, 10).await?;
    s.set_private_data(&frank, &entries, 10).await?;
    assert_eq!(s.remove_private_data(&erin).await?, 2);
    assert_eq!(s.private_data(&erin, "n:1").await?, None);
    assert_eq!(s.remove_private_data(&erin).await?, 0);
    assert!(s.private_data(&frank, "n:1").await?.is_some());
    Ok(())
}

/// The same username on two hosts keeps two vCards and two private stores.
pub async fn vcard_and_private_are_isolated(s: &dyn Stores) -> Result<(), StorageError> {
    let one = jid("gina@one.example");
    let two = jid("gina@two.example");
    let card = StoredVcard {
        xml: "<vCard xmlns='vcard-temp'><FN>One</FN></vCard>".into(),
        photo_hash: None,
    };
    s.set_vcard(&one, &card).await?;
    assert_eq!(s.vcard(&two).await?, None);
    let entries = vec![("p:q".to_owned(), "<q xmlns='p:q'/>".to_owned())];
    s.set_private_data(&one, &entries, 1).await?;
    assert_eq!(s.private_data(&two, "p:q").await?, None);
    // The quota is per account: the other host's Gina has her own.
    s.set_private_data(&two, &entries, 1).await?;
    assert!(s.remove_vcard(&one).await?);
    assert_eq!(s.remove_private_data(&two).await?, 1);
    assert!(s.private_data(&one, "p:q").await?.is_some());
    Ok(())
}

fn jid(s: &str) -> BareJid {
    match BareJid::parse(s) {
        Ok(j) => j,
        Err(e) => panic!("fixture jid {s}: {e}"),
    }
}
