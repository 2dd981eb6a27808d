//! The `[objects]` configuration section: defaults in one place, `validate()` names the bad key.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use ccstream_common::ConfigError;

/// Default values of [`ObjectsConfig`], in one place.
pub mod defaults {
    /// Local sink directory.
    pub const DIR: &str = "data/observations";
    /// Object size that rolls a batch: 5 MiB (spec 5.2).
    pub const MAX_BYTES: u64 = 5 * 1024 * 1024;
    /// Batch age that rolls it: 5 minutes (spec 5.2).
    pub const MAX_AGE_SECS: u64 = 300;
    /// Spool directory.
    pub const SPOOL_DIR: &str = "data/spool";
    /// Spool size past which ccstream stops taking (and acking) observations: 1 GiB.
    pub const SPOOL_MAX_BYTES: u64 = 1024 * 1024 * 1024;
    /// Stores in flight at once.
    pub const UPLOAD_CONCURRENCY: usize = 4;
    /// First retry backoff ceiling, milliseconds.
    pub const RETRY_INITIAL_MS: u64 = 500;
    /// Largest retry backoff, milliseconds.
    pub const RETRY_MAX_MS: u64 = 30_000;
    /// How long a group commit may wait for more records while they keep arriving, µs.
    pub const COMMIT_LINGER_US: u64 = 1_000;
}

// Upper bounds that keep a typo from becoming a resource problem.
/// S3's single PUT limit is 5 GiB; an object rolls well before that.
const MAX_MAX_BYTES: u64 = 5 * 1024 * 1024 * 1024;
const MAX_MAX_AGE_SECS: u64 = 24 * 3600;
const MAX_UPLOAD_CONCURRENCY: usize = 256;
const MAX_RETRY_MS: u64 = 3_600_000;
/// A linger adds to every ack's latency under load: past 100 ms it would be a stall.
const MAX_COMMIT_LINGER_US: u64 = 100_000;

/// Where sealed batches are stored (`objects.sink`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// Files under `objects.dir`, with the S3 key layout.
    #[default]
    Local,
    /// Objects in `objects.bucket`.
    S3,
    /// Records to the Kinesis Firehose `objects.delivery_stream`.
    Firehose,
    /// Nowhere: batches are spooled and acked, then dropped.
    None,
}

/// What separates records in an object (`objects.delimiter`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delimiter {
    /// Records back to back, as spec 5.2 says ("not separated by newline").
    #[default]
    None,
    /// A `\n` after every record (JSON lines).
    Newline,
}

impl Delimiter {
    /// The bytes written after each record.
    pub fn bytes(self) -> &'static [u8] {
        match self {
            Delimiter::None => b"",
            Delimiter::Newline => b"\n",
        }
    }
}

/// How object bodies are encoded (`objects.compression`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// The records as they are.
    #[default]
    None,
    /// gzip; the key gets `.gz`.
    Gzip,
}

