//! Validation of rule input (spec 6.2.1 CREATE and 6.2.5 UPDATE `attributes`).
//!
//! Works on the raw JSON so that every failure can name the property it concerns
//! (`filter.thingType`, `actions[0].config.url`) and a documented `messageKey`.
//!
//! The checks run in a fixed order and the first failure is returned, so that API tests can
//! assert one exact error: `attributes`, `id`, `name`, `description`, `enabled`, `filter`
//! (`domain`, `thingType`, `thingNames`), `expression` (`operator`, `resource`, `value`),
//! `actions` (per entry: `type`, `config`, `config.url`, `config.method`, `config.headers`),
//! `threshold` (`count`, `interval`).
//!
//! Conventions, the same for every property:
//! - JSON `null` is the same as an absent property (clients send `null` for "not set").
//! - Absent and required: `PROPERTY_REQUIRED`.
//! - Wrong JSON type or a value outside an allowed set: `INVALID_ARGUMENTS`.
//! - A string or list of the right type but the wrong length: `PROPERTY_NOT_IN_RANGE` with
//!   `minLength`/`maxLength` (strings) or `min`/`max` (number of entries). Lengths count
//!   characters (Unicode scalar values), not bytes. The webhook url is the one exception: the
//!   brief makes every url failure `INVALID_ARGUMENTS`.
//! - `threshold` numbers: `PROPERTY_NOT_A_NUMBER` for a non-number (spec 6.3 uses the same key for
//!   `requestedSize`), `PROPERTY_NOT_IN_RANGE` with `min`/`max` for a bad number.

use serde_json::{json, Map, Value};
use url::Url;

use crate::compare::Num;
use crate::rule::{Action, ActionType, Expression, Filter, Operator, Rule, ThingType, Threshold};

/// Longest rule id; ids are limited to `[A-Za-z0-9._:-]`.
pub const MAX_ID_LEN: usize = 128;
/// Longest rule name.
pub const MAX_NAME_LEN: usize = 256;
/// Longest rule description.
pub const MAX_DESCRIPTION_LEN: usize = 4096;
/// Longest `filter.domain`, `filter.thingType` (as a string) and `filter.thingNames` entry.
pub const MAX_FILTER_ID_LEN: usize = 128;
/// Most entries in `filter.thingNames`.
pub const MAX_THING_NAMES: usize = 10_000;
/// Longest `expression.resource`.
pub const MAX_RESOURCE_LEN: usize = 256;
/// Most actions in one rule.
pub const MAX_ACTIONS: usize = 10;
/// Longest webhook url (before templates are filled).
pub const MAX_URL_LEN: usize = 2048;
/// Deepest nesting of objects and arrays in an action's `config` (the config itself is level
/// 1). A stored rule is read back by a JSON parser with a depth limit (serde_json's 128); a
/// rule whose config nests deeper than that would be accepted once and then never load again.
/// The API's own parser keeps request bodies within that limit, so this guards the store
/// against any other caller of [`validate_rule`]; no webhook body needs more.
pub const MAX_CONFIG_DEPTH: usize = 32;
/// Largest `threshold.count`.
pub const MAX_THRESHOLD_COUNT: u64 = 1_000_000;
/// Largest `threshold.interval`: one year in milliseconds.
pub const MAX_THRESHOLD_INTERVAL: u64 = 31_536_000_000;
/// Webhook methods accepted in `config.method` (compared case-insensitively).
pub const WEBHOOK_METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// The `messageKey`s validation can answer with (spec 1.2; the keys follow the spec's naming).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKey {
    /// A required property is missing or null.
    PropertyRequired,
    /// A property has the wrong JSON type or a value outside its allowed set.
    InvalidArguments,
    /// `threshold.count` / `threshold.interval` is not a number.
    PropertyNotANumber,
    /// A number or a length outside its allowed range.
    PropertyNotInRange,
}

impl MessageKey {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKey::PropertyRequired => "PROPERTY_REQUIRED",
            MessageKey::InvalidArguments => "INVALID_ARGUMENTS",
            MessageKey::PropertyNotANumber => "PROPERTY_NOT_A_NUMBER",
            MessageKey::PropertyNotInRange => "PROPERTY_NOT_IN_RANGE",
        }
    }
}

/// One validation failure.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub key: MessageKey,
    /// Dotted path of the offending property, e.g. `filter.thingType`, `actions[0].config.url`.
    pub property: String,
    /// Human-readable, English.
    pub message: String,
    /// Extra facts for localization (`maxLength`, `allowed`, ...), when there are any.
    pub params: Option<Map<String, Value>>,
}

