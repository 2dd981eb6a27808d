//! Group commit of rule writes. A commit is durable only after the database's log reaches the
//! disk, and that flush (an fsync, milliseconds on a virtual disk) is what bounds writes made
//! one transaction at a time: on SQLite, which has one writer, and on PostgreSQL too, where
//! every rule write holds the generation row until its commit. So one task per store takes the
//! writes that queued while the previous group committed and applies them all in one
//! transaction, with one generation bump and one flush, then answers each. Removal rows are
//! written once per group too ([`record_removals`]), and updates of distinct rules that queued
//! side by side go in one statement ([`update_many`]): each statement is a round trip to
//! PostgreSQL.
//!
//! A write's own refusal (the id exists, the version moved on, nothing to remove) is an answer,
//! not an error: the statements say so without failing (`ON CONFLICT DO NOTHING`, `RETURNING`),
//! so the transaction goes on with the next write. A database error before the commit rolls the
//! group back and its writes are tried again one per transaction, so that a write that fails
//! alone fails alone. A failed commit fails every write of the group (as it would a single
//! write's: the caller cannot know whether it took effect).

use std::collections::HashMap;
use std::sync::Arc;

use rule_engine::Rule;
use sqlx::{AnyConnection, AnyPool};
use tokio::sync::{mpsc, oneshot};

use super::{
    encode, generated_id, generated_number, increment, notify, now_ms, placeholders, Engine,
    StoreError, Versioned, GENERATED_ID_ATTEMPTS, RULES_GENERATION, RULE_ID_SEQUENCE,
};

/// Most writes one transaction carries: bounds how long a group holds the write lock (and, on
/// PostgreSQL, the generation row other replicas' writers wait for).
const MAX_GROUP: usize = 256;

/// Writes queued for the writer beyond the group being committed; further writers wait.
const QUEUE: usize = 4096;

/// One rule write, as the writer applies it.
#[derive(Debug)]
pub(super) enum Write {
    /// A new rule at version 1; with `generate_id`, under the next generated id
    /// (`Some(prefix)` of [`generated_id`]) instead of `rule.id`.
    Create {
        rule: Rule,
        generate_id: Option<Option<String>>,
    },
    Update {
        rule: Rule,
        expected_version: i64,
    },
    Remove {
        id: String,
        expected_version: Option<i64>,
    },
}

/// What a write did.
#[derive(Debug)]
pub(super) enum Done {
    /// Created or updated: the rule as stored (boxed: a rule is large, a removal's answer not).
    Rule(Box<Versioned>),
    /// Removed (`true`) or there was nothing to remove.
    Removed(bool),
}

impl Done {
    fn changed_something(&self) -> bool {
        matches!(self, Done::Rule(_) | Done::Removed(true))
    }
}

struct Request {
    write: Write,
    reply: oneshot::Sender<Result<Done, StoreError>>,
}

/// The handle every clone of the store shares; the writer task ends with the last one.
#[derive(Debug, Clone)]
pub(super) struct Writer {
    queue: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("write", &self.write)
            .finish_non_exhaustive()
    }
}

/// What the writer needs of the store.
struct Context {
    pool: AnyPool,
    engine: Engine,
    instance: String,
}

impl Writer {
    /// Starts the writer task (on the current Tokio runtime).
    pub(super) fn start(pool: AnyPool, engine: Engine, instance: String) -> Writer {
        let (queue, requests) = mpsc::channel(QUEUE);
        let context = Context {
            pool,
            engine,
            instance,
        };
        tokio::spawn(run(context, requests));
        Writer { queue }
    }

    /// Whether the writer task has stopped (every write would fail).
    pub(super) fn is_gone(&self) -> bool {
        self.queue.is_closed()
    }

    /// Queues `write` and waits for its group's commit.
    pub(super) async fn submit(&self, write: Write) -> Result<Done, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request { write, reply })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }
}

async fn run(context: Context, mut requests: mpsc::Receiver<Request>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while requests.recv_many(&mut group, MAX_GROUP).await > 0 {
        commit_group(&context, std::mem::take(&mut group)).await;
    }
}

/// Why a group did not commit.
enum Failure {
    /// Before the commit: nothing took effect.
    Before(sqlx::Error),
    /// The commit itself: the group may or may not have taken effect.
    AtCommit(sqlx::Error),
}

