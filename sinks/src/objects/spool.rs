//! The crash-safe spool: one file per batch that is open or sealed but not yet stored.
//!
//! Layout of `<spool_dir>/<id>.spool`:
//!
//! ```text
//! b"CCSPOOL1"                                   magic
//! [u32 len][u32 crc32][header JSON]             key, created_ms, version, kind, delimiter, compression
//! [u32 len][u32 crc32][u8 tag][u64 id]?[record bytes]  ...   one frame per record (version 2)
//! ```
//!
//! Integers are little-endian; the CRC-32 covers the frame's bytes. In version 2 (the one
//! written) a record frame starts with a tag: `0` no id follows, `1` the record's 64-bit id
//! follows (the observation id the binary deduplicates redeliveries by, see
//! [`Recovered::ids`]). Version 1
//! files (written before ids existed) hold the record bytes alone and are still read, with no
//! ids; a binary older than version 2 moves version-2 files to `failed/` instead.
//!
//! The batcher acks a record only after the `fsync` that covers its frame, and an `fsync`
//! covers everything written before it, so after a crash the frames that were acked are an
//! intact prefix of the file: reading stops at the first torn or bad frame, and the tail is
//! truncated (those records were never acked; the broker redelivers them). A file whose header
//! frame is incomplete was never acked at all and is removed.

use std::fs::{self, OpenOptions};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::config::{Compression, Delimiter};
use super::record::RecordKind;
use crate::frames::{self, push_frame_parts, FramedFile};
pub use crate::frames::{move_to_failed, push_frame, sync_dir, FAILED_DIR, FRAME_OVERHEAD};

/// Reads a spool frame at `at` (see [`frames::frame`]).
pub(crate) fn frame(data: &[u8], at: usize) -> Option<Range<usize>> {
    frames::frame(data, at, MAX_FRAME_BYTES)
}

/// File extension of spool files.
pub const SPOOL_EXT: &str = "spool";
/// Format version written in the header: record frames carry an optional id.
pub const FORMAT_VERSION: u32 = 2;
/// The first format: record frames hold the record alone. Still read.
pub const FORMAT_VERSION_1: u32 = 1;
/// Largest record a frame holds.
pub const MAX_RECORD_BYTES: usize = 64 * 1024 * 1024;
/// Bytes a version-2 record frame adds before the record at most: the tag and an id.
pub const RECORD_PREFIX_MAX: usize = 9;
/// Largest frame data. Bigger lengths read back are taken as corruption.
pub const MAX_FRAME_BYTES: usize = MAX_RECORD_BYTES + RECORD_PREFIX_MAX;
/// Version-2 record tag: no id follows.
const TAG_NO_ID: u8 = 0;
/// Version-2 record tag: an 8-byte id follows.
const TAG_ID: u8 = 1;

const MAGIC: &[u8; 8] = b"CCSPOOL1";

/// The first frame of a spool file: everything needed to store it after a restart, under the
/// same key (so a retry overwrites instead of duplicating).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolHeader {
    /// Format version ([`FORMAT_VERSION`]).
    pub version: u32,
    /// The object key.
    pub key: String,
    /// When the batch was opened (its first record), ms since the epoch.
    pub created_ms: u64,
    /// Observations or errors.
    pub kind: RecordKind,
    /// Separator written after each record in the object.
    pub delimiter: Delimiter,
    /// Encoding of the object body.
    pub compression: Compression,
}

/// The bytes a spool file starts with: the magic and the header's frame. Record frames
/// ([`push_record`]) follow.
pub fn preamble(header: &SpoolHeader) -> io::Result<Vec<u8>> {
    let mut preamble = MAGIC.to_vec();
    let json = serde_json::to_vec(header).map_err(io::Error::other)?;
    push_frame(&mut preamble, &json);
    Ok(preamble)
}

/// Appends the frame of one record in the given format `version` (a version-1 frame has no
/// room for `id`, which is then dropped).
pub fn push_record(buf: &mut Vec<u8>, version: u32, record: &[u8], id: Option<u64>) {
    let (head, len) = record_head(version, id);
    push_frame_parts(buf, &head[..len], record);
}

