//! The schema migrations, embedded in the binary (DESIGN §6).
//!
//! `migrations/sqlite/` and `migrations/postgres/` share one numbering: file `NNNN_name.sql`
//! is migration `NNNN` on both, so a cluster moving from SQLite to PostgreSQL lands on the
//! same schema version. They are embedded with `include_str!` and listed here rather than
//! through `sqlx::migrate!`, which needs sqlx's proc-macro feature and with it a second
//! build of sqlx and of the bundled SQLite; the checksums are the same either way. A test
//! checks that this list matches the directory, so a new file cannot be forgotten.
//!
//! The PostgreSQL list ([`MIGRATIONS_POSTGRES`]) must name the same versions and
//! descriptions; tests check both lists against their directories and each other.
//!
//! Migrations are expand/contract and run with `ignore_missing`, so a node one release
//! behind still starts on a database a newer node has already migrated (rolling upgrades).

use std::borrow::Cow;

use sqlx::SqlSafeStr as _;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// `(version, description, SQL)` of every SQLite migration, ascending.
pub const MIGRATIONS_SQLITE: &[(i64, &str, &str)] = &[
    // One migration per line, numbered as assigned; the PostgreSQL folder mirrors them.
    (
        1,
        "accounts rosters last",
        include_str!("../migrations/sqlite/0001_accounts_rosters_last.sql"),
    ),
    (
        2,
        "offline",
        include_str!("../migrations/sqlite/0002_offline.sql"),
    ),
    (3, "mam", include_str!("../migrations/sqlite/0003_mam.sql")),
    (
        4,
        "vcard private",
        include_str!("../migrations/sqlite/0004_vcard_private.sql"),
    ),
    (
        5,
        "privacy",
        include_str!("../migrations/sqlite/0005_privacy.sql"),
    ),
    (6, "pep", include_str!("../migrations/sqlite/0006_pep.sql")),
    (7, "muc", include_str!("../migrations/sqlite/0007_muc.sql")),
    (
        8,
        "cluster nodes",
        include_str!("../migrations/sqlite/0008_cluster_nodes.sql"),
    ),
];

/// `(version, description, SQL)` of every PostgreSQL migration, ascending: the same versions
/// and descriptions as [`MIGRATIONS_SQLITE`] (a test checks), files in `migrations/postgres/`.
pub const MIGRATIONS_POSTGRES: &[(i64, &str, &str)] = &[
    // One migration per line, as in MIGRATIONS_SQLITE.
    (
        1,
        "accounts rosters last",
        include_str!("../migrations/postgres/0001_accounts_rosters_last.sql"),
    ),
    (
        2,
        "offline",
        include_str!("../migrations/postgres/0002_offline.sql"),
    ),
    (
        3,
        "mam",
        include_str!("../migrations/postgres/0003_mam.sql"),
    ),
    (
        4,
        "vcard private",
        include_str!("../migrations/postgres/0004_vcard_private.sql"),
    ),
    (
        5,
        "privacy",
        include_str!("../migrations/postgres/0005_privacy.sql"),
    ),
    (
        6,
        "pep",
        include_str!("../migrations/postgres/0006_pep.sql"),
    ),
    (
        7,
        "muc",
        include_str!("../migrations/postgres/0007_muc.sql"),
    ),
    (
        8,
        "cluster nodes",
        include_str!("../migrations/postgres/0008_cluster_nodes.sql"),
    ),
];

/// A migrator over [`MIGRATIONS_SQLITE`].
pub(crate) fn sqlite_migrator() -> Migrator {
    migrator(MIGRATIONS_SQLITE)
}

/// A migrator over [`MIGRATIONS_POSTGRES`].
pub(crate) fn postgres_migrator() -> Migrator {
    migrator(MIGRATIONS_POSTGRES)
}

fn migrator(list: &'static [(i64, &'static str, &'static str)]) -> Migrator {
    let migrations = list
        .iter()
        .map(|&(version, description, sql)| {
            Migration::new(
                version,
                Cow::Borrowed(description),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        })
        .collect();
    let mut migrator = Migrator::with_migrations(migrations);
    migrator.set_ignore_missing(true);
    migrator
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    /// File names in `migrations/<dir>`, sorted.
    fn files(dir: &str) -> BTreeSet<String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(dir);
        std::fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| name.ends_with(".sql"))
            .collect()
    }

    /// `CREATE TABLE` names in one migration file, in order.
    fn tables(sql: &str) -> Vec<&str> {
        sql.split("CREATE TABLE ")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next())
            .collect()
    }

    /// Column names per table: the first word of each line inside a `CREATE TABLE`.
    fn columns(sql: &str) -> Vec<String> {
        sql.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("--") && !l.starts_with("CREATE"))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn embedded_list_matches_the_sqlite_directory() {
        let embedded: BTreeSet<String> = MIGRATIONS_SQLITE
            .iter()
            .map(|(v, d, _)| format!("{v:04}_{}.sql", d.replace(' ', "_")))
            .collect();
        assert_eq!(embedded, files("sqlite"));
    }

    #[test]
    fn embedded_list_matches_the_postgres_directory() {
        let embedded: BTreeSet<String> = MIGRATIONS_POSTGRES
            .iter()
            .map(|(v, d, _)| format!("{v:04}_{}.sql", d.replace(' ', "_")))
            .collect();
        assert_eq!(embedded, files("postgres"));
    }

    #[test]
    fn both_lists_have_the_same_versions_and_descriptions() {
        let names = |list: &[(i64, &'static str, &'static str)]| -> Vec<(i64, &'static str)> {
            list.iter().map(|&(v, d, _)| (v, d)).collect()
        };
        assert_eq!(names(MIGRATIONS_SQLITE), names(MIGRATIONS_POSTGRES));
    }

    #[test]
    fn postgres_migrations_use_no_sqlite_only_types() {
        for (version, _, sql) in MIGRATIONS_POSTGRES {
            // Statements only: comments may name the SQLite types they differ from.
            let code: String = sql
                .lines()
                .map(|l| l.split("--").next().unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n");
            let upper = code.to_ascii_uppercase();
            // INTEGER is 32-bit on PostgreSQL, and rows are decoded as i64 (crate docs).
            for word in [" BLOB", " INTEGER", "AUTOINCREMENT", "WITHOUT ROWID"] {
                assert!(!upper.contains(word), "migration {version} uses{word}");
            }
        }
    }

    #[test]
    fn versions_ascend_without_gaps() {
        for (i, (version, _, _)) in MIGRATIONS_SQLITE.iter().enumerate() {
            assert_eq!(*version, i64::try_from(i).unwrap_or(i64::MAX) + 1);
        }
    }

    #[test]
    fn postgres_has_the_same_numbering_tables_and_columns() {
        assert_eq!(files("sqlite"), files("postgres"));
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        for name in files("sqlite") {
            let lite = std::fs::read_to_string(root.join("sqlite").join(&name)).unwrap_or_default();
            let pg = std::fs::read_to_string(root.join("postgres").join(&name)).unwrap_or_default();
            assert!(!tables(&lite).is_empty(), "{name} creates no table");
            assert_eq!(tables(&lite), tables(&pg), "{name}: tables differ");
            assert_eq!(columns(&lite), columns(&pg), "{name}: columns differ");
        }
    }

    #[test]
    fn migrator_holds_every_migration() {
        let migrator = sqlite_migrator();
        let versions: Vec<i64> = migrator.iter().map(|m| m.version).collect();
        let expected: Vec<i64> = MIGRATIONS_SQLITE.iter().map(|m| m.0).collect();
        assert_eq!(versions, expected);
    }
}
