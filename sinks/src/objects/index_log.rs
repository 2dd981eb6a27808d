//! The spool as the search index's log (README "The index follows the spool"): which
//! observation spool files the index has yet to take, up to where, and the cursor that keeps
//! that across restarts.
//!
//! ```text
//! batcher ── committed(file, bytes, records, sealed) ──▶ IndexLog ◀── next_chunk / read_to /
//!                                                          │         indexed(id, end, n)
//! uploader ── stored(path): Delete | Keep (.spool → .stored)│         (the follower,
//!                                                          │          sinks::search::follower)
//! batcher, spool over its limit ── make_room: oldest stored-unindexed file deleted,
//!                                  its gap appended to index-gaps.jsonl
//! ```
//!
//! A file leaves the spool when it is both stored and indexed, whichever comes last. A stored
//! file the index has not finished is renamed `<id>.stored`, so that a restart indexes it
//! without storing it again (a Firehose put is not idempotent). The cursor
//! (`<spool_dir>/index.cursor`) maps each file still in the spool to the byte offset indexed so
//! far; it is written after progress, not before, so a crash replays a little, and documents
//! replayed carry the same `_id` (overwritten, not doubled).
//!
//! Only the index waits here, never ingest: past `objects.spool_max_bytes` the oldest stored
//! files the index has not finished are deleted and written down as gaps for
//! `ccstream reindex`, before intake would be held back.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use ccstream_common::time::now_ms;
use metrics::counter;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::record::RecordKind;
use super::spool::{self, HeaderProblem, SealedSpool, SpoolFile, SPOOL_EXT};
use super::state::Shared;
use super::telemetry;
use crate::frames::{files_with_ext, sync_dir};

/// Extension of a spool file that is stored but not yet indexed.
pub const STORED_EXT: &str = "stored";
/// The cursor: `{"version":1,"files":{"<id>":{"offset":N,"records":N}}}`.
pub const CURSOR_FILE: &str = "index.cursor";
/// One JSON line per spool file deleted before the index took all of it.
pub const GAPS_FILE: &str = "index-gaps.jsonl";
const CURSOR_VERSION: u32 = 1;
/// Commit times are remembered at most this often per file (the lag gauge's resolution).
const MARK_EVERY_MS: u64 = 250;

/// Where the index stands in one spool file, as the cursor keeps it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCursor {
    /// Bytes of the file indexed (0: nothing yet, not even the header read).
    pub offset: u64,
    /// Records indexed.
    pub records: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CursorFile {
    version: u32,
    files: HashMap<String, FileCursor>,
}

/// A spool file deleted before the index took all of it: what `ccstream reindex` needs to fill
/// the gap (one line of `index-gaps.jsonl`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// The object key the batch was stored under (with the S3 or local sink, `reindex --prefix`
    /// with this key reads exactly it).
    pub key: String,
    /// When its first record was received, ms since the epoch.
    pub first_received_ms: u64,
    /// When it was deleted: every record in it was received before.
    pub deleted_ms: u64,
    /// Records in the file, and how many of them the index had taken.
    pub records: u64,
    /// Records of the file the index had taken.
    pub indexed_records: u64,
    /// Why: `spool_full` or `index_off`.
    pub reason: String,
}

#[derive(Debug)]
struct Entry {
    id: String,
    key: String,
    created_ms: u64,
    version: u32,
    /// Durable bytes (the whole file once sealed).
    committed: u64,
    /// Records in the durable bytes.
    records: u64,
    sealed: bool,
    stored: bool,
    /// Bytes handed to the indexer (at or past `indexed`).
    read: u64,
    indexed: u64,
    indexed_records: u64,
    /// (end offset, commit time ms) of commits not yet indexed, at most one per
    /// [`MARK_EVERY_MS`].
    marks: VecDeque<(u64, u64)>,
}

impl Entry {
    fn fully_indexed(&self) -> bool {
        self.sealed && self.indexed >= self.committed
    }

    /// What the index has not taken of this file, written down now for `reason`.
    fn gap(&self, reason: &str) -> Gap {
        Gap {
            key: self.key.clone(),
            first_received_ms: self.created_ms,
            deleted_ms: now_ms(),
            records: self.records,
            indexed_records: self.indexed_records,
            reason: reason.into(),
        }
    }
}

