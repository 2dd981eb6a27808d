//! Manual acknowledgements, sent in the order the messages arrived.
//!
//! Every QoS 1 message the source forwards carries an [`AckToken`]. The pipeline hands the token
//! to [`Acker::ack`] once the message is safe (for observations: after the spool's fsync); only
//! then does the broker get the PUBACK and forget the message. A message whose token is never
//! acked is delivered again after the next reconnect (persistent session).
//!
//! **Order.** MQTT 3.1.1 (section 4.6) says a client MUST send PUBACKs in the order the PUBLISHes
//! arrived, and some brokers hold it to that: rumqttd (the embedded broker) disconnects a client
//! on an out-of-order PUBACK. The ingest path acks in order anyway; [`Acker`] also enforces it,
//! cheaply: an ack that comes before the ack of an earlier message is held back and sent right
//! after it. A token dropped without an ack therefore holds back the PUBACKs of every later
//! message of its connection (until the next reconnect, when the broker delivers them again):
//! ack every token, including those of messages the pipeline decides to skip.
//!
//! **Connections.** Packet ids belong to one connection of the session. When the connection
//! drops, rumqttc discards the PUBACKs it has not written and the broker delivers the un-acked
//! messages again; so a token from an older connection is not sent ([`AckOutcome::Stale`]):
//! a PUBACK for a packet id the broker reassigned could acknowledge the wrong message.
//!
//! The queue is a `std::sync::Mutex` (never held across an await): the source's task registers a
//! message per PUBLISH and the pipeline acks from its own task; both only touch a `VecDeque`.
//!
//! **Writing.** PUBACKs that may go out are moved to an outbox and the source's task is woken;
//! it writes everything in the outbox to the connection and flushes once. Not through rumqttc's
//! request queue: its event loop flushes after each request (bytebeamio/rumqtt#810), so every
//! PUBACK would be a `write(2)` of its own, one system call and one TCP segment per message.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use metrics::Counter;
use rumqttc::QoS;
use tokio::sync::Notify;

/// What [`Acker::ack`] did with a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The PUBACK, and those of all earlier messages, are in the outbox for the broker.
    Sent,
    /// Held back until an earlier message of the same connection is acked.
    Held,
    /// The message arrived on a connection that is gone; the broker delivers it again.
    Stale,
    /// A QoS 0 message: there is nothing to acknowledge.
    NotRequired,
}

/// Proof that a message was received and not yet acknowledged; give it to [`Acker::ack`].
///
/// Not `Clone`: a message is acknowledged once. Dropping a token without acking it is counted
/// (`ccstream_mqtt_unacked_dropped_total`) and holds back later acks, see the module docs.
#[must_use = "a token must be acked, or the PUBACKs of later messages are held back"]
pub struct AckToken {
    slot: Option<Slot>,
    dropped: Option<Counter>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    connection: u64,
    seq: u64,
}

impl AckToken {
    /// The token of a message with nothing to acknowledge (QoS 0): acking it sends nothing.
    pub fn not_required() -> Self {
        AckToken {
            slot: None,
            dropped: None,
        }
    }

    /// Whether acking this token sends a PUBACK (false for QoS 0 messages).
    pub fn needs_ack(&self) -> bool {
        self.slot.is_some()
    }
}

impl fmt::Debug for AckToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.slot {
            Some(slot) => write!(f, "AckToken(connection {}, #{})", slot.connection, slot.seq),
            None => f.write_str("AckToken(QoS 0)"),
        }
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        if self.slot.is_some() {
            if let Some(counter) = &self.dropped {
                counter.increment(1);
            }
        }
    }
}

/// One received QoS 1 or 2 message waiting for its acknowledgement.
#[derive(Debug, Clone, Copy)]
struct Entry {
    pkid: u16,
    qos: QoS,
    acked: bool,
}

/// A PUBACK (or, for QoS 2, PUBREC) the source's task is to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadyAck {
    pub(crate) pkid: u16,
    pub(crate) qos: QoS,
}

/// The order-keeping core, without I/O: which PUBACKs may be sent now.
#[derive(Debug, Default)]
pub(crate) struct AckQueue {
    /// Bumped whenever a connection ends; tokens of older connections are stale.
    connection: u64,
    /// Sequence number of `entries[0]`.
    front: u64,
    /// Next sequence number to hand out.
    next: u64,
    entries: VecDeque<Entry>,
    /// Ready to be written by the source's task, oldest first.
    outbox: Vec<ReadyAck>,
}

impl AckQueue {
    /// Records a received message; `None` for QoS 0.
    fn register(&mut self, pkid: u16, qos: QoS) -> Option<Slot> {
        if qos == QoS::AtMostOnce {
            return None;
        }
        let seq = self.next;
        self.next += 1;
        self.entries.push_back(Entry {
            pkid,
            qos,
            acked: false,
        });
        Some(Slot {
            connection: self.connection,
            seq,
        })
    }

