//! The rule index: enabled rules grouped by `filter.thingType`, then by the resource their
//! expression reads, so that an observation costs work in proportion to the rules of its thing
//! type that read resources it carries, not to all rules.
//!
//! Layout: thing type (hash map) → one vector of all the type's entries, grouped by (sub thing
//! type, resource), with small sorted name tables pointing into it. Each entry carries the
//! compiled operator and operand inline, so checking an expression touches contiguous memory;
//! the rest of the rule (filter, threshold, actions) is behind an `Arc` and read only on a
//! match. Short keys are stored inline (`InlineStr`): with 100,000 things and 10,000 rules the
//! cost of an observation is mostly cache misses, and each pointer not followed is one less.
//!
//! Updates: [`RuleIndex::apply`] (and [`RuleIndex::upsert`], [`RuleIndex::remove`]) rebuild the
//! layout of the thing types concerned, in time proportional to their rules. A binary that evaluates on other threads
//! keeps the index in an `Arc`, applies the change to a clone (cheap: entries share `Arc`s) or
//! rebuilds with [`RuleIndex::from_rules`], and swaps the `Arc`; evaluation never waits on it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::compare::Operand;
use crate::inline_str::InlineStr;
use crate::rule::{Operator, Rule};
use crate::threshold::Throttle;

/// A rule prepared for evaluation.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    rule: Rule,
    id: Arc<str>,
    throttle: Throttle,
    /// `filter.thingNames`, sorted and deduplicated; empty means every thing.
    thing_names: Vec<String>,
    /// `Some(type)` for a sub thing resource `type.name`.
    sub_type: Option<String>,
    resource: String,
}

impl CompiledRule {
    pub fn new(rule: Rule) -> Self {
        let mut thing_names = rule.filter.thing_names().to_vec();
        thing_names.sort_unstable();
        thing_names.dedup();
        // Spec 6.1: a sub thing resource is `<subthing_type>.<resource_name>`.
        let (sub_type, resource) = match rule.expression.resource.split_once('.') {
            Some((sub, name)) => (Some(sub.to_owned()), name.to_owned()),
            None => (None, rule.expression.resource.clone()),
        };
        CompiledRule {
            id: Arc::from(rule.id.as_str()),
            throttle: Throttle::from(rule.threshold),
            thing_names,
            sub_type,
            resource,
            rule,
        }
    }

    pub fn rule(&self) -> &Rule {
        &self.rule
    }

    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    pub fn throttle(&self) -> Throttle {
        self.throttle
    }

    /// The sub thing type of a sub thing resource rule (`pump` of `pump.temp`).
    pub fn sub_type(&self) -> Option<&str> {
        self.sub_type.as_deref()
    }

    /// The resource name the expression reads (`temp` of `temp` and of `pump.temp`).
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// Whether `filter.thingNames` admits `thing` (an empty list admits every thing).
    pub fn admits_name(&self, thing: &str) -> bool {
        self.thing_names.is_empty()
            || self
                .thing_names
                .binary_search_by(|n| n.as_str().cmp(thing))
                .is_ok()
    }
}

/// One rule under one resource: what the hot loop reads.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) op: Operator,
    /// Whether a non-match must reset a run (`threshold.count` > 1); kept here, with the id, so
    /// that a non-match never dereferences `rule` (a cache miss per rule in a large index).
    pub(crate) counts_runs: bool,
    pub(crate) operand: Operand,
    pub(crate) id: Arc<str>,
    pub(crate) rule: Arc<CompiledRule>,
}

impl Entry {
    fn new(rule: &Arc<CompiledRule>) -> Self {
        Entry {
            op: rule.rule.expression.operator,
            counts_runs: rule.throttle.counts_runs(),
            operand: Operand::new(rule.rule.expression.value.clone()),
            id: Arc::clone(&rule.id),
            rule: Arc::clone(rule),
        }
    }
}

/// Resource names and sub thing types up to this many bytes sit inside the index itself.
const KEY_INLINE: usize = 22;
type Key = InlineStr<KEY_INLINE>;

/// A resource name and its range of [`TypeRules::entries`].
#[derive(Debug, Clone)]
struct Slot {
    name: Key,
    start: u32,
    end: u32,
}

/// The rules of a thing type that read one thing resource, or the resources of one sub thing
/// type: resource name → entries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Group<'i> {
    slots: &'i [Slot],
    entries: &'i [Entry],
}

impl<'i> Group<'i> {
    pub(crate) fn get(&self, name: &str) -> Option<&'i [Entry]> {
        let name = name.as_bytes();
        // A thing type usually has a handful of resources with rules: a scan comparing lengths
        // first beats a binary search there. Byte order is `str` order.
        let i = if self.slots.len() <= 8 {
            self.slots.iter().position(|s| s.name.as_bytes() == name)
        } else {
            self.slots
                .binary_search_by(|s| s.name.as_bytes().cmp(name))
                .ok()
        }?;
        let slot = &self.slots[i];
        self.entries.get(slot.start as usize..slot.end as usize)
    }
}

