//! [`PrivacyStore`] on SQL: the `privacy_lists`, `privacy_default_lists` and `privacy_items`
//! tables of migration 0005 (XEP-0016 lists, which also hold the XEP-0191 blocklist).
//!
//! Statements are written once in SQL both SQLite and PostgreSQL accept, like [`crate::sql`].
//! Every write transaction starts with a write on the user's rows, so concurrent writers queue
//! (SQLite's lock, PostgreSQL's row locks) before the list-count quota is checked. Items come
//! back sorted by `item_order`, an integer, so both backends agree on the order.

use starling_storage::privacy::validate_privacy_items;
use starling_storage::{
    BareJid, BoxFuture, PrivacyAction, PrivacyItem, PrivacyList, PrivacyLists, PrivacyMatch,
    PrivacyStanzas, PrivacyStore, StorageError, Subscription, account_key,
};

use crate::{SqlStore, backend, per_backend};

/// `$1` host, `$2` username, `$3` name. Does nothing if the list exists.
pub(crate) const INSERT_PRIVACY_LIST: &str = "INSERT INTO privacy_lists (host, username, name) \
     VALUES ($1, $2, $3) ON CONFLICT (host, username, name) DO NOTHING";
/// `$1` host, `$2` username.
pub(crate) const COUNT_PRIVACY_LISTS: &str =
    "SELECT COUNT(*) FROM privacy_lists WHERE host = $1 AND username = $2";
/// `$1` host, `$2` username.
pub(crate) const SELECT_PRIVACY_LIST_NAMES: &str =
    "SELECT name FROM privacy_lists WHERE host = $1 AND username = $2";
/// `$1` host, `$2` username, `$3` name.
pub(crate) const SELECT_PRIVACY_LIST_EXISTS: &str =
    "SELECT COUNT(*) FROM privacy_lists WHERE host = $1 AND username = $2 AND name = $3";
/// `$1` host, `$2` username, `$3` name.
pub(crate) const DELETE_PRIVACY_LIST: &str =
    "DELETE FROM privacy_lists WHERE host = $1 AND username = $2 AND name = $3";
/// `$1` host, `$2` username.
pub(crate) const DELETE_PRIVACY_LISTS: &str =
    "DELETE FROM privacy_lists WHERE host = $1 AND username = $2";

/// `$1` host, `$2` username.
pub(crate) const SELECT_PRIVACY_DEFAULT: &str =
    "SELECT name FROM privacy_default_lists WHERE host = $1 AND username = $2";
/// `$1` host, `$2` username, `$3` name.
pub(crate) const UPSERT_PRIVACY_DEFAULT: &str = "INSERT INTO privacy_default_lists \
     (host, username, name) VALUES ($1, $2, $3) \
     ON CONFLICT (host, username) DO UPDATE SET name = excluded.name";
/// `$1` host, `$2` username.
pub(crate) const DELETE_PRIVACY_DEFAULT: &str =
    "DELETE FROM privacy_default_lists WHERE host = $1 AND username = $2";
/// `$1` host, `$2` username, `$3` name: clears the default only if it names this list.
pub(crate) const DELETE_PRIVACY_DEFAULT_NAMED: &str =
    "DELETE FROM privacy_default_lists WHERE host = $1 AND username = $2 AND name = $3";

/// The item columns, in [`ItemRow`] order (checked against the statements by a test).
#[cfg(test)]
const ITEM_COLUMNS: &str = "item_order, item_type, item_value, action, \
     match_message, match_iq, match_presence_in, match_presence_out";
/// `$1` host, `$2` username, `$3` list name.
pub(crate) const SELECT_PRIVACY_ITEMS: &str = "SELECT item_order, item_type, item_value, action, \
     match_message, match_iq, match_presence_in, match_presence_out \
     FROM privacy_items WHERE host = $1 AND username = $2 AND list_name = $3 \
     ORDER BY item_order";
/// The default list's name and items in one read. `$1` host, `$2` username.
pub(crate) const SELECT_PRIVACY_DEFAULT_ITEMS: &str = "SELECT d.name, i.item_order, i.item_type, \
     i.item_value, i.action, i.match_message, i.match_iq, i.match_presence_in, \
     i.match_presence_out \
     FROM privacy_default_lists d JOIN privacy_items i \
     ON i.host = d.host AND i.username = d.username AND i.list_name = d.name \
     WHERE d.host = $1 AND d.username = $2 ORDER BY i.item_order";
/// `$1` host, `$2` username, `$3` list name, then the item columns in [`ItemRow`] order as `$4`..`$11`.
pub(crate) const INSERT_PRIVACY_ITEM: &str = "INSERT INTO privacy_items \
     (host, username, list_name, item_order, item_type, item_value, action, \
     match_message, match_iq, match_presence_in, match_presence_out) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
/// `$1` host, `$2` username, `$3` list name.
pub(crate) const DELETE_PRIVACY_ITEMS: &str =
    "DELETE FROM privacy_items WHERE host = $1 AND username = $2 AND list_name = $3";
