//! Updates of things the directory does not know, with a resolver (`directory.resolver`): the
//! first one asks the resolver, and the thing's updates wait here, unacked and in order, until
//! the answer comes; then they go through the pipeline as if they had just arrived, against a
//! directory that knows the thing. Holding them unacked is what makes a crash meanwhile
//! harmless: the broker sends them again. Acks go out in order, so while something waits the
//! acks behind it wait too; the broker's in-flight window bounds what arrives meanwhile. The
//! resolver answers every request (each lookup within `resolve_timeout_ms` once asked), so
//! nothing waits for ever; if its task is gone, everything waiting is let go.
//!
//! One request per thing however many updates arrive; answers are cached: a found thing goes
//! into the directory (and the store), and is asked about again after `positive_ttl_secs` (at an
//! update, which does not wait); "no such thing" is believed for `negative_ttl_secs`; after a
//! failure the thing's updates are not held for `retry_secs`. Past `resolve_queue` waiting
//! updates, an update is stored without evaluation and counted in
//! `ccstream_observations_unresolved_total`; a thing that has updates waiting then lets them all
//! go first, in order. A life cycle event about a thing whose lookup is under way makes its
//! answer stale: the event is newer, so the answer is not merged.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use ingest::ShadowUpdate;
use tokio::sync::mpsc;

use crate::config::DirectoryConfig;
use crate::resolver::{Answer, ResolvedThing, Resolver};

/// Remembered verdicts at most (names devices made up could grow them without end); past it
/// the expired ones go, then all.
const VERDICTS_MAX: usize = 100_000;
/// Found things whose answer time is remembered at most (for the refresh); past it they start
/// over, which only means more refreshes.
const LEARNT_MAX: usize = 1_000_000;