/// The enabled rules of one thing type, laid out for lookup: every entry of the type in one
/// vector, grouped by (sub thing type, resource), with small sorted tables of names into it.
/// Fewer, denser allocations mean fewer cache misses per observation.
#[derive(Debug, Clone, Default)]
pub(crate) struct TypeRules {
    thing: Vec<Slot>,
    /// Sub thing type → its slots, sorted by type.
    subs: Vec<(Key, Vec<Slot>)>,
    entries: Vec<Entry>,
}

impl TypeRules {
    /// Lays out `rules` (all enabled, all of one thing type).
    fn build(mut rules: Vec<Arc<CompiledRule>>) -> Self {
        rules.sort_by(|a, b| {
            (a.sub_type.as_deref(), a.resource.as_str(), a.id.as_ref()).cmp(&(
                b.sub_type.as_deref(),
                b.resource.as_str(),
                b.id.as_ref(),
            ))
        });
        let mut out = TypeRules {
            entries: rules.iter().map(Entry::new).collect(),
            ..TypeRules::default()
        };
        let mut start = 0;
        while start < rules.len() {
            let first = &rules[start];
            let end = start
                + rules[start..]
                    .iter()
                    .take_while(|r| r.sub_type == first.sub_type && r.resource == first.resource)
                    .count();
            let slot = Slot {
                name: Key::new(&first.resource),
                // At most u32::MAX rules per thing type: validation caps far below that.
                start: u32::try_from(start).unwrap_or(u32::MAX),
                end: u32::try_from(end).unwrap_or(u32::MAX),
            };
            match &first.sub_type {
                None => out.thing.push(slot),
                Some(sub) => match out.subs.last_mut() {
                    Some((t, slots)) if t.as_str() == sub => slots.push(slot),
                    _ => out.subs.push((Key::new(sub), vec![slot])),
                },
            }
            start = end;
        }
        out
    }

    fn rules(&self) -> impl Iterator<Item = &Arc<CompiledRule>> {
        self.entries.iter().map(|e| &e.rule)
    }

    pub(crate) fn thing(&self) -> Group<'_> {
        Group {
            slots: &self.thing,
            entries: &self.entries,
        }
    }

    pub(crate) fn sub(&self, sub_type: &str) -> Option<Group<'_>> {
        let sub_type = sub_type.as_bytes();
        let i = self
            .subs
            .binary_search_by(|(t, _)| t.as_bytes().cmp(sub_type))
            .ok()?;
        Some(Group {
            slots: &self.subs[i].1,
            entries: &self.entries,
        })
    }

    pub(crate) fn has_subs(&self) -> bool {
        !self.subs.is_empty()
    }
}

/// All rules by id, and the enabled ones indexed for evaluation.
#[derive(Debug, Clone, Default)]
pub struct RuleIndex {
    /// Keyed by the rule's own id `Arc`, so that cloning the index copies no string.
    rules: HashMap<Arc<str>, Arc<CompiledRule>>,
    /// Shared so that cloning the index (to change a copy and swap it in) copies pointers, not
    /// entries.
    by_type: HashMap<Key, Arc<TypeRules>>,
}

