//! The six operators of spec 6.1 applied to a reported value (DESIGN.md, Semantics: Operators).
//!
//! - `gt`/`gte`/`lt`/`lte` compare numbers; a numeric string (`"41.5"`) counts as a number. If
//!   either side is not a number the comparison cannot be made and does not match.
//! - `eq`/`ne` compare numerically when both sides are JSON numbers, or when one is a JSON number
//!   and the other a numeric string (`50` eq `"50.0"`). This keeps `eq` consistent with
//!   `gte ∧ lte`. Two strings compare as strings (`"007"` ne `"7"`: identifiers stay text), and
//!   everything else by JSON equality. `ne` is the negation of `eq`.
//! - Integers (64-bit) compare exactly, with no rounding through `f64`; a comparison involving
//!   a fraction uses `f64`.
//!
//! The rule side is compiled once ([`Operand`]) so that the hot path does no parsing of it.

use std::cmp::Ordering;

use serde_json::Value;

use crate::observation::ResourceValue;
use crate::rule::Operator;

/// A number as comparisons see it. Integers keep their exact value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    Int(i64),
    UInt(u64),
    Float(f64),
}

impl Num {
    fn cmp(self, other: Num) -> Option<Ordering> {
        match (self, other) {
            (Num::Float(_), _) | (_, Num::Float(_)) => self.as_f64().partial_cmp(&other.as_f64()),
            (a, b) => Some(a.as_i128().cmp(&b.as_i128())),
        }
    }

    fn as_i128(self) -> i128 {
        match self {
            Num::Int(i) => i128::from(i),
            Num::UInt(u) => i128::from(u),
            Num::Float(f) => f as i128,
        }
    }

    pub fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::UInt(u) => u as f64,
            Num::Float(f) => f,
        }
    }

    /// A JSON number.
    pub fn from_json(n: &serde_json::Number) -> Option<Num> {
        if let Some(u) = n.as_u64() {
            Some(Num::UInt(u))
        } else if let Some(i) = n.as_i64() {
            Some(Num::Int(i))
        } else {
            n.as_f64().filter(|f| f.is_finite()).map(Num::Float)
        }
    }

    /// `expression.value` as a number: a JSON number, or a numeric string with surrounding
    /// whitespace allowed (as JavaScript's `Number()` allows it, and as a tenant may type it).
    /// Validation accepts a gt/gte/lt/lte value exactly when this is `Some`, and evaluation
    /// compares against the same number, so a rule that validates can fire.
    pub fn of_rule_value(value: &Value) -> Option<Num> {
        match value {
            Value::Number(n) => Num::from_json(n),
            Value::String(s) => Num::parse(s.trim()),
            _ => None,
        }
    }

    /// A numeric string: what `str::parse` reads as a finite number, starting with a digit, a
    /// sign or a point (so `inf` and `NaN` are not numbers). Surrounding whitespace is not
    /// allowed: a reported `" 5"` is text.
    pub fn parse(s: &str) -> Option<Num> {
        let first = *s.as_bytes().first()?;
        if !(first.is_ascii_digit() || matches!(first, b'-' | b'+' | b'.')) {
            return None;
        }
        if let Ok(u) = s.parse::<u64>() {
            return Some(Num::UInt(u));
        }
        if let Ok(i) = s.parse::<i64>() {
            return Some(Num::Int(i));
        }
        s.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Num::Float)
    }
}

impl ResourceValue<'_> {
    /// The value as a number for ordering operators: numbers and numeric strings.
    fn as_num(&self) -> Option<Num> {
        match self {
            ResourceValue::UInt(u) => Some(Num::UInt(*u)),
            ResourceValue::Int(i) => Some(Num::Int(*i)),
            ResourceValue::Float(f) => Some(Num::Float(*f)),
            ResourceValue::Str(s) => Num::parse(s),
            _ => None,
        }
    }
}

