//! Observation ingest end to end against the built `ccstream` binary: shadow updates published
//! to a real Mosquitto, batches stored in a real SeaweedFS through its S3 gateway, and an
//! OpenSearch stand-in for indexing and ObservationLambda FIND (OpenSearch cannot be installed
//! here).
//!
//! Every test starts its own broker, store and ccstream. What ccstream stored is read back with
//! plain S3 calls and compared byte for byte with what was published: every record is the
//! device's JSON object with `thingName`, `timestamp` and `domain` spliced in after its `{`
//! (spec 5.2, DESIGN.md), records back to back in an object, keys
//! `<prefix>YYYY/MM/DD/HH/dev-firehose-1-YYYY-MM-DD-HH-mm-ss-<uuid>`. Each payload carries a
//! unique `seq`, so that a record lost or stored twice is found and named.
//!
//! gzip objects are decompressed with the `gzip` CLI: the root package has no gzip crate among
//! its dependencies.
#![allow(clippy::unwrap_used)]

mod common;

use ccstream_common::time::now_ms;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{free_port, jwt, unique_suffix, Ccstream, LISTEN};
use serde_json::{json, Value};
use tempfile::TempDir;
use testkit::mosquitto::Mosquitto;
use testkit::search_standin::{canned_search, BulkReply, StandIn};
use testkit::weed::Weed;

const BUCKET: &str = "obs";
/// Credentials for the S3 writer through the standard AWS chain (SeaweedFS accepts any).
const AWS_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", "us-east-1"),
];
/// How long a few records get to reach S3 once their batch rolled; generous for a loaded box.
const WAIT: Duration = Duration::from_secs(30);
const OBSERVATION: &str = "ObservationLambda";
const SECRET: &str = "ingest-test-secret-of-at-least-32-bytes";

/// Things of `fixtures/directory/small.json` and their domain paths.
const SUB1_THING: &str = "thing-101";
const SUB1_PATH: &str = "root/sub1";
const SUB2_THING: &str = "thing-201";
const SUB2_PATH: &str = "root/sub1/sub2";
/// A thing the directory does not know: its records carry no `domain`.
const STRANGER: &str = "stranger-1";

fn shadow_topic(thing: &str) -> String {
    format!("$aws/things/{thing}/shadow/update")
}

fn directory_file() -> String {
    format!(
        "{}/fixtures/directory/small.json",
        env!("CARGO_MANIFEST_DIR")
    )
}

// ---------------------------------------------------------------------------------------------
// Configuration and start-up

/// A config against `broker`: `api` lines go under `[api]` (after `listen`), `objects` lines
/// under `[objects]`, and `extra` (whole sections) at the end. The directory knows the things
/// of `fixtures/directory/small.json`.
fn config(broker: &Mosquitto, client_id: &str, api: &str, objects: &str, extra: &str) -> String {
    format!(
        "[api]\nlisten = \"{LISTEN}\"\n{api}\n\
         [mqtt]\nembedded = false\nurl = \"{}\"\nclient_id = \"{client_id}\"\n\
         keep_alive_secs = 5\nreconnect_initial_ms = 50\nreconnect_max_ms = 500\n\
         [directory]\nimport_file = \"{}\"\n\
         [objects]\n{objects}\n{extra}",
        broker.url(),
        directory_file()
    )
}

/// `[objects]` lines for the S3 sink on `weed`'s `bucket`, plus `extra` lines.
fn s3_objects(weed: &Weed, bucket: &str, extra: &str) -> String {
    format!(
        "sink = \"s3\"\nbucket = \"{bucket}\"\nendpoint = \"{}\"\npath_style = true\n\
         region = \"us-east-1\"\nretry_initial_ms = 200\nretry_max_ms = 2000\n{extra}",
        weed.endpoint()
    )
}

/// Starts ccstream with `config` (the AWS test credentials in its environment) and waits until
/// `/readyz` says it is subscribed: the first session has no queue at the broker yet.
async fn start(config: &str) -> Ccstream {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let svc = Ccstream::start_with(&config.replace(LISTEN, &addr.to_string()), AWS_ENV, addr).await;
    wait_readyz(&svc, 200, WAIT).await;
    svc
}

