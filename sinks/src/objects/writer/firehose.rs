//! `objects.sink = "firehose"`: batches' records to a Kinesis Data Firehose delivery stream.
//!
//! Each batch becomes one or more PutRecordBatch calls of at most [`MAX_RECORDS_PER_CALL`]
//! records and [`MAX_BYTES_PER_CALL`] bytes, in record order. Firehose then writes its own S3
//! objects: the batch key is not used.
//!
//! **At-least-once.** When a call reports `FailedPutCount > 0`, only the records whose entry has
//! an `ErrorCode` are sent again, with backoff, up to `record_retries` times. If some still fail,
//! or a whole call fails, `store` returns an error and the uploader later stores the whole batch
//! again, so the records Firehose had already accepted are delivered twice. Firehose itself
//! offers no idempotent put; readers must tolerate duplicates.
//!
//! **Records over 1000 KiB** (Firehose's limit, newline included) cannot be sent at all. They
//! are not dropped silently: the batch's other records are delivered, then `store` returns
//! [`WriteError::Permanent`] naming them, so the batch stays in the spool's `failed/` folder for
//! an operator (whose replay would duplicate the delivered records), and
//! `ccstream_objects_firehose_failed_records_total{reason="oversized"}` counts them. The
//! binary refuses to start with the Firehose sink and an `mqtt.max_payload_bytes` that could
//! make such a record, so only a writer used outside the binary meets one.
//!
//! **Delimiter.** Firehose concatenates records exactly as given, and the batcher's records carry
//! no delimiter; `append_newline` (set from `objects.delimiter = "newline"`) adds `\n` to each.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use bytes::{BufMut, Bytes, BytesMut};
use ccstream_common::Backoff;

use super::s3::{classify, sdk_config};
use super::{Batch, WriteError};

/// Records per PutRecordBatch call (Firehose quota).
pub const MAX_RECORDS_PER_CALL: usize = 500;
/// Bytes of record data per PutRecordBatch call (Firehose quota, before base64).
pub const MAX_BYTES_PER_CALL: usize = 4 * 1024 * 1024;
/// Largest record Firehose accepts (before base64).
pub const MAX_RECORD_BYTES: usize = 1000 * 1024;
/// Longest pause between two sends of failed records.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Where to send, from `objects.delivery_stream`, `objects.region`, `objects.endpoint` and
/// `objects.delimiter`. Start from [`FirehoseSettings::new`].
#[derive(Debug, Clone)]
pub struct FirehoseSettings {
    /// The delivery stream's name.
    pub delivery_stream: String,
    /// The region; `None`: the standard AWS chain, then `us-east-1`.
    pub region: Option<String>,
    /// An endpoint URL instead of AWS's (tests, VPC endpoints): `http://host:port`.
    pub endpoint: Option<String>,
    /// Append `\n` to every record (`objects.delimiter = "newline"`).
    pub append_newline: bool,
    /// Static `(access key id, secret access key)`, for tests. `None` (what the binary uses):
    /// the standard AWS credentials chain.
    pub credentials: Option<(String, String)>,
    /// How many times the failed records of one call are sent again before `store` gives up
    /// with a retryable error. Default 3.
    pub record_retries: u32,
    /// Pause before the first resend of failed records; doubles each time (with jitter), up to
    /// 10 s. Default 200 ms.
    pub retry_backoff: Duration,
}

impl FirehoseSettings {
    /// Settings with the defaults: no newline, AWS chain for region and credentials.
    pub fn new(delivery_stream: impl Into<String>) -> Self {
        FirehoseSettings {
            delivery_stream: delivery_stream.into(),
            region: None,
            endpoint: None,
            append_newline: false,
            credentials: None,
            record_retries: 3,
            retry_backoff: Duration::from_millis(200),
        }
    }
}

/// Sends batches' records to a delivery stream.
#[derive(Debug, Clone)]
pub struct FirehoseWriter {
    client: aws_sdk_firehose::Client,
    stream: String,
    append_newline: bool,
    record_retries: u32,
    retry_backoff: Duration,
}

impl FirehoseWriter {
    /// Builds the client; credentials are fetched on the first `store`.
    pub async fn new(settings: FirehoseSettings) -> Result<FirehoseWriter, WriteError> {
        if settings.delivery_stream.trim().is_empty() {
            return Err(WriteError::Permanent(
                "objects.delivery_stream: required when objects.sink = \"firehose\"".into(),
            ));
        }
        let sdk = sdk_config(
            settings.region,
            settings.endpoint,
            settings.credentials,
            "objects.endpoint",
        )
        .await?;
        Ok(FirehoseWriter {
            client: aws_sdk_firehose::Client::new(&sdk),
            stream: settings.delivery_stream,
            append_newline: settings.append_newline,
            record_retries: settings.record_retries,
            retry_backoff: settings.retry_backoff,
        })
    }

