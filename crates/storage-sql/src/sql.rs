//! Every statement the SQL backends run, written once in SQL both SQLite and PostgreSQL
//! accept: `$n` placeholders, `INSERT .. ON CONFLICT .. DO UPDATE` with `excluded`, and
//! `RETURNING` (SQLite ≥ 3.35, bundled by sqlx). No `INSERT OR REPLACE`, no `ORDER BY`
//! whose result depends on a collation (sorting is done in Rust, by bytes, so both
//! backends list in the same order).
//!
//! Public so that operators' tooling runs exactly the text both backends run.

// --- accounts and SCRAM keys (RFC 5802 §3) ---

/// `$1` host, `$2` username, `$3` created_at (µs).
pub const INSERT_ACCOUNT: &str =
    "INSERT INTO accounts (host, username, created_at) VALUES ($1, $2, $3)";
/// `$1` host, `$2` username.
pub const SELECT_ACCOUNT_EXISTS: &str =
    "SELECT COUNT(*) FROM accounts WHERE host = $1 AND username = $2";
/// `$1` host, `$2` username.
pub const DELETE_ACCOUNT: &str = "DELETE FROM accounts WHERE host = $1 AND username = $2";
/// `$1` host.
pub const SELECT_USERNAMES: &str = "SELECT username FROM accounts WHERE host = $1";
/// `$1` host.
pub const COUNT_ACCOUNTS: &str = "SELECT COUNT(*) FROM accounts WHERE host = $1";
/// `$1` host, `$2` username, `$3` hash, `$4` salt, `$5` iterations, `$6` stored_key,
/// `$7` server_key.
pub const INSERT_SCRAM_KEYS: &str = "INSERT INTO scram_keys \
     (host, username, hash, salt, iterations, stored_key, server_key) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";
/// `$1` host, `$2` username.
pub const SELECT_SCRAM_KEYS: &str = "SELECT hash, salt, iterations, stored_key, server_key \
     FROM scram_keys WHERE host = $1 AND username = $2";
/// `$1` host, `$2` username.
pub const DELETE_SCRAM_KEYS: &str = "DELETE FROM scram_keys WHERE host = $1 AND username = $2";

// --- rosters (RFC 6121 §2) ---

/// Bumps the version, seeding a new counter with `$3` (µs now). `$1` host, `$2` username.
///
/// Seeding with the clock rather than 1 keeps a re-created account from reusing a version
/// a client may still cache from the deleted one (RFC 6121 §2.6: a version names one state).
pub const BUMP_ROSTER_VERSION: &str = "INSERT INTO roster_versions (host, username, version) \
     VALUES ($1, $2, $3) \
     ON CONFLICT (host, username) DO UPDATE SET version = roster_versions.version + 1 \
     RETURNING version";
/// `$1` host, `$2` username.
pub const SELECT_ROSTER_VERSION: &str =
    "SELECT version FROM roster_versions WHERE host = $1 AND username = $2";
/// `$1` host, `$2` username.
pub const COUNT_ROSTER_ITEMS: &str =
    "SELECT COUNT(*) FROM roster_items WHERE host = $1 AND username = $2";
/// `$1` host, `$2` username, `$3` contact.
pub const SELECT_ROSTER_ITEM_EXISTS: &str =
    "SELECT COUNT(*) FROM roster_items WHERE host = $1 AND username = $2 AND contact = $3";
/// `$1` host, `$2` username.
pub const SELECT_ROSTER_ITEMS: &str = "SELECT \
     contact, name, subscription, ask_out, pending_in, approved \
     FROM roster_items WHERE host = $1 AND username = $2";
/// `$1` host, `$2` username, `$3` contact.
pub const SELECT_ROSTER_ITEM: &str = "SELECT \
     contact, name, subscription, ask_out, pending_in, approved \
     FROM roster_items WHERE host = $1 AND username = $2 AND contact = $3";
/// `$1` host, `$2` username, `$3` contact, `$4` name, `$5` subscription, `$6` ask_out,
/// `$7` pending_in, `$8` approved.
pub const UPSERT_ROSTER_ITEM: &str = "INSERT INTO roster_items \
     (host, username, contact, name, subscription, ask_out, pending_in, approved) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
     ON CONFLICT (host, username, contact) DO UPDATE SET \
     name = excluded.name, subscription = excluded.subscription, ask_out = excluded.ask_out, \
     pending_in = excluded.pending_in, approved = excluded.approved";
/// `$1` host, `$2` username, `$3` contact.
pub const DELETE_ROSTER_ITEM: &str =
    "DELETE FROM roster_items WHERE host = $1 AND username = $2 AND contact = $3";
