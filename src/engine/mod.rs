//! The rule engine at run time: the MQTT source feeding the observation pipeline, the rule
//! index kept current from the store, the directory, and the webhook dispatcher.
//!
//! - [`rules`]: loads rules into an index and reloads it when the store's generation moves.
//! - [`dispatch`]: `engine.workers` pipelines, each owning the things routed to it by name.
//! - [`pipeline`]: parse, evaluate, enqueue webhooks, spool the record (acked after its fsync),
//!   offer it to the indexer; life cycle events.
//! - [`acks`]: an observation that fired is acked once both its record and its firings are
//!   on disk.
//! - [`dedupe`]: observation ids and the window that keeps QoS 1 redeliveries of observations
//!   already stored from being stored twice.
//! - [`outputs`]: the object sink and the OpenSearch indexer.
//! - [`redis_state`]: threshold state shared by replicas in Redis (`engine.state = "redis"`).
//! - [`saved_state`]: local threshold state saved to the store and loaded at start.
//! - [`tasks`]: a worker or the dispatcher that panics turns the health checks red.
//!
//! Updates of unknown things wait for `directory.resolver` in `pipeline` (see
//! [`crate::resolver`]).

pub mod acks;
pub mod dedupe;
pub mod dispatch;
pub mod outputs;
pub mod pipeline;
pub mod redis_state;
pub mod rules;
pub mod saved_state;
pub mod tasks;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use ingest::{Acker, EmbeddedBroker, Inbound, MqttSource, SourceHandle, SourceStatus};
use rule_engine::{Directory, ParseLimits};
use sinks::webhook::{WebhookDispatcher, WebhookHandle, WebhookStats};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::config::{Config, StateMode};
use crate::store::RuleStore;

/// The running engine, for readiness checks and an orderly shutdown.
pub struct RunningEngine {
    /// Kept alive for the life of the process (rumqttd has no shutdown).
    _broker: Option<EmbeddedBroker>,
    /// `None` with an in-process intake.
    source: Option<SourceHandle>,
    /// Routes messages to the workers, when there are several.
    dispatcher: Option<JoinHandle<()>>,
    /// One pipeline task per worker ([`dispatch`]).
    workers: Vec<JoinHandle<()>>,
    /// Tells the workers the source has stopped (see [`pipeline::Input`]).
    stopping: watch::Sender<bool>,
    webhooks: WebhookHandle<acks::Ack>,
    webhook_task: JoinHandle<WebhookStats>,
    reloader: JoinHandle<()>,
    outputs: outputs::Outputs,
    /// Whether Redis answers, with `engine.state = "redis"`.
    state_status: Option<redis_state::StateStatus>,
    /// The task that PINGs Redis between batches.
    state_health: Option<JoinHandle<()>>,
    /// Set when a worker or the dispatcher panics.
    failure: tasks::TaskFailure,
}

/// Where observations come from.
pub enum Intake {
    /// The MQTT source of the `mqtt` section (and the embedded broker, when configured).
    Mqtt,
    /// Messages handed in by this process (the benchmarks' synthetic source): the pipeline ends
    /// when the channel's senders are dropped; `client_id` names the saved threshold state and
    /// the Redis step ids, as an MQTT client id does.
    InProcess {
        inbound: mpsc::Receiver<Inbound>,
        acker: Acker,
        client_id: String,
    },
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
    start_with(config, store, directory, rules_changed, Intake::Mqtt).await
}

