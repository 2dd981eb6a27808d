//! Updates of things the directory does not know, with a resolver (`directory.resolver`): the
//! first one asks the resolver, and the thing's updates wait here, unacked and in order, until
//! the answer comes (at most `resolve_timeout_ms`); then they go through the pipeline as if they
//! had just arrived, against a directory that knows the thing. Holding them unacked is what
//! makes a crash meanwhile harmless: the broker sends them again. Acks go out in order, so
//! while something waits the acks behind it wait too; the broker's in-flight window bounds
//! what arrives meanwhile.
//!
//! One request per thing however many updates arrive; answers are cached: a found thing goes
//! into the directory (and the store), and is asked about again after `positive_ttl_secs` (at an
//! update, which does not wait); "no such thing" is believed for `negative_ttl_secs`; after a
//! failure the thing's updates are not held for `retry_secs`. Past `resolve_queue` waiting
//! updates, or when no answer comes in time, an update is stored without evaluation and counted
//! in `ccstream_observations_unresolved_total`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use ingest::ShadowUpdate;
use tokio::sync::mpsc;

use crate::config::DirectoryConfig;
use crate::resolver::{Answer, Resolver};

/// Remembered verdicts at most (names devices made up could grow them without end); past it
/// the expired ones go, then all.
const VERDICTS_MAX: usize = 100_000;

pub struct Resolving {
    requests: mpsc::Sender<String>,
    answers: mpsc::Receiver<(String, Answer)>,
    /// The updates of each thing asked about, in arrival order, and when the first came.
    parked: HashMap<String, (Instant, Vec<ShadowUpdate>)>,
    parked_total: usize,
    /// When each thing's first update was parked, oldest first (the timeout sweep).
    since: VecDeque<(Instant, String)>,
    /// Things not to hold before an instant: not found, or the lookup failed.
    verdicts: HashMap<String, (Instant, Verdict)>,
    /// Things the resolver found, and when (asked about again after `positive_ttl`).
    learnt: HashMap<String, Instant>,
    max_parked: usize,
    timeout: Duration,
    negative_ttl: Duration,
    retry: Duration,
    positive_ttl: Duration,
    unresolved_failed: metrics::Counter,
    unresolved_timeout: metrics::Counter,
    unresolved_full: metrics::Counter,
    waiting: metrics::Gauge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    NotFound,
    Failed,
}

/// What the pipeline does with an answer.
pub struct Resolved {
    pub thing_name: String,
    /// The directory entry to merge (found), else none.
    pub found: Option<crate::resolver::ResolvedThing>,
    /// The thing's waiting updates, to go through the pipeline now, in order.
    pub released: Vec<ShadowUpdate>,
}

impl Resolving {
    pub fn new(resolver: Resolver, config: &DirectoryConfig) -> Self {
        let unresolved = |reason: &'static str| metrics::counter!("ccstream_observations_unresolved_total", "reason" => reason);
        Self {
            requests: resolver.requests,
            answers: resolver.answers,
            parked: HashMap::new(),
            parked_total: 0,
            since: VecDeque::new(),
            verdicts: HashMap::new(),
            learnt: HashMap::new(),
            max_parked: config.resolve_queue,
            // The resolver answers within the timeout once it asks; a request that waited for a
            // permit gets as long again.
            timeout: Duration::from_millis(config.resolve_timeout_ms.saturating_mul(2)),
            negative_ttl: Duration::from_secs(config.negative_ttl_secs),
            retry: Duration::from_secs(config.retry_secs),
            positive_ttl: Duration::from_secs(config.positive_ttl_secs),
            unresolved_failed: unresolved("lookup_failed"),
            unresolved_timeout: unresolved("timeout"),
            unresolved_full: unresolved("queue_full"),
            waiting: metrics::gauge!("ccstream_directory_waiting_observations"),
        }
    }

    /// Takes `shadow` to wait for an answer about its thing, or gives it back to go on now.
    /// `known`: the directory knows the thing.
    pub fn admit(
        &mut self,
        shadow: ShadowUpdate,
        known: bool,
        now: Instant,
    ) -> Option<ShadowUpdate> {
        let name = shadow.thing_name.as_str();
        if let Some((_, waiting)) = self.parked.get_mut(name) {
            // Behind the thing's earlier updates, in order.
            if self.parked_total < self.max_parked {
                waiting.push(shadow);
                self.parked_total += 1;
                self.waiting.set(self.parked_total as f64);
                return None;
            }
            self.unresolved_full.increment(1);
            return Some(shadow);
        }
        if known {
            if !self.learnt.is_empty() {
                self.refresh_if_due(name, now);
            }
            return Some(shadow);
        }
        match self.verdicts.get(name) {
            Some(&(until, verdict)) if now < until => {
                if verdict == Verdict::Failed {
                    self.unresolved_failed.increment(1);
                }
                return Some(shadow);
            }
            Some(_) => {
                self.verdicts.remove(name);
            }
            None => {}
        }
        if self.parked_total >= self.max_parked
            || self.requests.try_send(shadow.thing_name.clone()).is_err()
        {
            self.unresolved_full.increment(1);
            return Some(shadow);
        }
        self.since.push_back((now, shadow.thing_name.clone()));
        self.parked
            .insert(shadow.thing_name.clone(), (now, vec![shadow]));
        self.parked_total += 1;
        self.waiting.set(self.parked_total as f64);
        None
    }

