//! [`MamStore`] on SQL: the `mam_messages`, `mam_prefs` and `mam_prefs_jids` tables of
//! migration 0003 (XEP-0313 archives, XEP-0059 paging).
//!
//! Fixed statements are constants written once in SQL both SQLite and PostgreSQL accept, like
//! [`crate::sql`]. Archive queries are assembled from a fixed set of clauses
//! ([`archive_query_sql`]) so that each filter a client leaves out is absent from the SQL
//! rather than disabled with `$n IS NULL OR ..`, which would keep the planner from using the
//! `(host, username, with_bare, id)` index. Every value is a bound parameter.

use starling_storage::{
    ArchivePage, ArchivePolicy, ArchivePrefs, ArchiveQuery, ArchiveWith, ArchivedMessage, BareJid,
    BoxFuture, Direction, MamStore, StorageError, account_key,
};
use starling_xmpp::jid::Jid;

use crate::{SqlStore, backend, per_backend};

/// `$1` host, `$2` username, `$3` id, `$4` with_bare, `$5` with_resource, `$6` outgoing,
/// `$7` stanza.
pub const INSERT_MESSAGE: &str = "INSERT INTO mam_messages \
     (host, username, id, with_bare, with_resource, outgoing, stanza) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";
/// `$1` host, `$2` username, `$3` oldest id kept.
pub const DELETE_EXPIRED: &str =
    "DELETE FROM mam_messages WHERE host = $1 AND username = $2 AND id < $3";
/// `$1` host, `$2` username, `$3` id.
pub const SELECT_ID_EXISTS: &str =
    "SELECT COUNT(*) FROM mam_messages WHERE host = $1 AND username = $2 AND id = $3";
/// `$1` host, `$2` username.
pub const SELECT_BOUNDS: &str =
    "SELECT MIN(id), MAX(id) FROM mam_messages WHERE host = $1 AND username = $2";
/// `$1` host, `$2` username.
pub const DELETE_MESSAGES: &str = "DELETE FROM mam_messages WHERE host = $1 AND username = $2";
/// `$1` host, `$2` username.
pub const SELECT_PREFS: &str =
    "SELECT default_policy FROM mam_prefs WHERE host = $1 AND username = $2";
/// `$1` host, `$2` username.
pub const SELECT_PREFS_JIDS: &str =
    "SELECT jid, always FROM mam_prefs_jids WHERE host = $1 AND username = $2";
/// `$1` host, `$2` username, `$3` default_policy.
pub const UPSERT_PREFS: &str = "INSERT INTO mam_prefs (host, username, default_policy) \
     VALUES ($1, $2, $3) \
     ON CONFLICT (host, username) DO UPDATE SET default_policy = excluded.default_policy";
/// `$1` host, `$2` username, `$3` jid, `$4` always.
pub const INSERT_PREFS_JID: &str =
    "INSERT INTO mam_prefs_jids (host, username, jid, always) VALUES ($1, $2, $3, $4)";
/// `$1` host, `$2` username.
pub const DELETE_PREFS: &str = "DELETE FROM mam_prefs WHERE host = $1 AND username = $2";
/// `$1` host, `$2` username.
pub const DELETE_PREFS_JIDS: &str = "DELETE FROM mam_prefs_jids WHERE host = $1 AND username = $2";

/// A row of `mam_messages`: id, with_bare, with_resource, outgoing, stanza.
type MessageRow = (i64, String, String, bool, String);

/// A bound value of an assembled statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SqlArg {
    /// A `TEXT` value.
    Text(String),
    /// A `BIGINT` value.
    Int(i64),
}

/// An assembled statement: SQL with `$n` placeholders and the values to bind, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqlStatement {
    /// The SQL text.
    pub sql: String,
    /// The values for `$1`, `$2`, ...
    pub args: Vec<SqlArg>,
}

impl SqlStatement {
    fn new(host: &str, username: &str) -> Self {
        Self {
            sql: String::from("host = $1 AND username = $2"),
            args: vec![
                SqlArg::Text(host.to_owned()),
                SqlArg::Text(username.to_owned()),
            ],
        }
    }

    /// Appends ` AND {column} {op} $n` with `value` bound to it.
    fn and(&mut self, clause: &str, value: SqlArg) {
        self.args.push(value);
        self.sql
            .push_str(&format!(" AND {clause} ${}", self.args.len()));
    }

