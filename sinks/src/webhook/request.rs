//! A webhook firing: built from a rule action's (template-filled) config, then turned into the
//! HTTP request the dispatcher sends.

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::Method;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use url::Url;

/// Largest request body sent, in bytes (observations are at most 128 KiB; a body bigger than
/// this is a misconfigured template).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Most headers a rule action may set.
pub const MAX_HEADERS: usize = 32;
/// Longest URL accepted.
pub const MAX_URL_BYTES: usize = 8 * 1024;
/// The header carrying [`WebhookRequest::idempotency_key`], the same on every attempt.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Methods a WEBHOOK action may use (`CONNECT` and `TRACE` are not webhooks).
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Headers an action may not set: connection framing belongs to the HTTP client, and the
/// idempotency key to the dispatcher.
const RESERVED_HEADERS: [&str; 10] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    IDEMPOTENCY_KEY,
];

/// The body of a webhook request (in the outbox as `{"type": "json", "value": ...}`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
pub enum WebhookBody {
    /// No body (a GET or HEAD without a configured `body`).
    Empty,
    /// Sent as is, `text/plain; charset=utf-8` unless a `Content-Type` header says otherwise.
    Text(String),
    /// Serialized, `application/json` unless a `Content-Type` header says otherwise.
    Json(JsonBody),
}

impl WebhookBody {
    /// A JSON body of `value`.
    pub fn json(value: &Value) -> Result<Self, RequestError> {
        JsonBody::new(value).map(WebhookBody::Json)
    }
}

/// A JSON body, serialized once when the firing is made: the outbox stores the text and every
/// attempt sends it as it is (a body is not serialized once per copy).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct JsonBody(Box<RawValue>);

impl JsonBody {
    /// `value` as compact JSON.
    pub fn new(value: &Value) -> Result<Self, RequestError> {
        serde_json::value::to_raw_value(value)
            .map(JsonBody)
            .map_err(|e| RequestError::Body(e.to_string()))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The body as a JSON value (for dead letters).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.0.get()).unwrap_or(Value::Null)
    }
}

impl PartialEq for JsonBody {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

/// One firing of a rule's WEBHOOK action (as stored in the outbox: JSON, camelCase keys).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookRequest {
    /// The rule that fired (logs and dead letters).
    pub rule_id: String,
    /// Destination, template-filled.
    pub url: String,
    /// HTTP method, upper case.
    pub method: String,
    /// Extra headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: WebhookBody,
    /// Sent as `Idempotency-Key`, identical on every attempt of this firing.
    pub idempotency_key: String,
}

/// Why an action config does not make a webhook request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// `config.url` is missing or empty.
    #[error("webhook config has no url")]
    MissingUrl,
    /// A config key has the wrong JSON type.
    #[error("webhook config {key} must be {expected}")]
    WrongType {
        /// The key (`url`, `method`, `headers`, `headers.X-Token`).
        key: String,
        /// What it must be.
        expected: &'static str,
    },
    /// The url does not parse, is too long, or is not http(s) with a host.
    #[error("webhook url {url} is not valid: {reason}")]
    InvalidUrl {
        /// The url (cut to 200 characters).
        url: String,
        /// Why.
        reason: String,
    },
    /// A method other than GET, HEAD, POST, PUT, PATCH, DELETE and OPTIONS.
    #[error(
        "webhook method {0} is not supported (use GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS)"
    )]
    Method(String),
    /// A header name or value that HTTP does not allow.
    #[error("webhook header {0} is not a valid HTTP header")]
    Header(String),
    /// A header the client or dispatcher sets itself.
    #[error("webhook header {0} is set by ccstream and cannot be configured")]
    ReservedHeader(String),
    /// More than [`MAX_HEADERS`] headers.
    #[error("webhook config has {0} headers, more than the {MAX_HEADERS} allowed")]
    TooManyHeaders(usize),
    /// A body over [`MAX_BODY_BYTES`].
    #[error("webhook body is {0} bytes, more than the {MAX_BODY_BYTES} allowed")]
    BodyTooLarge(usize),
    /// The JSON body could not be serialized.
    #[error("webhook body cannot be serialized: {0}")]
    Body(String),
}

