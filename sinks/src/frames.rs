//! Length- and CRC-framed append-only files, shared by the observation spool
//! ([`crate::objects`]), the journal of stored ids and the webhook outbox ([`crate::webhook`]).
//!
//! A frame is `[u32 len][u32 crc32][data]` (little-endian; the CRC covers the data). Frames are
//! appended to a buffer and reach the disk in one write and one `fsync` for many of them
//! ([`FramedFile::commit`]): what was committed before a crash is an intact prefix of the file,
//! so a reader stops at the first torn or bad frame and the tail is what was never committed.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Bytes a frame adds to its data: length and CRC.
pub const FRAME_OVERHEAD: usize = 8;

/// Appends one frame holding `data`.
pub fn push_frame(buf: &mut Vec<u8>, data: &[u8]) {
    push_frame_parts(buf, &[], data);
}

/// Appends one frame whose data is `head` followed by `data`.
pub fn push_frame_parts(buf: &mut Vec<u8>, head: &[u8], data: &[u8]) {
    // Callers keep frames far below u32::MAX (they refuse bigger data before framing it).
    let len = u32::try_from(head.len() + data.len()).unwrap_or(u32::MAX);
    let mut crc = crc32fast::Hasher::new();
    crc.update(head);
    crc.update(data);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.extend_from_slice(head);
    buf.extend_from_slice(data);
}

/// Reads the frame at `at`: the data's range, or `None` when it is torn, fails its CRC, is
/// empty, or claims more than `max_len` bytes (taken as corruption, never allocated).
///
/// Eight zero bytes are a well-formed empty frame (length 0, CRC 0), and zeros are what a crash
/// can leave in a file's tail (extended, never written). No frame ccstream writes is empty (a
/// record, a firing, a header, a batch of ids), so an empty one is where the intact prefix
/// ends. Found by fuzzing twice: the spool read zeros back as records never written, the
/// webhook outbox as firings it could never read, which kept their segment forever.
pub fn frame(data: &[u8], at: usize, max_len: usize) -> Option<Range<usize>> {
    let head = data.get(at..at.checked_add(FRAME_OVERHEAD)?)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len == 0 || len > max_len {
        return None;
    }
    let range = at + FRAME_OVERHEAD..at + FRAME_OVERHEAD + len;
    let bytes = data.get(range.clone())?;
    (crc32fast::hash(bytes) == crc).then_some(range)
}

/// Whether a complete frame (by its length) starts at `at`, whatever its CRC says: a complete
/// frame that fails its CRC is corruption, an incomplete one a torn write.
pub fn is_complete(data: &[u8], at: usize, max_len: usize) -> bool {
    data.get(at..at + 4).is_some_and(|len| {
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        len <= max_len && data.len() >= at + FRAME_OVERHEAD + len
    })
}

/// The regular files in `dir` (created if missing) whose extension is `ext`, in no order.
pub fn files_with_ext(dir: &Path, ext: &str) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_file() && path.extension().and_then(|e| e.to_str()) == Some(ext) {
            found.push(path);
        }
    }
    Ok(found)
}

/// Folder below a file's directory for files that cannot be read or stored.
pub const FAILED_DIR: &str = "failed";

/// Moves a file to `<its dir>/failed/`, keeping its name, durably; returns the new path.
///
/// A name already taken there gets a `.1`, `.2`... suffix: ids restart (an outbox's next
/// segment is 1 again once every segment is gone), and a second unreadable file of the same
/// name must not replace the first, which an operator may not have looked at yet.
pub fn move_to_failed(path: &Path) -> io::Result<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let failed = dir.join(FAILED_DIR);
    std::fs::create_dir_all(&failed)?;
    let name = path.file_name().unwrap_or_default();
    let mut to = failed.join(name);
    let mut suffix = 0u32;
    // One process owns the directory, so nothing takes the name between the check and the move.
    while to.try_exists()? {
        suffix += 1;
        let mut taken = name.to_owned();
        taken.push(format!(".{suffix}"));
        to = failed.join(taken);
    }
    std::fs::rename(path, &to)?;
    sync_dir(&failed)?;
    sync_dir(dir)?;
    Ok(to)
}

