//! [`AccountStore`], [`RosterStore`] and [`LastActivityStore`] on SQL: runs the statements of
//! [`crate::sql`] in transactions (migration 0001; RFC 5802 keys, RFC 6121 §2 rosters with
//! §2.6 versions, XEP-0012).
//!
//! Each function is one operation of the `starling_storage` traits, compiled for both
//! backends (`per_backend!`). Write transactions start with a write (see the crate docs), so
//! concurrent writers queue on SQLite's lock under `busy_timeout`, or on PostgreSQL's row
//! locks, instead of failing or racing a quota check.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{Pool, Transaction};
use starling_storage::{
    AccountStore, BareJid, BoxFuture, Credentials, LastActivityStore, RosterItem, RosterStore,
    StorageError, Subscription, account_key,
};
use starling_xmpp::scram::{ScramHash, ScramKeys};

use crate::{SqlStore, backend, per_backend, sql};

/// A row of `roster_items`: contact, name, subscription, ask_out, pending_in, approved.
type ItemRow = (String, Option<String>, String, bool, Option<String>, bool);
/// A row of `scram_keys`: hash, salt, iterations, stored_key, server_key.
type KeysRow = (String, Vec<u8>, i64, Vec<u8>, Vec<u8>);

per_backend! {
    // --- accounts ---

    async fn create_account(
        pool: &Pool<Db>,
        user: &BareJid,
        creds: &Credentials,
    ) -> Result<(), StorageError> {
        let (host, username) = account_key(user)?;
        let mut tx = pool.begin().await.map_err(backend)?;
        sqlx::query(sql::INSERT_ACCOUNT)
            .bind(host)
            .bind(username)
            .bind(now_micros())
            .execute(&mut *tx)
            .await
            .map_err(|e| match &e {
                // Two registrations racing for one name: the primary key decides.
                sqlx::Error::Database(db) if db.is_unique_violation() => StorageError::AlreadyExists,
                _ => backend(e),
            })?;
        insert_keys(&mut tx, host, username, creds).await?;
        tx.commit().await.map_err(backend)
    }

    async fn credentials(
        pool: &Pool<Db>,
        user: &BareJid,
    ) -> Result<Option<Credentials>, StorageError> {
        let (host, username) = account_key(user)?;
        let rows: Vec<KeysRow> = sqlx::query_as(sql::SELECT_SCRAM_KEYS)
            .bind(host)
            .bind(username)
            .fetch_all(pool)
            .await
            .map_err(backend)?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut keys = Vec::with_capacity(rows.len());
        for (name, salt, iterations, stored_key, server_key) in rows {
            let hash = ScramHash::from_name(&name).ok_or_else(|| {
                StorageError::Corrupt(format!("{}: unknown hash {name:?}", user.as_str()))
            })?;
            let iterations = u32::try_from(iterations)
                .map_err(|_| StorageError::Corrupt(format!("iteration count {iterations}")))?;
            keys.push(ScramKeys {
                hash,
                salt,
                iterations,
                stored_key,
                server_key,
            });
        }
        // Accounts imported from another server may hold only some hashes.
        Ok(Credentials::from_keys(keys))
    }

    async fn set_credentials(
        pool: &Pool<Db>,
        user: &BareJid,
        creds: &Credentials,
    ) -> Result<(), StorageError> {
        let (host, username) = account_key(user)?;
        let mut tx = pool.begin().await.map_err(backend)?;
        // The delete comes first to take the write lock before the existence check.
        sqlx::query(sql::DELETE_SCRAM_KEYS)
            .bind(host)
            .bind(username)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if count(&mut tx, sql::SELECT_ACCOUNT_EXISTS, host, username, None).await? == 0 {
            tx.rollback().await.map_err(backend)?;
            return Err(StorageError::NotFound);
        }
        insert_keys(&mut tx, host, username, creds).await?;
        tx.commit().await.map_err(backend)
    }

    async fn account_exists(
        pool: &Pool<Db>,
        user: &BareJid,
    ) -> Result<bool, StorageError> {
        let (host, username) = account_key(user)?;
        let (n,): (i64,) = sqlx::query_as(sql::SELECT_ACCOUNT_EXISTS)
            .bind(host)
            .bind(username)
            .fetch_one(pool)
            .await
            .map_err(backend)?;
        Ok(n > 0)
    }

    async fn remove_account(
        pool: &Pool<Db>,
        user: &BareJid,
    ) -> Result<bool, StorageError> {
        let (host, username) = account_key(user)?;
        let mut tx = pool.begin().await.map_err(backend)?;
        let removed = sqlx::query(sql::DELETE_ACCOUNT)
            .bind(host)
            .bind(username)
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected();
        // Everything else keyed by the user goes in the same transaction, even when the account
        // row was already gone, so no orphan survives a half-finished earlier removal.
        for statement in [
            sql::DELETE_SCRAM_KEYS,
            sql::DELETE_ROSTER_GROUPS,
            sql::DELETE_ROSTER_ITEMS,
            sql::DELETE_ROSTER_VERSION,
            sql::DELETE_LAST_ACTIVITY,
        ] {
            sqlx::query(statement)
                .bind(host)
                .bind(username)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(removed > 0)
    }

    async fn list_accounts(
        pool: &Pool<Db>,
        host: &str,
    ) -> Result<Vec<String>, StorageError> {
        let mut names: Vec<String> = sqlx::query_scalar(sql::SELECT_USERNAMES)
            .bind(host)
            .fetch_all(pool)
            .await
            .map_err(backend)?;
        // Sorted here, by bytes, because database collations differ between backends.
        names.sort_unstable();
        Ok(names)
    }

    async fn count_accounts(pool: &Pool<Db>, host: &str) -> Result<u64, StorageError> {
        let n: i64 = sqlx::query_scalar(sql::COUNT_ACCOUNTS)
            .bind(host)
            .fetch_one(pool)
            .await
            .map_err(backend)?;
        u64::try_from(n).map_err(|_| StorageError::Corrupt(format!("account count {n}")))
    }

    async fn insert_keys(
        tx: &mut Transaction<'_, Db>,
        host: &str,
        username: &str,
        creds: &Credentials,
    ) -> Result<(), StorageError> {
        // The `hash` column holds the hash part of the mechanism name ("SHA-256", RFC 5802 §4).
        for keys in creds.iter() {
            sqlx::query(sql::INSERT_SCRAM_KEYS)
                .bind(host)
                .bind(username)
                .bind(keys.hash.name())
                .bind(keys.salt.as_slice())
                .bind(i64::from(keys.iterations))
                .bind(keys.stored_key.as_slice())
                .bind(keys.server_key.as_slice())
                .execute(&mut **tx)
                .await
                .map_err(backend)?;
        }
        Ok(())
    }

    // --- rosters ---

    async fn roster(
        pool: &Pool<Db>,
        user: &BareJid,
    ) -> Result<(Vec<RosterItem>, String), StorageError> {
        let (host, username) = account_key(user)?;
        // One read transaction: in WAL mode it reads one snapshot, so the version matches the
        // items even while a writer commits between the statements.
        let mut tx = pool.begin().await.map_err(backend)?;
        let version = read_version(&mut tx, host, username).await?;
        let rows: Vec<ItemRow> = sqlx::query_as(sql::SELECT_ROSTER_ITEMS)
            .bind(host)
            .bind(username)
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        let group_rows: Vec<(String, String, i64)> = sqlx::query_as(sql::SELECT_ROSTER_GROUPS)
            .bind(host)
            .bind(username)
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;

        let mut groups: HashMap<String, Vec<(i64, String)>> = HashMap::new();
        for (contact, name, position) in group_rows {
            groups.entry(contact).or_default().push((position, name));
        }
        let mut items = rows
            .into_iter()
            .map(|row| {
                let contact_groups = groups.remove(&row.0).unwrap_or_default();
                decode_item(row, contact_groups)
            })
            .collect::<Result<Vec<_>, _>>()?;
        items.sort_unstable_by(|a, b| a.jid.as_str().cmp(b.jid.as_str()));
        Ok((items, version.to_string()))
    }

    async fn roster_version(
        pool: &Pool<Db>,
        user: &BareJid,
    ) -> Result<String, StorageError> {
        let (host, username) = account_key(user)?;
        let version: Option<i64> = sqlx::query_scalar(sql::SELECT_ROSTER_VERSION)
            .bind(host)
            .bind(username)
            .fetch_optional(pool)
            .await
            .map_err(backend)?;
        Ok(version.unwrap_or(0).to_string())
    }

    async fn roster_item(
        pool: &Pool<Db>,
        user: &BareJid,
        contact: &BareJid,
    ) -> Result<Option<RosterItem>, StorageError> {
        let (host, username) = account_key(user)?;
        let mut tx = pool.begin().await.map_err(backend)?;
        let row: Option<ItemRow> = sqlx::query_as(sql::SELECT_ROSTER_ITEM)
            .bind(host)
            .bind(username)
            .bind(contact.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let group_rows: Vec<(String, i64)> = sqlx::query_as(sql::SELECT_ROSTER_ITEM_GROUPS)
            .bind(host)
            .bind(username)
            .bind(contact.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        let groups = group_rows
            .into_iter()
            .map(|(name, pos)| (pos, name))
            .collect();
        decode_item(row, groups).map(Some)
    }

    async fn put_roster_item(
        pool: &Pool<Db>,
        user: &BareJid,
        item: &RosterItem,
        max_items: u32,
    ) -> Result<String, StorageError> {
        let (host, username) = account_key(user)?;
        if item.subscription == Subscription::Remove {
            return Err(StorageError::InvalidValue(
                "subscription 'remove' is not a stored state",
            ));
        }
        let contact = item.jid.as_str();
        let mut tx = pool.begin().await.map_err(backend)?;
        // Bumping first takes the write lock (SQLite) or the user's version row lock
        // (PostgreSQL), so the quota check below cannot race another insert for this user.
        let version = bump_version(&mut tx, host, username).await?;
        let exists = count(
            &mut tx,
            sql::SELECT_ROSTER_ITEM_EXISTS,
            host,
            username,
            Some(contact),
        )
        .await?
            > 0;
        if !exists {
            let items = count(&mut tx, sql::COUNT_ROSTER_ITEMS, host, username, None).await?;
            if items >= i64::from(max_items) {
                tx.rollback().await.map_err(backend)?;
                return Err(StorageError::QuotaExceeded);
            }
        }
        sqlx::query(sql::UPSERT_ROSTER_ITEM)
            .bind(host)
            .bind(username)
            .bind(contact)
            .bind(item.name.as_deref())
            .bind(item.subscription.as_str())
            .bind(item.ask_out)
            .bind(item.pending_in.as_deref())
            .bind(item.approved)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query(sql::DELETE_ROSTER_ITEM_GROUPS)
            .bind(host)
            .bind(username)
            .bind(contact)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let mut seen = Vec::with_capacity(item.groups.len());
        for group in &item.groups {
            // A group named twice is one group (RFC 6121 §2.1.2.2 makes groups a set); keep the
            // first position so the order the client gave survives.
            if seen.contains(&group) {
                continue;
            }
            let position = i64::try_from(seen.len()).unwrap_or(i64::MAX);
            seen.push(group);
            sqlx::query(sql::INSERT_ROSTER_GROUP)
                .bind(host)
                .bind(username)
                .bind(contact)
                .bind(group.as_str())
                .bind(position)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(version.to_string())
    }

    async fn remove_roster_item(
        pool: &Pool<Db>,
        user: &BareJid,
        contact: &BareJid,
    ) -> Result<Option<String>, StorageError> {
        let (host, username) = account_key(user)?;
        let mut tx = pool.begin().await.map_err(backend)?;
        let removed = sqlx::query(sql::DELETE_ROSTER_ITEM)
            .bind(host)
            .bind(username)
            .bind(contact.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected();
        if removed == 0 {
            // Nothing changed, so the version must not move either.
            tx.rollback().await.map_err(backend)?;
            return Ok(None);
        }
        sqlx::query(sql::DELETE_ROSTER_ITEM_GROUPS)
            .bind(host)
            .bind(username)
            .bind(contact.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let version = bump_version(&mut tx, host, username).await?;
        tx.commit().await.map_err(backend)?;
        Ok(Some(version.to_string()))
    }

    async fn bump_version(
        tx: &mut Transaction<'_, Db>,
        host: &str,
        username: &str,
    ) -> Result<i64, StorageError> {
        sqlx::query_scalar(sql::BUMP_ROSTER_VERSION)
            .bind(host)
            .bind(username)
            .bind(now_micros())
            .fetch_one(&mut **tx)
            .await
            .map_err(backend)
    }

    async fn read_version(
        tx: &mut Transaction<'_, Db>,
        host: &str,
        username: &str,
    ) -> Result<i64, StorageError> {
        let version: Option<i64> = sqlx::query_scalar(sql::SELECT_ROSTER_VERSION)
            .bind(host)
            .bind(username)
            .fetch_optional(&mut **tx)
            .await
            .map_err(backend)?;
        // No row: the user never had a roster change (or the account was removed); "0" then
        // always means the empty roster.
        Ok(version.unwrap_or(0))
    }

    // --- last activity ---

    async fn set_last(
        pool: &Pool<Db>,
        user: &BareJid,
        seconds: i64,
        status: &str,
    ) -> Result<(), StorageError> {
        let (host, username) = account_key(user)?;
        sqlx::query(sql::UPSERT_LAST_ACTIVITY)
            .bind(host)
            .bind(username)
            .bind(seconds)
            .bind(status)
            .execute(pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn last(
        pool: &Pool<Db>,
        user: &BareJid,
    ) -> Result<Option<(i64, String)>, StorageError> {
        let (host, username) = account_key(user)?;
        sqlx::query_as(sql::SELECT_LAST_ACTIVITY)
            .bind(host)
            .bind(username)
            .fetch_optional(pool)
            .await
            .map_err(backend)
    }

    /// Runs a `SELECT COUNT(*)` keyed by host, username and optionally a contact.
    async fn count(
        tx: &mut Transaction<'_, Db>,
        statement: &'static str,
        host: &str,
        username: &str,
        contact: Option<&str>,
    ) -> Result<i64, StorageError> {
        let mut query = sqlx::query_scalar(statement).bind(host).bind(username);
        if let Some(contact) = contact {
            query = query.bind(contact);
        }
        query.fetch_one(&mut **tx).await.map_err(backend)
    }

    impl AccountStore for SqlStore<Db> {
        fn create<'a>(
            &'a self,
            user: &'a BareJid,
            creds: &'a Credentials,
        ) -> BoxFuture<'a, Result<(), StorageError>> {
            self.timed("account.create", create_account(&self.pool, user, creds))
        }

        fn credentials<'a>(
            &'a self,
            user: &'a BareJid,
        ) -> BoxFuture<'a, Result<Option<Credentials>, StorageError>> {
            self.timed("account.credentials", credentials(&self.pool, user))
        }

        fn set_credentials<'a>(
            &'a self,
            user: &'a BareJid,
            creds: &'a Credentials,
        ) -> BoxFuture<'a, Result<(), StorageError>> {
            self.timed("account.set_credentials", set_credentials(&self.pool, user, creds))
        }

        fn exists<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, Result<bool, StorageError>> {
            self.timed("account.exists", account_exists(&self.pool, user))
        }

        fn remove<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, Result<bool, StorageError>> {
            self.timed("account.remove", remove_account(&self.pool, user))
        }

        fn list<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<String>, StorageError>> {
            self.timed("account.list", list_accounts(&self.pool, host))
        }

        fn count<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<u64, StorageError>> {
            self.timed("account.count", count_accounts(&self.pool, host))
        }
    }

    impl RosterStore for SqlStore<Db> {
        fn roster<'a>(
            &'a self,
            user: &'a BareJid,
        ) -> BoxFuture<'a, Result<(Vec<RosterItem>, String), StorageError>> {
            self.timed("roster.roster", roster(&self.pool, user))
        }

        fn version<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, Result<String, StorageError>> {
            self.timed("roster.version", roster_version(&self.pool, user))
        }

        fn item<'a>(
            &'a self,
            user: &'a BareJid,
            contact: &'a BareJid,
        ) -> BoxFuture<'a, Result<Option<RosterItem>, StorageError>> {
            self.timed("roster.item", roster_item(&self.pool, user, contact))
        }

        fn put_item<'a>(
            &'a self,
            user: &'a BareJid,
            item: &'a RosterItem,
            max_items: u32,
        ) -> BoxFuture<'a, Result<String, StorageError>> {
            self.timed("roster.put_item", put_roster_item(&self.pool, user, item, max_items))
        }

        fn remove_item<'a>(
            &'a self,
            user: &'a BareJid,
            contact: &'a BareJid,
        ) -> BoxFuture<'a, Result<Option<String>, StorageError>> {
            self.timed("roster.remove_item", remove_roster_item(&self.pool, user, contact))
        }
    }

    impl LastActivityStore for SqlStore<Db> {
        fn set_last<'a>(
            &'a self,
            user: &'a BareJid,
            seconds: i64,
            status: &'a str,
        ) -> BoxFuture<'a, Result<(), StorageError>> {
            self.timed("last_activity.set_last", set_last(&self.pool, user, seconds, status))
        }

        fn last<'a>(
            &'a self,
            user: &'a BareJid,
        ) -> BoxFuture<'a, Result<Option<(i64, String)>, StorageError>> {
            self.timed("last_activity.last", last(&self.pool, user))
        }
    }
}

