//! Local threshold state across restarts (`engine.state = "local"`): saved to the store every
//! `engine.state_save_secs` and at shutdown, under the replica's MQTT client id, and loaded at
//! start. So a single replica's rollout keeps its runs and intervals; a crash loses at most the
//! last period's changes (use `state = "redis"` where that matters).
//!
//! Each key is saved with the epoch of its rule (expression and threshold, as in Redis): a key
//! whose rule was removed or changed while the replica was down is not restored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rule_engine::{SavedKey, ThresholdState};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::redis_state::rule_epoch;
use super::rules::RuleSet;
use crate::store::RuleStore;

#[derive(Debug, Serialize, Deserialize)]
struct Document {
    /// Rule id → its epoch when the state was saved.
    epochs: HashMap<String, String>,
    keys: Vec<SavedKey>,
}

/// The state saved for `owner`, restored against `rules`, in a state of `max_keys`.
pub async fn load(
    store: &RuleStore,
    owner: &str,
    rules: &RuleSet,
    max_keys: usize,
) -> ThresholdState {
    let mut state = ThresholdState::with_max_keys(max_keys);
    let doc = match store.load_threshold_state(owner).await {
        Ok(Some(doc)) => doc,
        Ok(None) => return state,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the saved threshold state; starting empty");
            return state;
        }
    };
    let doc: Document = match serde_json::from_str(&doc) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable saved threshold state; starting empty");
            return state;
        }
    };
    let saved = doc.keys.len();
    // The rules whose expression and threshold are what they were when the state was saved,
    // by id, with the index's own id `Arc`s: decided once per rule, not once per key.
    let unchanged: HashMap<&str, &Arc<str>> = rules
        .index
        .compiled()
        .filter(|r| doc.epochs.get(r.id().as_ref()) == Some(&rule_epoch(r.rule())))
        .map(|r| (r.id().as_ref(), r.id()))
        .collect();
    let restored = state.restore(doc.keys, |rule| {
        unchanged.get(rule).map(|id| Arc::clone(id))
    });
    tracing::info!(saved, restored, "threshold state restored");
    state
}

fn document(state: &ThresholdState, rules: &RuleSet) -> String {
    let keys = state.export();
    let mut epochs = HashMap::new();
    for key in &keys {
        if !epochs.contains_key(&key.rule) {
            epochs.insert(key.rule.clone(), rules.state_epoch(&key.rule));
        }
    }
    serde_json::to_string(&Document { epochs, keys }).unwrap_or_default()
}

/// Saves the state periodically without making the pipeline wait, and once more at the end.
pub struct Saver {
    store: RuleStore,
    owner: String,
    every: Duration,
    last: Instant,
    running: Option<JoinHandle<()>>,
}

impl Saver {
    pub fn new(store: RuleStore, owner: String, every: Duration) -> Self {
        Saver {
            store,
            owner,
            every,
            last: Instant::now(),
            running: None,
        }
    }

    /// Starts a save in the background when the period has passed and the last one is done.
    pub fn tick(&mut self, state: &ThresholdState, rules: &RuleSet) {
        if self.last.elapsed() < self.every
            || self.running.as_ref().is_some_and(|t| !t.is_finished())
        {
            return;
        }
        self.last = Instant::now();
        let doc = document(state, rules);
        let (store, owner) = (self.store.clone(), self.owner.clone());
        self.running = Some(tokio::spawn(async move {
            save(&store, &owner, &doc).await;
        }));
    }

    /// Saves now and waits for it (shutdown).
    pub async fn finish(&mut self, state: &ThresholdState, rules: &RuleSet) {
        if let Some(running) = self.running.take() {
            let _ = running.await;
        }
        save(&self.store, &self.owner, &document(state, rules)).await;
        tracing::info!(keys = state.len(), "threshold state saved");
    }
}

async fn save(store: &RuleStore, owner: &str, doc: &str) {
    if let Err(e) = store.save_threshold_state(owner, doc).await {
        metrics::counter!("ccstream_threshold_state_save_errors_total").increment(1);
        tracing::warn!(error = %e, "cannot save the threshold state");
    }
}