/// The right-hand side of an expression (`expression.value`), compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Operand {
    value: Value,
    /// The value as a number, if it is a JSON number or a numeric string.
    num: Option<Num>,
    /// Whether `value` is a JSON number (as opposed to a numeric string).
    json_number: bool,
}

impl Operand {
    pub fn new(value: Value) -> Self {
        let num = Num::of_rule_value(&value);
        let json_number = value.is_number();
        Operand {
            value,
            num,
            json_number,
        }
    }

    pub fn value(&self) -> &Value {
        &self.value
    }

    fn equals(&self, v: &ResourceValue<'_>) -> bool {
        match v {
            ResourceValue::UInt(_) | ResourceValue::Int(_) | ResourceValue::Float(_) => {
                match (v.as_num(), self.num) {
                    (Some(a), Some(b)) => a.cmp(b) == Some(Ordering::Equal),
                    _ => false,
                }
            }
            ResourceValue::Str(s) => match &self.value {
                Value::String(t) => s.as_ref() == t.as_str(),
                Value::Number(_) => match (Num::parse(s), self.num) {
                    (Some(a), Some(b)) => a.cmp(b) == Some(Ordering::Equal),
                    _ => false,
                },
                _ => false,
            },
            ResourceValue::Null => self.value.is_null(),
            ResourceValue::Bool(b) => self.value.as_bool() == Some(*b),
            ResourceValue::Json(j) => **j == self.value,
        }
    }

    /// Whether `value <op> self` holds. Never fails: a comparison that cannot be made is false.
    pub fn matches(&self, op: Operator, value: &ResourceValue<'_>) -> bool {
        let ordered = |want: fn(Ordering) -> bool| match (value.as_num(), self.num) {
            (Some(a), Some(b)) => a.cmp(b).is_some_and(want),
            _ => false,
        };
        match op {
            Operator::Gt => ordered(Ordering::is_gt),
            Operator::Gte => ordered(Ordering::is_ge),
            Operator::Lt => ordered(Ordering::is_lt),
            Operator::Lte => ordered(Ordering::is_le),
            Operator::Eq => self.equals(value),
            Operator::Ne => !self.equals(value),
        }
    }

    /// Whether the operand is a JSON number (used to tell `"50"` from `50` in tests and docs).
    pub fn is_json_number(&self) -> bool {
        self.json_number
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::borrow::Cow;
    use Operator::*;

    fn m(op: Operator, reported: ResourceValue<'_>, rule: Value) -> bool {
        Operand::new(rule).matches(op, &reported)
    }

    fn s(v: &str) -> ResourceValue<'_> {
        ResourceValue::Str(Cow::Borrowed(v))
    }

    #[test]
    fn ordering_operators_on_numbers() {
        use ResourceValue::*;
        assert!(m(Gt, UInt(51), json!(50)));
        assert!(!m(Gt, UInt(50), json!(50)));
        assert!(m(Gte, UInt(50), json!(50)));
        assert!(m(Gte, Float(50.0), json!(50)));
        assert!(m(Lt, Int(-1), json!(0)));
        assert!(!m(Lt, UInt(0), json!(0)));
        assert!(m(Lte, UInt(0), json!(0.0)));
        assert!(m(Gt, Float(0.5), json!(0.25)));
        // Exact for large integers that f64 cannot tell apart.
        assert!(m(
            Gt,
            UInt(9_007_199_254_740_993),
            json!(9_007_199_254_740_992u64)
        ));
    }

    #[test]
    fn numeric_strings_count_as_numbers_for_ordering() {
        assert!(m(Gt, s("41.5"), json!(40)));
        assert!(m(Lte, ResourceValue::UInt(3), json!("3")));
        assert!(m(Gt, s("1e3"), json!("999")));
        assert!(m(Lt, s("-2"), json!(-1)));
    }

