//! [`MucStore`] on SQL: the `muc_rooms` and `muc_affiliations` tables of migration 0007
//! (XEP-0045 persistent rooms).
//!
//! A put is one transaction that starts with the room's upsert (taking SQLite's write lock, or
//! the row lock on PostgreSQL) and then replaces the affiliation list, so readers see either
//! the old room or the new one, never a mix.

use starling_storage::{BoxFuture, MucStore, StorageError, StoredRoom};

use std::time::{SystemTime, UNIX_EPOCH};

use crate::{SqlStore, backend, per_backend};

/// `$1` service.
pub(crate) const SELECT_ROOMS: &str = "SELECT name, options, subject, subject_author \
     FROM muc_rooms WHERE service = $1 ORDER BY name";
/// `$1` service, `$2` name.
pub(crate) const SELECT_ROOM: &str = "SELECT name, options, subject, subject_author \
     FROM muc_rooms WHERE service = $1 AND name = $2";
/// `$1` service.
pub(crate) const SELECT_SERVICE_AFFILIATIONS: &str = "SELECT name, jid, affiliation, reason \
     FROM muc_affiliations WHERE service = $1 ORDER BY name, jid";
/// `$1` service, `$2` name.
pub(crate) const SELECT_AFFILIATIONS: &str = "SELECT name, jid, affiliation, reason \
     FROM muc_affiliations WHERE service = $1 AND name = $2 ORDER BY jid";
/// `$1` service, `$2` name, `$3` options, `$4` subject, `$5` subject_author, `$6`
/// updated_at (µs).
pub(crate) const UPSERT_ROOM: &str = "INSERT INTO muc_rooms \
     (service, name, options, subject, subject_author, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (service, name) DO UPDATE SET \
     options = excluded.options, subject = excluded.subject, \
     subject_author = excluded.subject_author, updated_at = excluded.updated_at";
/// `$1` service, `$2` name.
pub(crate) const DELETE_AFFILIATIONS: &str =
    "DELETE FROM muc_affiliations WHERE service = $1 AND name = $2";
/// `$1` service, `$2` name, `$3` jid, `$4` affiliation, `$5` reason.
pub(crate) const INSERT_AFFILIATION: &str = "INSERT INTO muc_affiliations \
     (service, name, jid, affiliation, reason) VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (service, name, jid) DO UPDATE SET affiliation = excluded.affiliation, \
     reason = excluded.reason";
/// `$1` service, `$2` name.
pub(crate) const DELETE_ROOM: &str = "DELETE FROM muc_rooms WHERE service = $1 AND name = $2";

/// A `muc_rooms` row as selected.
type RoomRow = (String, String, String, String);
/// A `muc_affiliations` row as selected.
type AffiliationRow = (String, String, String, String);

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn room_of(service: &str, (name, options, subject, subject_author): RoomRow) -> StoredRoom {
    StoredRoom {
        service: service.to_owned(),
        name,
        options,
        subject,
        subject_author,
        affiliations: Vec::new(),
    }
}

per_backend! {
    impl MucStore for SqlStore<Db> {
        fn muc_rooms<'a>(
            &'a self,
            service: &'a str,
        ) -> BoxFuture<'a, Result<Vec<StoredRoom>, StorageError>> {
            self.timed("muc.muc_rooms", async move {
                let rows: Vec<RoomRow> = sqlx::query_as(SELECT_ROOMS)
                    .bind(service)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(backend)?;
                let affiliations: Vec<AffiliationRow> = sqlx::query_as(SELECT_SERVICE_AFFILIATIONS)
                    .bind(service)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(backend)?;
                let mut rooms: Vec<StoredRoom> = rows.into_iter().map(|r| room_of(service, r)).collect();
                // Sorted here, by bytes: the database's collation (PostgreSQL's may not be C)
                // must not decide whether the binary search below finds a room.
                rooms.sort_by(|a, b| a.name.cmp(&b.name));
                for (name, jid, affiliation, reason) in affiliations {
                    if let Ok(i) = rooms.binary_search_by(|r| r.name.as_str().cmp(name.as_str()))
                        && let Some(room) = rooms.get_mut(i)
                    {
                        room.affiliations.push((jid, affiliation, reason));
                    }
                }
                Ok(rooms)
            })
        }

        fn muc_room<'a>(
            &'a self,
            service: &'a str,
            name: &'a str,
        ) -> BoxFuture<'a, Result<Option<StoredRoom>, StorageError>> {
            self.timed("muc.muc_room", async move {
                let row: Option<RoomRow> = sqlx::query_as(SELECT_ROOM)
                    .bind(service)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(backend)?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let mut room = room_of(service, row);
                let affiliations: Vec<AffiliationRow> = sqlx::query_as(SELECT_AFFILIATIONS)
                    .bind(service)
                    .bind(name)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(backend)?;
                room.affiliations = affiliations
                    .into_iter()
                    .map(|(_, jid, affiliation, reason)| (jid, affiliation, reason))
                    .collect();
                Ok(Some(room))
            })
        }

        fn put_muc_room<'a>(&'a self, room: &'a StoredRoom) -> BoxFuture<'a, Result<(), StorageError>> {
            self.timed("muc.put_muc_room", async move {
                let mut tx = self.pool.begin().await.map_err(backend)?;
                sqlx::query(UPSERT_ROOM)
                    .bind(room.service.as_str())
                    .bind(room.name.as_str())
                    .bind(room.options.as_str())
                    .bind(room.subject.as_str())
                    .bind(room.subject_author.as_str())
                    .bind(now_micros())
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                sqlx::query(DELETE_AFFILIATIONS)
                    .bind(room.service.as_str())
                    .bind(room.name.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                for (jid, affiliation, reason) in &room.affiliations {
                    sqlx::query(INSERT_AFFILIATION)
                        .bind(room.service.as_str())
                        .bind(room.name.as_str())
                        .bind(jid.as_str())
                        .bind(affiliation.as_str())
                        .bind(reason.as_str())
                        .execute(&mut *tx)
                        .await
                        .map_err(backend)?;
                }
                tx.commit().await.map_err(backend)
            })
        }

        fn delete_muc_room<'a>(
            &'a self,
            service: &'a str,
            name: &'a str,
        ) -> BoxFuture<'a, Result<bool, StorageError>> {
            self.timed("muc.delete_muc_room", async move {
                let mut tx = self.pool.begin().await.map_err(backend)?;
                let deleted = sqlx::query(DELETE_ROOM)
                    .bind(service)
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?
                    .rows_affected()
                    > 0;
                sqlx::query(DELETE_AFFILIATIONS)
                    .bind(service)
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                tx.commit().await.map_err(backend)?;
                Ok(deleted)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_keyed_by_service_and_use_numbered_parameters() {
        for statement in [
            SELECT_ROOMS,
            SELECT_ROOM,
            SELECT_SERVICE_AFFILIATIONS,
            SELECT_AFFILIATIONS,
            UPSERT_ROOM,
            DELETE_AFFILIATIONS,
            INSERT_AFFILIATION,
            DELETE_ROOM,
        ] {
            assert!(statement.contains("service"), "{statement}");
            assert!(!statement.contains('?'), "{statement}");
        }
    }
}