    /// The filters of `query` (what matches and is counted), without the page.
    fn filters(host: &str, username: &str, query: &ArchiveQuery) -> Self {
        let mut s = Self::new(host, username);
        match &query.with {
            Some(ArchiveWith::Bare(jid)) => {
                s.and("with_bare =", SqlArg::Text(jid.as_str().to_owned()));
            }
            Some(ArchiveWith::Full(jid, resource)) => {
                s.and("with_bare =", SqlArg::Text(jid.as_str().to_owned()));
                s.and("with_resource =", SqlArg::Text(resource.clone()));
            }
            None => {}
        }
        let bounds = [
            ("id >=", query.start),
            ("id <=", query.end),
            ("id >", query.after_id),
            ("id <", query.before_id),
        ];
        for (clause, value) in bounds {
            if let Some(value) = value {
                s.and(clause, SqlArg::Int(value));
            }
        }
        if !query.ids.is_empty() {
            let first = s.args.len() + 1;
            s.args.extend(query.ids.iter().copied().map(SqlArg::Int));
            let placeholders: Vec<String> =
                (first..=s.args.len()).map(|n| format!("${n}")).collect();
            s.sql
                .push_str(&format!(" AND id IN ({})", placeholders.join(", ")));
        }
        s
    }

    fn push_arg(&mut self, value: SqlArg) -> usize {
        self.args.push(value);
        self.args.len()
    }
}

/// The statement returning one page of `query` (at most `max + 1` rows, the extra one only
/// telling whether the page is complete), for `(host, username)`.
///
/// Public so that tests and operators can `EXPLAIN` exactly what runs.
pub fn archive_query_sql(host: &str, username: &str, query: &ArchiveQuery) -> SqlStatement {
    let mut s = SqlStatement::filters(host, username, query);
    if let Some(after) = query.page_after {
        s.and("id >", SqlArg::Int(after));
    }
    if let Some(before) = query.page_before {
        s.and("id <", SqlArg::Int(before));
    }
    let order = if query.from_end { "DESC" } else { "ASC" };
    let limit = s.push_arg(SqlArg::Int(i64::from(query.max).saturating_add(1)));
    let offset = if query.from_end { 0 } else { query.offset };
    let offset = s.push_arg(SqlArg::Int(i64::try_from(offset).unwrap_or(i64::MAX)));
    s.sql = format!(
        "SELECT id, with_bare, with_resource, outgoing, stanza FROM mam_messages \
         WHERE {} ORDER BY id {order} LIMIT ${limit} OFFSET ${offset}",
        s.sql
    );
    s
}

/// The statement counting the matches of `query`'s filters (RSM `<count/>`).
pub fn archive_count_sql(host: &str, username: &str, query: &ArchiveQuery) -> SqlStatement {
    let mut s = SqlStatement::filters(host, username, query);
    s.sql = format!("SELECT COUNT(*) FROM mam_messages WHERE {}", s.sql);
    s
}

macro_rules! bind_all {
    ($q:expr, $args:expr) => {{
        let mut q = $q;
        for arg in $args {
            q = match arg {
                SqlArg::Text(t) => q.bind(t.as_str()),
                SqlArg::Int(i) => q.bind(*i),
            };
        }
        q
    }};
}

impl SqlStore<sqlx::Sqlite> {
    /// SQLite's `EXPLAIN QUERY PLAN` of the page statement for `query` on `user`'s archive,
    /// one line per plan step (the `detail` column). For tests and for operators looking
    /// into a slow archive.
    pub async fn explain_archive_query(
        &self,
        user: &BareJid,
        query: &ArchiveQuery,
    ) -> Result<Vec<String>, StorageError> {
        let (host, username) = account_key(user)?;
        let s = archive_query_sql(host, username, query);
        let sql = format!("EXPLAIN QUERY PLAN {}", s.sql);
        let rows: Vec<(i64, i64, i64, String)> =
            bind_all!(sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())), &s.args)
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        Ok(rows.into_iter().map(|(_, _, _, detail)| detail).collect())
    }
}

