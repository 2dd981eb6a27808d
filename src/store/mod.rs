//! The rule store: rules persist in SQL so that they survive restarts and, on PostgreSQL, are
//! shared by every replica.
//!
//! One code path serves both engines through sqlx's `Any` driver: SQLite (a local file, the
//! embedded default `sqlite://data/ccstream.db`) and PostgreSQL (`postgres://...`). The schema
//! lives in `migrations/`, is embedded at compile time and is applied by [`RuleStore::connect`];
//! its SQL keeps to what both engines understand (`$n` placeholders, TEXT and BIGINT columns,
//! `RETURNING`).
//!
//! A rule is stored as its JSON document next to a few indexed columns. Every row carries a
//! `version` that each write bumps, so that writers can compare-and-swap instead of locking:
//! the API reads a rule, checks the caller may touch its *current* domain, and writes back only
//! if nobody changed it meanwhile ([`RuleStore::update`], [`StoreError::Conflict`]).
//!
//! Writes are committed in groups ([`group`]): the ones that arrive while a commit is under way
//! share the next transaction, so concurrent writes cost one log flush, not one each.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Once;
use std::time::Duration;

use group::{Done, Write};
use rule_engine::Rule;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyPool, Executor, Row};

pub use credentials::StoredCredential;
pub use directory::{DirectoryImport, LoadDirectoryError, StoredPart};

mod credentials;
mod directory;
mod group;
pub mod notify;
#[cfg(test)]
mod tests;

/// Name of the counter row behind [`RuleStore::next_id`] (seeded by the first migration).
const RULE_ID_SEQUENCE: &str = "rule";

/// Counter row bumped with every rule write (seeded by the second migration).
const RULES_GENERATION: &str = "rules_generation";

/// Counter row holding the highest generation among pruned `rule_removals` rows (seeded by the
/// fifth migration): changes since an older generation can no longer be told.
const RULE_REMOVALS_HORIZON: &str = "rule_removals_horizon";

/// How long an SQLite writer waits for another one to finish before giving up with
/// SQLITE_BUSY. Writes here are single short statements, so a wait this long only happens when
/// something is badly wrong.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// SQLite serializes writers anyway; a few connections let readers proceed beside a writer in
/// WAL mode without holding many file handles.
const SQLITE_MAX_CONNECTIONS: u32 = 4;

/// PostgreSQL is shared by replicas, so each one takes only a modest share of its connections.
const POSTGRES_MAX_CONNECTIONS: u32 = 10;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Why a store operation failed. `AlreadyExists` and `Conflict` are expected outcomes the API
/// maps to spec errors; the others are failures of the database or of its contents.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rule {0} already exists")]
    AlreadyExists(String),
    /// The row's version is no longer the one the caller read (or the row is gone): re-read and
    /// decide again.
    #[error("rule {0} changed concurrently")]
    Conflict(String),
    #[error("unsupported store url: {0}")]
    UnsupportedUrl(String),
    /// The directory meant to hold the SQLite file could not be created.
    #[error("cannot create directory {path} for the rule store: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The group of writes this one was committed with failed at its commit (whether it took
    /// effect is unknown, as for any failed commit).
    #[error("commit of a group of rule writes failed: {0}")]
    Group(std::sync::Arc<sqlx::Error>),
    /// The task that applies rule writes has stopped (the runtime is shutting down).
    #[error("the rule writer has stopped")]
    WriterGone,
    /// A bug: the rule writer answered a write with the outcome of another kind of write.
    #[error("internal error in the rule writer: {0}")]
    Internal(&'static str),
    /// A row whose JSON no longer matches the rule model (edited by hand, or written by a
    /// version of ccstream with an incompatible model).
    #[error("stored rule {id} is unreadable: {source}")]
    Corrupt {
        id: String,
        source: serde_json::Error,
    },
}

/// A rule with the version of the row it was read from; hand that version back to
/// [`RuleStore::update`] or [`RuleStore::remove`] to make the write conditional on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    pub rule: Rule,
    pub version: i64,
}

/// What [`RuleStore::changes_since`] found.
#[derive(Debug)]
pub enum RuleChanges {
    /// The store at `generation`: the rules written after the generation asked for (as they are
    /// now) and the ids removed after it. An id is in at most one of the two.
    Since {
        generation: i64,
        written: Vec<Versioned>,
        removed: Vec<String>,
    },
    /// Removals after the generation asked for have been pruned: read every rule instead.
    TooOld,
}