/// Builds an item from its row and its `(position, name)` groups.
fn decode_item(row: ItemRow, mut groups: Vec<(i64, String)>) -> Result<RosterItem, StorageError> {
    let (contact, name, subscription, ask_out, pending_in, approved) = row;
    let jid = BareJid::parse(&contact)
        .map_err(|e| StorageError::Corrupt(format!("roster contact {contact:?}: {e}")))?;
    let subscription = match Subscription::parse(&subscription) {
        Some(Subscription::Remove) | None => {
            return Err(StorageError::Corrupt(format!(
                "subscription {subscription:?}"
            )));
        }
        Some(s) => s,
    };
    groups.sort_unstable_by_key(|(position, _)| *position);
    Ok(RosterItem {
        jid,
        name,
        subscription,
        ask_out,
        pending_in,
        approved,
        groups: groups.into_iter().map(|(_, name)| name).collect(),
    })
}

/// Microseconds since the Unix epoch, the unit of our own timestamps (DESIGN §6).
fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(contact: &str, subscription: &str) -> ItemRow {
        (
            contact.into(),
            None,
            subscription.into(),
            false,
            None,
            false,
        )
    }

    #[test]
    fn decode_item_orders_groups_by_position() {
        let groups = vec![(2, "c".into()), (0, "a".into()), (1, "b".into())];
        let item = decode_item(row("romeo@montague.example", "both"), groups);
        let item = item.expect("decodes");
        assert_eq!(item.groups, ["a", "b", "c"]);
        assert_eq!(item.subscription, Subscription::Both);
        assert_eq!(item.jid.as_str(), "romeo@montague.example");
    }

    #[test]
    fn decode_item_reports_corrupt_rows() {
        for bad in ["remove", "Both", ""] {
            let decoded = decode_item(row("romeo@montague.example", bad), vec![]);
            assert!(matches!(decoded, Err(StorageError::Corrupt(_))), "{bad}");
        }
        let decoded = decode_item(row("not a jid@@", "none"), vec![]);
        assert!(matches!(decoded, Err(StorageError::Corrupt(_))));
    }

    #[test]
    fn now_is_after_2020_in_micros() {
        assert!(now_micros() > 1_577_836_800_000_000);
    }
}
