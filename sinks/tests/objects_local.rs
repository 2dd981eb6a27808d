//! The object sink end to end with the local writer in a temporary directory: rolls, key layout,
//! delimiter, gzip, crash recovery, shutdown, backpressure, and a property test that the stored
//! objects hold exactly the appended records.

use ccstream_common::time::now_ms;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use regex::Regex;
use sinks::objects::sink::RECORD_QUEUE;
use sinks::objects::spool::{SpoolFile, SpoolHeader, FORMAT_VERSION};
use sinks::objects::{
    object_key, random_suffix, Batch, BatchStore, Compression, Delimiter, LocalWriter, ObjectSink,
    ObjectSinkHandle, ObjectsConfig, RecordBatch, RecordKind, ShutdownReport, SinkKind, WriteError,
    Writer,
};
use tokio::task::JoinHandle;

const STACK: &str = "test";

struct Dirs {
    _root: tempfile::TempDir,
    objects: PathBuf,
    spool: PathBuf,
}

fn dirs() -> Dirs {
    let root = tempfile::tempdir().expect("tempdir");
    Dirs {
        objects: root.path().join("observations"),
        spool: root.path().join("spool"),
        _root: root,
    }
}

fn config(d: &Dirs) -> ObjectsConfig {
    ObjectsConfig {
        sink: SinkKind::Local,
        dir: d.objects.clone(),
        spool_dir: d.spool.clone(),
        retry_initial_ms: 5,
        retry_max_ms: 20,
        ..ObjectsConfig::default()
    }
}

/// Acked tokens, in the order `on_commit` saw them.
#[derive(Clone, Default)]
struct Acks(Arc<Mutex<Vec<u64>>>);

impl Acks {
    fn on_commit(&self) -> sinks::objects::OnCommit<u64> {
        let acks = self.0.clone();
        Box::new(move |tokens| acks.lock().expect("lock").extend(tokens))
    }

    fn len(&self) -> usize {
        self.0.lock().expect("lock").len()
    }

    fn all(&self) -> Vec<u64> {
        self.0.lock().expect("lock").clone()
    }
}

async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A record carrying its sequence number, `len` bytes long.
fn record(n: u64, len: usize) -> Vec<u8> {
    let head = format!("{{\"n\":{n},\"pad\":\"");
    let pad = len.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad)).into_bytes()
}

/// The sequence numbers of concatenated JSON records.
fn numbers(body: &[u8]) -> Vec<u64> {
    serde_json::Deserializer::from_slice(body)
        .into_iter::<serde_json::Value>()
        .map(|v| v.expect("records are JSON")["n"].as_u64().expect("n"))
        .collect()
}

