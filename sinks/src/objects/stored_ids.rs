//! The ids of the records of recently stored batches, kept across restarts.
//!
//! A record is acked once it is durable in the spool, but the PUBACK may still be on its way
//! (or held behind an earlier message) when its batch is stored and its spool file deleted. If
//! the process dies then, the broker delivers the message again, and the spool no longer has
//! its id. So before a stored batch's spool file is deleted, the ids of its records are
//! appended here; at start-up they are returned with the ids of the recovered spool files
//! ([`super::ObjectSinkHandle::take_recovered_ids`]).
//!
//! Files `<spool_dir>/stored-ids-<generation>.log`, each a sequence of frames (the spool's
//! framing: `[u32 len][u32 crc32][ids, u64 little-endian each]`), one per stored batch, `fsync`ed.
//! When the current file holds `per_file` ids, the next generation starts and the one before
//! the current is removed: the journal keeps the last `per_file` to `2 × per_file` ids. A torn
//! last frame (a crash while writing) is cut at start-up.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tracing::warn;

use super::spool::{frame, push_frame, sync_dir};

/// Name prefix of the journal's files.
pub const FILE_PREFIX: &str = "stored-ids-";
/// Extension of the journal's files.
pub const FILE_EXT: &str = "log";
/// Ids per journal file before the next one starts (the journal keeps up to twice as many).
pub const IDS_PER_FILE: usize = 100_000;

/// The journal of stored ids (see the module docs). Blocking I/O: call it off the runtime's
/// workers.
#[derive(Debug)]
pub struct StoredIds {
    dir: PathBuf,
    per_file: usize,
    generation: u64,
    /// The current generation's file, opened at its end; `None` until first written.
    file: Option<File>,
    /// Ids in the current generation's file.
    count: usize,
}

impl StoredIds {
    /// Opens the journal in `dir`: returns it and the ids it holds, oldest first. Files of
    /// older generations than the last two are removed; a torn tail is cut.
    pub fn open(dir: &Path, per_file: usize) -> io::Result<(Self, Vec<u64>)> {
        fs::create_dir_all(dir)?;
        let mut generations = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if let Some(generation) = generation_of(&entry.file_name().to_string_lossy()) {
                if entry.file_type()?.is_file() {
                    generations.push(generation);
                }
            }
        }
        generations.sort_unstable();
        let keep = generations.len().saturating_sub(2);
        for old in generations.drain(..keep) {
            fs::remove_file(path_of(dir, old))?;
        }
        let mut ids = Vec::new();
        let mut count = 0;
        for &generation in &generations {
            let path = path_of(dir, generation);
            let data = fs::read(&path)?;
            let (read, valid_len) = decode(&data);
            if valid_len < data.len() {
                warn!(path = %path.display(), dropped_bytes = data.len() - valid_len, "cutting the torn tail of the stored-ids journal");
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(valid_len as u64)?;
                file.sync_data()?;
            }
            count = read.len();
            ids.extend(read);
        }
        let journal = Self {
            dir: dir.to_path_buf(),
            per_file: per_file.max(1),
            generation: generations.last().copied().unwrap_or(0),
            file: None,
            count,
        };
        Ok((journal, ids))
    }

    /// Appends the ids of one stored batch and makes them durable.
    pub fn record(&mut self, ids: &[u64]) -> io::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        if self.count >= self.per_file {
            self.rotate()?;
        }
        let mut frame = Vec::with_capacity(ids.len() * 8 + 8);
        let data: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
        push_frame(&mut frame, &data);
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(self.open_current()?),
        };
        let at = file.seek(SeekFrom::End(0))?;
        if let Err(e) = file.write_all(&frame).and_then(|()| file.sync_data()) {
            // Leave no torn frame behind a later good one.
            let _ = file.set_len(at);
            return Err(e);
        }
        self.count += ids.len();
        Ok(())
    }

    /// Starts the next generation and removes the one before the current.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        let previous = self.generation;
        self.generation += 1;
        self.count = 0;
        self.file = Some(self.open_current()?);
        if let Some(older) = previous.checked_sub(1) {
            match fs::remove_file(path_of(&self.dir, older)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    fn open_current(&self) -> io::Result<File> {
        let path = path_of(&self.dir, self.generation);
        let existed = path.exists();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        if !existed {
            sync_dir(&self.dir)?;
        }
        Ok(file)
    }
}

fn path_of(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("{FILE_PREFIX}{generation:020}.{FILE_EXT}"))
}