/// `$1` host, `$2` username.
pub const SELECT_ROSTER_GROUPS: &str = "SELECT contact, group_name, position \
     FROM roster_groups WHERE host = $1 AND username = $2";
/// `$1` host, `$2` username, `$3` contact.
pub const SELECT_ROSTER_ITEM_GROUPS: &str = "SELECT group_name, position \
     FROM roster_groups WHERE host = $1 AND username = $2 AND contact = $3";
/// `$1` host, `$2` username, `$3` contact, `$4` group_name, `$5` position.
pub const INSERT_ROSTER_GROUP: &str = "INSERT INTO roster_groups \
     (host, username, contact, group_name, position) VALUES ($1, $2, $3, $4, $5)";
/// `$1` host, `$2` username, `$3` contact.
pub const DELETE_ROSTER_ITEM_GROUPS: &str =
    "DELETE FROM roster_groups WHERE host = $1 AND username = $2 AND contact = $3";

// --- whole-user deletion (account removal) ---

/// `$1` host, `$2` username.
pub const DELETE_ROSTER_ITEMS: &str = "DELETE FROM roster_items WHERE host = $1 AND username = $2";
/// `$1` host, `$2` username.
pub const DELETE_ROSTER_GROUPS: &str =
    "DELETE FROM roster_groups WHERE host = $1 AND username = $2";
/// `$1` host, `$2` username.
pub const DELETE_ROSTER_VERSION: &str =
    "DELETE FROM roster_versions WHERE host = $1 AND username = $2";
/// `$1` host, `$2` username.
pub const DELETE_LAST_ACTIVITY: &str =
    "DELETE FROM last_activity WHERE host = $1 AND username = $2";

// --- last activity (XEP-0012) ---

/// `$1` host, `$2` username, `$3` seconds, `$4` status.
pub const UPSERT_LAST_ACTIVITY: &str = "INSERT INTO last_activity \
     (host, username, seconds, status) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (host, username) DO UPDATE SET \
     seconds = excluded.seconds, status = excluded.status";
/// `$1` host, `$2` username.
pub const SELECT_LAST_ACTIVITY: &str =
    "SELECT seconds, status FROM last_activity WHERE host = $1 AND username = $2";

// --- migrations bookkeeping (sqlx's table) ---

/// The applied migration versions, ascending.
pub const SELECT_APPLIED_MIGRATIONS: &str =
    "SELECT version FROM _sqlx_migrations WHERE success = TRUE ORDER BY version";

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[&str] = &[
        INSERT_ACCOUNT,
        SELECT_ACCOUNT_EXISTS,
        DELETE_ACCOUNT,
        SELECT_USERNAMES,
        COUNT_ACCOUNTS,
        INSERT_SCRAM_KEYS,
        SELECT_SCRAM_KEYS,
        DELETE_SCRAM_KEYS,
        BUMP_ROSTER_VERSION,
        SELECT_ROSTER_VERSION,
        COUNT_ROSTER_ITEMS,
        SELECT_ROSTER_ITEM_EXISTS,
        SELECT_ROSTER_ITEMS,
        SELECT_ROSTER_ITEM,
        UPSERT_ROSTER_ITEM,
        DELETE_ROSTER_ITEM,
        SELECT_ROSTER_GROUPS,
        SELECT_ROSTER_ITEM_GROUPS,
        INSERT_ROSTER_GROUP,
        DELETE_ROSTER_ITEM_GROUPS,
        DELETE_ROSTER_ITEMS,
        DELETE_ROSTER_GROUPS,
        DELETE_ROSTER_VERSION,
        DELETE_LAST_ACTIVITY,
        UPSERT_LAST_ACTIVITY,
        SELECT_LAST_ACTIVITY,
        SELECT_APPLIED_MIGRATIONS,
    ];

    #[test]
    fn statements_avoid_sqlite_only_syntax() {
        for statement in ALL {
            let upper = statement.to_ascii_uppercase();
            for sqlite_only in [
                "INSERT OR ",
                "REPLACE INTO",
                "?",
                "AUTOINCREMENT",
                "IFNULL(",
            ] {
                assert!(!upper.contains(sqlite_only), "{sqlite_only} in {statement}");
            }
        }
    }

    #[test]
    fn placeholders_are_numbered_from_one_without_gaps() {
        for statement in ALL {
            let used: Vec<u32> = statement
                .split('$')
                .skip(1)
                .filter_map(|rest| {
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    digits.parse().ok()
                })
                .collect();
            let max = used.iter().copied().max().unwrap_or(0);
            for n in 1..=max {
                assert!(used.contains(&n), "${n} unused in {statement}");
            }
        }
    }
}
