//! Threshold decisions taken elsewhere (a store shared by replicas), in two passes over the same
//! observation:
//!
//! 1. evaluate with a [`StepRecorder`]: every threshold step (a match of a rule with a
//!    threshold, a miss of a rule counting runs) is written down, and matches answer
//!    [`Decision::Counting`], so nothing fires yet; rules without a threshold fire as usual;
//! 2. the caller has the steps decided (for a whole batch of observations at once);
//! 3. evaluate again, only the observations where some step fired, with a [`StepReplay`] of the
//!    decisions: the second pass makes the same calls in the same order (evaluation is a pure
//!    function of the rules, the directory and the observation), so each match gets its own
//!    decision and the firings are built as the local state would have built them.
//!
//! The first pass's outcome stands for observations where nothing fired: its counts are right
//! (every recorded match was held back).

use std::sync::Arc;

use crate::threshold::{Decision, ResourcePath, Thresholds, Throttle};

/// What happened to one (rule, thing, resource path) key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// The expression matched; the step needs a decision.
    Match(Throttle),
    /// The expression did not match: a run in progress restarts.
    Miss,
}

/// One threshold step of one observation (whose thing the caller knows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub rule: Arc<str>,
    /// `temp` or `sub1.temp`.
    pub path: String,
    pub kind: StepKind,
}

/// First pass: writes the steps down, holds every stateful match back.
#[derive(Debug)]
pub struct StepRecorder<'a> {
    pub steps: &'a mut Vec<Step>,
}

impl Thresholds for StepRecorder<'_> {
    fn on_match(
        &mut self,
        rule: &Arc<str>,
        throttle: Throttle,
        _thing: &str,
        path: ResourcePath<'_>,
        _now_ms: u64,
    ) -> Decision {
        if !throttle.is_stateful() {
            return Decision::Fire;
        }
        self.steps.push(Step {
            rule: Arc::clone(rule),
            path: path.to_string(),
            kind: StepKind::Match(throttle),
        });
        Decision::Counting
    }

    fn on_miss(&mut self, rule: &Arc<str>, _thing: &str, path: ResourcePath<'_>, _now_ms: u64) {
        self.steps.push(Step {
            rule: Arc::clone(rule),
            path: path.to_string(),
            kind: StepKind::Miss,
        });
    }
}

/// Second pass: answers each stateful match with the next decision, in recording order.
#[derive(Debug)]
pub struct StepReplay<'a> {
    decisions: std::slice::Iter<'a, Decision>,
}

impl<'a> StepReplay<'a> {
    /// `decisions`: one per [`StepKind::Match`] step of the observation, in order.
    pub fn new(decisions: &'a [Decision]) -> Self {
        StepReplay {
            decisions: decisions.iter(),
        }
    }
}

impl Thresholds for StepReplay<'_> {
    fn on_match(
        &mut self,
        _rule: &Arc<str>,
        throttle: Throttle,
        _thing: &str,
        _path: ResourcePath<'_>,
        _now_ms: u64,
    ) -> Decision {
        if !throttle.is_stateful() {
            return Decision::Fire;
        }
        // Fewer decisions than matches would mean the passes diverged; holding back is the
        // safe answer (never more often than the threshold says).
        self.decisions.next().copied().unwrap_or(Decision::Counting)
    }

    fn on_miss(&mut self, _rule: &Arc<str>, _thing: &str, _path: ResourcePath<'_>, _now_ms: u64) {}
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::threshold::ThresholdState;

    const TEMP: ResourcePath<'static> = ResourcePath::thing("temp");

    /// Decides recorded steps with a local state, as a shared store's script does.
    fn decide(
        steps: &[Step],
        thing: &str,
        now_ms: u64,
        state: &mut ThresholdState,
    ) -> Vec<Decision> {
        let mut out = Vec::new();
        for step in steps {
            let path = ResourcePath::parse(&step.path);
            match step.kind {
                StepKind::Match(t) => out.push(state.on_match(&step.rule, t, thing, path, now_ms)),
                StepKind::Miss => state.on_miss(&step.rule, thing, path, now_ms),
            }
        }
        out
    }

    #[test]
    fn recorded_then_replayed_decides_as_the_local_state() {
        let rule: Arc<str> = Arc::from("r");
        let plain: Arc<str> = Arc::from("plain");
        let sub = ResourcePath {
            sub: Some("s1"),
            name: "temp",
        };
        let mut local = ThresholdState::new();
        let mut shared = ThresholdState::new();
        // match, match, miss, match x3: the local state fires on the third match in a row.
        let script = [true, true, false, true, true, true];
        for (i, &matched) in script.iter().enumerate() {
            let now = i as u64 * 10;
            let mut steps = Vec::new();
            let mut recorder = StepRecorder { steps: &mut steps };
            let (first, plain_first) = if matched {
                (
                    recorder.on_match(&rule, Throttle::new(3, 0), "t", sub, now),
                    recorder.on_match(&plain, Throttle::NONE, "t", TEMP, now),
                )
            } else {
                recorder.on_miss(&rule, "t", sub, now);
                (Decision::Counting, Decision::Fire)
            };
            assert_eq!(first, Decision::Counting, "the first pass holds back");
            assert_eq!(plain_first, Decision::Fire, "no threshold: no step");
            assert!(steps.iter().all(|s| s.rule == rule));

            let decisions = decide(&steps, "t", now, &mut shared);
            let mut replay = StepReplay::new(&decisions);
            let expected = if matched {
                let replayed = replay.on_match(&rule, Throttle::new(3, 0), "t", sub, now);
                assert_eq!(
                    replay.on_match(&plain, Throttle::NONE, "t", TEMP, now),
                    Decision::Fire
                );
                let local = local.on_match(&rule, Throttle::new(3, 0), "t", sub, now);
                assert_eq!(replayed, local, "step {i}");
                local
            } else {
                local.on_miss(&rule, "t", sub, now);
                Decision::Counting
            };
            assert_eq!(
                expected == Decision::Fire,
                i == 5,
                "only the third match in a row fires (step {i})"
            );
        }
    }

    #[test]
    fn a_replay_short_of_decisions_holds_back() {
        let rule: Arc<str> = Arc::from("r");
        let mut replay = StepReplay::new(&[Decision::Fire]);
        assert_eq!(
            replay.on_match(&rule, Throttle::new(2, 0), "t", TEMP, 0),
            Decision::Fire
        );
        assert_eq!(
            replay.on_match(&rule, Throttle::new(2, 0), "t", TEMP, 0),
            Decision::Counting
        );
    }
}
