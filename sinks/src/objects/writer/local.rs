//! `objects.sink = "local"`: batches as files under `objects.dir`, with the S3 key layout.
//!
//! Written to a temporary file beside the target, `fsync`ed, renamed over the target and the
//! directory `fsync`ed: a reader never sees a partial object, a retry overwrites, and `Ok`
//! means the object survives a crash (so the spool file may be deleted).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use super::{Batch, WriteError};

#[derive(Debug, Clone)]
pub struct LocalWriter {
    dir: PathBuf,
}

impl LocalWriter {
    /// Objects go to `<dir>/<key>`; folders are created as needed.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub async fn store(&self, batch: &Batch) -> Result<(), WriteError> {
        let target = self.path_of(&batch.key)?;
        let body = batch.body.clone();
        tokio::task::spawn_blocking(move || write_atomically(&target, &body))
            .await
            .map_err(|e| WriteError::Retryable(format!("local write task: {e}")))?
            .map_err(|e| WriteError::Retryable(format!("local write: {e}")))
    }

    /// `<dir>/<key>`; keys that could leave `dir` are refused (permanently: retrying does not
    /// change a key).
    fn path_of(&self, key: &str) -> Result<PathBuf, WriteError> {
        let rel = Path::new(key);
        let plain = !key.is_empty()
            && !key.ends_with('/')
            && rel.components().all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(WriteError::Permanent(format!(
                "object key {key:?} is not a plain relative path"
            )));
        }
        Ok(self.dir.join(rel))
    }
}

fn write_atomically(target: &Path, body: &[u8]) -> io::Result<()> {
    let parent = target.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent)?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp-{:08x}", fastrand::u32(..)));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(body)?;
        file.sync_all()?;
        fs::rename(&tmp, target)?;
        #[cfg(unix)]
        File::open(parent)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn batch(key: &str, body: &'static [u8]) -> Batch {
        Batch {
            key: key.into(),
            body: Bytes::from_static(body),
            records: vec![Bytes::from_static(body)],
        }
    }

    #[tokio::test]
    async fn writes_creates_folders_and_overwrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = LocalWriter::new(dir.path());
        let key = "p/2024/01/01/00/dev-firehose-1-2024-01-01-00-00-00-x";
        w.store(&batch(key, b"one")).await.expect("stored");
        w.store(&batch(key, b"two")).await.expect("stored again");
        assert_eq!(fs::read(dir.path().join(key)).expect("read"), b"two");
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("p/2024/01/01/00"))
            .expect("dir")
            .collect();
        assert_eq!(leftovers.len(), 1, "no temp files left");
    }

    #[tokio::test]
    async fn refuses_escaping_keys_and_retries_io_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = LocalWriter::new(dir.path());
        for key in ["../x", "/abs", "a/../../b", "", "a/"] {
            let err = w.store(&batch(key, b"x")).await.expect_err(key);
            assert!(!err.is_retryable(), "{key}");
        }
        // A file where a folder must be: an I/O error, retryable.
        fs::write(dir.path().join("blocked"), b"").expect("write");
        let err = w
            .store(&batch("blocked/k", b"x"))
            .await
            .expect_err("cannot create folder");
        assert!(err.is_retryable());
    }
}
