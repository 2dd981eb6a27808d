//! The observation loop: every message from the MQTT source is parsed, evaluated against the
//! rules, turned into a record and appended to the object spool, which acks it once its group
//! commit is on disk (DESIGN.md: PUBACK only after the spool). Records are also offered to the
//! OpenSearch indexer, which never makes this loop wait. Life cycle events update the
//! directory and are acked at once (acks still go out in arrival order).
//!
//! A QoS 1 redelivery (DUP set) of an observation this process, or an earlier run, already
//! handed to the spool is neither evaluated nor stored again; it is acked after the spool's
//! next commit ([`super::dedupe`] explains the rule and why it is safe).
//!
//! Messages are taken in batches of what is waiting (up to [`BATCH_MAX`]). With local threshold
//! state each one is handled in turn. With state in Redis ([`super::redis_state`]) a batch's
//! observations are evaluated once recording their threshold steps, the steps are decided in
//! one round trip, and the observations where something fired are evaluated again with those
//! decisions (module `shared`); only then are the records stored (and so acked): while
//! Redis is unreachable the batch waits and is retried, nothing is evaluated without state and
//! nothing is acked, and the broker keeps what follows.
//!
//! Each of `engine.workers` runs one `Pipeline` for the things routed to it
//! ([`super::dispatch`]) and owns their threshold state, so it needs no lock. The directory is
//! shared, behind a std `RwLock` that is held only for a synchronous evaluation or event apply,
//! never across an await. Firings are handed to the webhook outbox, which makes this loop wait only when it is
//! full: a slow receiver stalls ingest only once the outbox's disk bound is reached.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use ingest::{AckToken, Acker, Inbound, ShadowUpdate};
use rule_engine::deferred::Step;
use rule_engine::directory::ThingChange;
use rule_engine::{
    Directory, DomainTree, Engine, Firing, Outcome, ParseLimits, ParsedObservation, ThresholdState,
    Thresholds,
};
use sinks::objects::{
    build_error_record, build_record, build_record_from_json, NotAnObject, ObjectSinkHandle,
    PayloadKeys, RecordBatch, RecordKind,
};
use sinks::webhook::{WebhookHandle, WebhookRequest};
use tokio::sync::{mpsc, oneshot, watch};

use super::acks::{Ack, JointAck};
use super::dedupe::{observation_id, Delivery, Redeliveries};
use super::outputs::Token;
use super::rules::RuleSet;
use super::saved_state::Saver;
use crate::store::RuleStore;

mod resolving;
mod shared;

pub use resolving::Resolving;
pub use shared::SharedState;

pub struct Pipeline {
    pub inbound: Input,
    pub rules: watch::Receiver<Arc<RuleSet>>,
    pub state: ThresholdBackend,
    pub stages: Stages,
}

/// Where a worker's messages come from: the source's channel itself (one worker), or the
/// dispatcher's batches of its things' messages ([`super::dispatch`]).
pub enum Input {
    Messages(mpsc::Receiver<Inbound>),
    Batches {
        rx: mpsc::Receiver<Batch>,
        /// Set by the engine's shutdown once the source has stopped: a worker that cannot make
        /// progress (Redis unreachable) then gives up, as one reading the source would when
        /// the source's channel closes.
        stopping: watch::Receiver<bool>,
    },
}

/// What the dispatcher sends a worker.
#[derive(Debug)]
pub enum Batch {
    /// Messages of the worker's things, in arrival order.
    Messages(Vec<Inbound>),
    /// Answered once everything sent before it has been handled ([`super::dispatch`]).
    Fence(oneshot::Sender<()>),
}

/// What [`Input::recv_many`] got.
enum Received {
    Messages,
    Fence(oneshot::Sender<()>),
    Closed,
}

impl Input {
    /// Waits for messages and appends what is waiting to `batch` (up to [`BATCH_MAX`], or one
    /// dispatcher batch), or a fence.
    async fn recv_many(&mut self, batch: &mut Vec<Inbound>) -> Received {
        match self {
            Input::Messages(rx) => match rx.recv_many(batch, BATCH_MAX).await {
                0 => Received::Closed,
                _ => Received::Messages,
            },
            Input::Batches { rx, .. } => match rx.recv().await {
                Some(Batch::Messages(mut items)) => {
                    if batch.is_empty() {
                        std::mem::swap(batch, &mut items);
                    } else {
                        batch.append(&mut items);
                    }
                    Received::Messages
                }
                Some(Batch::Fence(done)) => Received::Fence(done),
                None => Received::Closed,
            },
        }
    }

    /// Whether the source is gone (shutdown).
    fn is_closed(&self) -> bool {
        match self {
            Input::Messages(rx) => rx.is_closed(),
            Input::Batches { rx, stopping } => rx.is_closed() || *stopping.borrow(),
        }
    }
}

/// Where threshold state lives (`engine.state`).
pub enum ThresholdBackend {
    Local(LocalState),
    Redis(SharedState),
}

/// Threshold state in this process, saved to the store now and then.
pub struct LocalState {
    pub state: ThresholdState,
    pub saver: Saver,
}