    #[test]
    fn comparisons_that_cannot_be_made_do_not_match() {
        for op in [Gt, Gte, Lt, Lte] {
            assert!(!m(op, s("hot"), json!(50)));
            assert!(!m(op, s("inf"), json!(50)));
            assert!(!m(op, s("NaN"), json!(50)));
            assert!(!m(op, s(" 5"), json!(5)));
            assert!(!m(op, ResourceValue::Bool(true), json!(1)));
            assert!(!m(op, ResourceValue::Null, json!(0)));
            assert!(!m(op, ResourceValue::UInt(1), json!("a")));
            assert!(!m(op, ResourceValue::Json(Box::new(json!([1]))), json!(1)));
            assert!(!m(op, s("b"), json!("a")));
        }
    }

    #[test]
    fn rule_values_with_surrounding_whitespace_compare_as_numbers() {
        use ResourceValue::*;
        assert!(m(Gt, UInt(51), json!(" 50")));
        assert!(m(Gte, UInt(50), json!("50 ")));
        assert!(m(Lt, Float(-1.5), json!("\t-1 ")));
        assert!(m(Lte, s("50"), json!(" 5e1 ")));
        assert!(!m(Gt, UInt(50), json!(" 50")));
        assert!(m(Eq, UInt(50), json!(" 50")));
        assert_eq!(
            Num::of_rule_value(&json!(" 2.5e1 ")),
            Some(Num::Float(25.0))
        );
        assert_eq!(Num::of_rule_value(&json!(" ")), None);
        assert_eq!(Num::of_rule_value(&json!(true)), None);
    }

    #[test]
    fn equality() {
        use ResourceValue::*;
        assert!(m(Eq, UInt(50), json!(50.0)));
        assert!(m(Eq, s("50.0"), json!(50)));
        assert!(m(Eq, UInt(50), json!("50")));
        assert!(!m(Eq, s("007"), json!("7")));
        assert!(m(Eq, s("on"), json!("on")));
        assert!(!m(Eq, s("on"), json!("off")));
        assert!(m(Eq, Bool(true), json!(true)));
        assert!(!m(Eq, Bool(true), json!(1)));
        assert!(m(Eq, Null, json!(null)));
        assert!(!m(Eq, Null, json!(0)));
        assert!(m(Eq, Json(Box::new(json!({"a": [1]}))), json!({"a": [1]})));
        assert!(!m(Eq, s("x"), json!(1)));
        assert!(!m(Eq, UInt(1), json!("x")));
    }

    #[test]
    fn ne_is_not_eq() {
        use ResourceValue::*;
        let values = [UInt(50), Float(50.5), s("50"), s("x"), Bool(false), Null];
        let rules = [
            json!(50),
            json!("50"),
            json!("x"),
            json!(false),
            json!(null),
        ];
        for v in &values {
            for r in &rules {
                assert_eq!(m(Ne, v.clone(), r.clone()), !m(Eq, v.clone(), r.clone()));
            }
        }
    }

    #[test]
    fn numeric_string_recognition() {
        assert_eq!(Num::parse("12"), Some(Num::UInt(12)));
        assert_eq!(Num::parse("-12"), Some(Num::Int(-12)));
        assert_eq!(Num::parse("-1.5"), Some(Num::Float(-1.5)));
        assert_eq!(Num::parse(".5"), Some(Num::Float(0.5)));
        assert_eq!(Num::parse("+3"), Some(Num::UInt(3)));
        assert_eq!(Num::parse("1e400"), None);
        assert!(matches!(
            Num::parse("123456789012345678901234567890"),
            Some(Num::Float(_))
        ));
        for bad in [
            "", "a1", "1a", "inf", "-inf", "NaN", "infinity", "1e999", " 1", "1 ",
        ] {
            assert_eq!(Num::parse(bad), None, "{bad:?}");
        }
        assert!(Operand::new(json!(1)).is_json_number());
        assert!(!Operand::new(json!("1")).is_json_number());
    }
}