/// The `[objects]` section: how observations are batched, spooled and stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectsConfig {
    /// Where batches go: `local` (default), `s3`, `firehose` or `none`.
    pub sink: SinkKind,
    /// Directory of the `local` sink; objects are files at `<dir>/<key>`.
    pub dir: PathBuf,
    /// Prepended to every key (`"observations/"`; empty by default). Error records go under
    /// `<prefix>errors/`.
    pub prefix: String,
    /// A batch rolls when its object (records and delimiters, before compression) would pass
    /// this many bytes. Default 5 MiB (spec 5.2); a single larger record is an object alone.
    pub max_bytes: u64,
    /// A batch rolls this many seconds after its first record. Default 300 (spec 5.2).
    pub max_age_secs: u64,
    /// What separates records in an object: `none` (default, spec 5.2) or `newline`.
    pub delimiter: Delimiter,
    /// Object body encoding: `none` (default) or `gzip` (the key gets `.gz`).
    pub compression: Compression,
    /// Directory of the crash-safe spool: one file per open or not yet stored batch.
    pub spool_dir: PathBuf,
    /// When the spool holds more than this many bytes (the store is down or slow), ccstream stops
    /// taking observations, and so stops acking them: the broker keeps them. Default 1 GiB; at
    /// least `max_bytes` (a few times it, so that storing a batch does not stop intake).
    pub spool_max_bytes: u64,
    /// Batches stored at once (1-256).
    pub upload_concurrency: usize,
    /// Backoff ceiling before the first retry of a failed store, ms; it doubles per attempt,
    /// with jitter. Stores are retried until they succeed or ccstream stops.
    pub retry_initial_ms: u64,
    /// Cap on one retry backoff, ms.
    pub retry_max_ms: u64,
    /// While observations keep arriving, a group commit of the spool waits up to this many
    /// microseconds from the start of its round for more, so that one `fsync` (and one flush
    /// of PUBACKs) covers more of them; it stops early when a quarter millisecond brings
    /// nothing. A lone observation is committed at once. Default 1000, at most 100000; 0
    /// commits at once always.
    pub commit_linger_us: u64,
    /// S3 bucket (required for `sink = "s3"`).
    pub bucket: Option<String>,
    /// AWS region of the bucket or delivery stream; default: the standard AWS chain.
    pub region: Option<String>,
    /// Endpoint override (`http://127.0.0.1:8333` for SeaweedFS or MinIO).
    pub endpoint: Option<String>,
    /// Path-style S3 addressing (`<endpoint>/<bucket>/<key>`), for S3-compatible stores.
    pub path_style: bool,
    /// Kinesis Firehose delivery stream (required for `sink = "firehose"`).
    pub delivery_stream: Option<String>,
}

impl Default for ObjectsConfig {
    fn default() -> Self {
        Self {
            sink: SinkKind::default(),
            dir: PathBuf::from(defaults::DIR),
            prefix: String::new(),
            max_bytes: defaults::MAX_BYTES,
            max_age_secs: defaults::MAX_AGE_SECS,
            delimiter: Delimiter::default(),
            compression: Compression::default(),
            spool_dir: PathBuf::from(defaults::SPOOL_DIR),
            spool_max_bytes: defaults::SPOOL_MAX_BYTES,
            upload_concurrency: defaults::UPLOAD_CONCURRENCY,
            retry_initial_ms: defaults::RETRY_INITIAL_MS,
            retry_max_ms: defaults::RETRY_MAX_MS,
            commit_linger_us: defaults::COMMIT_LINGER_US,
            bucket: None,
            region: None,
            endpoint: None,
            path_style: false,
            delivery_stream: None,
        }
    }
}

