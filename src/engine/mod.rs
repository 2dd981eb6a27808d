//! The rule engine at run time: the MQTT source feeding the observation pipeline, the rule
//! index kept current from the store, the directory, and the webhook dispatcher.
//!
//! - [`rules`]: loads rules into an index and reloads it when the store's generation moves.
//! - [`pipeline`]: parse, evaluate, enqueue webhooks, spool the record (acked after its fsync),
//!   offer it to the indexer; life cycle events.
//! - [`acks`]: an observation that fired is acked once both its record and its firings are
//!   on disk.
//! - [`dedupe`]: observation ids and the window that keeps QoS 1 redeliveries of observations
//!   already stored from being stored twice.
//! - [`outputs`]: the object sink and the OpenSearch indexer.
//! - [`redis_state`]: threshold state shared by replicas in Redis (`engine.state = "redis"`).
//! - [`saved_state`]: local threshold state saved to the store and loaded at start.
//!
//! Updates of unknown things wait for `directory.resolver` in `pipeline` (see
//! [`crate::resolver`]).

pub mod acks;
pub mod dedupe;
pub mod outputs;
pub mod pipeline;
pub mod redis_state;
pub mod rules;
pub mod saved_state;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use ingest::{EmbeddedBroker, MqttSource, SourceHandle, SourceStatus};
use rule_engine::{Directory, ParseLimits};
use sinks::webhook::{WebhookDispatcher, WebhookHandle, WebhookStats};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::config::{Config, StateMode};
use crate::store::RuleStore;

/// The running engine, for readiness checks and an orderly shutdown.
pub struct RunningEngine {
    /// Kept alive for the life of the process (rumqttd has no shutdown).
    _broker: Option<EmbeddedBroker>,
    source: SourceHandle,
    pipeline: JoinHandle<()>,
    webhooks: WebhookHandle<acks::Ack>,
    webhook_task: JoinHandle<WebhookStats>,
    reloader: JoinHandle<()>,
    outputs: outputs::Outputs,
    /// Whether Redis answers, with `engine.state = "redis"`.
    state_status: Option<redis_state::StateStatus>,
    /// The task that PINGs Redis between batches.
    state_health: Option<JoinHandle<()>>,
}

/// How often Redis is PINGed for `/readyz` (batches report on it too).
const REDIS_HEALTH_EVERY: Duration = Duration::from_secs(2);

