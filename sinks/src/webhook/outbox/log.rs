//! The outbox's files: segments of firings, and beside each the indices of those finished.
//!
//! ```text
//! <dir>/<id:016x>.outbox   b"CCOUTBX1", header frame (JSON: version, createdMs),
//!                          then one frame per firing (JSON: enqueuedMs, request)
//! <dir>/<id:016x>.done     u32 little-endian indices of the segment's finished firings
//! ```
//!
//! Frames are those of the observation spool ([`crate::frames`]): a firing counts as written
//! once the group commit that covers it is on disk, and after a crash the committed firings are
//! an intact prefix of each segment. A firing is finished when it was delivered or its dead
//! letter is on disk; its index then goes to the `.done` file, written without an `fsync`: a
//! process crash keeps it (the page cache survives), and what a machine crash loses is only sent
//! again, with the same `Idempotency-Key`. A segment is removed once it is sealed (a newer one
//! takes the appends) and every firing in it is finished. The total size of the segments is the
//! outbox's size, bounded by `webhook.outbox_max_bytes`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::frames::{self, push_frame, sync_dir, FramedFile, FRAME_OVERHEAD};
use crate::objects::stored_ids::StoredIds;
use crate::webhook::destination::destination_of;
use crate::webhook::request::WebhookRequest;

/// Extension of segment files.
pub const SEGMENT_EXT: &str = "outbox";
/// Extension of the files of finished indices.
pub const DONE_EXT: &str = "done";
pub use crate::frames::FAILED_DIR;
/// Format version written in segment headers.
pub const FORMAT_VERSION: u32 = 1;
/// Largest firing frame: a body is at most 1 MiB and urls, headers and keys are small, so this
/// leaves room for JSON escaping; bigger ones are refused at append.
pub const MAX_ENTRY_BYTES: usize = 8 * 1024 * 1024;

const MAGIC: &[u8; 8] = b"CCOUTBX1";
/// Origins per file of the journal of fired ids (it keeps one to two files' worth).
const FIRED_PER_FILE: usize = 100_000;

/// Where a committed firing is: its segment, its index there, and its frame's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locator {
    /// The segment's id.
    pub segment: u64,
    /// The firing's index in the segment.
    pub index: u32,
    /// Offset of its frame in the segment file.
    pub offset: u64,
    /// Length of its frame, overhead included.
    pub len: u32,
}

/// A firing as the outbox holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredFiring {
    /// When it was handed to the outbox, ms since the epoch (its age is counted from here).
    pub enqueued_ms: u64,
    /// The id of the observation that fired it, when the producer gave one: after a crash, a
    /// redelivery of that observation is known to have fired already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<u64>,
    /// The request.
    pub request: WebhookRequest,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SegmentHeader {
    version: u32,
    created_ms: u64,
}

/// One segment's accounting.
#[derive(Debug)]
struct Segment {
    /// Size of its file.
    bytes: u64,
    /// Firings written to it.
    entries: u32,
    /// Which of them are finished (one bit each).
    finished: Vec<u64>,
    finished_count: u32,
    /// No more appends: the newer segment takes them.
    sealed: bool,
    /// The `.done` file, opened at the first finished firing.
    done_file: Option<File>,
    /// The origins of its firings: kept in the journal of fired ids when it is removed.
    origins: Vec<u64>,
}

impl Segment {
    fn new(bytes: u64, entries: u32, sealed: bool) -> Self {
        Self {
            bytes,
            entries,
            finished: Vec::new(),
            finished_count: 0,
            sealed,
            done_file: None,
            origins: Vec::new(),
        }
    }

    /// Marks `index` finished; false when it already was (or is out of range).
    fn finish(&mut self, index: u32) -> bool {
        if index >= self.entries {
            return false;
        }
        let (word, bit) = ((index / 64) as usize, index % 64);
        if self.finished.len() <= word {
            self.finished.resize(word + 1, 0);
        }
        if self.finished[word] & (1 << bit) != 0 {
            return false;
        }
        self.finished[word] |= 1 << bit;
        self.finished_count += 1;
        true
    }

    fn is_finished(&self, index: u32) -> bool {
        let (word, bit) = ((index / 64) as usize, index % 64);
        self.finished.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    fn removable(&self) -> bool {
        self.sealed && self.finished_count == self.entries
    }
}

/// A firing an earlier run left unfinished: where it is, and what the dispatcher needs before
/// it reads the body back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfinished {
    /// Where it is.
    pub at: Locator,
    /// Its destination ([`destination_of`] its url).
    pub destination: String,
    /// When it was first written, ms since the epoch.
    pub enqueued_ms: u64,
}