impl RuleIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds the index; a later rule with the same id replaces an earlier one.
    pub fn from_rules(rules: impl IntoIterator<Item = Rule>) -> Self {
        let mut index = RuleIndex::default();
        index.apply(rules, std::iter::empty::<&str>());
        index
    }

    /// Applies a batch of changes: the ids in `removed` go, then each rule in `written` is added
    /// or replaces the rule with its id (a later one replaces an earlier one). Each thing type
    /// concerned is laid out again once, in time proportional to its rules; the other types
    /// and every unchanged rule keep their `Arc`s.
    pub fn apply<S: AsRef<str>>(
        &mut self,
        written: impl IntoIterator<Item = Rule>,
        removed: impl IntoIterator<Item = S>,
    ) {
        let mut touched: HashSet<String> = HashSet::new();
        for id in removed {
            if let Some(old) = self.rules.remove(id.as_ref()) {
                touched.insert(old.rule.filter.thing_type.as_str().to_owned());
            }
        }
        let mut fresh = Vec::new();
        for rule in written {
            let compiled = Arc::new(CompiledRule::new(rule));
            if let Some(old) = self
                .rules
                .insert(Arc::clone(&compiled.id), Arc::clone(&compiled))
            {
                touched.insert(old.rule.filter.thing_type.as_str().to_owned());
            }
            touched.insert(compiled.rule.filter.thing_type.as_str().to_owned());
            fresh.push(compiled);
        }
        // Per type concerned: its entries whose rule is still the current one, then the new.
        let mut laid_out: HashMap<String, Vec<Arc<CompiledRule>>> = touched
            .into_iter()
            .map(|thing_type| {
                let kept = self
                    .by_type
                    .get(thing_type.as_bytes())
                    .map(|t| t.rules().filter(|r| self.is_current(r)).cloned().collect())
                    .unwrap_or_default();
                (thing_type, kept)
            })
            .collect();
        for compiled in fresh {
            if compiled.rule.enabled && self.is_current(&compiled) {
                if let Some(rules) = laid_out.get_mut(compiled.rule.filter.thing_type.as_str()) {
                    rules.push(compiled);
                }
            }
        }
        for (thing_type, rules) in laid_out {
            if rules.is_empty() {
                self.by_type.remove(thing_type.as_bytes());
            } else {
                self.by_type
                    .insert(Key::new(&thing_type), Arc::new(TypeRules::build(rules)));
            }
        }
    }

    /// Whether `rule` is the one the index holds under its id (not replaced, not removed).
    fn is_current(&self, rule: &Arc<CompiledRule>) -> bool {
        self.rules
            .get(rule.id.as_ref())
            .is_some_and(|c| Arc::ptr_eq(c, rule))
    }

    /// Adds or replaces a rule (by id); returns the rule it replaced. Costs a rebuild of the
    /// rule's thing type (proportional to that type's rules).
    pub fn upsert(&mut self, rule: Rule) -> Option<Rule> {
        let previous = self.get(&rule.id).cloned();
        self.apply([rule], std::iter::empty::<&str>());
        previous
    }

    /// Removes a rule; returns it if it was there.
    pub fn remove(&mut self, id: &str) -> Option<Rule> {
        let previous = self.get(id).cloned();
        if previous.is_some() {
            self.apply([], [id]);
        }
        previous
    }

    pub fn get(&self, id: &str) -> Option<&Rule> {
        self.rules.get(id).map(|c| &c.rule)
    }

    /// One rule as compiled (see [`Self::compiled`]).
    pub fn compiled_rule(&self, id: &str) -> Option<&Arc<CompiledRule>> {
        self.rules.get(id)
    }

    /// Every rule, enabled or not, in no particular order.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.values().map(|c| &c.rule)
    }

    /// Every rule as compiled. [`CompiledRule::id`] is the very `Arc` evaluation hands to the
    /// threshold state, so a caller may key per-rule data by its address.
    pub fn compiled(&self) -> impl Iterator<Item = &Arc<CompiledRule>> {
        self.rules.values()
    }

    /// Number of rules, enabled or not.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Number of thing types with at least one enabled rule.
    pub fn thing_types(&self) -> usize {
        self.by_type.len()
    }

    pub(crate) fn for_type(&self, thing_type: &str) -> Option<&TypeRules> {
        self.by_type.get(thing_type.as_bytes()).map(|t| &**t)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn rule(id: &str, thing_type: &str, resource: &str, enabled: bool) -> Rule {
        serde_json::from_value(json!({
            "id": id, "name": id, "enabled": enabled,
            "filter": {"domain": "root", "thingType": thing_type},
            "expression": {"operator": "gt", "resource": resource, "value": 1},
            "actions": []
        }))
        .unwrap()
    }

    fn ids(entries: Option<&[Entry]>) -> Vec<String> {
        let mut ids: Vec<String> = entries
            .unwrap_or_default()
            .iter()
            .map(|e| e.rule.id().to_string())
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn indexes_by_type_and_resource() {
        let index = RuleIndex::from_rules([
            rule("a", "Pump", "temp", true),
            rule("b", "Pump", "temp", true),
            rule("c", "Pump", "pressure", true),
            rule("d", "Fan", "temp", true),
            rule("e", "Pump", "valve.temp", true),
            rule("f", "Pump", "temp", false),
        ]);
        assert_eq!(index.len(), 6);
        assert_eq!(index.thing_types(), 2);
        let pump = index.for_type("Pump").unwrap();
        assert_eq!(ids(pump.thing().get("temp")), ["a", "b"]);
        assert_eq!(ids(pump.thing().get("pressure")), ["c"]);
        assert_eq!(ids(pump.thing().get("valve.temp")), Vec::<String>::new());
        assert_eq!(ids(pump.sub("valve").unwrap().get("temp")), ["e"]);
        assert!(pump.sub("pump").is_none());
        assert!(index.for_type("Nope").is_none());
        assert_eq!(index.get("f").unwrap().id, "f");
    }

    #[test]
    fn upsert_moves_and_remove_cleans_up() {
        let mut index = RuleIndex::from_rules([rule("a", "Pump", "temp", true)]);
        let previous = index.upsert(rule("a", "Fan", "x.rpm", true)).unwrap();
        assert_eq!(previous.filter.thing_type, "Pump");
        assert!(index.for_type("Pump").is_none());
        assert_eq!(
            ids(index.for_type("Fan").unwrap().sub("x").unwrap().get("rpm")),
            ["a"]
        );
        // Disabling keeps the rule but takes it out of evaluation.
        index.upsert(rule("a", "Fan", "x.rpm", false));
        assert!(index.for_type("Fan").is_none());
        assert_eq!(index.len(), 1);
        assert!(index.remove("a").is_some());
        assert!(index.remove("a").is_none());
        assert!(index.is_empty());
    }

    /// Every rule's place in the layout: (thing type, sub type, resource, id), sorted.
    fn layout(index: &RuleIndex) -> Vec<(String, Option<String>, String, String)> {
        let mut out: Vec<_> = index
            .by_type
            .iter()
            .flat_map(|(t, rules)| {
                rules.rules().map(move |r| {
                    (
                        t.as_str().to_owned(),
                        r.sub_type.clone(),
                        r.resource.clone(),
                        r.id.to_string(),
                    )
                })
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_batch_lays_out_only_the_types_it_touches() {
        let mut index = RuleIndex::from_rules([
            rule("a", "Pump", "temp", true),
            rule("b", "Fan", "rpm", true),
            rule("c", "Valve", "open", true),
        ]);
        let before = index.clone();
        // `a` moves to Fan, `c` goes, `d` comes twice (the later one counts).
        index.apply(
            [
                rule("a", "Fan", "x.rpm", true),
                rule("d", "Pump", "temp", true),
                rule("d", "Pump", "pressure", true),
            ],
            ["c", "missing"],
        );
        assert_eq!(
            layout(&index),
            layout(&RuleIndex::from_rules([
                rule("a", "Fan", "x.rpm", true),
                rule("b", "Fan", "rpm", true),
                rule("d", "Pump", "pressure", true),
            ]))
        );
        assert!(index.for_type("Valve").is_none());
        // The copy the batch was applied to shares nothing it changed with the original.
        assert_eq!(before.len(), 3);
        assert_eq!(
            ids(before.for_type("Valve").unwrap().thing().get("open")),
            ["c"]
        );
        // An untouched type keeps its layout (`Arc`), and unchanged rules their `Arc`s.
        let mut more = index.clone();
        more.apply(
            [rule("e", "Door", "open", true)],
            std::iter::empty::<&str>(),
        );
        assert!(Arc::ptr_eq(
            &index.by_type[b"Fan".as_slice()],
            &more.by_type[b"Fan".as_slice()]
        ));
        assert!(Arc::ptr_eq(&index.rules["b"], &more.rules["b"]));
    }

    proptest::proptest! {
        /// Batches of writes and removals applied one after another leave the same index as a
        /// build from the rules that remain.
        #[test]
        fn batches_match_a_full_build(
            batches in proptest::collection::vec(
                proptest::collection::vec((0..12u8, 0..4u8, 0..3u8, proptest::bool::ANY, proptest::bool::ANY), 0..8),
                1..8,
            )
        ) {
            let types = ["Pump", "Fan", "Valve", "Door"];
            let resources = ["temp", "rpm", "x.temp"];
            let mut index = RuleIndex::new();
            let mut model: std::collections::BTreeMap<String, Rule> = Default::default();
            for batch in batches {
                let mut written = Vec::new();
                let mut removed = Vec::new();
                for (id, t, r, enabled, remove) in batch {
                    let id = format!("r{id}");
                    if remove {
                        removed.push(id);
                    } else {
                        written.push(rule(&id, types[t as usize], resources[r as usize], enabled));
                    }
                }
                for id in &removed {
                    model.remove(id);
                }
                for r in &written {
                    model.insert(r.id.clone(), r.clone());
                }
                index.apply(written, &removed);
                let full = RuleIndex::from_rules(model.values().cloned());
                proptest::prop_assert_eq!(layout(&index), layout(&full));
                proptest::prop_assert_eq!(index.len(), model.len());
                for (id, r) in &model {
                    proptest::prop_assert_eq!(index.get(id), Some(r));
                }
            }
        }
    }

    #[test]
    fn thing_names_filter() {
        let mut r = rule("a", "Pump", "temp", true);
        r.filter.thing_names = Some(vec!["t2".into(), "t1".into(), "t2".into()]);
        let c = CompiledRule::new(r);
        assert!(c.admits_name("t1") && c.admits_name("t2") && !c.admits_name("t3"));
        assert!(CompiledRule::new(rule("b", "Pump", "temp", true)).admits_name("any"));
    }
}