/// Makes a directory's entries (created, renamed, removed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// A file written by group commits: frames are pushed into a buffer and made durable together.
#[derive(Debug)]
pub struct FramedFile {
    path: PathBuf,
    file: File,
    /// Bytes of the file known durable.
    committed: u64,
    /// Bytes not yet durable.
    pending: Vec<u8>,
}

impl FramedFile {
    /// Creates `path` (it must not exist) with `preamble` (magic and header frame) pending. The
    /// caller makes the directory durable ([`sync_dir`]) before relying on the file.
    pub fn create(path: PathBuf, preamble: &[u8]) -> io::Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let mut pending = Vec::with_capacity(64 * 1024);
        pending.extend_from_slice(preamble);
        Ok(Self {
            path,
            file,
            committed: 0,
            pending,
        })
    }

    /// Reopens a file whose first `valid_len` bytes are intact (as recovery found it) to append
    /// after them; a torn tail beyond is cut.
    pub fn reopen(path: PathBuf, valid_len: u64) -> io::Result<Self> {
        let file = OpenOptions::new().write(true).open(&path)?;
        if file.metadata()?.len() != valid_len {
            file.set_len(valid_len)?;
            file.sync_data()?;
        }
        Ok(Self {
            path,
            file,
            committed: valid_len,
            pending: Vec::new(),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one frame (in memory until the next commit); returns its offset in the file.
    pub fn push_parts(&mut self, head: &[u8], data: &[u8]) -> u64 {
        let at = self.len();
        push_frame_parts(&mut self.pending, head, data);
        at
    }

    /// Appends frames framed elsewhere ([`push_frame_parts`]), as they are; returns the offset
    /// of the first in the file.
    pub fn push_framed(&mut self, frames: &[u8]) -> u64 {
        let at = self.len();
        self.pending.extend_from_slice(frames);
        at
    }

    /// Appends one frame whose data `write` puts straight into the pending buffer (no copy of
    /// its own); returns the frame's offset in the file and its data length. When `write`
    /// fails, or writes more than `max_len` bytes, nothing is appended.
    pub fn push_with(
        &mut self,
        max_len: usize,
        write: impl FnOnce(&mut Vec<u8>) -> io::Result<()>,
    ) -> io::Result<(u64, usize)> {
        let at = self.len();
        let start = self.pending.len();
        self.pending.extend_from_slice(&[0; FRAME_OVERHEAD]);
        let written = write(&mut self.pending);
        let len = self.pending.len() - start - FRAME_OVERHEAD;
        if let Err(e) = written {
            self.pending.truncate(start);
            return Err(e);
        }
        let Some(len32) = u32::try_from(len).ok().filter(|_| len <= max_len) else {
            self.pending.truncate(start);
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("frame of {len} bytes, more than the {max_len} allowed"),
            ));
        };
        let crc = crc32fast::hash(&self.pending[start + FRAME_OVERHEAD..]);
        self.pending[start..start + 4].copy_from_slice(&len32.to_le_bytes());
        self.pending[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        Ok((at, len))
    }

    /// Bytes of the file once what is pending is committed.
    pub fn len(&self) -> u64 {
        self.committed + self.pending.len() as u64
    }

    /// Whether the file holds nothing, committed or pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes known durable.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Whether frames wait for a commit.
    pub fn is_dirty(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes the pending bytes at the end of the durable prefix and `fsync`s; returns the bytes
    /// made durable. After an error nothing is known durable beyond the earlier commits; calling
    /// again rewrites the same bytes at the same place (and so also repairs a write that went
    /// partly through, or pages a failed `fsync` dropped).
    pub fn commit(&mut self) -> io::Result<u64> {
        if self.pending.is_empty() {
            return Ok(0);
        }
        self.file.seek(SeekFrom::Start(self.committed))?;
        self.file.write_all(&self.pending)?;
        self.file.sync_data()?;
        let n = self.pending.len() as u64;
        self.committed += n;
        self.pending.clear();
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_stop_at_damage() {
        let mut buf = Vec::new();
        push_frame(&mut buf, b"one");
        push_frame_parts(&mut buf, b"tw", b"o");
        let first = frame(&buf, 0, 100).expect("first");
        assert_eq!(&buf[first.clone()], b"one");
        let second = frame(&buf, first.end, 100).expect("second");
        assert_eq!(&buf[second.clone()], b"two");
        assert_eq!(second.end, buf.len());
        // Torn anywhere inside the second frame: gone, and incomplete.
        for cut in first.end..buf.len() {
            assert!(frame(&buf[..cut], first.end, 100).is_none());
            assert!(!is_complete(&buf[..cut], first.end, 100));
        }
        // A flipped data bit: complete, but refused.
        let mut bad = buf.clone();
        bad[second.start] ^= 1;
        assert!(frame(&bad, first.end, 100).is_none());
        assert!(is_complete(&bad, first.end, 100));
        // Longer than allowed: refused without reading further.
        assert!(frame(&buf, 0, 2).is_none());
        assert!(frame(&buf, usize::MAX - 3, 100).is_none());
    }

    /// Zeros, which a crash can leave in a file's tail, hold a well-formed empty frame (length
    /// 0, CRC 0); it is where the intact prefix ends.
    #[test]
    fn an_empty_frame_is_not_a_frame() {
        let mut buf = Vec::new();
        push_frame(&mut buf, b"one");
        let intact = buf.len();
        buf.extend_from_slice(&[0; 64]);
        assert_eq!(&buf[frame(&buf, 0, 100).expect("first")], b"one");
        assert!(frame(&buf, intact, 100).is_none());
        assert!(frame(&[0; FRAME_OVERHEAD], 0, 100).is_none());
    }

    /// Outbox segment ids restart at 1 once every segment is gone, so a second unreadable
    /// `1.seg` must not replace the first in `failed/`.
    #[test]
    fn a_name_taken_in_failed_gets_a_suffix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("1.seg");
        let mut moved = Vec::new();
        for content in ["first", "second", "third"] {
            std::fs::write(&path, content).expect("write");
            moved.push(move_to_failed(&path).expect("move"));
        }
        let failed = dir.path().join(FAILED_DIR);
        assert_eq!(
            moved,
            [
                failed.join("1.seg"),
                failed.join("1.seg.1"),
                failed.join("1.seg.2")
            ]
        );
        for (to, content) in moved.iter().zip(["first", "second", "third"]) {
            assert_eq!(std::fs::read_to_string(to).expect("read"), content);
        }
        assert!(!path.exists());
    }

    #[test]
    fn framed_file_commits_and_reopens_after_its_intact_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let mut f = FramedFile::create(path.clone(), b"MAGIC").expect("create");
        assert_eq!(f.push_parts(b"", b"a"), 5);
        assert!(f.is_dirty());
        assert_eq!(f.commit().expect("commit"), 5 + FRAME_OVERHEAD as u64 + 1);
        let at = f.push_parts(b"h", b"bc");
        assert_eq!(at, f.committed());
        f.commit().expect("commit");
        let data = std::fs::read(&path).expect("read");
        assert_eq!(data.len() as u64, f.len());
        assert_eq!(&data[frame(&data, at as usize, 10).expect("frame")], b"hbc");
        drop(f);

        // A torn tail is cut when reopened at the intact length; appends follow it.
        std::fs::write(&path, [&data[..], b"\x05\x00"].concat()).expect("tear");
        let mut f = FramedFile::reopen(path.clone(), data.len() as u64).expect("reopen");
        assert_eq!(f.push_parts(b"", b"d"), data.len() as u64);
        f.commit().expect("commit");
        let again = std::fs::read(&path).expect("read");
        assert_eq!(&again[frame(&again, data.len(), 10).expect("frame")], b"d");
        assert!(FramedFile::create(path, b"").is_err(), "never overwrites");

        // Written in place: the same frame as push_parts; a refusal leaves nothing behind.
        let other = dir.path().join("g");
        let mut g = FramedFile::create(other.clone(), b"").expect("create");
        let (at, len) = g
            .push_with(10, |buf| {
                buf.extend_from_slice(b"hbc");
                Ok(())
            })
            .expect("push");
        assert_eq!((at, len), (0, 3));
        let before = g.len();
        assert!(g
            .push_with(2, |buf| {
                buf.extend_from_slice(b"abc");
                Ok(())
            })
            .is_err());
        assert!(g.push_with(10, |_| Err(io::Error::other("no"))).is_err());
        assert_eq!(g.len(), before);
        g.commit().expect("commit");
        let data = std::fs::read(&other).expect("read");
        assert_eq!(&data[frame(&data, 0, 10).expect("frame")], b"hbc");
        assert_eq!(data.len() as u64, before);
    }
}