impl ObjectsConfig {
    /// Checks every field; the error names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.sink == SinkKind::Local && self.dir.as_os_str().is_empty() {
            return Err(ConfigError::new("objects.dir", "must not be empty"));
        }
        if self.prefix.starts_with('/') || self.prefix.split('/').any(|part| part == "..") {
            return Err(ConfigError::new(
                "objects.prefix",
                format!(
                    "must be a relative key prefix without `..`, got {:?}",
                    self.prefix
                ),
            ));
        }
        ConfigError::check_range("objects.max_bytes", self.max_bytes, 1, MAX_MAX_BYTES)?;
        ConfigError::check_range(
            "objects.max_age_secs",
            self.max_age_secs,
            1,
            MAX_MAX_AGE_SECS,
        )?;
        if self.spool_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("objects.spool_dir", "must not be empty"));
        }
        if self.spool_max_bytes < self.max_bytes {
            return Err(ConfigError::new(
                "objects.spool_max_bytes",
                format!(
                    "must be at least max_bytes ({}), got {}",
                    self.max_bytes, self.spool_max_bytes
                ),
            ));
        }
        ConfigError::check_range(
            "objects.upload_concurrency",
            self.upload_concurrency as u64,
            1,
            MAX_UPLOAD_CONCURRENCY as u64,
        )?;
        ConfigError::check_range(
            "objects.retry_initial_ms",
            self.retry_initial_ms,
            1,
            MAX_RETRY_MS,
        )?;
        ConfigError::check_range("objects.retry_max_ms", self.retry_max_ms, 1, MAX_RETRY_MS)?;
        ConfigError::check_range(
            "objects.commit_linger_us",
            self.commit_linger_us,
            0,
            MAX_COMMIT_LINGER_US,
        )?;
        if self.retry_max_ms < self.retry_initial_ms {
            return Err(ConfigError::new(
                "objects.retry_max_ms",
                format!(
                    "must be at least retry_initial_ms ({}), got {}",
                    self.retry_initial_ms, self.retry_max_ms
                ),
            ));
        }
        match self.sink {
            SinkKind::S3 if blank(&self.bucket) => {
                return Err(ConfigError::new(
                    "objects.bucket",
                    "is required when sink = \"s3\"",
                ));
            }
            SinkKind::Firehose if blank(&self.delivery_stream) => {
                return Err(ConfigError::new(
                    "objects.delivery_stream",
                    "is required when sink = \"firehose\"",
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// Age at which a batch rolls.
    pub fn max_age(&self) -> Duration {
        Duration::from_secs(self.max_age_secs)
    }

    pub fn commit_linger(&self) -> Duration {
        Duration::from_micros(self.commit_linger_us)
    }
}

fn blank(value: &Option<String>) -> bool {
    value.as_deref().is_none_or(|v| v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_as_documented() {
        let cfg = ObjectsConfig::default();
        cfg.validate().expect("defaults validate");
        assert_eq!(cfg.sink, SinkKind::Local);
        assert_eq!(cfg.max_bytes, 5_242_880);
        assert_eq!(cfg.max_age_secs, 300);
        assert_eq!(cfg.spool_max_bytes, 1 << 30);
        assert_eq!(cfg.upload_concurrency, 4);
        assert_eq!(cfg.delimiter, Delimiter::None);
        assert_eq!(cfg.compression, Compression::None);
        assert_eq!(cfg.commit_linger(), Duration::from_millis(1));
    }

    #[test]
    fn parses_and_rejects_unknown_keys() {
        let cfg: ObjectsConfig = serde_json::from_str(
            r#"{"sink":"s3","bucket":"b","delimiter":"newline","compression":"gzip","max_bytes":10}"#,
        )
        .expect("parses");
        assert_eq!(cfg.sink, SinkKind::S3);
        assert_eq!(cfg.delimiter, Delimiter::Newline);
        assert_eq!(cfg.compression, Compression::Gzip);
        assert_eq!(cfg.max_age_secs, 300, "unset keys keep their default");
        cfg.validate().expect("valid");
        assert!(serde_json::from_str::<ObjectsConfig>(r#"{"max_byte":1}"#).is_err());
    }

    #[test]
    fn validation_names_the_key() {
        let bad = |f: fn(&mut ObjectsConfig)| {
            let mut cfg = ObjectsConfig::default();
            f(&mut cfg);
            cfg.validate().expect_err("invalid").to_string()
        };
        assert!(bad(|c| c.max_bytes = 0).starts_with("objects.max_bytes: "));
        assert!(bad(|c| c.max_age_secs = 0).starts_with("objects.max_age_secs: "));
        assert!(bad(|c| c.upload_concurrency = 0).starts_with("objects.upload_concurrency: "));
        assert!(bad(|c| c.retry_max_ms = 1).starts_with("objects.retry_max_ms: "));
        assert!(bad(|c| c.sink = SinkKind::S3).starts_with("objects.bucket: "));
        assert!(bad(|c| c.sink = SinkKind::Firehose).starts_with("objects.delivery_stream: "));
        assert!(bad(|c| c.prefix = "../x/".into()).starts_with("objects.prefix: "));
        assert!(bad(|c| c.spool_dir = PathBuf::new()).starts_with("objects.spool_dir: "));
        assert!(bad(|c| c.spool_max_bytes = 1000).starts_with("objects.spool_max_bytes: "));
        assert!(bad(|c| c.commit_linger_us = 100_001).starts_with("objects.commit_linger_us: "));
        let cfg = ObjectsConfig {
            commit_linger_us: 0,
            ..ObjectsConfig::default()
        };
        cfg.validate().expect("no linger is valid");
    }
}
