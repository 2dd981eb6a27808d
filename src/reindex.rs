//! `ccstream reindex [--since T] [--until T] [--prefix P] [--bucket B] [--rate N]`: reads the
//! stored objects (the local directory or S3 of `[objects]`, or any S3 bucket such as Firehose's
//! destination) and bulk-indexes their records into `search.url`, through the same indexer as
//! the service. Documents are named by the hash of the record ([`document_id`]), so a reindex
//! overwrites what is there instead of adding copies: it can fill a gap the index missed, or
//! rebuild an index, and can run beside the service.
//!
//! [`document_id`]: sinks::search::bulk::document_id

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use serde_json::json;
use sinks::objects::readback::{decode, record_timestamp, split_records};
use sinks::objects::writer::s3::{S3Settings, S3Writer};
use sinks::objects::SinkKind;
use sinks::search::SearchIndexer;
use sinks::webhook::replay::parse_time;

use crate::config::Config;
use crate::dead_letters::time_flag;

/// What to reindex.
#[derive(Debug, clap::Args)]
pub struct ReindexArgs {
    /// Only records whose timestamp is at or after this time (RFC 3339, or a date: midnight UTC).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only records whose timestamp is before this time.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Key prefix of the objects (default: objects.prefix).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Read this S3 bucket (objects.region, endpoint and path_style) instead of `[objects]`'s
    /// sink: Firehose's destination bucket, say.
    #[arg(long)]
    pub bucket: Option<String>,
    /// Records per second at most (0: as fast as OpenSearch takes them).
    #[arg(long, default_value_t = 5_000)]
    pub rate: u64,
    /// Read every object, not only those whose key's hour is near the range: for records whose
    /// own timestamps lie far from when they were received (devices that buffer).
    #[arg(long)]
    pub scan_all: bool,
}

/// How long the indexer gets to finish what was read.
const DRAIN: Duration = Duration::from_secs(600);
/// Objects whose key hour lies this far outside the range, beyond the longest a batch stays
/// open (`objects.max_age_secs`), may still hold records in it: a batch's key is the receive
/// time of its first record, and records may carry their own timestamps.
const KEY_MARGIN_MS: u64 = 3_600_000;
const HOUR_MS: u64 = 3_600_000;
/// How far the rate limiter catches up after a pause (reading objects out of range, a full
/// queue): a second's worth, not a burst of everything the pause saved.
const RATE_BURST: Duration = Duration::from_secs(1);

/// Where the objects are.
enum Source {
    Local(PathBuf),
    S3(S3Writer),
}