/// Every object under `dir`: relative key → bytes (temporary files excluded).
fn objects(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                let key = path
                    .strip_prefix(root)
                    .expect("below root")
                    .to_string_lossy()
                    .into_owned();
                out.insert(key, std::fs::read(&path).expect("read object"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
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

fn key_regex(prefix: &str, gz: bool) -> Regex {
    Regex::new(&format!(
        r"^{}(\d{{4}})/(\d{{2}})/(\d{{2}})/(\d{{2}})/{STACK}-firehose-1-(\d{{4}})-(\d{{2}})-(\d{{2}})-(\d{{2}})-\d{{2}}-\d{{2}}-[0-9a-f]{{8}}-[0-9a-f]{{4}}-4[0-9a-f]{{3}}-[89ab][0-9a-f]{{3}}-[0-9a-f]{{12}}{}$",
        regex::escape(prefix),
        if gz { r"\.gz" } else { "" }
    ))
    .expect("regex")
}

/// Checks the layout: the folder's date and hour are the file name's.
fn assert_key_layout(key: &str, re: &Regex) {
    let c = re
        .captures(key)
        .unwrap_or_else(|| panic!("key {key:?} does not match {re}"));
    for i in 1..=4 {
        assert_eq!(&c[i], &c[i + 4], "folder and name agree in {key}");
    }
}

/// The key's time (to the second) is within a few seconds after `ms`.
fn assert_key_time_near(key: &str, prefix: &str, ms: u64) {
    let stem = key.trim_end_matches(".gz");
    let stem = &stem[..stem.len() - 36];
    let near = (0..6u64).any(|s| {
        let t = (ms / 1000 + s).saturating_sub(1) * 1000;
        object_key(
            prefix,
            RecordKind::Observations,
            STACK,
            t,
            "",
            Compression::None,
        ) == stem
    });
    assert!(near, "{key} is not within seconds of {ms}");
}

fn start(cfg: &ObjectsConfig, acks: &Acks) -> (ObjectSinkHandle<u64>, JoinHandle<ShutdownReport>) {
    let writer = Writer::Local(LocalWriter::new(&cfg.dir));
    ObjectSink::start(cfg, STACK, writer, acks.on_commit()).expect("start")
}

/// Objects sorted by their first record, and the records' numbers in that order.
fn ordered(objs: &BTreeMap<String, Vec<u8>>) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = objs.iter().map(|(k, b)| (k.clone(), b.clone())).collect();
    v.sort_by_key(|(_, body)| numbers(body).first().copied());
    v
}

#[tokio::test]
async fn rolls_by_size_with_exact_keys_and_bytes() {
    let d = dirs();
    let cfg = ObjectsConfig {
        max_bytes: 1000,
        spool_max_bytes: 1 << 20,
        ..config(&d)
    };
    let acks = Acks::default();
    let (handle, task) = start(&cfg, &acks);
    let records: Vec<Vec<u8>> = (0..50).map(|n| record(n, 90)).collect();
    let before_ms = now_ms();
    for (n, r) in records.iter().enumerate() {
        handle
            .append(r.clone(), RecordKind::Observations, n as u64)
            .await
            .expect("append");
    }
    wait_until("acks", Duration::from_secs(10), || acks.len() == 50).await;
    assert_eq!(acks.all(), (0..50).collect::<Vec<_>>(), "acked in order");
    // 11 records of 90 bytes fit in 1000: four full objects are stored without any shutdown.
    wait_until("full objects", Duration::from_secs(10), || {
        objects(&d.objects).len() == 4
    })
    .await;
    let report = handle.shutdown(Duration::from_secs(10)).await;
    assert!(report.completed, "{report:?}");
    task.await.expect("uploader");

    let objs = objects(&d.objects);
    assert_eq!(objs.len(), 5, "4 full objects and the rest at shutdown");
    let re = key_regex("", false);
    let mut all = Vec::new();
    for (key, body) in ordered(&objs) {
        assert_key_layout(&key, &re);
        assert!(body.len() <= 1000, "{key} has {} bytes", body.len());
        all.extend_from_slice(&body);
    }
    assert_eq!(
        all,
        records.concat(),
        "objects hold exactly the records, in order"
    );
    // The first object's key carries its first record's time (UTC).
    let (first_key, _) = &ordered(&objs)[0];
    assert_key_time_near(first_key, "", before_ms);
    assert!(
        spool_files(&d.spool).is_empty(),
        "stored spool files are deleted"
    );
    let stats = handle.stats();
    assert_eq!((stats.records, stats.batches_stored), (50, 5));
    assert!(handle.is_stopped());
}

#[tokio::test]
async fn rolls_by_age_with_a_prefix_newlines_and_error_records() {
    let d = dirs();
    let cfg = ObjectsConfig {
        max_age_secs: 1,
        prefix: "obs/".into(),
        delimiter: Delimiter::Newline,
        ..config(&d)
    };
    let acks = Acks::default();
    let (handle, task) = start(&cfg, &acks);
    let first_ms = now_ms();
    for n in 0..3 {
        handle
            .append(record(n, 40), RecordKind::Observations, n)
            .await
            .expect("append");
    }
    let error = sinks::objects::build_error_record(b"[1]", "t-1", first_ms, "a JSON array");
    handle
        .append(error.clone(), RecordKind::Errors, 3)
        .await
        .expect("append");
    // No shutdown, no more records: both batches roll by age alone.
    wait_until("objects rolled by age", Duration::from_secs(10), || {
        objects(&d.objects).len() == 2
    })
    .await;
    let objs = objects(&d.objects);
    let (obs_key, obs) = objs
        .iter()
        .find(|(k, _)| !k.starts_with("obs/errors/"))
        .expect("observations object");
    assert_key_layout(obs_key, &key_regex("obs/", false));
    let expected: Vec<u8> = (0..3)
        .flat_map(|n| {
            let mut r = record(n, 40);
            r.push(b'\n');
            r
        })
        .collect();
    assert_eq!(obs, &expected);
    let (err_key, err) = objs
        .iter()
        .find(|(k, _)| k.starts_with("obs/errors/"))
        .expect("errors object");
    assert_key_layout(err_key, &key_regex("obs/errors/", false));
    assert_eq!(err, &[error, b"\n".to_vec()].concat());
    assert_key_time_near(obs_key, "obs/", first_ms);
    handle.shutdown(Duration::from_secs(5)).await;
    task.await.expect("uploader");
    assert_eq!(objects(&d.objects).len(), 2, "nothing more at shutdown");
}

#[tokio::test]
async fn gzip_objects_decompress_to_the_records() {
    let d = dirs();
    let cfg = ObjectsConfig {
        compression: Compression::Gzip,
        max_bytes: 2000,
        spool_max_bytes: 1 << 20,
        ..config(&d)
    };
    let acks = Acks::default();
    let (handle, task) = start(&cfg, &acks);
    let records: Vec<Vec<u8>> = (0..30).map(|n| record(n, 150)).collect();
    for (n, r) in records.iter().enumerate() {
        handle
            .append(r.clone(), RecordKind::Observations, n as u64)
            .await
            .expect("append");
    }
    handle.shutdown(Duration::from_secs(10)).await;
    task.await.expect("uploader");
    let re = key_regex("", true);
    let mut plain_objects = BTreeMap::new();
    for (key, body) in objects(&d.objects) {
        assert_key_layout(&key, &re);
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut plain)
            .expect("gzip");
        assert!(body.len() < plain.len(), "compressed");
        plain_objects.insert(key, plain);
    }
    assert!(plain_objects.len() >= 2);
    let all: Vec<u8> = ordered(&plain_objects)
        .into_iter()
        .flat_map(|(_, b)| b)
        .collect();
    assert_eq!(all, records.concat());
}

#[tokio::test]
async fn shutdown_stores_open_batches() {
    let d = dirs();
    let cfg = config(&d);
    let acks = Acks::default();
    let (handle, task) = start(&cfg, &acks);
    for n in 0..100 {
        handle
            .append(record(n, 200), RecordKind::Observations, n)
            .await
            .expect("append");
    }
    wait_until("acks", Duration::from_secs(10), || acks.len() == 100).await;
    assert!(
        objects(&d.objects).is_empty(),
        "nothing rolled yet (5 MiB, 5 min)"
    );
    assert_eq!(
        spool_files(&d.spool).len(),
        1,
        "one open batch in the spool"
    );
    let report = handle.shutdown(Duration::from_secs(10)).await;
    assert_eq!(report.stored, 1);
    assert!(report.completed);
    assert_eq!(task.await.expect("uploader"), report);
    let objs = objects(&d.objects);
    assert_eq!(objs.len(), 1);
    assert_eq!(
        numbers(objs.values().next().expect("object")),
        (0..100).collect::<Vec<_>>()
    );
    assert!(spool_files(&d.spool).is_empty());
    assert_eq!(
        handle
            .append(record(0, 10), RecordKind::Observations, 0)
            .await,
        Err(sinks::objects::AppendError::Closed)
    );
}

/// A store in front of the local writer that fails (retryably) while `down` is set.
struct Flaky {
    inner: Writer,
    down: Arc<AtomicBool>,
    failures: AtomicU64,
}

impl BatchStore for Flaky {
    async fn store(&self, batch: &Batch) -> Result<(), WriteError> {
        if self.down.load(Ordering::SeqCst) {
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err(WriteError::Retryable("store unreachable".into()));
        }
        self.inner.store(batch).await
    }

    fn label(&self) -> &'static str {
        "flaky"
    }
}