/// A request checked and ready to send, built once per firing and reused by every attempt.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    pub(crate) url: Url,
    pub(crate) method: Method,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
}

impl WebhookRequest {
    /// Builds a firing from a rule action's `config` (already template-filled) and the spec 6.1
    /// payload: `url` (required), `method` (default POST), `headers` (an object; string values as
    /// they are, numbers and booleans as their JSON text), `body` (a string is sent as text, any
    /// other JSON value serialized; absent or null: the whole payload as JSON, or no body for GET
    /// and HEAD).
    pub fn from_action_config(
        rule_id: impl Into<String>,
        config: &Map<String, Value>,
        payload: &Value,
        idempotency_key: impl Into<String>,
    ) -> Result<Self, RequestError> {
        let url = match config.get("url") {
            None | Some(Value::Null) => return Err(RequestError::MissingUrl),
            Some(Value::String(s)) if s.trim().is_empty() => return Err(RequestError::MissingUrl),
            Some(Value::String(s)) => s.trim().to_owned(),
            Some(_) => return Err(wrong_type("url", "a string")),
        };
        let method = match config.get("method") {
            None | Some(Value::Null) => "POST".to_owned(),
            Some(Value::String(s)) => s.trim().to_ascii_uppercase(),
            Some(_) => return Err(wrong_type("method", "a string")),
        };
        let headers = match config.get("headers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(map)) => header_pairs(map)?,
            Some(_) => return Err(wrong_type("headers", "an object of name: value")),
        };
        let body = match config.get("body") {
            None | Some(Value::Null) if matches!(method.as_str(), "GET" | "HEAD") => {
                WebhookBody::Empty
            }
            None | Some(Value::Null) => WebhookBody::json(payload)?,
            Some(Value::String(text)) => WebhookBody::Text(text.clone()),
            Some(other) => WebhookBody::json(other)?,
        };
        let request = Self {
            rule_id: rule_id.into(),
            url,
            method,
            headers,
            body,
            idempotency_key: idempotency_key.into(),
        };
        request.check_head()?;
        Ok(request)
    }

    /// Checks the whole request as the dispatcher will send it (url, method, headers, body size).
    pub fn validate(&self) -> Result<(), RequestError> {
        self.prepare().map(|_| ())
    }

    fn check_head(&self) -> Result<(Url, Method, HeaderMap), RequestError> {
        Ok((
            parse_url(&self.url)?,
            self.parse_method()?,
            self.header_map()?,
        ))
    }

    pub(crate) fn prepare(&self) -> Result<Prepared, RequestError> {
        let (url, method, mut headers) = self.check_head()?;
        let (body, content_type) = match &self.body {
            WebhookBody::Empty => (Vec::new(), None),
            WebhookBody::Text(text) => {
                (text.as_bytes().to_vec(), Some("text/plain; charset=utf-8"))
            }
            WebhookBody::Json(json) => {
                (json.as_str().as_bytes().to_vec(), Some("application/json"))
            }
        };
        if body.len() > MAX_BODY_BYTES {
            return Err(RequestError::BodyTooLarge(body.len()));
        }
        if let Some(content_type) = content_type {
            if !headers.contains_key(CONTENT_TYPE) {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            }
        }
        let key = HeaderValue::from_str(&self.idempotency_key)
            .map_err(|_| RequestError::Header(IDEMPOTENCY_KEY.to_owned()))?;
        headers.insert(HeaderName::from_static(IDEMPOTENCY_KEY), key);
        Ok(Prepared {
            url,
            method,
            headers,
            body,
        })
    }