/// A range of a spool file to index: frames from `from` (0: the file's start, header first) to
/// `to`, in format `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The file's id (its name without extension).
    pub id: String,
    /// Start offset.
    pub from: u64,
    /// End offset (durable).
    pub to: u64,
    /// Format version of its frames.
    pub version: u32,
    /// When its first record was received (ms): the timestamp of a record without its own.
    pub created_ms: u64,
}

/// The records [`IndexLog::read_chunk`] read.
#[derive(Debug, Clone, Default)]
pub struct ChunkData {
    /// The records, in order.
    pub records: Vec<Bytes>,
    /// Where the last of them ends in the file.
    pub end: u64,
    /// Durable bytes past `end` cannot be read as frames (the disk damaged them).
    pub damaged: bool,
}

/// Records and time the index is behind by.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Behind {
    /// Records committed to the spool and not yet indexed.
    pub records: u64,
    /// Now minus the commit time of the oldest record not yet indexed; 0 when none waits.
    pub lag_secs: f64,
}

/// What the uploader does with a spool file it stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStore {
    /// Indexed too (or not followed): delete it.
    Delete,
    /// The index still needs it: keep it, renamed `<id>.stored`.
    Keep,
}

/// See the module documentation. Shared by the batcher thread, the uploader and the follower.
#[derive(Debug)]
pub struct IndexLog {
    dir: PathBuf,
    shared: Arc<Shared>,
    state: Mutex<VecDeque<Entry>>,
    wake: tokio::sync::Notify,
}

fn file_id(path: &Path) -> Option<&str> {
    path.file_stem().and_then(|s| s.to_str())
}