/// The bytes a record frame starts with in format `version`, and how many of them are used.
fn record_head(version: u32, id: Option<u64>) -> ([u8; RECORD_PREFIX_MAX], usize) {
    let mut head = [0u8; RECORD_PREFIX_MAX];
    if version == FORMAT_VERSION_1 {
        return (head, 0);
    }
    match id {
        Some(id) => {
            head[0] = TAG_ID;
            head[1..].copy_from_slice(&id.to_le_bytes());
            (head, RECORD_PREFIX_MAX)
        }
        None => {
            head[0] = TAG_NO_ID;
            (head, 1)
        }
    }
}

/// Splits a version-2 record frame's data (at `range` of `data`) into the id and the record's
/// range; `None` for an unknown tag or a missing id (corruption).
fn split_record(data: &[u8], range: Range<usize>) -> Option<(Option<u64>, Range<usize>)> {
    match *data.get(range.clone())?.first()? {
        TAG_NO_ID => Some((None, range.start + 1..range.end)),
        TAG_ID if range.len() >= RECORD_PREFIX_MAX => {
            let id = data.get(range.start + 1..range.start + RECORD_PREFIX_MAX)?;
            let id = u64::from_le_bytes(id.try_into().ok()?);
            Some((Some(id), range.start + RECORD_PREFIX_MAX..range.end))
        }
        _ => None,
    }
}

/// Why a file's header cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderProblem {
    /// The file ends inside the magic or the header frame: created, never acked.
    Torn,
    /// Wrong magic, bad CRC, unreadable JSON or an unknown version: not ours to guess.
    Corrupt(String),
}

/// What [`decode`] found in a spool file's bytes.
#[derive(Debug)]
pub struct Decoded {
    /// The header, or why it cannot be read (then there are no records).
    pub header: Result<SpoolHeader, HeaderProblem>,
    /// Byte ranges of the intact records, in order.
    pub records: Vec<Range<usize>>,
    /// The id of each record in `records` (always `None` in a version-1 file).
    pub ids: Vec<Option<u64>>,
    /// Length of the intact prefix (header and intact records).
    pub valid_len: usize,
}

impl Decoded {
    /// Whether bytes follow the intact prefix (a torn or bad frame).
    pub fn has_bad_tail(&self, file_len: usize) -> bool {
        self.header.is_ok() && self.valid_len < file_len
    }
}

/// Decodes a spool file's bytes; pure.
pub fn decode(data: &[u8]) -> Decoded {
    let bad = |header| Decoded {
        header: Err(header),
        records: Vec::new(),
        ids: Vec::new(),
        valid_len: 0,
    };
    let Some(magic) = data.get(..MAGIC.len()) else {
        return bad(HeaderProblem::Torn);
    };
    if magic != MAGIC {
        return bad(HeaderProblem::Corrupt(
            "not a spool file (bad magic)".into(),
        ));
    }
    let at = MAGIC.len();
    let Some(range) = frame(data, at) else {
        // A complete header frame with a bad CRC is corruption; an incomplete one is torn.
        return bad(if frames::is_complete(data, at, MAX_FRAME_BYTES) {
            HeaderProblem::Corrupt("header frame CRC mismatch or empty".into())
        } else {
            HeaderProblem::Torn
        });
    };
    let header: SpoolHeader = match serde_json::from_slice(&data[range.clone()]) {
        Ok(h) => h,
        Err(e) => return bad(HeaderProblem::Corrupt(format!("header JSON: {e}"))),
    };
    if header.version != FORMAT_VERSION && header.version != FORMAT_VERSION_1 {
        return bad(HeaderProblem::Corrupt(format!(
            "unknown format version {}",
            header.version
        )));
    }
    let (records, ids, valid_len) = decode_records(data, range.end, header.version);
    Decoded {
        header: Ok(header),
        records,
        ids,
        valid_len,
    }
}

