//! Threshold state (spec 6.1 `threshold`, DESIGN.md Semantics: Threshold), kept per
//! (rule id, thing name, resource path).
//!
//! - `count`: the actions run when the expression has matched `count` times in a row (0 and 1:
//!   every match). A non-match resets the run. Firing also resets it, so a condition that holds
//!   fires every `count`-th observation: the threshold throttles ("the minimum number of times
//!   that the rule must trigger before it actually calls the actions"), it does not only delay
//!   the first firing.
//! - `interval`: after a firing, the key does not fire again until `interval` ms have passed.
//!
//! **Matches during the interval count toward the run.** The run answers "has the condition
//! held for `count` observations in a row?", and the interval does not change whether it held.
//! So a condition that keeps holding fires on the first match after the interval instead of
//! `count - 1` observations later; a non-match during the interval still resets the run. The run
//! stops growing at `count` while it waits (no overflow, no burst of firings afterwards).
//!
//! **Only informative keys are stored.** A rule without a threshold stores nothing. A key is
//! dropped as soon as its run is 0 and its interval has passed, so state exists only for runs in
//! progress and intervals still running.
//!
//! **Bound.** At most [`ThresholdState::max_keys`] keys (default
//! [`ThresholdState::DEFAULT_MAX_KEYS`], 1,000,000). A key costs about 100 bytes plus its path and
//! its share of the thing's name, so the default bounds the state to roughly 150 MB. When full,
//! keys that carry no information any more are swept (at most once a second of `now_ms`); if
//! it is still full, a new key is refused and the match answers [`Decision::StateFull`]: the
//! actions do not run. Failing closed keeps the promise "never more often than the threshold
//! says"; the caller counts it so the operator sees it.
//!
//! **Cores.** Keys are grouped by thing name first, so the state shards by thing: N workers can
//! each own a `ThresholdState` for the things hashing to them (or N `Mutex`es), and no key ever
//! spans two shards. `forget_thing` touches one shard; `forget_rule` visits every key (rules
//! change rarely).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::rule::Threshold;

/// Where an evaluation takes its threshold decisions from: [`ThresholdState`] in this process,
/// or [`crate::deferred`]'s recorder and replay when a shared store decides them.
pub trait Thresholds {
    /// The expression of `rule` matched for `thing`'s resource `path` at `now_ms`.
    fn on_match(
        &mut self,
        rule: &Arc<str>,
        throttle: Throttle,
        thing: &str,
        path: ResourcePath<'_>,
        now_ms: u64,
    ) -> Decision;

    /// The expression of `rule`, whose threshold counts runs, did not match.
    fn on_miss(&mut self, rule: &Arc<str>, thing: &str, path: ResourcePath<'_>, now_ms: u64);
}

impl Thresholds for ThresholdState {
    fn on_match(
        &mut self,
        rule: &Arc<str>,
        throttle: Throttle,
        thing: &str,
        path: ResourcePath<'_>,
        now_ms: u64,
    ) -> Decision {
        ThresholdState::on_match(self, rule, throttle, thing, path, now_ms)
    }

    fn on_miss(&mut self, rule: &Arc<str>, thing: &str, path: ResourcePath<'_>, now_ms: u64) {
        ThresholdState::on_miss(self, rule, thing, path, now_ms)
    }
}

/// A rule's threshold, normalized: `count` ≥ 1, `interval` in ms (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    pub count: u64,
    pub interval: u64,
}

impl Throttle {
    pub const NONE: Throttle = Throttle {
        count: 1,
        interval: 0,
    };

    /// `count` matches in a row (0 counts as 1), at most one firing per `interval` ms.
    pub const fn new(count: u64, interval: u64) -> Throttle {
        Throttle {
            count: if count == 0 { 1 } else { count },
            interval,
        }
    }

    /// Whether this threshold needs any state (a rule without one fires on every match).
    pub fn is_stateful(self) -> bool {
        self.count > 1 || self.interval > 0
    }

    /// Whether a non-match can change the state (only a run in progress can be reset).
    pub fn counts_runs(self) -> bool {
        self.count > 1
    }
}

impl From<Option<Threshold>> for Throttle {
    fn from(t: Option<Threshold>) -> Self {
        let t = t.unwrap_or_default();
        Throttle::new(t.count.unwrap_or(0), t.interval.unwrap_or(0))
    }
}