/// Runs the reindex; the JSON report to print.
pub async fn run(config: &Config, args: &ReindexArgs) -> anyhow::Result<String> {
    let since = time_flag("since", args.since.as_deref())?.unwrap_or(0);
    let until = time_flag("until", args.until.as_deref())?.unwrap_or(u64::MAX);
    anyhow::ensure!(since < until, "--since must be before --until");
    anyhow::ensure!(
        config.search.url.is_some(),
        "search.url is not set: nothing to index into"
    );
    let prefix = args
        .prefix
        .clone()
        .unwrap_or_else(|| config.objects.prefix.clone());
    let source = source(config, args).await?;
    let keys = list(&source, &prefix).await?;
    // Error records are never indexed, under the prefix given or the configured one.
    let errors = [
        format!("{prefix}errors/"),
        format!("{}errors/", config.objects.prefix),
    ];
    let margin = KEY_MARGIN_MS.saturating_add(config.objects.max_age_secs.saturating_mul(1000));
    let keys: Vec<String> = keys
        .into_iter()
        .filter(|k| !errors.iter().any(|e| k.starts_with(e.as_str())))
        .filter(|k| args.scan_all || key_may_hold(k, &prefix, since, until, margin))
        .collect();

    let refused = Arc::new(AtomicU64::new(0));
    let on_refused = {
        let refused = Arc::clone(&refused);
        move |_record: Bytes, reason: String| {
            if refused.fetch_add(1, Ordering::Relaxed) < 10 {
                eprintln!("ccstream: a record was refused: {reason}");
            }
            async {}
        }
    };
    let (indexer, task) = SearchIndexer::start(&config.search, on_refused)
        .context("starting the OpenSearch indexer")?;
    let mut pacer = Pacer::new(args.rate);
    let started = Instant::now();
    let (mut records, mut skipped, mut untimed) = (0u64, 0u64, 0u64);
    let mut last_progress = Instant::now();
    let mut unreadable = Vec::new();
    for (n, key) in keys.iter().enumerate() {
        // One bad object (torn, not JSON, archived) is reported and the others go on.
        let (data, ranges) = match read_records(&source, key).await {
            Ok(read) => read,
            Err(e) => {
                eprintln!("ccstream: reindex: skipped {key}: {e:#}");
                unreadable.push(key.clone());
                continue;
            }
        };
        for range in ranges {
            let record = &data[range];
            let Some(ts) = record_timestamp(record) else {
                untimed += 1;
                continue;
            };
            if !(since..until).contains(&ts) {
                skipped += 1;
                continue;
            }
            // The queue is bounded: wait for room instead of dropping (this is no hot path).
            indexer
                .send(Bytes::copy_from_slice(record), ts)
                .await
                .context("the indexer stopped")?;
            records += 1;
            pacer.pace().await;
        }
        if last_progress.elapsed() >= Duration::from_secs(1) || n + 1 == keys.len() {
            last_progress = Instant::now();
            let rate = records as f64 / started.elapsed().as_secs_f64().max(0.001);
            eprintln!(
                "ccstream: reindex: {}/{} objects, {records} records, {rate:.0}/s",
                n + 1,
                keys.len()
            );
        }
    }
    if untimed > 0 {
        eprintln!(
            "ccstream: reindex: {untimed} records have no numeric timestamp (the service indexed \
             them under their receive time, which records do not keep): not indexed"
        );
    }
    eprintln!("ccstream: reindex: everything read; waiting for OpenSearch to take the rest");
    indexer.close(DRAIN);
    let stats = task.await.context("the indexer task")?;
    let report = json!({
        "objects": keys.len(), "records": records, "indexed": stats.indexed,
        "refused": stats.item_failures, "dropped": stats.dropped,
        "outside_range": skipped, "without_timestamp": untimed,
        "unreadable_objects": unreadable.len(),
    });
    anyhow::ensure!(
        stats.dropped == 0 && stats.item_failures == 0 && unreadable.is_empty(),
        "{report}: not everything was indexed (dropped: OpenSearch unreachable until the \
         retries ran out; refused: OpenSearch refused records, see above; unreadable objects: \
         see above); what was indexed stays, and running the command again only overwrites it"
    );
    Ok(format!("{report}\n"))
}

async fn source(config: &Config, args: &ReindexArgs) -> anyhow::Result<Source> {
    let o = &config.objects;
    let bucket = match (&args.bucket, o.sink) {
        (Some(bucket), _) => bucket.clone(),
        (None, SinkKind::Local) => return Ok(Source::Local(o.dir.clone())),
        (None, SinkKind::S3) => o.bucket.clone().unwrap_or_default(),
        (None, SinkKind::Firehose) => {
            anyhow::bail!(
                "objects.sink = \"firehose\": give the delivery stream's bucket with --bucket"
            )
        }
        (None, SinkKind::None) => anyhow::bail!("objects.sink = \"none\" stores nothing to read"),
    };
    let writer = S3Writer::new(S3Settings {
        bucket,
        region: o.region.clone(),
        endpoint: o.endpoint.clone(),
        path_style: o.path_style,
        credentials: None,
    })
    .await
    .context("the S3 client")?;
    Ok(Source::S3(writer))
}

/// Every key under `prefix`, sorted (so by time within a prefix).
async fn list(source: &Source, prefix: &str) -> anyhow::Result<Vec<String>> {
    let mut keys = Vec::new();
    match source {
        Source::Local(dir) => walk(dir, dir, &mut keys)?,
        Source::S3(writer) => keys = writer.list_keys(prefix).await?,
    }
    keys.retain(|k| k.starts_with(prefix));
    keys.sort();
    Ok(keys)
}

