//! The observation outputs: the object sink (spool, batches, S3 / Firehose / local directory)
//! and, when `search.url` is set, the OpenSearch indexer, fed by a follower of the spool (the
//! index takes what the spool committed, from a cursor, so an outage of OpenSearch delays the
//! index instead of losing records from it).

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use ingest::Acker;
use sinks::objects::writer::firehose::FirehoseSettings;
use sinks::objects::writer::s3::S3Settings;
use sinks::objects::writer::{FirehoseWriter, S3Writer};
use sinks::objects::{
    build_error_record, Delimiter, IndexFollow, LocalWriter, ObjectSink, ObjectSinkHandle,
    OnCommit, RecordKind, ShutdownReport, SinkKind, Writer,
};
use sinks::search::{follower, Follower, IndexerHandle, IndexerStats, SearchIndexer};
use tokio::task::JoinHandle;

use super::acks::{ack_released, Ack};
use crate::config::Config;

/// Tokens of the object sink: an MQTT ack for observations (shared with the webhook outbox when
/// the observation fired, see [`super::acks`]), nothing for records the service makes itself
/// (index failures).
pub type Token = Option<Ack>;

pub struct Outputs {
    pub objects: ObjectSinkHandle<Token>,
    objects_task: JoinHandle<ShutdownReport>,
    search: Option<IndexerHandle>,
    search_task: Option<JoinHandle<IndexerStats>>,
    follower: Option<Follower>,
}

async fn writer(config: &Config) -> anyhow::Result<Writer> {
    let o = &config.objects;
    Ok(match o.sink {
        SinkKind::Local => Writer::Local(LocalWriter::new(&o.dir)),
        SinkKind::S3 => Writer::S3(
            S3Writer::new(S3Settings {
                bucket: o.bucket.clone().unwrap_or_default(),
                region: o.region.clone(),
                endpoint: o.endpoint.clone(),
                path_style: o.path_style,
                credentials: None,
            })
            .await
            .context("[objects] s3")?,
        ),
        SinkKind::Firehose => {
            let mut settings = FirehoseSettings::new(o.delivery_stream.clone().unwrap_or_default());
            settings.region = o.region.clone();
            settings.endpoint = o.endpoint.clone();
            settings.append_newline = o.delimiter == Delimiter::Newline;
            Writer::Firehose(
                FirehoseWriter::new(settings)
                    .await
                    .context("[objects] firehose")?,
            )
        }
        SinkKind::None => Writer::None,
    })
}

impl Outputs {
    /// Starts the object sink (storing spool files left by a crash first) and the indexer.
    /// Observations are acked through `acker` once their group commit is on disk.
    pub async fn start(config: &Config, acker: Acker) -> anyhow::Result<Outputs> {
        sinks::objects::describe_metrics();
        let writer = writer(config).await?;
        tracing::info!(sink = writer.kind(), "object sink starting");
        let on_commit: OnCommit<Token> = Box::new(move |tokens: Vec<Token>| {
            ack_released(&acker, tokens.into_iter().flatten());
        });
        let follow = if config.search.enabled() {
            IndexFollow::On
        } else {
            IndexFollow::Off
        };
        let (objects, objects_task) = ObjectSink::start_full(
            &config.objects,
            &config.stack.name,
            writer,
            on_commit,
            follow,
        )
        .context("starting the object sink")?;

        let (search, search_task, follower) = match objects.index_log() {
            None => (None, None, None),
            Some(log) => {
                sinks::search::describe_metrics();
                let failures = objects.clone();
                let on_failure = move |record: Bytes, reason: String| {
                    let objects = failures.clone();
                    async move { store_index_failure(&objects, &record, &reason).await }
                };
                let (handle, task) = SearchIndexer::start(&config.search, on_failure)
                    .context("starting the OpenSearch indexer")?;
                let follower = follower::start(log, handle.clone());
                (Some(handle), Some(task), Some(follower))
            }
        };
        Ok(Outputs {
            objects,
            objects_task,
            search,
            search_task,
            follower,
        })
    }

    /// Flushes the indexer and stores every open batch, within `grace`. What the index has
    /// not taken stays in the spool, and the cursor says where the next start goes on.
    pub async fn shutdown(self, grace: Duration) {
        if let Some(follower) = &self.follower {
            follower.begin_stop();
        }
        if let (Some(search), Some(task)) = (self.search, self.search_task) {
            search.close(grace / 2);
            match tokio::time::timeout(grace / 2 + Duration::from_secs(1), task).await {
                Ok(Ok(stats)) => tracing::info!(?stats, "OpenSearch indexer stopped"),
                _ => tracing::warn!(
                    "OpenSearch indexer did not stop within its share of the grace period"
                ),
            }
        }
        if let Some(follower) = self.follower {
            // The indexer has run or dropped every checkpoint: the follower writes the cursor.
            match tokio::time::timeout(Duration::from_secs(2), follower.join()).await {
                Ok(stats) => tracing::info!(?stats, "search follower stopped"),
                Err(_) => tracing::warn!("search follower did not stop in time; the index resumes from an older cursor (documents keep their ids)"),
            }
        }
        let report = self.objects.shutdown(grace / 2).await;
        tracing::info!(?report, "object sink stopped");
        let _ = self.objects_task.await;
    }
}

/// Writes a record the index refused to the `errors/` prefix, with the reason (the indexer
/// waits for the spool to take it).
async fn store_index_failure(objects: &ObjectSinkHandle<Token>, record: &[u8], reason: &str) {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Head {
        #[serde(default)]
        thing_name: String,
        #[serde(default)]
        timestamp: u64,
    }
    let head: Head = serde_json::from_slice(record).unwrap_or(Head {
        thing_name: String::new(),
        timestamp: 0,
    });
    let error = build_error_record(
        record,
        &head.thing_name,
        head.timestamp,
        &format!("indexing failed: {reason}"),
    );
    if let Err(e) = objects.append(error, RecordKind::Errors, None).await {
        // Only after shutdown: the record itself is stored, and the spool keeps it for the
        // index, which meets the refusal again at the next start.
        tracing::warn!(error = %e, "a record the index refused cannot go to errors/");
    }
}