/// The resource a key is about: `temp` on the thing or `sub1.temp` on a sub thing. Compared
/// against stored keys without building the string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourcePath<'x> {
    /// The sub thing's id, for sub thing resources.
    pub sub: Option<&'x str>,
    pub name: &'x str,
}

impl<'x> ResourcePath<'x> {
    /// A resource of the thing itself.
    pub const fn thing(name: &'x str) -> Self {
        ResourcePath { sub: None, name }
    }

    /// `temp` or `sub1.temp`, as [`fmt::Display`] writes it.
    pub fn parse(path: &'x str) -> Self {
        match path.split_once('.') {
            Some((sub, name)) => ResourcePath {
                sub: Some(sub),
                name,
            },
            None => ResourcePath::thing(path),
        }
    }

    fn is(&self, path: &str) -> bool {
        match self.sub {
            None => path == self.name,
            Some(sub) => {
                path.len() == sub.len() + 1 + self.name.len()
                    && path.starts_with(sub)
                    && path.as_bytes()[sub.len()] == b'.'
                    && path.ends_with(self.name)
            }
        }
    }
}

impl fmt::Display for ResourcePath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.sub {
            None => f.write_str(self.name),
            Some(sub) => write!(f, "{sub}.{}", self.name),
        }
    }
}

/// What a match leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run the actions.
    Fire,
    /// The run has not reached `count` yet.
    Counting,
    /// The run reached `count` but the interval since the last firing has not passed.
    Throttled,
    /// The state is full and this key could not be stored; the actions do not run.
    StateFull,
}

/// One key of the state as saved across a restart.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedKey {
    pub rule: String,
    pub thing: String,
    pub path: String,
    pub run: u64,
    pub quiet_until: u64,
}

#[derive(Debug, Clone)]
struct Slot {
    rule: Arc<str>,
    path: Box<str>,
    /// Matches in a row, at most `count`.
    run: u64,
    /// No firing before this time (ms); 0 when no interval is running.
    quiet_until: u64,
}

impl Slot {
    fn is_idle(&self, now_ms: u64) -> bool {
        self.run == 0 && self.quiet_until <= now_ms
    }
}

/// Threshold state of one evaluator (or of one shard of things, see the module docs).
#[derive(Debug, Clone)]
pub struct ThresholdState {
    things: HashMap<Box<str>, Vec<Slot>>,
    keys: usize,
    max_keys: usize,
    next_sweep_ms: u64,
}

impl Default for ThresholdState {
    fn default() -> Self {
        Self::new()
    }
}

impl ThresholdState {
    pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

    pub fn new() -> Self {
        Self::with_max_keys(Self::DEFAULT_MAX_KEYS)
    }

    pub fn with_max_keys(max_keys: usize) -> Self {
        ThresholdState {
            things: HashMap::new(),
            keys: 0,
            max_keys,
            next_sweep_ms: 0,
        }
    }

    /// Number of keys stored.
    pub fn len(&self) -> usize {
        self.keys
    }

    pub fn is_empty(&self) -> bool {
        self.keys == 0
    }

    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// The expression of `rule` matched for `thing`'s resource `path` at `now_ms`.
    pub fn on_match(
        &mut self,
        rule: &Arc<str>,
        throttle: Throttle,
        thing: &str,
        path: ResourcePath<'_>,
        now_ms: u64,
    ) -> Decision {
        if !throttle.is_stateful() {
            return Decision::Fire;
        }
        let count = throttle.count.max(1);
        if let Some(slots) = self.things.get_mut(thing) {
            if let Some(i) = find(slots, rule, path) {
                let slot = &mut slots[i];
                slot.run = (slot.run + 1).min(count);
                if slot.run < count {
                    return Decision::Counting;
                }
                if now_ms < slot.quiet_until {
                    return Decision::Throttled;
                }
                slot.run = 0;
                slot.quiet_until = quiet_until(now_ms, throttle.interval);
                if slot.is_idle(now_ms) {
                    slots.swap_remove(i);
                    self.keys -= 1;
                    if slots.is_empty() {
                        self.things.remove(thing);
                    }
                }
                return Decision::Fire;
            }
        }
        // A new key: this match is the first of its run.
        let (slot, decision) = if count > 1 {
            let slot = Slot {
                rule: Arc::clone(rule),
                path: path.to_string().into_boxed_str(),
                run: 1,
                quiet_until: 0,
            };
            (slot, Decision::Counting)
        } else {
            let slot = Slot {
                rule: Arc::clone(rule),
                path: path.to_string().into_boxed_str(),
                run: 0,
                quiet_until: quiet_until(now_ms, throttle.interval),
            };
            (slot, Decision::Fire)
        };
        if !self.make_room(now_ms) {
            return Decision::StateFull;
        }
        self.things.entry(thing.into()).or_default().push(slot);
        self.keys += 1;
        decision
    }