    /// PutRecordBatch of `batch.records`, split into calls within Firehose's quotas.
    #[tracing::instrument(name = "firehose_put", skip_all, fields(stream = %self.stream, key = %batch.key, records = batch.records.len()))]
    pub async fn store(&self, batch: &Batch) -> Result<(), WriteError> {
        let records: Vec<Bytes> = batch
            .records
            .iter()
            .map(|record| self.prepare(record))
            .collect();
        let plan = plan_calls(records.iter().map(Bytes::len));
        if !plan.oversized.is_empty() {
            metrics::counter!("ccstream_objects_firehose_failed_records_total", "reason" => "oversized")
                .increment(plan.oversized.len() as u64);
            tracing::error!(
                oversized = plan.oversized.len(),
                limit = MAX_RECORD_BYTES,
                "records over Firehose's size limit are not sent; the batch will be kept as failed"
            );
        }
        for call in &plan.calls {
            let pending = call.iter().map(|&i| records[i].clone()).collect();
            self.put_with_retries(pending).await?;
        }
        if plan.oversized.is_empty() {
            Ok(())
        } else {
            let sizes: Vec<usize> = plan.oversized.iter().map(|&i| records[i].len()).collect();
            Err(WriteError::Permanent(format!(
                "Firehose {}: {} record(s) of batch {} over the {MAX_RECORD_BYTES}-byte record \
                 limit (positions {:?}, sizes {sizes:?}) were not sent; its other {} records were",
                self.stream,
                plan.oversized.len(),
                batch.key,
                plan.oversized,
                records.len() - plan.oversized.len(),
            )))
        }
    }

    fn prepare(&self, record: &Bytes) -> Bytes {
        if self.append_newline {
            let mut line = BytesMut::with_capacity(record.len() + 1);
            line.extend_from_slice(record);
            line.put_u8(b'\n');
            line.freeze()
        } else {
            record.clone()
        }
    }

