//! The observation outputs: the object sink (spool, batches, S3 / Firehose / local directory)
//! and, when `search.url` is set, the OpenSearch indexer.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use ingest::Acker;
use sinks::objects::writer::firehose::FirehoseSettings;
use sinks::objects::writer::s3::S3Settings;
use sinks::objects::writer::{FirehoseWriter, S3Writer};
use sinks::objects::{
    build_error_record, Delimiter, LocalWriter, ObjectSink, ObjectSinkHandle, OnCommit, RecordKind,
    ShutdownReport, SinkKind, Writer,
};
use sinks::search::{IndexerHandle, IndexerStats, SearchIndexer};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::acks::{ack_released, Ack};
use crate::config::Config;

/// Records handed back by the indexer (mapping conflicts, rejected items) wait here on their
/// way to the `errors/` prefix; beyond it they are counted and dropped (S3 has the record).
const INDEX_FAILURE_QUEUE: usize = 10_000;

/// Tokens of the object sink: an MQTT ack for observations (shared with the webhook outbox when
/// the observation fired, see [`super::acks`]), nothing for records the service makes itself
/// (index failures).
pub type Token = Option<Ack>;

pub struct Outputs {
    pub objects: ObjectSinkHandle<Token>,
    objects_task: JoinHandle<ShutdownReport>,
    pub search: Option<IndexerHandle>,
    search_task: Option<JoinHandle<IndexerStats>>,
    failures_task: Option<JoinHandle<()>>,
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
        let (objects, objects_task) =
            ObjectSink::start(&config.objects, &config.stack.name, writer, on_commit)
                .context("starting the object sink")?;

        let (search, search_task, failures_task) = match &config.search.url {
            None => (None, None, None),
            Some(_) => {
                sinks::search::describe_metrics();
                let (fail_tx, fail_rx) = mpsc::channel::<(Bytes, String)>(INDEX_FAILURE_QUEUE);
                let on_failure = move |record: Bytes, reason: String| {
                    // Runs on the indexer task: never wait here.
                    if fail_tx.try_send((record, reason)).is_err() {
                        metrics::counter!("ccstream_search_failures_dropped_total").increment(1);
                    }
                };
                let (handle, task) = SearchIndexer::start(&config.search, on_failure)
                    .context("starting the OpenSearch indexer")?;
                let failures = tokio::spawn(store_index_failures(objects.clone(), fail_rx));
                (Some(handle), Some(task), Some(failures))
            }
        };
        Ok(Outputs {
            objects,
            objects_task,
            search,
            search_task,
            failures_task,
        })
    }

    /// Flushes the indexer and stores every open batch, within `grace`.
    pub async fn shutdown(self, grace: Duration) {
        if let (Some(search), Some(task)) = (self.search, self.search_task) {
            search.close(grace / 2);
            match tokio::time::timeout(grace / 2 + Duration::from_secs(1), task).await {
                Ok(Ok(stats)) => tracing::info!(?stats, "OpenSearch indexer stopped"),
                _ => tracing::warn!(
                    "OpenSearch indexer did not stop within its share of the grace period"
                ),
            }
        }
        if let Some(task) = self.failures_task {
            // Its sender went with the indexer; it ends once it has queued what it holds.
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
        let report = self.objects.shutdown(grace / 2).await;
        tracing::info!(?report, "object sink stopped");
        let _ = self.objects_task.await;
    }
}

/// Writes records the index refused to the `errors/` prefix, with the reason.
async fn store_index_failures(
    objects: ObjectSinkHandle<Token>,
    mut rx: mpsc::Receiver<(Bytes, String)>,
) {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Head {
        #[serde(default)]
        thing_name: String,
        #[serde(default)]
        timestamp: u64,
    }
    while let Some((record, reason)) = rx.recv().await {
        let head: Head = serde_json::from_slice(&record).unwrap_or(Head {
            thing_name: String::new(),
            timestamp: 0,
        });
        let error = build_error_record(
            &record,
            &head.thing_name,
            head.timestamp,
            &format!("indexing failed: {reason}"),
        );
        if objects
            .append(error, RecordKind::Errors, None)
            .await
            .is_err()
        {
            return;
        }
    }
}
