//! `mam_million`: XEP-0313 archive queries on one archive of a million messages.
//!
//! Fills one user's archive through the storage API (`MamStore::archive_message`, in batches
//! of concurrent calls) in a fresh SQLite database, or in PostgreSQL with `--pg`, then times
//! the queries a client makes (XEP-0313 §4 filters with XEP-0059 paging):
//! the latest page, a `with` conversation (first page, a forward walk with RSM `<after/>`, the
//! last page), a `start`/`end` window, and RSM `<before/>` paging backwards. Each figure is the
//! median of several runs of `query_archive`, which includes the RSM `<count/>`. Then prints
//! the plan of each page statement (`EXPLAIN QUERY PLAN` on SQLite, `EXPLAIN` on PostgreSQL)
//! so index use can be checked: no step may scan the table.
//!
//! ```text
//! CARGO_TARGET_DIR=/tmp/h8-target cargo run --release -p starling-bench --bin mam_million
//! ... --bin mam_million -- --pg 127.0.0.1:5432/starling/postgres   # an existing, empty db
//! ```
//! Figures are recorded in `docs/PERFORMANCE.md`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use starling_storage::{ArchiveQuery, ArchiveWith, ArchivedMessage, Direction, MamStore};
use starling_storage_sql::mam::{SqlArg, archive_query_sql};
use starling_storage_sql::{PgTarget, SqlStore};
use starling_xmpp::jid::BareJid;

/// The archive's size.
const DEFAULT_ROWS: u64 = 1_000_000;
/// Concurrent `archive_message` calls per batch.
const BATCH: u64 = 64;
/// Every tenth message is with the contact the `with` queries look for.
const CONTACT_EVERY: u64 = 10;
/// First archive id (µs since the epoch, as the server's ids are); one message per ms.
const FIRST_ID: i64 = 1_700_000_000_000_000;
const STEP_US: i64 = 1_000;
/// Runs per timed query; the median is printed.
const RUNS: usize = 9;

const HOST: &str = "million.example";

fn main() -> Result<()> {
    let mut rows = DEFAULT_ROWS;
    let mut pg: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rows" => {
                rows = args
                    .next()
                    .context("--rows needs a number")?
                    .parse()
                    .context("--rows needs a number")?;
            }
            "--pg" => pg = Some(args.next().context("--pg needs host:port/database/user")?),
            "-h" | "--help" => {
                println!(
                    "usage: mam_million [--rows N] [--pg host:port/database/user]\n\
                     Without --pg, a fresh SQLite file in a temporary directory is used. \
                     With --pg the database must exist and be empty (it is migrated)."
                );
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(rows, pg))
}

async fn run(rows: u64, pg: Option<String>) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let people = Arc::new(People::new()?);
    match pg {
        None => {
            let store = SqlStore::open_sqlite(&dir.path().join("starling.db"))
                .await
                .context("open SQLite")?;
            store.migrate().await.context("migrate")?;
            let store = Arc::new(store);
            println!("backend: SQLite (WAL), {}", dir.path().display());
            fill(store.clone(), people.clone(), rows).await?;
            let plans = time_queries(store.as_ref(), &people, rows).await?;
            for (name, q) in plans {
                let plan = store.explain_archive_query(&people.alice, &q).await?;
                println!("plan {name}: {}", plan.join(" | "));
            }
        }
        Some(spec) => {
            let target = pg_target(&spec)?;
            let store = SqlStore::open_postgres(&target)
                .await
                .context("open PostgreSQL")?;
            store.migrate().await.context("migrate")?;
            let store = Arc::new(store);
            println!(
                "backend: PostgreSQL {}:{}/{}",
                target.server, target.port, target.database
            );
            fill(store.clone(), people.clone(), rows).await?;
            let plans = time_queries(store.as_ref(), &people, rows).await?;
            let url = format!(
                "postgres://{}@{}:{}/{}",
                target.username, target.server, target.port, target.database
            );
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await
                .context("second PostgreSQL connection")?;
            sqlx::query("ANALYZE mam_messages").execute(&pool).await?;
            for (name, q) in plans {
                let s = archive_query_sql(HOST, "alice", &q);
                let sql = format!("EXPLAIN {}", s.sql);
                let mut query = sqlx::query_as::<_, (String,)>(sqlx::AssertSqlSafe(sql));
                for arg in &s.args {
                    query = match arg {
                        SqlArg::Text(t) => query.bind(t.clone()),
                        SqlArg::Int(i) => query.bind(*i),
                    };
                }
                let lines: Vec<String> = query
                    .fetch_all(&pool)
                    .await?
                    .into_iter()
                    .map(|(l,)| l.trim().to_owned())
                    .collect();
                println!("plan {name}: {}", lines.join(" | "));
            }
        }
    }
    Ok(())
}

