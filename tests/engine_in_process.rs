//! The engine fed by an in-process source (no broker): what happens inside one worker's batch,
//! where the timing of an MQTT connection cannot place messages.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use ccstream::config::Config;
use ccstream::engine::{self, Intake};
use ccstream::store::RuleStore;
use ingest::{AckToken, Acker, Inbound, ShadowUpdate};
use rule_engine::Directory;
use sinks::objects::config::SinkKind;
use tokio::sync::{mpsc, Notify};

fn update(thing: &str, pkid: u16, dup: bool, value: u32) -> Inbound {
    Inbound::Shadow(ShadowUpdate {
        thing_name: thing.to_owned(),
        topic_domain: None,
        received_at_ms: 1_700_000_000_000,
        payload: Bytes::from(format!("{{\"state\":{{\"reported\":{{\"v\":{value}}}}}}}")),
        dup,
        pkid,
        ack: AckToken::not_required(),
    })
}

/// The `v` of every record stored under `dir`, in no particular order.
fn stored_values(dir: &Path) -> Vec<u64> {
    let mut values = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let body = std::fs::read(&path).expect("read object");
            for record in
                serde_json::Deserializer::from_slice(&body).into_iter::<serde_json::Value>()
            {
                let record = record.expect("a JSON record");
                values.push(record["state"]["reported"]["v"].as_u64().expect("v"));
            }
        }
    }
    values
}

/// A copy the broker sends again (DUP, same packet id and payload) may arrive in the same batch
/// as its original: the original is taken for the spool, and the copy only acked after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_copy_in_the_same_batch_is_stored_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::default();
    config.store.url = format!("sqlite://{}", dir.path().join("rules.db").display());
    config.objects.sink = SinkKind::Local;
    config.objects.dir = dir.path().join("observations");
    config.objects.spool_dir = dir.path().join("spool");
    config.webhook.outbox_dir = dir.path().join("outbox");
    config.engine.workers = Some(1);
    let store = RuleStore::connect(&config.store.url).await.expect("store");

    // All queued before the engine starts: the worker takes them as one batch.
    let (tx, rx) = mpsc::channel(16);
    for message in [
        update("thing-1", 7, false, 1),
        update("thing-1", 7, true, 1),
        update("thing-2", 8, false, 2),
        update("thing-2", 8, true, 2),
        update("thing-1", 9, false, 1),
    ] {
        tx.send(message).await.expect("queued");
    }
    drop(tx);
    let engine = engine::start_with(
        &config,
        &store,
        Arc::new(RwLock::new(Directory::default())),
        Arc::new(Notify::new()),
        Intake::InProcess {
            inbound: rx,
            acker: Acker::without_broker(),
            client_id: "test".to_owned(),
        },
    )
    .await
    .expect("engine");
    let objects = engine.objects();
    engine.shutdown(Duration::from_secs(30)).await;

    let stats = objects.stats();
    assert_eq!(stats.records, 3, "{stats:?}");
    let mut values = stored_values(&config.objects.dir);
    values.sort_unstable();
    // The third is a new message (another packet id) with the same payload: stored.
    assert_eq!(
        values,
        vec![1, 1, 2],
        "each copy skipped, the new message stored"
    );
}