impl IndexLog {
    /// Opens the log of `dir`: the recovered observation spool files (`recovered`, oldest
    /// first) and the `.stored` files of an earlier run, with the cursor's offsets. Stored files
    /// the cursor says are indexed are deleted.
    pub(crate) fn open(
        dir: &Path,
        shared: Arc<Shared>,
        recovered: &[SealedSpool],
    ) -> io::Result<Self> {
        let cursor = load_cursor(dir);
        let mut entries: Vec<Entry> = Vec::new();
        for sealed in recovered {
            if sealed.header.kind != RecordKind::Observations {
                continue;
            }
            if let Some(id) = file_id(&sealed.path) {
                entries.push(entry_of(
                    id,
                    &sealed.header,
                    sealed.file_bytes,
                    sealed.records as u64,
                    false,
                    cursor.get(id),
                ));
            }
        }
        for path in files_with_ext(dir, STORED_EXT)? {
            let Some(id) = file_id(&path) else { continue };
            let data = fs::read(&path)?;
            let decoded = spool::decode(&data);
            match decoded.header {
                Ok(header) => {
                    shared.add_spool(decoded.valid_len as u64, 1);
                    entries.push(entry_of(
                        id,
                        &header,
                        decoded.valid_len as u64,
                        decoded.records.len() as u64,
                        true,
                        cursor.get(id),
                    ));
                }
                Err(HeaderProblem::Torn | HeaderProblem::Corrupt(_)) => {
                    let to = spool::move_to_failed(&path)?;
                    warn!(path = %path.display(), moved_to = %to.display(), "stored spool file unreadable; moved aside (its object is stored)");
                }
            }
        }
        entries.sort_by(|a, b| (a.created_ms, &a.key).cmp(&(b.created_ms, &b.key)));
        let log = Self {
            dir: dir.to_path_buf(),
            shared,
            state: Mutex::new(VecDeque::new()),
            wake: tokio::sync::Notify::new(),
        };
        let mut done = Vec::new();
        {
            let mut files = log.lock();
            for entry in entries {
                if entry.stored && entry.fully_indexed() {
                    done.push((entry.id, entry.committed));
                } else {
                    files.push_back(entry);
                }
            }
            if !files.is_empty() {
                info!(
                    files = files.len(),
                    "search index resumes from the spool's cursor"
                );
            }
        }
        for (id, bytes) in done {
            log.remove_files(&id, bytes);
        }
        Ok(log)
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Entry>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The batcher made what it wrote to observation file `file` durable; `sealed`: the file
    /// is complete.
    pub(crate) fn committed(&self, file: &SpoolFile, sealed: bool) {
        let (header, bytes, records) = (file.header(), file.committed(), file.records() as u64);
        let Some(id) = file_id(file.path()) else {
            return;
        };
        let now = now_ms();
        {
            let mut files = self.lock();
            let entry = match files.iter_mut().rev().find(|e| e.id == id) {
                Some(entry) => entry,
                None => {
                    files.push_back(entry_of(id, header, 0, 0, false, None));
                    let Some(entry) = files.back_mut() else {
                        return;
                    };
                    entry
                }
            };
            if bytes > entry.committed
                && entry
                    .marks
                    .back()
                    .is_none_or(|&(_, at)| now >= at + MARK_EVERY_MS)
            {
                entry.marks.push_back((bytes, now));
            } else if let Some(last) = entry.marks.back_mut() {
                last.0 = last.0.max(bytes);
            }
            entry.committed = bytes;
            entry.records = records;
            entry.sealed = sealed;
        }
        self.wake.notify_one();
    }

    /// The uploader stored the batch of `path`.
    pub(crate) fn stored(&self, path: &Path) -> AfterStore {
        let Some(id) = file_id(path) else {
            return AfterStore::Delete;
        };
        let mut files = self.lock();
        let Some(at) = files.iter().position(|e| e.id == id) else {
            return AfterStore::Delete;
        };
        if files[at].fully_indexed() {
            files.remove(at);
            AfterStore::Delete
        } else {
            files[at].stored = true;
            AfterStore::Keep
        }
    }

    /// Stops following file `id` without touching it: it is gone (deleted to make room, and
    /// written down then).
    pub fn forget(&self, id: &str) {
        self.lock().retain(|e| e.id != id);
    }

    /// The batch of file `id` could not be stored and was moved to `failed/`: what the index
    /// had not taken of it is written down as a gap (reason `store_failed`), and the file is
    /// no longer followed.
    pub(crate) fn store_failed(&self, id: &str) {
        let entry = {
            let mut files = self.lock();
            let Some(at) = files.iter().position(|e| e.id == id) else {
                return;
            };
            files.remove(at)
        };
        if let Some(entry) = entry.filter(|e| e.indexed_records < e.records) {
            write_gap(&self.dir, &entry.gap("store_failed"));
        }
    }

    /// The next range to index: the first file with durable bytes not yet handed to the indexer.
    pub fn next_chunk(&self) -> Option<Chunk> {
        let files = self.lock();
        files.iter().find(|e| e.read < e.committed).map(|e| Chunk {
            id: e.id.clone(),
            from: e.read,
            to: e.committed,
            version: e.version,
            created_ms: e.created_ms,
        })
    }

    /// Reads the records of `chunk`: at most `max_bytes` of them unless a single record is
    /// larger. `NotFound` when the file is gone (deleted to make room).
    pub fn read_chunk(&self, chunk: &Chunk, max_bytes: u64) -> io::Result<ChunkData> {
        let mut file = self.open_file(&chunk.id)?;
        let mut to = chunk.to.min(chunk.from.saturating_add(max_bytes.max(1)));
        loop {
            let mut data = vec![0u8; usize::try_from(to - chunk.from).map_err(io::Error::other)?];
            file.seek(SeekFrom::Start(chunk.from))?;
            file.read_exact(&mut data)?;
            let (ranges, valid_len) = if chunk.from == 0 {
                let decoded = spool::decode(&data);
                match decoded.header {
                    Ok(_) => {}
                    // The header is longer than max_bytes: read more.
                    Err(HeaderProblem::Torn) if to < chunk.to => {
                        to = chunk.to.min(to + (to - chunk.from).max(1));
                        continue;
                    }
                    Err(problem) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("unreadable spool header: {problem:?}"),
                        ))
                    }
                }
                (decoded.records, decoded.valid_len)
            } else {
                let (ranges, _, valid_len) = spool::decode_records(&data, 0, chunk.version);
                (ranges, valid_len)
            };
            if ranges.is_empty() && to < chunk.to {
                // One record larger than max_bytes: read more.
                to = chunk.to.min(to + (to - chunk.from).max(1));
                continue;
            }
            let end = chunk.from + valid_len as u64;
            let data = Bytes::from(data);
            return Ok(ChunkData {
                records: ranges.into_iter().map(|r| data.slice(r)).collect(),
                end,
                damaged: to == chunk.to && end < chunk.to,
            });
        }
    }

    fn open_file(&self, id: &str) -> io::Result<File> {
        match File::open(self.dir.join(format!("{id}.{SPOOL_EXT}"))) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                File::open(self.dir.join(format!("{id}.{STORED_EXT}")))
            }
            other => other,
        }
    }

    /// Frames of file `id` past the records read cannot be read (the disk damaged them): the
    /// file counts as indexed, and its unread records as a gap.
    pub fn give_up_rest(&self, id: &str) {
        let (gap, committed) = {
            let mut files = self.lock();
            let Some(entry) = files.iter_mut().find(|e| e.id == id) else {
                return;
            };
            let gap = entry.gap("unreadable");
            // Counted as taken, so that the file goes once stored and indexed up to here.
            entry.indexed_records = entry.records;
            (gap, entry.committed)
        };
        write_gap(&self.dir, &gap);
        self.read_to(id, committed);
        self.indexed(id, committed, 0);
    }

    /// The records of file `id` up to `end` were handed to the indexer.
    pub fn read_to(&self, id: &str, end: u64) {
        if let Some(entry) = self.lock().iter_mut().find(|e| e.id == id) {
            entry.read = entry.read.max(end);
        }
    }

    /// The indexer took every record of file `id` up to `end` (`records` more of them).
    pub fn indexed(&self, id: &str, end: u64, records: u64) {
        let done = {
            let mut files = self.lock();
            let Some(at) = files.iter().position(|e| e.id == id) else {
                return;
            };
            let entry = &mut files[at];
            if end <= entry.indexed {
                return;
            }
            entry.indexed = end;
            entry.indexed_records += records;
            while entry.marks.front().is_some_and(|&(mark, _)| mark <= end) {
                entry.marks.pop_front();
            }
            if entry.stored && entry.fully_indexed() {
                let bytes = entry.committed;
                files.remove(at);
                Some(bytes)
            } else {
                None
            }
        };
        if let Some(bytes) = done {
            self.remove_files(id, bytes);
        }
    }

    /// Deletes both names of file `id` (the uploader may be renaming it) and frees its bytes.
    fn remove_files(&self, id: &str, bytes: u64) {
        for ext in [SPOOL_EXT, STORED_EXT] {
            let path = self.dir.join(format!("{id}.{ext}"));
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(error = %e, path = %path.display(), "cannot remove an indexed and stored spool file")
                }
            }
        }
        self.shared.release_spool(bytes);
    }

    /// While the spool is over its limit, deletes the oldest stored files the index has not
    /// finished, writing each down in [`GAPS_FILE`]; whether any was deleted. Called by the
    /// batcher before it would hold intake back.
    pub(crate) fn make_room(&self) -> bool {
        let mut any = false;
        while self.shared.over_limit() {
            let dropped = {
                let mut files = self.lock();
                let Some(at) = files.iter().position(|e| e.stored) else {
                    break;
                };
                let Some(entry) = files.remove(at) else { break };
                entry
            };
            any = true;
            write_gap(&self.dir, &dropped.gap("spool_full"));
            self.remove_files(&dropped.id, dropped.committed);
        }
        if any {
            self.wake.notify_one();
        }
        any
    }

    /// Records and time the index is behind by, at `now_ms`.
    pub fn behind(&self, now_ms: u64) -> Behind {
        let files = self.lock();
        let records = files
            .iter()
            .map(|e| e.records.saturating_sub(e.indexed_records))
            .sum();
        let oldest = files
            .iter()
            .filter(|e| e.indexed < e.committed)
            .filter_map(|e| e.marks.front().map(|&(_, at)| at))
            .min();
        Behind {
            records,
            lag_secs: oldest.map_or(0.0, |at| now_ms.saturating_sub(at) as f64 / 1000.0),
        }
    }

    /// Waits until more is committed (or room was made).
    pub async fn changed(&self) {
        self.wake.notified().await;
    }

    /// Writes the cursor (a temporary file renamed over the old one).
    pub fn save_cursor(&self) -> io::Result<()> {
        let cursor = CursorFile {
            version: CURSOR_VERSION,
            files: self
                .lock()
                .iter()
                .filter(|e| e.indexed > 0)
                .map(|e| {
                    (
                        e.id.clone(),
                        FileCursor {
                            offset: e.indexed,
                            records: e.indexed_records,
                        },
                    )
                })
                .collect(),
        };
        let json = serde_json::to_vec(&cursor).map_err(io::Error::other)?;
        let tmp = self.dir.join(format!("{CURSOR_FILE}.tmp"));
        let mut file = File::create(&tmp)?;
        file.write_all(&json)?;
        // Durable before the rename, so that a power loss leaves the old cursor or the new
        // one, never an empty file (which would index the whole spool again).
        file.sync_data()?;
        fs::rename(&tmp, self.dir.join(CURSOR_FILE))
    }
}