    /// Marks a message acked; false when its connection is gone (or the slot is unknown).
    fn mark(&mut self, slot: Slot) -> bool {
        if slot.connection != self.connection || slot.seq < self.front {
            return false;
        }
        let Ok(index) = usize::try_from(slot.seq - self.front) else {
            return false;
        };
        match self.entries.get_mut(index) {
            Some(entry) => {
                entry.acked = true;
                true
            }
            None => false,
        }
    }

    /// The oldest message, when it is acked and so its PUBACK may go out now.
    fn ready(&self) -> Option<Entry> {
        self.entries.front().filter(|e| e.acked).copied()
    }

    /// Forgets the oldest message after its PUBACK went out.
    fn pop(&mut self) {
        if self.entries.pop_front().is_some() {
            self.front += 1;
        }
    }

    /// Whether `slot`'s PUBACK has gone out (it is no longer queued).
    fn is_sent(&self, slot: Slot) -> bool {
        slot.connection == self.connection && slot.seq < self.front
    }

    /// The connection ended: every token issued so far is stale, and PUBACKs not written yet
    /// are dropped (their packet ids mean nothing on the next connection).
    fn reset(&mut self) {
        self.connection += 1;
        self.entries.clear();
        self.outbox.clear();
        self.front = self.next;
    }

    /// Moves the PUBACKs that may go out now to the outbox; true when it moved any.
    fn release(&mut self) -> bool {
        let mut moved = false;
        while let Some(entry) = self.ready() {
            self.outbox.push(ReadyAck {
                pkid: entry.pkid,
                qos: entry.qos,
            });
            self.pop();
            moved = true;
        }
        moved
    }

    /// Messages waiting for their ack, or for the ack of an earlier message.
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// State shared by the source's task and every [`Acker`] clone.
pub(crate) struct AckShared {
    queue: Mutex<AckQueue>,
    /// Wakes the source's task when the outbox has PUBACKs.
    ready: Notify,
    stale: Counter,
    dropped: Counter,
}

impl AckShared {
    pub(crate) fn new(stale: Counter, dropped: Counter) -> Arc<Self> {
        Arc::new(AckShared {
            queue: Mutex::new(AckQueue::default()),
            ready: Notify::new(),
            stale,
            dropped,
        })
    }

    fn lock(&self) -> MutexGuard<'_, AckQueue> {
        // The queue stays consistent even if a holder panicked (no step leaves it half done).
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Called by the source for every PUBLISH, in arrival order.
    pub(crate) fn register(&self, pkid: u16, qos: QoS) -> AckToken {
        let slot = self.lock().register(pkid, qos);
        AckToken {
            dropped: slot.map(|_| self.dropped.clone()),
            slot,
        }
    }

    /// Called by the source when a connection ends (and before rumqttc's request queue is
    /// cleared of PUBACKs, see the source).
    pub(crate) fn reset(&self) {
        self.lock().reset();
    }

    /// Number of messages registered and not yet acknowledged to the broker.
    pub(crate) fn pending(&self) -> usize {
        self.lock().len()
    }

    /// Resolves when the outbox may have PUBACKs to write (at once if it got some since the
    /// last call).
    pub(crate) async fn outbox_ready(&self) {
        self.ready.notified().await;
    }

    /// Swaps the outbox with `into` (which the caller has emptied): the PUBACKs to write, oldest
    /// first. Swapping keeps both buffers' capacity, so a busy source allocates nothing.
    pub(crate) fn take_outbox(&self, into: &mut Vec<ReadyAck>) {
        std::mem::swap(&mut self.lock().outbox, into);
    }

    fn release_locked(&self, queue: &mut AckQueue) {
        if queue.release() {
            self.ready.notify_one();
        }
    }

    /// Acknowledges one message (see [`Acker::ack`]).
    pub(crate) fn ack(&self, token: AckToken) -> AckOutcome {
        let mut queue = self.lock();
        self.ack_locked(&mut queue, token)
    }

    fn ack_locked(&self, queue: &mut AckQueue, mut token: AckToken) -> AckOutcome {
        let Some(slot) = token.slot.take() else {
            return AckOutcome::NotRequired;
        };
        if !queue.mark(slot) {
            self.stale.increment(1);
            return AckOutcome::Stale;
        }
        self.release_locked(queue);
        if queue.is_sent(slot) {
            AckOutcome::Sent
        } else {
            AckOutcome::Held
        }
    }
}

/// Acknowledges received messages to the broker; cheap to clone, never blocks.
#[derive(Clone)]
pub struct Acker {
    shared: Arc<AckShared>,
}

impl fmt::Debug for Acker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acker").finish_non_exhaustive()
    }
}

