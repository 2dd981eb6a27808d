//! Local threshold state across restarts (`engine.state = "local"`): saved to the store every
//! `engine.state_save_secs` and at shutdown, under the replica's MQTT client id, and loaded at
//! start. So a single replica's rollout keeps its runs and intervals; a crash loses at most the
//! last period's changes (use `state = "redis"` where that matters).
//!
//! With several workers ([`super::dispatch`]) each saves its shard into one document, which is
//! shared out again at the next start by the thing names (whatever the number of workers then).
//!
//! Each key is saved with the epoch of its rule (expression and threshold, as in Redis): a key
//! whose rule was removed or changed while the replica was down is not restored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rule_engine::{SavedKey, ThresholdState};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::dispatch::Router;
use super::redis_state::rule_epoch;
use super::rules::RuleSet;
use crate::store::RuleStore;

#[derive(Debug, Serialize, Deserialize)]
struct Document {
    /// Rule id → its epoch when the state was saved.
    epochs: HashMap<String, String>,
    keys: Vec<SavedKey>,
}

/// The state saved for `owner`, restored against `rules` and shared out to the workers that
/// own the things ([`Router`]), each shard holding at most its share of `max_keys`.
pub async fn load(
    store: &RuleStore,
    owner: &str,
    rules: &RuleSet,
    max_keys: usize,
    router: &Router,
) -> Vec<ThresholdState> {
    let shard_keys = max_keys.div_ceil(router.workers());
    let mut shards: Vec<ThresholdState> = (0..router.workers())
        .map(|_| ThresholdState::with_max_keys(shard_keys))
        .collect();
    let doc = match store.load_threshold_state(owner).await {
        Ok(Some(doc)) => doc,
        Ok(None) => return shards,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the saved threshold state; starting empty");
            return shards;
        }
    };
    let doc: Document = match serde_json::from_str(&doc) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable saved threshold state; starting empty");
            return shards;
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
    let mut by_shard: Vec<Vec<SavedKey>> = vec![Vec::new(); shards.len()];
    for key in doc.keys {
        by_shard[router.worker_of(&key.thing)].push(key);
    }
    let mut restored = 0;
    for (state, keys) in shards.iter_mut().zip(by_shard) {
        restored += state.restore(keys, |rule| unchanged.get(rule).map(|id| Arc::clone(id)));
    }
    tracing::info!(saved, restored, "threshold state restored");
    shards
}

/// One worker's keys, with the epochs of their rules in the rule set it evaluated with.
#[derive(Debug, Default)]
struct Part {
    /// [`RuleSet::serial`]: a later set has a larger one.
    serial: u64,
    epochs: HashMap<String, String>,
    keys: Vec<SavedKey>,
}

fn part(state: &ThresholdState, rules: &RuleSet) -> Part {
    let keys = state.export();
    let mut epochs = HashMap::new();
    for key in &keys {
        if !epochs.contains_key(&key.rule) {
            epochs.insert(key.rule.clone(), rules.state_epoch(&key.rule));
        }
    }
    Part {
        serial: rules.serial,
        epochs,
        keys,
    }
}

/// The document of every worker's latest part. Parts taken across a rule change may give a rule
/// two epochs: the one of the latest rule set stands, and keys saved under the other are left
/// out (a changed rule's keys are not restored anyway).
fn document(parts: &[Part]) -> String {
    let mut newest_first: Vec<&Part> = parts.iter().collect();
    newest_first.sort_by_key(|p| std::cmp::Reverse(p.serial));
    let mut epochs: HashMap<String, String> = HashMap::new();
    for part in newest_first {
        for (rule, epoch) in &part.epochs {
            if !epochs.contains_key(rule) {
                epochs.insert(rule.clone(), epoch.clone());
            }
        }
    }
    let keys = parts
        .iter()
        .flat_map(|part| {
            part.keys
                .iter()
                .filter(|key| part.epochs.get(&key.rule) == epochs.get(&key.rule))
                .cloned()
        })
        .collect();
    serde_json::to_string(&Document { epochs, keys }).unwrap_or_default()
}

/// Saves the state periodically without making the workers wait, and once more at the end.
/// Each worker has one, for its shard; they save one document together, under the owner.
pub struct Saver {
    shared: Arc<Mutex<Shared>>,
    shard: usize,
    every: Duration,
    last: Instant,
}

/// What the workers' savers share: each one's latest part, and the save in progress.
struct Shared {
    store: RuleStore,
    owner: String,
    parts: Vec<Part>,
    last_save: Instant,
    running: Option<JoinHandle<()>>,
    finished: usize,
}

impl Saver {
    /// One saver per worker, for the `shards` [`load`] gave them: until a worker hands its
    /// shard in, what it loaded is saved for it.
    pub fn for_workers(
        store: RuleStore,
        owner: String,
        every: Duration,
        shards: &[ThresholdState],
        rules: &RuleSet,
    ) -> Vec<Saver> {
        let now = Instant::now();
        let workers = shards.len();
        let shared = Arc::new(Mutex::new(Shared {
            store,
            owner,
            parts: shards.iter().map(|shard| part(shard, rules)).collect(),
            last_save: now,
            running: None,
            finished: 0,
        }));
        (0..workers)
            .map(|shard| Saver {
                shared: Arc::clone(&shared),
                shard,
                every,
                last: now,
            })
            .collect()
    }