/// Decodes the record frames of a file in format `version` from offset `at` of `data` (a frame
/// boundary) to the first torn or bad frame: the records' ranges, their ids, and where the
/// intact frames end.
pub fn decode_records(
    data: &[u8],
    mut at: usize,
    version: u32,
) -> (Vec<Range<usize>>, Vec<Option<u64>>, usize) {
    let mut records = Vec::new();
    let mut ids = Vec::new();
    // An empty frame (zeros in a tail) ends this too: [`frames::frame`] refuses it.
    while let Some(range) = frame(data, at) {
        let (id, record) = if version == FORMAT_VERSION_1 {
            (None, range.clone())
        } else {
            // A frame with a good CRC but a bad tag is corruption too: stop there.
            let Some(split) = split_record(data, range.clone()) else {
                break;
            };
            split
        };
        at = range.end;
        records.push(record);
        ids.push(id);
    }
    (records, ids, at)
}

/// A spool file that is complete: sealed by the batcher, or left by a crash. It is deleted
/// only after its object is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSpool {
    /// The file.
    pub path: PathBuf,
    /// Its header (the key to store it under).
    pub header: SpoolHeader,
    /// Its size on disk.
    pub file_bytes: u64,
    /// Records in it.
    pub records: usize,
}

/// The records of a sealed spool file, read back for storing.
#[derive(Debug, Clone)]
pub struct SpoolContents {
    /// The header.
    pub header: SpoolHeader,
    /// The records, slices of one buffer.
    pub records: Vec<Bytes>,
    /// The ids the records carry, in order (records without one are skipped).
    pub ids: Vec<u64>,
}

/// Reads a sealed spool file. A bad tail (which a live batcher never leaves) is logged and
/// skipped: the intact records are what was acked.
pub fn read_sealed(path: &Path) -> io::Result<SpoolContents> {
    let data = Bytes::from(fs::read(path)?);
    let decoded = decode(&data);
    let header = match decoded.header {
        Ok(header) => header,
        Err(problem) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unreadable spool header: {problem:?}"),
            ))
        }
    };
    if decoded.valid_len < data.len() {
        warn!(
            path = %path.display(),
            skipped_bytes = data.len() - decoded.valid_len,
            "spool file has a bad tail; storing its intact records"
        );
    }
    let records = decoded
        .records
        .into_iter()
        .map(|range| data.slice(range))
        .collect();
    let ids = decoded.ids.into_iter().flatten().collect();
    Ok(SpoolContents {
        header,
        records,
        ids,
    })
}

/// What [`recover`] found in the spool directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The spool files to store, oldest first.
    pub spools: Vec<SealedSpool>,
    /// The ids of their records (those written with one), in the same order: records that were
    /// committed — and perhaps acked — before the earlier run ended.
    pub ids: Vec<u64>,
}

/// Every spool file left in `dir` by an earlier run (a crash, or a shutdown whose grace ran
/// out), oldest first, ready to be stored under the key in its header before anything else,
/// with the ids of their records.
///
/// Torn tails are truncated; files with no acked record (torn header, header only) are
/// removed; files with a corrupt header are moved to `failed/` for an operator.
pub fn recover(dir: &Path) -> io::Result<Recovered> {
    let mut found = Vec::new();
    for path in frames::files_with_ext(dir, SPOOL_EXT)? {
        let data = fs::read(&path)?;
        let decoded = decode(&data);
        match decoded.header {
            Err(HeaderProblem::Torn) => {
                info!(path = %path.display(), "removing spool file with a torn header (never acked)");
                fs::remove_file(&path)?;
            }
            Err(HeaderProblem::Corrupt(why)) => {
                let to = move_to_failed(&path)?;
                warn!(path = %path.display(), moved_to = %to.display(), reason = %why, "spool file unreadable; moved aside");
            }
            Ok(_) if decoded.records.is_empty() => {
                info!(path = %path.display(), "removing spool file without records");
                fs::remove_file(&path)?;
            }
            Ok(header) => {
                if decoded.valid_len < data.len() {
                    warn!(
                        path = %path.display(),
                        dropped_bytes = data.len() - decoded.valid_len,
                        "truncating torn tail of spool file (those records were never acked)"
                    );
                    let file = OpenOptions::new().write(true).open(&path)?;
                    file.set_len(decoded.valid_len as u64)?;
                    file.sync_data()?;
                }
                let ids: Vec<u64> = decoded.ids.iter().flatten().copied().collect();
                found.push((
                    SealedSpool {
                        path,
                        header,
                        file_bytes: decoded.valid_len as u64,
                        records: decoded.records.len(),
                    },
                    ids,
                ));
            }
        }
    }
    found.sort_by(|(a, _), (b, _)| {
        (a.header.created_ms, &a.header.key).cmp(&(b.header.created_ms, &b.header.key))
    });
    let mut recovered = Recovered::default();
    for (spool, ids) in found {
        recovered.spools.push(spool);
        recovered.ids.extend(ids);
    }
    Ok(recovered)
}

