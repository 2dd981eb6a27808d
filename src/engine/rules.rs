//! Keeps the rule index current: rebuilt from the store whenever the store's rule generation
//! moves (a write through this replica or another), published through a `watch` channel.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rule_engine::RuleIndex;
use tokio::sync::{watch, Notify};

use crate::store::RuleStore;

/// What the pipeline evaluates against: an immutable index, swapped whole on every change so
/// evaluation never waits for a rebuild.
#[derive(Debug, Default)]
pub struct RuleSet {
    pub index: RuleIndex,
    pub generation: i64,
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
            key_parts: OnceLock::new(),
        }
    }

    /// `<rule id>:<epoch>` of the rule whose id `Arc` the evaluation handed over; the epoch
    /// changes when the rule's expression or threshold does.
    pub fn state_key_part(&self, id: &Arc<str>) -> Arc<str> {
        let parts = self.key_parts.get_or_init(|| {
            self.index
                .compiled()
                .map(|r| {
                    let part = format!("{}:{}", r.id(), super::redis_state::rule_epoch(r.rule()));
                    (address(r.id()), Arc::from(part))
                })
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

/// Loads every rule and builds the index.
pub async fn load(store: &RuleStore) -> Result<RuleSet, crate::store::StoreError> {
    // Read the generation first: a write racing with the list then shows up as a newer
    // generation on the next poll, never as a change we believe we have.
    let generation = store.rules_generation().await?;
    let rules = store.list().await?;
    let started = Instant::now();
    let index = RuleIndex::from_rules(rules.into_iter().map(|v| v.rule));
    metrics::histogram!("ccstream_rules_index_build_seconds")
        .record(started.elapsed().as_secs_f64());
    metrics::gauge!("ccstream_rules_loaded").set(index.len() as f64);
    // Tests and operators compare this across replicas; the histogram's count is no substitute
    // (its samples are folded in asynchronously by the exporter).
    metrics::gauge!("ccstream_rules_generation").set(generation as f64);
    Ok(RuleSet::new(index, generation))
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
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = changed.notified() => {}
            () = tx.closed() => return,
        }
        let current = tx.borrow().generation;
        match store.rules_generation().await {
            Ok(g) if g == current => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the rule generation; keeping the current rules");
                continue;
            }
        }
        match load(&store).await {
            Ok(set) => {
                tracing::info!(
                    rules = set.index.len(),
                    generation = set.generation,
                    "rules reloaded"
                );
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
