//! Conformance scenarios for [`crate::MamStore`] (XEP-0313 archives, XEP-0059 paging).
//!
//! Like [`crate::conformance`], each scenario takes a `&dyn Stores`, uses its own host, and
//! panics on a failed assertion. What is checked: insertion and id conflicts, forward and
//! backward paging with `complete` and `count`, RSM `index`, the `with`/`start`/`end`/
//! `after-id`/`before-id`/`ids` filters, unknown anchors, purge on insert, preferences, and
//! removal (archive and preferences, other users untouched).

use starling_xmpp::jid::{BareJid, Jid};

use crate::{
    ArchivePolicy, ArchivePrefs, ArchiveQuery, ArchiveWith, ArchivedMessage, Direction,
    StorageError, Stores,
};

/// Runs every scenario in turn on one store.
pub async fn run_all(s: &dyn Stores) -> Result<(), StorageError> {
    mam_archive_and_conflict(s).await?;
    mam_paging_forward_and_backward(s).await?;
    mam_filters(s).await?;
    mam_unknown_anchor_is_not_found(s).await?;
    mam_purge_on_insert(s).await?;
    mam_prefs_round_trip(s).await?;
    mam_remove_archive(s).await?;
    Ok(())
}

/// Messages come back as stored; a second message with the same id is `AlreadyExists`.
pub async fn mam_archive_and_conflict(s: &dyn Stores) -> Result<(), StorageError> {
    let alice = jid("alice@mam-insert.example");
    let m = message(100, "bob@remote.example", "phone", Direction::Outgoing);
    s.archive_message(&alice, &m, None).await?;
    let again = s.archive_message(&alice, &m, None).await;
    assert!(
        matches!(again, Err(StorageError::AlreadyExists)),
        "{again:?}"
    );
    // The same id in another archive is fine.
    s.archive_message(&jid("bob@mam-insert.example"), &m, None)
        .await?;
    let page = s.query_archive(&alice, &query(10)).await?;
    assert_eq!(page.messages, vec![m]);
    assert!(page.complete);
    assert_eq!(page.count, 1);
    assert_eq!(s.archive_bounds(&alice).await?, Some((100, 100)));
    assert_eq!(
        s.archive_bounds(&jid("nobody@mam-insert.example")).await?,
        None
    );
    Ok(())
}