/// The spool file of an open batch. Records are framed into a buffer by [`push`](Self::push)
/// and reach the disk at [`commit`](Self::commit), one write and one `fsync` for many records.
#[derive(Debug)]
pub struct SpoolFile {
    file: FramedFile,
    header: SpoolHeader,
    /// Size of the object this batch makes: records and delimiters, before compression.
    object_bytes: u64,
    records: usize,
    delimiter_len: u64,
}

impl SpoolFile {
    /// Creates `<dir>/<id>.spool` and frames its header (written at the first commit). The
    /// caller must make `dir` durable (`sync_dir`) before acking records in it.
    pub fn create(dir: &Path, id: &str, header: SpoolHeader) -> io::Result<Self> {
        let preamble = preamble(&header)?;
        let file = FramedFile::create(dir.join(format!("{id}.{SPOOL_EXT}")), &preamble)?;
        Ok(Self {
            file,
            delimiter_len: header.delimiter.bytes().len() as u64,
            header,
            object_bytes: 0,
            records: 0,
        })
    }

    /// Frames a record and its id (in memory until the next commit), in the header's format
    /// version.
    pub fn push(&mut self, record: &[u8], id: Option<u64>) {
        let (head, len) = record_head(self.header.version, id);
        self.file.push_parts(&head[..len], record);
        self.object_bytes += record.len() as u64 + self.delimiter_len;
        self.records += 1;
    }

    /// Appends the frame of a `record_len`-byte record framed by its producer
    /// ([`super::record_batch::RecordBatch`]), in [`FORMAT_VERSION`]: the version of every file
    /// [`create`](Self::create) makes from the batcher's headers.
    pub fn push_frame(&mut self, frame: &[u8], record_len: usize) {
        debug_assert_eq!(self.header.version, FORMAT_VERSION);
        self.file.push_framed(frame);
        self.object_bytes += record_len as u64 + self.delimiter_len;
        self.records += 1;
    }

    /// Object bytes this record would add.
    pub fn object_bytes_of(&self, record_len: usize) -> u64 {
        record_len as u64 + self.delimiter_len
    }

    /// Size of the object so far (records and delimiters, before compression).
    pub fn object_bytes(&self) -> u64 {
        self.object_bytes
    }

    /// Records so far.
    pub fn records(&self) -> usize {
        self.records
    }

    /// The header.
    pub fn header(&self) -> &SpoolHeader {
        &self.header
    }

    /// Whether frames wait for a commit.
    pub fn is_dirty(&self) -> bool {
        self.file.is_dirty()
    }

    /// The file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Bytes of the file known durable.
    pub fn committed(&self) -> u64 {
        self.file.committed()
    }

    /// Writes the pending frames and `fsync`s ([`FramedFile::commit`]); returns the bytes made
    /// durable.
    pub fn commit(&mut self) -> io::Result<u64> {
        self.file.commit()
    }

