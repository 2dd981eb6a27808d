//! The rule of spec 6.1.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// A rule as stored and as returned by the Rule API (without the computed `readonly`, which
/// depends on who asks; the API adds it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub enabled: bool,
    pub filter: Filter,
    pub expression: Expression,
    pub actions: Vec<Action>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Threshold>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    pub domain: String,
    pub thing_type: ThingType,
    /// `None` (not given) and an empty list both mean every thing of the type in the domain
    /// subtree; the rule is answered as it was given (spec 6.1 lists the property as optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thing_names: Option<Vec<String>>,
}

impl Filter {
    /// The listed thing names, empty when the filter names none.
    pub fn thing_names(&self) -> &[String] {
        self.thing_names.as_deref().unwrap_or_default()
    }
}

/// `filter.thingType`: a name (`'Pump'`, spec 6.2.1) or a platform thing type id (`1`, spec
/// 1.3). Matched as text, an id by its decimal digits (the form the directory keeps), and
/// answered and put into webhook payloads in the JSON type it was given in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ThingType {
    text: String,
    /// Given as a JSON integer; `text` then holds its decimal digits.
    integer: bool,
}

impl ThingType {
    /// A thing type given by name.
    pub fn name(name: impl Into<String>) -> Self {
        ThingType {
            text: name.into(),
            integer: false,
        }
    }

    /// A thing type given as a JSON integer; `None` for a number that is not an integer.
    pub fn integer(n: &serde_json::Number) -> Option<Self> {
        (n.is_i64() || n.is_u64()).then(|| ThingType {
            text: n.to_string(),
            integer: true,
        })
    }

    /// The text rules match things' types against.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether it was given as a JSON integer.
    pub fn is_integer(&self) -> bool {
        self.integer
    }
}

impl fmt::Display for ThingType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl From<&str> for ThingType {
    fn from(name: &str) -> Self {
        ThingType::name(name)
    }
}

impl PartialEq<&str> for ThingType {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

impl Serialize for ThingType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.integer {
            if let Ok(u) = self.text.parse::<u64>() {
                return serializer.serialize_u64(u);
            }
            if let Ok(i) = self.text.parse::<i64>() {
                return serializer.serialize_i64(i);
            }
        }
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for ThingType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::String(name) => Ok(ThingType::name(name)),
            Value::Number(n) => ThingType::integer(&n)
                .ok_or_else(|| serde::de::Error::custom("thingType must be an integer")),
            _ => Err(serde::de::Error::custom(
                "thingType must be a string or an integer",
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Expression {
    pub operator: Operator,
    /// `temp` for a thing resource, `<subThingType>.temp` for a sub thing resource.
    pub resource: String,
    /// A JSON scalar: string, number or boolean.
    pub value: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operator {
    Gt,
    Gte,
    Lt,
    Lte,
    Eq,
    Ne,
}

impl Operator {
    pub const ALL: [Operator; 6] = [
        Operator::Gt,
        Operator::Gte,
        Operator::Lt,
        Operator::Lte,
        Operator::Eq,
        Operator::Ne,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operator::Gt => "gt",
            Operator::Gte => "gte",
            Operator::Lt => "lt",
            Operator::Lte => "lte",
            Operator::Eq => "eq",
            Operator::Ne => "ne",
        }
    }

    pub fn parse(s: &str) -> Option<Operator> {
        Operator::ALL.into_iter().find(|op| op.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    #[serde(rename = "type")]
    pub kind: ActionType,
    /// Specific to the action type; every string in it is a template (spec 6.1).
    pub config: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    #[serde(rename = "WEBHOOK")]
    Webhook,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Threshold {
    /// Matches in a row before the actions run; 0 and 1 both mean every match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Minimum milliseconds between two runs of the actions for the same thing and resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<u64>,
}