/// Handle on the rule database. Cloning is cheap and shares one connection pool, so every part
/// of the service can hold its own handle.
#[derive(Debug, Clone)]
pub struct RuleStore {
    pool: AnyPool,
    /// Every rule write goes through it ([`group`]: many writes, one commit).
    writer: group::Writer,
    engine: Engine,
    /// The database URL, for the change listener (PostgreSQL).
    url: String,
    /// Tags this process's change notifications, so that its listener skips them.
    instance: String,
}

/// The engines the store knows, decided from the URL scheme before anything is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    fn of(url: &str) -> Result<Self, StoreError> {
        let scheme = url.split_once(':').map(|(scheme, _)| scheme);
        match scheme.map(str::to_ascii_lowercase).as_deref() {
            Some("sqlite") => Ok(Engine::Sqlite),
            Some("postgres" | "postgresql") => Ok(Engine::Postgres),
            // The URL may carry a password: name only the scheme.
            _ => Err(StoreError::UnsupportedUrl(
                scheme.unwrap_or("<no scheme>").to_owned(),
            )),
        }
    }
}

/// Where an SQLite URL points and how to open it.
#[derive(Debug, PartialEq)]
struct SqliteTarget {
    /// The URL to hand to sqlx: asks SQLite to create the file unless the caller chose a mode.
    url: String,
    /// The database file, `None` for an in-memory database.
    file: Option<PathBuf>,
}

impl SqliteTarget {
    fn parse(url: &str) -> Result<Self, StoreError> {
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (url, None),
        };
        let params = || query.into_iter().flat_map(|q| q.split('&'));
        let mode = params().find_map(|p| p.strip_prefix("mode="));
        let in_memory = base.ends_with(":memory:") || mode == Some("memory");
        if in_memory {
            return Ok(SqliteTarget {
                url: url.to_owned(),
                file: None,
            });
        }
        // sqlx's own parser decides what file the URL names (`sqlite:x.db`, `sqlite://x.db`,
        // percent-escapes), so the directory we create is the one SQLite will open.
        let file = SqliteConnectOptions::from_str(url)?
            .get_filename()
            .to_path_buf();
        let url = match (mode, query) {
            (Some(_), _) => url.to_owned(),
            (None, Some(query)) if !query.is_empty() => format!("{url}&mode=rwc"),
            (None, _) => format!("{base}?mode=rwc"),
        };
        Ok(SqliteTarget {
            url,
            file: Some(file),
        })
    }
}

/// Tries of an id-less create; each conflict moves the sequence past every taken id, so more
/// than one retry only happens when explicit creates race it.
const GENERATED_ID_ATTEMPTS: usize = 5;

/// The id spec 6.2.1.1 generates: the number padded to 8 digits, after `<stack>-` outside
/// production.
fn generated_id(prefix: Option<&str>, n: u64) -> String {
    match prefix {
        Some(prefix) => format!("{prefix}-{n:08}"),
        None => format!("{n:08}"),
    }
}