fn generation_of(name: &str) -> Option<u64> {
    name.strip_prefix(FILE_PREFIX)?
        .strip_suffix(FILE_EXT)?
        .strip_suffix('.')?
        .parse()
        .ok()
}

/// The ids of a journal file's intact frames and the length of its intact prefix; pure.
fn decode(data: &[u8]) -> (Vec<u64>, usize) {
    let mut ids = Vec::new();
    let mut at = 0;
    while let Some(range) = frame(data, at) {
        if range.len() % 8 != 0 {
            break;
        }
        ids.extend(
            data[range.clone()]
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])),
        );
        at = range.end;
    }
    (ids, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn ids_survive_a_restart_and_rotation_keeps_the_last_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut j, ids) = StoredIds::open(dir.path(), 4).expect("open");
        assert!(ids.is_empty());
        assert!(
            files(dir.path()).is_empty(),
            "no file until the first write"
        );
        j.record(&[1, 2, 3]).expect("record");
        j.record(&[]).expect("nothing");
        drop(j);
        let (mut j, ids) = StoredIds::open(dir.path(), 4).expect("open");
        assert_eq!(ids, [1, 2, 3]);
        j.record(&[4, 5]).expect("record"); // generation 0 now holds 5 ids: full
        j.record(&[6]).expect("record"); // generation 1
        j.record(&[7, 8, 9, 10]).expect("record"); // generation 1 full
        j.record(&[11]).expect("record"); // generation 2; generation 0 removed
        assert_eq!(files(dir.path()).len(), 2);
        drop(j);
        let (_, ids) = StoredIds::open(dir.path(), 4).expect("open");
        assert_eq!(ids, [6, 7, 8, 9, 10, 11]);
    }

    #[test]
    fn a_torn_tail_is_cut_and_writing_goes_on_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut j, _) = StoredIds::open(dir.path(), 100).expect("open");
        j.record(&[1, 2]).expect("record");
        j.record(&[3]).expect("record");
        drop(j);
        let path = path_of(dir.path(), 0);
        let len = fs::metadata(&path).expect("meta").len();
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        file.set_len(len - 3).expect("tear");
        drop(file);
        let (mut j, ids) = StoredIds::open(dir.path(), 100).expect("open");
        assert_eq!(ids, [1, 2]);
        j.record(&[4]).expect("record");
        drop(j);
        let (_, ids) = StoredIds::open(dir.path(), 100).expect("open");
        assert_eq!(ids, [1, 2, 4]);
    }

    #[test]
    fn old_generations_and_foreign_files_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (generation, ids) in [(3u64, [30u64]), (5, [50]), (9, [90])] {
            let mut data = Vec::new();
            push_frame(&mut data, &ids[0].to_le_bytes());
            fs::write(path_of(dir.path(), generation), data).expect("write");
        }
        fs::write(dir.path().join("x.spool"), b"not ours").expect("write");
        fs::write(dir.path().join("stored-ids-abc.log"), b"not ours").expect("write");
        let (mut j, ids) = StoredIds::open(dir.path(), 1).expect("open");
        assert_eq!(ids, [50, 90]);
        assert!(!path_of(dir.path(), 3).exists());
        assert!(dir.path().join("x.spool").exists());
        j.record(&[100]).expect("record"); // generation 9 is full: 10 starts, 8 (none) goes
        drop(j);
        let (_, ids) = StoredIds::open(dir.path(), 1).expect("open");
        assert_eq!(ids, [90, 100]);
        assert_eq!(
            generation_of("stored-ids-00000000000000000007.log"),
            Some(7)
        );
        assert_eq!(generation_of("stored-ids-7.spool"), None);
    }
}