impl Invalid {
    fn new(key: MessageKey, property: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid {
            key,
            property: property.into(),
            message: message.into(),
            params: None,
        }
    }

    fn required(property: &str) -> Self {
        Invalid::new(
            MessageKey::PropertyRequired,
            property,
            format!("{property} is required"),
        )
    }

    fn invalid_arguments(property: &str, message: impl Into<String>) -> Self {
        Invalid::new(MessageKey::InvalidArguments, property, message)
    }

    fn not_in_range(property: &str, message: impl Into<String>) -> Self {
        Invalid::new(MessageKey::PropertyNotInRange, property, message)
    }

    /// `params` must be a JSON object literal; anything else leaves the params empty.
    fn with_params(mut self, params: Value) -> Self {
        if let Value::Object(map) = params {
            self.params = Some(map);
        }
        self
    }

    /// The error object of spec 1.2: `{message, messageKey, messageParams?, property}`. The invoke
    /// response carries it serialized as the `errorMessage` string.
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("message".into(), Value::String(self.message.clone()));
        out.insert("messageKey".into(), Value::String(self.key.as_str().into()));
        if let Some(params) = &self.params {
            out.insert("messageParams".into(), Value::Object(params.clone()));
        }
        out.insert("property".into(), Value::String(self.property.clone()));
        Value::Object(out)
    }
}

/// CREATE may omit `id` (the store generates one); UPDATE must name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidateMode {
    Create,
    Update,
}

/// The number a JSON value stands for when a rule compares numbers: a JSON number, or a string
/// that holds a finite decimal number (surrounding whitespace allowed, as JavaScript's `Number()`
/// allows it). DESIGN.md: "numeric strings count as numbers". The same reading as evaluation's
/// ([`Num::of_rule_value`]), so a gt/gte/lt/lte rule that validates can fire.
pub fn numeric_value(value: &Value) -> Option<f64> {
    Num::of_rule_value(value).map(Num::as_f64)
}

/// Validates `attributes` and builds the rule. In `Create` mode a missing id yields
/// `Rule { id: String::new(), .. }` for the caller to fill.
///
/// Unknown top-level keys are ignored, and so is `readonly`, which the API computes per caller
/// (spec 6.1). Unknown keys inside an action `config` are kept as they are: the config is
/// specific to each action type and passed through template filling whole.
pub fn validate_rule(attributes: &Value, mode: ValidateMode) -> Result<Rule, Invalid> {
    let attrs = attributes
        .as_object()
        .ok_or_else(|| Invalid::invalid_arguments("attributes", "attributes must be an object"))?;

    let id = validate_id(attrs, mode)?;
    let name = validate_name(attrs)?;
    let description = validate_description(attrs)?;
    let enabled = match required(attrs, "enabled", "enabled")? {
        Value::Bool(b) => *b,
        _ => {
            return Err(Invalid::invalid_arguments(
                "enabled",
                "enabled must be a boolean",
            ))
        }
    };
    let filter = validate_filter(required_object(attrs, "filter", "filter")?)?;
    let expression = validate_expression(required_object(attrs, "expression", "expression")?)?;
    let actions = validate_actions(attrs)?;
    let threshold = validate_threshold(attrs)?;

    Ok(Rule {
        id,
        name,
        description,
        enabled,
        filter,
        expression,
        actions,
        threshold,
    })
}

// ---- helpers ---------------------------------------------------------------------------------

type Object = Map<String, Value>;

/// `obj[key]`, with JSON null read as absent.
fn get<'a>(obj: &'a Object, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn required<'a>(obj: &'a Object, key: &str, path: &str) -> Result<&'a Value, Invalid> {
    get(obj, key).ok_or_else(|| Invalid::required(path))
}

fn as_str<'a>(value: &'a Value, path: &str) -> Result<&'a str, Invalid> {
    value
        .as_str()
        .ok_or_else(|| Invalid::invalid_arguments(path, format!("{path} must be a string")))
}

fn as_object<'a>(value: &'a Value, path: &str) -> Result<&'a Object, Invalid> {
    value
        .as_object()
        .ok_or_else(|| Invalid::invalid_arguments(path, format!("{path} must be an object")))
}

fn required_object<'a>(obj: &'a Object, key: &str, path: &str) -> Result<&'a Object, Invalid> {
    as_object(required(obj, key, path)?, path)
}

/// A required string of `1..=max` characters.
fn required_string<'a>(
    obj: &'a Object,
    key: &str,
    path: &str,
    max: usize,
) -> Result<&'a str, Invalid> {
    let s = as_str(required(obj, key, path)?, path)?;
    check_length(s, path, max)?;
    Ok(s)
}