/// The number of an id of the generated form for `prefix`, if it is one.
fn generated_number(prefix: Option<&str>, id: &str) -> Option<u64> {
    let digits = match prefix {
        Some(prefix) => id.strip_prefix(prefix)?.strip_prefix('-')?,
        None => id,
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn install_drivers() {
    static DRIVERS: Once = Once::new();
    DRIVERS.call_once(sqlx::any::install_default_drivers);
}

/// `updated_at`: informational, so a clock before 1970 is not worth failing a write over.
fn now_ms() -> i64 {
    i64::try_from(ccstream_common::time::now_ms()).unwrap_or(i64::MAX)
}

/// The rule of a create or update's answer.
fn stored_rule(done: Done) -> Result<Versioned, StoreError> {
    match done {
        Done::Rule(stored) => Ok(*stored),
        Done::Removed(_) => Err(StoreError::Internal("a write answered as a removal")),
    }
}

fn encode(rule: &Rule) -> Result<String, StoreError> {
    serde_json::to_string(rule).map_err(|e| StoreError::Db(sqlx::Error::Encode(Box::new(e))))
}

/// Turns a `SELECT id, doc, version` row into a rule. Only a bad document is `Corrupt`; a
/// missing column is a bug in our SQL and stays a database error.
fn decode(row: &AnyRow) -> Result<Versioned, StoreError> {
    let id: String = row.try_get("id")?;
    let doc: String = row.try_get("doc")?;
    let version: i64 = row.try_get("version")?;
    match serde_json::from_str(&doc) {
        Ok(rule) => Ok(Versioned { rule, version }),
        Err(source) => Err(StoreError::Corrupt { id, source }),
    }
}

/// Decodes `SELECT id, doc, version` rows; the ids of rows whose document no longer parses are
/// returned apart, counted and logged (e.g. an operator this version does not know, written by
/// hand or by another version: the rule is not evaluated, and that is visible).
fn decode_readable(rows: &[AnyRow]) -> Result<(Vec<Versioned>, Vec<String>), StoreError> {
    let mut rules = Vec::with_capacity(rows.len());
    let mut unreadable = Vec::new();
    for row in rows {
        match decode(row) {
            Ok(rule) => rules.push(rule),
            Err(StoreError::Corrupt { id, source }) => {
                metrics::counter!("ccstream_store_unreadable_rules_total").increment(1);
                tracing::warn!(rule = %id, error = %source, "skipping unreadable stored rule");
                unreadable.push(id);
            }
            Err(e) => return Err(e),
        }
    }
    Ok((rules, unreadable))
}

/// `($1, $2, $3), ($4, ...` for a multi-row VALUES list (or, one column wide, an `IN` list).
fn placeholders(rows: usize, columns: usize) -> String {
    let mut out = String::with_capacity(rows * columns * 5);
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for c in 0..columns {
            if c > 0 {
                out.push_str(", ");
            }
            out.push('$');
            out.push_str(&(r * columns + c + 1).to_string());
        }
        out.push(')');
    }
    out
}

/// Adds one to an `id_sequences` counter row and returns the new value. The rows are seeded
/// by the migrations; without one the schema is not ours.
async fn increment(conn: &mut sqlx::AnyConnection, name: &str) -> sqlx::Result<i64> {
    let value: Option<i64> = sqlx::query_scalar(
        "UPDATE id_sequences SET value = value + 1 WHERE name = $1 RETURNING value",
    )
    .bind(name)
    .fetch_optional(conn)
    .await?;
    value.ok_or(sqlx::Error::RowNotFound)
}

/// The value of an `id_sequences` counter row (0 when the row is missing).
async fn counter(conn: &mut sqlx::AnyConnection, name: &str) -> Result<i64, StoreError> {
    let value: Option<i64> = sqlx::query_scalar("SELECT value FROM id_sequences WHERE name = $1")
        .bind(name)
        .fetch_optional(conn)
        .await?;
    Ok(value.unwrap_or(0))
}

impl RuleStore {
    /// Opens the store named by `url` and brings its schema up to date, so that a fresh SQLite
    /// file or an empty PostgreSQL database is ready for use without a separate setup step.
    ///
    /// For SQLite the file and its parent directory are created when missing, and the file is
    /// switched to WAL so that readers do not block the writer; concurrent writers wait
    /// (busy timeout) instead of failing.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        install_drivers();
        let engine = Engine::of(url)?;
        let pool = match engine {
            Engine::Sqlite => connect_sqlite(url).await?,
            Engine::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(POSTGRES_MAX_CONNECTIONS)
                    .connect(url)
                    .await?
            }
        };
        MIGRATOR.run(&pool).await?;
        tracing::info!(engine = ?engine, "rule store ready");
        let instance = format!("{:016x}", fastrand::u64(..));
        Ok(RuleStore {
            writer: group::Writer::start(pool.clone(), engine, instance.clone()),
            pool,
            engine,
            url: url.to_owned(),
            instance,
        })
    }

    /// Hands out the numbers behind generated rule ids (`dev-00000001`): 1, 2, 3, ... Each
    /// number is given out once, also to concurrent callers and replicas and across restarts,
    /// because the increment and the read are one atomic statement on a persisted counter.
    /// Numbers taken by a failed create are not reused (gaps are fine, repeats are not).
    pub async fn next_id(&self) -> Result<u64, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(group::next_id(&mut conn).await?)
    }

    /// Stores a new rule under the next generated id, `<prefix>-00000001` or `00000001` (spec
    /// 6.2.1.1: sequential, padded to 8 digits), and returns it with that id.
    ///
    /// A rule created with an explicit id in the generated form (rules migrated with their
    /// ids) may hold the next number already: the sequence then skips past every id of that
    /// form and the create is tried again, so an id-less CREATE does not fail on it.
    pub async fn insert_with_generated_id(
        &self,
        rule: &Rule,
        prefix: Option<&str>,
    ) -> Result<Versioned, StoreError> {
        let write = Write::Create {
            rule: rule.clone(),
            generate_id: Some(prefix.map(str::to_owned)),
        };
        self.writer.submit(write).await.and_then(stored_rule)
    }

    /// Stores a new rule at version 1. The database's primary key decides duplicates (no
    /// read before the write), so two concurrent creates of one id cannot both succeed.
    pub async fn insert(&self, rule: &Rule) -> Result<Versioned, StoreError> {
        let write = Write::Create {
            rule: rule.clone(),
            generate_id: None,
        };
        self.writer.submit(write).await.and_then(stored_rule)
    }

    /// Reads one rule. A row whose document no longer parses is [`StoreError::Corrupt`], so
    /// that the caller can tell "missing" from "unreadable".
    pub async fn get(&self, id: &str) -> Result<Option<Versioned>, StoreError> {
        let row = sqlx::query("SELECT id, doc, version FROM rules WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode).transpose()
    }

    /// Reads every rule, ordered by id (byte order, the same on both engines whatever the
    /// PostgreSQL collation, hence sorted here rather than by SQL).
    ///
    /// A row whose document no longer parses is skipped with a warning rather than failing the
    /// whole list: one bad row must not stop the engine from loading every other rule.
    pub async fn list(&self) -> Result<Vec<Versioned>, StoreError> {
        Ok(self.list_with_generation().await?.1)
    }

    /// Every rule (as [`Self::list`]) and the generation they are at, read from one snapshot.
    pub async fn list_with_generation(&self) -> Result<(i64, Vec<Versioned>), StoreError> {
        let mut tx = self.read_snapshot().await?;
        let generation = counter(&mut tx, RULES_GENERATION).await?;
        let rows = sqlx::query("SELECT id, doc, version FROM rules")
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let (mut rules, _) = decode_readable(&rows)?;
        rules.sort_by(|a, b| a.rule.id.cmp(&b.rule.id));
        Ok((generation, rules))
    }

    /// What changed after `generation`, read from one snapshot: the rules written since (as they
    /// are now) and the ids removed since, or [`RuleChanges::TooOld`] when removals that old have
    /// been pruned ([`Self::prune_removals`]) or the store is behind `generation`. A row that no longer parses counts as removed, as
    /// [`Self::list`] skips it.
    pub async fn changes_since(&self, generation: i64) -> Result<RuleChanges, StoreError> {
        let mut tx = self.read_snapshot().await?;
        let current = counter(&mut tx, RULES_GENERATION).await?;
        // A generation ahead of the store's: the database was replaced (restored from a
        // backup), and what changed cannot be told either.
        if generation < counter(&mut tx, RULE_REMOVALS_HORIZON).await? || generation > current {
            return Ok(RuleChanges::TooOld);
        }
        let rows = sqlx::query("SELECT id, doc, version FROM rules WHERE generation > $1")
            .bind(generation)
            .fetch_all(&mut *tx)
            .await?;
        let mut removed: Vec<String> =
            sqlx::query_scalar("SELECT id FROM rule_removals WHERE generation > $1")
                .bind(generation)
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        let (written, unreadable) = decode_readable(&rows)?;
        removed.extend(unreadable);
        Ok(RuleChanges::Since {
            generation: current,
            written,
            removed,
        })
    }

    /// Forgets the removals recorded more than `age` ago, so that `rule_removals` stays small,
    /// and returns how many. A replica whose index predates a forgotten removal then reads every
    /// rule ([`RuleChanges::TooOld`]); with replicas polling every few seconds, none is that old.
    pub async fn prune_removals(&self, age: Duration) -> Result<u64, StoreError> {
        let cutoff = now_ms().saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
        let mut tx = self.pool.begin().await?;
        // The generation row first, as every group of writes takes it: pruning then runs between
        // groups (never interleaved with one on the rows both touch) and SQLite takes its write
        // lock before reading.
        sqlx::query("UPDATE id_sequences SET value = value WHERE name = $1")
            .bind(RULES_GENERATION)
            .execute(&mut *tx)
            .await?;
        // The horizon, never lowered.
        sqlx::query(
            "UPDATE id_sequences SET value = COALESCE((SELECT MAX(generation) \
             FROM rule_removals WHERE removed_at < $2 AND generation > id_sequences.value), \
             value) WHERE name = $1",
        )
        .bind(RULE_REMOVALS_HORIZON)
        .bind(cutoff)
        .execute(&mut *tx)
        .await?;
        let done = sqlx::query(
            "DELETE FROM rule_removals \
             WHERE generation <= (SELECT value FROM id_sequences WHERE name = $1)",
        )
        .bind(RULE_REMOVALS_HORIZON)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// A transaction whose reads all see one snapshot: SQLite's deferred transaction does (in
    /// WAL mode, from its first read); PostgreSQL's default takes a snapshot per statement.
    async fn read_snapshot(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        let mut tx = self.pool.begin().await?;
        if self.engine == Engine::Postgres {
            (&mut *tx)
                .execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .await?;
        }
        Ok(tx)
    }

    /// Replaces the rule with `rule.id` if its row is still at `expected_version` and returns
    /// the new version. Otherwise [`StoreError::Conflict`]: the caller re-reads (and re-checks
    /// authorization against the domain it finds) and tries again. A rule removed since it was
    /// read is also a `Conflict`; the re-read then finds nothing.
    pub async fn update(
        &self,
        rule: &Rule,
        expected_version: i64,
    ) -> Result<Versioned, StoreError> {
        let write = Write::Update {
            rule: rule.clone(),
            expected_version,
        };
        self.writer.submit(write).await.and_then(stored_rule)
    }

    /// Deletes a rule and says whether there was one. With `expected_version`, the delete only
    /// happens if the row is still at that version (else [`StoreError::Conflict`]), so that a
    /// delete authorized against an old domain cannot remove a rule that moved meanwhile.
    pub async fn remove(
        &self,
        id: &str,
        expected_version: Option<i64>,
    ) -> Result<bool, StoreError> {
        let write = Write::Remove {
            id: id.to_owned(),
            expected_version,
        };
        match self.writer.submit(write).await? {
            Done::Removed(removed) => Ok(removed),
            Done::Rule(_) => Err(StoreError::Internal("a removal answered with a rule")),
        }
    }

    /// A number that every rule write increases, on every replica sharing the database: the
    /// engine compares it with the one its index was built from to know when to reload.
    pub async fn rules_generation(&self) -> Result<i64, StoreError> {
        let mut conn = self.pool.acquire().await?;
        counter(&mut conn, RULES_GENERATION).await
    }

    /// A round trip to the database, for `/readyz`: the service is not ready while it cannot
    /// read its rules.
    pub async fn ping(&self) -> Result<(), StoreError> {
        if self.writer.is_gone() {
            return Err(StoreError::WriterGone);
        }
        self.pool.execute("SELECT 1").await?;
        Ok(())
    }

    /// Saves `owner`'s threshold state document (replacing the previous one).
    pub async fn save_threshold_state(&self, owner: &str, doc: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO threshold_state (owner, doc, saved_at) VALUES ($1, $2, $3) \
             ON CONFLICT (owner) DO UPDATE SET doc = excluded.doc, saved_at = excluded.saved_at",
        )
        .bind(owner)
        .bind(doc)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// `owner`'s saved threshold state document, if any.
    pub async fn load_threshold_state(&self, owner: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT doc FROM threshold_state WHERE owner = $1")
                .bind(owner)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Whether replicas sharing this store are told of changes at once (PostgreSQL's
    /// `LISTEN/NOTIFY`), rather than only by polling.
    pub fn announces_changes(&self) -> bool {
        self.engine == Engine::Postgres
    }
}

async fn connect_sqlite(url: &str) -> Result<AnyPool, StoreError> {
    let target = SqliteTarget::parse(url)?;
    if let Some(dir) = target.file.as_deref().and_then(|file| file.parent()) {
        if !dir.as_os_str().is_empty() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|source| StoreError::CreateDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
    }
    // The Any driver builds SQLite options from the URL alone, which cannot carry the busy
    // timeout; set it on every new connection instead.
    let options = AnyPoolOptions::new().after_connect(|conn, _meta| {
        Box::pin(async move {
            let pragma = format!("PRAGMA busy_timeout = {}", SQLITE_BUSY_TIMEOUT.as_millis());
            conn.execute(pragma.as_str()).await?;
            Ok(())
        })
    });
    let options = if target.file.is_some() {
        options.max_connections(SQLITE_MAX_CONNECTIONS)
    } else {
        // Through the Any driver every new connection to `:memory:` opens a fresh, empty
        // database: keep exactly one connection, forever.
        options
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
    };
    let pool = options.connect(&target.url).await?;
    if target.file.is_some() {
        // WAL is a property of the file, so setting it once here covers every later
        // connection; it lets readers run beside the single writer.
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode = WAL")
            .fetch_one(&pool)
            .await?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(journal_mode = %mode, "SQLite rule store is not in WAL mode");
        }
    }
    Ok(pool)
}