async fn commit_group(context: &Context, mut group: Vec<Request>) {
    // A caller that is gone (its request timed out and was answered so) is not written for: a
    // write must not take effect after its client was told it failed.
    group.retain(|r| !r.reply.is_closed());
    if group.is_empty() {
        return;
    }
    metrics::histogram!("ccstream_store_writes_per_commit").record(group.len() as f64);
    let writes: Vec<&Write> = group.iter().map(|r| &r.write).collect();
    match apply_group(context, &writes).await {
        Ok(results) => {
            for (request, result) in group.into_iter().zip(results) {
                // The caller may have gone (its request timed out); the write stands.
                let _ = request.reply.send(result);
            }
        }
        // A statement the database refused (one write's, e.g. text it cannot store): the others
        // must not fail with it. Other errors (the connection, the pool) would fail them alone
        // too, only later.
        Err(Failure::Before(e @ sqlx::Error::Database(_))) if group.len() > 1 => {
            tracing::warn!(
                error = %e,
                writes = group.len(),
                "a group of rule writes failed before its commit; trying each alone"
            );
            for request in group {
                if request.reply.is_closed() {
                    continue;
                }
                let result = match apply_group(context, &[&request.write]).await {
                    Ok(mut results) => results
                        .pop()
                        .unwrap_or(Err(StoreError::Internal("a write without an outcome"))),
                    Err(Failure::Before(e) | Failure::AtCommit(e)) => Err(StoreError::Db(e)),
                };
                let _ = request.reply.send(result);
            }
        }
        Err(Failure::Before(e) | Failure::AtCommit(e)) => {
            if group.len() == 1 {
                if let Some(request) = group.into_iter().next() {
                    let _ = request.reply.send(Err(StoreError::Db(e)));
                }
                return;
            }
            let e = Arc::new(e);
            for request in group {
                let _ = request.reply.send(Err(StoreError::Group(Arc::clone(&e))));
            }
        }
    }
}

/// Applies `writes` in one transaction and commits it if any of them changed something
/// (otherwise rolls back: the generation stays, and nothing is flushed).
async fn apply_group(
    context: &Context,
    writes: &[&Write],
) -> Result<Vec<Result<Done, StoreError>>, Failure> {
    let mut tx = context.pool.begin().await.map_err(Failure::Before)?;
    let generation = bump_generation(&mut tx, context)
        .await
        .map_err(Failure::Before)?;
    let mut results = Vec::with_capacity(writes.len());
    let mut rest = writes;
    while let Some((write, after)) = rest.split_first() {
        let updates = distinct_updates(rest);
        if updates.len() > 1 {
            results.extend(
                update_many(&mut tx, &updates, generation)
                    .await
                    .map_err(Failure::Before)?,
            );
            rest = &rest[updates.len()..];
            continue;
        }
        results.push(
            apply(&mut tx, write, generation)
                .await
                .map_err(Failure::Before)?,
        );
        rest = after;
    }
    record_removals(&mut tx, writes, &results, generation)
        .await
        .map_err(Failure::Before)?;
    if results
        .iter()
        .any(|r| r.as_ref().is_ok_and(Done::changed_something))
    {
        tx.commit().await.map_err(Failure::AtCommit)?;
    }
    // Else dropping `tx` rolls it back.
    Ok(results)
}