/// `1..=max` characters, else PROPERTY_NOT_IN_RANGE with `minLength`/`maxLength`.
fn check_length(s: &str, path: &str, max: usize) -> Result<(), Invalid> {
    let len = s.chars().count();
    if len == 0 || len > max {
        return Err(Invalid::not_in_range(
            path,
            format!("{path} must be 1 to {max} characters long"),
        )
        .with_params(json!({ "minLength": 1, "maxLength": max })));
    }
    Ok(())
}

fn index_path(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

// ---- top level -------------------------------------------------------------------------------

fn validate_id(attrs: &Object, mode: ValidateMode) -> Result<String, Invalid> {
    let Some(value) = get(attrs, "id") else {
        return match mode {
            ValidateMode::Create => Ok(String::new()),
            ValidateMode::Update => Err(Invalid::required("id")),
        };
    };
    let id = as_str(value, "id")?;
    check_length(id, "id", MAX_ID_LEN)?;
    // Ids travel in URLs, log lines and webhook payloads; keep them to a safe alphabet.
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
    if !id.chars().all(allowed) {
        return Err(Invalid::invalid_arguments(
            "id",
            "id may contain only letters, digits and . _ : -",
        ));
    }
    Ok(id.to_owned())
}

fn validate_name(attrs: &Object) -> Result<String, Invalid> {
    let name = as_str(required(attrs, "name", "name")?, "name")?;
    if name.trim().is_empty() {
        return Err(Invalid::not_in_range("name", "name must not be blank")
            .with_params(json!({ "minLength": 1, "maxLength": MAX_NAME_LEN })));
    }
    check_length(name, "name", MAX_NAME_LEN)?;
    Ok(name.to_owned())
}

fn validate_description(attrs: &Object) -> Result<Option<String>, Invalid> {
    let Some(value) = get(attrs, "description") else {
        return Ok(None);
    };
    let description = as_str(value, "description")?;
    if description.chars().count() > MAX_DESCRIPTION_LEN {
        return Err(Invalid::not_in_range(
            "description",
            format!("description must be at most {MAX_DESCRIPTION_LEN} characters long"),
        )
        .with_params(json!({ "maxLength": MAX_DESCRIPTION_LEN })));
    }
    Ok(Some(description.to_owned()))
}

// ---- filter ----------------------------------------------------------------------------------

fn validate_filter(filter: &Object) -> Result<Filter, Invalid> {
    let domain = required_string(filter, "domain", "filter.domain", MAX_FILTER_ID_LEN)?;

    // Thing type ids are numbers in the platform (spec 1.3 shows `"thingType": 1`) while spec
    // 6.2.1 shows a name ('Pump'): accept both, and keep which one it was.
    let thing_type = match required(filter, "thingType", "filter.thingType")? {
        Value::String(s) => {
            check_length(s, "filter.thingType", MAX_FILTER_ID_LEN)?;
            ThingType::name(s.as_str())
        }
        value => value
            .as_number()
            .and_then(ThingType::integer)
            .ok_or_else(|| {
                Invalid::invalid_arguments(
                    "filter.thingType",
                    "filter.thingType must be a string or an integer",
                )
            })?,
    };

    let thing_names = match get(filter, "thingNames") {
        None => None,
        Some(Value::Array(names)) => {
            if names.len() > MAX_THING_NAMES {
                return Err(Invalid::not_in_range(
                    "filter.thingNames",
                    format!("filter.thingNames must have at most {MAX_THING_NAMES} entries"),
                )
                .with_params(json!({ "min": 0, "max": MAX_THING_NAMES })));
            }
            names
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let path = index_path("filter.thingNames", i);
                    let name = as_str(name, &path)?;
                    check_length(name, &path, MAX_FILTER_ID_LEN)?;
                    Ok(name.to_owned())
                })
                .collect::<Result<Vec<_>, Invalid>>()
                .map(Some)?
        }
        Some(_) => {
            return Err(Invalid::invalid_arguments(
                "filter.thingNames",
                "filter.thingNames must be an array of strings",
            ))
        }
    };

    Ok(Filter {
        domain: domain.to_owned(),
        thing_type,
        thing_names,
    })
}

// ---- expression ------------------------------------------------------------------------------