/// `$1` host, `$2` username.
pub(crate) const DELETE_PRIVACY_ITEMS_ALL: &str =
    "DELETE FROM privacy_items WHERE host = $1 AND username = $2";

/// A row of `privacy_items`: order, type, value, action, message, iq, presence-in,
/// presence-out.
type ItemRow = (
    i64,
    Option<String>,
    Option<String>,
    String,
    bool,
    bool,
    bool,
    bool,
);

/// A default-list row: the list name, then an [`ItemRow`].
type DefaultRow = (
    String,
    i64,
    Option<String>,
    Option<String>,
    String,
    bool,
    bool,
    bool,
    bool,
);

/// Turns a row back into an item; a row no version of Starling writes is `Corrupt`.
fn decode(
    (order, kind, value, action, m, iq, pin, pout): ItemRow,
) -> Result<PrivacyItem, StorageError> {
    let corrupt = |what: &str| StorageError::Corrupt(format!("privacy item {order}: {what}"));
    let order = u32::try_from(order).map_err(|_| corrupt("order out of range"))?;
    let matcher = match (kind.as_deref(), value) {
        (None, _) => PrivacyMatch::Always,
        (Some("jid"), Some(v)) => PrivacyMatch::Jid(v),
        (Some("group"), Some(v)) => PrivacyMatch::Group(v),
        (Some("subscription"), Some(v)) => match Subscription::parse(&v) {
            Some(s) if s != Subscription::Remove => PrivacyMatch::Subscription(s),
            _ => return Err(corrupt("subscription value")),
        },
        _ => return Err(corrupt("type or value")),
    };
    let action = PrivacyAction::parse(&action).ok_or_else(|| corrupt("action"))?;
    Ok(PrivacyItem {
        matcher,
        action,
        order,
        stanzas: PrivacyStanzas {
            message: m,
            iq,
            presence_in: pin,
            presence_out: pout,
        },
    })
}

