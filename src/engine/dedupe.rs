//! Redelivered observations: the id of an observation and the window of recent ids that tells
//! a QoS 1 redelivery of a message already stored from a new message.
//!
//! **Why.** An observation is acked (PUBACK) after its spool commit. If the connection drops, or
//! the process dies, after the commit but before the broker has the PUBACK, the broker sends
//! the message again with the DUP flag set, and without this check it would be stored twice.
//!
//! **The rule** (in [`super::pipeline`]): a message with DUP set whose id is in the window is
//! not stored again; its ack goes through the spool as a marker
//! ([`sinks::objects::RecordBatch::push_marker`]), so it is sent after the earlier copy's
//! commit, in order. A message without DUP is always stored: a device may send the same payload
//! twice, and the broker sets DUP only on a message it sent this session before.
//!
//! **The id** ([`observation_id`]) hashes the packet id, the thing name and the payload. The
//! packet id is part of it because MQTT has a redelivery keep the packet id of the first
//! delivery (3.1.1 section 4.4), while two distinct messages share one only when the broker
//! reused it after the first was acked: so a new message whose first delivery never reached
//! this process (it is then sent with DUP too) is not mistaken for an earlier message with the
//! same payload, as it easily would be on thing and payload alone. A broker that renumbered
//! redeliveries would defeat the check (back to at-least-once), never lose a message.
//!
//! **The hash** is rapidhash V3 (the `rapidhash` crate's portable function, whose output the
//! crate promises not to change between versions) of the payload, and of the thing name, mixed
//! with the packet id by the MurmurHash3 64-bit finalizer (`fmix64`). Fixed by its definition,
//! so ids written to the spool by one process (or Rust version) mean the same in the next —
//! unlike std's `DefaultHasher`, whose algorithm may change between releases. It runs once per
//! observation, so it is a hash that reads several bytes per step rather than one (as FNV-1a
//! does). Changing the function would make ids spooled before the upgrade not match after it,
//! so a crash right across that upgrade could store a redelivered observation twice
//! (at-least-once, as without the check). Collisions are at 2⁻⁶⁴ per pair: a DUP message
//! wrongly skipped needs a collision with one of the window's ids, some 10⁻¹⁴.
//!
//! **Recorded when taken, not at commit.** Within one run, a record a worker takes into its
//! batch for the spool is handed over before the worker waits for anything, and committed by
//! the batcher even if the MQTT connection drops meanwhile (only a process exit stops it), so
//! when its redelivery arrives — after the original, on the same channel, maybe in the same
//! batch — the original is in the window and will be durable before the marker, which follows
//! it into the spool, acks the copy. Across a
//! crash only committed records exist, and their ids come back from the spool at start
//! ([`sinks::objects::ObjectSinkHandle::take_recovered_ids`]: the spool files left and the
//! journal of batches stored just before), seeding the window.
//!
//! **With the webhook outbox.** An observation that fired is acked once both its record and its
//! firings are on disk, but the two commit apart: after a crash the spool may hold the record
//! without the firings, or the outbox the firings without the record. [`Redeliveries`] tells
//! the cases apart from what each recovered, so a redelivery completes the missing part only.
//!
//! **Size.** A message can only be redelivered while the broker has no PUBACK for it, and a
//! broker has at most its in-flight window of those per connection (20 to 65,535); the acker
//! sends PUBACKs in order, so they are among the last messages received. [`WINDOW_CAPACITY`]
//! ids cover that with a wide margin, for about 5 MB.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// Ids the window holds: the last observations appended (and those recovered at start).
pub const WINDOW_CAPACITY: usize = 200_000;

/// Ids each worker's window holds at least, whatever `engine.workers`: the largest in-flight
/// window a broker may have (65,535) may all be one worker's.
pub const WINDOW_PER_WORKER_MIN: usize = 70_000;

/// The id of an observation: stable across processes and versions (see the module docs).
pub fn observation_id(pkid: u16, thing_name: &str, payload: &[u8]) -> u64 {
    let payload = rapidhash::v3::rapidhash_v3(payload);
    let thing = fmix64(rapidhash::v3::rapidhash_v3(thing_name.as_bytes()) ^ u64::from(pkid));
    fmix64(payload ^ thing.rotate_left(29))
}

/// MurmurHash3's 64-bit finalizer: every input bit affects every output bit.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// Ids are hashes already: the map uses them as they are.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else in all the same.
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id;
    }
}