    fn shared(&self) -> MutexGuard<'_, Shared> {
        // Every step leaves `Shared` whole; a panic elsewhere does not spoil it.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Once a period: hands this worker's shard in, and starts a save in the background when
    /// the period has passed since the last one and that one is done.
    pub fn tick(&mut self, state: &ThresholdState, rules: &RuleSet) {
        if self.last.elapsed() < self.every {
            return;
        }
        self.last = Instant::now();
        let part = part(state, rules);
        let mut shared = self.shared();
        shared.parts[self.shard] = part;
        if shared.last_save.elapsed() < self.every
            || shared.running.as_ref().is_some_and(|t| !t.is_finished())
        {
            return;
        }
        shared.last_save = Instant::now();
        let doc = document(&shared.parts);
        let (store, owner) = (shared.store.clone(), shared.owner.clone());
        shared.running = Some(tokio::spawn(async move {
            save(&store, &owner, &doc).await;
        }));
    }

    /// Hands the final shard in; the last worker to finish saves the document and waits for it
    /// (shutdown).
    pub async fn finish(&mut self, state: &ThresholdState, rules: &RuleSet) {
        let part = part(state, rules);
        let (running, save_now) = {
            let mut shared = self.shared();
            shared.parts[self.shard] = part;
            shared.finished += 1;
            if shared.finished < shared.parts.len() {
                return;
            }
            let doc = document(&shared.parts);
            let keys: usize = shared.parts.iter().map(|p| p.keys.len()).sum();
            (
                shared.running.take(),
                (shared.store.clone(), shared.owner.clone(), doc, keys),
            )
        };
        if let Some(running) = running {
            let _ = running.await;
        }
        let (store, owner, doc, keys) = save_now;
        save(&store, &owner, &doc).await;
        tracing::info!(keys, "threshold state saved");
    }
}

async fn save(store: &RuleStore, owner: &str, doc: &str) {
    if let Err(e) = store.save_threshold_state(owner, doc).await {
        metrics::counter!("ccstream_threshold_state_save_errors_total").increment(1);
        tracing::warn!(error = %e, "cannot save the threshold state");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rule_engine::threshold::ResourcePath;
    use rule_engine::RuleIndex;

    fn count3() -> rule_engine::Rule {
        serde_json::from_value(serde_json::json!({
            "id": "count3", "name": "count3", "enabled": true,
            "filter": {"domain": "root", "thingType": "Pump"},
            "expression": {"operator": "gt", "resource": "temp", "value": 50},
            "threshold": {"count": 3},
            "actions": []
        }))
        .expect("valid rule")
    }

    fn key(thing: &str) -> SavedKey {
        SavedKey {
            rule: "count3".into(),
            thing: thing.into(),
            path: "temp".into(),
            run: 2,
            quiet_until: 0,
        }
    }

    fn part_of(serial: u64, epoch: &str, things: &[&str]) -> Part {
        Part {
            serial,
            epochs: HashMap::from([("count3".to_owned(), epoch.to_owned())]),
            keys: things.iter().map(|t| key(t)).collect(),
        }
    }

    #[test]
    fn the_latest_rule_sets_epoch_decides_which_keys_are_saved() {
        // Worker 1 handed its part in after the rule changed, worker 0 before.
        let parts = [part_of(7, "old", &["a"]), part_of(9, "new", &["b"])];
        let doc: Document = serde_json::from_str(&document(&parts)).expect("json");
        assert_eq!(doc.epochs["count3"], "new");
        let things: Vec<&str> = doc.keys.iter().map(|k| k.thing.as_str()).collect();
        assert_eq!(things, ["b"]);
    }

    /// The first periodic save, by whichever worker comes first, carries what the others
    /// loaded: it replaces the whole saved document.
    #[tokio::test]
    async fn a_workers_first_save_keeps_what_the_others_loaded() {
        let store = RuleStore::connect("sqlite::memory:").await.expect("store");
        let rules = RuleSet::new(RuleIndex::from_rules([count3()]), 1);
        let rule = rules.index.compiled().next().expect("rule");
        let mut shards = vec![ThresholdState::new(), ThresholdState::new()];
        let path = ResourcePath::thing("temp");
        shards[1].on_match(rule.id(), rule.throttle(), "t1", path, 0);
        let mut savers = Saver::for_workers(
            store.clone(),
            "owner".into(),
            Duration::ZERO,
            &shards,
            &rules,
        );
        savers[0].tick(&shards[0], &rules);
        let deadline = Instant::now() + Duration::from_secs(10);
        let doc = loop {
            if let Some(doc) = store.load_threshold_state("owner").await.expect("load") {
                break doc;
            }
            assert!(Instant::now() < deadline, "nothing saved");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let doc: Document = serde_json::from_str(&doc).expect("json");
        let things: Vec<&str> = doc.keys.iter().map(|k| k.thing.as_str()).collect();
        assert_eq!(things, ["t1"]);
    }
}