fn flaky(cfg: &ObjectsConfig, down: bool) -> (Flaky, Arc<AtomicBool>) {
    let flag = Arc::new(AtomicBool::new(down));
    (
        Flaky {
            inner: Writer::Local(LocalWriter::new(&cfg.dir)),
            down: flag.clone(),
            failures: AtomicU64::new(0),
        },
        flag,
    )
}

/// A sink whose store is down (until `down` is cleared) and whose spool holds two 500-byte
/// batches: intake stops once they are sealed.
fn start_with_the_store_down(
    d: &Dirs,
) -> (
    ObjectSinkHandle<u64>,
    JoinHandle<ShutdownReport>,
    Acks,
    Arc<AtomicBool>,
) {
    let cfg = ObjectsConfig {
        max_bytes: 500,
        spool_max_bytes: 1000,
        ..config(d)
    };
    let acks = Acks::default();
    let (store, down) = flaky(&cfg, true);
    let (handle, task) =
        ObjectSink::start_with_store(&cfg, STACK, store, acks.on_commit()).expect("start");
    (handle, task, acks, down)
}

#[tokio::test]
async fn backpressure_while_the_store_fails_then_nothing_lost() {
    let d = dirs();
    let (handle, task, acks, down) = start_with_the_store_down(&d);
    let (first, total) = (30u64, 200u64);
    // More than the spool may hold: one group commit takes them, then intake stops.
    for n in 0..first {
        handle
            .append(record(n, 100), RecordKind::Observations, n)
            .await
            .expect("append");
    }
    wait_until("backpressure", Duration::from_secs(10), || {
        handle.is_backpressured()
    })
    .await;
    let reason = handle.backpressure_reason().expect("a reason for /readyz");
    assert!(reason.contains("spool_max_bytes"), "{reason}");
    let producer = {
        let handle = handle.clone();
        tokio::spawn(async move {
            for n in first..total {
                handle
                    .append(record(n, 100), RecordKind::Observations, n)
                    .await
                    .expect("append");
            }
        })
    };
    // Intake stays stopped: nothing more is acked while the store is down, across several
    // failed stores.
    let retries = handle.stats().store_retries;
    wait_until("three more store retries", Duration::from_secs(10), || {
        handle.stats().store_retries >= retries + 3
    })
    .await;
    assert_eq!(acks.len() as u64, first, "no acks while backpressured");
    assert!(handle.is_backpressured());
    assert!(handle.stats().store_retries > 0);

    down.store(false, Ordering::SeqCst);
    wait_until("all acked", Duration::from_secs(20), || {
        acks.len() as u64 == total
    })
    .await;
    producer.await.expect("producer");
    let report = handle.shutdown(Duration::from_secs(10)).await;
    assert!(report.completed, "{report:?}");
    task.await.expect("uploader");
    assert!(!handle.is_backpressured());
    assert_eq!(handle.backpressure_reason(), None);

    let mut seen: Vec<u64> = objects(&d.objects)
        .values()
        .flat_map(|b| numbers(b))
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..total).collect::<Vec<_>>(),
        "every record stored exactly once"
    );
    assert_eq!(acks.all(), (0..total).collect::<Vec<_>>());
    assert!(spool_files(&d.spool).is_empty());
}

