//! `directory.resolver = "thing-lambda"`: the platform's ThingLambda (spec 11) through the Lambda
//! Invoke API. `GET` with `thingType`, `domain` and `domainTopic` set to null answers one thing;
//! `FIND` pages through all of them for `ccstream directory import --from-thing-lambda`.
//!
//! A function error comes as the platform sends it (spec 1.2): `X-Amz-Function-Error` and
//! `{"errorMessage": "<JSON string>"}` whose `messageKey` says what went wrong.

use aws_sdk_lambda::error::DisplayErrorContext;
use aws_sdk_lambda::primitives::Blob;
use serde_json::{json, Value};

use super::{parse_domain, Answer, ResolvedThing};

pub struct ThingLambda {
    client: aws_sdk_lambda::Client,
    function: String,
}

/// Why an invocation gave no result.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The function ran and refused: its `messageKey` (e.g. `THING_NOT_FOUND`) and message.
    #[error("ThingLambda refused: {message}")]
    Function {
        key: Option<String>,
        message: String,
    },
    /// The call did not reach the function, or its answer was not JSON.
    #[error("invoking ThingLambda: {0}")]
    Call(String),
}

impl ThingLambda {
    pub fn new(sdk: &aws_config::SdkConfig, function: &str) -> Self {
        Self {
            client: aws_sdk_lambda::Client::new(sdk),
            function: function.trim().to_owned(),
        }
    }

    /// Invokes the function with `payload`; its JSON answer.
    pub async fn invoke(&self, payload: &Value) -> Result<Value, InvokeError> {
        let out = self
            .client
            .invoke()
            .function_name(&self.function)
            .payload(Blob::new(payload.to_string()))
            .send()
            .await
            .map_err(|e| InvokeError::Call(DisplayErrorContext(e).to_string()))?;
        let body: Value = match out.payload() {
            Some(blob) => serde_json::from_slice(blob.as_ref())
                .map_err(|e| InvokeError::Call(format!("the answer is not JSON: {e}")))?,
            None => Value::Null,
        };
        if out.function_error().is_some() {
            return Err(function_error(&body));
        }
        Ok(body)
    }

    pub async fn lookup(&self, thing_name: &str) -> Answer {
        let get = json!({"action": "GET", "attributes": {
            "thingName": thing_name, "thingType": null, "domain": null, "domainTopic": null}});
        match self.invoke(&get).await {
            Ok(thing) => match thing_from_json(&thing) {
                Ok((_, resolved)) => Answer::Found(resolved),
                Err(missing) => Answer::NotFound(format!("ThingLambda's answer lacks {missing}")),
            },
            // The function ran and refused (THING_NOT_FOUND, NOT_AUTHORIZED_DOMAIN, a name it
            // rejects): about this thing, not the service, so no pause for the others.
            Err(InvokeError::Function { key, message }) => Answer::NotFound(match key {
                Some(key) => format!("{key}: {message}"),
                None => message,
            }),
            Err(e) => Answer::Failed(e.to_string()),
        }
    }

    /// One page of `FIND`: up to `size` things whose names sort after `after`, by name (a
    /// range on the name instead of `from`, which the index caps at its result window).
    pub async fn find_page(
        &self,
        after: Option<&str>,
        size: usize,
    ) -> Result<Vec<Value>, InvokeError> {
        let query = match after {
            Some(after) => json!({"range": {"thingName": {"gt": after}}}),
            None => json!({"match_all": {}}),
        };
        let find = json!({"action": "FIND", "query": {
            "size": size, "query": query, "sort": [{"thingName": {"order": "asc"}}]}});
        let answer = self.invoke(&find).await?;
        let hits = answer
            .pointer("/hits/hits")
            .and_then(Value::as_array)
            .ok_or_else(|| InvokeError::Call("the FIND answer has no hits.hits".into()))?;
        Ok(hits
            .iter()
            .map(|h| h.get("_source").cloned().unwrap_or(Value::Null))
            .collect())
    }
}

/// The error object inside `errorMessage` (a JSON string), or the payload itself.
fn function_error(body: &Value) -> InvokeError {
    let inner = match body.get("errorMessage").and_then(Value::as_str) {
        Some(text) => serde_json::from_str(text).unwrap_or_else(|_| json!({ "message": text })),
        None => body.clone(),
    };
    InvokeError::Function {
        key: inner
            .get("messageKey")
            .and_then(Value::as_str)
            .map(str::to_owned),
        message: inner
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| inner.to_string(), str::to_owned),
    }
}

/// A thing as ThingLambda writes it (GET's output, FIND's `_source`): `thingName`,
/// `thingType` (a string or a number), `domain` (an id, or an object with `id`) and, when
/// present, `domainTopic` (`/sub1/sub2/`), which gives the domain's ancestors. Err: the field
/// that is missing.
pub fn thing_from_json(thing: &Value) -> Result<(String, ResolvedThing), &'static str> {
    let name = thing
        .get("thingName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or("thingName")?;
    let thing_type = match thing.get("thingType") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err("thingType"),
    };
    let domain = match thing.get("domain") {
        Some(Value::String(d)) => d.as_str(),
        Some(d) => d.get("id").and_then(Value::as_str).unwrap_or_default(),
        None => "",
    };
    let (domain, _) = parse_domain(domain).ok_or("domain")?;
    // The topic path is the platform's word on the ancestors, when it ends at the domain.
    let ancestors = thing
        .get("domainTopic")
        .and_then(Value::as_str)
        .and_then(parse_domain)
        .filter(|(last, _)| *last == domain)
        .and_then(|(_, ancestors)| ancestors);
    Ok((
        name.to_owned(),
        ResolvedThing {
            thing_type,
            domain,
            ancestors,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn things_are_read_as_the_spec_writes_them() {
        let (name, t) = thing_from_json(&json!({"thingName": "t1", "thingType": "Pump",
            "domain": {"id": "sub2", "name": "Sub 2"}, "domainTopic": "/sub1/sub2/"}))
        .expect("a thing");
        assert_eq!(name, "t1");
        assert_eq!(t.domain, "sub2");
        assert_eq!(t.ancestors, Some(vec!["sub1".to_owned()]));
        let (_, t) = thing_from_json(&json!({"thingName": "t2", "thingType": 7, "domain": "sub1"}))
            .expect("a thing");
        assert_eq!((t.thing_type.as_str(), t.ancestors), ("7", None));
        // A topic that ends elsewhere is not believed.
        let (_, t) = thing_from_json(&json!({"thingName": "t3", "thingType": "P",
            "domain": "sub1", "domainTopic": "/other/"}))
        .expect("a thing");
        assert_eq!(t.ancestors, None);
        assert_eq!(
            thing_from_json(&json!({"thingName": "t", "domain": "d"})),
            Err("thingType")
        );
        assert_eq!(
            thing_from_json(&json!({"thingName": "t", "thingType": "P"})),
            Err("domain")
        );
        assert_eq!(
            thing_from_json(&json!({"thingType": "P", "domain": "d"})),
            Err("thingName")
        );
    }

    #[test]
    fn function_errors_carry_the_message_key() {
        let body = json!({"errorMessage": json!({"message": "no such thing",
            "messageKey": "THING_NOT_FOUND", "property": "thingName"}).to_string()});
        match function_error(&body) {
            InvokeError::Function { key, message } => {
                assert_eq!(key.as_deref(), Some("THING_NOT_FOUND"));
                assert_eq!(message, "no such thing");
            }
            other => panic!("{other:?}"),
        }
    }
}
