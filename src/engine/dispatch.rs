//! Evaluation on every core: `engine.workers` pipeline tasks, each owning the threshold state of
//! the things routed to it, so none of them takes a lock for it.
//!
//! A thing belongs to one worker, chosen by a keyed hash of its name ([`Router`]): its updates
//! and its life cycle events go there in arrival order, so per-thing order holds, a count in a
//! row sees every match, and a removed thing's state is dropped by the worker that has it.
//! Acks stay in arrival order whatever order the workers finish in: the acker holds an early
//! PUBACK until the earlier ones are acked ([`ingest::Acker`]).
//!
//! The hash is keyed (a random key per process start) because thing names are chosen by
//! tenants: with a fixed hash, names picked to collide would load one worker with another
//! tenant's traffic.
//!
//! An event about no thing (a domain's) goes to worker 0. Either way an event is applied in
//! arrival order against every worker, not only its own: the directory it changes is shared
//! (see [`dispatch`]).

use std::hash::{BuildHasher, RandomState};

use ingest::Inbound;
use rule_engine::directory::event_thing_name;
use tokio::sync::{mpsc, oneshot};

use super::pipeline::{Batch, BATCH_MAX};

/// Which worker owns a thing.
#[derive(Debug, Clone)]
pub struct Router {
    keys: RandomState,
    workers: usize,
}

impl Router {
    /// Routes over `workers` (at least one).
    pub fn new(workers: usize) -> Self {
        Router {
            keys: RandomState::new(),
            workers: workers.max(1),
        }
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The worker that owns `thing_name`.
    pub fn worker_of(&self, thing_name: &str) -> usize {
        if self.workers == 1 {
            return 0;
        }
        // The remainder is below `workers`, a `usize`.
        (self.keys.hash_one(thing_name) % self.workers as u64) as usize
    }

    /// The worker a message goes to: its thing's.
    pub fn route(&self, item: &Inbound) -> usize {
        match item {
            Inbound::Shadow(shadow) => self.worker_of(&shadow.thing_name),
            Inbound::Event { payload, .. } if self.workers > 1 => {
                event_thing_name(payload).map_or(0, |name| self.worker_of(&name))
            }
            Inbound::Event { .. } => 0,
        }
    }
}

/// Batches each worker's channel holds: a worker falling behind holds up the dispatcher (and
/// the others) only once this many are waiting for it.
pub const QUEUED_BATCHES: usize = 64;

/// Moves messages from the source to their workers until the source closes its channel; then
/// the workers' channels close and each worker ends when it has drained its own.
///
/// What the source has waiting is taken at once and handed out as one batch per worker, in
/// arrival order within each: a message at a time would wake a worker, and the thread it runs
/// on, per message.
///
/// A life cycle event changes the directory every worker reads (a domain's place in the tree,
/// which the `thing-update` topic check and the records' paths use), so it is applied in
/// arrival order against all of them: every worker first handles what came before it (a
/// fence), then its thing's worker applies it, and only then does anything after it go out.
/// Events are rare; the fences cost a round trip through the workers each.
///
/// Waits when a worker's channel is full (backpressure reaches the source, and through it the
/// broker). A worker that is gone gets nothing more: its messages are dropped unacked, which
/// the broker sends again after a restart.
pub async fn dispatch(
    mut from: mpsc::Receiver<Inbound>,
    to: Vec<mpsc::Sender<Batch>>,
    router: Router,
) {
    let mut workers = Workers {
        lanes: to.iter().map(|_| Vec::new()).collect(),
        gone: vec![false; to.len()],
        to,
    };
    let mut batch = Vec::with_capacity(BATCH_MAX);
    while from.recv_many(&mut batch, BATCH_MAX).await > 0 {
        for item in batch.drain(..) {
            let worker = router.route(&item);
            if matches!(item, Inbound::Event { .. }) && workers.to.len() > 1 {
                workers.flush().await;
                workers.fence(0..workers.to.len()).await;
                workers.send(worker, Batch::Messages(vec![item])).await;
                workers.fence(worker..=worker).await;
            } else if let Some(lane) = workers.lanes.get_mut(worker) {
                lane.push(item);
            }
        }
        workers.flush().await;
    }
}

/// The dispatcher's side of the workers' channels.
struct Workers {
    to: Vec<mpsc::Sender<Batch>>,
    /// Messages for each worker, not sent yet.
    lanes: Vec<Vec<Inbound>>,
    /// Workers found gone (logged once each).
    gone: Vec<bool>,
}

impl Workers {
    /// Sends each worker its lane.
    async fn flush(&mut self) {
        for worker in 0..self.to.len() {
            if !self.lanes[worker].is_empty() {
                let lane = std::mem::take(&mut self.lanes[worker]);
                self.send(worker, Batch::Messages(lane)).await;
            }
        }
    }