/// What [`OutboxLog::open`] found left by earlier runs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The firings to send, oldest first.
    pub unfinished: Vec<Unfinished>,
    /// The origins (observation ids) of every firing in the segments kept, finished or not.
    pub origins: Vec<u64>,
}

/// The outbox's files, owned by one task. Not thread-safe by itself; cheap to move.
#[derive(Debug)]
pub struct OutboxLog {
    dir: PathBuf,
    segment_bytes: u64,
    /// The segment taking appends: its id and file.
    open: Option<(u64, FramedFile)>,
    segments: BTreeMap<u64, Segment>,
    next_id: u64,
    /// Bytes of every segment file.
    total_bytes: u64,
    /// A segment was created or removed since the directory was last made durable.
    dir_dirty: bool,
    /// The origins of the firings of removed segments (the objects' journal of stored ids,
    /// reused): a message redelivered after a restart whose firings were all delivered, their
    /// segment gone, is still known to have fired.
    fired: StoredIds,
}

impl OutboxLog {
    /// Opens the outbox in `dir` (created if missing): the firings that earlier runs committed
    /// and did not finish come back, oldest first. Segments with nothing left are removed,
    /// unreadable ones moved to `failed/`.
    pub fn open(dir: &Path, segment_bytes: u64) -> io::Result<(Self, Recovered)> {
        let mut ids = Vec::new();
        for path in frames::files_with_ext(dir, SEGMENT_EXT)? {
            let id = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| u64::from_str_radix(s, 16).ok());
            match id {
                Some(id) => ids.push(id),
                None => warn!(path = %path.display(), "not an outbox segment name; left alone"),
            }
        }
        ids.sort_unstable();
        let (fired, fired_before) = StoredIds::open(dir, FIRED_PER_FILE)?;
        let mut log = Self {
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(1),
            open: None,
            segments: BTreeMap::new(),
            next_id: ids.last().map_or(1, |last| last + 1),
            total_bytes: 0,
            dir_dirty: false,
            fired,
        };
        let mut recovered = Recovered {
            origins: fired_before,
            ..Recovered::default()
        };
        for &id in &ids {
            log.recover_segment(id, &mut recovered)?;
        }
        // `.done` files whose segment is gone.
        for path in frames::files_with_ext(dir, DONE_EXT)? {
            let id = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| u64::from_str_radix(s, 16).ok());
            if id.is_some_and(|id| !log.segments.contains_key(&id)) {
                remove_if_exists(&path)?;
                log.dir_dirty = true;
            }
        }
        if log.dir_dirty {
            sync_dir(dir)?;
            log.dir_dirty = false;
        }
        Ok((log, recovered))
    }

    fn recover_segment(&mut self, id: u64, recovered: &mut Recovered) -> io::Result<()> {
        let path = self.segment_path(id);
        let data = fs::read(&path)?;
        let torn_header = data.len() < MAGIC.len()
            || (data.starts_with(MAGIC)
                && !frames::is_complete(&data, MAGIC.len(), MAX_ENTRY_BYTES));
        if torn_header {
            // Created, never committed: nothing in it was ever acked.
            info!(path = %path.display(), "removing outbox segment with a torn header");
            self.remove_files(id)?;
            return Ok(());
        }
        let Some((entries, frames_at)) = decode(&data) else {
            let to = frames::move_to_failed(&path)?;
            warn!(path = %path.display(), moved_to = %to.display(), "outbox segment unreadable; moved aside");
            let _ = fs::remove_file(self.done_path(id));
            self.dir_dirty = true;
            return Ok(());
        };
        let mut segment = Segment::new(data.len() as u64, entries, true);
        if let Ok(done) = fs::read(self.done_path(id)) {
            // A torn last index (a crash inside the write) is ignored: sent again.
            for chunk in done.chunks_exact(4) {
                segment.finish(u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]));
            }
        }
        let before = recovered.unfinished.len();
        for (index, (offset, len)) in frames_at.into_iter().enumerate() {
            let index = index as u32;
            let frame = offset as usize..offset as usize + len as usize;
            let head = head_of(&data[frame]);
            if let Some(origin) = head.as_ref().and_then(|h| h.origin) {
                segment.origins.push(origin);
                recovered.origins.push(origin);
            }
            if !segment.is_finished(index) {
                let (destination, enqueued_ms) = head
                    .map(|h| (destination_of(&h.request.url), h.enqueued_ms))
                    .unwrap_or_default();
                recovered.unfinished.push(Unfinished {
                    at: Locator {
                        segment: id,
                        index,
                        offset,
                        len,
                    },
                    destination,
                    enqueued_ms,
                });
            }
        }
        self.total_bytes += segment.bytes;
        self.segments.insert(id, segment);
        if self.segments.get(&id).is_some_and(Segment::removable) {
            self.remove_files(id)?;
            return Ok(());
        }
        info!(
            segment = %path.display(),
            unfinished = recovered.unfinished.len() - before,
            "outbox segment recovered; its unfinished firings are sent again"
        );
        Ok(())
    }

    /// Starts a new segment when there is none or the open one is full (the only step of an
    /// append that touches the disk: call it before [`append`](Self::append)).
    pub fn roll_if_needed(&mut self) -> io::Result<()> {
        if self
            .open
            .as_ref()
            .is_none_or(|(_, file)| file.len() >= self.segment_bytes)
        {
            self.start_segment()?;
        }
        Ok(())
    }

    /// Frames a firing in memory (durable at the next [`commit`](Self::commit)) in the open
    /// segment ([`roll_if_needed`](Self::roll_if_needed) first). Fails only for a firing bigger
    /// than [`MAX_ENTRY_BYTES`] (`InvalidInput`) or without a segment, and then changes nothing.
    pub fn append(&mut self, firing: &StoredFiring) -> io::Result<Locator> {
        let Some((id, file)) = self.open.as_mut() else {
            return Err(io::Error::other("no open outbox segment"));
        };
        // Serialized straight into the segment's pending buffer: no buffer of its own per firing.
        let (offset, data_len) = file.push_with(MAX_ENTRY_BYTES, |buf| {
            serde_json::to_writer(buf, firing).map_err(io::Error::other)
        })?;
        let len = (data_len + FRAME_OVERHEAD) as u64;
        let segment = self
            .segments
            .get_mut(id)
            .ok_or_else(|| io::Error::other("open outbox segment not tracked"))?;
        let index = segment.entries;
        segment.entries += 1;
        segment.bytes += len;
        if let Some(origin) = firing.origin {
            segment.origins.push(origin);
        }
        self.total_bytes += len;
        Ok(Locator {
            segment: *id,
            index,
            offset,
            len: len as u32,
        })
    }

    fn start_segment(&mut self) -> io::Result<()> {
        if let Some((_, file)) = self.open.as_mut() {
            // What it holds must be durable before the next segment's firings are; on an error
            // it stays the open segment, its frames pending, for the retry.
            file.commit()?;
        }
        if let Some((id, _)) = self.open.take() {
            if let Some(segment) = self.segments.get_mut(&id) {
                segment.sealed = true;
            }
            self.remove_if_finished(id)?;
        }
        let id = self.next_id;
        self.next_id += 1;
        // A `.done` file left without its segment (a crash between the two removals) must not
        // mark the new segment's firings.
        remove_if_exists(&self.done_path(id))?;
        let mut preamble = MAGIC.to_vec();
        let header = SegmentHeader {
            version: FORMAT_VERSION,
            created_ms: ccstream_common::time::now_ms(),
        };
        push_frame(
            &mut preamble,
            &serde_json::to_vec(&header).map_err(io::Error::other)?,
        );
        let file = FramedFile::create(self.segment_path(id), &preamble)?;
        let bytes = preamble.len() as u64;
        self.total_bytes += bytes;
        self.segments.insert(id, Segment::new(bytes, 0, false));
        self.open = Some((id, file));
        self.dir_dirty = true;
        Ok(())
    }

    /// Makes every appended firing durable (one write and one `fsync`, and the directory's when
    /// a segment was created).
    pub fn commit(&mut self) -> io::Result<()> {
        if let Some((_, file)) = self.open.as_mut() {
            file.commit()?;
        }
        if self.dir_dirty {
            sync_dir(&self.dir)?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// Records firings as finished (delivered, or dead-lettered on disk) and removes the sealed
    /// segments left with nothing to send. A locator finished twice counts once.
    pub fn finish(&mut self, done: &[Locator]) -> io::Result<()> {
        let mut touched: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        for at in done {
            let Some(segment) = self.segments.get_mut(&at.segment) else {
                continue;
            };
            if segment.finish(at.index) {
                touched
                    .entry(at.segment)
                    .or_default()
                    .extend_from_slice(&at.index.to_le_bytes());
            }
        }
        if let Some((id, file)) = &self.open {
            // A finished open segment past a quarter of its size is closed now, not when the
            // next firing comes: a small outbox frees its space (the next append starts anew).
            let id = *id;
            let finished = self
                .segments
                .get(&id)
                .is_some_and(|s| s.finished_count == s.entries);
            if finished && !file.is_dirty() && file.len() >= self.segment_bytes / 4 {
                self.open = None;
                if let Some(segment) = self.segments.get_mut(&id) {
                    segment.sealed = true;
                }
                touched.remove(&id);
                self.remove_files(id)?;
            }
        }
        for (id, indices) in touched {
            let done_path = self.done_path(id);
            let Some(segment) = self.segments.get_mut(&id) else {
                continue;
            };
            if segment.removable() {
                self.remove_files(id)?;
                continue;
            }
            if segment.done_file.is_none() {
                segment.done_file = Some(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&done_path)?,
                );
            }
            if let Some(file) = segment.done_file.as_mut() {
                file.write_all(&indices)?;
            }
        }
        Ok(())
    }

    fn remove_if_finished(&mut self, id: u64) -> io::Result<()> {
        if self.segments.get(&id).is_some_and(Segment::removable) {
            self.remove_files(id)?;
        }
        Ok(())
    }

    fn remove_files(&mut self, id: u64) -> io::Result<()> {
        if let Some(segment) = self.segments.remove(&id) {
            self.total_bytes -= segment.bytes;
            if !segment.origins.is_empty() {
                if let Err(error) = self.fired.record(&segment.origins) {
                    // Only a redelivery right after a restart may then fire again.
                    warn!(%error, "cannot keep the origins of a finished outbox segment");
                }
            }
        }
        // The segment first: a `.done` file left without its segment is removed at the next
        // open (and before its id could be used again).
        remove_if_exists(&self.segment_path(id))?;
        remove_if_exists(&self.done_path(id))?;
        self.dir_dirty = true;
        Ok(())
    }

    /// Bytes of every segment file, committed or about to be.
    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Firings written and not finished.
    pub fn unfinished(&self) -> u64 {
        self.segments
            .values()
            .map(|s| u64::from(s.entries - s.finished_count))
            .sum()
    }

    /// The outbox's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn segment_path(&self, id: u64) -> PathBuf {
        segment_path(&self.dir, id)
    }

    fn done_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}.{DONE_EXT}"))
    }
}