/// Starts the broker (when embedded), the webhook dispatcher, the rule reloader, the MQTT source
/// and the pipeline. `rules_changed` is notified by the API after each rule write.
pub async fn start(
    config: &Config,
    store: &RuleStore,
    directory: Arc<RwLock<Directory>>,
    rules_changed: Arc<Notify>,
) -> anyhow::Result<RunningEngine> {
    let broker = if config.mqtt.embedded {
        let broker = EmbeddedBroker::start(config.mqtt.embedded_listen)
            .context("starting the embedded MQTT broker (mqtt.embedded)")?;
        tracing::info!(listen = %broker.local_addr(), "embedded MQTT broker listening");
        Some(broker)
    } else {
        None
    };
    sinks::webhook::describe_metrics();
    ingest::describe_metrics();

    let initial = rules::load(store).await.context("loading rules")?;
    tracing::info!(rules = initial.index.len(), "rules loaded");
    let (rules_tx, rules_rx) = watch::channel(Arc::new(initial));
    let reloader = tokio::spawn(rules::keep_current(
        store.clone(),
        rules_tx,
        rules_changed,
        Duration::from_millis(config.engine.rules_poll_ms),
    ));

    let resolving = match crate::resolver::Source::from_config(&config.directory)
        .await
        .map_err(anyhow::Error::msg)
        .context("directory.resolver")?
    {
        Some(source) => {
            crate::resolver::describe_metrics();
            tracing::info!(
                resolver = source.kind(),
                "updates of unknown things wait for the resolver"
            );
            let resolver = crate::resolver::spawn(source, &config.directory);
            Some(pipeline::Resolving::new(resolver, &config.directory))
        }
        None => None,
    };

    let host = ingest::config::local_hostname().unwrap_or_else(|| "localhost".to_owned());
    let (inbound, acker, source) = MqttSource::start(&config.mqtt, &config.stack.name, &host)
        .context("starting the MQTT source")?;
    // The source logged its URL (password hidden) as it started.
    tracing::info!(client_id = source.client_id(), "MQTT source started");

    let outputs = outputs::Outputs::start(config, acker.clone()).await?;
    let outbox_acker = acker.clone();
    let (webhooks, webhook_task) = WebhookDispatcher::start(
        &config.webhook,
        Box::new(move |tokens: Vec<acks::Ack>| acks::ack_released(&outbox_acker, tokens)),
    )
    .context("starting the webhook dispatcher")?;
    let fired_before = webhooks.take_recovered_origins();
    let recovered = outputs.objects.take_recovered_ids();
    tracing::info!(
        ids = recovered.len(),
        "redelivery window seeded with the observations earlier runs stored"
    );
    let state = match config.engine.state {
        StateMode::Local => {
            let owner = source.client_id().to_owned();
            let rules = Arc::clone(&rules_rx.borrow());
            let state =
                saved_state::load(store, &owner, &rules, config.engine.threshold_max_keys).await;
            pipeline::ThresholdBackend::Local(pipeline::LocalState {
                state,
                saver: saved_state::Saver::new(
                    store.clone(),
                    owner,
                    Duration::from_secs(config.engine.state_save_secs),
                ),
            })
        }
        StateMode::Redis => {
            let url = config.engine.redis_url.as_deref().unwrap_or_default();
            let redis = redis_state::RedisThresholds::new(
                url,
                &config.stack.name,
                Duration::from_secs(config.engine.state_ttl_secs),
            )
            .context("engine.redis_url")?;
            tracing::info!(url = %ccstream_common::redact::url_password(url), "threshold state in Redis");
            pipeline::ThresholdBackend::Redis(pipeline::SharedState {
                redis,
                backoff: ccstream_common::Backoff::new(
                    Duration::from_millis(100),
                    Duration::from_secs(5),
                ),
                client_id: source.client_id().to_owned(),
            })
        }
    };
    let (state_status, state_health) = match &state {
        pipeline::ThresholdBackend::Redis(shared) => (
            Some(shared.redis.status()),
            Some(shared.redis.spawn_health_check(REDIS_HEALTH_EVERY)),
        ),
        pipeline::ThresholdBackend::Local(_) => (None, None),
    };
    let pipeline = pipeline::Pipeline {
        inbound,
        rules: rules_rx,
        state,
        stages: pipeline::Stages {
            acker,
            objects: outputs.objects.clone(),
            directory,
            store: store.clone(),
            webhooks: webhooks.clone(),
            limits: ParseLimits::new(config.mqtt.max_payload_bytes),
            key_prefix: format!("{}-{:016x}", config.stack.name, fastrand::u64(..)),
            redeliveries: dedupe::Redeliveries::new(
                dedupe::WINDOW_CAPACITY,
                recovered,
                fired_before,
            ),
            metrics: pipeline::HotMetrics::register(),
            domain_paths: pipeline::DomainPaths::default(),
            check_topic_domain: config.directory.check_topic_domain,
            actions_sent: 0,
            resolving,
            released: Vec::new(),
            releasing: false,
        },
    };
    let pipeline = tokio::spawn(pipeline.run());
    Ok(RunningEngine {
        _broker: broker,
        source,
        pipeline,
        webhooks,
        webhook_task,
        reloader,
        outputs,
        state_status,
        state_health,
    })
}

impl RunningEngine {
    pub fn mqtt_status(&self) -> SourceStatus {
        self.source.status()
    }

    /// Whether Redis answers, with `engine.state = "redis"`, for `/readyz`.
    pub fn state_status(&self) -> Option<redis_state::StateStatus> {
        self.state_status.clone()
    }

    /// The webhook outbox, for `/readyz` (full, or its disk failing).
    pub fn outbox(&self) -> Arc<sinks::webhook::OutboxStatus> {
        self.webhooks.outbox()
    }

    /// The object sink, for `/readyz` (spool over its limit).
    pub fn objects(&self) -> sinks::objects::ObjectSinkHandle<outputs::Token> {
        self.outputs.objects.clone()
    }

    /// Stops intake, lets the pipeline finish what it took, then drains the webhook queue,
    /// all within `grace`.
    pub async fn shutdown(self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        if let Err(e) = self.source.shutdown(grace / 4).await {
            tracing::warn!(error = %e, "MQTT source did not stop cleanly");
        }
        // The source's channel is closed now; the pipeline ends when it has drained it.
        if tokio::time::timeout_at(deadline, self.pipeline)
            .await
            .is_err()
        {
            tracing::warn!("observation pipeline did not finish within the grace period");
        }
        self.reloader.abort();
        if let Some(health) = &self.state_health {
            health.abort();
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        // Batches and webhooks drain side by side.
        let outputs = self.outputs.shutdown(remaining);
        self.webhooks.close(remaining);
        let webhooks = async {
            match tokio::time::timeout(remaining + Duration::from_secs(1), self.webhook_task).await
            {
                Ok(Ok(stats)) => tracing::info!(?stats, "webhook dispatcher stopped"),
                Ok(Err(e)) => tracing::warn!(error = %e, "webhook dispatcher task failed"),
                Err(_) => tracing::warn!("webhook dispatcher did not stop within the grace period"),
            }
        };
        tokio::join!(outputs, webhooks);
    }
}