fn entry_of(
    id: &str,
    header: &spool::SpoolHeader,
    committed: u64,
    records: u64,
    stored: bool,
    cursor: Option<&FileCursor>,
) -> Entry {
    let cursor = cursor.copied().unwrap_or_default();
    let indexed = cursor.offset.min(committed);
    let sealed = committed > 0;
    let mut marks = VecDeque::new();
    if indexed < committed {
        marks.push_back((committed, header.created_ms));
    }
    Entry {
        id: id.to_owned(),
        key: header.key.clone(),
        created_ms: header.created_ms,
        version: header.version,
        committed,
        records,
        sealed,
        stored,
        read: indexed,
        indexed,
        indexed_records: if indexed == 0 { 0 } else { cursor.records },
        marks,
    }
}

/// The cursor of `dir`; empty when there is none or it cannot be read (then the spool is
/// indexed from its start again: replayed documents overwrite themselves).
fn load_cursor(dir: &Path) -> HashMap<String, FileCursor> {
    let path = dir.join(CURSOR_FILE);
    let data = match fs::read(&path) {
        Ok(data) => data,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return HashMap::new(),
        Err(e) => {
            warn!(error = %e, path = %path.display(), "cannot read the search index cursor; indexing the spool from its start");
            return HashMap::new();
        }
    };
    match serde_json::from_slice::<CursorFile>(&data) {
        Ok(cursor) if cursor.version == CURSOR_VERSION => cursor.files,
        Ok(cursor) => {
            warn!(version = cursor.version, path = %path.display(), "unknown search index cursor version; indexing the spool from its start");
            HashMap::new()
        }
        Err(e) => {
            warn!(error = %e, path = %path.display(), "unreadable search index cursor; indexing the spool from its start");
            HashMap::new()
        }
    }
}

