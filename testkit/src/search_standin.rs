//! A stand-in for OpenSearch on 127.0.0.1, for the indexer's tests in `sinks` and the binary's
//! ingest tests.
//!
//! OpenSearch itself cannot be installed on this machine (no package in the reachable
//! registries, and its tarball is a download of its own), so this axum server answers the three
//! calls ccstream makes with OpenSearch's documented response shapes:
//!
//! - `PUT /_index_template/<name>`: `{"acknowledged": true}`;
//! - `POST /_bulk`: `{"took", "errors", "items": [{"index": {"_index", "_id", "status", ...}}]}`,
//!   scripted per request: a whole-request status (429 with `es_rejected_execution_exception`),
//!   or per-item statuses (201 created, 429 `es_rejected_execution_exception`, 400
//!   `mapper_parsing_exception`);
//! - `POST /<index>/_search`: a canned hits-and-aggregations body, or a scripted error.
//!
//! It records every request it gets. It ignores `filter_path` and answers the full shape, which
//! the indexer must read as well. [`StandIn::start`] runs it on a thread with its own tokio
//! runtime, so a test that blocks its own thread (to run `mosquitto_pub`, say) never delays an
//! answer; [`StandIn::start_here`] runs it on the test's runtime, so that a paused clock
//! (`tokio::time::pause`) covers both the indexer and its server.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// How the stand-in answers one `_bulk` request.
#[derive(Debug, Clone)]
pub enum BulkReply {
    /// The whole request fails with this status (429: `es_rejected_execution_exception`).
    Status(u16),
    /// Per item, in order: 201 created, 429 rejected, 400 mapping error, 503 unavailable shard;
    /// items past the list are created.
    Items(Vec<u16>),
    /// A 200 whose body is not JSON (a proxy's page).
    Garbage,
}

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    pub fn is_bulk(&self) -> bool {
        self.method == "POST" && self.path == "/_bulk"
    }

    /// The `(action, record)` pairs of a bulk body; panics on anything but well-formed NDJSON
    /// ending in a newline.
    pub fn bulk_pairs(&self) -> Vec<(Value, Value)> {
        bulk_pairs(&self.body)
    }

    /// The records of a bulk body.
    pub fn records(&self) -> Vec<Value> {
        self.bulk_pairs().into_iter().map(|(_, r)| r).collect()
    }
}

pub fn bulk_pairs(body: &[u8]) -> Vec<(Value, Value)> {
    let text = std::str::from_utf8(body).expect("UTF-8 body");
    assert!(text.ends_with('\n'), "NDJSON ends with a newline");
    let lines: Vec<&str> = text[..text.len() - 1].split('\n').collect();
    assert_eq!(lines.len() % 2, 0, "action and source lines in pairs");
    lines
        .chunks(2)
        .map(|pair| {
            let action: Value = serde_json::from_str(pair[0]).expect("action line is JSON");
            let record: Value = serde_json::from_str(pair[1]).expect("record line is JSON");
            (action, record)
        })
        .collect()
}

#[derive(Default)]
struct Script {
    bulk: VecDeque<BulkReply>,
    bulk_fallback: Option<BulkReply>,
    template: VecDeque<u16>,
    template_fallback: Option<u16>,
    search: VecDeque<(u16, Value)>,
    bulk_delay: Duration,
}

struct Shared {
    script: Mutex<Script>,
    seen: Mutex<Vec<Seen>>,
    canned_search: Value,
    next_id: Mutex<u64>,
    /// Every document write that succeeded (201), in order: `(_id, source)`.
    writes: Mutex<Vec<(String, Value)>>,
}

/// The stand-in, on a free port of 127.0.0.1; stopped when dropped.
pub struct StandIn {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// How long [`StandIn::wait_until`] waits, in real time (a paused clock must not end it).
const WAIT: Duration = Duration::from_secs(15);

/// What `_search` answers unless scripted otherwise.
pub fn canned_search() -> Value {
    json!({
        "took": 3,
        "timed_out": false,
        "_shards": {"total": 2, "successful": 2, "skipped": 0, "failed": 0},
        "hits": {
            "total": 1,
            "max_score": null,
            "hits": [{
                "_index": "observations-2016.04.14",
                "_id": "a1",
                "_score": null,
                "_source": {"thingName": "thing-1", "timestamp": 1460661813164_u64, "domain": "root/sub1"}
            }]
        },
        "aggregations": {
            "hist": {"buckets": [{"key_as_string": "2016-04-14T19:00:00.000Z", "key": 1460660400000_u64, "doc_count": 1}]}
        }
    })
}

impl StandIn {
    /// On a thread of its own.
    pub fn start() -> Self {
        let (mut standin, std_listener, stopped) = Self::bind();
        let state = Arc::clone(&standin.shared);
        let thread = std::thread::Builder::new()
            .name(format!("opensearch-standin-{}", standin.addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(serve(std_listener, state, stopped));
            })
            .expect("thread");
        standin.thread = Some(thread);
        standin
    }

