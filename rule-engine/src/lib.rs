//! The pure core of ccstream: what a rule is, how its input is validated, the domain tree, and
//! (from the rule engine issue on) the directory of things, evaluation, thresholds and templates.
//!
//! Modules:
//! - [`rule`]: the rule model of spec 6.1, serialized in camelCase exactly as the Rule API shows it.
//! - [`validate`]: turns the `attributes` of a CREATE or UPDATE payload into a [`rule::Rule`],
//!   naming the property and a documented `messageKey` for every failure.
//! - [`domain`]: the domain tree (id → parent) and the subtree / ancestor questions that
//!   authorization and rule filters ask of it.
//!
//! This crate does no I/O: no network, no files, no clocks it reads itself. Callers pass time in.
//! That keeps it fast to test and to benchmark.

pub mod domain;
pub mod rule;
pub mod validate;

pub use domain::{DomainError, DomainTree, Visibility, ROOT};
pub use rule::{Action, ActionType, Expression, Filter, Operator, Rule, Threshold};
pub use validate::{validate_rule, Invalid, MessageKey, ValidateMode};
