//! Per-destination isolation: a queue, an in-flight limit and a circuit breaker for every
//! receiver (scheme, host and port of the url), served round-robin, so that one slow or dead
//! receiver holds at most its own share of the senders and costs one probe per interval.
//!
//! The breaker: `breaker_failures` failed attempts in a row (connection errors, timeouts, 429,
//! 5xx) open it; while open nothing is sent there and its firings wait (their age still counts,
//! see `webhook.max_age_secs`); after `probe_interval_secs` one firing goes as a probe, and its
//! answer closes the breaker or opens it for another interval. An answer of any kind that is not
//! such a failure (a 2xx, a 404) means the receiver is there: it closes the breaker.
//!
//! Pure bookkeeping over an injected clock; the dispatcher owns the tasks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::retry::AttemptOutcome;

/// The destination of a url: `scheme://host:port`, or the url itself when it does not parse (it
/// then fails alone, at its first attempt).
pub fn destination_of(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}:{}",
            u.scheme(),
            u.host_str().unwrap_or_default(),
            u.port_or_known_default().unwrap_or_default()
        ),
        Err(_) => url.chars().take(200).collect(),
    }
}

/// Whether an attempt's outcome says the receiver is failing (as opposed to answering).
pub fn is_failure(outcome: &AttemptOutcome) -> bool {
    match *outcome {
        AttemptOutcome::Timeout | AttemptOutcome::Connect => true,
        AttemptOutcome::Status { code, .. } => code == 429 || (500..=599).contains(&code),
        AttemptOutcome::Refused | AttemptOutcome::Invalid => false,
    }
}

/// What the breaker lets through now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: send.
    Send,
    /// The one probe of a half-open breaker: send, and its outcome decides.
    Probe,
    /// Open until then (`None`: a probe is out; wait for its outcome).
    Wait(Option<Instant>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    Probing,
}

/// One destination's circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    state: State,
    failures_to_open: u32,
    probe_every: Duration,
}

impl Breaker {
    /// A closed breaker that opens after `failures_to_open` failures in a row and probes every
    /// `probe_every` while open.
    pub fn new(failures_to_open: u32, probe_every: Duration) -> Self {
        Self {
            state: State::Closed { failures: 0 },
            failures_to_open: failures_to_open.max(1),
            probe_every,
        }
    }

    /// Whether a firing may be sent at `now`; an open breaker past its interval lets one probe
    /// through.
    pub fn admit(&mut self, now: Instant) -> Admit {
        match self.state {
            State::Closed { .. } => Admit::Send,
            State::Open { until } if now >= until => {
                self.state = State::Probing;
                Admit::Probe
            }
            State::Open { until } => Admit::Wait(Some(until)),
            State::Probing => Admit::Wait(None),
        }
    }

    /// Whether attempts are sent normally (closed): retries and the attempt count go on only
    /// then.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed { .. })
    }

    /// Counts an attempt's outcome; returns true when this opened the breaker.
    pub fn record(&mut self, failed: bool, now: Instant) -> bool {
        if !failed {
            self.state = State::Closed { failures: 0 };
            return false;
        }
        match self.state {
            State::Closed { failures } if failures + 1 >= self.failures_to_open => {
                self.state = State::Open {
                    until: now + self.probe_every,
                };
                true
            }
            State::Closed { failures } => {
                self.state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::Probing => {
                self.state = State::Open {
                    until: now + self.probe_every,
                };
                true
            }
            // Attempts that were out when it opened: already open.
            State::Open { .. } => false,
        }
    }

    /// A probe that ended without an answer (abandoned, or its firing could not be read): let
    /// the next one go.
    pub fn probe_lost(&mut self, now: Instant) {
        if self.state == State::Probing {
            self.state = State::Open { until: now };
        }
    }

    /// Whether it is open or probing (for the metric).
    pub fn is_open(&self) -> bool {
        !self.is_closed()
    }
}

/// Destinations with a metric label of their own; the ones seen after them share `other` (the
/// urls are the tenants' to choose, the metric series are the operator's to pay for).
pub const LABELLED_DESTINATIONS: usize = 200;

/// A destination as the firing tasks see it: its name and its breaker.
#[derive(Debug)]
pub struct Destination {
    /// `scheme://host:port`.
    pub name: Arc<str>,
    /// Its `destination` metric label: the name, or `other` past [`LABELLED_DESTINATIONS`].
    pub label: Arc<str>,
    /// Its counters, registered once (a registry lookup per firing costs more than the count).
    pub counters: DestinationCounters,
    /// Shared with the firing tasks, which record each attempt; held only for a few
    /// instructions, never across an await.
    pub breaker: Mutex<Breaker>,
}