    /// On the caller's runtime (call it within one), as a task.
    pub fn start_here() -> Self {
        let (mut standin, std_listener, stopped) = Self::bind();
        let state = Arc::clone(&standin.shared);
        standin.task = Some(tokio::spawn(serve(std_listener, state, stopped)));
        standin
    }

    fn bind() -> (Self, std::net::TcpListener, oneshot::Receiver<()>) {
        let shared = Arc::new(Shared {
            script: Mutex::new(Script::default()),
            seen: Mutex::new(Vec::new()),
            canned_search: canned_search(),
            next_id: Mutex::new(0),
            writes: Mutex::new(Vec::new()),
        });
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let standin = Self {
            addr,
            shared,
            stop: Some(stop),
            thread: None,
            task: None,
        };
        (standin, std_listener, stopped)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.addr.port())
    }

    /// The next `_bulk` requests answer these, in order; then `bulk_fallback` or all created.
    pub fn script_bulk(&self, replies: impl IntoIterator<Item = BulkReply>) {
        self.shared
            .script
            .lock()
            .expect("lock")
            .bulk
            .extend(replies);
    }

    pub fn bulk_fallback(&self, reply: BulkReply) {
        self.shared.script.lock().expect("lock").bulk_fallback = Some(reply);
    }

    /// Bulk requests are answered as scripted, then all created, again.
    pub fn clear_bulk_fallback(&self) {
        self.shared.script.lock().expect("lock").bulk_fallback = None;
    }

    /// Every document write that succeeded, in order: `(_id, source)`. A document written
    /// twice under one `_id` is one document in an index (the second write overwrites it).
    pub fn writes(&self) -> Vec<(String, Value)> {
        self.shared.writes.lock().expect("lock").clone()
    }

    pub fn bulk_delay(&self, delay: Duration) {
        self.shared.script.lock().expect("lock").bulk_delay = delay;
    }

    /// The next template requests answer these statuses; then `template_fallback` or 200.
    pub fn script_template(&self, statuses: impl IntoIterator<Item = u16>) {
        self.shared
            .script
            .lock()
            .expect("lock")
            .template
            .extend(statuses);
    }

    pub fn template_fallback(&self, status: u16) {
        self.shared.script.lock().expect("lock").template_fallback = Some(status);
    }

    /// The next `_search` answers this status and body.
    pub fn script_search(&self, status: u16, body: Value) {
        self.shared
            .script
            .lock()
            .expect("lock")
            .search
            .push_back((status, body));
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().expect("lock").clone()
    }

    pub fn bulks(&self) -> Vec<Seen> {
        self.seen().into_iter().filter(Seen::is_bulk).collect()
    }

