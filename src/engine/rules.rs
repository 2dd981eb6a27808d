//! Keeps the rule index current: whenever the store's rule generation moves (a write through
//! this replica or another), the changes since the index's generation are applied to a copy of
//! it, published through a `watch` channel. Only a replica too far behind (the removals it
//! missed were pruned) reads every rule again.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rule_engine::index::CompiledRule;
use rule_engine::{Rule, RuleIndex};
use tokio::sync::{watch, Notify};

use crate::store::{RuleChanges, RuleStore, StoreError};

/// How long a removal stays readable as a change ([`RuleStore::prune_removals`]); also how
/// often this replica prunes. A replica whose rules are older reads every rule again.
const REMOVALS_KEPT: Duration = Duration::from_secs(3600);

/// How often every rule is read again and compared with the rules in force. A backstop: a
/// replica of an earlier version (during a rolling upgrade) writes rules without the
/// generation column and the removal rows that changes are read by, and this repairs what it
/// wrote within this time.
const FULL_RELOAD_EVERY: Duration = Duration::from_secs(600);

/// What the pipeline evaluates against: an immutable index, swapped whole on every change so
/// evaluation never waits for a rebuild.
#[derive(Debug, Default)]
pub struct RuleSet {
    pub index: RuleIndex,
    pub generation: i64,
    /// This set's number ([`RuleSet::new`] and [`RuleSet::with_changes`] count them): a full
    /// reload at the same generation is another set.
    pub serial: u64,
    /// The serial of the set this one was made from and the ids written or removed since
    /// (`None` after a full load), so that the pipeline forgets the threshold state of those
    /// rules alone.
    pub changed_since: Option<(u64, Vec<String>)>,
    /// Rule id `Arc` (by address) → `<id>:<epoch>` ([`super::redis_state::rule_epoch`]), the
    /// part of the rule's Redis keys that changes with it; computed on first use (Redis state
    /// only). By address because evaluation hands the threshold state the index's own `Arc`s:
    /// a lookup per threshold step then hashes no string.
    key_parts: OnceLock<HashMap<usize, Arc<str>, BuildHasherDefault<AddressHasher>>>,
}

/// Hashes an address (`write_usize`) with one multiplication (Fibonacci hashing), folding the
/// product's high half into its low half: addresses are 16-byte aligned, so the low bits of the
/// bare product are zero, and the table picks buckets by the low bits.
#[derive(Default)]
pub struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        let h = self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^ (h >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = n as u64;
    }
}

fn address(id: &Arc<str>) -> usize {
    Arc::as_ptr(id).cast::<u8>() as usize
}

impl RuleSet {
    pub fn new(index: RuleIndex, generation: i64) -> Self {
        RuleSet {
            index,
            generation,
            serial: next_serial(),
            changed_since: None,
            key_parts: OnceLock::new(),
        }
    }

    /// This set with `written` and `removed` applied ([`RuleIndex::apply`] on a copy), at
    /// `generation`. Costs a copy of the index's tables (pointers) plus a layout of each thing
    /// type concerned; cached key parts are carried over, not computed again.
    pub fn with_changes(&self, generation: i64, written: Vec<Rule>, removed: Vec<String>) -> Self {
        let changed: Vec<String> = removed
            .iter()
            .cloned()
            .chain(written.iter().map(|r| r.id.clone()))
            .collect();
        let mut index = self.index.clone();
        index.apply(written, &removed);
        let next_parts = OnceLock::new();
        if let Some(parts) = self.key_parts.get() {
            let mut parts = parts.clone();
            for id in &changed {
                // The old `Arc`s live as long as `self`, so no new rule can have their address.
                if let Some(old) = self.index.compiled_rule(id) {
                    parts.remove(&address(old.id()));
                }
                if let Some(new) = index.compiled_rule(id) {
                    parts.insert(address(new.id()), key_part(new));
                }
            }
            // Cannot fail: the cell was made empty just above.
            let _ = next_parts.set(parts);
        }
        RuleSet {
            index,
            generation,
            serial: next_serial(),
            changed_since: Some((self.serial, changed)),
            key_parts: next_parts,
        }
    }