    fn parse_method(&self) -> Result<Method, RequestError> {
        if !METHODS.contains(&self.method.as_str()) {
            return Err(RequestError::Method(self.method.chars().take(32).collect()));
        }
        Method::from_bytes(self.method.as_bytes())
            .map_err(|_| RequestError::Method(self.method.clone()))
    }

    fn header_map(&self) -> Result<HeaderMap, RequestError> {
        if self.headers.len() > MAX_HEADERS {
            return Err(RequestError::TooManyHeaders(self.headers.len()));
        }
        let mut map = HeaderMap::with_capacity(self.headers.len() + 2);
        for (name, value) in &self.headers {
            let short: String = name.chars().take(64).collect();
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| RequestError::Header(short.clone()))?;
            if RESERVED_HEADERS.contains(&header.as_str()) {
                return Err(RequestError::ReservedHeader(header.as_str().to_owned()));
            }
            let value = HeaderValue::from_str(value).map_err(|_| RequestError::Header(short))?;
            map.append(header, value);
        }
        Ok(map)
    }
}

fn wrong_type(key: &str, expected: &'static str) -> RequestError {
    RequestError::WrongType {
        key: key.to_owned(),
        expected,
    }
}

fn header_pairs(map: &Map<String, Value>) -> Result<Vec<(String, String)>, RequestError> {
    if map.len() > MAX_HEADERS {
        return Err(RequestError::TooManyHeaders(map.len()));
    }
    map.iter()
        .map(|(name, value)| {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => {
                    return Err(wrong_type(
                        &format!("headers.{name}"),
                        "a string, number or boolean",
                    ))
                }
            };
            Ok((name.clone(), text))
        })
        .collect()
}