/// The files below `dir`, as keys relative to `root`.
fn walk(root: &Path, dir: &Path, keys: &mut Vec<String>) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        // The local writer's `.<name>.tmp-*` files are objects being written (or left by a
        // crash), not objects.
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            walk(root, &path, keys)?;
        } else if let Ok(relative) = path.strip_prefix(root) {
            keys.push(relative.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

/// An object's records: its decoded body and each record's range in it.
async fn read_records(
    source: &Source,
    key: &str,
) -> anyhow::Result<(Vec<u8>, Vec<std::ops::Range<usize>>)> {
    let body = read(source, key).await?;
    let data = decode(&body).context("a corrupt gzip body")?.into_owned();
    let ranges = split_records(&data).context("not JSON records")?;
    Ok((data, ranges))
}

async fn read(source: &Source, key: &str) -> anyhow::Result<Vec<u8>> {
    match source {
        Source::Local(dir) => std::fs::read(dir.join(key))
            .with_context(|| format!("reading {}", dir.join(key).display())),
        Source::S3(writer) => Ok(writer.get(key).await?),
    }
}

/// Whether the object `key` (`<prefix>YYYY/MM/DD/HH/...`) may hold records in `[since, until)`:
/// its hour, widened by `margin` ms on both sides, meets the range. Keys of another shape are
/// read.
fn key_may_hold(key: &str, prefix: &str, since: u64, until: u64, margin: u64) -> bool {
    let Some(hour) = key.strip_prefix(prefix).and_then(key_hour_ms) else {
        return true;
    };
    hour.saturating_add(HOUR_MS).saturating_add(margin) > since
        && hour.saturating_sub(margin) < until
}

/// The start of the hour of a `YYYY/MM/DD/HH/...` key, in ms since the epoch.
fn key_hour_ms(rest: &str) -> Option<u64> {
    let mut parts = rest.splitn(5, '/');
    let mut next = || parts.next()?.parse::<u32>().ok();
    let (year, month, day, hour) = (next()?, next()?, next()?, next()?);
    let text = format!("{year:04}-{month:02}-{day:02}T{hour:02}:00:00Z");
    parse_time(&text)
}

/// At most `rate` records a second (0: no limit), catching up at most [`RATE_BURST`] after a
/// pause.
struct Pacer {
    rate: u64,
    /// When the record now being sent is due.
    next: Instant,
}

impl Pacer {
    fn new(rate: u64) -> Self {
        Pacer {
            rate,
            next: Instant::now(),
        }
    }

    async fn pace(&mut self) {
        if self.rate == 0 {
            return;
        }
        let now = Instant::now();
        if self.next > now {
            tokio::time::sleep(self.next - now).await;
        } else if now - self.next > RATE_BURST {
            self.next = now - RATE_BURST;
        }
        self.next += Duration::from_secs_f64(1.0 / self.rate as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_when_their_hour_may_hold_the_range() {
        // 2026-11-26T10:00:00Z
        let ten = 1_795_687_200_000;
        let key = "raw/2026/11/26/10/dev-firehose-1-2026-11-26-10-00-00-x";
        assert_eq!(key_hour_ms("2026/11/26/10/x"), Some(ten));
        let m = KEY_MARGIN_MS;
        assert!(key_may_hold(key, "raw/", ten, ten + 1, m));
        assert!(
            key_may_hold(key, "raw/", ten + 2 * HOUR_MS - 1, u64::MAX, m),
            "margin"
        );
        assert!(!key_may_hold(key, "raw/", ten + 3 * HOUR_MS, u64::MAX, m));
        assert!(!key_may_hold(key, "raw/", 0, ten - 2 * HOUR_MS, m));
        assert!(
            key_may_hold(key, "raw/", ten + 3 * HOUR_MS - 1, u64::MAX, 2 * m),
            "wider"
        );
        assert!(key_may_hold("raw/odd-key", "raw/", ten, ten + 1, m));
    }
}