impl Acker {
    pub(crate) fn new(shared: Arc<AckShared>) -> Self {
        Acker { shared }
    }

    /// An acker for messages that come from no broker (an in-process source, as the engine's
    /// benchmarks feed it): their tokens are [`AckToken::not_required`], so nothing is queued
    /// or written.
    pub fn without_broker() -> Self {
        Acker::new(AckShared::new(Counter::noop(), Counter::noop()))
    }

    /// Acknowledges one message. Ack in the order the messages were received: an ack that comes
    /// early is held until the earlier messages are acked (see the module docs).
    pub fn ack(&self, token: AckToken) -> AckOutcome {
        self.shared.ack(token)
    }

    /// Acknowledges a batch (for example everything one fsync made durable) under one lock.
    /// Returns how many PUBACKs were sent or held, i.e. not stale and not QoS 0.
    pub fn ack_all(&self, tokens: impl IntoIterator<Item = AckToken>) -> usize {
        let mut queue = self.shared.lock();
        tokens
            .into_iter()
            .map(|t| self.shared.ack_locked(&mut queue, t))
            .filter(|o| matches!(o, AckOutcome::Sent | AckOutcome::Held))
            .count()
    }

    /// Messages received on the current connection whose PUBACK may not go out yet: not acked,
    /// or acked before an earlier message was. (The source writes released PUBACKs at once.)
    pub fn pending(&self) -> usize {
        self.shared.pending()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ready_pkids(q: &mut AckQueue) -> Vec<u16> {
        let mut out = Vec::new();
        while let Some(e) = q.ready() {
            out.push(e.pkid);
            q.pop();
        }
        out
    }

    #[test]
    fn in_order_acks_go_out_at_once() {
        let mut q = AckQueue::default();
        let a = q.register(1, QoS::AtLeastOnce).unwrap();
        let b = q.register(2, QoS::AtLeastOnce).unwrap();
        assert!(q.mark(a));
        assert_eq!(ready_pkids(&mut q), vec![1]);
        assert!(q.is_sent(a) && !q.is_sent(b));
        assert!(q.mark(b));
        assert_eq!(ready_pkids(&mut q), vec![2]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn early_acks_wait_for_earlier_messages() {
        let mut q = AckQueue::default();
        let slots: Vec<_> = (1..=4)
            .map(|p| q.register(p, QoS::AtLeastOnce).unwrap())
            .collect();
        assert!(q.mark(slots[3]));
        assert!(q.mark(slots[1]));
        assert_eq!(ready_pkids(&mut q), Vec::<u16>::new());
        assert!(q.mark(slots[0]));
        assert_eq!(ready_pkids(&mut q), vec![1, 2]);
        assert!(q.mark(slots[2]));
        assert_eq!(ready_pkids(&mut q), vec![3, 4]);
    }

    #[test]
    fn tokens_of_an_old_connection_are_stale() {
        let mut q = AckQueue::default();
        let old = q.register(7, QoS::AtLeastOnce).unwrap();
        q.reset();
        let new = q.register(7, QoS::AtLeastOnce).unwrap();
        assert!(!q.mark(old));
        assert_eq!(ready_pkids(&mut q), Vec::<u16>::new());
        assert!(q.mark(new));
        assert_eq!(ready_pkids(&mut q), vec![7]);
    }

    #[test]
    fn qos0_needs_no_slot() {
        let mut q = AckQueue::default();
        assert!(q.register(0, QoS::AtMostOnce).is_none());
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn release_moves_ready_acks_to_the_outbox_and_reset_drops_them() {
        let mut q = AckQueue::default();
        let a = q.register(1, QoS::AtLeastOnce).unwrap();
        let b = q.register(2, QoS::AtLeastOnce).unwrap();
        assert!(q.mark(b));
        assert!(!q.release(), "2 waits for 1");
        assert!(q.mark(a));
        assert!(q.release());
        let pkids: Vec<u16> = q.outbox.iter().map(|r| r.pkid).collect();
        assert_eq!(pkids, vec![1, 2]);
        assert!(q.is_sent(a) && q.is_sent(b));
        let c = q.register(3, QoS::AtLeastOnce).unwrap();
        assert!(q.mark(c));
        assert!(q.release());
        q.reset();
        assert!(
            q.outbox.is_empty(),
            "PUBACKs of a closed connection are never written"
        );
    }

    #[test]
    fn a_slot_is_marked_once() {
        let mut q = AckQueue::default();
        let a = q.register(1, QoS::AtLeastOnce).unwrap();
        assert!(q.mark(a));
        q.pop();
        assert!(!q.mark(a));
    }
}