/// The ids of the last `capacity` observations, oldest evicted first. Pure.
#[derive(Debug)]
pub struct RedeliveryWindow {
    capacity: usize,
    /// Oldest first; an id inserted twice is here twice.
    order: VecDeque<u64>,
    /// Occurrences of each id in `order`.
    counts: HashMap<u64, u32, BuildHasherDefault<IdHasher>>,
}

impl RedeliveryWindow {
    /// An empty window of `capacity` ids (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            order: VecDeque::with_capacity(capacity.min(1 << 16)),
            counts: HashMap::default(),
        }
    }

    /// A window holding the last `capacity` of `ids` (oldest first): the ids of the records
    /// earlier runs committed.
    pub fn seeded(capacity: usize, ids: impl IntoIterator<Item = u64>) -> Self {
        let mut window = Self::new(capacity);
        for id in ids {
            window.insert(id);
        }
        window
    }

    /// Records the id of an observation handed to the spool; evicts the oldest id when full.
    pub fn insert(&mut self, id: u64) {
        if self.order.len() == self.capacity {
            if let Some(old) = self.order.pop_front() {
                if let Some(n) = self.counts.get_mut(&old) {
                    *n -= 1;
                    if *n == 0 {
                        self.counts.remove(&old);
                    }
                }
            }
        }
        self.order.push_back(id);
        *self.counts.entry(id).or_insert(0) += 1;
    }

    /// Whether an observation with this id was handed to the spool recently.
    pub fn contains(&self, id: u64) -> bool {
        self.counts.contains_key(&id)
    }

    /// Ids held (an id inserted twice counts twice).
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// What a message is, as far as redeliveries go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Not seen before: evaluate, fire, store.
    New,
    /// Stored and (if it fired) its firings in the outbox: ack it, nothing more.
    Done,
    /// Stored by an earlier run, which may have stopped before its firings reached the outbox:
    /// evaluate and fire, do not store again. (With Redis state the evaluation gets the
    /// decisions the first one got, so it fires exactly what the first one fired.)
    StoredNotFired,
    /// Its firings are in the outbox from an earlier run, its record was not yet stored:
    /// evaluate and store, do not fire again.
    FiredNotStored,
}

/// Everything that tells a redelivery: the window of ids handed to the spool, and what the
/// spool and the webhook outbox recovered at start.
///
/// Within one run the spool and the outbox both take what the pipeline handed them, so an id in
/// the window is [`Delivery::Done`]. Across a crash they do not commit together: the record
/// may be on disk without the firings, or the reverse; what each recovered says which part is
/// missing.
#[derive(Debug)]
pub struct Redeliveries {
    window: RedeliveryWindow,
    /// Ids of the records the spool recovered, not yet met again.
    stored_before: HashSet<u64, BuildHasherDefault<IdHasher>>,
    /// Ids of the observations whose firings the outbox recovered, not yet met again.
    fired_before: HashSet<u64, BuildHasherDefault<IdHasher>>,
}

impl Redeliveries {
    /// The window seeded with the ids the spool recovered, and the origins the outbox did.
    pub fn new(
        capacity: usize,
        stored_before: Vec<u64>,
        fired_before: impl IntoIterator<Item = u64>,
    ) -> Self {
        Self {
            stored_before: stored_before.iter().copied().collect(),
            window: RedeliveryWindow::seeded(capacity, stored_before),
            fired_before: fired_before.into_iter().collect(),
        }
    }

    /// What a message with this DUP flag and id is. A message without DUP is always new (the
    /// broker sets it on every redelivery).
    pub fn classify(&mut self, dup: bool, id: u64) -> Delivery {
        if !dup {
            return Delivery::New;
        }
        let fired = self.fired_before.remove(&id);
        if self.stored_before.remove(&id) {
            return if fired {
                Delivery::Done
            } else {
                Delivery::StoredNotFired
            };
        }
        if self.window.contains(id) {
            Delivery::Done
        } else if fired {
            Delivery::FiredNotStored
        } else {
            Delivery::New
        }
    }

