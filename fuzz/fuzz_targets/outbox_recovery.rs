//! The webhook outbox's files after crashes: firings appended, committed (alone or by a
//! segment roll), finished, then the process dies (the log is dropped: pending frames never
//! reach the disk) and the outbox is opened again, any number of times; at the end one file
//! (a segment, a `.done` file or the journal of fired ids) may be damaged as a crash or a bad
//! disk leaves it.
//!
//! After every crash: the firings that come back unfinished are exactly those committed and not
//! finished, at the place they were written, and read back as written; every committed
//! firing's origin is known (its segment keeps it, or the journal of fired ids does). With a
//! damaged segment, what comes back from it is its intact prefix, never a frame spanning the
//! damage. Opening never panics and never fails on what a file holds.
#![no_main]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use arbitrary::Arbitrary;
use ccstream_fuzz::{damaged, Damage};
use libfuzzer_sys::fuzz_target;
use sinks::webhook::destination::destination_of;
use sinks::webhook::outbox::log::{read, segment_path, DONE_EXT, SEGMENT_EXT};
use sinks::webhook::outbox::{Locator, OutboxLog, Recovered, StoredFiring, Unfinished};
use sinks::webhook::request::{WebhookBody, WebhookRequest};

#[derive(Debug, Arbitrary)]
struct Input {
    /// Segment size before a roll (small, so that firings span several segments).
    segment_bytes: u16,
    ops: Vec<Op>,
    /// Which file the damage goes to (by position among the outbox's files), and how.
    damage: Option<(u8, Vec<Damage>)>,
}

#[derive(Debug, Arbitrary)]
enum Op {
    Append {
        host: u8,
        body: String,
        json: bool,
        origin: Option<u64>,
    },
    Commit,
    /// Finishes the n-th committed firing not yet finished.
    Finish(u16),
    /// The process dies and the outbox is opened again.
    Crash,
}

/// What the test knows of a firing it appended.
struct Written {
    firing: StoredFiring,
    committed: bool,
    finished: bool,
}

fuzz_target!(|input: Input| run(input));

fn run(input: Input) {
    let dir = tempdir();
    let segment_bytes = u64::from(input.segment_bytes.max(64));
    let mut model: BTreeMap<Locator, Written> = BTreeMap::new();
    let (mut log, recovered) = OutboxLog::open(dir.path(), segment_bytes).expect("open");
    assert!(recovered.unfinished.is_empty() && recovered.origins.is_empty());
    let mut open_segment = None;
    let mut next = 0u64;

    for op in input.ops {
        match op {
            Op::Append {
                host,
                body,
                json,
                origin,
            } => {
                next += 1;
                let firing = firing(next, host, body, json, origin);
                log.roll_if_needed().expect("roll");
                let at = log.append(&firing).expect("append");
                // A new segment commits the one before it (and so every earlier firing).
                if open_segment.is_some_and(|s| s != at.segment) {
                    commit_all(&mut model);
                }
                open_segment = Some(at.segment);
                model.insert(
                    at,
                    Written {
                        firing,
                        committed: false,
                        finished: false,
                    },
                );
            }
            Op::Commit => {
                log.commit().expect("commit");
                commit_all(&mut model);
            }
            Op::Finish(n) => {
                let ready: Vec<Locator> = model
                    .iter()
                    .filter(|(_, w)| w.committed && !w.finished)
                    .map(|(at, _)| *at)
                    .collect();
                if let Some(at) = ready.get(usize::from(n) % ready.len().max(1)) {
                    log.finish(&[*at]).expect("finish");
                    if let Some(w) = model.get_mut(at) {
                        w.finished = true;
                    }
                }
            }
            Op::Crash => {
                drop(log);
                // What was not committed never reached the disk.
                model.retain(|_, w| w.committed);
                let (reopened, recovered) =
                    OutboxLog::open(dir.path(), segment_bytes).expect("reopen");
                check_exact(dir.path(), &model, &recovered);
                log = reopened;
                open_segment = None;
            }
        }
    }
    drop(log);
    model.retain(|_, w| w.committed);

    let Some((which, damage)) = input.damage else {
        let (_, recovered) = OutboxLog::open(dir.path(), segment_bytes).expect("reopen");
        check_exact(dir.path(), &model, &recovered);
        finish_everything(dir.path(), segment_bytes, &recovered);
        return;
    };
    let files = outbox_files(dir.path());
    if files.is_empty() {
        return;
    }
    let path = &files[usize::from(which) % files.len()];
    let written = fs::read(path).expect("read");
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    // A `.done` file has no checksum (a crash can only cut its tail), so it is only truncated.
    let damage: Vec<Damage> = if ext == DONE_EXT {
        damage
            .into_iter()
            .filter(|d| matches!(d, Damage::Truncate(_)))
            .collect()
    } else {
        damage
    };
    let damage = damaged(&written, &damage);
    let file = &damage.bytes;
    fs::write(path, file).expect("write damage");
    let first_damage = written
        .iter()
        .zip(file)
        .position(|(a, b)| a != b)
        .unwrap_or(written.len().min(file.len()));

    let (_, recovered) = OutboxLog::open(dir.path(), segment_bytes)
        .expect("opening an outbox with a damaged file must not fail");
    if ext == SEGMENT_EXT {
        let segment = segment_id(path);
        let (inside, outside): (Vec<_>, Vec<_>) = recovered
            .unfinished
            .iter()
            .partition(|u| Some(u.at.segment) == segment);
        let kept: BTreeMap<Locator, &Written> = model
            .iter()
            .filter(|(at, _)| Some(at.segment) != segment)
            .map(|(at, w)| (*at, w))
            .collect();
        check_unfinished(dir.path(), &kept, outside);
        for u in inside {
            let end = u.at.offset + u64::from(u.at.len);
            if end <= first_damage as u64 {
                let w = model
                    .get(&u.at)
                    .unwrap_or_else(|| panic!("{:?} before the damage was never written", u.at));
                assert!(!w.finished, "{:?} was finished", u.at);
                assert_eq!(read(dir.path(), u.at).expect("read"), w.firing);
            } else {
                // Frames that were never written by the outbox, after the file's end, or
                // completed by appended garbage: a reader cannot tell them from a write.
                assert!(
                    u.at.offset >= written.len() as u64
                        || damage.reaches_garbage(u.at.offset as usize..end as usize),
                    "{:?} spans the damage at byte {first_damage} of {} written",
                    u.at,
                    written.len()
                );
            }
        }
    } else if ext == DONE_EXT {
        // A cut `.done` file only sends finished firings again.
        let want: BTreeSet<Locator> = not_finished(model.iter()).collect();
        let got: BTreeSet<Locator> = recovered.unfinished.iter().map(|u| u.at).collect();
        assert!(got.is_superset(&want), "a cut .done file lost firings");
        for at in &got {
            assert!(model.contains_key(at), "{at:?} was never written");
        }
    } else {
        // The journal of fired ids: only origins of removed segments are at stake.
        let kept: BTreeMap<Locator, &Written> = model.iter().map(|(at, w)| (*at, w)).collect();
        check_unfinished(dir.path(), &kept, &recovered.unfinished);
    }
}

