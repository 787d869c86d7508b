//! Conformance scenarios for [`crate::MucStore`] (XEP-0045 persistent rooms), run by every
//! backend like [`crate::conformance`].
//!
//! Checked: create, read back, replace (affiliations replaced whole, sorted), listing per
//! service sorted by name, isolation between services, deletion (affiliations included).

use crate::{StorageError, StoredRoom, Stores};

/// Runs every scenario in turn on one store.
pub async fn run_all(s: &dyn Stores) -> Result<(), StorageError> {
    muc_room_round_trip(s).await?;
    muc_rooms_per_service(s).await?;
    muc_delete_room(s).await?;
    Ok(())
}

fn room(service: &str, name: &str, affiliations: &[(&str, &str)]) -> StoredRoom {
    StoredRoom {
        service: service.to_owned(),
        name: name.to_owned(),
        options: format!("title={name}\npersistent=1"),
        subject: "Welcome".to_owned(),
        subject_author: "alice".to_owned(),
        affiliations: affiliations
            .iter()
            .map(|(j, a)| ((*j).to_owned(), (*a).to_owned(), String::new()))
            .collect(),
    }
}

/// A room comes back as stored; a second put replaces options, subject and affiliations.
pub async fn muc_room_round_trip(s: &dyn Stores) -> Result<(), StorageError> {
    let svc = "conference.muc.example";
    assert_eq!(s.muc_room(svc, "lobby").await?, None);
    let first = room(
        svc,
        "lobby",
        &[
            ("bob@muc.example", "member"),
            ("alice@muc.example", "owner"),
        ],
    );
    s.put_muc_room(&first).await?;
    let got = s.muc_room(svc, "lobby").await?.expect("stored room");
    assert_eq!(got.options, first.options);
    assert_eq!(got.subject, "Welcome");
    assert_eq!(got.subject_author, "alice");
    // Sorted by JID whatever the order given.
    assert_eq!(
        got.affiliations,
        vec![
            (
                "alice@muc.example".to_owned(),
                "owner".to_owned(),
                String::new()
            ),
            (
                "bob@muc.example".to_owned(),
                "member".to_owned(),
                String::new()
            ),
        ]
    );
    let mut second = room(svc, "lobby", &[("carol@muc.example", "outcast")]);
    second.affiliations[0].2 = "spam".to_owned();
    second.subject = String::new();
    second.options = "title=Lobby".to_owned();
    s.put_muc_room(&second).await?;
    let got = s.muc_room(svc, "lobby").await?.expect("stored room");
    assert_eq!(got, second);
    s.delete_muc_room(svc, "lobby").await?;
    Ok(())
}

/// Listing returns one service's rooms only, sorted by name.
pub async fn muc_rooms_per_service(s: &dyn Stores) -> Result<(), StorageError> {
    let a = "conference.a.example";
    let b = "conference.b.example";
    s.put_muc_room(&room(a, "zeta", &[("o@a.example", "owner")]))
        .await?;
    s.put_muc_room(&room(a, "alpha", &[])).await?;
    s.put_muc_room(&room(b, "alpha", &[("o@b.example", "owner")]))
        .await?;
    let names: Vec<String> = s.muc_rooms(a).await?.into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["alpha", "zeta"]);
    let rooms = s.muc_rooms(b).await?;
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0].affiliations.len(), 1);
    assert!(s.muc_rooms("conference.none.example").await?.is_empty());
    for (svc, name) in [(a, "zeta"), (a, "alpha"), (b, "alpha")] {
        assert!(s.delete_muc_room(svc, name).await?);
    }
    Ok(())
}

/// Deleting removes the room and its affiliations; deleting again reports false.
pub async fn muc_delete_room(s: &dyn Stores) -> Result<(), StorageError> {
    let svc = "conference.del.example";
    s.put_muc_room(&room(svc, "gone", &[("o@del.example", "owner")]))
        .await?;
    assert!(s.delete_muc_room(svc, "gone").await?);
    assert_eq!(s.muc_room(svc, "gone").await?, None);
    assert!(!s.delete_muc_room(svc, "gone").await?);
    // Re-created without affiliations: none left over from before.
    s.put_muc_room(&room(svc, "gone", &[])).await?;
    let got = s.muc_room(svc, "gone").await?.expect("stored room");
    assert!(got.affiliations.is_empty());
    assert!(s.delete_muc_room(svc, "gone").await?);
    Ok(())
}