per_backend! {
    impl MamStore for SqlStore<Db> {
        fn archive_message<'a>(
            &'a self,
            user: &'a BareJid,
            message: &'a ArchivedMessage,
            expire_before: Option<i64>,
        ) -> BoxFuture<'a, Result<(), StorageError>> {
            self.timed("mam.archive_message", async move {
                let (host, username) = account_key(user)?;
                let mut tx = self.pool.begin().await.map_err(backend)?;
                sqlx::query(INSERT_MESSAGE)
                    .bind(host)
                    .bind(username)
                    .bind(message.id)
                    .bind(message.with.as_str())
                    .bind(message.with_resource.as_str())
                    .bind(message.direction == Direction::Outgoing)
                    .bind(message.stanza.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| match &e {
                        // Another node archived for this user in the same µs: the caller retries.
                        sqlx::Error::Database(db) if db.is_unique_violation() => {
                            StorageError::AlreadyExists
                        }
                        _ => backend(e),
                    })?;
                if let Some(cutoff) = expire_before {
                    // An index range on (host, username, id): nothing to do costs one seek.
                    sqlx::query(DELETE_EXPIRED)
                        .bind(host)
                        .bind(username)
                        .bind(cutoff)
                        .execute(&mut *tx)
                        .await
                        .map_err(backend)?;
                }
                tx.commit().await.map_err(backend)
            })
        }

        fn query_archive<'a>(
            &'a self,
            user: &'a BareJid,
            query: &'a ArchiveQuery,
        ) -> BoxFuture<'a, Result<ArchivePage, StorageError>> {
            self.timed("mam.query_archive", async move {
                let (host, username) = account_key(user)?;
                // One read transaction: the anchors, the page and the count see one snapshot.
                let mut tx = self.pool.begin().await.map_err(backend)?;
                let anchors = [
                    query.after_id,
                    query.before_id,
                    query.page_after,
                    query.page_before,
                ];
                for id in anchors.into_iter().flatten() {
                    let (n,): (i64,) = sqlx::query_as(SELECT_ID_EXISTS)
                        .bind(host)
                        .bind(username)
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(backend)?;
                    if n == 0 {
                        return Err(StorageError::NotFound);
                    }
                }
                let page = archive_query_sql(host, username, query);
                let rows: Vec<MessageRow> = bind_all!(
                    sqlx::query_as(sqlx::AssertSqlSafe(page.sql.as_str())),
                    &page.args
                )
                .fetch_all(&mut *tx)
                .await
                .map_err(backend)?;
                let max = usize::try_from(query.max).unwrap_or(usize::MAX);
                let complete = rows.len() <= max;
                // A complete page with no anchor and no offset holds every match: counting them
                // again would only cost a second index walk (the usual case for small archives).
                let whole = complete
                    && query.page_after.is_none()
                    && query.page_before.is_none()
                    && (query.from_end || query.offset == 0);
                let total = if whole {
                    i64::try_from(rows.len()).unwrap_or(i64::MAX)
                } else {
                    let count = archive_count_sql(host, username, query);
                    let (total,): (i64,) = bind_all!(
                        sqlx::query_as(sqlx::AssertSqlSafe(count.sql.as_str())),
                        &count.args
                    )
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(backend)?;
                    total
                };
                tx.rollback().await.map_err(backend)?;
                let mut messages = rows
                    .into_iter()
                    .take(max)
                    .map(decode_message)
                    .collect::<Result<Vec<_>, _>>()?;
                if query.from_end {
                    messages.reverse();
                }
                Ok(ArchivePage {
                    messages,
                    complete,
                    count: u64::try_from(total).unwrap_or(0),
                })
            })
        }

        fn archive_bounds<'a>(
            &'a self,
            user: &'a BareJid,
        ) -> BoxFuture<'a, Result<Option<(i64, i64)>, StorageError>> {
            self.timed("mam.archive_bounds", async move {
                let (host, username) = account_key(user)?;
                let (first, last): (Option<i64>, Option<i64>) = sqlx::query_as(SELECT_BOUNDS)
                    .bind(host)
                    .bind(username)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(backend)?;
                Ok(first.zip(last))
            })
        }

        fn archive_prefs<'a>(
            &'a self,
            user: &'a BareJid,
        ) -> BoxFuture<'a, Result<Option<ArchivePrefs>, StorageError>> {
            self.timed("mam.archive_prefs", async move {
                let (host, username) = account_key(user)?;
                let mut tx = self.pool.begin().await.map_err(backend)?;
                let policy: Option<String> = sqlx::query_scalar(SELECT_PREFS)
                    .bind(host)
                    .bind(username)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(backend)?;
                let Some(policy) = policy else {
                    return Ok(None);
                };
                let default = ArchivePolicy::parse(&policy)
                    .ok_or_else(|| StorageError::Corrupt(format!("archive policy {policy:?}")))?;
                let mut rows: Vec<(String, bool)> = sqlx::query_as(SELECT_PREFS_JIDS)
                    .bind(host)
                    .bind(username)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(backend)?;
                tx.rollback().await.map_err(backend)?;
                // Byte order, so that both backends list the same way (see crate::sql).
                rows.sort();
                let mut prefs = ArchivePrefs {
                    default,
                    always: Vec::new(),
                    never: Vec::new(),
                };
                for (jid, always) in rows {
                    let jid = Jid::parse(&jid)
                        .map_err(|_| StorageError::Corrupt(format!("archive prefs jid {jid:?}")))?;
                    if always {
                        prefs.always.push(jid);
                    } else {
                        prefs.never.push(jid);
                    }
                }
                Ok(Some(prefs))
            })
        }

        fn set_archive_prefs<'a>(
            &'a self,
            user: &'a BareJid,
            prefs: &'a ArchivePrefs,
        ) -> BoxFuture<'a, Result<(), StorageError>> {
            self.timed("mam.set_archive_prefs", async move {
                let (host, username) = account_key(user)?;
                let mut tx = self.pool.begin().await.map_err(backend)?;
                sqlx::query(UPSERT_PREFS)
                    .bind(host)
                    .bind(username)
                    .bind(prefs.default.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                sqlx::query(DELETE_PREFS_JIDS)
                    .bind(host)
                    .bind(username)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                // `never` wins over `always` for a JID listed in both (XEP-0313 §7 leaves it
                // open; refusing to archive is the privacy-preserving reading).
                let mut seen = std::collections::HashSet::new();
                let lists = prefs
                    .never
                    .iter()
                    .map(|j| (j, false))
                    .chain(prefs.always.iter().map(|j| (j, true)));
                for (jid, always) in lists {
                    if !seen.insert(jid.as_str()) {
                        continue;
                    }
                    sqlx::query(INSERT_PREFS_JID)
                        .bind(host)
                        .bind(username)
                        .bind(jid.as_str())
                        .bind(always)
                        .execute(&mut *tx)
                        .await
                        .map_err(backend)?;
                }
                tx.commit().await.map_err(backend)
            })
        }

        fn remove_archive<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, Result<(), StorageError>> {
            self.timed("mam.remove_archive", async move {
                let (host, username) = account_key(user)?;
                let mut tx = self.pool.begin().await.map_err(backend)?;
                for statement in [DELETE_MESSAGES, DELETE_PREFS_JIDS, DELETE_PREFS] {
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

fn decode_message(row: MessageRow) -> Result<ArchivedMessage, StorageError> {
    let (id, with_bare, with_resource, outgoing, stanza) = row;
    let with = BareJid::parse(&with_bare)
        .map_err(|_| StorageError::Corrupt(format!("archived jid {with_bare:?}")))?;
    Ok(ArchivedMessage {
        id,
        with,
        with_resource,
        direction: if outgoing {
            Direction::Outgoing
        } else {
            Direction::Incoming
        },
        stanza,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_only_add_the_clauses_asked_for() {
        let q = ArchiveQuery {
            max: 10,
            ..ArchiveQuery::default()
        };
        let s = archive_query_sql("h", "u", &q);
        assert_eq!(
            s.sql,
            "SELECT id, with_bare, with_resource, outgoing, stanza FROM mam_messages \
             WHERE host = $1 AND username = $2 ORDER BY id ASC LIMIT $3 OFFSET $4"
        );
        assert_eq!(s.args.get(2), Some(&SqlArg::Int(11)));
    }

    #[test]
    fn every_filter_binds_in_placeholder_order() {
        let q = ArchiveQuery {
            with: Some(ArchiveWith::Full(
                BareJid::parse("b@x").unwrap(),
                "r".to_owned(),
            )),
            start: Some(1),
            end: Some(2),
            after_id: Some(3),
            before_id: Some(4),
            ids: vec![5, 6],
            page_after: Some(7),
            page_before: Some(8),
            from_end: true,
            offset: 9,
            max: 2,
        };
        let s = archive_query_sql("h", "u", &q);
        assert!(
            s.sql.contains("with_bare = $3 AND with_resource = $4"),
            "{}",
            s.sql
        );
        assert!(s.sql.contains("id IN ($9, $10)"), "{}", s.sql);
        assert!(s.sql.contains("id > $11 AND id < $12"), "{}", s.sql);
        assert!(
            s.sql.ends_with("ORDER BY id DESC LIMIT $13 OFFSET $14"),
            "{}",
            s.sql
        );
        // The offset only applies forwards.
        assert_eq!(s.args.last(), Some(&SqlArg::Int(0)));
        assert_eq!(s.args.len(), 14);
        let c = archive_count_sql("h", "u", &q);
        assert!(c.sql.starts_with("SELECT COUNT(*)"));
        assert!(!c.sql.contains("$11"), "the page is not counted: {}", c.sql);
        assert_eq!(c.args.len(), 10);
    }
}
