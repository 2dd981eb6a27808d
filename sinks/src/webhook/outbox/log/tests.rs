use super::*;
use crate::webhook::request::WebhookBody;

fn firing(n: u32) -> StoredFiring {
    StoredFiring {
        enqueued_ms: 1_700_000_000_000 + u64::from(n),
        origin: n.is_multiple_of(2).then_some(u64::from(n) + 100),
        request: WebhookRequest {
            rule_id: format!("rule-{n}"),
            url: format!("http://127.0.0.1:9/hook/{n}"),
            method: "POST".into(),
            headers: vec![("x-token".into(), "secret".into())],
            body: WebhookBody::json(&serde_json::json!({"n": n})).expect("a JSON value serializes"),
            idempotency_key: format!("key-{n}"),
        },
    }
}

fn append(log: &mut OutboxLog, n: u32) -> Locator {
    log.roll_if_needed().expect("segment");
    log.append(&firing(n)).expect("append")
}

fn locators(found: &Recovered) -> Vec<Locator> {
    found.unfinished.iter().map(|u| u.at).collect()
}

/// The outbox's files, the journal of fired ids aside.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("stored-ids-"))
        .collect();
    names.sort();
    names
}

#[test]
fn firings_round_trip_and_come_back_until_finished() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, found) = OutboxLog::open(dir.path(), 1 << 20).expect("open");
    assert!(found.unfinished.is_empty());
    let at: Vec<Locator> = (0..5).map(|n| append(&mut log, n)).collect();
    log.commit().expect("commit");
    for (n, at) in at.iter().enumerate() {
        assert_eq!(read(dir.path(), *at).expect("read"), firing(n as u32));
    }
    assert_eq!(log.unfinished(), 5);
    log.finish(&[at[1], at[3], at[3]]).expect("finish");
    assert_eq!(log.unfinished(), 3, "finishing twice counts once");
    drop(log);

    let (log, found) = OutboxLog::open(dir.path(), 1 << 20).expect("reopen");
    assert_eq!(locators(&found), [at[0], at[2], at[4]]);
    assert_eq!(found.unfinished[1].destination, "http://127.0.0.1:9");
    assert_eq!(found.unfinished[1].enqueued_ms, firing(2).enqueued_ms);
    assert_eq!(
        found.origins,
        [100, 102, 104],
        "finished or not, from every firing kept"
    );
    assert_eq!(log.unfinished(), 3);
    assert_eq!(
        log.bytes(),
        fs::metadata(segment_path(dir.path(), at[0].segment))
            .expect("meta")
            .len()
    );
}

#[test]
fn finished_sealed_segments_are_removed_and_bytes_follow() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Small segments: each takes two firings before the next one starts.
    let one = serde_json::to_vec(&firing(0)).expect("json").len() as u64;
    let (mut log, _) = OutboxLog::open(dir.path(), 2 * one).expect("open");
    let at: Vec<Locator> = (0..6).map(|n| append(&mut log, n)).collect();
    log.commit().expect("commit");
    let segments: std::collections::BTreeSet<u64> = at.iter().map(|a| a.segment).collect();
    assert_eq!(segments.len(), 3, "{at:?}");
    let full = log.bytes();

    log.finish(&at[..2]).expect("finish");
    assert_eq!(
        files(dir.path()).len(),
        2,
        "the first segment is gone, .done included: {:?}",
        files(dir.path())
    );
    assert!(log.bytes() < full);
    // A finished open segment past a quarter of its size goes too: a small outbox frees its
    // space at once, and the next firing starts a new segment.
    log.finish(&at[2..]).expect("finish");
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
    assert_eq!((log.unfinished(), log.bytes()), (0, 0));
    let next = append(&mut log, 9);
    log.commit().expect("commit");
    assert!(next.segment > at[5].segment);
    drop(log);
    // Reopened, the unfinished one comes back, alone; the origins of the removed segments'
    // firings (even n: 100 + n) are still known.
    let (_, found) = OutboxLog::open(dir.path(), 2 * one).expect("reopen");
    assert_eq!(locators(&found), [next]);
    let mut origins = found.origins.clone();
    origins.sort_unstable();
    assert_eq!(origins, [100, 102, 104]);
}