    /// Closes the file; the batch goes to the uploader. Call after a commit.
    pub fn seal(self) -> SealedSpool {
        SealedSpool {
            file_bytes: self.file.committed(),
            path: self.file.path().to_path_buf(),
            header: self.header,
            records: self.records,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_v(version: u32) -> SpoolHeader {
        SpoolHeader {
            version,
            key: "2024/01/01/00/dev-firehose-1-2024-01-01-00-00-00-x".into(),
            created_ms: 1_704_067_200_000,
            kind: RecordKind::Observations,
            delimiter: Delimiter::None,
            compression: Compression::None,
        }
    }

    fn header() -> SpoolHeader {
        header_v(FORMAT_VERSION)
    }

    /// A file of the current version; record `i` gets the id `i * 1000 + 7`.
    fn file_bytes(records: &[&[u8]]) -> Vec<u8> {
        let with_ids: Vec<_> = records
            .iter()
            .enumerate()
            .map(|(i, r)| (*r, Some(id_of(i))))
            .collect();
        file_bytes_v(FORMAT_VERSION, &with_ids)
    }

    fn id_of(i: usize) -> u64 {
        i as u64 * 1000 + 7
    }

    fn file_bytes_v(version: u32, records: &[(&[u8], Option<u64>)]) -> Vec<u8> {
        let mut buf = MAGIC.to_vec();
        push_frame(
            &mut buf,
            &serde_json::to_vec(&header_v(version)).expect("json"),
        );
        for (r, id) in records {
            push_record(&mut buf, version, r, *id);
        }
        buf
    }

    fn records_of(data: &[u8], d: &Decoded) -> Vec<Vec<u8>> {
        d.records.iter().map(|r| data[r.clone()].to_vec()).collect()
    }

    #[test]
    fn round_trip() {
        let data = file_bytes(&[b"{\"a\":1}", b"", b"{}"]);
        let d = decode(&data);
        assert_eq!(d.header.as_ref().expect("header"), &header());
        assert_eq!(records_of(&data, &d), [&b"{\"a\":1}"[..], b"", b"{}"]);
        assert_eq!(d.ids, [Some(7), Some(1007), Some(2007)]);
        assert_eq!(d.valid_len, data.len());
        assert!(!d.has_bad_tail(data.len()));
    }

    #[test]
    fn ids_round_trip_and_may_be_absent() {
        let records: [(&[u8], Option<u64>); 4] = [
            (b"{\"a\":1}", Some(u64::MAX)),
            (b"{}", None),
            (b"", Some(0)),
            (b"\x01\x00", None),
        ];
        let data = file_bytes_v(FORMAT_VERSION, &records);
        let d = decode(&data);
        assert_eq!(d.header.as_ref().expect("header").version, 2);
        assert_eq!(
            records_of(&data, &d),
            records.iter().map(|(r, _)| r.to_vec()).collect::<Vec<_>>()
        );
        assert_eq!(d.ids, [Some(u64::MAX), None, Some(0), None]);
        assert_eq!(d.valid_len, data.len());
    }

    /// A crash can leave zeros in a file's tail (extended, never written); eight of them are a
    /// well-formed empty frame. Found by fuzzing: a version-1 file read them back as empty
    /// records that were never written.
    #[test]
    fn zeros_after_the_records_are_not_records() {
        for version in [FORMAT_VERSION_1, FORMAT_VERSION] {
            let records: [(&[u8], Option<u64>); 2] = [(b"{\"a\":1}", None), (b"{}", None)];
            let data = file_bytes_v(version, &records);
            let intact = data.len();
            let mut zeroed = data.clone();
            zeroed.extend_from_slice(&[0; 64]);
            let d = decode(&zeroed);
            assert_eq!(records_of(&zeroed, &d), [&b"{\"a\":1}"[..], b"{}"]);
            assert_eq!(d.valid_len, intact, "version {version}");
            assert!(d.has_bad_tail(zeroed.len()));
        }
    }

    #[test]
    fn version_1_files_are_read_without_ids() {
        // Byte for byte what version 1 wrote: plain record frames.
        let mut data = MAGIC.to_vec();
        push_frame(
            &mut data,
            &serde_json::to_vec(&header_v(FORMAT_VERSION_1)).expect("json"),
        );
        for r in [&b"{\"a\":1}"[..], b"{}", b"\x01abcdefgh"] {
            push_frame(&mut data, r);
        }
        assert_eq!(
            data,
            file_bytes_v(
                FORMAT_VERSION_1,
                &[
                    (b"{\"a\":1}", Some(5)),
                    (b"{}", None),
                    (b"\x01abcdefgh", None)
                ]
            ),
            "push_record writes version 1 frames for version 1 files"
        );
        let d = decode(&data);
        assert_eq!(d.header.as_ref().expect("header").version, 1);
        assert_eq!(
            records_of(&data, &d),
            [&b"{\"a\":1}"[..], b"{}", b"\x01abcdefgh"]
        );
        assert_eq!(d.ids, [None, None, None]);
        assert_eq!(d.valid_len, data.len());

        // Torn tails are cut the same way.
        let intact = data.len();
        let mut torn = data.clone();
        push_frame(&mut torn, b"more");
        for cut in intact..torn.len() {
            let d = decode(&torn[..cut]);
            assert_eq!(d.records.len(), 3);
            assert_eq!(d.valid_len, intact);
        }

        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("old.spool"), &data).expect("write");
        let found = recover(dir.path()).expect("recover");
        assert_eq!(found.spools.len(), 1);
        assert_eq!(found.spools[0].records, 3);
        assert!(found.ids.is_empty());
        let contents = read_sealed(&found.spools[0].path).expect("read");
        assert_eq!(contents.records.len(), 3);
        assert!(contents.ids.is_empty());
    }

    #[test]
    fn unknown_versions_and_bad_tags_are_refused() {
        let data = file_bytes_v(3, &[(b"x", None)]);
        assert!(matches!(
            decode(&data).header,
            Err(HeaderProblem::Corrupt(_))
        ));
        // A frame with a good CRC but an unknown tag, or a tag without its id, ends the
        // intact prefix.
        for bad in [&[7u8, b'x'][..], &[TAG_ID, 1, 2, 3][..], &[][..]] {
            let mut data = file_bytes(&[b"one"]);
            let intact = data.len();
            push_frame(&mut data, bad);
            push_record(&mut data, FORMAT_VERSION, b"two", Some(2));
            let d = decode(&data);
            assert_eq!(records_of(&data, &d), [b"one".to_vec()], "{bad:?}");
            assert_eq!(d.ids, [Some(7)]);
            assert_eq!(d.valid_len, intact);
        }
    }

    #[test]
    fn torn_tail_stops_at_the_last_intact_frame() {
        let full = file_bytes(&[b"one", b"two"]);
        let intact = file_bytes(&[b"one"]).len();
        for cut in intact..full.len() {
            let d = decode(&full[..cut]);
            assert_eq!(records_of(&full, &d), [b"one".to_vec()], "cut at {cut}");
            assert_eq!(d.ids, [Some(7)], "cut at {cut}");
            assert_eq!(d.valid_len, intact);
            assert_eq!(d.has_bad_tail(cut), cut > intact);
        }
    }

    #[test]
    fn bad_crc_stops_reading() {
        let mut data = file_bytes(&[b"one", b"two", b"three"]);
        let second = file_bytes(&[b"one"]).len();
        // Flip a byte of "two" (after the tag and the id).
        data[second + FRAME_OVERHEAD + RECORD_PREFIX_MAX] ^= 0x20;
        let d = decode(&data);
        assert_eq!(records_of(&data, &d), [b"one".to_vec()]);
        assert_eq!(d.valid_len, second);
        // Flip a byte of the id of "two": caught by the CRC too.
        let mut data = file_bytes(&[b"one", b"two", b"three"]);
        data[second + FRAME_OVERHEAD + 3] ^= 0x01;
        assert_eq!(decode(&data).ids, [Some(7)]);
        // An absurd length is a bad frame too, not an allocation.
        let mut data = file_bytes(&[b"one"]);
        data.extend_from_slice(&u32::MAX.to_le_bytes());
        data.extend_from_slice(&[0; 4]);
        assert_eq!(decode(&data).records.len(), 1);
    }

    #[test]
    fn empty_header_only_and_torn_header() {
        assert_eq!(decode(b"").header, Err(HeaderProblem::Torn));
        assert_eq!(decode(&MAGIC[..5]).header, Err(HeaderProblem::Torn));
        let header_only = file_bytes(&[]);
        let d = decode(&header_only);
        assert!(d.header.is_ok());
        assert!(d.records.is_empty());
        for cut in MAGIC.len()..header_only.len() {
            assert_eq!(decode(&header_only[..cut]).header, Err(HeaderProblem::Torn));
        }
        let mut corrupt = header_only.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert!(matches!(
            decode(&corrupt).header,
            Err(HeaderProblem::Corrupt(_))
        ));
        assert!(matches!(
            decode(b"NOTSPOOL....").header,
            Err(HeaderProblem::Corrupt(_))
        ));
    }

    #[test]
    fn spool_file_commit_seal_and_recover() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut f = SpoolFile::create(dir.path(), "a", header()).expect("create");
        f.push(b"one", Some(11));
        f.push(b"two", None);
        assert!(f.is_dirty());
        let n = f.commit().expect("commit");
        assert_eq!(
            n,
            file_bytes_v(FORMAT_VERSION, &[(b"one", Some(11)), (b"two", None)]).len() as u64
        );
        f.push(b"three", Some(13));
        f.commit().expect("commit");
        assert_eq!(f.object_bytes(), 11);
        let sealed = f.seal();
        assert_eq!(sealed.records, 3);
        let contents = read_sealed(&sealed.path).expect("read");
        assert_eq!(contents.records, [&b"one"[..], b"two", b"three"]);
        assert_eq!(contents.ids, [11, 13]);

        // A torn tail, a header-only file, a torn header and a corrupt one.
        let mut torn = file_bytes(&[b"x", b"yy"]);
        torn.truncate(torn.len() - 1);
        fs::write(dir.path().join("torn.spool"), &torn).expect("write");
        fs::write(dir.path().join("hdr.spool"), file_bytes(&[])).expect("write");
        fs::write(dir.path().join("empty.spool"), b"").expect("write");
        fs::write(dir.path().join("bad.spool"), b"CCSPOOL0 nonsense").expect("write");
        fs::write(dir.path().join("other.txt"), b"ignored").expect("write");

        let found = recover(dir.path()).expect("recover");
        let names: Vec<_> = found
            .spools
            .iter()
            .map(|s| {
                s.path
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names.len(), 2);
        assert!(names.contains(&"a.spool".to_string()));
        assert!(names.contains(&"torn.spool".to_string()));
        // Both have the same created_ms: ordered by key, then the ids follow the files.
        let mut ids = found.ids.clone();
        ids.sort_unstable();
        assert_eq!(ids, [7, 11, 13], "the torn record's id is not recovered");
        let torn_path = dir.path().join("torn.spool");
        assert_eq!(
            fs::metadata(&torn_path).expect("meta").len(),
            file_bytes(&[b"x"]).len() as u64,
            "torn tail truncated"
        );
        assert!(!dir.path().join("hdr.spool").exists());
        assert!(!dir.path().join("empty.spool").exists());
        assert!(dir.path().join("failed/bad.spool").exists());
        assert!(dir.path().join("other.txt").exists());
    }

    #[test]
    fn recovered_ids_follow_the_files_oldest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, created_ms, ids) in [("b", 2, [3u64, 4]), ("a", 1, [1, 2]), ("c", 3, [5, 6])] {
            let mut h = header();
            h.created_ms = created_ms;
            let mut f = SpoolFile::create(dir.path(), name, h).expect("create");
            for id in ids {
                f.push(b"{}", Some(id));
            }
            f.commit().expect("commit");
        }
        let found = recover(dir.path()).expect("recover");
        assert_eq!(found.ids, [1, 2, 3, 4, 5, 6]);
        assert_eq!(found.spools.len(), 3);
    }
}