/// Waits until `/readyz` answers `status`; returns its body.
async fn wait_readyz(svc: &Ccstream, status: u16, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let (got, body) = svc.get("/readyz").await;
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {got} ({}), expected {status} within {timeout:?}",
            body.trim()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One series of `/metrics`, written as exported (`name{label="v"}`); 0 when absent.
async fn metric(svc: &Ccstream, series: &str) -> f64 {
    svc.metric(series).await
}

const RECORDS_OBSERVATIONS: &str = "ccstream_objects_records_total{kind=\"observations\"}";
const RECORDS_ERRORS: &str = "ccstream_objects_records_total{kind=\"errors\"}";

/// Waits until `series` is at least `at_least`.
async fn wait_metric(svc: &Ccstream, series: &str, at_least: f64, timeout: Duration) -> f64 {
    let deadline = Instant::now() + timeout;
    loop {
        let v = metric(svc, series).await;
        if v >= at_least {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stayed at {v}, expected at least {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every record ccstream committed is stored: no spool file is left, open batches
/// included. After the record of an observation published last is stored, nothing received
/// before it (a late redelivery included) can show up later.
async fn wait_spool_empty(svc: &Ccstream) {
    let deadline = Instant::now() + WAIT;
    loop {
        let files = metric(svc, "ccstream_spool_files").await;
        if files == 0.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{files} spool files still there after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// What was published, and what ccstream must have stored for it

/// One published observation.
#[derive(Debug, Clone)]
struct Sent {
    thing: String,
    /// The thing's domain path when the directory knows it.
    domain: Option<&'static str>,
    /// The payload, compact JSON.
    payload: String,
    /// The payload has a top-level `timestamp`: no receive time is spliced in.
    own_timestamp: bool,
}

/// Everything published in a test, by `seq`.
#[derive(Default)]
struct Ledger {
    sent: BTreeMap<u64, Sent>,
}

impl Ledger {
    /// Publishes `{"seq":N,...fields}` for each `seq` of `seqs` to `thing` over one connection,
    /// and records them. `fields(seq)` is the rest of the object (`"a":1,"b":2`), may be empty.
    fn publish(
        &mut self,
        broker: &Mosquitto,
        thing: &str,
        domain: Option<&'static str>,
        seqs: impl IntoIterator<Item = u64>,
        fields: impl Fn(u64) -> String,
    ) {
        let mut lines = Vec::new();
        for seq in seqs {
            let rest = fields(seq);
            let payload = if rest.is_empty() {
                format!("{{\"seq\":{seq}}}")
            } else {
                format!("{{\"seq\":{seq},{rest}}}")
            };
            let own_timestamp =
                serde_json::from_str::<Value>(&payload).unwrap()["timestamp"].is_number();
            let prev = self.sent.insert(
                seq,
                Sent {
                    thing: thing.to_owned(),
                    domain,
                    payload: payload.clone(),
                    own_timestamp,
                },
            );
            assert!(prev.is_none(), "test bug: seq {seq} published twice");
            lines.push(payload);
        }
        broker.publish_lines(&shadow_topic(thing), &lines);
    }
}

/// The record ccstream stores for `payload` (a compact JSON object) of `thing`: `thingName`,
/// `timestamp` (when given: the payload has none of its own) and `domain` spliced in after the
/// `{`, then the payload's members as they were.
fn expected_record(
    thing: &str,
    timestamp: Option<u64>,
    domain: Option<&str>,
    payload: &str,
) -> String {
    let mut out = format!("{{\"thingName\":{}", json!(thing));
    if let Some(ts) = timestamp {
        out.push_str(&format!(",\"timestamp\":{ts}"));
    }
    if let Some(domain) = domain {
        out.push_str(&format!(",\"domain\":{}", json!(domain)));
    }
    let body = &payload[1..];
    if body.trim_start() != "}" {
        out.push(',');
    }
    out.push_str(body);
    out
}

/// One stored object, decompressed.
#[derive(Debug, Clone)]
struct Stored {
    key: String,
    /// The object's bytes (after gunzip for `.gz` keys).
    bytes: Vec<u8>,
    /// Each record's byte range in `bytes` (whitespace between records excluded).
    ranges: Vec<(usize, usize)>,
    records: Vec<Value>,
}

impl Stored {
    fn parse(key: String, raw: Vec<u8>) -> Stored {
        let bytes = if key.ends_with(".gz") {
            assert!(
                raw.starts_with(&[0x1f, 0x8b]),
                "{key} is not gzip data: {:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(64)])
            );
            gunzip(&raw)
        } else {
            raw
        };
        let (ranges, records) = split_records(&bytes)
            .unwrap_or_else(|e| panic!("object {key} is not a sequence of JSON records: {e}"));
        Stored {
            key,
            bytes,
            ranges,
            records,
        }
    }

    fn seqs(&self) -> Vec<u64> {
        self.records
            .iter()
            .map(|r| {
                r["seq"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("record without seq in {}: {r}", self.key))
            })
            .collect()
    }

    fn first_seq(&self) -> u64 {
        self.seqs().first().copied().unwrap_or(u64::MAX)
    }

    fn record_bytes(&self, i: usize) -> &[u8] {
        &self.bytes[self.ranges[i].0..self.ranges[i].1]
    }
}

/// Records of an object: each one's byte range (whitespace around it excluded) and value.
type Split = (Vec<(usize, usize)>, Vec<Value>);

/// Splits JSON values written back to back (or separated by whitespace) into byte ranges.
fn split_records(bytes: &[u8]) -> Result<Split, String> {
    let mut ranges = Vec::new();
    let mut records = Vec::new();
    let mut stream = serde_json::Deserializer::from_slice(bytes).into_iter::<Value>();
    loop {
        let mut start = stream.byte_offset();
        match stream.next() {
            None => break,
            Some(Err(e)) => return Err(format!("{e} at byte {}", stream.byte_offset())),
            Some(Ok(v)) => {
                while bytes[start].is_ascii_whitespace() {
                    start += 1;
                }
                ranges.push((start, stream.byte_offset()));
                records.push(v);
            }
        }
    }
    Ok((ranges, records))
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gzip");
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    assert!(
        out.status.success(),
        "gzip -dc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The objects of a bucket under a prefix, fetched once each (keys are never rewritten with
/// other records: a retry of the same batch writes the same bytes).
struct Objects {
    bucket: String,
    prefix: String,
    seen: BTreeMap<String, Stored>,
}

impl Objects {
    fn new(bucket: &str, prefix: &str) -> Objects {
        Objects {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            seen: BTreeMap::new(),
        }
    }

    /// Lists the bucket and fetches the objects not seen yet; an error while S3 is unreachable.
    async fn refresh(&mut self, weed: &Weed) -> Result<(), String> {
        for key in weed.try_list_keys(&self.bucket, &self.prefix).await? {
            if self.seen.contains_key(&key) {
                continue;
            }
            let raw = weed.try_get(&self.bucket, &key).await?;
            let stored = Stored::parse(key.clone(), raw);
            self.seen.insert(key, stored);
        }
        Ok(())
    }

    fn records(&self) -> usize {
        self.seen.values().map(|o| o.records.len()).sum()
    }

    /// Waits until the objects hold at least `n` records.
    async fn wait_records(&mut self, weed: &Weed, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let err = self.refresh(weed).await.err();
            if self.records() >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} records under s3://{}/{} within {timeout:?}, found {} in {} \
                 objects{}",
                self.bucket,
                self.prefix,
                self.records(),
                self.seen.len(),
                err.map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The objects in the order their records were published (by their first `seq`).
    fn in_order(&self) -> Vec<&Stored> {
        let mut all: Vec<&Stored> = self.seen.values().collect();
        all.sort_by_key(|o| o.first_seq());
        all
    }
}

/// Asserts that `obj` is exactly the records ccstream must have stored for what was published,
/// each followed by `delimiter`, and that its key is right ([`check_object_key`]). Returns its
/// seqs.
fn check_object(
    obj: &Stored,
    ledger: &Ledger,
    prefix: &str,
    delimiter: &str,
    since_ms: u64,
) -> Vec<u64> {
    let seqs = check_records(obj, ledger, delimiter, since_ms);
    check_object_key(obj, ledger, prefix);
    seqs
}

/// Asserts the key of `obj` ([`check_key`]) against its first record with a receive time.
fn check_object_key(obj: &Stored, ledger: &Ledger, prefix: &str) {
    let first = obj.records.iter().find_map(|r| {
        let seq = r["seq"].as_u64()?;
        let own = ledger.sent.get(&seq).is_some_and(|s| s.own_timestamp);
        (!own).then(|| r["timestamp"].as_u64()).flatten()
    });
    if let Some(first) = first {
        check_key(&obj.key, prefix, first, obj.key.ends_with(".gz"));
    }
}

/// Asserts that `obj` is exactly the records ccstream must have stored for what was published,
/// each followed by `delimiter`. Returns its seqs.
fn check_records(obj: &Stored, ledger: &Ledger, delimiter: &str, since_ms: u64) -> Vec<u64> {
    let mut expected = String::new();
    for (i, record) in obj.records.iter().enumerate() {
        let seq = record["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("record without seq in {}: {record}", obj.key));
        let sent = ledger
            .sent
            .get(&seq)
            .unwrap_or_else(|| panic!("{} holds a record never published: {record}", obj.key));
        assert_eq!(
            record["thingName"], sent.thing,
            "thingName of record {seq} in {}",
            obj.key
        );
        let ts = record["timestamp"]
            .as_u64()
            .unwrap_or_else(|| panic!("record {seq} in {} has no timestamp: {record}", obj.key));
        let spliced = if sent.own_timestamp {
            None
        } else {
            assert!(
                ts >= since_ms && ts <= now_ms() + 1000,
                "timestamp {ts} of record {seq} in {} is not its receive time (published after \
                 {since_ms})",
                obj.key
            );
            Some(ts)
        };
        let want = expected_record(&sent.thing, spliced, sent.domain, &sent.payload);
        assert_eq!(
            String::from_utf8_lossy(obj.record_bytes(i)),
            want,
            "record {seq} (#{i}) in {}",
            obj.key
        );
        expected.push_str(&want);
        expected.push_str(delimiter);
    }
    if obj.bytes != expected.as_bytes() {
        let at = obj
            .bytes
            .iter()
            .zip(expected.as_bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(obj.bytes.len().min(expected.len()));
        panic!(
            "object {} ({} bytes) is not its records joined by {delimiter:?} ({} bytes); first \
             difference at byte {at}: stored {:?}, expected {:?}",
            obj.key,
            obj.bytes.len(),
            expected.len(),
            String::from_utf8_lossy(
                &obj.bytes[at.saturating_sub(20)..(at + 40).min(obj.bytes.len())]
            ),
            &expected[at.saturating_sub(20)..(at + 40).min(expected.len())]
        );
    }
    obj.seqs()
}

/// Asserts `key` is `<prefix>YYYY/MM/DD/HH/dev-firehose-1-YYYY-MM-DD-HH-mm-ss-<uuid>[.gz]`, UTC,
/// its time the batch's first record's (`first_ms`, its receive time; the batch opens a moment
/// later, so up to 2 s after).
fn check_key(key: &str, prefix: &str, first_ms: u64, gzip: bool) {
    let bad = |why: &str| -> ! {
        panic!(
            "key {key:?} does not match {prefix}YYYY/MM/DD/HH/dev-firehose-1-YYYY-MM-DD-HH-mm-ss-\
             <uuid>{} for a first record at {first_ms} ms: {why}",
            if gzip { ".gz" } else { "" }
        )
    };
    let rest = key.strip_prefix(prefix).unwrap_or_else(|| bad("prefix"));
    let rest = if gzip {
        rest.strip_suffix(".gz").unwrap_or_else(|| bad("no .gz"))
    } else {
        rest
    };
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.len() != 5 {
        bad("not four folders and a name");
    }
    let num = |s: &str, len: usize| -> u32 {
        if s.len() != len || !s.bytes().all(|b| b.is_ascii_digit()) {
            bad(&format!("{s:?} is not {len} digits"));
        }
        s.parse().unwrap()
    };
    let (y, mo, d, h) = (
        num(parts[0], 4),
        num(parts[1], 2),
        num(parts[2], 2),
        num(parts[3], 2),
    );
    let name = parts[4]
        .strip_prefix("dev-firehose-1-")
        .unwrap_or_else(|| bad("name does not start with dev-firehose-1-"));
    let fields: Vec<&str> = name.splitn(7, '-').collect();
    if fields.len() != 7 {
        bad("name has no time fields");
    }
    let (y2, mo2, d2, h2, mi, s) = (
        num(fields[0], 4),
        num(fields[1], 2),
        num(fields[2], 2),
        num(fields[3], 2),
        num(fields[4], 2),
        num(fields[5], 2),
    );
    if (y, mo, d, h) != (y2, mo2, d2, h2) {
        bad("folders and name disagree");
    }
    if !is_uuid(fields[6]) {
        bad(&format!("{:?} is not a lowercase UUID", fields[6]));
    }
    let secs = time::Month::try_from(mo as u8)
        .ok()
        .and_then(|month| time::Date::from_calendar_date(y as i32, month, d as u8).ok())
        .and_then(|date| date.with_hms(h as u8, mi as u8, s as u8).ok())
        .unwrap_or_else(|| bad("not a valid date and time"))
        .assume_utc()
        .unix_timestamp();
    let first = (first_ms / 1000) as i64;
    if secs < first || secs > first + 2 {
        bad(&format!(
            "its time is {secs} s, the first record's {first} s (UTC)"
        ));
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_digit() || ('a'..='f').contains(&c),
        })
}

/// `YYYY.MM.DD` (UTC) of `ms` since the epoch.
fn utc_day(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64).unwrap();
    format!("{:04}.{:02}.{:02}", t.year(), u8::from(t.month()), t.day())
}

fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Files under the spool dir `dir` other than the journal of stored record ids
/// (`stored-ids-*.log`, kept on purpose so that redeliveries after a restart are recognised):
/// batches not yet stored, or moved aside as failed.
fn batch_files(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            !(name.starts_with("stored-ids-") && name.ends_with(".log"))
        })
        .collect()
}

/// Regular files under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn helpers_are_right() {
    assert_eq!(utc_day(1_464_081_794_634), "2016.05.24");
    assert_eq!(utc_day(0), "1970.01.01");
    assert_eq!(utc_day(951_782_400_000), "2000.02.29");
    check_key(
        "p/2016/05/24/09/dev-firehose-1-2016-05-24-09-23-14-0f8fad5b-d9cb-469f-a165-70867728950e",
        "p/",
        1_464_081_794_634,
        false,
    );
    assert_eq!(
        expected_record("t", Some(5), Some("root/a"), "{\"seq\":1}"),
        "{\"thingName\":\"t\",\"timestamp\":5,\"domain\":\"root/a\",\"seq\":1}"
    );
    assert_eq!(
        expected_record("t", None, None, "{}"),
        "{\"thingName\":\"t\"}"
    );
    let (ranges, records) = split_records(b"{\"a\":1}{\"b\":[2]}\n{}\n").unwrap();
    assert_eq!(ranges, [(0, 7), (7, 16), (17, 19)]);
    assert_eq!(records.len(), 3);
}

// ---------------------------------------------------------------------------------------------
// Batches: size, age, bytes, keys, delimiter, gzip, error records

/// A padding field whose length varies with `seq`, so that records have many sizes.
fn padded(seq: u64) -> String {
    format!(
        "\"state\":{{\"reported\":{{\"temp\":{}}}}},\"pad\":\"{}\"",
        seq % 50,
        "x".repeat((seq * 7 % 61) as usize)
    )
}

#[tokio::test]
async fn batches_roll_by_size_with_exact_keys_and_bytes() {
    const MAX_BYTES: usize = 2048;
    let broker = Mosquitto::start();
    let weed = Weed::start().await;
    weed.create_bucket(BUCKET).await;
    // A large age: only size rolls a batch here.
    let objects = s3_objects(
        &weed,
        BUCKET,
        &format!("max_bytes = {MAX_BYTES}\nmax_age_secs = 300"),
    );
    let svc = start(&config(
        &broker,
        &format!("ingest-size-{}", unique_suffix()),
        "",
        &objects,
        "",
    ))
    .await;

    let since = now_ms();
    let mut ledger = Ledger::default();
    ledger.publish(&broker, SUB1_THING, Some(SUB1_PATH), 0..120, padded);
    // One record larger than max_bytes: it rolls the open batch and is an object alone.
    let big = "y".repeat(MAX_BYTES + 500);
    ledger.publish(&broker, SUB1_THING, Some(SUB1_PATH), [120], |_| {
        format!("\"big\":\"{big}\"")
    });

    // The partition the size rule gives, from the records' lengths (a receive time always has
    // 13 digits): a batch takes records while they fit in max_bytes.
    let mut want: Vec<Vec<u64>> = vec![Vec::new()];
    let mut size = 0;
    for (seq, sent) in &ledger.sent {
        let len = expected_record(
            &sent.thing,
            Some(1_000_000_000_000),
            sent.domain,
            &sent.payload,
        )
        .len();
        if size > 0 && size + len > MAX_BYTES {
            want.push(Vec::new());
            size = 0;
        }
        want.last_mut().unwrap().push(*seq);
        size += len;
    }
    assert!(want.len() >= 10, "test bug: only {} batches", want.len());

    let mut stored = Objects::new(BUCKET, "");
    stored.wait_records(&weed, ledger.sent.len(), WAIT).await;
    let got: Vec<Vec<u64>> = stored
        .in_order()
        .iter()
        .map(|o| check_object(o, &ledger, "", "", since))
        .collect();
    assert_eq!(
        got, want,
        "objects (as seqs) differ from the size rule's batches"
    );
    for obj in stored.in_order() {
        if obj.records.len() > 1 {
            assert!(
                obj.bytes.len() <= MAX_BYTES,
                "{} has {} bytes, more than max_bytes",
                obj.key,
                obj.bytes.len()
            );
        }
    }
    // Nothing else shows up: ccstream received each message once and committed each record
    // once, and every batch it stored is one of the objects checked above.
    let n = ledger.sent.len() as f64;
    assert_eq!(
        metric(&svc, "ccstream_observations_received_total").await,
        n
    );
    assert_eq!(
        metric(&svc, RECORDS_OBSERVATIONS).await,
        n,
        "records committed twice"
    );
    stored.refresh(&weed).await.unwrap();
    assert_eq!(stored.records(), ledger.sent.len(), "records stored twice");
    assert_eq!(
        metric(&svc, "ccstream_objects_batches_stored_total{sink=\"s3\"}").await,
        stored.seen.len() as f64,
        "batches stored that are not in the bucket"
    );
    drop(svc);
}

#[tokio::test]
async fn batches_roll_by_age_and_records_carry_thing_time_and_domain() {
    let broker = Mosquitto::start();
    let weed = Weed::start().await;
    weed.create_bucket(BUCKET).await;
    let objects = s3_objects(&weed, BUCKET, "max_bytes = 5242880\nmax_age_secs = 2");
    let svc = start(&config(
        &broker,
        &format!("ingest-age-{}", unique_suffix()),
        "",
        &objects,
        "",
    ))
    .await;
    let mut stored = Objects::new(BUCKET, "");
    let mut ledger = Ledger::default();

    // One burst: one batch, stored about 2 s after its first record, not before.
    let since = now_ms();
    let published = Instant::now();
    ledger.publish(&broker, SUB1_THING, Some(SUB1_PATH), 0..5, padded);
    wait_metric(&svc, RECORDS_OBSERVATIONS, 5.0, WAIT).await;
    stored.refresh(&weed).await.unwrap();
    assert!(
        stored.seen.is_empty() || published.elapsed() >= Duration::from_millis(1500),
        "a batch was stored {:?} after its first record, max_age_secs = 2: {:?}",
        published.elapsed(),
        stored.seen.keys()
    );
    // Stored by age (max_bytes is far away), not before it: how much later depends on the
    // machine's load, so only WAIT bounds it.
    stored.wait_records(&weed, 5, WAIT).await;
    let took = published.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "the batch was stored {took:?} after its first record, max_age_secs = 2"
    );
    assert_eq!(
        stored.seen.len(),
        1,
        "one burst, one batch: {:?}",
        stored.seen.keys()
    );
    let obj = stored.in_order()[0];
    assert_eq!(check_object(obj, &ledger, "", "", since), [0, 1, 2, 3, 4]);

    // The record's fields: a deeper domain, no domain for an unknown thing, the payload's own
    // timestamp kept, a payload's `thingName` replaced by the topic's, an empty object.
    ledger.publish(&broker, SUB2_THING, Some(SUB2_PATH), [10], |_| {
        "\"temp\":1.5".into()
    });
    ledger.publish(&broker, STRANGER, None, [11], |_| "\"temp\":2".into());
    ledger.publish(&broker, SUB1_THING, Some(SUB1_PATH), [12], |_| {
        "\"timestamp\":1464081794634,\"state\":{\"reported\":{\"temp\":3}}".into()
    });
    let spoofed = "{\"thingName\":\"spoof\",\"seq\":13,\"state\":{\"reported\":{\"on\":true}}}";
    broker.publish(&shadow_topic(SUB1_THING), spoofed.as_bytes());
    stored.wait_records(&weed, 9, WAIT).await;

    let mut by_seq: HashMap<u64, (Value, String)> = HashMap::new();
    for obj in stored.seen.values() {
        for (i, r) in obj.records.iter().enumerate() {
            let text = String::from_utf8_lossy(obj.record_bytes(i)).into_owned();
            by_seq.insert(r["seq"].as_u64().unwrap(), (r.clone(), text));
        }
        // Every object but the one holding the spoofed record (checked below) is exact.
        if !obj.seqs().contains(&13) {
            check_object(obj, &ledger, "", "", since);
        }
    }
    let (rec, text) = &by_seq[&13];
    let ts = rec["timestamp"].as_u64().unwrap();
    assert_eq!(
        text,
        &format!(
            "{{\"thingName\":\"{SUB1_THING}\",\"timestamp\":{ts},\"domain\":\"{SUB1_PATH}\",\
             \"seq\":13,\"state\":{{\"reported\":{{\"on\":true}}}}}}"
        ),
        "a payload's thingName is replaced by the topic's"
    );
    assert_eq!(by_seq[&12].0["timestamp"], 1_464_081_794_634_u64);
    assert!(by_seq[&11].0.get("domain").is_none(), "{}", by_seq[&11].1);
    assert_eq!(by_seq[&10].0["domain"], SUB2_PATH);
    drop(svc);
}

#[tokio::test]
async fn newline_delimited_and_gzip_objects_hold_the_same_records() {
    let broker = Mosquitto::start();
    let weed = Weed::start().await;
    weed.create_bucket("obs-nl").await;
    weed.create_bucket("obs-gz").await;
    // Two instances on the same broker (own client ids, own buckets): both take every
    // observation, one writes JSON lines, the other gzip.
    let nl = start(&config(
        &broker,
        &format!("ingest-nl-{}", unique_suffix()),
        "",
        &s3_objects(&weed, "obs-nl", "max_age_secs = 1\ndelimiter = \"newline\""),
        "",
    ))
    .await;
    let gz = start(&config(
        &broker,
        &format!("ingest-gz-{}", unique_suffix()),
        "",
        &s3_objects(&weed, "obs-gz", "max_age_secs = 1\ncompression = \"gzip\""),
        "",
    ))
    .await;

    let since = now_ms();
    let mut ledger = Ledger::default();
    ledger.publish(&broker, SUB1_THING, Some(SUB1_PATH), 0..40, padded);
    ledger.publish(&broker, STRANGER, None, 40..60, padded);

    let mut lines = Objects::new("obs-nl", "");
    lines.wait_records(&weed, 60, WAIT).await;
    let mut seqs = Vec::new();
    for obj in lines.in_order() {
        assert!(
            obj.bytes.ends_with(b"\n"),
            "{} does not end with a newline",
            obj.key
        );
        seqs.extend(check_object(obj, &ledger, "", "\n", since));
    }
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (0..60).collect::<Vec<_>>(),
        "newline-delimited objects"
    );

    let mut zipped = Objects::new("obs-gz", "");
    zipped.wait_records(&weed, 60, WAIT).await;
    let mut seqs = Vec::new();
    for obj in zipped.in_order() {
        // Stored::parse checked the gzip magic and decompressed it; the key ends in .gz.
        assert!(obj.key.ends_with(".gz"), "{}", obj.key);
        seqs.extend(check_object(obj, &ledger, "", "", since));
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (0..60).collect::<Vec<_>>(), "gzip objects");
    drop((nl, gz));
}

#[tokio::test]
async fn payloads_that_are_not_json_objects_become_error_records() {
    const PREFIX: &str = "raw/";
    let broker = Mosquitto::start();
    let weed = Weed::start().await;
    weed.create_bucket(BUCKET).await;
    let objects = s3_objects(
        &weed,
        BUCKET,
        &format!("max_age_secs = 1\nprefix = \"{PREFIX}\""),
    );
    let svc = start(&config(
        &broker,
        &format!("ingest-err-{}", unique_suffix()),
        "",
        &objects,
        "",
    ))
    .await;

    let since = now_ms();
    let bad = [
        "[1,2,3]",
        "\"just a string\"",
        "42",
        "not json at all",
        "null",
        "{\"open\":",
    ];
    broker.publish_lines(&shadow_topic(SUB1_THING), &bad);
    let mut ledger = Ledger::default();
    ledger.publish(&broker, SUB1_THING, Some(SUB1_PATH), [1], |_| String::new());

    let mut errors = Objects::new(BUCKET, &format!("{PREFIX}errors/"));
    errors.wait_records(&weed, bad.len(), WAIT).await;
    let mut got = Vec::new();
    for obj in errors.seen.values() {
        let joined: Vec<u8> = (0..obj.records.len())
            .flat_map(|i| obj.record_bytes(i).to_vec())
            .collect();
        assert_eq!(obj.bytes, joined, "{}: error records back to back", obj.key);
        let first = obj.records[0]["timestamp"].as_u64().unwrap();
        check_key(&obj.key, &format!("{PREFIX}errors/"), first, false);
        for r in &obj.records {
            let keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
            let mut sorted = keys.clone();
            sorted.sort_unstable();
            assert_eq!(
                sorted,
                ["rawData", "reason", "thingName", "timestamp"],
                "{r}"
            );
            assert_eq!(r["thingName"], SUB1_THING, "{r}");
            let ts = r["timestamp"].as_u64().unwrap();
            assert!(ts >= since && ts <= now_ms(), "timestamp of {r}");
            assert!(
                r["reason"].as_str().is_some_and(|s| !s.is_empty()),
                "reason of {r}"
            );
            got.push((
                r["timestamp"].as_u64().unwrap(),
                r["rawData"].as_str().unwrap().to_owned(),
            ));
        }
    }
    got.sort();
    let raw: Vec<String> = got.into_iter().map(|(_, d)| d).collect();
    let want: Vec<String> = bad.iter().map(|b| base64(b.as_bytes())).collect();
    let mut raw_sorted = raw.clone();
    raw_sorted.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(raw_sorted, want_sorted, "rawData is each payload in base64");

    // The object payload is an observation record, outside errors/.
    let mut all = Objects::new(BUCKET, PREFIX);
    all.wait_records(&weed, bad.len() + 1, WAIT).await;
    let observations: Vec<&Stored> = all
        .seen
        .values()
        .filter(|o| !o.key.starts_with(&format!("{PREFIX}errors/")))
        .collect();
    assert_eq!(observations.len(), 1, "{:?}", all.seen.keys());
    assert_eq!(
        check_object(observations[0], &ledger, PREFIX, "", since),
        [1]
    );
    assert_eq!(metric(&svc, RECORDS_ERRORS).await, bad.len() as f64);
    assert_eq!(metric(&svc, RECORDS_OBSERVATIONS).await, 1.0);
}

#[tokio::test]
async fn sigterm_stores_open_batches_and_empties_the_spool() {
    let broker = Mosquitto::start();
    let weed = Weed::start().await;
    weed.create_bucket(BUCKET).await;
    let objects = s3_objects(&weed, BUCKET, "max_age_secs = 3600");
    let mut svc = start(&config(
        &broker,
        &format!("ingest-term-{}", unique_suffix()),
        "",
        &objects,
        "",
    ))
    .await;

    let since = now_ms();
    let mut ledger = Ledger::default();
    ledger.publish(&broker, SUB1_THING, Some(SUB1_PATH), 0..30, padded);
    ledger.publish(&broker, STRANGER, None, 30..40, padded);
    broker.publish(&shadow_topic(SUB1_THING), b"not an object");
    // Acked: in the spool.
    wait_metric(&svc, RECORDS_OBSERVATIONS, 40.0, WAIT).await;
    wait_metric(&svc, RECORDS_ERRORS, 1.0, WAIT).await;
    let spool = svc.dir().join("data/spool");
    assert!(
        !batch_files(&spool).is_empty(),
        "the open batches are not in the spool ({})",
        spool.display()
    );
    assert!(
        weed.list_keys(BUCKET, "").await.is_empty(),
        "stored before its age or SIGTERM"
    );

    let status = svc.stop().await.unwrap();
    assert!(
        status.success(),
        "ccstream exited with {status} after SIGTERM\n{}",
        svc.logs()
    );
    let mut stored = Objects::new(BUCKET, "");
    stored.refresh(&weed).await.unwrap();
    assert_eq!(
        stored.records(),
        41,
        "after SIGTERM every open batch is stored: {:?}",
        stored.seen.keys()
    );
    let mut seqs = Vec::new();
    for obj in stored
        .seen
        .values()
        .filter(|o| !o.key.starts_with("errors/"))
    {
        seqs.extend(check_object(obj, &ledger, "", "", since));
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (0..40).collect::<Vec<_>>());
    let errors: Vec<&Stored> = stored
        .seen
        .values()
        .filter(|o| o.key.starts_with("errors/"))
        .collect();
    assert_eq!(errors.len(), 1, "{:?}", stored.seen.keys());
    assert_eq!(errors[0].records[0]["rawData"], base64(b"not an object"));
    let left = batch_files(&spool);
    assert!(
        left.is_empty(),
        "the spool still holds {left:?} after SIGTERM"
    );
}

// ---------------------------------------------------------------------------------------------
// Crash safety: kill -9 while 100,000 QoS 1 observations are published

/// `mosquitto_pub -q 1 -l` for one thing, fed with its lines by a thread in paced chunks.
struct Publisher {
    thing: String,
    child: Option<Child>,
    writer: Option<JoinHandle<std::io::Result<()>>>,
}

impl Publisher {
    fn spawn(
        port: u16,
        thing: &str,
        lines: Vec<String>,
        chunk: usize,
        pause: Duration,
    ) -> Publisher {
        let mut child = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-q",
                "1",
                "-l",
                "-M",
                "100",
            ])
            .args(["-t", &shadow_topic(thing)])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run mosquitto_pub (Debian package mosquitto-clients)");
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || {
            for part in lines.chunks(chunk) {
                let mut text = part.join("\n");
                text.push('\n');
                stdin.write_all(text.as_bytes())?;
                stdin.flush()?;
                std::thread::sleep(pause);
            }
            Ok(())
        });
        Publisher {
            thing: thing.to_owned(),
            child: Some(child),
            writer: Some(writer),
        }
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Waits until every line was published and acknowledged by the broker.
    async fn finish(&mut self, deadline: Instant) {
        let mut child = self.child.take().unwrap();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("mosquitto_pub for {} did not finish in time", self.thing);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let wrote = self.writer.take().unwrap().join().unwrap();
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        assert!(
            status.success() && wrote.is_ok(),
            "mosquitto_pub for {} exited with {status} ({wrote:?}): {stderr}",
            self.thing
        );
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test]
async fn kill_9_during_100k_observations_then_restart_stores_each_exactly_once() {
    const TOTAL: u64 = 100_000;
    const THINGS: [(&str, Option<&str>); 4] = [
        ("thing-001", Some("root")),
        ("thing-002", Some("root")),
        (SUB1_THING, Some(SUB1_PATH)),
        (STRANGER, None),
    ];
    let broker = Mosquitto::start();
    let weed = Weed::start().await;
    weed.create_bucket(BUCKET).await;
    let spool = TempDir::new().unwrap();
    let objects = s3_objects(
        &weed,
        BUCKET,
        &format!(
            "max_bytes = 1048576\nmax_age_secs = 2\nspool_dir = \"{}\"",
            spool.path().join("spool").display()
        ),
    );
    // The same client id and spool for both runs: the broker keeps the session's messages.
    let conf = config(
        &broker,
        &format!("ingest-kill9-{}", unique_suffix()),
        "",
        &objects,
        "",
    );
    let first = start(&conf).await;

    // 25,000 observations per thing, paced to about 10,000/s in all, so that publishing is
    // still going on when ccstream is killed.
    let per_thing = TOTAL / THINGS.len() as u64;
    let mut expected_thing: HashMap<u64, &str> = HashMap::new();
    let mut publishers: Vec<Publisher> = THINGS
        .iter()
        .enumerate()
        .map(|(t, (thing, _))| {
            let seqs = (t as u64 * per_thing)..((t as u64 + 1) * per_thing);
            let lines = seqs
                .map(|seq| {
                    expected_thing.insert(seq, thing);
                    format!(
                        "{{\"seq\":{seq},\"state\":{{\"reported\":{{\"temp\":{}}}}}}}",
                        seq % 97
                    )
                })
                .collect();
            Publisher::spawn(broker.port(), thing, lines, 250, Duration::from_millis(100))
        })
        .collect();

    let started = Instant::now();
    let spooled = loop {
        let n = metric(&first, RECORDS_OBSERVATIONS).await;
        if n >= 20_000.0 || (n >= 1_000.0 && started.elapsed() >= Duration::from_secs(5)) {
            break n;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "ccstream took only {n} observations in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let pid = first.pid().unwrap();
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success(), "kill -KILL {pid}");
    let still_publishing = publishers
        .iter_mut()
        .map(Publisher::running)
        .filter(|r| *r)
        .count();
    eprintln!(
        "killed ccstream (pid {pid}) after it spooled {spooled} observations, {:?} after \
         publishing began; {still_publishing} of {} publishers still running",
        started.elapsed(),
        publishers.len()
    );
    assert!(
        still_publishing > 0,
        "test setup: publishing had ended before the kill"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    for p in &mut publishers {
        p.finish(deadline).await;
    }
    eprintln!(
        "all {TOTAL} observations acknowledged by the broker after {:?}",
        started.elapsed()
    );

    // Restart: spool files left by the crash are stored, the broker redelivers what was not
    // acked and sends what was queued.
    let second = start(&conf).await;
    // A last observation, published after everything else: once it is stored and the spool is
    // empty, every redelivery the broker made before it has been stored too.
    broker.publish_lines(
        &shadow_topic("thing-001"),
        &[format!(
            "{{\"seq\":{TOTAL},\"state\":{{\"reported\":{{\"temp\":1}}}}}}"
        )],
    );
    expected_thing.insert(TOTAL, "thing-001");
    let mut stored = Objects::new(BUCKET, "");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let _ = stored.refresh(&weed).await;
        let distinct: std::collections::HashSet<u64> = stored
            .seen
            .values()
            .flat_map(|o| o.records.iter().filter_map(|r| r["seq"].as_u64()))
            .collect();
        if distinct.len() as u64 > TOTAL {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {TOTAL} observations reached S3 within 180 s of the restart ({} \
             objects, {} records)",
            distinct.len(),
            stored.seen.len(),
            stored.records()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_spool_empty(&second).await;
    let mut fresh = Objects::new(BUCKET, "");
    fresh.refresh(&weed).await.unwrap();

    let mut count: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for obj in fresh.seen.values() {
        for r in &obj.records {
            let seq = r["seq"]
                .as_u64()
                .unwrap_or_else(|| panic!("record without seq in {}: {r}", obj.key));
            assert_eq!(
                r["thingName"].as_str(),
                expected_thing.get(&seq).copied(),
                "thingName of {r} in {}",
                obj.key
            );
            count.entry(seq).or_default().push(&obj.key);
        }
    }
    let missing: Vec<u64> = (0..=TOTAL).filter(|s| !count.contains_key(s)).collect();
    let twice: Vec<(&u64, &Vec<&str>)> = count.iter().filter(|(_, keys)| keys.len() > 1).collect();
    assert!(
        missing.is_empty() && twice.is_empty(),
        "after kill -9 and restart: {} of {TOTAL} observations missing (first: {:?}), {} stored \
         more than once (first: {:#?}); {} objects, {} records",
        missing.len(),
        &missing[..missing.len().min(20)],
        twice.len(),
        &twice[..twice.len().min(10)],
        fresh.seen.len(),
        fresh.records()
    );
    for obj in fresh.seen.values() {
        assert!(
            obj.bytes.len() <= 1_048_576,
            "{} is over max_bytes",
            obj.key
        );
        let first_ts = obj.records[0]["timestamp"].as_u64().unwrap();
        check_key(&obj.key, "", first_ts, false);
    }
    // Every spool file, those the crash left included, is gone once its object is stored.
    let mut second = second;
    let status = second.stop().await.unwrap();
    assert!(
        status.success(),
        "second run exited with {status} after SIGTERM"
    );
    let left = batch_files(&spool.path().join("spool"));
    assert!(
        left.is_empty(),
        "spool files left after all was stored: {left:?}"
    );
    drop(first);
}

// ---------------------------------------------------------------------------------------------
// The store goes away

#[tokio::test]
async fn s3_down_loses_nothing_and_backpressure_shows_in_readyz() {
    let broker = Mosquitto::start();
    let mut weed = Weed::start().await;
    weed.create_bucket(BUCKET).await;
    // A small spool limit, so that the outage fills it: intake stops and /readyz says why.
    let objects = s3_objects(
        &weed,
        BUCKET,
        "max_bytes = 16384\nmax_age_secs = 1\nspool_max_bytes = 65536",
    );
    let svc = start(&config(
        &broker,
        &format!("ingest-down-{}", unique_suffix()),
        "",
        &objects,
        "",
    ))
    .await;
    let since = now_ms();
    let mut ledger = Ledger::default();
    ledger.publish(&broker, SUB1_THING, Some(SUB1_PATH), 0..100, padded);
    let mut stored = Objects::new(BUCKET, "");
    stored.wait_records(&weed, 100, WAIT).await;

    weed.kill();
    let down = Instant::now();
    // About 180 KB of records: more than the spool may hold.
    ledger.publish(&broker, SUB1_THING, Some(SUB1_PATH), 100..1600, padded);
    let why = wait_readyz(&svc, 503, Duration::from_secs(25)).await;
    assert!(
        why.contains("spool"),
        "/readyz is 503 but does not name the spool: {why}"
    );
    assert_eq!(metric(&svc, "ccstream_spool_backpressure").await, 1.0);
    // The outage goes on, backpressured, across several failed stores (each retried with a
    // longer wait), before S3 comes back.
    let retries = metric(&svc, "ccstream_objects_store_retries_total").await;
    wait_metric(
        &svc,
        "ccstream_objects_store_retries_total",
        retries + 3.0,
        WAIT,
    )
    .await;
    assert_eq!(metric(&svc, "ccstream_spool_backpressure").await, 1.0);
    let taken = metric(&svc, RECORDS_OBSERVATIONS).await;
    assert!(
        taken < 1600.0,
        "ccstream took (acked) all {taken} observations while its spool was over \
         spool_max_bytes"
    );
    assert!(
        metric(&svc, "ccstream_objects_store_retries_total").await > 0.0,
        "no store was retried during the outage"
    );
    eprintln!(
        "S3 down for {:?}; ccstream took {taken} of 1600 observations",
        down.elapsed()
    );

    weed.start_again().await;
    stored
        .wait_records(&weed, 1600, Duration::from_secs(120))
        .await;
    wait_readyz(&svc, 200, WAIT).await;
    // A last observation: once it is stored and the spool is empty, no late copy can follow.
    ledger.publish(&broker, SUB1_THING, Some(SUB1_PATH), [1600], padded);
    stored.wait_records(&weed, 1601, WAIT).await;
    wait_spool_empty(&svc).await;
    let mut fresh = Objects::new(BUCKET, "");
    fresh.refresh(&weed).await.unwrap();
    let mut seqs = Vec::new();
    for obj in fresh.in_order() {
        seqs.extend(check_records(obj, &ledger, "", since));
    }
    seqs.sort_unstable();
    let mut dups = seqs.clone();
    dups.dedup();
    assert_eq!(
        dups.len(),
        seqs.len(),
        "records stored more than once after the outage"
    );
    assert_eq!(
        seqs,
        (0..=1600).collect::<Vec<_>>(),
        "records lost in the outage"
    );
    // Last: keys carry the time of the batch's first record, also for a record that waited
    // for the spool to drain.
    for obj in fresh.in_order() {
        check_object_key(obj, &ledger, "");
    }
}

// ---------------------------------------------------------------------------------------------
// OpenSearch: indexing and ObservationLambda FIND

fn token(role: &str, domain: &str) -> String {
    jwt::hs256(&jwt::claims("someone", role, domain), SECRET)
}

/// A FIND query that passes the spec's checks.
fn valid_query() -> Value {
    json!({
        "size": 0,
        "query": {"bool": {"must": [
            {"range": {"timestamp": {"gte": 1_460_661_813_164_u64, "lte": 1_460_705_013_163_u64}}},
            {"term": {"thingName": "thing-101"}}
        ]}},
        "aggs": {"hist": {"date_histogram": {"field": "timestamp", "interval": "30m"}}}
    })
}

/// [`valid_query`] as OpenSearch 2.x gets it: the Elasticsearch 2.x `interval` of its
/// histogram becomes `fixed_interval`.
fn valid_query_translated() -> Value {
    let mut q = valid_query();
    q["aggs"]["hist"]["date_histogram"] = json!({"field": "timestamp", "fixed_interval": "30m"});
    q
}

/// Whether `needle` occurs anywhere in `hay` (as a value of some key or array element).
fn contains(hay: &Value, needle: &Value) -> bool {
    hay == needle
        || match hay {
            Value::Object(m) => m.values().any(|v| contains(v, needle)),
            Value::Array(a) => a.iter().any(|v| contains(v, needle)),
            _ => false,
        }
}

#[tokio::test]
async fn find_checks_the_query_and_restricts_it_to_the_callers_domains() {
    let broker = Mosquitto::start();
    let search = StandIn::start();
    let svc = start(&config(
        &broker,
        &format!("ingest-find-{}", unique_suffix()),
        &format!("auth = \"jwt\"\n[api.jwt]\nhs256_secret = \"{SECRET}\""),
        "sink = \"none\"",
        &format!("[search]\nurl = \"{}\"\n", search.url()),
    ))
    .await;
    let sub1 = token("Read", "sub1");
    let root = token("Read", "root");

    // Refused before any search (spec 5.1.1).
    let cases: Vec<(&str, Value, &str)> = vec![
        ("no query", json!({"action": "FIND"}), "PROPERTY_REQUIRED"),
        (
            "no range",
            json!({"action": "FIND", "query": {"query": {"term": {"thingName": "thing-101"}}}}),
            "INVALID_ARGUMENTS",
        ),
        (
            "range without gte",
            json!({"action": "FIND", "query": {"query": {"range": {"timestamp": {"lte": 5}}}}}),
            "INVALID_ARGUMENTS",
        ),
        (
            "gte on another field",
            json!({"action": "FIND", "query": {"query": {"range": {"temp": {"gte": 5}}}}}),
            "INVALID_ARGUMENTS",
        ),
        (
            "range only under should",
            json!({"action": "FIND", "query": {"query": {"bool": {"should": [
                {"range": {"timestamp": {"gte": 5}}}
            ]}}}}),
            "INVALID_ARGUMENTS",
        ),
        (
            "global aggregation",
            {
                let mut q = valid_query();
                q["aggs"]["everything"] =
                    json!({"global": {}, "aggs": {"n": {"value_count": {"field": "timestamp"}}}});
                json!({"action": "FIND", "query": q})
            },
            "INVALID_ARGUMENTS",
        ),
        (
            "nested global aggregation",
            {
                let mut q = valid_query();
                q["aggs"]["hist"]["aggs"] = json!({"all": {"global": {}}});
                json!({"action": "FIND", "query": q})
            },
            "INVALID_ARGUMENTS",
        ),
        (
            "script field",
            {
                let mut q = valid_query();
                q["script_fields"] = json!({"x": {"script": {"source": "doc['temp'].value * 2"}}});
                json!({"action": "FIND", "query": q})
            },
            "INVALID_ARGUMENTS",
        ),
        (
            "script query",
            {
                let mut q = valid_query();
                q["query"]["bool"]["filter"] = json!([{"script": {"script": {"source": "true"}}}]);
                json!({"action": "FIND", "query": q})
            },
            "INVALID_ARGUMENTS",
        ),
    ];
    for (what, payload, key) in &cases {
        let resp = svc.invoke(OBSERVATION, payload.clone(), Some(&sub1)).await;
        let err = resp.function_error();
        assert_eq!(err["messageKey"], *key, "{what}: {err}");
        assert_eq!(err["property"], "query", "{what}: {err}");
    }
    assert!(
        search.seen().iter().all(|s| !s.path.ends_with("/_search")),
        "a refused query reached OpenSearch"
    );

    // A caller of sub1: its query runs within root/sub1 and what is under it.
    let resp = svc
        .invoke(
            OBSERVATION,
            json!({"action": "FIND", "query": valid_query()}),
            Some(&sub1),
        )
        .await;
    assert_eq!(
        resp.ok(),
        &canned_search(),
        "OpenSearch's output is returned as it is"
    );
    let searches: Vec<_> = search
        .seen()
        .into_iter()
        .filter(|s| s.path.ends_with("/_search"))
        .collect();
    assert_eq!(searches.len(), 1);
    assert_eq!(searches[0].method, "POST");
    assert_eq!(searches[0].path, "/observations/_search");
    let body = searches[0].json();
    let mut rest = body.clone();
    rest.as_object_mut().unwrap().remove("query");
    let mut want_rest = valid_query_translated();
    want_rest.as_object_mut().unwrap().remove("query");
    assert_eq!(
        rest, want_rest,
        "only the query and the dialect are changed: {body}"
    );
    let filter = &body["query"]["bool"]["filter"];
    assert!(
        contains(filter, &json!({"term": {"domain": SUB1_PATH}}))
            && contains(
                filter,
                &json!({"prefix": {"domain": format!("{SUB1_PATH}/")}})
            ),
        "the query is not restricted to root/sub1 and below with a bool filter: {body}"
    );
    assert!(
        contains(&body["query"], &valid_query()["query"]),
        "the caller's query is not kept: {body}"
    );

    // A caller of sub2 (under sub1): its own path.
    let sub2 = token("Read", "sub2");
    svc.invoke(
        OBSERVATION,
        json!({"action": "FIND", "query": valid_query()}),
        Some(&sub2),
    )
    .await
    .ok();
    let last = search.seen().last().unwrap().json();
    assert!(
        contains(
            &last["query"]["bool"]["filter"],
            &json!({"term": {"domain": SUB2_PATH}})
        ),
        "sub2 caller: {last}"
    );
    assert!(
        !contains(&last, &json!({"term": {"domain": SUB1_PATH}})),
        "a sub2 caller must not see sub1: {last}"
    );

    // A root caller sees everything: the query goes as it is.
    svc.invoke(
        OBSERVATION,
        json!({"action": "FIND", "query": valid_query()}),
        Some(&root),
    )
    .await
    .ok();
    assert_eq!(
        search.seen().last().unwrap().json(),
        valid_query_translated(),
        "root caller"
    );

    // Spec 5.1's own example (Elasticsearch 2.x: pre_zone, pre_zone_adjust_large_interval,
    // trackScores) reaches OpenSearch in its dialect.
    let spec_example = json!({
        "size": 0,
        "trackScores": false,
        "query": valid_query()["query"],
        "aggs": {"hist": {"date_histogram": {
            "field": "timestamp", "interval": "30m", "pre_zone": "+01:00",
            "pre_zone_adjust_large_interval": true, "min_doc_count": 1
        }}}
    });
    svc.invoke(
        OBSERVATION,
        json!({"action": "FIND", "query": spec_example}),
        Some(&sub1),
    )
    .await
    .ok();
    let sent = search.seen().last().unwrap().json();
    assert_eq!(
        sent["aggs"]["hist"]["date_histogram"],
        json!({"field": "timestamp", "fixed_interval": "30m", "time_zone": "+01:00",
               "min_doc_count": 1}),
        "{sent}"
    );
    assert_eq!(sent["track_scores"], false, "{sent}");

    // The spec's way to search one domain: a terms lookup into `domains`, for a domain in the
    // caller's subtree; a sibling's is refused before any search.
    let lookup = |domain: &str| {
        let mut q = valid_query();
        q["query"]["bool"]["must"][1] = json!({"terms": {"thingName": {
            "index": "domains", "type": "thing_mapping", "id": domain, "path": "thingNames"}}});
        json!({"action": "FIND", "query": q})
    };
    svc.invoke(OBSERVATION, lookup("sub2"), Some(&sub1))
        .await
        .ok();
    let sent = search.seen().last().unwrap().json();
    assert!(
        contains(
            &sent["query"],
            &json!({"prefix": {"domain": format!("{SUB2_PATH}/")}})
        ),
        "{sent}"
    );
    let searches = search.seen().len();
    let err = svc
        .invoke(OBSERVATION, lookup("other"), Some(&sub1))
        .await
        .function_error();
    assert_eq!(err["messageKey"], "NOT_AUTHORIZED_DOMAIN", "{err}");
    assert_eq!(
        search.seen().len(),
        searches,
        "a refused lookup reached OpenSearch"
    );

    // Names that contain ObservationLambda are the same function.
    svc.invoke(
        "dev-ObservationLambda-1A2B",
        json!({"action": "FIND", "query": valid_query()}),
        Some(&root),
    )
    .await
    .ok();
}

#[tokio::test]
async fn find_without_search_url_is_not_found() {
    let broker = Mosquitto::start();
    let svc = start(&config(
        &broker,
        &format!("ingest-nofind-{}", unique_suffix()),
        "",
        "sink = \"none\"",
        "",
    ))
    .await;
    svc.invoke(
        OBSERVATION,
        json!({"action": "FIND", "query": valid_query()}),
        None,
    )
    .await
    .expect_protocol_error(404, "ResourceNotFoundException");
}

#[tokio::test]
async fn observations_are_indexed_in_daily_indices() {
    let broker = Mosquitto::start();
    let search = StandIn::start();
    let svc = start(&config(
        &broker,
        &format!("ingest-index-{}", unique_suffix()),
        "",
        "sink = \"none\"",
        &format!(
            "[search]\nurl = \"{}\"\nflush_interval_ms = 200\n",
            search.url()
        ),
    ))
    .await;
    let template = search
        .wait_until("the index template", |seen| {
            seen.iter()
                .any(|s| s.method == "PUT" && s.path.starts_with("/_index_template/"))
        })
        .await
        .into_iter()
        .find(|s| s.method == "PUT" && s.path.starts_with("/_index_template/"))
        .unwrap();
    let t = template.json();
    assert_eq!(t["index_patterns"], json!(["observations-*"]), "{t}");
    let props = &t["template"]["mappings"]["properties"];
    assert_eq!(props["thingName"]["type"], "keyword", "{t}");
    assert_eq!(props["timestamp"]["type"], "date", "{t}");
    assert_eq!(props["domain"]["type"], "keyword", "{t}");

    let since = now_ms();
    let mut ledger = Ledger::default();
    ledger.publish(&broker, SUB1_THING, Some(SUB1_PATH), 0..3, padded);
    ledger.publish(&broker, STRANGER, None, [3], |_| "\"temp\":7".into());
    // Records with their own timestamps go to that day's index: a shadow update, and an object
    // that is not one (stored and indexed all the same).
    ledger.publish(&broker, SUB2_THING, Some(SUB2_PATH), [4], |_| {
        "\"state\":{\"reported\":{\"temp\":8}},\"timestamp\":1464081794634".into()
    });
    ledger.publish(&broker, SUB2_THING, Some(SUB2_PATH), [5], |_| {
        "\"timestamp\":1464081794634,\"temp\":9".into()
    });
    // Not an object: an error record, never indexed.
    broker.publish(&shadow_topic(SUB1_THING), b"[1,2]");

    let seen = search
        .wait_until("6 indexed records", |seen| {
            seen.iter()
                .filter(|s| s.is_bulk())
                .map(|s| s.bulk_pairs().len())
                .sum::<usize>()
                >= 6
        })
        .await;
    let pairs: Vec<(Value, Value)> = seen
        .iter()
        .filter(|s| s.is_bulk())
        .flat_map(|s| s.bulk_pairs())
        .collect();
    assert_eq!(pairs.len(), 6, "{pairs:#?}");
    for (action, record) in &pairs {
        let seq = record["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("indexed a record without seq: {record}"));
        let sent = &ledger.sent[&seq];
        let ts = record["timestamp"].as_u64().unwrap();
        let spliced = if sent.own_timestamp {
            None
        } else {
            assert!(ts >= since && ts <= now_ms(), "timestamp of {record}");
            Some(ts)
        };
        let want: Value = serde_json::from_str(&expected_record(
            &sent.thing,
            spliced,
            sent.domain,
            &sent.payload,
        ))
        .unwrap();
        assert_eq!(record, &want, "indexed record {seq}");
        assert_eq!(
            action["index"]["_index"],
            format!("observations-{}", utc_day(ts)),
            "index of record {seq}: {action}"
        );
    }
    assert!(pairs
        .iter()
        .any(|(a, _)| a["index"]["_index"] == "observations-2016.05.24"));
    drop(svc);
}

// ---------------------------------------------------------------------------------------------
// ccstream reindex

/// The document `_id` ccstream gives a record: the first 128 bits of its SHA-256, in hex.
fn document_id(record: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(record)[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// (`_id`, record bytes) of every item of the stand-in's bulk requests so far.
fn bulk_items(search: &StandIn) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for seen in search.bulks() {
        let lines: Vec<&[u8]> = seen
            .body
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        for pair in lines.chunks(2) {
            let action: Value = serde_json::from_slice(pair[0]).unwrap();
            let id = action["index"]["_id"].as_str().unwrap().to_owned();
            out.push((id, pair[1].to_vec()));
        }
    }
    out
}

/// The service's configuration with `search.url` set: what the reindex runs with.
fn reindex_config(broker: &Mosquitto, client_id: &str, objects: &str, search: &StandIn) -> String {
    config(
        broker,
        &format!("{client_id}-reindex"),
        "",
        objects,
        &format!("[search]\nurl = \"{}\"\n", search.url()),
    )
    .replace(LISTEN, "127.0.0.1:0")
}

/// Runs `ccstream --config <config> reindex <args>` to its end; its stdout as JSON.
fn reindex(dir: &Path, config: &str, args: &[&str]) -> Value {
    let path = dir.join("reindex.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(common::binary())
        .arg("--config")
        .arg(&path)
        .arg("reindex")
        .args(args)
        .envs(AWS_ENV.iter().copied())
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reindex failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_fills_exactly_the_gap_from_the_stored_objects() {
    const PREFIX: &str = "raw/";
    let broker = Mosquitto::start();
    let weed = Weed::start().await;
    weed.create_bucket(BUCKET).await;
    let search = StandIn::start();
    let objects = s3_objects(
        &weed,
        BUCKET,
        &format!("max_age_secs = 1\nprefix = \"{PREFIX}\""),
    );
    // The service indexes nothing (no search.url): the whole history is a gap in the index.
    let client_id = format!("ingest-reindex-{}", unique_suffix());
    let _svc = start(&config(&broker, &client_id, "", &objects, "")).await;
    let mut ledger = Ledger::default();
    ledger.publish(&broker, SUB1_THING, Some(SUB1_PATH), 0..3, padded);
    let mut stored = Objects::new(BUCKET, PREFIX);
    stored.wait_records(&weed, 3, WAIT).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let boundary = now_ms();
    ledger.publish(&broker, SUB2_THING, Some(SUB2_PATH), 3..7, padded);
    broker.publish(&shadow_topic(SUB1_THING), b"[1,2]"); // an error record: never indexed
    stored.wait_records(&weed, 8, WAIT).await;

    // Every stored observation's document id, and which are at or after the boundary.
    let mut all_ids = Vec::new();
    let mut late_ids = Vec::new();
    let errors = format!("{PREFIX}errors/");
    for obj in stored.seen.values().filter(|o| !o.key.starts_with(&errors)) {
        for (i, record) in obj.records.iter().enumerate() {
            let id = document_id(obj.record_bytes(i));
            if record["timestamp"].as_u64().unwrap() >= boundary {
                late_ids.push(id.clone());
            }
            all_ids.push(id);
        }
    }
    all_ids.sort();
    late_ids.sort();
    assert_eq!((all_ids.len(), late_ids.len()), (7, 4));

    let dir = TempDir::new().unwrap();
    let with_search = reindex_config(&broker, &client_id, &objects, &search);
    let since = sinks::utc::rfc3339(boundary);
    let report = reindex(
        dir.path(),
        &with_search,
        &["--since", &since, "--rate", "0"],
    );
    assert_eq!(report["records"], 4, "{report}");
    assert_eq!(report["indexed"], 4, "{report}");
    let items = bulk_items(&search);
    for (id, record) in &items {
        assert_eq!(id, &document_id(record), "the _id is the record's hash");
    }
    let mut ids: Vec<String> = items.iter().map(|(id, _)| id.clone()).collect();
    ids.sort();
    assert_eq!(
        ids, late_ids,
        "exactly the records since the boundary, as stored"
    );

    // The whole history again: the 4 come back under the same ids (overwritten, not doubled).
    let report = reindex(dir.path(), &with_search, &["--rate", "0"]);
    assert_eq!(report["indexed"], 7, "{report}");
    let mut ids: Vec<String> = bulk_items(&search).into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), 11);
    ids.sort();
    ids.dedup();
    assert_eq!(ids, all_ids, "7 documents in all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_reads_the_local_sink_with_gzip_and_newlines_under_the_live_ids() {
    let broker = Mosquitto::start();
    let search = StandIn::start();
    let dir = TempDir::new().unwrap();
    let objects_dir = dir.path().join("objects");
    let objects = format!(
        "sink = \"local\"\ndir = \"{}\"\nmax_age_secs = 1\ncompression = \"gzip\"\n\
         delimiter = \"newline\"",
        objects_dir.display()
    );
    let client_id = format!("ingest-reindex-local-{}", unique_suffix());
    // The service indexes live into `live`; the reindex goes to `search`.
    let live = StandIn::start();
    let svc = start(&config(
        &broker,
        &client_id,
        "",
        &objects,
        &format!(
            "[search]\nurl = \"{}\"\nflush_interval_ms = 100\n",
            live.url()
        ),
    ))
    .await;
    let mut ledger = Ledger::default();
    ledger.publish(&broker, SUB1_THING, Some(SUB1_PATH), 0..5, padded);
    wait_metric(&svc, RECORDS_OBSERVATIONS, 5.0, WAIT).await;
    wait_spool_empty(&svc).await;
    assert!(!files_under(&objects_dir).is_empty());
    let with_search = reindex_config(&broker, &client_id, &objects, &search);
    let report = reindex(dir.path(), &with_search, &["--rate", "0"]);
    assert_eq!(report["indexed"], 5, "{report}");
    let items = bulk_items(&search);
    let mut seqs: Vec<u64> = items
        .iter()
        .map(|(id, record)| {
            assert_eq!(id, &document_id(record));
            serde_json::from_slice::<Value>(record).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, [0, 1, 2, 3, 4]);
    // The same documents as the service indexed them live.
    live.wait_until("5 records indexed live", |seen| {
        seen.iter()
            .filter(|s| s.is_bulk())
            .map(|s| s.bulk_pairs().len())
            .sum::<usize>()
            >= 5
    })
    .await;
    let ids = |s: &StandIn| {
        let mut ids: Vec<String> = bulk_items(s).into_iter().map(|(id, _)| id).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&search), ids(&live));
}

// ---------------------------------------------------------------------------------------------
// The index follows the spool (OpenSearch stand-in: OpenSearch cannot be installed here)

/// The things the outage tests publish as, with their domain paths.
const OUTAGE_THINGS: [&str; 4] = ["thing-001", SUB1_THING, SUB2_THING, STRANGER];

/// `[objects]` lines for the local sink in `dir`, newline-delimited (to read back line by line).
fn local_objects(dir: &Path, extra: &str) -> String {
    format!(
        "sink = \"local\"\ndir = \"{}\"\ndelimiter = \"newline\"\nspool_dir = \"{}\"\n{extra}",
        dir.join("objects").display(),
        dir.join("spool").display()
    )
}

/// `[search]` against `search`: quick flushes, retries at most 1 s apart.
fn follow_search(search: &StandIn, extra: &str) -> String {
    format!(
        "[search]\nurl = \"{}\"\nflush_interval_ms = 100\nbackoff_initial_ms = 100\n\
         backoff_max_ms = 1000\n{extra}",
        search.url()
    )
}

/// Every observation record stored in the local sink under `dir`: `_id` → (thing, seq).
fn stored_observations(dir: &Path) -> BTreeMap<String, (String, u64)> {
    let objects = dir.join("objects");
    let mut out = BTreeMap::new();
    for path in files_under(&objects) {
        if path.strip_prefix(&objects).unwrap().starts_with("errors") {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let record: Value = serde_json::from_slice(line).unwrap();
            let thing = record["thingName"].as_str().unwrap().to_owned();
            let seq = record["seq"].as_u64().unwrap();
            let before = out.insert(document_id(line), (thing, seq));
            assert!(before.is_none(), "a record stored twice: {record}");
        }
    }
    out
}

/// Mosquitto publishers for [`OUTAGE_THINGS`], `per_thing` observations each with unique
/// `seq`s, `chunk` lines every `pause`.
fn outage_publishers(
    broker: &Mosquitto,
    per_thing: u64,
    chunk: usize,
    pause: Duration,
) -> Vec<Publisher> {
    OUTAGE_THINGS
        .iter()
        .enumerate()
        .map(|(t, thing)| {
            let first = t as u64 * per_thing;
            let lines = (first..first + per_thing)
                .map(|seq| {
                    format!(
                        "{{\"seq\":{seq},\"state\":{{\"reported\":{{\"temp\":{}}}}}}}",
                        seq % 97
                    )
                })
                .collect();
            Publisher::spawn(broker.port(), thing, lines, chunk, pause)
        })
        .collect()
}

/// Waits until the stand-in holds a document for every id of `stored`, and the service says
/// it is caught up; returns how long that took.
async fn wait_indexed(
    svc: &Ccstream,
    search: &StandIn,
    stored: &BTreeMap<String, (String, u64)>,
    timeout: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let written: std::collections::HashSet<String> =
            search.writes().into_iter().map(|(id, _)| id).collect();
        let missing = stored.keys().filter(|id| !written.contains(*id)).count();
        if missing == 0 && metric(svc, "ccstream_search_records_behind").await == 0.0 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "{missing} of {} stored observations not indexed after {timeout:?}",
            stored.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The index holds exactly the stored observations: one document per stored record, under
/// the `_id` of its bytes as stored, nothing else. Returns the writes in order.
fn check_index_is_the_store(
    search: &StandIn,
    stored: &BTreeMap<String, (String, u64)>,
) -> Vec<(String, Value)> {
    let writes = search.writes();
    let mut documents: BTreeMap<String, Value> = BTreeMap::new();
    for (id, source) in &writes {
        let (thing, seq) = stored
            .get(id)
            .unwrap_or_else(|| panic!("document {id} is no stored record: {source}"));
        assert_eq!(
            (
                source["thingName"].as_str().unwrap(),
                source["seq"].as_u64().unwrap()
            ),
            (thing.as_str(), *seq),
            "document {id} holds another record than the one stored under that hash"
        );
        documents.insert(id.clone(), source.clone());
    }
    let ids: Vec<&String> = documents.keys().collect();
    let want: Vec<&String> = stored.keys().collect();
    assert_eq!(ids.len(), want.len(), "documents vs stored observations");
    assert_eq!(ids, want, "the index holds exactly the stored observations");
    writes
}

/// Per thing, the first writes of its documents come in `seq` (publish and time) order.
fn check_order_per_thing(writes: &[(String, Value)]) {
    let mut seen = std::collections::HashSet::new();
    let mut last: HashMap<String, u64> = HashMap::new();
    for (id, source) in writes {
        if !seen.insert(id.clone()) {
            continue;
        }
        let thing = source["thingName"].as_str().unwrap().to_owned();
        let seq = source["seq"].as_u64().unwrap();
        if let Some(before) = last.insert(thing.clone(), seq) {
            assert!(before < seq, "{thing}: seq {seq} indexed after {before}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opensearch_outage_of_60_s_under_load_is_caught_up_exactly_once_in_order() {
    const PER_THING: u64 = 6_000;
    let broker = Mosquitto::start();
    let search = StandIn::start();
    let dir = TempDir::new().unwrap();
    let conf = config(
        &broker,
        &format!("ingest-outage-{}", unique_suffix()),
        "",
        &local_objects(dir.path(), "max_age_secs = 2\nmax_bytes = 262144"),
        &follow_search(&search, "queue_capacity = 1000"),
    );
    let svc = start(&conf).await;
    // About 300 observations/s in all for 80 s: before, during and after the outage.
    let mut publishers = outage_publishers(&broker, PER_THING, 15, Duration::from_millis(200));
    wait_metric(&svc, "ccstream_search_indexed_total", 500.0, WAIT).await;

    search.bulk_fallback(BulkReply::Status(503));
    let down_at = metric(&svc, RECORDS_OBSERVATIONS).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let during = metric(&svc, RECORDS_OBSERVATIONS).await - down_at;
    let behind = metric(&svc, "ccstream_search_records_behind").await;
    let lag = metric(&svc, "ccstream_search_lag_seconds").await;
    let kept = files_under(&dir.path().join("spool"))
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "stored"))
        .count();
    eprintln!("outage: {during} observations taken, {behind} behind, lag {lag} s, {kept} stored files kept for the index");
    assert!(
        during > 10_000.0,
        "ingest went on during the outage: {during}"
    );
    // The gauge is refreshed every second: up to a second of records (about 300) later.
    assert!(
        behind >= during - 600.0,
        "{behind} behind, {during} taken during the outage"
    );
    assert!(lag >= 55.0, "lag {lag} s after 60 s down");
    assert!(kept > 0, "stored batches wait in the spool for the index");
    let (status, _) = svc.get("/readyz").await;
    assert_eq!(status, 200, "the index is not on the ingest path");

    search.clear_bulk_fallback();
    let up = Instant::now();
    // Caught up with the live stream: no more behind than a second of it (the gauge's period).
    loop {
        let now_behind = metric(&svc, "ccstream_search_records_behind").await;
        if now_behind < 600.0 {
            break;
        }
        assert!(
            up.elapsed() < Duration::from_secs(30),
            "still {now_behind} behind 30 s after OpenSearch came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "caught up with the live stream {:?} after OpenSearch came back ({behind} were behind)",
        up.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    for p in &mut publishers {
        p.finish(deadline).await;
    }
    wait_metric(&svc, RECORDS_OBSERVATIONS, (PER_THING * 4) as f64, WAIT).await;
    wait_spool_empty(&svc).await;
    let stored = stored_observations(dir.path());
    assert_eq!(stored.len() as u64, PER_THING * 4);
    let caught_up = wait_indexed(&svc, &search, &stored, Duration::from_secs(60)).await;
    eprintln!(
        "caught up {:?} after OpenSearch came back ({:?} after the last waits)",
        up.elapsed(),
        caught_up
    );
    let writes = check_index_is_the_store(&search, &stored);
    check_order_per_thing(&writes);
    assert_eq!(metric(&svc, "ccstream_search_gap_records_total").await, 0.0);
    assert_eq!(metric(&svc, "ccstream_search_lag_seconds").await, 0.0);
    assert!(!dir.path().join("spool/index-gaps.jsonl").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_catch_up_then_the_index_completes_without_duplicates() {
    const PER_THING: u64 = 1_500;
    let broker = Mosquitto::start();
    let search = StandIn::start();
    let dir = TempDir::new().unwrap();
    let conf = config(
        &broker,
        &format!("ingest-catchup-kill-{}", unique_suffix()),
        "",
        &local_objects(dir.path(), "max_age_secs = 1\nmax_bytes = 65536"),
        &follow_search(&search, "bulk_max_actions = 100"),
    );
    let mut svc = start(&conf).await;
    search.bulk_fallback(BulkReply::Status(503));
    let mut publishers = outage_publishers(&broker, PER_THING, 500, Duration::from_millis(50));
    let deadline = Instant::now() + Duration::from_secs(60);
    for p in &mut publishers {
        p.finish(deadline).await;
    }
    wait_metric(&svc, RECORDS_OBSERVATIONS, (PER_THING * 4) as f64, WAIT).await;
    // Every batch stored and kept for the index.
    wait_metric(
        &svc,
        "ccstream_search_records_behind",
        (PER_THING * 4) as f64,
        WAIT,
    )
    .await;
    let stored = loop {
        let stored = stored_observations(dir.path());
        if stored.len() as u64 == PER_THING * 4 {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Back, but slow: 100 documents per 250 ms, so the catch-up takes about 15 s.
    search.bulk_delay(Duration::from_millis(250));
    search.clear_bulk_fallback();
    search
        .wait_until("1,000 documents indexed", |_| {
            search.writes().len() >= 1_000
        })
        .await;
    let before_kill = search.writes().len();
    svc.crash_and_restart().await;
    wait_readyz(&svc, 200, WAIT).await;
    search.bulk_delay(Duration::ZERO);
    let took = wait_indexed(&svc, &search, &stored, Duration::from_secs(60)).await;
    let writes = check_index_is_the_store(&search, &stored);
    let again = writes.len() - stored.len();
    eprintln!(
        "killed after {before_kill} documents; the restart completed the index in {took:?}, \
         writing {again} documents a second time (same _id)"
    );
    assert!(before_kill < stored.len(), "killed during the catch-up");
    // The cursor is written every 500 ms at most, and one bulk is in flight: what the restart
    // writes again is bounded by that, not by what the index already had.
    assert!(again < 1_000, "{again} documents written again");
    assert!(!dir.path().join("spool/index-gaps.jsonl").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_spool_is_written_down_and_reindex_since_fills_the_gap() {
    const PER_THING: u64 = 1_000;
    let broker = Mosquitto::start();
    let search = StandIn::start();
    let dir = TempDir::new().unwrap();
    // Batches of 16 KiB, a spool of 64 KiB: the 4,000 records (~90 bytes each) do not fit.
    let objects = local_objects(
        dir.path(),
        "max_age_secs = 1\nmax_bytes = 16384\nspool_max_bytes = 65536",
    );
    let client_id = format!("ingest-gap-{}", unique_suffix());
    // A small read-ahead, so that most records of a dropped file are not in memory either.
    let conf = config(
        &broker,
        &client_id,
        "",
        &objects,
        &follow_search(&search, "queue_capacity = 100"),
    );
    let svc = start(&conf).await;
    search.bulk_fallback(BulkReply::Status(503));
    let mut publishers = outage_publishers(&broker, PER_THING, 100, Duration::from_millis(100));
    let deadline = Instant::now() + Duration::from_secs(60);
    for p in &mut publishers {
        p.finish(deadline).await;
    }
    wait_metric(&svc, RECORDS_OBSERVATIONS, (PER_THING * 4) as f64, WAIT).await;
    let gap_records = wait_metric(&svc, "ccstream_search_gap_records_total", 1.0, WAIT).await;
    let (status, _) = svc.get("/readyz").await;
    assert_eq!(status, 200, "ingest never waited for the index");

    search.clear_bulk_fallback();
    wait_spool_empty(&svc).await;
    let stored = stored_observations(dir.path());
    assert_eq!(
        stored.len() as u64,
        PER_THING * 4,
        "every observation stored"
    );
    let indexed: std::collections::HashSet<String> =
        search.writes().into_iter().map(|(id, _)| id).collect();
    let gap: Vec<&String> = stored.keys().filter(|id| !indexed.contains(*id)).collect();
    // What was in the indexer's queue when its file went is indexed all the same.
    assert!(!gap.is_empty(), "the spool could not hold the outage");
    assert!(
        gap.len() as f64 <= gap_records,
        "{} missing, {gap_records} counted",
        gap.len()
    );

    // The gaps file says what is missing; reindex fills it.
    let lines: Vec<Value> = std::fs::read_to_string(dir.path().join("spool/index-gaps.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let gap_in_file: u64 = lines
        .iter()
        .map(|g| g["records"].as_u64().unwrap() - g["indexed_records"].as_u64().unwrap())
        .sum();
    assert_eq!(gap_in_file as f64, gap_records, "{lines:?}");
    let since = lines
        .iter()
        .map(|g| g["first_received_ms"].as_u64().unwrap())
        .min()
        .unwrap();
    let until = lines
        .iter()
        .map(|g| g["deleted_ms"].as_u64().unwrap())
        .max()
        .unwrap();
    let before = search.writes().len();
    let run = TempDir::new().unwrap();
    let reindex_objects = format!(
        "sink = \"local\"\ndir = \"{}\"\ndelimiter = \"newline\"\nspool_dir = \"{}\"",
        dir.path().join("objects").display(),
        run.path().join("spool").display()
    );
    let reindex_conf = config(
        &broker,
        &format!("{client_id}-reindex"),
        "",
        &reindex_objects,
        &format!("[search]\nurl = \"{}\"\n", search.url()),
    )
    .replace(LISTEN, "127.0.0.1:0");
    let report = reindex(
        run.path(),
        &reindex_conf,
        &[
            "--since",
            &sinks::utc::rfc3339(since),
            "--until",
            &sinks::utc::rfc3339(until + 1),
            "--rate",
            "0",
        ],
    );
    eprintln!(
        "{} records in {} gap files; reindex: {report}",
        gap.len(),
        lines.len()
    );
    let reindexed: std::collections::HashSet<String> = search.writes()[before..]
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    assert!(
        gap.iter().all(|id| reindexed.contains(*id)),
        "reindex filled the gap"
    );
    check_index_is_the_store(&search, &stored);
}