    /// The expression of `rule` did not match for `thing`'s resource `path`: the run restarts.
    /// Cheap when there is nothing to reset (the common case).
    pub fn on_miss(&mut self, rule: &str, thing: &str, path: ResourcePath<'_>, now_ms: u64) {
        if self.keys == 0 {
            return;
        }
        let Some(slots) = self.things.get_mut(thing) else {
            return;
        };
        let Some(i) = find(slots, rule, path) else {
            return;
        };
        slots[i].run = 0;
        if slots[i].is_idle(now_ms) {
            slots.swap_remove(i);
            self.keys -= 1;
            if slots.is_empty() {
                self.things.remove(thing);
            }
        }
    }

    /// Drops every key of a removed (or changed) rule; returns how many. Call it on every rule
    /// update too: a run counted under the old expression says nothing about the new one.
    pub fn forget_rule(&mut self, rule: &str) -> usize {
        self.forget_rules(|r| r == rule)
    }

    /// Drops every key of the rules for which `gone` says so, in one pass over the state
    /// however many rules a batch of changes names; returns how many keys.
    pub fn forget_rules(&mut self, gone: impl Fn(&str) -> bool) -> usize {
        if self.keys == 0 {
            return 0;
        }
        self.retain(|slot| !gone(&slot.rule))
    }

    /// Drops every key of a removed thing; returns how many.
    pub fn forget_thing(&mut self, thing: &str) -> usize {
        let removed = self.things.remove(thing).map_or(0, |slots| slots.len());
        self.keys -= removed;
        removed
    }

    /// Every key, for saving the state across a restart.
    pub fn export(&self) -> Vec<SavedKey> {
        let mut out = Vec::with_capacity(self.keys);
        for (thing, slots) in &self.things {
            for slot in slots {
                out.push(SavedKey {
                    rule: slot.rule.to_string(),
                    thing: thing.to_string(),
                    path: slot.path.to_string(),
                    run: slot.run,
                    quiet_until: slot.quiet_until,
                });
            }
        }
        out
    }

    /// Adds saved keys (see [`ThresholdState::export`]); `rule_id` gives the id as the rule
    /// index holds it (so keys share it), `None` for a key to drop (its rule is gone or
    /// changed). Keys beyond [`ThresholdState::max_keys`] are dropped. Returns how many were
    /// restored.
    pub fn restore(
        &mut self,
        keys: impl IntoIterator<Item = SavedKey>,
        mut rule_id: impl FnMut(&str) -> Option<Arc<str>>,
    ) -> usize {
        let mut restored = 0;
        for key in keys {
            if self.keys >= self.max_keys {
                break;
            }
            let Some(rule) = rule_id(&key.rule) else {
                continue;
            };
            let slots = self.things.entry(key.thing.into_boxed_str()).or_default();
            if slots.iter().any(|s| s.rule == rule && *s.path == *key.path) {
                continue;
            }
            slots.push(Slot {
                rule,
                path: key.path.into_boxed_str(),
                run: key.run,
                quiet_until: key.quiet_until,
            });
            self.keys += 1;
            restored += 1;
        }
        restored
    }

    /// Drops keys that carry no information any more at `now_ms`; returns how many.
    pub fn sweep(&mut self, now_ms: u64) -> usize {
        self.retain(|slot| !slot.is_idle(now_ms))
    }

    fn retain(&mut self, mut keep: impl FnMut(&Slot) -> bool) -> usize {
        let before = self.keys;
        self.things.retain(|_, slots| {
            slots.retain(&mut keep);
            !slots.is_empty()
        });
        self.keys = self.things.values().map(Vec::len).sum();
        before - self.keys
    }

    fn make_room(&mut self, now_ms: u64) -> bool {
        if self.keys < self.max_keys {
            return true;
        }
        // Sweeping is O(keys); doing it at most once a second keeps a full table from turning
        // every new key into a full scan.
        if now_ms >= self.next_sweep_ms {
            self.next_sweep_ms = now_ms.saturating_add(1000);
            self.sweep(now_ms);
        }
        self.keys < self.max_keys
    }
}