    /// One call's records: sent, then only the failed ones again, at most `record_retries`
    /// more times.
    async fn put_with_retries(&self, mut pending: Vec<Bytes>) -> Result<(), WriteError> {
        let mut resends = 0;
        loop {
            let records = pending
                .iter()
                .map(|data| {
                    Record::builder()
                        .data(Blob::new(data.to_vec()))
                        .build()
                        .map_err(|err| WriteError::Permanent(format!("Firehose record: {err}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let output = self
                .client
                .put_record_batch()
                .delivery_stream_name(&self.stream)
                .set_records(Some(records))
                .send()
                .await
                .map_err(|err| {
                    let failure = classify(&err);
                    let message = format!(
                        "Firehose PutRecordBatch to {}: {}: {}",
                        self.stream, failure.code, failure.detail
                    );
                    tracing::debug!(code = %failure.code, retryable = failure.retryable, "{message}");
                    failure.into_write_error(message)
                })?;
            if output.failed_put_count() == 0 {
                return Ok(());
            }
            let (failed, codes) = failed_records(pending, output.request_responses())
                .map_err(|why| WriteError::Retryable(format!("Firehose {}: {why}", self.stream)))?;
            metrics::counter!("ccstream_objects_firehose_failed_records_total", "reason" => "rejected")
                .increment(failed.len() as u64);
            if resends >= self.record_retries {
                return Err(WriteError::Retryable(format!(
                    "Firehose {}: {} record(s) still failing after {} attempts ({codes:?}); \
                     the batch will be sent again",
                    self.stream,
                    failed.len(),
                    resends + 1,
                )));
            }
            resends += 1;
            let pause = Backoff::new(self.retry_backoff, MAX_BACKOFF).delay(resends);
            tracing::warn!(
                failed = failed.len(),
                ?codes,
                resend = resends,
                pause_ms = pause.as_millis() as u64,
                "Firehose rejected records; sending only those again"
            );
            tokio::time::sleep(pause).await;
            pending = failed;
        }
    }
}

/// Declares the Firehose writer's metrics (name, unit, help) to the installed recorder.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "ccstream_objects_firehose_failed_records_total",
        metrics::Unit::Count,
        "Records Firehose did not take: `rejected` per PutRecordBatch entry with an ErrorCode \
         (each attempt; most are sent again), `oversized` over the 1000 KiB record limit (never \
         sent; the batch is kept as failed)"
    );
}

/// Which records go in which call, and which cannot go at all.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    /// Record positions per call, in order.
    calls: Vec<Vec<usize>>,
    /// Positions of records over [`MAX_RECORD_BYTES`].
    oversized: Vec<usize>,
}

/// Greedy split of records (by size) into calls within the count and byte quotas.
fn plan_calls(sizes: impl IntoIterator<Item = usize>) -> Plan {
    let mut plan = Plan {
        calls: Vec::new(),
        oversized: Vec::new(),
    };
    let mut call = Vec::new();
    let mut call_bytes = 0;
    for (position, size) in sizes.into_iter().enumerate() {
        if size > MAX_RECORD_BYTES {
            plan.oversized.push(position);
            continue;
        }
        if call.len() == MAX_RECORDS_PER_CALL || call_bytes + size > MAX_BYTES_PER_CALL {
            plan.calls.push(std::mem::take(&mut call));
            call_bytes = 0;
        }
        call.push(position);
        call_bytes += size;
    }
    if !call.is_empty() {
        plan.calls.push(call);
    }
    plan
}

/// The records whose response entry has an `ErrorCode`, and how many failed with each code.
/// Entries answer records by position, so their count must match.
fn failed_records(
    sent: Vec<Bytes>,
    entries: &[aws_sdk_firehose::types::PutRecordBatchResponseEntry],
) -> Result<(Vec<Bytes>, BTreeMap<String, usize>), String> {
    if entries.len() != sent.len() {
        return Err(format!(
            "PutRecordBatch answered {} entries for {} records",
            entries.len(),
            sent.len()
        ));
    }
    let mut codes = BTreeMap::new();
    let failed: Vec<Bytes> = sent
        .into_iter()
        .zip(entries)
        .filter_map(|(record, entry)| {
            let code = entry.error_code()?;
            *codes.entry(code.to_owned()).or_insert(0) += 1;
            Some(record)
        })
        .collect();
    if failed.is_empty() {
        return Err("PutRecordBatch reported failed records but no entry has an ErrorCode".into());
    }
    Ok((failed, codes))
}

#[cfg(test)]
mod tests {
    use aws_sdk_firehose::types::PutRecordBatchResponseEntry;

    use super::*;

    #[test]
    fn calls_hold_at_most_500_records() {
        let plan = plan_calls(std::iter::repeat_n(100, 1200));
        let lens: Vec<usize> = plan.calls.iter().map(Vec::len).collect();
        assert_eq!(lens, [500, 500, 200]);
        assert_eq!(plan.calls[1][0], 500);
        assert!(plan.oversized.is_empty());
    }

    #[test]
    fn calls_hold_at_most_4_mib() {
        // 10 records of 1000 KiB: four fit in 4 MiB (4,096,000 <= 4,194,304), five do not.
        let plan = plan_calls(std::iter::repeat_n(MAX_RECORD_BYTES, 10));
        let lens: Vec<usize> = plan.calls.iter().map(Vec::len).collect();
        assert_eq!(lens, [4, 4, 2]);
        // Exactly 4 MiB still fits in one call.
        let rest = MAX_BYTES_PER_CALL - 4 * MAX_RECORD_BYTES;
        let plan = plan_calls([
            MAX_RECORD_BYTES,
            MAX_RECORD_BYTES,
            MAX_RECORD_BYTES,
            MAX_RECORD_BYTES,
            rest,
            1,
        ]);
        assert_eq!(plan.calls, [vec![0, 1, 2, 3, 4], vec![5]]);
        assert!(plan.oversized.is_empty());
    }

    #[test]
    fn oversized_records_are_set_aside_in_place() {
        let plan = plan_calls([10, MAX_RECORD_BYTES + 1, MAX_RECORD_BYTES, 10]);
        assert_eq!(plan.calls, [vec![0, 2, 3]]);
        assert_eq!(plan.oversized, [1]);
        assert_eq!(
            plan_calls([]),
            Plan {
                calls: vec![],
                oversized: vec![]
            }
        );
    }

    #[test]
    fn only_records_with_an_error_code_are_resent() {
        let sent: Vec<Bytes> = ["a", "b", "c"].into_iter().map(Bytes::from).collect();
        let ok = PutRecordBatchResponseEntry::builder()
            .record_id("1")
            .build();
        let busy = PutRecordBatchResponseEntry::builder()
            .error_code("ServiceUnavailableException")
            .build();
        let (failed, codes) =
            failed_records(sent.clone(), &[busy.clone(), ok.clone(), busy.clone()]).expect("ok");
        assert_eq!(failed, [Bytes::from("a"), Bytes::from("c")]);
        assert_eq!(codes["ServiceUnavailableException"], 2);
        assert!(failed_records(sent.clone(), std::slice::from_ref(&ok)).is_err());
        assert!(failed_records(sent, &[ok.clone(), ok.clone(), ok]).is_err());
    }
}