/// Appends `gap` to [`GAPS_FILE`] (and `fsync`s it: it is the only trace of those records in
/// the index's history), logs it and counts it.
fn write_gap(dir: &Path, gap: &Gap) {
    counter!(telemetry::INDEX_GAP_RECORDS_TOTAL)
        .increment(gap.records.saturating_sub(gap.indexed_records));
    counter!(telemetry::INDEX_GAP_FILES_TOTAL, "reason" => gap.reason.clone()).increment(1);
    warn!(
        key = %gap.key,
        records = gap.records - gap.indexed_records.min(gap.records),
        reason = %gap.reason,
        "spool file deleted before the search index took all of it; run `ccstream reindex` (see index-gaps.jsonl)"
    );
    let path = dir.join(GAPS_FILE);
    let written = serde_json::to_vec(gap)
        .map_err(io::Error::other)
        .and_then(|mut line| {
            line.push(b'\n');
            let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
            file.write_all(&line)?;
            file.sync_data()
        });
    if let Err(e) = written {
        warn!(error = %e, path = %path.display(), gap = ?gap, "cannot write a search index gap down; it is in this log line only");
    }
}

/// With the index off, `.stored` files of an earlier run have no reader: each is written down
/// as a gap and deleted. Returns how many.
pub(crate) fn abandon_stored(dir: &Path) -> io::Result<usize> {
    let paths = files_with_ext(dir, STORED_EXT)?;
    for path in &paths {
        let data = fs::read(path)?;
        let decoded = spool::decode(&data);
        if let Ok(header) = decoded.header {
            write_gap(
                dir,
                &Gap {
                    key: header.key,
                    first_received_ms: header.created_ms,
                    deleted_ms: now_ms(),
                    records: decoded.records.len() as u64,
                    indexed_records: 0,
                    reason: "index_off".into(),
                },
            );
        }
        fs::remove_file(path)?;
    }
    if !paths.is_empty() {
        sync_dir(dir)?;
    }
    Ok(paths.len())
}