/// Everything an observation goes through besides the threshold state: the directory, the
/// webhook queue, the spool, the indexer, the redelivery window and the metrics.
pub struct Stages {
    pub acker: Acker,
    pub directory: Arc<RwLock<Directory>>,
    pub store: RuleStore,
    pub webhooks: WebhookHandle<Ack>,
    pub objects: ObjectSinkHandle<Token>,
    /// Records and markers for the spool, handed over at the end of each batch
    /// ([`Stages::hand_over`]).
    pub spool: RecordBatch<Token>,
    pub limits: ParseLimits,
    /// Prefix of idempotency keys, unique per process start.
    pub key_prefix: String,
    /// What tells a redelivery: the ids taken for the spool lately (see [`Stages::store`]), and
    /// what the spool and the webhook outbox recovered at start.
    pub redeliveries: Redeliveries,
    pub metrics: HotMetrics,
    pub domain_paths: DomainPaths,
    /// `directory.check_topic_domain`: an update on `thing-update/<domainPath>/<thingName>`
    /// whose path is not the thing's is not evaluated (spec 9.1.2).
    pub check_topic_domain: bool,
    /// Actions handed to the webhook dispatcher so far: the sequence in idempotency keys.
    pub actions_sent: u64,
    /// Updates of unknown things wait here for `directory.resolver`'s answer.
    pub resolving: Option<Resolving>,
    /// Updates whose answer came, to go through the pipeline before anything newer.
    pub released: Vec<Inbound>,
    /// The batch being handled is `released`: its updates do not wait again.
    pub releasing: bool,
}

/// Messages taken from the source at once, at most: one Redis round trip decides their
/// threshold steps.
pub const BATCH_MAX: usize = 256;

/// An observation evaluated once (threshold steps recorded), waiting for its decisions.
struct Pending {
    shadow: ShadowUpdate,
    id: u64,
    delivery: Delivery,
    observed: Observed,
    steps: Vec<Step>,
}

/// An evaluated observation, to be stored ([`Stages::complete`]).
struct Evaluated {
    thing_name: String,
    record: Vec<u8>,
    kind: RecordKind,
    received_at_ms: u64,
    id: u64,
    delivery: Delivery,
    /// Whether it counted as an evaluation.
    counted: bool,
}

/// An evaluated observation whose firings go to the outbox before it is stored.
struct Fired {
    requests: Vec<WebhookRequest>,
    ack: Ack,
    observation: Evaluated,
}

/// What a message with local threshold state still needs after [`Stages::handle_local`].
enum Later {
    /// A life cycle event, applied to the directory and the store.
    Event {
        topic: String,
        payload: bytes::Bytes,
        ack: AckToken,
    },
    /// An evaluated observation's last step, and the updates the resolver released with it,
    /// to handle after it.
    Observation {
        waiting: Waiting,
        then: Vec<ShadowUpdate>,
    },
}

/// What an evaluated observation still waits for.
enum Waiting {
    /// A redelivered copy of one handled already ([`Stages::skip_copy`]).
    Copy { thing_name: String, token: AckToken },
    /// Room in the webhook outbox for its firings.
    Fired(Fired),
}

/// What evaluating and recording an observation produced.
struct Observed {
    record: Vec<u8>,
    kind: RecordKind,
    /// `None` when the payload was not evaluated (rejected by the parser).
    outcome: Option<Outcome>,
}

/// The `<domainPath>` of each domain (`root/sub1/sub2`), for the records: walking the tree and
/// joining the path took two allocations per observation. Valid for one version of the tree.
#[derive(Debug, Default)]
pub struct DomainPaths {
    version: u64,
    paths: HashMap<String, Box<str>>,
}

/// Paths cached at most; past that the cache starts over (only with this many domains in use).
const DOMAIN_PATHS_MAX: usize = 100_000;

impl DomainPaths {
    fn get(&mut self, tree: &DomainTree, domain: &str) -> &str {
        if tree.version() != self.version || self.paths.len() >= DOMAIN_PATHS_MAX {
            self.paths.clear();
            self.version = tree.version();
        }
        if !self.paths.contains_key(domain) {
            let path = tree.path(domain).join("/").into_boxed_str();
            self.paths.insert(domain.to_owned(), path);
        }
        self.paths.get(domain).map_or("", |p| p)
    }
}

/// Handles of the metrics every observation touches, registered once: a `counter!` call looks
/// its key up in the registry each time, which the hot path need not pay. The counts of every
/// observation are tallied here and added to the shared counters once per batch
/// ([`HotMetrics::flush`]): an atomic add per counter and observation made the workers take
/// turns at the counters' cache lines.
pub struct HotMetrics {
    received: Tallied,
    evaluated: Tallied,
    evaluated_again: metrics::Counter,
    unknown_thing: Tallied,
    rules_evaluated: Tallied,
    rules_matched: Tallied,
    rules_throttled: Tallied,
    webhooks_fired: metrics::Counter,
    rules_fired: metrics::Counter,
    evaluation_seconds: metrics::Histogram,
    /// Observations since the last timed evaluation.
    untimed: u32,
}

/// A counter and what was counted since the last flush.
struct Tallied {
    counter: metrics::Counter,
    pending: u64,
}

impl Tallied {
    fn new(counter: metrics::Counter) -> Self {
        Self {
            counter,
            pending: 0,
        }
    }