    /// Records the id of an observation handed to the spool.
    pub fn insert(&mut self, id: u64) {
        self.window.insert(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_spool_and_the_outbox_recovered_tells_the_missing_part() {
        let (both, stored, fired, neither) = (1, 2, 3, 4);
        let mut r = Redeliveries::new(10, vec![both, stored], [both, fired]);
        assert_eq!(r.classify(false, both), Delivery::New, "no DUP: new");
        assert_eq!(r.classify(true, both), Delivery::Done);
        assert_eq!(r.classify(true, stored), Delivery::StoredNotFired);
        assert_eq!(r.classify(true, fired), Delivery::FiredNotStored);
        assert_eq!(r.classify(true, neither), Delivery::New);
        // Met once: a second redelivery of a recovered id is one of this run's.
        assert_eq!(
            r.classify(true, stored),
            Delivery::Done,
            "still in the window"
        );
        assert_eq!(r.classify(true, fired), Delivery::New);
        r.insert(neither);
        assert_eq!(r.classify(true, neither), Delivery::Done);
    }

    #[test]
    fn ids_are_stable_and_tell_messages_apart() {
        // Pinned: ids written to the spool by one build must mean the same in the next.
        let id = observation_id(7, "thing-1", br#"{"state":{"reported":{"temp":21.5}}}"#);
        assert_eq!(
            id,
            observation_id(7, "thing-1", br#"{"state":{"reported":{"temp":21.5}}}"#)
        );
        assert_eq!(id, 0x8a24_1328_8501_6e3a, "observation_id changed: {id:#x}");
        assert_ne!(
            id,
            observation_id(8, "thing-1", br#"{"state":{"reported":{"temp":21.5}}}"#)
        );
        assert_ne!(
            id,
            observation_id(7, "thing-2", br#"{"state":{"reported":{"temp":21.5}}}"#)
        );
        assert_ne!(
            id,
            observation_id(7, "thing-1", br#"{"state":{"reported":{"temp":21.6}}}"#)
        );
        // The thing name's length separates it from the payload.
        assert_ne!(observation_id(1, "ab", b"c"), observation_id(1, "a", b"bc"));
    }

    #[test]
    fn ids_spread_over_all_bits() {
        // Close inputs (one counter apart) give ids without shared low or high bits patterns:
        // no collision in the low 20 bits beyond what chance gives.
        let n = 100_000u32;
        let mut low = std::collections::HashSet::new();
        let mut high = std::collections::HashSet::new();
        let mut all = std::collections::HashSet::new();
        for i in 0..n {
            let id = observation_id(
                (i % 65_535) as u16,
                "t",
                format!("{{\"n\":{i}}}").as_bytes(),
            );
            all.insert(id);
            low.insert(id & 0xf_ffff);
            high.insert(id >> 44);
        }
        assert_eq!(all.len(), n as usize);
        // 100,000 draws from 2^20 values: about 95,400 distinct expected.
        assert!(low.len() > 94_000, "low bits: {}", low.len());
        assert!(high.len() > 94_000, "high bits: {}", high.len());
    }

    #[test]
    fn window_holds_the_last_ids_and_evicts_the_oldest() {
        let mut w = RedeliveryWindow::new(3);
        assert!(w.is_empty());
        for id in [1, 2, 3] {
            w.insert(id);
        }
        assert!((1..=3).all(|id| w.contains(id)));
        w.insert(4);
        assert!(!w.contains(1), "oldest evicted");
        assert!(w.contains(2) && w.contains(4));
        assert_eq!(w.len(), 3);
    }

    #[test]
    fn an_id_inserted_twice_stays_until_its_last_copy_is_evicted() {
        let mut w = RedeliveryWindow::new(3);
        w.insert(9);
        w.insert(1);
        w.insert(9);
        w.insert(2); // evicts the first 9
        assert!(w.contains(9), "the second 9 is still in the window");
        w.insert(3); // evicts 1
        w.insert(4); // evicts the second 9
        assert!(!w.contains(9));
        assert!(!w.contains(1));
        assert_eq!(w.len(), 3);
    }

    #[test]
    fn seeded_keeps_the_newest_recovered_ids() {
        let w = RedeliveryWindow::seeded(2, [1, 2, 3]);
        assert!(!w.contains(1));
        assert!(w.contains(2) && w.contains(3));
        let w = RedeliveryWindow::seeded(WINDOW_CAPACITY, []);
        assert!(w.is_empty());
    }

    #[test]
    fn only_dup_messages_in_the_window_are_redeliveries() {
        let mut r = Redeliveries::new(10, Vec::new(), []);
        let id = observation_id(1, "t", b"{}");
        assert_eq!(r.classify(true, id), Delivery::New, "never seen: store it");
        r.insert(id);
        assert_eq!(r.classify(true, id), Delivery::Done);
        assert_eq!(
            r.classify(false, id),
            Delivery::New,
            "a device may send the same payload twice"
        );
        assert_eq!(
            r.classify(true, observation_id(2, "t", b"{}")),
            Delivery::New
        );
    }

    #[test]
    fn capacity_zero_is_one() {
        let mut w = RedeliveryWindow::new(0);
        w.insert(1);
        w.insert(2);
        assert!(!w.contains(1) && w.contains(2));
    }
}
