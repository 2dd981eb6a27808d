//! Evaluation: one parsed observation of one thing against the rule index, through the
//! threshold state, to the firings whose actions should run.
//!
//! Order of work per observation: look the thing up (unknown: say so and stop), take the rules
//! of its thing type, and for every resource the observation carries take the rules reading
//! that resource. For each such rule the expression is checked first (cheap, inline in the
//! index); only a match pays for the filter (thing names, domain subtree), the threshold and,
//! when it fires, the template payload and the filled actions. A non-match only tells the
//! threshold state to reset a run, which is free when no run is in progress.
//!
//! The filter is not checked on a non-match: resetting the run of a rule that does not apply to
//! the thing is harmless (it has no run for it unless the thing just moved out of the rule's
//! domain, and then restarting the run is right).

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::directory::{Directory, Thing};
use crate::index::{CompiledRule, Entry, RuleIndex};
use crate::observation::{ParsedObservation, Resource, SubThing};
use crate::rule::ActionType;
use crate::template::{self, ParentPayload, Payload, ResourcePayload, RulePayload, ThingPayload};
use crate::threshold::{Decision, ResourcePath, Thresholds};

/// An action with its config filled from the firing's payload.
#[derive(Debug, Clone, PartialEq)]
pub struct FilledAction {
    pub kind: ActionType,
    pub config: Map<String, Value>,
}

/// A rule whose actions should run now.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    pub rule_id: Arc<str>,
    /// The resource path: `temp` or `sub1.temp`.
    pub path: String,
    /// The payload of spec 6.1 (the default webhook body).
    pub payload: Value,
    /// The rule's actions, filled from `payload`.
    pub actions: Vec<FilledAction>,
    /// `${...}` paths that were not in the payload (filled with `""`).
    pub unknown_variables: u32,
}

/// What one observation led to. Counts are per (rule, resource path) evaluation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// The thing is not in the directory; nothing was evaluated.
    pub unknown_thing: bool,
    /// Expressions checked.
    pub evaluated: u32,
    /// Expressions that matched for a rule whose filter admits the thing.
    pub matched: u32,
    /// Matches held back by the threshold (run not complete, or within the interval).
    pub throttled: u32,
    /// Matches dropped because the threshold state is full (see
    /// [`crate::threshold::ThresholdState`]).
    pub state_full: u32,
    pub firings: Vec<Firing>,
}

/// A read-only view of the rules and the directory to evaluate against. Cheap to copy; the
/// binary builds one from whatever it keeps them in (an `Arc` swapped on rule changes, say).
#[derive(Debug, Clone, Copy)]
pub struct Engine<'a> {
    pub rules: &'a RuleIndex,
    pub directory: &'a Directory,
}

impl<'a> Engine<'a> {
    pub fn new(rules: &'a RuleIndex, directory: &'a Directory) -> Self {
        Engine { rules, directory }
    }

    /// Evaluates `obs`, an observation of `thing_name`, at `now_ms` (the receive time, also
    /// the payload's `timestamp` when the observation has none of its own).
    pub fn evaluate(
        &self,
        thing_name: &str,
        obs: &ParsedObservation<'_>,
        now_ms: u64,
        thresholds: &mut impl Thresholds,
    ) -> Outcome {
        let thing = self.directory.thing(thing_name);
        self.evaluate_thing(thing_name, thing, obs, now_ms, thresholds)
    }