fn validate_expression(expression: &Object) -> Result<Expression, Invalid> {
    let allowed = || json!({ "allowed": Operator::ALL.map(Operator::as_str) });
    let operator = required(expression, "operator", "expression.operator")?
        .as_str()
        .and_then(Operator::parse)
        .ok_or_else(|| {
            Invalid::invalid_arguments(
                "expression.operator",
                "expression.operator must be one of gt, gte, lt, lte, eq, ne",
            )
            .with_params(allowed())
        })?;

    let resource = required_string(
        expression,
        "resource",
        "expression.resource",
        MAX_RESOURCE_LEN,
    )?;
    // Spec 6.1: `temp` names a thing resource, `<subThingType>.temp` a sub thing resource.
    if resource.split('.').any(str::is_empty) {
        return Err(Invalid::invalid_arguments(
            "expression.resource",
            "expression.resource must not have empty path segments",
        ));
    }
    if resource.matches('.').count() > 1 {
        return Err(Invalid::invalid_arguments(
            "expression.resource",
            "expression.resource must be <resource> or <subThingType>.<resource>",
        ));
    }

    let value = required(expression, "value", "expression.value")?;
    if value.is_object() || value.is_array() {
        return Err(Invalid::invalid_arguments(
            "expression.value",
            "expression.value must be a string, number or boolean",
        ));
    }
    let orders = matches!(
        operator,
        Operator::Gt | Operator::Gte | Operator::Lt | Operator::Lte
    );
    if orders && numeric_value(value).is_none() {
        let op = operator.as_str();
        return Err(Invalid::invalid_arguments(
            "expression.value",
            format!(
                "operator {op} compares numbers: \
                 expression.value must be a number or a numeric string"
            ),
        )
        .with_params(json!({ "operator": op })));
    }

    Ok(Expression {
        operator,
        resource: resource.to_owned(),
        value: value.clone(),
    })
}

// ---- actions ---------------------------------------------------------------------------------

fn validate_actions(attrs: &Object) -> Result<Vec<Action>, Invalid> {
    let actions = required(attrs, "actions", "actions")?
        .as_array()
        .ok_or_else(|| Invalid::invalid_arguments("actions", "actions must be an array"))?;
    if actions.is_empty() || actions.len() > MAX_ACTIONS {
        return Err(Invalid::not_in_range(
            "actions",
            format!("actions must have 1 to {MAX_ACTIONS} entries"),
        )
        .with_params(json!({ "min": 1, "max": MAX_ACTIONS })));
    }
    actions
        .iter()
        .enumerate()
        .map(|(i, action)| validate_action(action, &index_path("actions", i)))
        .collect()
}

fn validate_action(action: &Value, path: &str) -> Result<Action, Invalid> {
    let action = as_object(action, path)?;

    let type_path = format!("{path}.type");
    let kind = match required(action, "type", &type_path)?.as_str() {
        Some("WEBHOOK") => ActionType::Webhook,
        _ => {
            return Err(Invalid::invalid_arguments(
                &type_path,
                format!("{type_path} must be WEBHOOK"),
            )
            .with_params(json!({ "allowed": ["WEBHOOK"] })))
        }
    };

    let config_path = format!("{path}.config");
    let config = required_object(action, "config", &config_path)?;
    if config
        .values()
        .any(|v| deeper_than(v, MAX_CONFIG_DEPTH - 1))
    {
        return Err(Invalid::not_in_range(
            &config_path,
            format!("{config_path} must not nest objects and arrays deeper than {MAX_CONFIG_DEPTH} levels"),
        )
        .with_params(json!({ "max": MAX_CONFIG_DEPTH })));
    }
    match kind {
        ActionType::Webhook => validate_webhook_config(config, &config_path)?,
    }

    Ok(Action {
        kind,
        config: config.clone(),
    })
}

/// Whether `value` nests objects and arrays more than `levels` deep (a scalar is 0 deep); walks
/// no further than that.
fn deeper_than(value: &Value, levels: usize) -> bool {
    match value {
        Value::Object(map) => levels == 0 || map.values().any(|v| deeper_than(v, levels - 1)),
        Value::Array(items) => levels == 0 || items.iter().any(|v| deeper_than(v, levels - 1)),
        _ => false,
    }
}