/// Forward pages follow RSM `after`, backward pages RSM `before`; `complete` is set on the
/// page reaching the end in its direction, `count` ignores the page, `offset` skips.
pub async fn mam_paging_forward_and_backward(s: &dyn Stores) -> Result<(), StorageError> {
    let alice = jid("alice@mam-paging.example");
    for id in 1..=5 {
        s.archive_message(
            &alice,
            &message(id, "bob@mam-paging.example", "", Direction::Incoming),
            None,
        )
        .await?;
    }
    // Forward walk with max 2: [1,2] [3,4] [5].
    let mut q = query(2);
    let mut walked = Vec::new();
    let mut pages = 0;
    loop {
        let page = s.query_archive(&alice, &q).await?;
        assert_eq!(page.count, 5);
        pages += 1;
        walked.extend(page.messages.iter().map(|m| m.id));
        if page.complete {
            break;
        }
        q.page_after = page.messages.last().map(|m| m.id);
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(walked, vec![1, 2, 3, 4, 5]);
    assert_eq!(pages, 3);
    // Exactly max left: complete on that page, without an empty extra page.
    let mut q = query(2);
    q.page_after = Some(3);
    let page = s.query_archive(&alice, &q).await?;
    assert_eq!(ids(&page.messages), vec![4, 5]);
    assert!(page.complete);
    // Backward from the end: [4,5] then [2,3] then [1], each oldest first.
    let mut q = query(2);
    q.from_end = true;
    let page = s.query_archive(&alice, &q).await?;
    assert_eq!(ids(&page.messages), vec![4, 5]);
    assert!(!page.complete);
    q.page_before = Some(4);
    let page = s.query_archive(&alice, &q).await?;
    assert_eq!(ids(&page.messages), vec![2, 3]);
    assert!(!page.complete);
    q.page_before = Some(2);
    let page = s.query_archive(&alice, &q).await?;
    assert_eq!(ids(&page.messages), vec![1]);
    assert!(page.complete);
    // RSM index.
    let mut q = query(2);
    q.offset = 3;
    let page = s.query_archive(&alice, &q).await?;
    assert_eq!(ids(&page.messages), vec![4, 5]);
    assert!(page.complete);
    // max 0: only the count.
    let page = s.query_archive(&alice, &query(0)).await?;
    assert!(page.messages.is_empty());
    assert_eq!(page.count, 5);
    assert!(!page.complete);
    Ok(())
}

/// `with` (bare and full), `start`/`end` (inclusive), `after-id`/`before-id` (exclusive,
/// counted) and `ids`.
pub async fn mam_filters(s: &dyn Stores) -> Result<(), StorageError> {
    let alice = jid("alice@mam-filters.example");
    let rows = [
        (10, "bob@mam-filters.example", "phone"),
        (20, "bob@mam-filters.example", "laptop"),
        (30, "carol@mam-filters.example", ""),
        (40, "bob@mam-filters.example", "phone"),
        (50, "carol@mam-filters.example", "x"),
    ];
    for (id, with, resource) in rows {
        s.archive_message(
            &alice,
            &message(id, with, resource, Direction::Outgoing),
            None,
        )
        .await?;
    }
    let mut q = query(10);
    q.with = Some(ArchiveWith::Bare(jid("bob@mam-filters.example")));
    let page = s.query_archive(&alice, &q).await?;
    assert_eq!(ids(&page.messages), vec![10, 20, 40]);
    assert_eq!(page.count, 3);
    q.with = Some(ArchiveWith::Full(
        jid("bob@mam-filters.example"),
        "phone".to_owned(),
    ));
    assert_eq!(
        ids(&s.query_archive(&alice, &q).await?.messages),
        vec![10, 40]
    );
    let mut q = query(10);
    q.start = Some(20);
    q.end = Some(40);
    assert_eq!(
        ids(&s.query_archive(&alice, &q).await?.messages),
        vec![20, 30, 40]
    );
    let mut q = query(10);
    q.after_id = Some(10);
    q.before_id = Some(50);
    let page = s.query_archive(&alice, &q).await?;
    assert_eq!(ids(&page.messages), vec![20, 30, 40]);
    assert_eq!(page.count, 3);
    let mut q = query(10);
    q.ids = vec![50, 20, 999];
    assert_eq!(
        ids(&s.query_archive(&alice, &q).await?.messages),
        vec![20, 50]
    );
    // Filters combine.
    q.with = Some(ArchiveWith::Bare(jid("carol@mam-filters.example")));
    assert_eq!(ids(&s.query_archive(&alice, &q).await?.messages), vec![50]);
    Ok(())
}

/// An anchor id that is not in this user's archive is `NotFound`.
pub async fn mam_unknown_anchor_is_not_found(s: &dyn Stores) -> Result<(), StorageError> {
    let alice = jid("alice@mam-anchor.example");
    let bob = jid("bob@mam-anchor.example");
    s.archive_message(
        &alice,
        &message(1, "x@y.example", "", Direction::Incoming),
        None,
    )
    .await?;
    s.archive_message(
        &bob,
        &message(2, "x@y.example", "", Direction::Incoming),
        None,
    )
    .await?;
    let setters: [fn(&mut ArchiveQuery); 4] = [
        |q| q.page_after = Some(2),
        |q| q.page_before = Some(2),
        |q| q.after_id = Some(2),
        |q| q.before_id = Some(2),
    ];
    for set in setters {
        let mut q = query(10);
        set(&mut q);
        let r = s.query_archive(&alice, &q).await;
        assert!(matches!(r, Err(StorageError::NotFound)), "{q:?}: {r:?}");
    }
    let mut q = query(10);
    q.page_after = Some(1);
    let page = s.query_archive(&alice, &q).await?;
    assert!(page.messages.is_empty());
    assert!(page.complete);
    Ok(())
}

/// `expire_before` deletes the user's older messages in the insert transaction only.
pub async fn mam_purge_on_insert(s: &dyn Stores) -> Result<(), StorageError> {
    let alice = jid("alice@mam-purge.example");
    let bob = jid("bob@mam-purge.example");
    for id in [1, 2, 3] {
        let m = message(id, "x@y.example", "", Direction::Incoming);
        s.archive_message(&alice, &m, None).await?;
        s.archive_message(&bob, &m, None).await?;
    }
    s.archive_message(
        &alice,
        &message(10, "x@y.example", "", Direction::Incoming),
        Some(3),
    )
    .await?;
    let page = s.query_archive(&alice, &query(10)).await?;
    assert_eq!(ids(&page.messages), vec![3, 10]);
    assert_eq!(
        ids(&s.query_archive(&bob, &query(10)).await?.messages),
        vec![1, 2, 3]
    );
    Ok(())
}

/// Preferences round-trip; `never` wins for a JID in both lists; a set replaces.
pub async fn mam_prefs_round_trip(s: &dyn Stores) -> Result<(), StorageError> {
    let alice = jid("alice@mam-prefs.example");
    assert_eq!(s.archive_prefs(&alice).await?, None);
    let prefs = ArchivePrefs {
        default: ArchivePolicy::Roster,
        always: vec![any("romeo@montague.example"), any("both@x.example")],
        never: vec![any("tybalt@capulet.example/sword"), any("both@x.example")],
    };
    s.set_archive_prefs(&alice, &prefs).await?;
    let got = s.archive_prefs(&alice).await?;
    assert_eq!(
        got,
        Some(ArchivePrefs {
            default: ArchivePolicy::Roster,
            always: vec![any("romeo@montague.example")],
            never: vec![any("both@x.example"), any("tybalt@capulet.example/sword")],
        })
    );
    let replaced = ArchivePrefs {
        default: ArchivePolicy::Never,
        always: Vec::new(),
        never: Vec::new(),
    };
    s.set_archive_prefs(&alice, &replaced).await?;
    assert_eq!(s.archive_prefs(&alice).await?, Some(replaced));
    Ok(())
}

/// Removal deletes the archive and the preferences of that user only.
pub async fn mam_remove_archive(s: &dyn Stores) -> Result<(), StorageError> {
    let alice = jid("alice@mam-remove.example");
    let bob = jid("bob@mam-remove.example");
    let prefs = ArchivePrefs {
        default: ArchivePolicy::Always,
        always: Vec::new(),
        never: vec![any("x@y.example")],
    };
    for user in [&alice, &bob] {
        s.archive_message(
            user,
            &message(1, "x@y.example", "", Direction::Incoming),
            None,
        )
        .await?;
        s.set_archive_prefs(user, &prefs).await?;
    }
    s.remove_archive(&alice).await?;
    assert_eq!(s.archive_bounds(&alice).await?, None);
    assert_eq!(s.archive_prefs(&alice).await?, None);
    assert_eq!(s.archive_bounds(&bob).await?, Some((1, 1)));
    assert_eq!(s.archive_prefs(&bob).await?, Some(prefs));
    // Removing an empty archive is not an error.
    s.remove_archive(&alice).await?;
    Ok(())
}

fn jid(s: &str) -> BareJid {
    BareJid::parse(s).unwrap_or_else(|e| panic!("fixture jid {s}: {e}"))
}

fn any(s: &str) -> Jid {
    Jid::parse(s).unwrap_or_else(|e| panic!("fixture jid {s}: {e}"))
}

fn query(max: u32) -> ArchiveQuery {
    ArchiveQuery {
        max,
        ..ArchiveQuery::default()
    }
}

fn ids(messages: &[ArchivedMessage]) -> Vec<i64> {
    messages.iter().map(|m| m.id).collect()
}

fn message(id: i64, with: &str, resource: &str, direction: Direction) -> ArchivedMessage {
    ArchivedMessage {
        id,
        with: jid(with),
        with_resource: resource.to_owned(),
        direction,
        stanza: format!(
            "<message xmlns='jabber:client' type='chat' id='m{id}'><body>héllo {id} &lt;&amp;</body></message>"
        ),
    }
}