/// Brings `rule_removals` in line with the group's writes, in two statements for the whole
/// group rather than one per write (each statement is a round trip): an id the group removed
/// last gets a row at `generation`, an id it created last loses its row (a re-created id is a
/// write, no longer a removal).
async fn record_removals(
    conn: &mut AnyConnection,
    writes: &[&Write],
    results: &[Result<Done, StoreError>],
    generation: i64,
) -> sqlx::Result<()> {
    // Id → removed by the group's last write of it.
    let mut last: HashMap<&str, bool> = HashMap::new();
    for (write, result) in writes.iter().zip(results) {
        match (write, result) {
            (Write::Create { .. }, Ok(Done::Rule(stored))) => {
                last.insert(&stored.rule.id, false);
            }
            (Write::Remove { id, .. }, Ok(Done::Removed(true))) => {
                last.insert(id, true);
            }
            _ => {}
        }
    }
    let (removed, created): (Vec<_>, Vec<_>) = last.into_iter().partition(|(_, r)| *r);
    if !created.is_empty() {
        let sql = format!(
            // `IN (($1), ($2))`: a list of parenthesized values, as both engines read it.
            "DELETE FROM rule_removals WHERE id IN ({})",
            placeholders(created.len(), 1)
        );
        let mut query = sqlx::query(&sql);
        for (id, _) in created {
            query = query.bind(id);
        }
        query.execute(&mut *conn).await?;
    }
    if !removed.is_empty() {
        let sql = format!(
            "INSERT INTO rule_removals (id, generation, removed_at) VALUES {} \
             ON CONFLICT (id) DO UPDATE SET generation = excluded.generation, \
             removed_at = excluded.removed_at",
            placeholders(removed.len(), 3)
        );
        let now = now_ms();
        let mut query = sqlx::query(&sql);
        for (id, _) in removed {
            query = query.bind(id).bind(generation).bind(now);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Bumps the rule generation and returns the new one; on PostgreSQL also announces it to every
/// replica's listener ([`notify`]), delivered at the commit.
///
/// First in every group: the counter row's lock then orders the groups (of this replica and
/// of others), so that generations commit in their order (a reader that sees generation `g`
/// sees every write up to `g`), and SQLite takes its write lock before the transaction reads
/// anything.
async fn bump_generation(conn: &mut AnyConnection, context: &Context) -> sqlx::Result<i64> {
    let generation = increment(&mut *conn, RULES_GENERATION).await?;
    if context.engine == Engine::Postgres {
        sqlx::query("SELECT pg_notify($1, $2)::text")
            .bind(notify::RULES_CHANNEL)
            .bind(&context.instance)
            .execute(&mut *conn)
            .await?;
    }
    Ok(generation)
}

/// One write inside the group's transaction. The outer error is the database's (it fails the
/// group); the inner one is this write's own answer.
async fn apply(
    conn: &mut AnyConnection,
    write: &Write,
    generation: i64,
) -> sqlx::Result<Result<Done, StoreError>> {
    match write {
        Write::Create { rule, generate_id } => create(conn, rule, generate_id, generation).await,
        Write::Update {
            rule,
            expected_version,
        } => {
            let doc = match encode(rule) {
                Ok(doc) => doc,
                Err(e) => return Ok(Err(e)),
            };
            let version: Option<i64> = sqlx::query_scalar(
                "UPDATE rules SET domain = $1, doc = $2, version = version + 1, updated_at = $3, \
                 generation = $4 WHERE id = $5 AND version = $6 RETURNING version",
            )
            .bind(&rule.filter.domain)
            .bind(doc)
            .bind(now_ms())
            .bind(generation)
            .bind(&rule.id)
            .bind(expected_version)
            .fetch_optional(&mut *conn)
            .await?;
            Ok(match version {
                Some(version) => Ok(Done::Rule(Box::new(Versioned {
                    rule: rule.clone(),
                    version,
                }))),
                None => Err(StoreError::Conflict(rule.id.clone())),
            })
        }
        Write::Remove {
            id,
            expected_version,
        } => remove(conn, id, *expected_version).await,
    }
}

/// The updates at the start of `writes`, up to the first write that is not an update or updates
/// an id already among them.
fn distinct_updates<'w>(writes: &[&'w Write]) -> Vec<(&'w Rule, i64)> {
    let mut updates: Vec<(&Rule, i64)> = Vec::new();
    for write in writes {
        match write {
            Write::Update {
                rule,
                expected_version,
            } if !updates.iter().any(|(r, _)| r.id == rule.id) => {
                updates.push((rule, *expected_version));
            }
            _ => break,
        }
    }
    updates
}

/// Updates of distinct rules in one statement: one round trip for all of them instead of one
/// each, which is what bounds a group's updates on PostgreSQL. Each row changes only if it is
/// still at its expected version, as [`apply`] would change it; the rows returned tell which.
/// (`UPDATE ... FROM (VALUES ...)`, whose columns are `column1`... on both SQLite and
/// PostgreSQL.)
async fn update_many(
    conn: &mut AnyConnection,
    updates: &[(&Rule, i64)],
    generation: i64,
) -> sqlx::Result<Vec<Result<Done, StoreError>>> {
    let mut answers: Vec<Option<Result<Done, StoreError>>> = Vec::with_capacity(updates.len());
    let mut rows = Vec::with_capacity(updates.len());
    for (rule, expected_version) in updates {
        match encode(rule) {
            Ok(doc) => {
                rows.push((*rule, doc, *expected_version));
                answers.push(None);
            }
            Err(e) => answers.push(Some(Err(e))),
        }
    }
    let values: Vec<String> = (0..rows.len())
        .map(|k| {
            let first = 3 + 4 * k;
            format!(
                "(${}, ${}, ${}, CAST(${} AS BIGINT))",
                first,
                first + 1,
                first + 2,
                first + 3
            )
        })
        .collect();
    let sql = format!(
        "UPDATE rules SET domain = v.column2, doc = v.column3, version = version + 1, \
         updated_at = $1, generation = $2 FROM (VALUES {}) AS v \
         WHERE rules.id = v.column1 AND rules.version = v.column4 RETURNING id, version",
        values.join(", ")
    );
    let mut query = sqlx::query_as::<_, (String, i64)>(&sql)
        .bind(now_ms())
        .bind(generation);
    for (rule, doc, expected_version) in &rows {
        query = query
            .bind(&rule.id)
            .bind(&rule.filter.domain)
            .bind(doc)
            .bind(*expected_version);
    }
    let updated: HashMap<String, i64> = if rows.is_empty() {
        HashMap::new()
    } else {
        query.fetch_all(&mut *conn).await?.into_iter().collect()
    };
    Ok(updates
        .iter()
        .zip(answers)
        .map(|((rule, _), answer)| {
            answer.unwrap_or_else(|| match updated.get(&rule.id) {
                Some(&version) => Ok(Done::Rule(Box::new(Versioned {
                    rule: (*rule).clone(),
                    version,
                }))),
                None => Err(StoreError::Conflict(rule.id.clone())),
            })
        })
        .collect())
}

async fn create(
    conn: &mut AnyConnection,
    rule: &Rule,
    generate_id: &Option<Option<String>>,
    generation: i64,
) -> sqlx::Result<Result<Done, StoreError>> {
    let mut rule = rule.clone();
    let attempts = if generate_id.is_some() {
        GENERATED_ID_ATTEMPTS
    } else {
        1
    };
    for _ in 0..attempts {
        if let Some(prefix) = generate_id {
            let n = next_id(conn).await?;
            rule.id = generated_id(prefix.as_deref(), n);
        }
        let doc = match encode(&rule) {
            Ok(doc) => doc,
            Err(e) => return Ok(Err(e)),
        };
        // The primary key decides duplicates (no read before the write), so two concurrent
        // creates of one id cannot both succeed.
        let inserted: Option<String> = sqlx::query_scalar(
            "INSERT INTO rules (id, domain, doc, version, updated_at, generation) \
             VALUES ($1, $2, $3, 1, $4, $5) ON CONFLICT (id) DO NOTHING RETURNING id",
        )
        .bind(&rule.id)
        .bind(&rule.filter.domain)
        .bind(doc)
        .bind(now_ms())
        .bind(generation)
        .fetch_optional(&mut *conn)
        .await?;
        if inserted.is_some() {
            return Ok(Ok(Done::Rule(Box::new(Versioned { rule, version: 1 }))));
        }
        if let Some(prefix) = generate_id {
            skip_taken_ids(conn, prefix.as_deref()).await?;
        }
    }
    Ok(Err(StoreError::AlreadyExists(rule.id)))
}

async fn remove(
    conn: &mut AnyConnection,
    id: &str,
    expected_version: Option<i64>,
) -> sqlx::Result<Result<Done, StoreError>> {
    let done = match expected_version {
        None => {
            sqlx::query("DELETE FROM rules WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?
        }
        Some(expected) => {
            sqlx::query("DELETE FROM rules WHERE id = $1 AND version = $2")
                .bind(id)
                .bind(expected)
                .execute(&mut *conn)
                .await?
        }
    };
    if done.rows_affected() > 0 {
        return Ok(Ok(Done::Removed(true)));
    }
    if expected_version.is_none() {
        return Ok(Ok(Done::Removed(false)));
    }
    // Nothing deleted: tell a missing rule from one that moved on.
    let still_there = sqlx::query("SELECT version FROM rules WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .is_some();
    Ok(if still_there {
        Err(StoreError::Conflict(id.to_owned()))
    } else {
        Ok(Done::Removed(false))
    })
}

/// The next number of the rule id sequence, inside the group's transaction.
pub(super) async fn next_id(conn: &mut AnyConnection) -> sqlx::Result<u64> {
    let value = increment(conn, RULE_ID_SEQUENCE).await?;
    u64::try_from(value).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// Moves the id sequence past the highest number among the stored ids of the generated form
/// (rules created with explicit ids of that form, e.g. migrated with their ids). Rare (after a
/// conflict), so a scan of the ids is fine.
async fn skip_taken_ids(conn: &mut AnyConnection, prefix: Option<&str>) -> sqlx::Result<()> {
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM rules")
        .fetch_all(&mut *conn)
        .await?;
    let highest = ids
        .iter()
        .filter_map(|id| generated_number(prefix, id))
        .max()
        .unwrap_or(0);
    let highest = i64::try_from(highest).unwrap_or(i64::MAX);
    sqlx::query("UPDATE id_sequences SET value = $2 WHERE name = $1 AND value < $2")
        .bind(RULE_ID_SEQUENCE)
        .bind(highest)
        .execute(&mut *conn)
        .await?;
    tracing::info!(
        next = highest.saturating_add(1),
        "rule id sequence moved past ids created with explicit values"
    );
    Ok(())
}