fn validate_webhook_config(config: &Object, path: &str) -> Result<(), Invalid> {
    let url_path = format!("{path}.url");
    let url = as_str(required(config, "url", &url_path)?, &url_path)?;
    if url.chars().count() > MAX_URL_LEN {
        return Err(Invalid::invalid_arguments(
            &url_path,
            format!("{url_path} must be at most {MAX_URL_LEN} characters long"),
        )
        .with_params(json!({ "maxLength": MAX_URL_LEN })));
    }
    check_webhook_url(url)
        .map_err(|why| Invalid::invalid_arguments(&url_path, format!("{url_path} {why}")))?;

    if let Some(method) = get(config, "method") {
        let method_path = format!("{path}.method");
        let known = method
            .as_str()
            .is_some_and(|m| WEBHOOK_METHODS.iter().any(|k| k.eq_ignore_ascii_case(m)));
        if !known {
            return Err(Invalid::invalid_arguments(
                &method_path,
                format!("{method_path} must be one of GET, POST, PUT, PATCH, DELETE"),
            )
            .with_params(json!({ "allowed": WEBHOOK_METHODS })));
        }
    }

    if let Some(headers) = get(config, "headers") {
        let headers_path = format!("{path}.headers");
        let headers = as_object(headers, &headers_path)?;
        for (name, value) in headers {
            let header_path = format!("{headers_path}.{name}");
            // Refused here rather than at every trigger, when the HTTP client would reject them.
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return Err(Invalid::invalid_arguments(
                    &header_path,
                    format!("{header_path} is not a valid header name"),
                ));
            }
            let value = as_str(value, &header_path)?;
            if value.contains(['\r', '\n', '\0']) {
                return Err(Invalid::invalid_arguments(
                    &header_path,
                    format!("{header_path} must not contain line breaks"),
                ));
            }
        }
    }
    // `body` may be any JSON (a string is sent as is, anything else as JSON); nothing to check.
    Ok(())
}

/// Checks a webhook url before its `${...}` templates are filled. The error completes the
/// sentence "actions[0].config.url ...".
///
/// A url without templates must parse as an absolute http(s) url with a host. A url with
/// templates may not parse until filled, so only the part before the first `${` is parsed, and
/// that part must already end the authority (a `/`, `?` or `#` after the host): scheme and host
/// must be literal, so that a payload value can never choose where the request goes.
fn check_webhook_url(url: &str) -> Result<(), &'static str> {
    let Some(at) = url.find("${") else {
        return check_http_url(url);
    };
    let literal = &url[..at];
    let authority_closed = literal
        .split_once("://")
        .is_some_and(|(_, rest)| rest.contains(['/', '?', '#']));
    if !authority_closed {
        return Err("must have a literal scheme and host before any ${...} template");
    }
    check_http_url(literal)
}

fn check_http_url(url: &str) -> Result<(), &'static str> {
    let parsed = Url::parse(url).map_err(|_| "is not a valid absolute url")?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must be an http or https url");
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("must have a host");
    }
    Ok(())
}

/// RFC 9110 `tchar`: the bytes allowed in a header name.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

// ---- threshold -------------------------------------------------------------------------------

fn validate_threshold(attrs: &Object) -> Result<Option<Threshold>, Invalid> {
    // DESIGN.md: the spec lists `threshold` both as optional and as PROPERTY_REQUIRED; the rule
    // table (6.1, 6.2.1.1) says optional, so absent means no throttling.
    let Some(value) = get(attrs, "threshold") else {
        return Ok(None);
    };
    let threshold = as_object(value, "threshold")?;
    Ok(Some(Threshold {
        count: threshold_number(threshold, "count", MAX_THRESHOLD_COUNT)?,
        interval: threshold_number(threshold, "interval", MAX_THRESHOLD_INTERVAL)?,
    }))
}

/// An optional non-negative integer up to `max`. Integer-valued floats (`5.0`) are accepted:
/// JavaScript clients cannot tell them apart.
fn threshold_number(threshold: &Object, key: &str, max: u64) -> Result<Option<u64>, Invalid> {
    let path = format!("threshold.{key}");
    let Some(value) = get(threshold, key) else {
        return Ok(None);
    };
    let Value::Number(n) = value else {
        return Err(Invalid::new(
            MessageKey::PropertyNotANumber,
            &path,
            format!("{path} must be a number"),
        ));
    };
    let negative_or_fraction = || {
        Invalid::not_in_range(&path, format!("{path} must be a non-negative integer"))
            .with_params(json!({ "min": 0 }))
    };
    let too_large = || {
        Invalid::not_in_range(&path, format!("{path} must be at most {max}"))
            .with_params(json!({ "min": 0, "max": max }))
    };
    let number = if let Some(u) = n.as_u64() {
        u
    } else if n.is_i64() {
        return Err(negative_or_fraction());
    } else {
        let f = n.as_f64().ok_or_else(negative_or_fraction)?;
        if f < 0.0 || f.fract() != 0.0 {
            return Err(negative_or_fraction());
        }
        if f > max as f64 {
            return Err(too_large());
        }
        // In range and integral, so the cast is exact.
        f as u64
    };
    if number > max {
        return Err(too_large());
    }
    Ok(Some(number))
}

#[cfg(test)]
mod tests;