    /// A found thing whose answer is older than `positive_ttl` is asked about again; its
    /// updates do not wait for that answer.
    fn refresh_if_due(&mut self, name: &str, now: Instant) {
        if let Some(at) = self.learnt.get_mut(name) {
            if now.duration_since(*at) >= self.positive_ttl
                && self.requests.try_send(name.to_owned()).is_ok()
            {
                *at = now;
            }
        }
    }

    /// The next answer (pending forever when the resolver is gone).
    pub async fn answer(&mut self) -> (String, Answer) {
        match self.answers.recv().await {
            Some(answer) => answer,
            None => std::future::pending().await,
        }
    }

    /// Records an answer and releases the thing's waiting updates.
    pub fn on_answer(&mut self, thing_name: String, answer: Answer, now: Instant) -> Resolved {
        let mut found = None;
        match answer {
            Answer::Found(thing) => {
                self.verdicts.remove(&thing_name);
                if self.learnt.len() >= VERDICTS_MAX * 10 {
                    self.learnt.clear();
                }
                self.learnt.insert(thing_name.clone(), now);
                found = Some(thing);
            }
            Answer::NotFound(reason) => {
                tracing::debug!(thing = %thing_name, %reason, "the resolver does not know the thing");
                self.learnt.remove(&thing_name);
                self.remember(&thing_name, now + self.negative_ttl, Verdict::NotFound, now);
            }
            Answer::Failed(_) => {
                // A thing learnt before stays as it is; only an unknown one waits for the retry.
                if !self.learnt.contains_key(&thing_name) {
                    self.remember(&thing_name, now + self.retry, Verdict::Failed, now);
                }
            }
        }
        let released = self.release(&thing_name);
        if found.is_none() && !released.is_empty() {
            if let Some((_, Verdict::Failed)) = self.verdicts.get(&thing_name) {
                self.unresolved_failed.increment(released.len() as u64);
            }
        }
        Resolved {
            thing_name,
            found,
            released,
        }
    }

    /// A found thing that could not go into the directory: treated as not found, so that its
    /// updates are not held and it is not asked about again before `negative_ttl`.
    pub fn refused(&mut self, name: &str, now: Instant) {
        self.learnt.remove(name);
        self.remember(name, now + self.negative_ttl, Verdict::NotFound, now);
    }

    /// When the oldest waiting thing runs out of time, if any thing waits.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.since.front().map(|(at, _)| *at + self.timeout)
    }

    /// The updates of things whose answer did not come in time (the thing is then treated as
    /// failed until `retry`; a late answer still fills the directory).
    pub fn release_overdue(&mut self, now: Instant) -> Vec<ShadowUpdate> {
        let mut out = Vec::new();
        while let Some((at, _)) = self.since.front() {
            if now < *at + self.timeout {
                break;
            }
            let Some((at, name)) = self.since.pop_front() else {
                break;
            };
            // Answered meanwhile, perhaps parked again since: only the wait that began then.
            if self.parked.get(&name).is_none_or(|(first, _)| *first != at) {
                continue;
            }
            let released = self.release(&name);
            if !released.is_empty() {
                tracing::warn!(thing = %name, waited = ?self.timeout, updates = released.len(), "no answer about the thing in time; its updates go on unevaluated");
                self.unresolved_timeout.increment(released.len() as u64);
                self.remember(&name, now + self.retry, Verdict::Failed, now);
                out.extend(released);
            }
        }
        out
    }

    fn release(&mut self, name: &str) -> Vec<ShadowUpdate> {
        let released = self.parked.remove(name).map(|(_, r)| r).unwrap_or_default();
        self.parked_total -= released.len();
        self.waiting.set(self.parked_total as f64);
        released
    }

    fn remember(&mut self, name: &str, until: Instant, verdict: Verdict, now: Instant) {
        if self.verdicts.len() >= VERDICTS_MAX {
            self.verdicts.retain(|_, (until, _)| now < *until);
            if self.verdicts.len() >= VERDICTS_MAX {
                self.verdicts.clear();
            }
        }
        self.verdicts.insert(name.to_owned(), (until, verdict));
    }
}