    fn add(&mut self, n: u64) {
        self.pending += n;
    }

    fn flush(&mut self) {
        if self.pending > 0 {
            self.counter.increment(std::mem::take(&mut self.pending));
        }
    }
}

impl HotMetrics {
    /// Call after the metrics recorder is installed.
    pub fn register() -> HotMetrics {
        HotMetrics {
            received: Tallied::new(metrics::counter!("ccstream_observations_received_total")),
            evaluated: Tallied::new(metrics::counter!("ccstream_observations_evaluated_total")),
            evaluated_again: metrics::counter!("ccstream_observations_evaluated_again_total"),
            unknown_thing: Tallied::new(metrics::counter!(
                "ccstream_observations_unknown_thing_total"
            )),
            rules_evaluated: Tallied::new(metrics::counter!("ccstream_rules_evaluated_total")),
            rules_matched: Tallied::new(metrics::counter!("ccstream_rules_matched_total")),
            rules_throttled: Tallied::new(metrics::counter!("ccstream_rules_throttled_total")),
            webhooks_fired: metrics::counter!("ccstream_actions_fired_total", "type" => "WEBHOOK"),
            rules_fired: metrics::counter!("ccstream_rules_fired_total"),
            evaluation_seconds: metrics::histogram!("ccstream_evaluation_duration_seconds"),
            untimed: 0,
        }
    }

    /// Adds what was tallied to the shared counters.
    fn flush(&mut self) {
        for tallied in [
            &mut self.received,
            &mut self.evaluated,
            &mut self.unknown_thing,
            &mut self.rules_evaluated,
            &mut self.rules_matched,
            &mut self.rules_throttled,
        ] {
            tallied.flush();
        }
    }

    /// Whether to time this evaluation: one in [`EVALUATION_SAMPLE`]. Two clock reads and a
    /// histogram sample per observation cost more than a fast evaluation itself, and a sample
    /// of the evaluations shows the same distribution.
    fn next_evaluation_is_timed(&mut self) -> bool {
        self.untimed += 1;
        if self.untimed >= EVALUATION_SAMPLE {
            self.untimed = 0;
            true
        } else {
            false
        }
    }
}

/// One evaluation in this many is timed into `ccstream_evaluation_duration_seconds`.
pub const EVALUATION_SAMPLE: u32 = 64;

impl Pipeline {
    /// Runs until the source closes its channel (shutdown), acking everything it handled;
    /// updates still waiting for the resolver then are left unacked for the broker to send again.
    pub async fn run(mut self) {
        let mut rules = Arc::clone(&self.rules.borrow_and_update());
        let mut batch = Vec::with_capacity(BATCH_MAX);
        loop {
            // What the last batch took for the spool goes there before anything else.
            self.stages.hand_over().await;
            self.stages.releasing = !self.stages.released.is_empty();
            if self.stages.releasing {
                let n = self.stages.released.len().min(BATCH_MAX);
                batch.extend(self.stages.released.drain(..n));
            } else {
                match self.next_batch(&mut batch).await {
                    Next::Batch => {}
                    Next::Closed => break,
                    Next::Fence(done) => {
                        // Everything received before it has been handled: batches are handled
                        // whole before the next one is taken.
                        let _ = done.send(());
                        continue;
                    }
                    Next::Answer(name, answer) => {
                        self.stages.on_answer(name, answer).await;
                        continue;
                    }
                    Next::ResolverGone => {
                        self.stages.resolver_gone();
                        continue;
                    }
                }
            }
            if self.rules.has_changed().unwrap_or(false) {
                let next = Arc::clone(&self.rules.borrow_and_update());
                if let ThresholdBackend::Local(local) = &mut self.state {
                    forget_changed_rules(&mut local.state, &rules, &next);
                }
                rules = next;
            }
            match &mut self.state {
                ThresholdBackend::Local(local) => {
                    for item in batch.drain(..) {
                        let state = &mut local.state;
                        if let Some(later) = self.stages.handle_local(&rules, item, state) {
                            Box::pin(self.stages.finish_local(&rules, later, state)).await;
                        }
                    }
                    // Before the state that counts them may be saved.
                    self.stages.hand_over().await;
                    local.saver.tick(&local.state, &rules);
                }
                ThresholdBackend::Redis(shared) => {
                    let completed = self
                        .stages
                        .handle_shared(&rules, &mut batch, shared, &self.inbound)
                        .await;
                    if !completed {
                        tracing::warn!(
                            "shutting down while Redis is unreachable: the messages not \
                             evaluated are left to the broker"
                        );
                        break;
                    }
                }
            }
        }
        self.stages.hand_over().await;
        if let ThresholdBackend::Local(local) = &mut self.state {
            local.saver.finish(&local.state, &rules).await;
        }
        tracing::info!("observation pipeline stopped");
    }

    /// Waits for messages (into `batch`) or a resolver's answer.
    async fn next_batch(&mut self, batch: &mut Vec<Inbound>) -> Next {
        let Some(resolving) = self.stages.resolving.as_mut() else {
            return self.inbound.recv_many(batch).await.into();
        };
        tokio::select! {
            biased;
            answer = resolving.answer() => match answer {
                Some((name, answer)) => Next::Answer(name, answer),
                None => Next::ResolverGone,
            },
            received = self.inbound.recv_many(batch) => received.into(),
        }
    }
}