    /// `<rule id>:<epoch>` of the rule whose id `Arc` the evaluation handed over; the epoch
    /// changes when the rule's expression or threshold does.
    pub fn state_key_part(&self, id: &Arc<str>) -> Arc<str> {
        let parts = self.key_parts.get_or_init(|| {
            self.index
                .compiled()
                .map(|r| (address(r.id()), key_part(r)))
                .collect()
        });
        match parts.get(&address(id)) {
            Some(part) => Arc::clone(part),
            // Not an `Arc` of this index (never from evaluation): by the id's text.
            None => Arc::from(format!("{id}:{}", self.state_epoch(id))),
        }
    }

    /// The epoch of a rule's threshold state (empty for an unknown rule).
    pub fn state_epoch(&self, id: &str) -> String {
        self.index
            .get(id)
            .map(super::redis_state::rule_epoch)
            .unwrap_or_default()
    }
}

fn next_serial() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn key_part(rule: &CompiledRule) -> Arc<str> {
    let part = format!(
        "{}:{}",
        rule.id(),
        super::redis_state::rule_epoch(rule.rule())
    );
    Arc::from(part)
}

/// Loads every rule and builds the index.
pub async fn load(store: &RuleStore) -> Result<RuleSet, StoreError> {
    let (generation, rules) = store.list_with_generation().await?;
    let started = Instant::now();
    let index = RuleIndex::from_rules(rules.into_iter().map(|v| v.rule));
    metrics::histogram!("ccstream_rules_index_build_seconds")
        .record(started.elapsed().as_secs_f64());
    let set = RuleSet::new(index, generation);
    publish_gauges(&set);
    Ok(set)
}