pub struct Resolving {
    requests: mpsc::Sender<String>,
    answers: mpsc::Receiver<(String, Answer)>,
    /// The updates of each thing asked about, in arrival order.
    parked: HashMap<String, Vec<ShadowUpdate>>,
    parked_total: usize,
    /// Things asked about and not answered yet.
    asked: HashSet<String>,
    /// Of those, the ones a life cycle event changed since they were asked about.
    stale: HashSet<String>,
    /// Things not to hold before an instant: not found, or the lookup failed.
    verdicts: HashMap<String, (Instant, Verdict)>,
    /// Things the resolver found, and when (asked about again after `positive_ttl`).
    learnt: HashMap<String, Instant>,
    max_parked: usize,
    negative_ttl: Duration,
    retry: Duration,
    positive_ttl: Duration,
    unresolved_failed: metrics::Counter,
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
    /// The directory entry to merge (found, and no event came since it was asked).
    pub found: Option<ResolvedThing>,
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
            asked: HashSet::new(),
            stale: HashSet::new(),
            verdicts: HashMap::new(),
            learnt: HashMap::new(),
            max_parked: config.resolve_queue,
            negative_ttl: Duration::from_secs(config.negative_ttl_secs),
            retry: Duration::from_secs(config.retry_secs),
            positive_ttl: Duration::from_secs(config.positive_ttl_secs),
            unresolved_failed: unresolved("lookup_failed"),
            unresolved_full: unresolved("queue_full"),
            waiting: metrics::gauge!("ccstream_directory_waiting_observations"),
        }
    }

    /// Takes `shadow` to wait for an answer about its thing (returns nothing), or returns what
    /// goes on now, in order: `shadow` alone, or, when the waiting room is full, the thing's
    /// waiting updates and then `shadow`. `known`: the directory knows the thing.
    pub fn admit(&mut self, shadow: ShadowUpdate, known: bool, now: Instant) -> Vec<ShadowUpdate> {
        let name = shadow.thing_name.as_str();
        if let Some(waiting) = self.parked.get_mut(name) {
            if self.parked_total < self.max_parked {
                waiting.push(shadow);
                self.parked_total += 1;
                self.waiting.set(self.parked_total as f64);
                return Vec::new();
            }
            // Its earlier updates go first, so that the thing's order holds; until the answer
            // comes its updates are not held again.
            let name = shadow.thing_name.clone();
            let mut out = self.release(&name);
            self.unresolved_full.increment(out.len() as u64 + 1);
            self.remember(&name, now + self.retry, Verdict::Failed, now);
            out.push(shadow);
            return out;
        }
        if known {
            if !self.learnt.is_empty() {
                self.refresh_if_due(name, now);
            }
            return vec![shadow];
        }
        match self.verdicts.get(name) {
            Some(&(until, verdict)) if now < until => {
                if verdict == Verdict::Failed {
                    self.unresolved_failed.increment(1);
                }
                return vec![shadow];
            }
            Some(_) => {
                self.verdicts.remove(name);
            }
            None => {}
        }
        // Asked already (a refresh, or a wait the queue cut short): the answer is on its way.
        if self.asked.contains(name) {
            return vec![shadow];
        }
        if self.parked_total >= self.max_parked || !self.ask(name) {
            self.unresolved_full.increment(1);
            return vec![shadow];
        }
        self.parked.insert(shadow.thing_name.clone(), vec![shadow]);
        self.parked_total += 1;
        self.waiting.set(self.parked_total as f64);
        Vec::new()
    }

    /// Sends `name` to the resolver; false when its queue is full.
    fn ask(&mut self, name: &str) -> bool {
        if self.requests.try_send(name.to_owned()).is_err() {
            return false;
        }
        self.asked.insert(name.to_owned());
        true
    }

    /// A found thing whose answer is older than `positive_ttl` is asked about again; its
    /// updates do not wait for that answer.
    fn refresh_if_due(&mut self, name: &str, now: Instant) {
        let due = self
            .learnt
            .get(name)
            .is_some_and(|at| now.duration_since(*at) >= self.positive_ttl);
        if due && !self.asked.contains(name) && self.ask(name) {
            self.learnt.insert(name.to_owned(), now);
        }
    }

    /// A life cycle event changed `name`: an answer under way is older than it, and what was
    /// remembered about the thing no longer holds.
    pub fn on_event(&mut self, name: &str) {
        if self.asked.contains(name) {
            self.stale.insert(name.to_owned());
        }
        self.learnt.remove(name);
        self.verdicts.remove(name);
    }

    /// The next answer; `None` once the resolver's task is gone.
    pub async fn answer(&mut self) -> Option<(String, Answer)> {
        self.answers.recv().await
    }

    /// Records an answer and releases the thing's waiting updates.
    pub fn on_answer(&mut self, thing_name: String, answer: Answer, now: Instant) -> Resolved {
        self.asked.remove(&thing_name);
        let stale = self.stale.remove(&thing_name);
        let mut found = None;
        match answer {
            Answer::Found(_) | Answer::NotFound(_) if stale => {
                tracing::debug!(thing = %thing_name, "a life cycle event came while the thing was looked up; the answer is not used");
            }
            Answer::Found(thing) => {
                self.verdicts.remove(&thing_name);
                if self.learnt.len() >= LEARNT_MAX {
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

    /// Every waiting update, in each thing's order (the resolver is gone).
    pub fn release_all(&mut self) -> Vec<ShadowUpdate> {
        let names: Vec<String> = self.parked.keys().cloned().collect();
        let out: Vec<ShadowUpdate> = names.iter().flat_map(|n| self.release(n)).collect();
        self.unresolved_failed.increment(out.len() as u64);
        out
    }

    fn release(&mut self, name: &str) -> Vec<ShadowUpdate> {
        let released = self.parked.remove(name).unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ingest::AckToken;

    fn update(thing: &str, n: u16) -> ShadowUpdate {
        ShadowUpdate {
            thing_name: thing.to_owned(),
            topic_domain: None,
            received_at_ms: 0,
            payload: Bytes::new(),
            dup: false,
            pkid: n,
            ack: AckToken::not_required(),
        }
    }

    /// A Resolving with a waiting room of `max` updates, and the resolver's ends.
    fn resolving(
        max: usize,
    ) -> (
        Resolving,
        mpsc::Receiver<String>,
        mpsc::Sender<(String, Answer)>,
    ) {
        let (requests, asked) = mpsc::channel(16);
        let (answer, answers) = mpsc::channel(16);
        let config = DirectoryConfig {
            resolve_queue: max,
            ..DirectoryConfig::default()
        };
        (
            Resolving::new(Resolver { requests, answers }, &config),
            asked,
            answer,
        )
    }

    fn pkids(updates: &[ShadowUpdate]) -> Vec<u16> {
        updates.iter().map(|u| u.pkid).collect()
    }

    fn found() -> Answer {
        Answer::Found(ResolvedThing {
            thing_type: "Pump".into(),
            domain: "sub1".into(),
            ancestors: None,
        })
    }

    #[test]
    fn one_question_per_thing_and_its_updates_wait_in_order() {
        let (mut r, mut asked, _answers) = resolving(10);
        let now = Instant::now();
        for n in 1..=3 {
            assert!(r.admit(update("t", n), false, now).is_empty());
        }
        assert_eq!(asked.try_recv().ok().as_deref(), Some("t"));
        assert!(asked.try_recv().is_err(), "asked once");
        let resolved = r.on_answer("t".into(), found(), now);
        assert!(resolved.found.is_some());
        assert_eq!(pkids(&resolved.released), [1, 2, 3]);
    }

    #[test]
    fn a_full_waiting_room_lets_the_things_earlier_updates_go_first() {
        let (mut r, _asked, _answers) = resolving(2);
        let now = Instant::now();
        assert!(r.admit(update("t", 1), false, now).is_empty());
        assert!(r.admit(update("t", 2), false, now).is_empty());
        assert_eq!(pkids(&r.admit(update("t", 3), false, now)), [1, 2, 3]);
        // Not held again until the answer: the room is not refilled behind the thing's back.
        assert_eq!(pkids(&r.admit(update("t", 4), false, now)), [4]);
        // Another thing is refused a place only while the room is full.
        assert!(r.admit(update("u", 5), false, now).is_empty());
    }

    #[test]
    fn an_event_during_the_lookup_makes_the_answer_stale() {
        let (mut r, _asked, _answers) = resolving(10);
        let now = Instant::now();
        assert!(r.admit(update("t", 1), false, now).is_empty());
        r.on_event("t");
        let resolved = r.on_answer("t".into(), found(), now);
        assert!(
            resolved.found.is_none(),
            "the event is newer than the answer"
        );
        assert_eq!(pkids(&resolved.released), [1]);
    }

    #[test]
    fn a_found_thing_is_asked_again_after_the_positive_ttl_without_waiting() {
        let (mut r, mut asked, _answers) = resolving(10);
        let now = Instant::now();
        assert!(r.admit(update("t", 1), false, now).is_empty());
        r.on_answer("t".into(), found(), now);
        assert_eq!(asked.try_recv().ok().as_deref(), Some("t"));
        // Known now: goes on, and is not asked again before the TTL.
        assert_eq!(pkids(&r.admit(update("t", 2), true, now)), [2]);
        assert!(asked.try_recv().is_err());
        let later = now + Duration::from_secs(3_601);
        assert_eq!(
            pkids(&r.admit(update("t", 3), true, later)),
            [3],
            "does not wait"
        );
        assert_eq!(asked.try_recv().ok().as_deref(), Some("t"), "asked again");
        assert_eq!(pkids(&r.admit(update("t", 4), true, later)), [4]);
        assert!(asked.try_recv().is_err(), "once per TTL");
    }

    #[test]
    fn a_gone_resolver_lets_everything_waiting_go_in_order() {
        let (mut r, _asked, _answers) = resolving(10);
        let now = Instant::now();
        for n in 1..=3 {
            assert!(r.admit(update("t", n), false, now).is_empty());
        }
        assert_eq!(pkids(&r.release_all()), [1, 2, 3]);
        assert!(r.parked.is_empty() && r.parked_total == 0);
    }

    #[test]
    fn not_found_is_believed_and_failures_are_retried_later() {
        let (mut r, mut asked, _answers) = resolving(10);
        let now = Instant::now();
        assert!(r.admit(update("ghost", 1), false, now).is_empty());
        r.on_answer("ghost".into(), Answer::NotFound("no".into()), now);
        assert_eq!(pkids(&r.admit(update("ghost", 2), false, now)), [2]);
        assert!(r.admit(update("down", 3), false, now).is_empty());
        r.on_answer("down".into(), Answer::Failed("503".into()), now);
        assert_eq!(pkids(&r.admit(update("down", 4), false, now)), [4]);
        let later = now + Duration::from_secs(11);
        assert!(
            r.admit(update("down", 5), false, later).is_empty(),
            "asked again"
        );
        let names: Vec<String> = std::iter::from_fn(|| asked.try_recv().ok()).collect();
        assert_eq!(names, ["ghost", "down", "down"]);
    }
}