fn firing(n: u64, host: u8, body: String, json: bool, origin: Option<u64>) -> StoredFiring {
    let body = if json {
        WebhookBody::json(&serde_json::Value::String(body)).expect("a string is JSON")
    } else {
        WebhookBody::Text(body)
    };
    StoredFiring {
        enqueued_ms: 1_700_000_000_000 + n,
        origin,
        request: WebhookRequest {
            rule_id: format!("rule-{host}"),
            url: format!(
                "http://h{}.example:{}/hook",
                host % 4,
                8000 + u16::from(host % 3)
            ),
            method: "POST".to_owned(),
            headers: Vec::new(),
            body,
            idempotency_key: format!("key-{n}"),
        },
    }
}

/// Where the firings not finished are, in the order given.
fn not_finished<'a>(
    firings: impl Iterator<Item = (&'a Locator, &'a Written)> + 'a,
) -> impl Iterator<Item = Locator> + 'a {
    firings.filter(|(_, w)| !w.finished).map(|(at, _)| *at)
}

fn commit_all(model: &mut BTreeMap<Locator, Written>) {
    for w in model.values_mut() {
        w.committed = true;
    }
}

/// Without damage: exactly the committed, unfinished firings come back, and every committed
/// firing's origin is known.
fn check_exact(dir: &Path, model: &BTreeMap<Locator, Written>, recovered: &Recovered) {
    let all: BTreeMap<Locator, &Written> = model.iter().map(|(at, w)| (*at, w)).collect();
    check_unfinished(dir, &all, &recovered.unfinished);
    let origins: HashSet<u64> = recovered.origins.iter().copied().collect();
    for (at, w) in model {
        if let Some(origin) = w.firing.origin {
            assert!(
                origins.contains(&origin),
                "{at:?}: origin {origin} forgotten"
            );
        }
    }
}

fn check_unfinished<'a>(
    dir: &Path,
    model: &BTreeMap<Locator, &Written>,
    unfinished: impl IntoIterator<Item = &'a Unfinished>,
) {
    let unfinished: Vec<&Unfinished> = unfinished.into_iter().collect();
    let want: Vec<Locator> = not_finished(model.iter().map(|(at, w)| (at, *w))).collect();
    let got: Vec<Locator> = unfinished.iter().map(|u| u.at).collect();
    assert_eq!(got, want, "unfinished firings after the crash");
    for u in unfinished {
        let w = &model[&u.at];
        assert_eq!(u.destination, destination_of(&w.firing.request.url));
        assert_eq!(u.enqueued_ms, w.firing.enqueued_ms);
        assert_eq!(read(dir, u.at).expect("read back"), w.firing);
    }
}

/// The recovered firings, once finished, leave nothing to send at the next start, and no
/// segment behind once a new one takes the appends.
fn finish_everything(dir: &Path, segment_bytes: u64, recovered: &Recovered) {
    let (mut log, again) = OutboxLog::open(dir, segment_bytes).expect("reopen");
    assert_eq!(again.unfinished, recovered.unfinished);
    let done: Vec<Locator> = recovered.unfinished.iter().map(|u| u.at).collect();
    log.finish(&done).expect("finish");
    assert_eq!(log.unfinished(), 0);
    drop(log);
    let (log, last) = OutboxLog::open(dir, segment_bytes).expect("reopen");
    assert!(last.unfinished.is_empty(), "finished firings came back");
    for u in &recovered.unfinished {
        assert!(
            !segment_path(dir, u.at.segment).exists(),
            "a finished segment was kept"
        );
    }
    drop(log);
}

/// The outbox's own files (segments, `.done` files, the journal of fired ids), by name.
fn outbox_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

fn segment_id(path: &Path) -> Option<u64> {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| u64::from_str_radix(s, 16).ok())
}

/// A fresh directory in memory: the outbox `fsync`s on every commit.
fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("fuzz-outbox-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("tempdir")
}