fn quiet_until(now_ms: u64, interval: u64) -> u64 {
    if interval == 0 {
        0
    } else {
        now_ms.saturating_add(interval)
    }
}

fn find(slots: &[Slot], rule: &str, path: ResourcePath<'_>) -> Option<usize> {
    slots
        .iter()
        .position(|s| &*s.rule == rule && path.is(&s.path))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TEMP: ResourcePath<'static> = ResourcePath::thing("temp");

    fn throttle(count: u64, interval: u64) -> Throttle {
        Throttle::new(count, interval)
    }

    fn rule(id: &str) -> Arc<str> {
        Arc::from(id)
    }

    #[test]
    fn no_threshold_fires_every_match_and_stores_nothing() {
        let mut st = ThresholdState::new();
        let r = rule("r");
        for t in [Throttle::from(None), throttle(0, 0), throttle(1, 0)] {
            for now in 0..3 {
                assert_eq!(st.on_match(&r, t, "a", TEMP, now), Decision::Fire);
            }
        }
        assert!(st.is_empty());
    }

    #[test]
    fn count_needs_matches_in_a_row_and_restarts_after_firing() {
        let mut st = ThresholdState::new();
        let r = rule("r");
        let t = throttle(3, 0);
        let d: Vec<Decision> = (0..7).map(|n| st.on_match(&r, t, "a", TEMP, n)).collect();
        use Decision::*;
        assert_eq!(
            d,
            [Counting, Counting, Fire, Counting, Counting, Fire, Counting]
        );
    }

    #[test]
    fn a_non_match_resets_the_run() {
        let mut st = ThresholdState::new();
        let r = rule("r");
        let t = throttle(2, 0);
        assert_eq!(st.on_match(&r, t, "a", TEMP, 0), Decision::Counting);
        st.on_miss(&r, "a", TEMP, 1);
        assert!(st.is_empty(), "an idle key is dropped");
        assert_eq!(st.on_match(&r, t, "a", TEMP, 2), Decision::Counting);
        assert_eq!(st.on_match(&r, t, "a", TEMP, 3), Decision::Fire);
    }

    #[test]
    fn interval_throttles_until_it_has_passed() {
        let mut st = ThresholdState::new();
        let r = rule("r");
        let t = throttle(0, 1000);
        assert_eq!(st.on_match(&r, t, "a", TEMP, 10_000), Decision::Fire);
        assert_eq!(st.on_match(&r, t, "a", TEMP, 10_500), Decision::Throttled);
        assert_eq!(st.on_match(&r, t, "a", TEMP, 10_999), Decision::Throttled);
        assert_eq!(st.on_match(&r, t, "a", TEMP, 11_000), Decision::Fire);
        // After the interval, with no match, the key disappears.
        assert_eq!(st.sweep(12_000), 1);
        assert!(st.is_empty());
    }

    #[test]
    fn matches_during_the_interval_count_toward_the_run() {
        let mut st = ThresholdState::new();
        let r = rule("r");
        let t = throttle(3, 1000);
        use Decision::*;
        let at = |st: &mut ThresholdState, now| st.on_match(&r, t, "a", TEMP, now);
        assert_eq!(at(&mut st, 0), Counting);
        assert_eq!(at(&mut st, 1), Counting);
        assert_eq!(at(&mut st, 2), Fire);
        // Three more matches inside the interval: the run reaches count and waits there.
        assert_eq!(at(&mut st, 100), Counting);
        assert_eq!(at(&mut st, 200), Counting);
        assert_eq!(at(&mut st, 300), Throttled);
        assert_eq!(at(&mut st, 400), Throttled);
        // The condition held throughout, so the first match after the interval fires.
        assert_eq!(at(&mut st, 1002), Fire);
        // A non-match during the interval resets the run, as anywhere else.
        assert_eq!(at(&mut st, 1100), Counting);
        st.on_miss(&r, "a", TEMP, 1200);
        assert_eq!(at(&mut st, 2100), Counting);
        assert_eq!(at(&mut st, 2200), Counting);
        assert_eq!(at(&mut st, 2300), Fire);
    }

    #[test]
    fn keys_are_per_rule_thing_and_path() {
        let mut st = ThresholdState::new();
        let (r1, r2) = (rule("r1"), rule("r2"));
        let t = throttle(2, 0);
        let sub1 = ResourcePath {
            sub: Some("sub1"),
            name: "temp",
        };
        let sub2 = ResourcePath {
            sub: Some("sub2"),
            name: "temp",
        };
        assert_eq!(st.on_match(&r1, t, "a", TEMP, 0), Decision::Counting);
        assert_eq!(st.on_match(&r2, t, "a", TEMP, 0), Decision::Counting);
        assert_eq!(st.on_match(&r1, t, "b", TEMP, 0), Decision::Counting);
        assert_eq!(st.on_match(&r1, t, "a", sub1, 0), Decision::Counting);
        assert_eq!(st.on_match(&r1, t, "a", sub2, 0), Decision::Counting);
        assert_eq!(st.len(), 5);
        assert_eq!(st.on_match(&r1, t, "a", sub1, 1), Decision::Fire);
        assert_eq!(st.len(), 4);
        // `sub1.temp` as a path is not the thing resource `sub1.temp`... nor `sub1`'s `temp`
        // of another sub thing.
        assert!(!sub2.is("sub1.temp"));
        assert!(sub1.is("sub1.temp"));
        assert!(!TEMP.is("sub1.temp"));
        assert_eq!(sub1.to_string(), "sub1.temp");
    }

    #[test]
    fn forgetting_rules_and_things() {
        let mut st = ThresholdState::new();
        let (r1, r2) = (rule("r1"), rule("r2"));
        let t = throttle(5, 0);
        for thing in ["a", "b", "c"] {
            st.on_match(&r1, t, thing, TEMP, 0);
            st.on_match(&r2, t, thing, TEMP, 0);
        }
        assert_eq!(st.len(), 6);
        assert_eq!(st.forget_rule("r1"), 3);
        assert_eq!(st.forget_thing("b"), 1);
        assert_eq!(st.forget_thing("nope"), 0);
        assert_eq!(st.len(), 2);
        // A forgotten key starts a fresh run.
        st.forget_thing("a");
        assert_eq!(st.on_match(&r2, t, "a", TEMP, 1), Decision::Counting);
    }

    #[test]
    fn full_state_sweeps_then_refuses() {
        let mut st = ThresholdState::with_max_keys(2);
        let r = rule("r");
        let t = throttle(0, 100);
        assert_eq!(st.on_match(&r, t, "a", TEMP, 0), Decision::Fire);
        assert_eq!(st.on_match(&r, t, "b", TEMP, 0), Decision::Fire);
        assert_eq!(st.on_match(&r, t, "c", TEMP, 50), Decision::StateFull);
        assert_eq!(st.len(), 2);
        // Once the intervals have passed, a sweep frees their keys.
        assert_eq!(st.on_match(&r, t, "c", TEMP, 5000), Decision::Fire);
        assert_eq!(st.len(), 1);
    }

    #[test]
    fn time_never_overflows() {
        let mut st = ThresholdState::new();
        let r = rule("r");
        let t = throttle(0, u64::MAX);
        assert_eq!(st.on_match(&r, t, "a", TEMP, u64::MAX - 10), Decision::Fire);
        assert_eq!(
            st.on_match(&r, t, "a", TEMP, u64::MAX - 5),
            Decision::Throttled
        );
    }

    #[test]
    fn exported_keys_restore_the_same_decisions() {
        let (r, other) = (rule("r"), rule("gone"));
        let mut before = ThresholdState::new();
        before.on_match(&r, throttle(3, 0), "t1", TEMP, 0);
        before.on_match(&r, throttle(3, 0), "t1", TEMP, 1);
        before.on_match(&r, throttle(1, 1000), "t2", TEMP, 2);
        before.on_match(&other, throttle(2, 0), "t1", TEMP, 3);
        let saved = before.export();
        assert_eq!(saved.len(), 3);

        let mut after = ThresholdState::new();
        let restored = after.restore(saved, |id| (id == "r").then(|| Arc::clone(&r)));
        assert_eq!(restored, 2, "the key of a rule that is gone is dropped");
        // The run of two goes on: the third match in a row fires; the interval still runs.
        assert_eq!(
            after.on_match(&r, throttle(3, 0), "t1", TEMP, 4),
            Decision::Fire
        );
        assert_eq!(
            after.on_match(&r, throttle(1, 1000), "t2", TEMP, 5),
            Decision::Throttled
        );
        assert_eq!(
            after.on_match(&r, throttle(1, 1000), "t2", TEMP, 1002),
            Decision::Fire
        );
    }
}