fn spool_header(key: &str, created_ms: u64) -> SpoolHeader {
    SpoolHeader {
        version: FORMAT_VERSION,
        key: key.into(),
        created_ms,
        kind: RecordKind::Observations,
        delimiter: Delimiter::None,
        compression: Compression::None,
    }
}

#[tokio::test]
async fn crash_recovery_stores_leftover_spools_under_their_keys_once() {
    let d = dirs();
    std::fs::create_dir_all(&d.spool).expect("spool dir");
    let t = 1_458_727_531_000; // 2016-03-23T10:05:31Z
    let key_a = object_key(
        "",
        RecordKind::Observations,
        STACK,
        t,
        &random_suffix(),
        Compression::None,
    );
    let key_b = object_key(
        "",
        RecordKind::Observations,
        STACK,
        t + 1000,
        &random_suffix(),
        Compression::None,
    );

    // A: a batch left open by a crash, its last frame torn (never acked).
    let mut a = SpoolFile::create(&d.spool, "a", spool_header(&key_a, t)).expect("create");
    for n in 0..3 {
        a.push(&record(n, 50), None);
    }
    a.commit().expect("commit");
    let a = a.seal();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&a.path)
            .expect("open");
        f.write_all(&[20, 0, 0, 0, 1, 2]).expect("torn frame");
    }
    // B: stored before the crash, but its spool file not yet deleted: stored again under the
    // same key (overwritten, not duplicated).
    let mut b = SpoolFile::create(&d.spool, "b", spool_header(&key_b, t + 1000)).expect("create");
    for n in 3..5 {
        b.push(&record(n, 50), None);
    }
    b.commit().expect("commit");
    let b = b.seal();
    let stored_b = d.objects.join(&key_b);
    std::fs::create_dir_all(stored_b.parent().expect("parent")).expect("mkdir");
    std::fs::write(&stored_b, [record(3, 50), record(4, 50)].concat()).expect("write");

    let acks = Acks::default();
    let (handle, task) = start(&config(&d), &acks);
    wait_until("recovered objects", Duration::from_secs(10), || {
        spool_files(&d.spool).is_empty()
    })
    .await;
    // New records after the restart go to a new batch.
    handle
        .append(record(5, 50), RecordKind::Observations, 5)
        .await
        .expect("append");
    handle.shutdown(Duration::from_secs(10)).await;
    task.await.expect("uploader");

    let objs = objects(&d.objects);
    assert_eq!(objs.len(), 3, "{:?}", objs.keys().collect::<Vec<_>>());
    assert_eq!(
        objs[&key_a],
        (0..3).map(|n| record(n, 50)).collect::<Vec<_>>().concat()
    );
    assert_eq!(objs[&key_b], [record(3, 50), record(4, 50)].concat());
    assert!(key_a.starts_with("2016/03/23/10/test-firehose-1-2016-03-23-10-05-31-"));
    let mut seen: Vec<u64> = objs.values().flat_map(|b| numbers(b)).collect();
    seen.sort_unstable();
    assert_eq!(seen, [0, 1, 2, 3, 4, 5], "none lost, none twice");
    drop((a, b));
}

