//! The webhook receiver: answers 200 to any request, counts it and, when the body carries a
//! `sentAt` ([`crate::payload::sent_at`]), records publish → webhook latency.
//!
//! It also stands in for OpenSearch's indexing calls, so that `benches/e2e.sh` can measure
//! ccstream with `search.url` set (OpenSearch cannot be installed on these machines):
//! `POST /_bulk` answers every action created, in OpenSearch's response shape, and counts the
//! documents apart from the webhooks; `PUT /_index_template/...` is acknowledged.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::payload::sent_at;
use crate::report::Latencies;

#[derive(Debug, Default)]
pub struct Receiver {
    pub received: AtomicU64,
    /// Documents in `_bulk` requests (not counted in `received`).
    pub documents: AtomicU64,
    /// When the first and the latest `_bulk` request arrived (ms since the epoch; 0: none yet).
    pub first_bulk_ms: AtomicU64,
    pub last_bulk_ms: AtomicU64,
    /// std `Mutex`: held only for one `record`, never across an `.await`.
    latencies: Mutex<Latencies>,
}

impl Receiver {
    pub fn latencies(&self) -> Latencies {
        self.latencies
            .lock()
            .map(|l| l.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Records one arrival at `now_ms`.
    pub fn arrived(&self, body: &[u8], now_ms: u64) {
        self.received.fetch_add(1, Ordering::Relaxed);
        let sent = serde_json::from_slice(body).ok().and_then(|v| sent_at(&v));
        if let Some(sent) = sent {
            let mut l = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
            l.record(sent, now_ms);
        }
    }
}

/// Every path and method lands in the same handler.
pub fn app(state: Arc<Receiver>) -> Router {
    Router::new().fallback(hook).with_state(state)
}

async fn hook(State(r): State<Arc<Receiver>>, uri: Uri, body: Bytes) -> Response {
    // Timestamp first: the body is already read, nothing else should count.
    let now = crate::now_ms();
    match uri.path() {
        "/_bulk" => {
            let _ = r
                .first_bulk_ms
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
            r.last_bulk_ms.store(now, Ordering::Relaxed);
            bulk(&r, &body)
        }
        path if path.starts_with("/_index_template/") => {
            json_response(r#"{"acknowledged":true}"#.to_owned())
        }
        _ => {
            r.arrived(&body, now);
            StatusCode::OK.into_response()
        }
    }
}

/// Every action of a `_bulk` body created: one `index` item per action line.
fn bulk(r: &Receiver, body: &[u8]) -> Response {
    let lines = body
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    let actions = lines / 2;
    r.documents.fetch_add(actions as u64, Ordering::Relaxed);
    let item = r#"{"index":{"_index":"observations","_id":"x","status":201,"result":"created"}}"#;
    let items = vec![item; actions].join(",");
    json_response(format!(r#"{{"took":1,"errors":false,"items":[{items}]}}"#))
}

fn json_response(body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// Binds `addr` and serves in a task; returns the bound address (port 0 picks one).
pub async fn serve(addr: SocketAddr, state: Arc<Receiver>) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind webhook receiver on {addr}"))?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app(state)).await {
            eprintln!("webhook receiver stopped: {e}");
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_count_and_latency_from_the_default_payload() {
        let r = Receiver::default();
        r.arrived(br#"{"thing":{"state":{"sentAt":1000}}}"#, 1012);
        r.arrived(b"not json", 2000);
        assert_eq!(r.received.load(Ordering::Relaxed), 2);
        let s = r.latencies().summary().expect("one latency");
        assert_eq!((s.count, s.p50_ms), (1, 12));
    }

    #[tokio::test]
    async fn serves_http_posts() {
        let state = Arc::new(Receiver::default());
        let addr = serve(([127, 0, 0, 1], 0).into(), state.clone())
            .await
            .expect("bind");
        let body = serde_json::json!({ "sentAt": crate::now_ms() });
        let resp = reqwest::Client::new()
            .post(format!("http://{addr}/hook/thing-000001"))
            .json(&body)
            .send()
            .await
            .expect("POST");
        assert_eq!(resp.status(), reqwest::StatusCode::OK);
        assert_eq!(state.received.load(Ordering::Relaxed), 1);
        assert_eq!(state.latencies().summary().map(|s| s.count), Some(1));
    }

    #[tokio::test]
    async fn answers_bulk_requests_as_opensearch_does_and_counts_documents_apart() {
        let state = Arc::new(Receiver::default());
        let addr = serve(([127, 0, 0, 1], 0).into(), state.clone())
            .await
            .expect("bind");
        let body = "{\"index\":{\"_index\":\"o\",\"_id\":\"a\"}}\n{\"x\":1}\n\
                    {\"index\":{\"_index\":\"o\",\"_id\":\"b\"}}\n{\"x\":2}\n";
        let resp = reqwest::Client::new()
            .post(format!("http://{addr}/_bulk"))
            .body(body)
            .send()
            .await
            .expect("POST");
        assert_eq!(resp.status(), reqwest::StatusCode::OK);
        let answer: serde_json::Value = resp.json().await.expect("JSON");
        assert_eq!(answer["errors"], false);
        assert_eq!(answer["items"].as_array().map(Vec::len), Some(2));
        assert_eq!(answer["items"][1]["index"]["status"], 201);
        assert_eq!(state.documents.load(Ordering::Relaxed), 2);
        assert_eq!(state.received.load(Ordering::Relaxed), 0, "not a webhook");
    }
}
