//! A stand-in for Firehose's PutRecordBatch (AWS JSON 1.1: `POST /` with
//! `X-Amz-Target: Firehose_20150804.PutRecordBatch`, records' `Data` in base64), which the
//! writer's tests script to reject chosen records (`FailedPutCount`, per-record `ErrorCode`) or
//! whole calls. moto accepts every record, so partial failures can only be tested here.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Per record of call number `call`: `None` accepted, `Some(code)` rejected with that
/// `ErrorCode`.
pub type PerRecord = Box<dyn Fn(usize, &[u8]) -> Option<&'static str> + Send + Sync>;

/// What one call gets. `call` counts from 0 over the stand-in's life.
pub enum Answer {
    /// Each record as `PerRecord` says.
    Records(PerRecord),
    /// The whole call fails: HTTP status and `__type`.
    CallError(u16, &'static str),
}

struct Inner {
    answer: Box<dyn Fn(usize) -> Answer + Send + Sync>,
    /// The records of every call, decoded, in order.
    calls: Mutex<Vec<Vec<Vec<u8>>>>,
    /// The delivery stream name of every call.
    streams: Mutex<Vec<String>>,
}

/// The stand-in on a free port of 127.0.0.1; stopped when dropped.
pub struct FirehoseStandIn {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

impl FirehoseStandIn {
    /// `answer(call)` decides how call number `call` is answered.
    pub async fn start(answer: impl Fn(usize) -> Answer + Send + Sync + 'static) -> Self {
        let inner = Arc::new(Inner {
            answer: Box::new(answer),
            calls: Mutex::new(Vec::new()),
            streams: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/", axum::routing::post(put_record_batch))
            .with_state(inner.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        FirehoseStandIn { addr, inner, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The records of every call so far.
    pub fn calls(&self) -> Vec<Vec<Vec<u8>>> {
        self.inner.calls.lock().expect("lock").clone()
    }

    pub fn streams(&self) -> Vec<String> {
        self.inner.streams.lock().expect("lock").clone()
    }
}

impl Drop for FirehoseStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        [("content-type", "application/x-amz-json-1.1")],
        json!({"__type": kind, "message": message}).to_string(),
    )
        .into_response()
}

async fn put_record_batch(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if target != "Firehose_20150804.PutRecordBatch" {
        return error(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            &format!("stand-in only answers PutRecordBatch, not {target:?}"),
        );
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "SerializationException",
            "not JSON",
        );
    };
    let records: Vec<Vec<u8>> = request["Records"]
        .as_array()
        .map(|records| {
            records
                .iter()
                .map(|r| {
                    STANDARD
                        .decode(r["Data"].as_str().unwrap_or_default())
                        .expect("base64 Data")
                })
                .collect()
        })
        .unwrap_or_default();
    let call = {
        let mut calls = inner.calls.lock().expect("lock");
        calls.push(records.clone());
        calls.len() - 1
    };
    inner.streams.lock().expect("lock").push(
        request["DeliveryStreamName"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    );
    match (inner.answer)(call) {
        Answer::CallError(status, kind) => error(
            StatusCode::from_u16(status).expect("status"),
            kind,
            "scripted failure",
        ),
        Answer::Records(per_record) => {
            let entries: Vec<Value> = records
                .iter()
                .enumerate()
                .map(|(i, data)| match per_record(call, data) {
                    None => json!({"RecordId": format!("{call}-{i}")}),
                    Some(code) => json!({"ErrorCode": code, "ErrorMessage": "scripted"}),
                })
                .collect();
            let failed = entries
                .iter()
                .filter(|e| e.get("ErrorCode").is_some())
                .count();
            (
                StatusCode::OK,
                [("content-type", "application/x-amz-json-1.1")],
                json!({"FailedPutCount": failed, "Encrypted": false, "RequestResponses": entries})
                    .to_string(),
            )
                .into_response()
        }
    }
}