#[tokio::test]
async fn grace_running_out_leaves_batches_for_the_next_start() {
    let d = dirs();
    let cfg = config(&d);
    let acks = Acks::default();
    let (store, _down) = flaky(&cfg, true);
    let (handle, task) =
        ObjectSink::start_with_store(&cfg, STACK, store, acks.on_commit()).expect("start");
    for n in 0..20 {
        handle
            .append(record(n, 80), RecordKind::Observations, n)
            .await
            .expect("append");
    }
    wait_until("acks", Duration::from_secs(10), || acks.len() == 20).await;
    // The store is down: shutdown cannot store within its grace; the batch stays spooled.
    let report = handle.shutdown(Duration::from_millis(200)).await;
    assert!(!report.completed);
    assert_eq!(report.left_in_spool, 1);
    task.await.expect("uploader");
    assert!(objects(&d.objects).is_empty());
    let left = spool_files(&d.spool);
    assert_eq!(left.len(), 1);

    // Next start, store up: the leftover is stored first, under its key.
    let acks2 = Acks::default();
    let (handle, task) = start(&cfg, &acks2);
    let report = handle.shutdown(Duration::from_secs(10)).await;
    assert_eq!(report.stored, 1);
    task.await.expect("uploader");
    let objs = objects(&d.objects);
    assert_eq!(objs.len(), 1);
    assert_eq!(
        numbers(objs.values().next().expect("object")),
        (0..20).collect::<Vec<_>>()
    );
    assert!(spool_files(&d.spool).is_empty());
}

/// Keeps every stored batch, in store order.
#[derive(Clone, Default)]
struct Memory(Arc<Mutex<Vec<Batch>>>);

impl BatchStore for Memory {
    async fn store(&self, batch: &Batch) -> Result<(), WriteError> {
        self.0.lock().expect("lock").push(batch.clone());
        Ok(())
    }