/// `host:port/database/user` → a PostgreSQL target (no password: trust or `.pgpass`).
fn pg_target(spec: &str) -> Result<PgTarget> {
    let mut parts = spec.splitn(3, '/');
    let (Some(addr), Some(database), Some(username)) = (parts.next(), parts.next(), parts.next())
    else {
        bail!("--pg wants host:port/database/user");
    };
    let (server, port) = match addr.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.parse().context("port")?),
        None => (addr.to_owned(), PgTarget::DEFAULT_PORT),
    };
    Ok(PgTarget {
        server,
        port,
        database: database.to_owned(),
        username: username.to_owned(),
        password: String::new(),
        pool_size: 8,
    })
}

/// The archive's owner, the contact of the `with` queries, and 1000 other correspondents.
struct People {
    alice: BareJid,
    contact: BareJid,
    others: Vec<BareJid>,
}

impl People {
    fn new() -> Result<Self> {
        let jid = |local: &str| BareJid::new(Some(local), HOST).context("JID");
        Ok(Self {
            alice: jid("alice")?,
            contact: jid("bob")?,
            others: (0..1000)
                .map(|n| jid(&format!("user{n}")))
                .collect::<Result<_>>()?,
        })
    }

    fn with(&self, n: u64) -> BareJid {
        if n.is_multiple_of(CONTACT_EVERY) {
            return self.contact.clone();
        }
        let i = usize::try_from(n).unwrap_or(0) % self.others.len().max(1);
        self.others
            .get(i)
            .cloned()
            .unwrap_or_else(|| self.contact.clone())
    }
}

fn id_of(n: u64) -> i64 {
    FIRST_ID + i64::try_from(n).unwrap_or(i64::MAX) * STEP_US
}