    async fn send(&mut self, worker: usize, batch: Batch) {
        if self.to[worker].send(batch).await.is_err() && !self.gone[worker] {
            self.gone[worker] = true;
            metrics::counter!("ccstream_engine_workers_failed_total").increment(1);
            tracing::error!(
                worker,
                "an engine worker stopped; its things' messages are left unacked for the broker \
                 to send again after a restart"
            );
        }
    }

    /// Waits until each of `workers` has handled everything sent to it so far (a worker that is
    /// gone answers at once: its fence is dropped with its channel).
    async fn fence(&mut self, workers: impl Iterator<Item = usize>) {
        let mut answers = Vec::new();
        for worker in workers {
            let (done, answer) = oneshot::channel();
            self.send(worker, Batch::Fence(done)).await;
            answers.push(answer);
        }
        for answer in answers {
            let _ = answer.await;
        }
    }
}

/// Sends each of a shared channel's items to its worker, by the thing name it carries: the
/// resolver answers every worker's requests on one channel.
pub async fn route_by_thing<T>(
    mut from: mpsc::Receiver<(String, T)>,
    to: Vec<mpsc::Sender<(String, T)>>,
    router: Router,
) {
    while let Some((name, item)) = from.recv().await {
        if let Some(tx) = to.get(router.worker_of(&name)) {
            // A worker that is gone has nobody waiting for the answer.
            let _ = tx.send((name, item)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ingest::{AckToken, ShadowUpdate};

    fn shadow(thing: &str, seq: u64) -> Inbound {
        Inbound::Shadow(ShadowUpdate {
            thing_name: thing.to_owned(),
            topic_domain: None,
            received_at_ms: seq,
            payload: Bytes::new(),
            dup: false,
            pkid: 0,
            ack: AckToken::not_required(),
        })
    }

    fn event(payload: &'static str) -> Inbound {
        Inbound::Event {
            topic: "event/root".to_owned(),
            received_at_ms: 0,
            payload: Bytes::from_static(payload.as_bytes()),
            dup: false,
            pkid: 0,
            ack: AckToken::not_required(),
        }
    }

    #[test]
    fn a_thing_and_its_events_go_to_one_worker_and_things_spread() {
        let router = Router::new(4);
        let mut used = [0usize; 4];
        for i in 0..1_000 {
            let name = format!("thing-{i}");
            let worker = router.worker_of(&name);
            used[worker] += 1;
            assert_eq!(router.route(&shadow(&name, 0)), worker);
        }
        assert!(
            used.iter().all(|&n| n > 150),
            "1,000 things over 4 workers: {used:?}"
        );
        let remove = r#"{"type":"THING.REMOVE","source":{"thingName":"thing-7"}}"#;
        assert_eq!(router.route(&event(remove)), router.worker_of("thing-7"));
        assert_eq!(
            router.route(&event(r#"{"type":"THING_TYPE.CREATE","source":{}}"#)),
            0
        );
        assert_eq!(Router::new(0).workers(), 1);
    }

    #[test]
    fn routes_differ_between_process_starts() {
        // The key is random: two routers agree on where all of 64 names go only by chance.
        let (a, b) = (Router::new(16), Router::new(16));
        let names: Vec<String> = (0..64).map(|i| format!("t{i}")).collect();
        assert!(names.iter().any(|n| a.worker_of(n) != b.worker_of(n)));
    }

    /// An event goes out only once every worker has handled what came before it, and nothing
    /// after it goes out before it is applied: the log of what the workers handled has every
    /// earlier update before the event and every later one after it.
    #[tokio::test]
    async fn an_event_is_handled_between_what_came_before_and_after_it() {
        let router = Router::new(3);
        let (source, from) = mpsc::channel(64);
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
        let mut to = Vec::new();
        let mut workers = Vec::new();
        for _ in 0..3 {
            let (tx, mut rx) = mpsc::channel::<Batch>(4);
            to.push(tx);
            let log = std::sync::Arc::clone(&log);
            workers.push(tokio::spawn(async move {
                while let Some(batch) = rx.recv().await {
                    match batch {
                        Batch::Messages(items) => {
                            for item in items {
                                // Handling takes a while: a dispatcher that did not wait for
                                // the workers would send what follows the event too early.
                                tokio::task::yield_now().await;
                                let seq = match item {
                                    Inbound::Shadow(s) => s.received_at_ms,
                                    Inbound::Event { received_at_ms, .. } => received_at_ms,
                                };
                                log.lock().expect("log").push(seq);
                            }
                        }
                        Batch::Fence(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            }));
        }
        // 0..30 updates, the event as 30, then 31..60, all waiting in the source at once.
        for seq in 0..61u64 {
            let item = if seq == 30 {
                Inbound::Event {
                    topic: "event/root/b/sub1".to_owned(),
                    received_at_ms: seq,
                    payload: Bytes::from_static(br#"{"type":"THING_TYPE.CREATE"}"#),
                    dup: false,
                    pkid: 0,
                    ack: AckToken::not_required(),
                }
            } else {
                shadow(&format!("thing-{}", seq % 7), seq)
            };
            source.send(item).await.expect("queued");
        }
        drop(source);
        dispatch(from, to, router).await;
        for worker in workers {
            worker.await.expect("worker");
        }
        let log = log.lock().expect("log").clone();
        let event_at = log.iter().position(|&s| s == 30).expect("the event");
        assert!(log[..event_at].iter().all(|&s| s < 30), "{log:?}");
        assert!(log[event_at + 1..].iter().all(|&s| s > 30), "{log:?}");
        assert_eq!(log.len(), 61);
    }

    #[tokio::test]
    async fn dispatch_keeps_each_things_order() {
        let router = Router::new(3);
        let (source, from) = mpsc::channel(8);
        let mut to = Vec::new();
        let mut workers = Vec::new();
        for _ in 0..3 {
            // Small channels: the dispatcher waits for the workers.
            let (tx, rx) = mpsc::channel(1);
            to.push(tx);
            workers.push(rx);
        }
        let dispatcher = tokio::spawn(dispatch(from, to, router.clone()));
        let feeder = tokio::spawn(async move {
            for seq in 0..600u64 {
                let thing = format!("thing-{}", seq % 10);
                source
                    .send(shadow(&thing, seq))
                    .await
                    .expect("dispatcher runs");
            }
        });
        let mut seen: Vec<Vec<(String, u64)>> = vec![Vec::new(); 3];
        let mut readers = Vec::new();
        for (i, mut rx) in workers.into_iter().enumerate() {
            readers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(batch) = rx.recv().await {
                    let Batch::Messages(batch) = batch else {
                        panic!("a fence without an event")
                    };
                    assert!(!batch.is_empty(), "no empty batches");
                    for item in batch {
                        if let Inbound::Shadow(s) = item {
                            got.push((s.thing_name, s.received_at_ms));
                        }
                    }
                }
                (i, got)
            }));
        }
        feeder.await.expect("feeder");
        dispatcher
            .await
            .expect("dispatcher ends when the source closes");
        for reader in readers {
            let (i, got) = reader.await.expect("reader");
            seen[i] = got;
        }
        let mut total = 0;
        for (worker, got) in seen.iter().enumerate() {
            total += got.len();
            for (thing, _) in got {
                assert_eq!(router.worker_of(thing), worker);
            }
            for thing in (0..10).map(|t| format!("thing-{t}")) {
                let seqs: Vec<u64> = got
                    .iter()
                    .filter(|(t, _)| *t == thing)
                    .map(|(_, s)| *s)
                    .collect();
                assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{thing}: {seqs:?}");
            }
        }
        assert_eq!(total, 600);
    }
}
