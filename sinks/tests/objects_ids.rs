//! Record ids in the object sink: written to the spool with each record and handed back after
//! a crash ([`ObjectSinkHandle::take_recovered_ids`]), from the spool files left behind and from
//! the journal of batches stored before the crash. The binary seeds its redelivery window with
//! them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sinks::objects::{
    Batch, BatchStore, ObjectSink, ObjectSinkHandle, ObjectsConfig, RecordKind, SinkKind,
    WriteError,
};

const STACK: &str = "test";

fn config(root: &Path) -> ObjectsConfig {
    ObjectsConfig {
        sink: SinkKind::Local,
        dir: root.join("observations"),
        spool_dir: root.join("spool"),
        // 50-byte records: 10 to a batch.
        max_bytes: 500,
        upload_concurrency: 1,
        retry_initial_ms: 5,
        retry_max_ms: 20,
        ..ObjectsConfig::default()
    }
}

fn record(n: u64) -> Vec<u8> {
    let head = format!("{{\"n\":{n},\"pad\":\"");
    format!("{head}{}\"}}", "x".repeat(50 - head.len() - 2)).into_bytes()
}

fn id_of(n: u64) -> u64 {
    n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xABCD
}

/// Stores the first `ok` batches; later ones never finish (the store hangs).
#[derive(Clone, Default)]
struct Gate {
    ok: usize,
    stored: Arc<AtomicUsize>,
    batches: Arc<Mutex<Vec<Batch>>>,
}

impl BatchStore for Gate {
    async fn store(&self, batch: &Batch) -> Result<(), WriteError> {
        if self.stored.load(Ordering::SeqCst) >= self.ok {
            std::future::pending::<()>().await;
        }
        self.batches.lock().expect("lock").push(batch.clone());
        self.stored.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn label(&self) -> &'static str {
        "gate"
    }
}

type Acked = Arc<Mutex<Vec<u64>>>;

fn start(cfg: &ObjectsConfig, store: Gate) -> (ObjectSinkHandle<u64>, Acked) {
    let acked = Acked::default();
    let sink = acked.clone();
    let (handle, _task) = ObjectSink::start_with_store(
        cfg,
        STACK,
        store,
        Box::new(move |tokens| sink.lock().expect("lock").extend(tokens)),
    )
    .expect("start");
    (handle, acked)
}

fn spool_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.expect("entry").path())
                .filter(|p| p.extension().is_some_and(|e| e == "spool"))
                .collect()
        })
        .unwrap_or_default()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn ids_of_committed_records_come_back_after_a_crash() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());

    // First run: 45 records with ids, one without, and a marker. Two batches are stored (their
    // spool files deleted), the rest wait for a store that hangs.
    let rt = runtime();
    let gate = Gate {
        ok: 2,
        ..Gate::default()
    };
    let (handle, acked) = rt.block_on(async {
        let (handle, acked) = start(&cfg, gate.clone());
        assert!(handle.take_recovered_ids().is_empty(), "a fresh spool");
        for n in 0..45 {
            handle
                .append_with_id(
                    record(n),
                    RecordKind::Observations,
                    id_of(n),
                    1_700_000_000_000,
                    n,
                )
                .await
                .expect("append");
        }
        handle
            .append(record(45), RecordKind::Observations, 45)
            .await
            .expect("append");
        handle.append_marker(46).await.expect("marker");
        (handle, acked)
    });
    wait_until("every token acked", || {
        acked.lock().expect("lock").len() == 47
    });
    assert_eq!(
        *acked.lock().expect("lock"),
        (0..47).collect::<Vec<u64>>(),
        "records and the marker acked in order"
    );
    // 5 batches: 2 stored and deleted, 3 left (the last one still open).
    wait_until("two batches stored and their files deleted", || {
        gate.stored.load(Ordering::SeqCst) == 2 && spool_files(&cfg.spool_dir).len() == 3
    });

    // The crash: the uploader dies with the runtime, nothing is shut down or sealed. The
    // handle stays alive, so the batcher thread does not finish either (a killed process
    // would not).
    rt.shutdown_background();

    // Restart on the same spool.
    let rt = runtime();
    rt.block_on(async {
        let gate = Gate {
            ok: usize::MAX,
            ..Gate::default()
        };
        let (restarted, _) = start(&cfg, gate.clone());
        let ids = restarted.take_recovered_ids();
        assert_eq!(ids.len(), 45, "every id, none twice: {ids:?}");
        // The stored batches' ids first (from the journal), in order.
        assert_eq!(ids[..20], (0..20).map(id_of).collect::<Vec<_>>());
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        let mut expected: Vec<u64> = (0..45).map(id_of).collect();
        expected.sort_unstable();
        assert_eq!(sorted, expected);
        assert!(restarted.take_recovered_ids().is_empty(), "taken once");

        // The leftovers are stored; after an orderly shutdown every id is in the journal.
        let report = restarted.shutdown(Duration::from_secs(10)).await;
        assert!(report.completed, "{report:?}");
        assert_eq!(report.stored, 3);
        assert!(spool_files(&cfg.spool_dir).is_empty());
        let records: usize = gate
            .batches
            .lock()
            .expect("lock")
            .iter()
            .map(|b| b.records.len())
            .sum();
        assert_eq!(records, 26, "records 20..46 stored after the restart");

        let (third, _) = start(&cfg, Gate::default());
        let ids = third.take_recovered_ids();
        assert_eq!(ids.len(), 45);
        let mut sorted = ids;
        sorted.sort_unstable();
        assert_eq!(sorted, expected);
        third.shutdown(Duration::from_secs(10)).await;
    });
    drop(handle);
}
