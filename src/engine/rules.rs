//! Keeps the rule index current: rebuilt from the store whenever the store's rule generation
//! moves (a write through this replica or another), published through a `watch` channel.

use std::collections::HashMap;
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
    /// Rule id → [`super::redis_state::rule_epoch`], computed on first use (Redis state only).
    epochs: OnceLock<HashMap<String, String>>,
}

impl RuleSet {
    pub fn new(index: RuleIndex, generation: i64) -> Self {
        RuleSet {
            index,
            generation,
            epochs: OnceLock::new(),
        }
    }

    /// The epoch of a rule's threshold state: it changes when the rule's expression or
    /// threshold does. Empty for an unknown rule.
    pub fn state_epoch(&self, id: &str) -> String {
        let epochs = self.epochs.get_or_init(|| {
            self.index
                .rules()
                .map(|r| (r.id.clone(), super::redis_state::rule_epoch(r)))
                .collect()
        });
        epochs.get(id).cloned().unwrap_or_default()
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
