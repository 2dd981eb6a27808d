//! When an observation may be acked: once its record is in the spool and, if it fired, once its
//! firings are in the webhook outbox. Both commit on their own threads, in their own groups, so
//! the ack token of an observation that fired is shared ([`JointAck`]) and sent by whichever of
//! the two commits comes last.
//!
//! An observation whose firings never reach the outbox (a shutdown in between) is never acked:
//! the broker sends it again after the restart, which is what makes a firing impossible to lose
//! between the engine and the outbox.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use ingest::{AckToken, Acker};

/// What the spool and the outbox hand back once durable.
#[derive(Debug)]
pub enum Ack {
    /// The observation's own token: sent at once.
    One(AckToken),
    /// A token shared by the spool and the outbox: sent at the second release.
    Joint(Arc<JointAck>),
}

impl Ack {
    /// The token to send now, if this release is the last one it waited for.
    pub fn release(self) -> Option<AckToken> {
        match self {
            Ack::One(token) => Some(token),
            Ack::Joint(joint) => joint.release(),
        }
    }
}

/// An ack token released by two commits.
#[derive(Debug)]
pub struct JointAck {
    remaining: AtomicU8,
    token: Mutex<Option<AckToken>>,
}

impl JointAck {
    /// A token that two releases send: the spool's and the outbox's.
    pub fn new(token: AckToken) -> Arc<Self> {
        Arc::new(Self {
            remaining: AtomicU8::new(2),
            token: Mutex::new(Some(token)),
        })
    }

    /// Counts one release; the last one takes the token.
    fn release(&self) -> Option<AckToken> {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return None;
        }
        match self.token.lock() {
            Ok(mut token) => token.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }
}

/// Acks what `tokens` release (the spool's and the outbox's commit callbacks).
pub fn ack_released(acker: &Acker, tokens: impl IntoIterator<Item = Ack>) {
    acker.ack_all(tokens.into_iter().filter_map(Ack::release));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_joint_token_goes_out_at_the_second_release_only() {
        let joint = JointAck::new(AckToken::not_required());
        assert!(Ack::Joint(Arc::clone(&joint)).release().is_none());
        assert!(Ack::Joint(Arc::clone(&joint)).release().is_some());
        assert!(Ack::One(AckToken::not_required()).release().is_some());
    }
}