/// `current` brought up to the store's generation: the changes since its generation applied
/// to a copy, or every rule loaded again when the store can no longer tell those changes.
async fn catch_up(store: &RuleStore, current: &RuleSet) -> Result<RuleSet, StoreError> {
    match store.changes_since(current.generation).await? {
        RuleChanges::Since {
            generation,
            written,
            removed,
        } => {
            let started = Instant::now();
            let changes = written.len() + removed.len();
            let set = current.with_changes(
                generation,
                written.into_iter().map(|v| v.rule).collect(),
                removed,
            );
            metrics::histogram!("ccstream_rules_index_update_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("ccstream_rules_changes_applied_total").increment(changes as u64);
            publish_gauges(&set);
            tracing::debug!(
                changes,
                rules = set.index.len(),
                generation,
                "rule changes applied"
            );
            Ok(set)
        }
        RuleChanges::TooOld => {
            let set = load(store).await?;
            tracing::info!(
                rules = set.index.len(),
                generation = set.generation,
                "rules reloaded (the changes since this replica's rules were pruned)"
            );
            Ok(set)
        }
    }
}

/// Every rule read again: the new set unless it equals `current` (same generation, same rules).
/// Different rules at the same generation were written without their changes being readable
/// as such: that is counted and logged.
async fn reload_if_different(
    store: &RuleStore,
    current: &RuleSet,
) -> Result<Option<RuleSet>, StoreError> {
    let set = load(store).await?;
    if set.generation != current.generation {
        return Ok(Some(set));
    }
    let same = set.index.len() == current.index.len()
        && set
            .index
            .rules()
            .all(|r| current.index.get(&r.id) == Some(r));
    if same {
        return Ok(None);
    }
    metrics::counter!("ccstream_rules_drift_repaired_total").increment(1);
    tracing::warn!(
        generation = set.generation,
        "the rules in force differed from the store at the same generation (a rule written by \
         an earlier version of ccstream?); every rule reloaded"
    );
    Ok(Some(set))
}

fn publish_gauges(set: &RuleSet) {
    metrics::gauge!("ccstream_rules_loaded").set(set.index.len() as f64);
    // Tests and operators compare this across replicas; the histogram's count is no substitute
    // (its samples are folded in asynchronously by the exporter).
    metrics::gauge!("ccstream_rules_generation").set(set.generation as f64);
}

/// Polls the store every `poll` (or at once when `changed` is notified, after a write through
/// this replica's API) and publishes a new [`RuleSet`] when the generation moved. Ends when
/// every receiver is gone.
pub async fn keep_current(
    store: RuleStore,
    tx: watch::Sender<Arc<RuleSet>>,
    changed: Arc<Notify>,
    poll: Duration,
) {
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prune = tokio::time::interval(REMOVALS_KEPT);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut audit = tokio::time::interval_at(
        tokio::time::Instant::now() + FULL_RELOAD_EVERY,
        FULL_RELOAD_EVERY,
    );
    audit.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = changed.notified() => {}
            _ = audit.tick() => {
                let current = Arc::clone(&tx.borrow());
                match reload_if_different(&store, &current).await {
                    Ok(Some(set)) => {
                        if tx.send(Arc::new(set)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot read every rule to compare"),
                }
                continue;
            }
            _ = prune.tick() => {
                match store.prune_removals(REMOVALS_KEPT).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removals = n, "pruned old rule removals"),
                    Err(e) => tracing::warn!(error = %e, "cannot prune old rule removals"),
                }
                continue;
            }
            () = tx.closed() => return,
        }
        let current = Arc::clone(&tx.borrow());
        match store.rules_generation().await {
            Ok(g) if g == current.generation => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the rule generation; keeping the current rules");
                continue;
            }
        }
        match catch_up(&store, &current).await {
            Ok(set) => {
                if tx.send(Arc::new(set)).is_err() {
                    return;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot reload rules; keeping the current ones"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rule(value: i64, threshold: serde_json::Value) -> rule_engine::Rule {
        serde_json::from_value(serde_json::json!({
            "id": "r1", "name": "r1", "enabled": true,
            "filter": {"domain": "root", "thingType": "Pump"},
            "expression": {"operator": "gt", "resource": "temp", "value": value},
            "threshold": threshold,
            "actions": []
        }))
        .unwrap()
    }

    fn named(id: &str, value: i64) -> rule_engine::Rule {
        let mut r = rule(value, serde_json::json!({"count": 2}));
        r.id = id.to_owned();
        r
    }

    #[test]
    fn changes_apply_to_a_copy_and_carry_the_key_parts() {
        let base = RuleSet::new(
            RuleIndex::from_rules([named("a", 1), named("b", 2), named("c", 3)]),
            7,
        );
        // Key parts computed before the change, as a Redis-backed pipeline does.
        let a = Arc::clone(base.index.compiled_rule("a").unwrap().id());
        let before = base.state_key_part(&a);
        let next = base.with_changes(9, vec![named("b", 20), named("d", 4)], vec!["c".into()]);
        assert_eq!(next.generation, 9);
        let (from, changed) = next.changed_since.clone().unwrap();
        assert_eq!(from, base.serial);
        assert_eq!(changed, ["c", "b", "d"]);
        assert_eq!(base.index.len(), 3, "the original is untouched");
        assert!(base.index.get("c").is_some());
        assert_eq!(next.index.len(), 3);
        assert!(next.index.get("c").is_none());
        // Unchanged rules keep their `Arc` and their key part; changed ones get fresh ones,
        // the same as a set built from scratch computes.
        assert!(Arc::ptr_eq(next.index.compiled_rule("a").unwrap().id(), &a));
        assert_eq!(next.state_key_part(&a), before);
        let fresh = RuleSet::new(
            RuleIndex::from_rules([named("a", 1), named("b", 20), named("d", 4)]),
            9,
        );
        for id in ["a", "b", "d"] {
            let own = Arc::clone(next.index.compiled_rule(id).unwrap().id());
            let theirs = Arc::clone(fresh.index.compiled_rule(id).unwrap().id());
            assert_eq!(
                next.state_key_part(&own),
                fresh.state_key_part(&theirs),
                "{id}"
            );
        }
        assert_eq!(
            next.key_parts.get().unwrap().len(),
            3,
            "no part of a removed or replaced rule is left"
        );
    }

    /// Writes through the store are caught up with as changes; a write an earlier version made
    /// (the document changed and the generation bumped, but no generation on the row) is only
    /// found by the periodic full reload, which then repairs it.
    #[tokio::test]
    async fn changes_are_caught_up_and_the_full_reload_repairs_unreadable_ones() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("rules.db").display());
        let store = RuleStore::connect(&url).await.unwrap();
        for (id, value) in [("a", 1), ("b", 2)] {
            store.insert(&named(id, value)).await.unwrap();
        }
        let first = load(&store).await.unwrap();
        assert_eq!(first.index.len(), 2);

        store.update(&named("a", 10), 1).await.unwrap();
        store.remove("b", None).await.unwrap();
        store.insert(&named("c", 3)).await.unwrap();
        let second = catch_up(&store, &first).await.unwrap();
        assert_eq!(second.generation, first.generation + 3);
        assert_eq!(second.changed_since.as_ref().unwrap().0, first.serial);
        assert_eq!(second.index.get("a"), Some(&named("a", 10)));
        assert!(second.index.get("b").is_none());
        assert_eq!(second.index.get("c"), Some(&named("c", 3)));
        assert!(reload_if_different(&store, &second)
            .await
            .unwrap()
            .is_none());

        // An earlier version's update: document and generation, not the row's generation.
        let mut conn: sqlx::SqliteConnection = sqlx::Connection::connect(&url).await.unwrap();
        let doc = serde_json::to_string(&named("c", 30)).unwrap();
        sqlx::query("UPDATE rules SET doc = $1, version = version + 1 WHERE id = 'c'")
            .bind(doc)
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("UPDATE id_sequences SET value = value + 1 WHERE name = 'rules_generation'")
            .execute(&mut conn)
            .await
            .unwrap();
        let third = catch_up(&store, &second).await.unwrap();
        assert_eq!(
            third.index.get("c"),
            Some(&named("c", 3)),
            "not readable as a change"
        );
        let repaired = reload_if_different(&store, &third).await.unwrap().unwrap();
        assert_eq!(repaired.generation, third.generation);
        assert_eq!(repaired.index.get("c"), Some(&named("c", 30)));
    }

    #[test]
    fn the_key_part_follows_expression_and_threshold() {
        let part = |r: rule_engine::Rule| {
            let set = RuleSet::new(RuleIndex::from_rules([r]), 1);
            // The index's own Arc, as evaluation hands it over, and a look-alike.
            let id = Arc::clone(set.index.compiled().next().unwrap().id());
            let by_text = set.state_key_part(&Arc::from("r1"));
            let part = set.state_key_part(&id);
            assert_eq!(part, by_text);
            part.to_string()
        };
        let base = part(rule(50, serde_json::json!({"count": 3})));
        // 10,000 aligned addresses (a table of 16,384 buckets): spread, not in 1 of 16.
        let bucket = |addr: usize| {
            let mut h = AddressHasher::default();
            h.write_usize(addr);
            h.finish() & 0x3fff
        };
        let buckets: std::collections::HashSet<u64> =
            (0..10_000).map(|i| bucket(0x7f00_0000 + 16 * i)).collect();
        assert!(buckets.len() > 5000, "{} buckets", buckets.len());
        assert!(base.starts_with("r1:"), "{base}");
        assert_eq!(base, part(rule(50, serde_json::json!({"count": 3}))));
        assert_ne!(base, part(rule(51, serde_json::json!({"count": 3}))));
        assert_ne!(base, part(rule(50, serde_json::json!({"count": 4}))));
    }
}