    fn label(&self) -> &'static str {
        "memory"
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any records, any size limit: the stored objects, in order, concatenate to exactly the
    /// records, and their record lists are the records.
    #[test]
    fn stored_objects_concatenate_to_the_records(
        records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..60),
        max_bytes in 1u64..2_000,
        newline in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let d = dirs();
        let cfg = ObjectsConfig {
            max_bytes,
            spool_max_bytes: 1 << 30,
            upload_concurrency: 1,
            delimiter: if newline { Delimiter::Newline } else { Delimiter::None },
            ..config(&d)
        };
        let store = Memory::default();
        let acks = Acks::default();
        let stored = runtime.block_on(async {
            let (handle, task) = ObjectSink::start_with_store(&cfg, STACK, store.clone(), acks.on_commit())
                .expect("start");
            for (n, r) in records.iter().enumerate() {
                handle.append(r.clone(), RecordKind::Observations, n as u64).await.expect("append");
            }
            let report = handle.shutdown(Duration::from_secs(10)).await;
            assert!(report.completed);
            task.await.expect("uploader");
            store.0.lock().expect("lock").clone()
        });
        prop_assert_eq!(acks.len(), records.len());
        let delimiter: &[u8] = if newline { b"\n" } else { b"" };
        let expected: Vec<u8> = records.iter().flat_map(|r| [&r[..], delimiter].concat()).collect();
        let body: Vec<u8> = stored.iter().flat_map(|b| b.body.to_vec()).collect();
        prop_assert_eq!(body, expected);
        let listed: Vec<Vec<u8>> = stored.iter().flat_map(|b| b.records.iter().map(|r| r.to_vec())).collect();
        prop_assert_eq!(&listed, &records);
        for batch in &stored {
            // Never past max_bytes, unless one record alone is.
            prop_assert!(batch.body.len() as u64 <= max_bytes || batch.records.len() == 1);
        }
    }
}

/// A batcher thread that dies (here: a commit callback that panics) is reported, not only
/// logged: `failure()` says why (what `/readyz` shows), and later records are refused, so that
/// they are never acked and the broker keeps them.
#[tokio::test]
async fn a_dead_batcher_is_reported_and_refuses_records() {
    let d = dirs();
    let cfg = config(&d);
    let writer = Writer::Local(LocalWriter::new(&cfg.dir));
    let on_commit: sinks::objects::OnCommit<u64> =
        Box::new(|_| panic!("the commit callback failed"));
    let (handle, task) = ObjectSink::start(&cfg, STACK, writer, on_commit).expect("start");
    assert_eq!(handle.failure(), None);
    handle
        .append(record(1, 64), RecordKind::Observations, 1)
        .await
        .expect("the first record is taken");
    wait_until("the batcher's death", Duration::from_secs(20), || {
        handle.failure().is_some()
    })
    .await;
    let failure = handle.failure().expect("failure");
    assert!(failure.contains("the commit callback failed"), "{failure}");
    assert!(failure.contains("no longer stored or acked"), "{failure}");
    assert_eq!(
        handle
            .append(record(2, 64), RecordKind::Observations, 2)
            .await,
        Err(sinks::objects::AppendError::Closed)
    );
    // Shutdown still ends (the thread is joined) and the committed record is in the spool.
    handle.shutdown(Duration::from_secs(5)).await;
    task.await.expect("uploader task");
}