/// What woke the pipeline up.
enum Next {
    Batch,
    Closed,
    Fence(oneshot::Sender<()>),
    Answer(String, crate::resolver::Answer),
    ResolverGone,
}

impl From<Received> for Next {
    fn from(received: Received) -> Next {
        match received {
            Received::Messages => Next::Batch,
            Received::Fence(done) => Next::Fence(done),
            Received::Closed => Next::Closed,
        }
    }
}

impl Stages {
    /// With a resolver, an update of a thing the directory does not know waits for the answer
    /// ([`resolving`]). What goes on now, in order: `shadow`, nothing (it waits), or a thing's
    /// waiting updates before it (the waiting room is full).
    fn hold_if_unknown(&mut self, shadow: ShadowUpdate) -> Vec<ShadowUpdate> {
        let resolving = match &mut self.resolving {
            Some(r) if !self.releasing => r,
            _ => return vec![shadow],
        };
        let known = match self.directory.read() {
            Ok(d) => d.thing(&shadow.thing_name).is_some(),
            Err(poisoned) => poisoned.into_inner().thing(&shadow.thing_name).is_some(),
        };
        resolving.admit(shadow, known, Instant::now())
    }

    /// A resolver's answer: a found thing goes into the directory and the store, and the
    /// thing's waiting updates are handled next.
    async fn on_answer(&mut self, thing_name: String, answer: crate::resolver::Answer) {
        let Some(resolving) = &mut self.resolving else {
            return;
        };
        let resolved = resolving.on_answer(thing_name, answer, Instant::now());
        if let Some(found) = resolved.found {
            let snapshot = found.snapshot(&resolved.thing_name);
            let applied = {
                let mut directory = match self.directory.write() {
                    Ok(d) => d,
                    Err(poisoned) => poisoned.into_inner(),
                };
                let unchanged = found.ancestors.is_none()
                    && directory.thing(&resolved.thing_name).is_some_and(|t| {
                        t.thing_type() == found.thing_type && t.domain() == found.domain
                    });
                if unchanged {
                    None
                } else {
                    Some(directory.import(&snapshot))
                }
            };
            match applied {
                None => {}
                Some(Ok(())) => {
                    tracing::debug!(thing = %resolved.thing_name, domain = %found.domain, "thing added to the directory from the resolver");
                    if let Err(e) = self.store.import_directory(&snapshot).await {
                        // In memory it is known; the next start asks again.
                        metrics::counter!("ccstream_store_errors_total").increment(1);
                        tracing::error!(thing = %resolved.thing_name, error = %e, "cannot store a resolved thing");
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(thing = %resolved.thing_name, error = %e, "the resolver's answer does not fit the directory; the thing stays unknown");
                    if let Some(resolving) = &mut self.resolving {
                        resolving.refused(&resolved.thing_name, Instant::now());
                    }
                }
            }
        }
        self.released
            .extend(resolved.released.into_iter().map(Inbound::Shadow));
    }

    /// The resolver's task is gone (it panicked): what waits goes on unevaluated, and nothing
    /// waits from now on.
    fn resolver_gone(&mut self) {
        if let Some(mut resolving) = self.resolving.take() {
            tracing::error!(
                "the directory resolver stopped; updates of unknown things are no longer looked up"
            );
            self.released
                .extend(resolving.release_all().into_iter().map(Inbound::Shadow));
        }
    }

    /// One message with local threshold state, as far as it goes without waiting; what must
    /// wait is returned, for [`finish_local`](Self::finish_local).
    ///
    /// Most observations need no `.await` (nothing fires, and the spool takes records without
    /// waiting, see [`Stages::hand_over`]), so they are handled by plain calls. Awaiting an
    /// async step per observation built and copied a future of up to 2 KB each time, which
    /// made `memmove` a tenth of a worker's time.
    fn handle_local(
        &mut self,
        rules: &RuleSet,
        item: Inbound,
        state: &mut ThresholdState,
    ) -> Option<Later> {
        match item {
            Inbound::Shadow(shadow) if self.resolving.is_none() || self.releasing => self
                .handle_shadow_local(rules, shadow, state)
                .map(|waiting| Later::Observation {
                    waiting,
                    then: Vec::new(),
                }),
            Inbound::Shadow(shadow) => {
                let mut admitted = self.hold_if_unknown(shadow).into_iter();
                while let Some(shadow) = admitted.next() {
                    if let Some(waiting) = self.handle_shadow_local(rules, shadow, state) {
                        return Some(Later::Observation {
                            waiting,
                            then: admitted.collect(),
                        });
                    }
                }
                None
            }
            Inbound::Event {
                topic,
                payload,
                ack,
                ..
            } => Some(Later::Event {
                topic,
                payload,
                ack,
            }),
        }
    }

    /// Completes what [`handle_local`](Self::handle_local) returned. What the batch took for
    /// the spool before goes there first: it waits for nothing this one waits for.
    async fn finish_local(&mut self, rules: &RuleSet, later: Later, state: &mut ThresholdState) {
        self.hand_over().await;
        match later {
            Later::Observation { waiting, then } => {
                self.finish_waiting(waiting).await;
                for shadow in then {
                    if let Some(waiting) = self.handle_shadow_local(rules, shadow, state) {
                        self.finish_waiting(waiting).await;
                    }
                }
            }
            Later::Event {
                topic,
                payload,
                ack,
            } => {
                if let Some(thing) = self.apply_event(&topic, &payload).await {
                    let dropped = state.forget_thing(&thing);
                    tracing::debug!(%thing, dropped, "thing removed; threshold state dropped");
                }
                self.acker.ack(ack);
            }
        }
    }

    /// One shadow update with local threshold state, as far as it goes without waiting; what
    /// must wait is returned.
    fn handle_shadow_local(
        &mut self,
        rules: &RuleSet,
        shadow: ShadowUpdate,
        state: &mut ThresholdState,
    ) -> Option<Waiting> {
        self.metrics.received.add(1);
        let id = observation_id(shadow.pkid, &shadow.thing_name, &shadow.payload);
        let delivery = self.redeliveries.classify(shadow.dup, id);
        if delivery == Delivery::Done {
            return Some(Waiting::Copy {
                thing_name: shadow.thing_name,
                token: shadow.ack,
            });
        }
        let observed = self.observe(rules, &shadow, state);
        self.finish(shadow, id, delivery, observed)
            .map(Waiting::Fired)
    }

    /// Completes what [`handle_shadow_local`](Self::handle_shadow_local) left.
    async fn finish_waiting(&mut self, waiting: Waiting) {
        match waiting {
            Waiting::Copy { thing_name, token } => self.skip_copy(&thing_name, token).await,
            Waiting::Fired(fired) => self.finish_firing(fired).await,
        }
    }

    /// Counts the outcome and stores the record, or marks a redelivery whose record is stored;
    /// the message is acked once the record (and its firings, if any) are on disk
    /// ([`super::acks`]). An observation that fired is returned instead, for
    /// [`finish_firing`](Self::finish_firing): its firings go to the outbox first. A
    /// redelivery after a crash completes only the part the earlier run did not
    /// ([`Delivery`]).
    fn finish(
        &mut self,
        shadow: ShadowUpdate,
        id: u64,
        delivery: Delivery,
        observed: Observed,
    ) -> Option<Fired> {
        let mut evaluated = false;
        let mut requests = Vec::new();
        if let Some(outcome) = observed.outcome {
            evaluated = self.count_outcome(&outcome);
            requests = self.webhook_requests(&shadow.thing_name, outcome.firings);
            if !requests.is_empty() && delivery == Delivery::FiredNotStored {
                metrics::counter!("ccstream_actions_refire_skipped_total").increment(1);
                tracing::debug!(thing = %shadow.thing_name, "redelivered observation fired before the restart; its firings are in the outbox");
                requests.clear();
            }
        }
        let observation = Evaluated {
            thing_name: shadow.thing_name,
            record: observed.record,
            kind: observed.kind,
            received_at_ms: shadow.received_at_ms,
            id,
            delivery,
            counted: evaluated,
        };
        let ack = Ack::One(shadow.ack);
        if requests.is_empty() {
            self.complete(observation, ack);
            return None;
        }
        Some(Fired {
            requests,
            ack,
            observation,
        })
    }

    /// Hands a firing observation's requests to the outbox (waiting while it is full), then
    /// completes it as [`finish`](Self::finish) does the others.
    async fn finish_firing(&mut self, fired: Fired) {
        let ack = self
            .enqueue_webhooks(fired.requests, Some(fired.observation.id), fired.ack)
            .await;
        self.complete(fired.observation, ack);
    }

    /// Stores an observation's record, or, for a redelivery whose record the earlier run
    /// stored, only marks its place so that it is acked in turn.
    fn complete(&mut self, observation: Evaluated, ack: Ack) {
        if observation.delivery == Delivery::StoredNotFired {
            if observation.counted {
                // Evaluated by the earlier run too (its record is stored): counted twice in
                // `ccstream_observations_evaluated_total`, once here.
                self.metrics.evaluated_again.increment(1);
            }
            self.skip_redelivered(&observation.thing_name, ack);
            return;
        }
        self.store(
            &observation.record,
            observation.kind,
            observation.id,
            observation.received_at_ms,
            ack,
        );
    }

    /// Hands an observation's webhook requests to the outbox, with a share of its ack (see
    /// [`super::acks`]); returns the share the spool releases. Waits only while the outbox is
    /// full. When the outbox is closed (shutdown) the message is never acked and the broker
    /// sends it again.
    async fn enqueue_webhooks(
        &mut self,
        requests: Vec<WebhookRequest>,
        id: Option<u64>,
        ack: Ack,
    ) -> Ack {
        let Ack::One(token) = ack else { return ack };
        // The outbox may make this wait; what was taken for the spool does not.
        self.hand_over().await;
        let count = requests.len() as u64;
        let joint = JointAck::new(token);
        match self
            .webhooks
            .enqueue(requests, id, Ack::Joint(Arc::clone(&joint)))
            .await
        {
            Ok(()) => self.metrics.webhooks_fired.increment(count),
            Err(e) => {
                tracing::warn!(error = %e, "webhook outbox closed; the observation is left unacked for the broker to send again");
                // One release only: the token is never sent.
            }
        }
        Ack::Joint(joint)
    }

    /// Evaluates the rules and builds the record to store: the observation record, or an
    /// error record when the payload is not a JSON object or the topic names another domain.
    fn observe(
        &mut self,
        rules: &RuleSet,
        shadow: &ShadowUpdate,
        thresholds: &mut impl Thresholds,
    ) -> Observed {
        let thing_name = shadow.thing_name.as_str();
        let received_at_ms = shadow.received_at_ms;
        let payload = &shadow.payload[..];
        let directory = match self.directory.read() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        let thing = directory.thing(thing_name);
        let domain_path = thing.map(|t| self.domain_paths.get(directory.domains(), t.domain()));
        if let (true, Some(topic), Some(path), Some(t)) = (
            self.check_topic_domain,
            shadow.topic_domain.as_deref(),
            domain_path,
            thing,
        ) {
            // A domain the tree does not place (known by id only) has no path to hold the topic
            // to; asked only of a mismatch, off the common path.
            let placed =
                || t.domain() == rule_engine::ROOT || directory.domains().contains(t.domain());
            if !topic_names_path(topic, path) && placed() {
                let reason = format!(
                    "the topic's domain path {topic:?} is not the thing's domain path {:?}",
                    path.strip_prefix(rule_engine::ROOT)
                        .unwrap_or(path)
                        .trim_start_matches('/')
                );
                drop(directory);
                metrics::counter!("ccstream_observations_rejected_total", "reason" => "topic_domain")
                    .increment(1);
                tracing::debug!(thing = %thing_name, %reason, "observation not evaluated");
                return Observed {
                    record: build_error_record(payload, thing_name, received_at_ms, &reason),
                    kind: RecordKind::Errors,
                    outcome: None,
                };
            }
        }
        match ParsedObservation::parse(payload, &self.limits) {
            Ok(obs) => {
                let started = self.metrics.next_evaluation_is_timed().then(Instant::now);
                let outcome = Engine::new(&rules.index, &directory).evaluate_thing(
                    thing_name,
                    thing,
                    &obs,
                    received_at_ms,
                    thresholds,
                );
                if let Some(started) = started {
                    self.metrics
                        .evaluation_seconds
                        .record(started.elapsed().as_secs_f64());
                }
                // The parser read the whole payload (a JSON object, no need to validate it
                // again) and noted the top-level keys the record sets.
                let keys = obs.top_level_keys();
                let record = build_record_from_json(
                    obs.json_object(),
                    thing_name,
                    received_at_ms,
                    domain_path,
                    Some(PayloadKeys {
                        thing_name: keys.thing_name,
                        timestamp: keys.timestamp,
                        domain: keys.domain,
                    }),
                );
                drop(directory);
                let (record, kind) = record_or_error(record, payload, thing_name, received_at_ms);
                Observed {
                    record,
                    kind,
                    outcome: Some(outcome),
                }
            }
            Err(reject) => {
                let record = build_record(payload, thing_name, received_at_ms, domain_path);
                drop(directory);
                metrics::counter!("ccstream_observations_rejected_total", "reason" => reject.as_str())
                    .increment(1);
                tracing::debug!(thing = %thing_name, reason = reject.as_str(), "observation not evaluated");
                let (record, kind) = record_or_error(record, payload, thing_name, received_at_ms);
                Observed {
                    record,
                    kind,
                    outcome: None,
                }
            }
        }
    }

    /// A redelivery of an observation this run already handled ([`Delivery::Done`]): acked
    /// once the spool and the outbox have both committed everything handed to them before it.
    /// The earlier copy's firings may still wait for room in a full outbox, and the copy's
    /// PUBACK (the same packet id) must not tell the broker they are safe before they are.
    async fn skip_copy(&mut self, thing_name: &str, token: AckToken) {
        let ack = self
            .enqueue_webhooks(Vec::new(), None, Ack::One(token))
            .await;
        self.skip_redelivered(thing_name, ack);
    }

    /// A redelivery of an observation already handed to the spool: not stored again, acked
    /// once the spool has committed everything before it (the earlier copy included).
    fn skip_redelivered(&mut self, thing_name: &str, ack: Ack) {
        metrics::counter!("ccstream_observations_redelivered_skipped_total").increment(1);
        tracing::debug!(thing = %thing_name, "redelivered observation already stored; not stored again");
        self.spool.push_marker(Some(ack));
    }

    /// Adds the record with the observation's id to the batch for the spool (which acks it
    /// after its group commit; the search index follows the spool) and remembers the id for
    /// redeliveries.
    fn store(&mut self, record: &[u8], kind: RecordKind, id: u64, received_at_ms: u64, ack: Ack) {
        match self
            .spool
            .push_record(record, kind, id, received_at_ms, Some(ack))
        {
            // Recorded when taken, not at commit, so that a copy later in the same batch is
            // known: the batch goes to the spool before the worker waits for anything (see
            // `hand_over`), the batcher commits what it was handed even if the connection
            // drops, and after a crash the committed ids come back from the spool (see
            // `super::dedupe`).
            Ok(()) => self.redeliveries.insert(id),
            Err(e) => {
                metrics::counter!("ccstream_objects_append_refused_total").increment(1);
                tracing::warn!(error = %e, "record not stored");
            }
        }
    }

    /// Hands the records and markers taken since the last call to the spool in one message:
    /// the spool's thread, which every worker shares, then does one hand-over per batch
    /// instead of one per observation. Called before the worker waits for anything else (its
    /// next messages, room in the webhook outbox, the store, Redis), so what was taken waits
    /// on nothing but the spool. The counts of what was handled go to the metrics here too.
    async fn hand_over(&mut self) {
        self.metrics.flush();
        if self.spool.is_empty() {
            return;
        }
        let next = RecordBatch::with_capacity(self.spool.len(), self.spool.frame_bytes());
        let batch = std::mem::replace(&mut self.spool, next);
        if self.objects.append_batch(batch).await.is_err() {
            // Not acked, so the broker delivers them again after the restart, when the spool's
            // recovered ids know those that were stored before.
            self.sink_closed();
        }
    }

    /// The object sink took no more: normal while shutting down, an error when its batcher
    /// died (then every message from here on is left to the broker, and `/readyz` says why).
    fn sink_closed(&self) {
        match self.objects.failure() {
            Some(reason) => tracing::error!(%reason, "observation not stored"),
            None => tracing::debug!("object sink closed; observation left to the broker"),
        }
    }

    /// The evaluation's metrics; whether it counted as an evaluation (the thing was known).
    fn count_outcome(&mut self, outcome: &Outcome) -> bool {
        if outcome.unknown_thing {
            self.metrics.unknown_thing.add(1);
            return false;
        }
        self.metrics.evaluated.add(1);
        self.metrics.rules_evaluated.add(outcome.evaluated.into());
        self.metrics.rules_matched.add(outcome.matched.into());
        self.metrics.rules_throttled.add(outcome.throttled.into());
        if outcome.state_full > 0 {
            metrics::counter!("ccstream_rules_threshold_state_full_total")
                .increment(outcome.state_full.into());
        }
        for firing in &outcome.firings {
            self.metrics.rules_fired.increment(1);
            if firing.unknown_variables > 0 {
                metrics::counter!("ccstream_template_unknown_variables_total")
                    .increment(firing.unknown_variables.into());
            }
        }
        true
    }

    /// Turns each firing's filled actions into webhook requests.
    fn webhook_requests(&mut self, thing_name: &str, firings: Vec<Firing>) -> Vec<WebhookRequest> {
        let mut requests = Vec::new();
        for firing in firings {
            for action in &firing.actions {
                self.actions_sent += 1;
                // Stable across the retries of this firing (the dispatcher reuses it, and the
                // outbox keeps it across restarts), unique across firings and process starts.
                let key = format!("{}-{:x}", self.key_prefix, self.actions_sent);
                match WebhookRequest::from_action_config(
                    firing.rule_id.as_ref(),
                    &action.config,
                    &firing.payload,
                    key,
                ) {
                    Ok(request) => requests.push(request),
                    Err(e) => {
                        metrics::counter!("ccstream_actions_invalid_total").increment(1);
                        tracing::warn!(rule = %firing.rule_id, thing = %thing_name, error = %e, "action not sent: its filled config is not a valid request");
                    }
                }
            }
        }
        requests
    }

    /// Applies a life cycle event to the directory (and the store). Returns the name of a
    /// thing it removed, whose threshold state the caller drops.
    async fn apply_event(&mut self, topic: &str, payload: &[u8]) -> Option<String> {
        metrics::counter!("ccstream_events_received_total").increment(1);
        let change = {
            let mut directory = match self.directory.write() {
                Ok(d) => d,
                Err(poisoned) => poisoned.into_inner(),
            };
            directory.apply_event(topic, payload)
        };
        let change = match change {
            Ok(c) => c,
            Err(e) => {
                metrics::counter!("ccstream_events_rejected_total").increment(1);
                tracing::warn!(topic, error = %e, "life cycle event not applied");
                return None;
            }
        };
        if let Err(e) = self.store.apply_directory_change(&change).await {
            // The in-memory directory has the change; it is lost at the next restart only.
            metrics::counter!("ccstream_store_errors_total").increment(1);
            tracing::error!(topic, error = %e, "cannot persist a directory change");
        }
        if let Some(resolving) = &mut self.resolving {
            if let ThingChange::Upserted { thing_name, .. }
            | ThingChange::Removed { thing_name, .. } = &change.thing
            {
                resolving.on_event(thing_name);
            }
        }
        match change.thing {
            ThingChange::Removed { thing_name, .. } => Some(thing_name),
            _ => None,
        }
    }
}

/// Drops the local threshold state of rules that were removed or changed: a changed expression
/// or threshold starts counting afresh. (In Redis, a changed rule's keys change with it; see
/// [`super::redis_state`].) When `new` was made from `old` by a batch of changes, only the rules
/// in the batch are compared; otherwise (a full load, or sets published in between, which the
/// pipeline did not see) all of them.
fn forget_changed_rules(state: &mut ThresholdState, old: &RuleSet, new: &RuleSet) {
    let changed = |id: &str| {
        old.index.compiled_rule(id).is_some_and(|was| {
            !new.index
                .compiled_rule(id)
                .is_some_and(|now| Arc::ptr_eq(now, was) || now.rule() == was.rule())
        })
    };
    let gone: HashSet<&str> = match &new.changed_since {
        Some((from, ids)) if *from == old.serial => ids
            .iter()
            .map(String::as_str)
            .filter(|id| changed(id))
            .collect(),
        _ => old
            .index
            .compiled()
            .map(|r| &**r.id())
            .filter(|id| changed(id))
            .collect(),
    };
    if !gone.is_empty() {
        state.forget_rules(|rule| gone.contains(rule));
    }
}

/// Whether a `thing-update` topic's domain path (`""` for root, `sub1/sub2` below it: the root
/// is implicit in topics, spec 9.1) is the thing's full path (`root`, `root/sub1/sub2`).
fn topic_names_path(topic: &str, path: &str) -> bool {
    match path.strip_prefix(rule_engine::ROOT) {
        Some("") => topic.is_empty(),
        Some(below) => below.strip_prefix('/') == Some(topic),
        None => false,
    }
}

/// The observation record, or an error record when the payload is not a JSON object.
fn record_or_error(
    record: Result<Vec<u8>, NotAnObject>,
    payload: &[u8],
    thing_name: &str,
    received_at_ms: u64,
) -> (Vec<u8>, RecordKind) {
    match record {
        Ok(record) => (record, RecordKind::Observations),
        Err(not_object) => {
            let reason = not_object.to_string();
            (
                build_error_record(payload, thing_name, received_at_ms, &reason),
                RecordKind::Errors,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counting_rule(id: &str, value: i64) -> rule_engine::Rule {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": id, "enabled": true,
            "filter": {"domain": "root", "thingType": "Pump"},
            "expression": {"operator": "gt", "resource": "temp", "value": value},
            "threshold": {"count": 3},
            "actions": []
        }))
        .expect("valid rule")
    }

    /// A threshold state with one run in progress for each rule of `set`, on thing `t1`.
    fn runs_of(set: &RuleSet) -> ThresholdState {
        let mut state = ThresholdState::new();
        for rule in set.index.compiled() {
            let path = rule_engine::threshold::ResourcePath::thing("temp");
            state.on_match(rule.id(), rule.throttle(), "t1", path, 0);
        }
        state
    }

    fn rules_with_runs(state: &ThresholdState) -> Vec<String> {
        let mut rules: Vec<String> = state.export().into_iter().map(|k| k.rule).collect();
        rules.sort();
        rules
    }

    #[test]
    fn a_batch_of_changes_forgets_the_runs_of_the_rules_it_changed() {
        let old = RuleSet::new(
            rule_engine::RuleIndex::from_rules(["a", "b", "c", "d"].map(|id| counting_rule(id, 1))),
            5,
        );
        // `a` changes, `b` goes, `c` is written again as it was, `d` is untouched.
        let new = old.with_changes(
            6,
            vec![counting_rule("a", 2), counting_rule("c", 1)],
            vec!["b".to_owned()],
        );
        let mut state = runs_of(&old);
        forget_changed_rules(&mut state, &old, &new);
        assert_eq!(rules_with_runs(&state), ["c", "d"]);

        // A set that was not made from `old` (sets published in between, a full load): every
        // rule is compared, with the same outcome.
        let reloaded = RuleSet::new(new.index.clone(), 6);
        let mut state = runs_of(&old);
        forget_changed_rules(&mut state, &old, &reloaded);
        assert_eq!(rules_with_runs(&state), ["c", "d"]);
        let skipped = new.with_changes(7, vec![], vec!["d".to_owned()]);
        let mut state = runs_of(&old);
        forget_changed_rules(&mut state, &old, &skipped);
        assert_eq!(rules_with_runs(&state), ["c"]);
    }

    #[test]
    fn one_evaluation_in_sixty_four_is_timed() {
        let mut metrics = HotMetrics::register();
        let timed: Vec<usize> = (1..=200)
            .filter(|_| metrics.next_evaluation_is_timed())
            .collect();
        assert_eq!(timed, vec![64, 128, 192]);
    }

    #[test]
    fn a_topic_names_the_path_below_the_implicit_root() {
        assert!(topic_names_path("", "root"));
        assert!(topic_names_path("sub1/sub2", "root/sub1/sub2"));
        assert!(
            !topic_names_path("root", "root"),
            "root is implicit in topics"
        );
        assert!(!topic_names_path("sub1", "root"));
        assert!(!topic_names_path("", "root/sub1"));
        assert!(
            !topic_names_path("sub2", "root/sub1/sub2"),
            "the full path, not the last level"
        );
        assert!(!topic_names_path("sub1/sub", "root/sub1/sub2"));
        assert!(!topic_names_path("sub1", "rootx/sub1"));
    }

    #[test]
    fn domain_paths_follow_the_tree() {
        let mut tree = DomainTree::from_pairs([("a", "root"), ("b", "a")]).expect("tree");
        let mut paths = DomainPaths::default();
        assert_eq!(paths.get(&tree, "b"), "root/a/b");
        assert_eq!(paths.get(&tree, "unknown"), "root/unknown");
        tree.insert("b", "root").expect("move b");
        assert_eq!(
            paths.get(&tree, "b"),
            "root/b",
            "a changed tree is not served stale"
        );
    }
}
