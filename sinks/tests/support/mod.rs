//! A scripted HTTP receiver on 127.0.0.1 and helpers shared by the webhook tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use sinks::webhook::{WebhookConfig, WebhookRequest};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the receiver answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

struct ServerState {
    /// (path, reply) used once each, first match wins; otherwise `fallback`.
    script: Mutex<Vec<(String, Reply)>>,
    fallback: Reply,
    received: Mutex<Vec<Received>>,
}

/// A receiver on a free port of 127.0.0.1; stopped when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    state: Arc<ServerState>,
    task: JoinHandle<()>,
}

impl TestServer {
    /// `script`: one-shot replies by path; `fallback`: the reply to everything else.
    pub async fn start(script: Vec<(&str, Reply)>, fallback: Reply) -> Self {
        let state = Arc::new(ServerState {
            script: Mutex::new(
                script
                    .into_iter()
                    .map(|(path, reply)| (path.to_owned(), reply))
                    .collect(),
            ),
            fallback,
            received: Mutex::new(Vec::new()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state, task }
    }

    pub async fn ok() -> Self {
        Self::start(Vec::new(), Reply::status(200)).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.addr.port())
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().expect("lock").clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    State(state): State<Arc<ServerState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    state.received.lock().expect("lock").push(Received {
        method: method.to_string(),
        path: path.clone(),
        headers,
        body: body.to_vec(),
    });
    let reply = {
        let mut script = state.script.lock().expect("lock");
        match script.iter().position(|(p, _)| *p == path) {
            Some(i) => script.remove(i).1,
            None => state.fallback.clone(),
        }
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut out = HeaderMap::new();
    for (name, value) in &reply.headers {
        out.insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    let status = StatusCode::from_u16(reply.status).expect("status");
    (status, out, "reply").into_response()
}

/// Fast retries, loopback allowed by CIDR (the guard refuses it by default).
pub fn config(dead_letter_dir: &Path) -> WebhookConfig {
    WebhookConfig {
        backoff_initial_ms: 5,
        backoff_max_ms: 20,
        timeout_secs: 5,
        allow_cidrs: vec!["127.0.0.1/32".into()],
        dead_letter_dir: dead_letter_dir.to_path_buf(),
        ..WebhookConfig::default()
    }
}

pub fn payload() -> Value {
    json!({
        "resource": {"name": "temp", "path": "temp", "value": 51},
        "timestamp": 1464081794634_u64,
        "rule": {"id": "r-1", "name": "Overheating"},
        "thing": {"thingName": "thing-001", "thingType": "Pump", "domain": "root"}
    })
}

/// A firing built the way the rule engine builds one.
pub fn firing(config: Value, key: &str) -> WebhookRequest {
    let Value::Object(config) = config else {
        panic!("action config must be an object")
    };
    WebhookRequest::from_action_config("r-1", &config, &payload(), key)
        .expect("valid action config")
}

/// Every dead-letter line in `dir`.
pub fn dead_letters(dir: &Path) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    for entry in entries {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        assert!(
            name.starts_with("webhooks-") && name.ends_with(".jsonl"),
            "{name}"
        );
        for line in std::fs::read_to_string(&path).expect("read").lines() {
            lines.push(serde_json::from_str(line).expect("one JSON object per line"));
        }
    }
    lines
}