    /// [`Self::evaluate`] for a caller that has already looked the thing up in this engine's
    /// directory (the ingest path needs its domain too): one hash lookup less per observation.
    pub fn evaluate_thing(
        &self,
        thing_name: &str,
        thing: Option<Thing<'_>>,
        obs: &ParsedObservation<'_>,
        now_ms: u64,
        thresholds: &mut impl Thresholds,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        let Some(thing) = thing else {
            outcome.unknown_thing = true;
            return outcome;
        };
        let Some(type_rules) = self.rules.for_type(thing.thing_type()) else {
            return outcome;
        };
        let mut run = Run {
            engine: self,
            thing_name,
            thing,
            obs,
            now_ms,
            thresholds,
            outcome,
            state: None,
        };
        let thing_rules = type_rules.thing();
        for res in obs.resources() {
            if let Some(entries) = thing_rules.get(&res.name) {
                run.check(entries, None, res);
            }
        }
        if type_rules.has_subs() {
            for sub in obs.sub_things() {
                let Some(resources) = type_rules.sub(&sub.kind) else {
                    continue;
                };
                for res in obs.sub_resources(sub) {
                    if let Some(entries) = resources.get(&res.name) {
                        run.check(entries, Some(sub), res);
                    }
                }
            }
        }
        run.outcome
    }
}

/// The state of one evaluation.
struct Run<'e, 'o, 'a, T: Thresholds> {
    engine: &'e Engine<'e>,
    thing_name: &'e str,
    thing: Thing<'e>,
    obs: &'o ParsedObservation<'a>,
    now_ms: u64,
    thresholds: &'e mut T,
    outcome: Outcome,
    /// `thing.state`, built once per observation on the first firing.
    state: Option<Value>,
}