/// [`start`] with messages from `intake`.
pub async fn start_with(
    config: &Config,
    store: &RuleStore,
    directory: Arc<RwLock<Directory>>,
    rules_changed: Arc<Notify>,
    intake: Intake,
) -> anyhow::Result<RunningEngine> {
    let broker = match intake {
        Intake::Mqtt if config.mqtt.embedded => {
            let broker = EmbeddedBroker::start(config.mqtt.embedded_listen)
                .context("starting the embedded MQTT broker (mqtt.embedded)")?;
            tracing::info!(listen = %broker.local_addr(), "embedded MQTT broker listening");
            Some(broker)
        }
        _ => None,
    };
    sinks::webhook::describe_metrics();
    ingest::describe_metrics();
    tasks::describe_metrics();
    let failure = tasks::TaskFailure::default();

    let initial = rules::load(store).await.context("loading rules")?;
    tracing::info!(rules = initial.index.len(), "rules loaded");
    let (rules_tx, rules_rx) = watch::channel(Arc::new(initial));
    let reloader = tokio::spawn(rules::keep_current(
        store.clone(),
        rules_tx,
        rules_changed,
        Duration::from_millis(config.engine.rules_poll_ms),
    ));

    let resolver = match crate::resolver::Source::from_config(&config.directory)
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
            Some(crate::resolver::spawn(source, &config.directory))
        }
        None => None,
    };

    let (inbound, acker, source, client_id) = match intake {
        Intake::Mqtt => {
            let host = ingest::config::local_hostname().unwrap_or_else(|| "localhost".to_owned());
            let (inbound, acker, source) =
                MqttSource::start(&config.mqtt, &config.stack.name, &host)
                    .context("starting the MQTT source")?;
            // The source logged its URL (password hidden) as it started.
            tracing::info!(client_id = source.client_id(), "MQTT source started");
            let client_id = source.client_id().to_owned();
            (inbound, acker, Some(source), client_id)
        }
        Intake::InProcess {
            inbound,
            acker,
            client_id,
        } => (inbound, acker, None, client_id),
    };

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

    let router = dispatch::Router::new(config.engine.worker_count());
    let workers = router.workers();
    let states = threshold_backends(config, store, &client_id, &rules_rx, &router).await?;
    let (state_status, state_health) = match states.first() {
        Some(pipeline::ThresholdBackend::Redis(shared)) => (
            Some(shared.redis.status()),
            Some(shared.redis.spawn_health_check(REDIS_HEALTH_EVERY)),
        ),
        _ => (None, None),
    };
    let resolvings = resolving_per_worker(resolver, config, &router, &failure);
    let (stopping, stopping_rx) = watch::channel(false);
    let (inputs, dispatcher) = if workers == 1 {
        (vec![pipeline::Input::Messages(inbound)], None)
    } else {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers)
            .map(|_| mpsc::channel(dispatch::QUEUED_BATCHES))
            .unzip();
        let dispatcher = tasks::spawn_watched(
            "dispatcher".to_owned(),
            &failure,
            dispatch::dispatch(inbound, senders, router.clone()),
        );
        let inputs = receivers
            .into_iter()
            .map(|rx| pipeline::Input::Batches {
                rx,
                stopping: stopping_rx.clone(),
            })
            .collect();
        (inputs, Some(dispatcher))
    };
    // Each worker's window covers the broker's in-flight window (at most 65,535 per
    // connection), however unevenly the things spread.
    let window = dedupe::WINDOW_CAPACITY
        .div_ceil(workers)
        .max(dedupe::WINDOW_PER_WORKER_MIN);
    let limits = ParseLimits::new(config.mqtt.max_payload_bytes);
    let mut workers_running = Vec::with_capacity(workers);
    for (worker, ((inbound, state), resolving)) in
        inputs.into_iter().zip(states).zip(resolvings).enumerate()
    {
        let pipeline = pipeline::Pipeline {
            inbound,
            rules: rules_rx.clone(),
            state,
            stages: pipeline::Stages {
                acker: acker.clone(),
                objects: outputs.objects.clone(),
                spool: sinks::objects::RecordBatch::default(),
                directory: Arc::clone(&directory),
                store: store.clone(),
                webhooks: webhooks.clone(),
                limits,
                key_prefix: format!("{}-{:016x}", config.stack.name, fastrand::u64(..)),
                // A redelivery goes to its thing's worker; the ids recovered at start carry no
                // name, so every worker gets them all.
                redeliveries: dedupe::Redeliveries::new(
                    window,
                    recovered.clone(),
                    fired_before.iter().copied(),
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
        let span = tracing::info_span!("worker", worker);
        workers_running.push(tasks::spawn_watched(
            format!("worker {worker}"),
            &failure,
            pipeline.run().instrument(span),
        ));
    }
    tracing::info!(workers, "observation pipeline started");
    Ok(RunningEngine {
        _broker: broker,
        source,
        dispatcher,
        workers: workers_running,
        stopping,
        webhooks,
        webhook_task,
        reloader,
        outputs,
        state_status,
        state_health,
        failure,
    })
}

/// Each worker's threshold state: its shard of the saved local state, or a handle on Redis.
async fn threshold_backends(
    config: &Config,
    store: &RuleStore,
    client_id: &str,
    rules: &watch::Receiver<Arc<rules::RuleSet>>,
    router: &dispatch::Router,
) -> anyhow::Result<Vec<pipeline::ThresholdBackend>> {
    Ok(match config.engine.state {
        StateMode::Local => {
            let rules = Arc::clone(&rules.borrow());
            let shards = saved_state::load(
                store,
                client_id,
                &rules,
                config.engine.threshold_max_keys,
                router,
            )
            .await;
            let savers = saved_state::Saver::for_workers(
                store.clone(),
                client_id.to_owned(),
                Duration::from_secs(config.engine.state_save_secs),
                &shards,
                &rules,
            );
            shards
                .into_iter()
                .zip(savers)
                .map(|(state, saver)| {
                    pipeline::ThresholdBackend::Local(pipeline::LocalState { state, saver })
                })
                .collect()
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
            (0..router.workers())
                .map(|_| {
                    pipeline::ThresholdBackend::Redis(pipeline::SharedState {
                        redis: redis.clone(),
                        backoff: ccstream_common::Backoff::new(
                            Duration::from_millis(100),
                            Duration::from_secs(5),
                        ),
                        client_id: client_id.to_owned(),
                    })
                })
                .collect()
        }
    })
}

/// Each worker's waiting room for updates of unknown things. The resolver is one: every worker
/// sends it requests, and each answer goes to the worker that owns the thing.
fn resolving_per_worker(
    resolver: Option<crate::resolver::Resolver>,
    config: &Config,
    router: &dispatch::Router,
    failure: &tasks::TaskFailure,
) -> Vec<Option<pipeline::Resolving>> {
    let workers = router.workers();
    let Some(resolver) = resolver else {
        return (0..workers).map(|_| None).collect();
    };
    if workers == 1 {
        return vec![Some(pipeline::Resolving::new(resolver, &config.directory))];
    }
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers)
        .map(|_| mpsc::channel(config.directory.resolve_queue))
        .unzip();
    tasks::spawn_watched(
        "resolver answers router".to_owned(),
        failure,
        dispatch::route_by_thing(resolver.answers, senders, router.clone()),
    );
    receivers
        .into_iter()
        .map(|answers| {
            let resolver = crate::resolver::Resolver {
                requests: resolver.requests.clone(),
                answers,
            };
            Some(pipeline::Resolving::new(resolver, &config.directory))
        })
        .collect()
}

impl RunningEngine {
    /// The MQTT connection, for `/readyz` (never connected with an in-process intake).
    pub fn mqtt_status(&self) -> SourceStatus {
        self.source
            .as_ref()
            .map_or_else(SourceStatus::default, SourceHandle::status)
    }

    /// Whether Redis answers, with `engine.state = "redis"`, for `/readyz`.
    pub fn state_status(&self) -> Option<redis_state::StateStatus> {
        self.state_status.clone()
    }

    /// Why the engine stopped working (a worker or the dispatcher panicked), for the health
    /// checks.
    pub fn task_failure(&self) -> tasks::TaskFailure {
        self.failure.clone()
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
        if let Some(source) = self.source {
            if let Err(e) = source.shutdown(grace / 4).await {
                tracing::warn!(error = %e, "MQTT source did not stop cleanly");
            }
        }
        // Nobody waits for the receiver: the workers may all be gone.
        let _ = self.stopping.send(true);
        // The source's channel is closed now (an in-process intake's sender is dropped); the
        // dispatcher closes the workers' channels, and each worker ends when it has drained
        // its own.
        let drained = async {
            if let Some(dispatcher) = self.dispatcher {
                let _ = dispatcher.await;
            }
            for worker in self.workers {
                let _ = worker.await;
            }
        };
        if tokio::time::timeout_at(deadline, drained).await.is_err() {
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