/// `n`'s id in these tests.
fn id_of(n: u64) -> u64 {
    n.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// A batch of the records `range`, each with its id, and `marker` = (after record, token).
fn record_batch(
    range: std::ops::Range<u64>,
    len: usize,
    marker: Option<(u64, u64)>,
) -> RecordBatch<u64> {
    let mut batch = RecordBatch::default();
    for n in range {
        batch
            .push_record(
                &record(n, len),
                RecordKind::Observations,
                id_of(n),
                now_ms(),
                n,
            )
            .expect("push");
        if let Some((_, token)) = marker.filter(|(after, _)| *after == n) {
            batch.push_marker(token);
        }
    }
    batch
}

#[tokio::test]
async fn records_handed_over_in_batches_are_stored_and_acked_like_single_appends() {
    let d = dirs();
    // 100-byte records and delimiters: five to an object.
    let cfg = ObjectsConfig {
        max_bytes: 505,
        delimiter: Delimiter::Newline,
        ..config(&d)
    };
    let acks = Acks::default();
    let (handle, task) = ObjectSink::start(
        &cfg,
        STACK,
        Writer::Local(LocalWriter::new(&cfg.dir)),
        acks.on_commit(),
    )
    .expect("start");
    // Tokens 0..=9 are records 0..=9 with a marker (token 100) after record 3; a single
    // append (10) between two batches; then records 11..23.
    handle
        .append_batch(record_batch(0..10, 100, Some((3, 100))))
        .await
        .expect("batch");
    handle
        .append_with_id(
            record(10, 100),
            RecordKind::Observations,
            id_of(10),
            now_ms(),
            10,
        )
        .await
        .expect("append");
    handle
        .append_batch(record_batch(11..23, 100, None))
        .await
        .expect("batch");
    handle
        .append_batch(RecordBatch::default())
        .await
        .expect("an empty batch is nothing to do");
    let mut expected: Vec<u64> = (0..4).chain([100]).chain(4..23).collect();
    wait_until("every token acked", Duration::from_secs(10), || {
        acks.len() == expected.len()
    })
    .await;
    assert_eq!(acks.all(), expected, "acked in hand-over order");

    let report = handle.shutdown(Duration::from_secs(10)).await;
    assert!(report.completed, "{report:?}");
    task.await.expect("uploader");
    let stored = objects(&d.objects);
    assert_eq!(stored.len(), 5, "rolled at max_bytes: {:?}", stored.keys());
    for body in stored.values() {
        assert!(body.len() <= 505, "{} bytes", body.len());
        assert!(body.ends_with(b"\n"));
    }
    // Keys opened in the same millisecond differ only in their random part, so objects are
    // in no order; each holds a run of records in order.
    let mut seen = Vec::new();
    for body in stored.values() {
        let run = numbers(body);
        assert!(run.windows(2).all(|w| w[1] == w[0] + 1), "{run:?}");
        seen.extend(run);
    }
    seen.sort_unstable();
    expected.retain(|&n| n != 100);
    assert_eq!(seen, expected, "every record once");
}

#[tokio::test]
async fn a_batch_waits_for_room_in_the_queue_and_fails_once_the_sink_is_gone() {
    let d = dirs();
    let (handle, task, acks, down) = start_with_the_store_down(&d);
    // Over the spool's limit with the store down: the batcher takes nothing more.
    handle
        .append_batch(record_batch(0..20, 100, None))
        .await
        .expect("batch");
    wait_until("backpressure", Duration::from_secs(10), || {
        handle.is_backpressured()
    })
    .await;
    // A batch as big as the queue fills it; the next one waits.
    let mut full = RecordBatch::default();
    for token in 1000..1000 + RECORD_QUEUE as u64 {
        full.push_marker(token);
    }
    handle
        .append_batch(full)
        .await
        .expect("room for one full queue");
    let waiting = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.append_batch(record_batch(20..21, 100, None)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "no room while the queue is full");

    // The store comes back: the queue drains, the waiting batch goes in, everything is acked
    // in order.
    down.store(false, Ordering::SeqCst);
    waiting
        .await
        .expect("task")
        .expect("taken once there was room");
    let expected: Vec<u64> = (0..20)
        .chain(1000..1000 + RECORD_QUEUE as u64)
        .chain([20])
        .collect();
    wait_until("every token acked", Duration::from_secs(20), || {
        acks.len() == expected.len()
    })
    .await;
    assert_eq!(acks.all(), expected);

    let report = handle.shutdown(Duration::from_secs(10)).await;
    assert!(report.completed, "{report:?}");
    task.await.expect("uploader");
    assert_eq!(
        handle
            .append_batch(record_batch(21..22, 100, None))
            .await
            .expect_err("the sink is gone"),
        sinks::objects::AppendError::Closed
    );
}
