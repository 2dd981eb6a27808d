//! The pure core of ccstream: what a rule is, how its input is validated, the domain tree, the
//! directory of things, evaluation, thresholds and templates.
//!
//! Modules:
//! - [`rule`]: the rule model of spec 6.1, serialized in camelCase exactly as the Rule API shows it.
//! - [`validate`]: turns the `attributes` of a CREATE or UPDATE payload into a [`rule::Rule`],
//!   naming the property and a documented `messageKey` for every failure.
//! - [`domain`]: the domain tree (id → parent) and the subtree / ancestor questions that
//!   authorization and rule filters ask of it.
//! - [`observation`]: parses a shadow update's raw bytes into the resources rules read
//!   (`state.reported`, sub things), with size and depth limits; bad input is a [`Reject`] value.
//! - [`directory`]: thing name → thing type and domain, plus the domain tree; life cycle events
//!   and the bulk import/export format ([`DirectorySnapshot`]).
//! - [`index`]: enabled rules indexed by thing type and resource ([`RuleIndex`]).
//! - [`compare`]: the six operators on reported values.
//! - [`threshold`]: `count` / `interval` state per (rule, thing, resource path), bounded.
//! - [`deferred`]: threshold steps recorded in one pass and replayed in a second, for state a
//!   shared store keeps.
//! - [`template`]: the spec 6.1 rule payload and `${...}` filling of action configs.
//! - [`eval`]: one observation through index, filter and thresholds to [`Firing`]s ([`Engine`]).
//!
//! This crate does no I/O: no network, no files, no clocks it reads itself. Callers pass time in.
//! That keeps it fast to test and to benchmark.

pub mod domain;
pub mod rule;
pub mod validate;

pub use domain::{DomainError, DomainTree, Visibility, ROOT};
pub use rule::{Action, ActionType, Expression, Filter, Operator, Rule, ThingType, Threshold};
pub use validate::{validate_rule, Invalid, MessageKey, ValidateMode};

pub mod compare;
pub mod deferred;
pub mod directory;
pub mod eval;
pub mod index;
mod inline_str;
pub mod observation;
pub mod template;
pub mod threshold;

pub use directory::{
    Directory, DirectoryChange, DirectorySnapshot, EventError, Thing, ThingChange, ThingInfo,
};
pub use eval::{Engine, FilledAction, Firing, Outcome};
pub use index::RuleIndex;
pub use observation::{ParseLimits, ParsedObservation, Reject, TopLevelKeys};
pub use threshold::{Decision, SavedKey, ThresholdState, Thresholds};