fn parse_url(text: &str) -> Result<Url, RequestError> {
    let invalid = |reason: String| RequestError::InvalidUrl {
        url: text.chars().take(200).collect(),
        reason,
    };
    if text.len() > MAX_URL_BYTES {
        return Err(invalid(format!("longer than {MAX_URL_BYTES} bytes")));
    }
    let url = Url::parse(text).map_err(|e| invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "scheme {} is not http or https",
            url.scheme()
        )));
    }
    if url.host().is_none() {
        return Err(invalid("no host".to_owned()));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("test config must be an object"),
        }
    }

    fn payload() -> Value {
        json!({"resource": {"name": "temp", "value": 51}, "thing": {"thingName": "t-1"}})
    }

    #[test]
    fn defaults_post_with_payload_as_json() {
        let req = WebhookRequest::from_action_config(
            "r1",
            &config(json!({"url": "https://example.com/hook"})),
            &payload(),
            "k1",
        )
        .expect("valid");
        assert_eq!(req.method, "POST");
        assert_eq!(
            req.body,
            WebhookBody::json(&payload()).expect("a JSON value serializes")
        );
        assert!(req.headers.is_empty());
        let prepared = req.prepare().expect("prepares");
        assert_eq!(prepared.headers[CONTENT_TYPE], "application/json");
        assert_eq!(prepared.headers[IDEMPOTENCY_KEY], "k1");
        let sent: Value = serde_json::from_slice(&prepared.body).expect("json body");
        assert_eq!(sent, payload());
    }

    #[test]
    fn string_body_is_text_and_other_json_is_serialized() {
        let text = WebhookRequest::from_action_config(
            "r1",
            &config(json!({"url": "http://example.com", "method": "put", "body": "temp is 51"})),
            &payload(),
            "k",
        )
        .expect("valid");
        assert_eq!(text.method, "PUT");
        assert_eq!(text.body, WebhookBody::Text("temp is 51".into()));
        let prepared = text.prepare().expect("prepares");
        assert_eq!(prepared.body, b"temp is 51");
        assert_eq!(prepared.headers[CONTENT_TYPE], "text/plain; charset=utf-8");

        let json_body = WebhookRequest::from_action_config(
            "r1",
            &config(json!({"url": "http://example.com", "body": {"value": 51, "ok": true}})),
            &payload(),
            "k",
        )
        .expect("valid");
        assert_eq!(
            json_body.body,
            WebhookBody::json(&json!({"value": 51, "ok": true})).expect("a JSON value serializes")
        );
    }

    #[test]
    fn headers_keep_order_and_stringify_scalars() {
        let req = WebhookRequest::from_action_config(
            "r1",
            &config(json!({
                "url": "http://example.com",
                "headers": {"X-Token": "abc", "X-Count": 3, "X-On": true, "Content-Type": "application/x-custom"},
                "body": "x"
            })),
            &payload(),
            "k",
        )
        .expect("valid");
        assert!(req.headers.contains(&("X-Count".into(), "3".into())));
        assert!(req.headers.contains(&("X-On".into(), "true".into())));
        let prepared = req.prepare().expect("prepares");
        assert_eq!(prepared.headers["x-token"], "abc");
        // A configured Content-Type wins over the default.
        assert_eq!(prepared.headers[CONTENT_TYPE], "application/x-custom");
    }

    #[test]
    fn get_without_body_sends_none() {
        let req = WebhookRequest::from_action_config(
            "r1",
            &config(json!({"url": "http://example.com", "method": "GET"})),
            &payload(),
            "k",
        )
        .expect("valid");
        assert_eq!(req.body, WebhookBody::Empty);
        let prepared = req.prepare().expect("prepares");
        assert!(prepared.body.is_empty());
        assert!(!prepared.headers.contains_key(CONTENT_TYPE));
    }

    #[test]
    fn bad_configs_are_refused() {
        let p = payload();
        let build = |c: Value| WebhookRequest::from_action_config("r", &config(c), &p, "k");
        assert_eq!(build(json!({})), Err(RequestError::MissingUrl));
        assert_eq!(build(json!({"url": ""})), Err(RequestError::MissingUrl));
        assert!(matches!(
            build(json!({"url": 5})),
            Err(RequestError::WrongType { .. })
        ));
        assert!(matches!(
            build(json!({"url": "nope"})),
            Err(RequestError::InvalidUrl { .. })
        ));
        assert!(matches!(
            build(json!({"url": "ftp://example.com"})),
            Err(RequestError::InvalidUrl { .. })
        ));
        assert!(matches!(
            build(json!({"url": "http://example.com", "method": "CONNECT"})),
            Err(RequestError::Method(_))
        ));
        assert!(matches!(
            build(json!({"url": "http://example.com", "headers": ["a"]})),
            Err(RequestError::WrongType { .. })
        ));
        assert!(matches!(
            build(json!({"url": "http://example.com", "headers": {"X": {"a": 1}}})),
            Err(RequestError::WrongType { .. })
        ));
        assert!(matches!(
            build(json!({"url": "http://example.com", "headers": {"bad name": "v"}})),
            Err(RequestError::Header(_))
        ));
        assert!(matches!(
            build(json!({"url": "http://example.com", "headers": {"X": "a\nb"}})),
            Err(RequestError::Header(_))
        ));
        assert_eq!(
            build(json!({"url": "http://example.com", "headers": {"Host": "internal"}})),
            Err(RequestError::ReservedHeader("host".into()))
        );
        assert_eq!(
            build(json!({"url": "http://example.com", "headers": {"Idempotency-Key": "x"}})),
            Err(RequestError::ReservedHeader(IDEMPOTENCY_KEY.into()))
        );
    }

    #[test]
    fn oversized_body_is_refused_at_prepare() {
        let req = WebhookRequest {
            rule_id: "r".into(),
            url: "http://example.com".into(),
            method: "POST".into(),
            headers: Vec::new(),
            body: WebhookBody::Text("x".repeat(MAX_BODY_BYTES + 1)),
            idempotency_key: "k".into(),
        };
        assert_eq!(
            req.validate(),
            Err(RequestError::BodyTooLarge(MAX_BODY_BYTES + 1))
        );
    }
}