/// Archives `rows` messages for alice through the storage API, `BATCH` calls at a time.
async fn fill<S: MamStore + 'static>(store: Arc<S>, people: Arc<People>, rows: u64) -> Result<()> {
    let user = people.alice.clone();
    let started = Instant::now();
    let mut n = 0;
    while n < rows {
        let end = (n + BATCH).min(rows);
        let mut tasks = tokio::task::JoinSet::new();
        for i in n..end {
            let store = store.clone();
            let user = user.clone();
            let with = people.with(i);
            tasks.spawn(async move {
                let message = ArchivedMessage {
                    id: id_of(i),
                    stanza: format!(
                        "<message xmlns='jabber:client' type='chat' id='m{i}'><body>message \
                         number {i}, of about the usual length for a chat line</body></message>"
                    ),
                    with,
                    with_resource: "phone".to_owned(),
                    direction: if i.is_multiple_of(2) {
                        Direction::Incoming
                    } else {
                        Direction::Outgoing
                    },
                };
                store.archive_message(&user, &message, None).await
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.context("insert task")?.context("archive_message")?;
        }
        n = end;
        if n.is_multiple_of(100_000) {
            println!("  {n} archived ({:.1?})", started.elapsed());
        }
    }
    let took = started.elapsed();
    println!(
        "fill: {rows} messages in {took:.1?} ({:.0}/s, batches of {BATCH} concurrent calls)",
        rows as f64 / took.as_secs_f64()
    );
    Ok(())
}

/// Median time of `RUNS` runs of `query`; checks the page size.
async fn time<S: MamStore>(
    store: &S,
    user: &BareJid,
    name: &str,
    query: &ArchiveQuery,
    expect: usize,
) -> Result<starling_storage::ArchivePage> {
    let mut times = Vec::with_capacity(RUNS);
    let mut page = None;
    for _ in 0..RUNS {
        let t = Instant::now();
        let p = store.query_archive(user, query).await?;
        times.push(t.elapsed());
        page = Some(p);
    }
    times.sort();
    let median = times.get(RUNS / 2).copied().unwrap_or(Duration::ZERO);
    let page = page.context("no run")?;
    if page.messages.len() != expect {
        bail!(
            "{name}: {} messages, expected {expect}",
            page.messages.len()
        );
    }
    println!(
        "{name:<34} {median:>10.2?}  ({} of {} matches)",
        page.messages.len(),
        page.count
    );
    Ok(page)
}

/// Times the XEP-0313 queries and returns the page queries whose plans are printed.
async fn time_queries<S: MamStore>(
    store: &S,
    people: &People,
    rows: u64,
) -> Result<Vec<(&'static str, ArchiveQuery)>> {
    let user = &people.alice;
    let with = Some(ArchiveWith::Bare(people.contact.clone()));
    let mid = id_of(rows / 2);
    let latest = ArchiveQuery {
        from_end: true,
        max: 50,
        ..ArchiveQuery::default()
    };
    let first = ArchiveQuery {
        max: 50,
        ..ArchiveQuery::default()
    };
    let with_first = ArchiveQuery {
        with: with.clone(),
        max: 50,
        ..ArchiveQuery::default()
    };
    let with_last = ArchiveQuery {
        with: with.clone(),
        from_end: true,
        max: 50,
        ..ArchiveQuery::default()
    };
    let window = ArchiveQuery {
        start: Some(mid),
        end: Some(id_of(rows)),
        max: 50,
        ..ArchiveQuery::default()
    };
    let with_window = ArchiveQuery {
        with: with.clone(),
        start: Some(mid),
        end: Some(id_of(rows)),
        max: 50,
        ..ArchiveQuery::default()
    };
    println!("query (median of {RUNS}, RSM <count/> included)      time");
    time(store, user, "latest page (before='')", &latest, 50).await?;
    time(store, user, "first page", &first, 50).await?;
    let page = time(store, user, "with: first page", &with_first, 50).await?;
    time(store, user, "with: last page", &with_last, 50).await?;
    time(store, user, "start/end: the second half", &window, 50).await?;
    time(store, user, "with + start/end", &with_window, 50).await?;
    // RSM forward: 20 pages of the conversation with <after/>.
    let mut after = page.messages.last().map(|m| m.id);
    let walk = Instant::now();
    for _ in 0..20 {
        let q = ArchiveQuery {
            with: with.clone(),
            page_after: after,
            max: 50,
            ..ArchiveQuery::default()
        };
        let p = store.query_archive(user, &q).await?;
        after = p.messages.last().map(|m| m.id);
    }
    println!(
        "{:<34} {:>10.2?}  per page",
        "with: RSM <after/> walk (20 pages)",
        walk.elapsed() / 20
    );
    // RSM backward from the newest: 20 pages with <before/>.
    let mut before = None;
    let walk = Instant::now();
    for _ in 0..20 {
        let q = ArchiveQuery {
            page_before: before,
            from_end: true,
            max: 50,
            ..ArchiveQuery::default()
        };
        let p = store.query_archive(user, &q).await?;
        before = p.messages.first().map(|m| m.id);
    }
    println!(
        "{:<34} {:>10.2?}  per page",
        "RSM <before/> walk (20 pages)",
        walk.elapsed() / 20
    );
    let before_mid = ArchiveQuery {
        page_before: Some(mid),
        from_end: true,
        max: 50,
        ..ArchiveQuery::default()
    };
    let after_mid = ArchiveQuery {
        with: with.clone(),
        page_after: Some(mid),
        max: 50,
        ..ArchiveQuery::default()
    };
    time(store, user, "RSM <before/> mid-archive", &before_mid, 50).await?;
    time(
        store,
        user,
        "with + RSM <after/> mid-archive",
        &after_mid,
        50,
    )
    .await?;
    Ok(vec![
        ("latest", latest),
        ("with first", with_first),
        ("with last", with_last),
        ("start/end", window),
        ("with+start/end", with_window),
        ("before mid", before_mid),
        ("with+after mid", after_mid),
    ])
}