    /// Waits until `done` holds for what was seen (at most 15 s of real time; under a paused
    /// clock, the runtime's clock moves on meanwhile as far as its timers take it).
    pub async fn wait_until(&self, what: &str, done: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let seen = self.seen();
            if done(&seen) {
                return seen;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; seen: {:?}",
                seen.iter()
                    .map(|s| format!("{} {}", s.method, s.path))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until at least `n` bulk requests were seen and returns them.
    pub async fn wait_bulks(&self, n: usize) -> Vec<Seen> {
        self.wait_until(&format!("{n} bulk requests"), |seen| {
            seen.iter().filter(|s| s.is_bulk()).count() >= n
        })
        .await
        .into_iter()
        .filter(Seen::is_bulk)
        .collect()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if std::thread::panicking() {
            eprintln!("--- OpenSearch stand-in {} got ---", self.addr);
            for s in self.seen() {
                eprintln!(
                    "{} {}?{} {}",
                    s.method,
                    s.path,
                    s.query,
                    String::from_utf8_lossy(&s.body)
                );
            }
        }
    }
}

async fn serve(
    std_listener: std::net::TcpListener,
    state: Arc<Shared>,
    stopped: oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
    let app = Router::new().fallback(handle).with_state(state);
    // Not graceful: that would wait for ccstream's keep-alive connections.
    tokio::select! {
        res = axum::serve(listener, app) => res.expect("serve"),
        _ = stopped => {}
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    shared.seen.lock().expect("lock").push(Seen {
        method: method.to_string(),
        path: path.clone(),
        query: uri.query().unwrap_or_default().to_owned(),
        headers,
        body: body.to_vec(),
    });
    if method == Method::PUT && path.starts_with("/_index_template/") {
        let status = {
            let mut script = shared.script.lock().expect("lock");
            script
                .template
                .pop_front()
                .or(script.template_fallback)
                .unwrap_or(200)
        };
        return if status == 200 {
            json_reply(200, json!({"acknowledged": true}))
        } else {
            json_reply(
                status,
                error_body(status, "cluster_block_exception", "blocked"),
            )
        };
    }
    if method == Method::POST && path == "/_bulk" {
        let (reply, delay) = {
            let mut script = shared.script.lock().expect("lock");
            let reply = script
                .bulk
                .pop_front()
                .or_else(|| script.bulk_fallback.clone())
                .unwrap_or(BulkReply::Items(Vec::new()));
            (reply, script.bulk_delay)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        return bulk_reply(&shared, &body, reply);
    }
    if (method == Method::POST || method == Method::GET) && path.ends_with("/_search") {
        let scripted = shared.script.lock().expect("lock").search.pop_front();
        return match scripted {
            Some((status, body)) => json_reply(status, body),
            None => json_reply(200, shared.canned_search.clone()),
        };
    }
    json_reply(
        404,
        error_body(404, "no_handler", &format!("no handler for {path}")),
    )
}

fn bulk_reply(shared: &Shared, body: &[u8], reply: BulkReply) -> Response {
    let statuses = match reply {
        BulkReply::Status(429) => {
            return json_reply(
                429,
                error_body(
                    429,
                    "es_rejected_execution_exception",
                    "rejected execution of coordinating operation",
                ),
            )
        }
        BulkReply::Status(status) => {
            return json_reply(status, error_body(status, "status_exception", "scripted"))
        }
        BulkReply::Garbage => {
            return (StatusCode::OK, "<html>gateway</html>").into_response();
        }
        BulkReply::Items(statuses) => statuses,
    };
    let pairs = bulk_pairs(body);
    let mut errors = false;
    let mut writes = Vec::new();
    let items: Vec<Value> = pairs
        .iter()
        .enumerate()
        .map(|(i, (action, source))| {
            let index = action["index"]["_index"].clone();
            let status = statuses.get(i).copied().unwrap_or(201);
            // The action's `_id` when it names one, as OpenSearch does; else one of ours.
            let id = match action["index"]["_id"].as_str() {
                Some(id) => id.to_owned(),
                None => {
                    let mut next = shared.next_id.lock().expect("lock");
                    *next += 1;
                    format!("doc-{next}")
                }
            };
            if status == 201 {
                writes.push((id.clone(), source.clone()));
            }
            let result = match status {
                201 => json!({
                    "_index": index, "_id": id, "_version": 1, "result": "created",
                    "_shards": {"total": 2, "successful": 1, "failed": 0},
                    "_seq_no": 0, "_primary_term": 1, "status": 201
                }),
                429 => json!({
                    "_index": index, "_id": id, "status": 429,
                    "error": {
                        "type": "es_rejected_execution_exception",
                        "reason": "rejected execution of primary operation [write] on node"
                    }
                }),
                400 => json!({
                    "_index": index, "_id": id, "status": 400,
                    "error": {
                        "type": "mapper_parsing_exception",
                        "reason": format!("failed to parse field [state.reported.temp] of type [long] in document with id '{id}'"),
                        "caused_by": {"type": "illegal_argument_exception", "reason": "For input string: \"hot\""}
                    }
                }),
                other => json!({
                    "_index": index, "_id": id, "status": other,
                    "error": {"type": "unavailable_shards_exception", "reason": "primary shard is not active"}
                }),
            };
            if status >= 300 {
                errors = true;
            }
            json!({"index": result})
        })
        .collect();
    shared.writes.lock().expect("lock").extend(writes);
    json_reply(200, json!({"took": 7, "errors": errors, "items": items}))
}

fn error_body(status: u16, kind: &str, reason: &str) -> Value {
    json!({
        "error": {
            "root_cause": [{"type": kind, "reason": reason}],
            "type": kind,
            "reason": reason
        },
        "status": status
    })
}

fn json_reply(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).expect("status");
    (
        status,
        [("content-type", "application/json; charset=UTF-8")],
        body.to_string(),
    )
        .into_response()
}