impl<'o, 'a, T: Thresholds> Run<'_, 'o, 'a, T> {
    fn check(&mut self, entries: &[Entry], sub: Option<&SubThing<'a>>, res: &Resource<'a>) {
        let path = ResourcePath {
            sub: sub.map(|s| s.id.as_ref()),
            name: &res.name,
        };
        for entry in entries {
            self.outcome.evaluated += 1;
            let rule = &entry.rule;
            if !entry.operand.matches(entry.op, &res.value) {
                if entry.counts_runs {
                    self.thresholds
                        .on_miss(&entry.id, self.thing_name, path, self.now_ms);
                }
                continue;
            }
            if !self.admits(rule) {
                continue;
            }
            self.outcome.matched += 1;
            match self.thresholds.on_match(
                rule.id(),
                rule.throttle(),
                self.thing_name,
                path,
                self.now_ms,
            ) {
                Decision::Fire => {
                    let firing = self.fire(rule, sub, res, path);
                    self.outcome.firings.push(firing);
                }
                Decision::Counting | Decision::Throttled => self.outcome.throttled += 1,
                Decision::StateFull => self.outcome.state_full += 1,
            }
        }
    }

    /// The filter of DESIGN.md beyond thing type (the index) and enabled (only enabled rules
    /// are indexed): thing names, then the domain subtree.
    fn admits(&self, rule: &CompiledRule) -> bool {
        rule.admits_name(self.thing_name)
            && self
                .engine
                .directory
                .domains()
                .is_within(self.thing.domain(), &rule.rule().filter.domain)
    }

    fn fire(
        &mut self,
        rule: &CompiledRule,
        sub: Option<&SubThing<'a>>,
        res: &Resource<'a>,
        path: ResourcePath<'_>,
    ) -> Firing {
        let obs = self.obs;
        let state = self
            .state
            .get_or_insert_with(|| obs.reported_state())
            .clone();
        let payload = Payload {
            resource: ResourcePayload {
                name: res.name.as_ref().to_owned(),
                path: path.to_string(),
                value: res.value.to_value(),
                parent: sub.map(|s| ParentPayload {
                    id: s.id.as_ref().to_owned(),
                    state: obs.sub_state(s),
                }),
            },
            timestamp: obs.timestamp().unwrap_or(self.now_ms),
            rule: RulePayload {
                id: rule.rule().id.clone(),
                name: rule.rule().name.clone(),
            },
            thing: ThingPayload {
                thing_name: self.thing_name.to_owned(),
                thing_type: rule.rule().filter.thing_type.clone(),
                domain: self.thing.domain().to_owned(),
                state,
            },
        }
        .to_value();
        let mut unknown_variables = 0;
        let actions = rule
            .rule()
            .actions
            .iter()
            .map(|a| {
                let (config, unknown) = template::fill_config(&a.config, &payload);
                unknown_variables += unknown;
                FilledAction {
                    kind: a.kind,
                    config,
                }
            })
            .collect();
        Firing {
            rule_id: Arc::clone(rule.id()),
            path: path.to_string(),
            payload,
            actions,
            unknown_variables,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::directory::DirectorySnapshot;
    use crate::observation::ParseLimits;
    use crate::rule::{Operator, Rule, Threshold};
    use crate::threshold::ThresholdState;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000_000;

    fn directory() -> Directory {
        let s: DirectorySnapshot =
            serde_json::from_str(include_str!("../../fixtures/directory/small.json")).unwrap();
        Directory::from_snapshot(s).unwrap()
    }

    fn overheat() -> Rule {
        serde_json::from_str(include_str!("../../fixtures/rules/overheat.json")).unwrap()
    }

    fn sub_overheat() -> Rule {
        serde_json::from_str(include_str!("../../fixtures/rules/subthing-overheat.json")).unwrap()
    }

    fn rule(id: &str, op: Operator, resource: &str, value: Value) -> Rule {
        let mut r = overheat();
        r.id = id.into();
        r.threshold = None;
        r.expression.operator = op;
        r.expression.resource = resource.into();
        r.expression.value = value;
        r
    }

    fn eval(
        rules: &RuleIndex,
        dir: &Directory,
        thing: &str,
        raw: &str,
        st: &mut ThresholdState,
    ) -> Outcome {
        let obs = ParsedObservation::parse(raw.as_bytes(), &ParseLimits::default()).unwrap();
        Engine::new(rules, dir).evaluate(thing, &obs, NOW, st)
    }

    fn shadow(reported: Value) -> String {
        json!({"state": {"reported": reported}}).to_string()
    }

    fn fired(o: &Outcome) -> Vec<(&str, &str)> {
        o.firings
            .iter()
            .map(|f| (&*f.rule_id, f.path.as_str()))
            .collect()
    }

    #[test]
    fn thing_rule_fires_with_the_spec_payload_and_filled_actions() {
        let mut r = overheat();
        r.threshold = None;
        let rules = RuleIndex::from_rules([r]);
        let dir = directory();
        let mut st = ThresholdState::new();
        let raw =
            json!({"state": {"reported": {"temp": 50}}, "timestamp": 1464081794634u64}).to_string();
        let o = eval(&rules, &dir, "thing-001", &raw, &mut st);
        assert_eq!((o.evaluated, o.matched, o.throttled), (1, 1, 0));
        let f = &o.firings[0];
        let expected: Value = serde_json::from_str(include_str!(
            "../../fixtures/webhook/expected-payload-thing.json"
        ))
        .unwrap();
        assert_eq!(f.payload, expected);
        assert_eq!(f.unknown_variables, 1);
        assert_eq!(
            Value::Object(f.actions[0].config.clone()),
            json!({
                "url": "http://127.0.0.1:8080/hook/thing-001",
                "method": "POST",
                "headers": {"X-Rule": "rule-001"},
                "body": {"text": "Rule triggered for thing: thing-001", "value": 50, "missing": ""}
            })
        );
    }

    #[test]
    fn a_thing_type_given_as_a_number_reaches_the_payload_as_a_number() {
        let snapshot: DirectorySnapshot = serde_json::from_value(json!({
            "things": [{"thingName": "t7", "thingType": 7, "domain": "root"}]
        }))
        .unwrap();
        let dir = Directory::from_snapshot(snapshot).unwrap();
        let mut r = rule("typed", Operator::Gte, "temp", json!(50));
        r.filter.thing_type = serde_json::from_value(json!(7)).unwrap();
        r.actions[0]
            .config
            .insert("body".into(), json!("${thing.thingType}"));
        let rules = RuleIndex::from_rules([r]);
        let mut st = ThresholdState::new();
        let o = eval(&rules, &dir, "t7", &shadow(json!({"temp": 51})), &mut st);
        assert_eq!(fired(&o), [("typed", "temp")]);
        assert_eq!(o.firings[0].payload["thing"]["thingType"], json!(7));
        assert_eq!(o.firings[0].actions[0].config["body"], json!(7));
    }

    #[test]
    fn sub_thing_rule_fires_once_per_matching_sub_thing() {
        let rules = RuleIndex::from_rules([sub_overheat()]);
        let dir = directory();
        let mut st = ThresholdState::new();
        let raw = include_str!("../../fixtures/shadow/subthings.json");
        let o = eval(&rules, &dir, "thing-001", raw, &mut st);
        assert_eq!(fired(&o), [("rule-002", "sub1.temp")]);
        let expected: Value = serde_json::from_str(include_str!(
            "../../fixtures/webhook/expected-payload-subthing.json"
        ))
        .unwrap();
        assert_eq!(o.firings[0].payload, expected);
        assert_eq!(
            o.firings[0].actions[0].config["body"],
            json!({"temp": 50, "type": "pump"})
        );

        let two = shadow(
            json!({"a": {"type": "pump", "temp": 60}, "b": {"type": "pump", "temp": 70},
                               "c": {"type": "fan", "temp": 90}, "temp": 99}),
        );
        let o = eval(&rules, &dir, "thing-001", &two, &mut st);
        assert_eq!(fired(&o), [("rule-002", "a.temp"), ("rule-002", "b.temp")]);
        assert_eq!(o.evaluated, 2);
    }

    #[test]
    fn untyped_sub_things() {
        let rules = RuleIndex::from_rules([rule("u", Operator::Lt, "untyped.temp", json!(20))]);
        let dir = directory();
        let o = eval(
            &rules,
            &dir,
            "thing-001",
            include_str!("../../fixtures/shadow/subthings.json"),
            &mut ThresholdState::new(),
        );
        assert_eq!(fired(&o), [("u", "sub2.temp")]);
    }

    #[test]
    fn every_operator() {
        let dir = directory();
        let raw = include_str!("../../fixtures/shadow/thing.json"); // temp 50, humidity "41.5", door "closed"
        let cases = [
            (Operator::Gt, "temp", json!(49), true),
            (Operator::Gt, "temp", json!(50), false),
            (Operator::Gte, "temp", json!(50), true),
            (Operator::Lt, "humidity", json!(42), true),
            (Operator::Lte, "humidity", json!("41.5"), true),
            (Operator::Lt, "door", json!(1), false),
            (Operator::Eq, "door", json!("closed"), true),
            (Operator::Eq, "temp", json!(50.0), true),
            (Operator::Ne, "door", json!("open"), true),
            (Operator::Ne, "temp", json!(50), false),
        ];
        for (op, resource, value, expect) in cases {
            let rules = RuleIndex::from_rules([rule("r", op, resource, value.clone())]);
            let o = eval(&rules, &dir, "thing-001", raw, &mut ThresholdState::new());
            assert_eq!(o.firings.len() == 1, expect, "{op:?} {resource} {value}");
            assert_eq!(o.evaluated, 1);
        }
    }

    #[test]
    fn filter_domain_type_names_enabled() {
        let dir = directory();
        let raw = shadow(json!({"temp": 80}));
        let mut in_sub1 = rule("sub1", Operator::Gt, "temp", json!(1));
        in_sub1.filter.domain = "sub1".into();
        let mut named = rule("named", Operator::Gt, "temp", json!(1));
        named.filter.thing_names = Some(vec!["thing-002".into(), "thing-201".into()]);
        let mut disabled = rule("off", Operator::Gt, "temp", json!(1));
        disabled.enabled = false;
        let mut fan = rule("fan", Operator::Gt, "temp", json!(1));
        fan.filter.thing_type = "Fan".into();
        let all = rule("all", Operator::Gt, "temp", json!(1));
        let rules = RuleIndex::from_rules([in_sub1, named, disabled, fan, all]);
        let firing_rules = |thing: &str| {
            let o = eval(&rules, &dir, thing, &raw, &mut ThresholdState::new());
            let mut ids: Vec<String> = o.firings.iter().map(|f| f.rule_id.to_string()).collect();
            ids.sort();
            ids
        };
        assert_eq!(firing_rules("thing-001"), ["all"]);
        assert_eq!(firing_rules("thing-002"), ["all", "named"]);
        assert_eq!(firing_rules("thing-101"), ["all", "sub1"]);
        assert_eq!(firing_rules("thing-201"), ["all", "named", "sub1"]);
        assert_eq!(firing_rules("thing-301"), ["all"]);
        assert_eq!(firing_rules("fan-001"), ["fan"]);
    }

    #[test]
    fn unknown_things_and_types_are_values() {
        let rules = RuleIndex::from_rules([overheat()]);
        let mut dir = directory();
        let raw = shadow(json!({"temp": 80}));
        let o = eval(&rules, &dir, "ghost", &raw, &mut ThresholdState::new());
        assert!(o.unknown_thing);
        dir.upsert_thing("odd", "NoRules", "root").unwrap();
        let o = eval(&rules, &dir, "odd", &raw, &mut ThresholdState::new());
        assert_eq!(o, Outcome::default());
    }

    #[test]
    fn only_resources_present_are_evaluated() {
        let rules = RuleIndex::from_rules([rule("r", Operator::Ne, "temp", json!(1))]);
        let dir = directory();
        let o = eval(
            &rules,
            &dir,
            "thing-001",
            &shadow(json!({"other": 1})),
            &mut ThresholdState::new(),
        );
        assert_eq!((o.evaluated, o.firings.len()), (0, 0));
    }

    #[test]
    fn thresholds_apply_per_thing_and_path() {
        let mut r = rule("r", Operator::Gt, "temp", json!(10));
        r.threshold = Some(Threshold {
            count: Some(2),
            interval: Some(1000),
        });
        let rules = RuleIndex::from_rules([r]);
        let dir = directory();
        let mut st = ThresholdState::new();
        let hot = shadow(json!({"temp": 80}));
        let cold = shadow(json!({"temp": 0}));
        let engine = Engine::new(&rules, &dir);
        let hot_obs = ParsedObservation::parse(hot.as_bytes(), &ParseLimits::default()).unwrap();
        let cold_obs = ParsedObservation::parse(cold.as_bytes(), &ParseLimits::default()).unwrap();
        let at = |st: &mut ThresholdState, o: &ParsedObservation<'_>, thing: &str, t: u64| {
            let out = engine.evaluate(thing, o, t, st);
            (out.matched, out.throttled, out.firings.len())
        };
        assert_eq!(at(&mut st, &hot_obs, "thing-001", 0), (1, 1, 0));
        assert_eq!(at(&mut st, &hot_obs, "thing-002", 0), (1, 1, 0));
        assert_eq!(at(&mut st, &hot_obs, "thing-001", 1), (1, 0, 1));
        assert_eq!(at(&mut st, &cold_obs, "thing-002", 2), (0, 0, 0));
        assert_eq!(at(&mut st, &hot_obs, "thing-002", 3), (1, 1, 0));
        assert_eq!(at(&mut st, &hot_obs, "thing-001", 500), (1, 1, 0));
        assert_eq!(at(&mut st, &hot_obs, "thing-001", 600), (1, 1, 0));
        assert_eq!(at(&mut st, &hot_obs, "thing-001", 1001), (1, 0, 1));
        assert_eq!(st.forget_thing("thing-002"), 1);
        assert_eq!(st.forget_rule("r"), 1);
        assert!(st.is_empty());
    }

    #[test]
    fn unknown_operator_in_a_stored_rule_is_refused_at_load() {
        // The index only holds rules with a known operator: an unknown one fails to
        // deserialize where the store loads it, never on the hot path.
        let mut v = serde_json::to_value(overheat()).unwrap();
        v["expression"]["operator"] = json!("between");
        assert!(serde_json::from_value::<Rule>(v).is_err());
    }
}