#[test]
fn a_crash_keeps_the_committed_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = OutboxLog::open(dir.path(), 1 << 20).expect("open");
    let first = append(&mut log, 0);
    let second = append(&mut log, 1);
    log.commit().expect("commit");
    log.finish(&[first]).expect("finish");
    drop(log);
    let path = segment_path(dir.path(), first.segment);
    let data = fs::read(&path).expect("read");
    // Every torn tail of a third firing leaves the second one, unfinished; a torn index in the
    // .done file is ignored.
    let mut third = Vec::new();
    push_frame(&mut third, &serde_json::to_vec(&firing(2)).expect("json"));
    let done_path = dir
        .path()
        .join(format!("{:016x}.{DONE_EXT}", first.segment));
    for cut in 0..third.len() {
        fs::write(&path, [&data[..], &third[..cut]].concat()).expect("tear");
        fs::write(&done_path, [0u8, 0, 0, 0, 1, 0]).expect("done");
        let (_, found) = OutboxLog::open(dir.path(), 1 << 20).expect("open");
        assert_eq!(locators(&found), [second], "cut at {cut}");
    }
}

/// Zeros after the committed firings (what a crash can leave in a file's tail) are no
/// firings: read as empty frames, each came back unfinished, could never be read, and kept its
/// segment forever. Found by the `outbox_recovery` fuzz target.
#[test]
fn zeros_after_the_firings_are_not_firings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = OutboxLog::open(dir.path(), 1 << 20).expect("open");
    let first = append(&mut log, 0);
    log.commit().expect("commit");
    drop(log);
    let path = segment_path(dir.path(), first.segment);
    let data = fs::read(&path).expect("read");
    fs::write(&path, [&data[..], &[0; 4096]].concat()).expect("zeros");
    let (mut log, found) = OutboxLog::open(dir.path(), 1 << 20).expect("open");
    assert_eq!(locators(&found), [first]);
    log.finish(&[first]).expect("finish");
    assert_eq!(log.unfinished(), 0);
    assert!(
        !path.exists(),
        "a segment with nothing left to send is removed"
    );
}

#[test]
fn torn_headers_are_removed_and_unreadable_segments_moved_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(segment_path(dir.path(), 1), &MAGIC[..3]).expect("write");
    fs::write(
        segment_path(dir.path(), 2),
        [&MAGIC[..], &[9, 0, 0]].concat(),
    )
    .expect("write");
    fs::write(segment_path(dir.path(), 3), b"not an outbox segment").expect("write");
    fs::write(dir.path().join("notes.txt"), b"left alone").expect("write");
    let (mut log, found) = OutboxLog::open(dir.path(), 1 << 20).expect("open");
    assert!(found.unfinished.is_empty());
    assert_eq!(
        files(dir.path()),
        ["failed", "notes.txt"],
        "torn ones removed, the unreadable one moved"
    );
    assert!(dir
        .path()
        .join(FAILED_DIR)
        .join(format!("{:016x}.{SEGMENT_EXT}", 3))
        .exists());
    // New segments never reuse an id that was seen.
    let at = append(&mut log, 0);
    assert_eq!(at.segment, 4);
}

#[test]
fn oversized_firings_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = OutboxLog::open(dir.path(), 1 << 20).expect("open");
    log.roll_if_needed().expect("segment");
    let mut big = firing(0);
    big.request.body = WebhookBody::Text("x".repeat(MAX_ENTRY_BYTES));
    let err = log.append(&big).expect_err("too big");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(log.unfinished(), 0);
}

#[test]
fn a_done_file_left_without_its_segment_marks_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A crash between the removal of segment 1 and of its .done file.
    fs::write(
        dir.path().join(format!("{:016x}.{DONE_EXT}", 1)),
        [0u8, 0, 0, 0],
    )
    .expect("write");
    let (mut log, found) = OutboxLog::open(dir.path(), 1 << 20).expect("open");
    assert!(found.unfinished.is_empty());
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
    let first = append(&mut log, 1);
    assert_eq!(first.segment, 1, "the id is used again");
    log.commit().expect("commit");
    drop(log);
    let (_, found) = OutboxLog::open(dir.path(), 1 << 20).expect("reopen");
    assert_eq!(
        locators(&found),
        [first],
        "not marked finished by the old .done"
    );
}