/// Renames a stored spool file `<id>.spool` to `<id>.stored` (durably), so that a restart
/// indexes it without storing it again. Not found: the index finished meanwhile and deleted it.
pub(crate) fn mark_stored(path: &Path) -> io::Result<()> {
    let to = path.with_extension(STORED_EXT);
    match fs::rename(path, &to) {
        Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("."))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::config::{Compression, Delimiter};
    use crate::objects::spool::{SpoolFile, SpoolHeader, FORMAT_VERSION};

    fn header(created_ms: u64) -> SpoolHeader {
        SpoolHeader {
            version: FORMAT_VERSION,
            key: format!("2024/01/01/00/test-firehose-1-{created_ms}"),
            created_ms,
            kind: RecordKind::Observations,
            delimiter: Delimiter::None,
            compression: Compression::None,
        }
    }

    /// A committed spool file `<id>.spool` with `records`, counted in `shared`.
    fn spool_file(
        dir: &Path,
        shared: &Shared,
        id: &str,
        created_ms: u64,
        records: &[&[u8]],
    ) -> SpoolFile {
        let mut file = SpoolFile::create(dir, id, header(created_ms)).expect("create");
        for (i, r) in records.iter().enumerate() {
            file.push(r, Some(i as u64));
        }
        let bytes = file.commit().expect("commit");
        shared.add_spool(bytes, 1);
        file
    }

    /// Bytes that read a file of `header(created_ms)` up to the end of its first record of
    /// `len` bytes (which has an id).
    fn first_record_end(created_ms: u64, len: usize) -> u64 {
        let probe = tempfile::tempdir().expect("tempdir");
        let mut file = SpoolFile::create(probe.path(), "h", header(created_ms)).expect("create");
        file.commit().expect("commit");
        file.committed() + (crate::frames::FRAME_OVERHEAD + spool::RECORD_PREFIX_MAX + len) as u64
    }

    fn publish(log: &IndexLog, file: &SpoolFile, sealed: bool) {
        log.committed(file, sealed);
    }

    /// Reads every chunk the log offers and reports it indexed; the records, in order.
    fn index_all(log: &IndexLog) -> Vec<Bytes> {
        let mut all = Vec::new();
        while let Some(chunk) = log.next_chunk() {
            let data = log.read_chunk(&chunk, 16).expect("read");
            log.read_to(&chunk.id, data.end);
            log.indexed(&chunk.id, data.end, data.records.len() as u64);
            all.extend(data.records);
        }
        all
    }

    #[test]
    fn a_file_goes_when_stored_and_indexed_whichever_comes_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = Arc::new(Shared::new(1 << 30));
        let log = IndexLog::open(dir.path(), Arc::clone(&shared), &[]).expect("open");

        // Indexed first: the uploader deletes it.
        let a = spool_file(dir.path(), &shared, "a", 1, &[b"one", b"two"]);
        publish(&log, &a, true);
        assert_eq!(log.behind(now_ms()).records, 2);
        assert_eq!(index_all(&log), [&b"one"[..], b"two"]);
        assert_eq!(log.behind(now_ms()), Behind::default());
        assert_eq!(log.stored(a.path()), AfterStore::Delete);

        // Stored first: kept (renamed), and deleted by the index when it is done.
        let b = spool_file(dir.path(), &shared, "b", 2, &[b"three"]);
        publish(&log, &b, false);
        let more = {
            let mut b = b;
            b.push(b"four", Some(9));
            let bytes = b.commit().expect("commit");
            shared.add_spool(bytes, 0);
            publish(&log, &b, true);
            b
        };
        assert_eq!(log.stored(more.path()), AfterStore::Keep);
        mark_stored(more.path()).expect("rename");
        assert!(dir.path().join("b.stored").exists());
        let before = shared.spool_bytes();
        assert_eq!(index_all(&log), [&b"three"[..], b"four"]);
        assert!(
            !dir.path().join("b.stored").exists(),
            "deleted once indexed"
        );
        assert_eq!(shared.spool_bytes(), before - more.committed());
        assert!(log.next_chunk().is_none());
    }

    #[test]
    fn a_chunk_holds_at_least_one_record_however_small_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = Arc::new(Shared::new(1 << 30));
        let log = IndexLog::open(dir.path(), Arc::clone(&shared), &[]).expect("open");
        let big = vec![b'x'; 5000];
        let a = spool_file(dir.path(), &shared, "a", 1, &[&big, b"small"]);
        publish(&log, &a, true);
        let chunk = log.next_chunk().expect("a");
        let data = log.read_chunk(&chunk, 3).expect("read");
        let lens: Vec<usize> = data.records.iter().map(Bytes::len).collect();
        assert_eq!(
            lens.first(),
            Some(&5000),
            "header and a record past the limit"
        );
        assert!(!data.damaged);
        log.read_to("a", data.end);
        let mut all = lens;
        if let Some(rest) = log.next_chunk() {
            assert_eq!(rest.from, data.end);
            let data = log.read_chunk(&rest, 1).expect("read");
            all.extend(data.records.iter().map(Bytes::len));
            assert_eq!(data.end, a.committed());
        }
        assert_eq!(all, [5000, 5]);
    }

    #[test]
    fn the_cursor_resumes_where_the_index_was_and_forgets_finished_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = Arc::new(Shared::new(1 << 30));
        let log = IndexLog::open(dir.path(), Arc::clone(&shared), &[]).expect("open");
        let a = spool_file(dir.path(), &shared, "a", 1, &[b"a1", b"a2"]);
        let b = spool_file(dir.path(), &shared, "b", 2, &[b"b1", b"b2", b"b3"]);
        let c = spool_file(dir.path(), &shared, "c", 3, &[b"c1"]);
        for file in [&a, &b, &c] {
            publish(&log, file, true);
        }
        // `a` indexed and stored (kept as .stored until now: a crash came first); `b` stored
        // and indexed up to its second record; `c` neither.
        let chunk = log.next_chunk().expect("a");
        let data = log.read_chunk(&chunk, 1 << 20).expect("read");
        log.read_to("a", data.end);
        log.indexed("a", data.end, 2);
        let chunk = log.next_chunk().expect("b");
        assert_eq!(chunk.id, "b");
        let data = log
            .read_chunk(&chunk, first_record_end(2, 2))
            .expect("read");
        assert_eq!(data.records, [&b"b1"[..]]);
        log.read_to("b", data.end);
        log.indexed("b", data.end, 1);
        log.save_cursor().expect("save");
        drop(log);
        for file in [&a, &b] {
            mark_stored(file.path()).expect("rename");
        }

        // The restart: `a` is gone at once, `b` goes on after b1, `c` from its start.
        let shared = Arc::new(Shared::new(1 << 30));
        let recovered = spool::recover(dir.path()).expect("recover").spools;
        assert_eq!(recovered.len(), 1, "only c is left to store");
        let log = IndexLog::open(dir.path(), Arc::clone(&shared), &recovered).expect("open");
        assert!(!dir.path().join("a.stored").exists());
        assert_eq!(log.behind(now_ms()).records, 3);
        assert_eq!(index_all(&log), [&b"b2"[..], b"b3", b"c1"]);
        assert!(
            !dir.path().join("b.stored").exists(),
            "stored and now indexed"
        );
        assert!(
            dir.path().join("c.spool").exists(),
            "indexed, not stored yet"
        );
        assert_eq!(log.stored(&dir.path().join("c.spool")), AfterStore::Delete);
    }

    #[test]
    fn an_unreadable_cursor_means_indexing_the_spool_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = Arc::new(Shared::new(1 << 30));
        fs::write(dir.path().join(CURSOR_FILE), b"{not json").expect("write");
        let a = spool_file(dir.path(), &shared, "a", 1, &[b"a1"]);
        drop(a);
        let recovered = spool::recover(dir.path()).expect("recover").spools;
        let log = IndexLog::open(dir.path(), shared, &recovered).expect("open");
        assert_eq!(index_all(&log), [&b"a1"[..]]);
    }

    #[test]
    fn a_full_spool_drops_the_oldest_stored_files_the_index_has_not_taken_and_writes_them_down() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a_len = {
            let probe = tempfile::tempdir().expect("tempdir");
            spool_file(probe.path(), &Shared::new(0), "x", 1, &[b"a1", b"a2"]).committed()
        };
        // Room for two files.
        let shared = Arc::new(Shared::new(2 * a_len + a_len / 2));
        let log = IndexLog::open(dir.path(), Arc::clone(&shared), &[]).expect("open");
        let a = spool_file(dir.path(), &shared, "a", 1, &[b"a1", b"a2"]);
        let b = spool_file(dir.path(), &shared, "b", 2, &[b"b1", b"b2"]);
        let c = spool_file(dir.path(), &shared, "c", 3, &[b"c1", b"c2"]);
        for file in [&a, &b, &c] {
            publish(&log, file, true);
        }
        // `a` half indexed; `b` and `a` stored; `c` not stored: it is never dropped.
        let chunk = log.next_chunk().expect("a");
        let data = log
            .read_chunk(&chunk, first_record_end(1, 2))
            .expect("read");
        log.read_to("a", data.end);
        log.indexed("a", data.end, 1);
        assert_eq!(log.stored(b.path()), AfterStore::Keep);
        assert_eq!(log.stored(a.path()), AfterStore::Keep);
        assert!(shared.over_limit());
        assert!(log.make_room());
        assert!(!shared.over_limit());
        assert!(!a.path().exists(), "the oldest goes first");
        assert!(b.path().exists());
        let gaps: Vec<Gap> = fs::read_to_string(dir.path().join(GAPS_FILE))
            .expect("gaps")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(gaps.len(), 1);
        assert_eq!(gaps[0].key, a.header().key);
        assert_eq!((gaps[0].records, gaps[0].indexed_records), (2, 1));
        assert_eq!(gaps[0].first_received_ms, 1);
        assert_eq!(gaps[0].reason, "spool_full");
        // The index goes on with the next file; the one dropped is never read again.
        assert_eq!(index_all(&log), [&b"b1"[..], b"b2", b"c1", b"c2"]);
        assert!(!log.make_room(), "nothing over the limit");
    }

    #[test]
    fn unstored_files_are_never_dropped_for_room() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = Arc::new(Shared::new(1));
        let log = IndexLog::open(dir.path(), Arc::clone(&shared), &[]).expect("open");
        let a = spool_file(dir.path(), &shared, "a", 1, &[b"a1"]);
        publish(&log, &a, true);
        assert!(!log.make_room());
        assert!(a.path().exists());
        assert!(!dir.path().join(GAPS_FILE).exists());
    }

    #[test]
    fn a_damaged_frame_ends_the_file_for_the_index_and_is_a_gap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = Arc::new(Shared::new(1 << 30));
        let log = IndexLog::open(dir.path(), Arc::clone(&shared), &[]).expect("open");
        let a = spool_file(dir.path(), &shared, "a", 1, &[b"good", b"bad!"]);
        publish(&log, &a, true);
        // Flip the last byte: the second frame's CRC no longer matches.
        let mut data = fs::read(a.path()).expect("read");
        let last = data.len() - 1;
        data[last] ^= 0xff;
        fs::write(a.path(), &data).expect("write");
        let chunk = log.next_chunk().expect("a");
        let read = log.read_chunk(&chunk, 1 << 20).expect("read");
        assert_eq!(read.records, [&b"good"[..]]);
        assert!(read.damaged);
        log.read_to("a", read.end);
        log.indexed("a", read.end, 1);
        log.give_up_rest("a");
        assert!(log.next_chunk().is_none());
        assert_eq!(log.behind(now_ms()).records, 0);
        assert!(fs::read_to_string(dir.path().join(GAPS_FILE))
            .expect("gaps")
            .contains("\"reason\":\"unreadable\""));
        assert_eq!(log.stored(a.path()), AfterStore::Delete);
    }

    #[test]
    fn the_lag_is_the_age_of_the_oldest_commit_not_indexed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = Arc::new(Shared::new(1 << 30));
        let log = IndexLog::open(dir.path(), Arc::clone(&shared), &[]).expect("open");
        let a = spool_file(dir.path(), &shared, "a", 1, &[b"a1"]);
        publish(&log, &a, false);
        let behind = log.behind(now_ms() + 5_000);
        assert_eq!(behind.records, 1);
        assert!((4.9..6.0).contains(&behind.lag_secs), "{behind:?}");
        index_all(&log);
        assert_eq!(log.behind(now_ms() + 5_000), Behind::default());
    }

    #[test]
    fn with_the_index_off_stored_files_are_written_down_and_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = Shared::new(1 << 30);
        let a = spool_file(dir.path(), &shared, "a", 7, &[b"a1", b"a2"]);
        mark_stored(a.path()).expect("rename");
        assert_eq!(abandon_stored(dir.path()).expect("abandon"), 1);
        assert!(!dir.path().join("a.stored").exists());
        let gap: Gap = serde_json::from_str(
            fs::read_to_string(dir.path().join(GAPS_FILE))
                .expect("gaps")
                .trim(),
        )
        .expect("json");
        assert_eq!((gap.records, gap.indexed_records), (2, 0));
        assert_eq!(gap.reason, "index_off");
        assert_eq!(gap.first_received_ms, 7);
    }
}