per_backend! {
    impl PrivacyStore for SqlStore<Db> {
        fn privacy_lists<'a>(
            &'a self,
            user: &'a BareJid,
        ) -> BoxFuture<'a, Result<PrivacyLists, StorageError>> {
            self.timed("privacy.privacy_lists", async move {
                let (host, username) = account_key(user)?;
                let mut names: Vec<String> = sqlx::query_scalar(SELECT_PRIVACY_LIST_NAMES)
                    .bind(host)
                    .bind(username)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(backend)?;
                // Sorted here, by bytes, so both backends list in the same order.
                names.sort_unstable();
                let default: Option<String> = sqlx::query_scalar(SELECT_PRIVACY_DEFAULT)
                    .bind(host)
                    .bind(username)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(backend)?;
                Ok(PrivacyLists { names, default })
            })
        }

        fn privacy_list<'a>(
            &'a self,
            user: &'a BareJid,
            name: &'a str,
        ) -> BoxFuture<'a, Result<Option<Vec<PrivacyItem>>, StorageError>> {
            self.timed("privacy.privacy_list", async move {
                let (host, username) = account_key(user)?;
                let rows: Vec<ItemRow> = sqlx::query_as(SELECT_PRIVACY_ITEMS)
                    .bind(host)
                    .bind(username)
                    .bind(name)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(backend)?;
                if rows.is_empty() {
                    // Lists are never empty, so no item means no list.
                    return Ok(None);
                }
                rows.into_iter()
                    .map(decode)
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some)
            })
        }

        fn default_privacy_list<'a>(
            &'a self,
            user: &'a BareJid,
        ) -> BoxFuture<'a, Result<Option<PrivacyList>, StorageError>> {
            self.timed("privacy.default_privacy_list", async move {
                let (host, username) = account_key(user)?;
                let rows: Vec<DefaultRow> = sqlx::query_as(SELECT_PRIVACY_DEFAULT_ITEMS)
                    .bind(host)
                    .bind(username)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(backend)?;
                let mut name = None;
                let mut items = Vec::with_capacity(rows.len());
                for (list, order, kind, value, action, m, iq, pin, pout) in rows {
                    items.push(decode((order, kind, value, action, m, iq, pin, pout))?);
                    name.get_or_insert(list);
                }
                Ok(name.map(|name| PrivacyList { name, items }))
            })
        }

        fn put_privacy_list<'a>(
            &'a self,
            user: &'a BareJid,
            name: &'a str,
            items: &'a [PrivacyItem],
            max_lists: u32,
        ) -> BoxFuture<'a, Result<(), StorageError>> {
            self.timed("privacy.put_privacy_list", async move {
                let (host, username) = account_key(user)?;
                validate_privacy_items(items)?;
                let mut tx = self.pool.begin().await.map_err(backend)?;
                // The first write: takes the lock before the quota is counted.
                let created = sqlx::query(INSERT_PRIVACY_LIST)
                    .bind(host)
                    .bind(username)
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?
                    .rows_affected()
                    > 0;
                if created {
                    let lists: i64 = sqlx::query_scalar(COUNT_PRIVACY_LISTS)
                        .bind(host)
                        .bind(username)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(backend)?;
                    if lists > i64::from(max_lists) {
                        tx.rollback().await.map_err(backend)?;
                        return Err(StorageError::QuotaExceeded);
                    }
                }
                sqlx::query(DELETE_PRIVACY_ITEMS)
                    .bind(host)
                    .bind(username)
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                for item in items {
                    let s = item.stanzas;
                    sqlx::query(INSERT_PRIVACY_ITEM)
                        .bind(host)
                        .bind(username)
                        .bind(name)
                        .bind(i64::from(item.order))
                        .bind(item.matcher.type_name())
                        .bind(item.matcher.value())
                        .bind(item.action.as_str())
                        .bind(s.message)
                        .bind(s.iq)
                        .bind(s.presence_in)
                        .bind(s.presence_out)
                        .execute(&mut *tx)
                        .await
                        .map_err(backend)?;
                }
                tx.commit().await.map_err(backend)
            })
        }

        fn remove_privacy_list<'a>(
            &'a self,
            user: &'a BareJid,
            name: &'a str,
        ) -> BoxFuture<'a, Result<bool, StorageError>> {
            self.timed("privacy.remove_privacy_list", async move {
                let (host, username) = account_key(user)?;
                let mut tx = self.pool.begin().await.map_err(backend)?;
                let removed = sqlx::query(DELETE_PRIVACY_LIST)
                    .bind(host)
                    .bind(username)
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?
                    .rows_affected()
                    > 0;
                for statement in [DELETE_PRIVACY_ITEMS, DELETE_PRIVACY_DEFAULT_NAMED] {
                    sqlx::query(statement)
                        .bind(host)
                        .bind(username)
                        .bind(name)
                        .execute(&mut *tx)
                        .await
                        .map_err(backend)?;
                }
                tx.commit().await.map_err(backend)?;
                Ok(removed)
            })
        }

        fn set_default_privacy_list<'a>(
            &'a self,
            user: &'a BareJid,
            name: Option<&'a str>,
        ) -> BoxFuture<'a, Result<(), StorageError>> {
            self.timed("privacy.set_default_privacy_list", async move {
                let (host, username) = account_key(user)?;
                let Some(name) = name else {
                    sqlx::query(DELETE_PRIVACY_DEFAULT)
                        .bind(host)
                        .bind(username)
                        .execute(&self.pool)
                        .await
                        .map_err(backend)?;
                    return Ok(());
                };
                let mut tx = self.pool.begin().await.map_err(backend)?;
                // Write first (see the module docs), then check the list exists.
                sqlx::query(UPSERT_PRIVACY_DEFAULT)
                    .bind(host)
                    .bind(username)
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                let exists: i64 = sqlx::query_scalar(SELECT_PRIVACY_LIST_EXISTS)
                    .bind(host)
                    .bind(username)
                    .bind(name)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(backend)?;
                if exists == 0 {
                    tx.rollback().await.map_err(backend)?;
                    return Err(StorageError::NotFound);
                }
                tx.commit().await.map_err(backend)
            })
        }

        fn remove_privacy<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, Result<(), StorageError>> {
            self.timed("privacy.remove_privacy", async move {
                let (host, username) = account_key(user)?;
                let mut tx = self.pool.begin().await.map_err(backend)?;
                for statement in [
                    DELETE_PRIVACY_DEFAULT,
                    DELETE_PRIVACY_ITEMS_ALL,
                    DELETE_PRIVACY_LISTS,
                ] {
                    sqlx::query(statement)
                        .bind(host)
                        .bind(username)
                        .execute(&mut *tx)
                        .await
                        .map_err(backend)?;
                }
                tx.commit().await.map_err(backend)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_statements_list_the_columns_in_row_order() {
        assert!(SELECT_PRIVACY_ITEMS.contains(ITEM_COLUMNS));
    }

    #[test]
    fn decode_maps_types_and_refuses_corrupt_rows() {
        let row = |kind: Option<&str>, value: Option<&str>, action: &str| -> ItemRow {
            (
                3,
                kind.map(str::to_owned),
                value.map(str::to_owned),
                action.to_owned(),
                true,
                false,
                false,
                true,
            )
        };
        let item = decode(row(Some("subscription"), Some("both"), "deny")).unwrap();
        assert_eq!(item.matcher, PrivacyMatch::Subscription(Subscription::Both));
        assert_eq!(item.action, PrivacyAction::Deny);
        assert_eq!(item.order, 3);
        assert!(item.stanzas.message && item.stanzas.presence_out);
        assert_eq!(
            decode(row(None, None, "allow")).unwrap().matcher,
            PrivacyMatch::Always
        );
        for bad in [
            row(Some("jid"), None, "deny"),
            row(Some("subscription"), Some("remove"), "deny"),
            row(Some("colour"), Some("x"), "deny"),
            row(Some("group"), Some("g"), "maybe"),
        ] {
            assert!(matches!(decode(bad), Err(StorageError::Corrupt(_))));
        }
        let mut negative = row(None, None, "allow");
        negative.0 = -1;
        assert!(decode(negative).is_err());
    }
}