/// The file of segment `id` in `dir`.
pub fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.{SEGMENT_EXT}"))
}

/// Reads back a committed firing.
pub fn read(dir: &Path, at: Locator) -> io::Result<StoredFiring> {
    use std::os::unix::fs::FileExt;
    let file = File::open(segment_path(dir, at.segment))?;
    let mut buf = vec![0; at.len as usize];
    file.read_exact_at(&mut buf, at.offset)?;
    let range = frames::frame(&buf, 0, MAX_ENTRY_BYTES)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "outbox frame damaged"))?;
    serde_json::from_slice(&buf[range]).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// A segment's firings: how many, and each one's frame (offset, length). `None` when the file
/// is not a readable segment. Reading stops at the first torn or damaged frame (never
/// committed); a frame that is intact but does not hold a firing counts, to be reported when
/// it is read.
fn decode(data: &[u8]) -> Option<(u32, Vec<(u64, u32)>)> {
    if data.get(..MAGIC.len())? != MAGIC {
        return None;
    }
    let header = frames::frame(data, MAGIC.len(), MAX_ENTRY_BYTES)?;
    let header: SegmentHeader = serde_json::from_slice(&data[header.clone()]).ok()?;
    if header.version != FORMAT_VERSION {
        return None;
    }
    let mut at = MAGIC.len() + FRAME_OVERHEAD + data_len(data, MAGIC.len())?;
    let mut found = Vec::new();
    while let Some(range) = frames::frame(data, at, MAX_ENTRY_BYTES) {
        found.push((at as u64, (range.end - at) as u32));
        at = range.end;
    }
    Some((found.len() as u32, found))
}

/// What recovery reads of a firing: its origin, age and url (the body is skipped).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Head {
    enqueued_ms: u64,
    origin: Option<u64>,
    request: UrlOnly,
}

#[derive(Deserialize)]
struct UrlOnly {
    url: String,
}

fn head_of(frame: &[u8]) -> Option<Head> {
    let data = frames::frame(frame, 0, MAX_ENTRY_BYTES)?;
    serde_json::from_slice(&frame[data]).ok()
}

fn data_len(data: &[u8], at: usize) -> Option<usize> {
    let len = data.get(at..at + 4)?;
    Some(u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize)
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