impl Destination {
    /// Runs `f` on the breaker (a poisoned lock is taken over: the state is plain data).
    pub fn with_breaker<R>(&self, f: impl FnOnce(&mut Breaker) -> R) -> R {
        match self.breaker.lock() {
            Ok(mut b) => f(&mut b),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }
}

/// A destination's delivery counters by result.
#[derive(Debug)]
pub struct DestinationCounters {
    /// Delivered (2xx).
    pub delivered: metrics::Counter,
    /// Given up: attempts exhausted, not retried, invalid.
    pub failed: metrics::Counter,
    /// Older than `webhook.max_age_secs`.
    pub expired: metrics::Counter,
    /// Refused by the SSRF guard.
    pub refused: metrics::Counter,
    /// Times its circuit opened.
    pub circuit_opened: metrics::Counter,
}

impl DestinationCounters {
    fn register(label: &Arc<str>) -> Self {
        let result = |result| super::telemetry::deliveries(result, label);
        Self {
            delivered: result("delivered"),
            failed: result("failed"),
            expired: result("expired"),
            refused: result("refused"),
            circuit_opened: super::telemetry::circuit_opened(label),
        }
    }
}

/// How long a destination with nothing waiting, nothing in flight and a closed breaker is kept
/// (its slot, breaker and counters): the urls are the tenants' to choose, so destinations come
/// and go, and a service that runs for months must not keep every one it ever saw.
pub const FORGET_IDLE_AFTER: Duration = Duration::from_secs(600);

/// One destination's waiting firings and its in-flight count.
#[derive(Debug)]
struct Slot<T> {
    destination: Arc<Destination>,
    queue: VecDeque<T>,
    in_flight: usize,
    /// Last time a firing was queued for it or ended.
    last_busy: Instant,
}

impl<T> Slot<T> {
    fn is_idle_since(&self, before: Instant) -> bool {
        self.queue.is_empty()
            && self.in_flight == 0
            && self.last_busy <= before
            && self.destination.with_breaker(|b| b.is_closed())
    }
}

/// What [`Destinations::next`] hands out.
#[derive(Debug)]
pub struct Next<T> {
    /// Index of the destination (give it back to [`Destinations::done`]).
    pub index: usize,
    /// The destination.
    pub destination: Arc<Destination>,
    /// The firing.
    pub item: T,
    /// Whether it is sent as the breaker's probe.
    pub probe: bool,
    /// Whether it is only to be dead-lettered (too old): the breaker was not asked.
    pub expired: bool,
}

/// Every destination's queue, served round-robin.
#[derive(Debug)]
pub struct Destinations<T> {
    /// By index; `None` where an idle destination was forgotten (reused by the next new one).
    slots: Vec<Option<Slot<T>>>,
    free: Vec<usize>,
    by_name: HashMap<Arc<str>, usize>,
    /// Names with a metric label of their own (at most [`LABELLED_DESTINATIONS`]), kept when
    /// their slot is forgotten so that a destination seen again keeps its series.
    labelled: HashSet<Arc<str>>,
    /// Where the next round-robin search starts.
    cursor: usize,
    per_destination: usize,
    failures_to_open: u32,
    probe_every: Duration,
    queued: usize,
}

impl<T> Destinations<T> {
    /// No destinations yet; each gets at most `per_destination` firings in flight and a breaker
    /// with these settings.
    pub fn new(per_destination: usize, failures_to_open: u32, probe_every: Duration) -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            by_name: HashMap::new(),
            labelled: HashSet::new(),
            cursor: 0,
            per_destination: per_destination.max(1),
            failures_to_open,
            probe_every,
            queued: 0,
        }
    }

    /// Queues a firing for `name` (at the back), creating the destination when new.
    pub fn push(&mut self, name: &str, item: T, now: Instant) {
        let index = self.slot(name, now);
        self.push_back(index, item, now);
    }

    /// Queues a firing at the back of destination `index` (from [`slot`](Self::slot)).
    pub fn push_back(&mut self, index: usize, item: T, now: Instant) {
        if let Some(Some(slot)) = self.slots.get_mut(index) {
            slot.queue.push_back(item);
            slot.last_busy = now;
            self.queued += 1;
        }
    }

    /// Puts a firing back at the front of its destination's queue (deferred by its breaker).
    pub fn push_front(&mut self, index: usize, item: T) {
        if let Some(Some(slot)) = self.slots.get_mut(index) {
            slot.queue.push_front(item);
            self.queued += 1;
        }
    }

    /// The index of destination `name`, created when new.
    pub fn slot(&mut self, name: &str, now: Instant) -> usize {
        if let Some(&index) = self.by_name.get(name) {
            return index;
        }
        let name: Arc<str> = Arc::from(name);
        let label = if self.labelled.contains(&name) {
            Arc::clone(&name)
        } else if self.labelled.len() < LABELLED_DESTINATIONS {
            self.labelled.insert(Arc::clone(&name));
            Arc::clone(&name)
        } else {
            Arc::from("other")
        };
        let slot = Slot {
            destination: Arc::new(Destination {
                name: Arc::clone(&name),
                counters: DestinationCounters::register(&label),
                label,
                breaker: Mutex::new(Breaker::new(self.failures_to_open, self.probe_every)),
            }),
            queue: VecDeque::new(),
            in_flight: 0,
            last_busy: now,
        };
        let index = match self.free.pop() {
            Some(index) => {
                self.slots[index] = Some(slot);
                index
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.by_name.insert(name, index);
        index
    }

    /// Forgets the destinations idle (nothing waiting or in flight, breaker closed) since
    /// `before`; returns how many.
    pub fn forget_idle(&mut self, before: Instant) -> usize {
        let mut forgotten = 0;
        for (index, entry) in self.slots.iter_mut().enumerate() {
            if let Some(slot) = entry.take_if(|slot| slot.is_idle_since(before)) {
                self.by_name.remove(&slot.destination.name);
                self.free.push(index);
                forgotten += 1;
            }
        }
        forgotten
    }

    /// Destinations known (waiting, busy, or idle and not yet forgotten).
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no destination is known.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The next firing to start, round-robin over the destinations that have one waiting and
    /// room in flight: a too-old one first (whatever the breaker says), else one the breaker
    /// admits. `expired` tells whether an item is too old. `None`: nothing can start now.
    pub fn next(&mut self, now: Instant, expired: impl Fn(&T) -> bool) -> Option<Next<T>> {
        let n = self.slots.len();
        for step in 0..n {
            let index = (self.cursor + step) % n;
            let Some(slot) = self.slots[index].as_mut() else {
                continue;
            };
            if slot.in_flight >= self.per_destination {
                continue;
            }
            let Some(front) = slot.queue.front() else {
                continue;
            };
            let is_expired = expired(front);
            let probe = if is_expired {
                false
            } else {
                match slot.destination.with_breaker(|b| b.admit(now)) {
                    Admit::Send => false,
                    Admit::Probe => true,
                    Admit::Wait(_) => continue,
                }
            };
            let Some(item) = slot.queue.pop_front() else {
                continue;
            };
            slot.in_flight += 1;
            self.queued -= 1;
            self.cursor = (index + 1) % n;
            return Some(Next {
                index,
                destination: Arc::clone(&slot.destination),
                item,
                probe,
                expired: is_expired,
            });
        }
        None
    }

    /// A firing of destination `index` is no longer in flight.
    pub fn done(&mut self, index: usize, now: Instant) {
        if let Some(Some(slot)) = self.slots.get_mut(index) {
            slot.in_flight = slot.in_flight.saturating_sub(1);
            slot.last_busy = now;
        }
    }

    /// When an open breaker with waiting firings lets its next probe go: the dispatcher's next
    /// wake-up (besides its tasks and new firings).
    pub fn next_probe_at(&self) -> Option<Instant> {
        self.slots
            .iter()
            .flatten()
            // Only where a probe could start: a full destination wakes nothing.
            .filter(|s| !s.queue.is_empty() && s.in_flight < self.per_destination)
            .filter_map(|s| match s.destination.with_breaker(|b| b.state) {
                State::Open { until } => Some(until),
                _ => None,
            })
            .min()
    }

    /// Firings waiting, all destinations together.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Takes every waiting firing out (at shutdown: they stay in the outbox).
    pub fn drain(&mut self) -> Vec<T> {
        self.queued = 0;
        self.slots
            .iter_mut()
            .flatten()
            .flat_map(|s| s.queue.drain(..))
            .collect()
    }

    /// Each destination: metric label, waiting, in flight, breaker open (for the metrics).
    pub fn report(&self) -> impl Iterator<Item = (&Arc<str>, usize, usize, bool)> {
        self.slots.iter().flatten().map(|s| {
            (
                &s.destination.label,
                s.queue.len(),
                s.in_flight,
                s.destination.with_breaker(|b| b.is_open()),
            )
        })
    }
}

#[cfg(test)]
mod tests;
