//! The pipeline with threshold state in Redis ([`crate::engine::redis_state`]): a batch's
//! observations are evaluated once recording their threshold steps, the steps are decided in
//! one round trip (retried while Redis is unreachable: nothing is evaluated or acked without
//! state), the observations where something fired are evaluated again with the decisions
//! ([`rule_engine::deferred`]), and only then are the records stored, in order.

use ccstream_common::Backoff;
use ingest::{Inbound, ShadowUpdate};
use rule_engine::deferred::{StepRecorder, StepReplay};
use rule_engine::{Decision, Engine, Outcome, ParsedObservation};

use super::{Input, Pending, Stages};
use crate::engine::dedupe::{observation_id, Delivery};
use crate::engine::redis_state::{ObservationSteps, RedisThresholds};
use crate::engine::rules::RuleSet;

/// Threshold state in Redis, and what retrying a batch needs.
pub struct SharedState {
    pub redis: RedisThresholds,
    /// Between round trips that failed.
    pub backoff: Backoff,
    /// This replica's MQTT client id: with the observation id, the id of an observation's
    /// threshold steps (see `step_id`).
    pub client_id: String,
}

/// The id of an observation's threshold steps in Redis: the client id and the observation id.
/// A QoS 1 redelivery after a crash comes to the same client (its persistent session) with the
/// same packet id and payload, so it has the same id and gets the decisions its first
/// evaluation got: a retry or a crash never counts a match twice. Two different messages share
/// it only if one thing sent the same payload twice with the same packet id to one client in a
/// row (packet ids cycle through 65,535 values per client), and then the second match is not
/// counted.
fn step_id(client_id: &str, observation_id: u64) -> String {
    format!("{client_id}-{observation_id:016x}")
}

impl Stages {
    /// A batch with threshold state in Redis: runs of observations are decided together,
    /// events are applied between them in arrival order. Returns false when the source shut
    /// down while Redis was unreachable (what was not stored is left unacked).
    pub(super) async fn handle_shared(
        &mut self,
        rules: &RuleSet,
        batch: &mut Vec<Inbound>,
        shared: &mut SharedState,
        inbound: &Input,
    ) -> bool {
        let mut pending: Vec<Pending> = Vec::new();
        for item in batch.drain(..) {
            match item {
                Inbound::Shadow(shadow) => {
                    for shadow in self.hold_if_unknown(shadow) {
                        self.metrics.received.add(1);
                        let id = observation_id(shadow.pkid, &shadow.thing_name, &shadow.payload);
                        // The original may still be waiting in this batch: it is stored first, so
                        // that the marker acks the copy after the original's commit.
                        let in_batch = shadow.dup && pending.iter().any(|p| p.id == id);
                        let delivery = if in_batch {
                            Delivery::Done
                        } else {
                            self.redeliveries.classify(shadow.dup, id)
                        };
                        if delivery == Delivery::Done {
                            if !self
                                .decide_and_store(rules, &mut pending, shared, inbound)
                                .await
                            {
                                return false;
                            }
                            self.skip_copy(&shadow.thing_name, shadow.ack).await;
                            continue;
                        }
                        let mut steps = Vec::new();
                        let observed =
                            self.observe(rules, &shadow, &mut StepRecorder { steps: &mut steps });
                        pending.push(Pending {
                            shadow,
                            id,
                            delivery,
                            observed,
                            steps,
                        });
                    }
                }
                Inbound::Event {
                    topic,
                    payload,
                    ack,
                    ..
                } => {
                    // Observations before the event are evaluated against the directory
                    // before it.
                    if !self
                        .decide_and_store(rules, &mut pending, shared, inbound)
                        .await
                    {
                        return false;
                    }
                    // A removed thing's keys in Redis expire on their own (see redis_state).
                    self.hand_over().await;
                    let _ = self.apply_event(&topic, &payload).await;
                    self.acker.ack(ack);
                }
            }
        }
        self.decide_and_store(rules, &mut pending, shared, inbound)
            .await
    }

    /// Decides the threshold steps of `pending` in one round trip (retried while Redis is
    /// unreachable), evaluates again the observations where something fired, dispatches their
    /// firings and stores every record, in order. False: the source shut down meanwhile.
    async fn decide_and_store(
        &mut self,
        rules: &RuleSet,
        pending: &mut Vec<Pending>,
        shared: &mut SharedState,
        inbound: &Input,
    ) -> bool {
        if pending.is_empty() {
            return true;
        }
        // Redis may make this wait (while it is unreachable); what was taken for the spool
        // before does not.
        self.hand_over().await;
        let ids: Vec<String> = pending
            .iter()
            .map(|p| {
                if p.steps.is_empty() {
                    String::new()
                } else {
                    step_id(&shared.client_id, p.id)
                }
            })
            .collect();
        let requests: Vec<ObservationSteps<'_>> = pending
            .iter()
            .zip(&ids)
            .map(|(p, id)| ObservationSteps {
                thing: &p.shadow.thing_name,
                steps: &p.steps,
                step_id: id,
                now_ms: p.shadow.received_at_ms,
            })
            .collect();
        let mut failures = 0;
        let decisions = loop {
            match shared
                .redis
                .decide(&requests, |rule| rules.state_key_part(rule))
                .await
            {
                Ok(d) => break d,
                Err(e) => {
                    if inbound.is_closed() {
                        return false;
                    }
                    failures += 1;
                    let delay = shared.backoff.delay(failures);
                    tracing::warn!(error = %e, retry_in = ?delay, observations = pending.len(), "threshold state unreachable; nothing is evaluated or acked until it answers");
                    tokio::time::sleep(delay).await;
                }
            }
        };
        drop(requests);
        for (mut p, decided) in pending.drain(..).zip(decisions) {
            if decided.contains(&Decision::Fire) {
                p.observed.outcome = self.evaluate_again(rules, &p.shadow, &decided);
            }
            let Pending {
                shadow,
                id,
                delivery,
                observed,
                ..
            } = p;
            if let Some(fired) = self.finish(shadow, id, delivery, observed) {
                self.finish_firing(fired).await;
            }
        }
        true
    }

    /// The second pass of [`rule_engine::deferred`]: the same evaluation, answered with the
    /// decisions Redis gave.
    fn evaluate_again(
        &mut self,
        rules: &RuleSet,
        shadow: &ShadowUpdate,
        decisions: &[Decision],
    ) -> Option<Outcome> {
        let obs = ParsedObservation::parse(&shadow.payload, &self.limits).ok()?;
        let directory = match self.directory.read() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        Some(Engine::new(&rules.index, &directory).evaluate(
            &shadow.thing_name,
            &obs,
            shadow.received_at_ms,
            &mut StepReplay::new(decisions),
        ))
    }
}
