//! Records handed to the spool many at a time, framed by their producer.
//!
//! A producer that stores many records (an engine worker) frames them into one buffer, CRC
//! included, and hands the buffer over in one message ([`super::ObjectSinkHandle::append_batch`]).
//! The batcher thread is the one part of the spool path every worker shares; what it does per
//! record bounds how far evaluation scales over cores. With a batch it copies finished frames
//! into their spool file, and frees one buffer per batch instead of one allocation per record
//! made on another thread (which glibc's malloc pays for with an arena lock).
//!
//! The frames are the spool's own, in [`FORMAT_VERSION`]: the batcher appends them only to
//! files it created in that version.

use super::error::{check_size, AppendError};
use super::record::RecordKind;
use super::spool::{push_record, FORMAT_VERSION};

/// Records and markers in hand-over order; see the module docs.
#[derive(Debug)]
pub struct RecordBatch<T> {
    /// The records' frames, back to back.
    pub(crate) frames: Vec<u8>,
    pub(crate) entries: Vec<Entry<T>>,
}

/// One record or marker of a [`RecordBatch`].
#[derive(Debug)]
pub(crate) enum Entry<T> {
    /// The next `frame_len` bytes of the batch's frames.
    Record {
        kind: RecordKind,
        frame_len: usize,
        record_len: usize,
        /// When the record was received; a batch it opens is named after it.
        at_ms: u64,
        token: T,
    },
    /// As [`super::ObjectSinkHandle::append_marker`]: acked once every record before it is.
    Marker { token: T },
}

impl<T> Default for RecordBatch<T> {
    fn default() -> Self {
        Self {
            frames: Vec::new(),
            entries: Vec::new(),
        }
    }
}

impl<T> RecordBatch<T> {
    /// An empty batch with room for `entries` entries and `frame_bytes` bytes of frames
    /// without growing (a producer sizes the next batch like the last one).
    pub fn with_capacity(entries: usize, frame_bytes: usize) -> Self {
        Self {
            frames: Vec::with_capacity(frame_bytes),
            entries: Vec::with_capacity(entries),
        }
    }

    /// Bytes of frames held.
    pub fn frame_bytes(&self) -> usize {
        self.frames.len()
    }

    /// Frames `record` with its id, as [`super::ObjectSinkHandle::append_with_id`] would.
    pub fn push_record(
        &mut self,
        record: &[u8],
        kind: RecordKind,
        id: u64,
        received_at_ms: u64,
        token: T,
    ) -> Result<(), AppendError> {
        check_size(record)?;
        let start = self.frames.len();
        push_record(&mut self.frames, FORMAT_VERSION, record, Some(id));
        self.entries.push(Entry::Record {
            kind,
            frame_len: self.frames.len() - start,
            record_len: record.len(),
            at_ms: received_at_ms,
            token,
        });
        Ok(())
    }

    /// A token without a record, acked in order after the records before it.
    pub fn push_marker(&mut self, token: T) {
        self.entries.push(Entry::Marker { token });
    }

    /// Records and markers held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::spool::{frame, MAX_RECORD_BYTES};

    #[test]
    fn frames_are_the_spools_own_back_to_back() {
        let mut batch = RecordBatch::default();
        batch
            .push_record(b"{\"a\":1}", RecordKind::Observations, 7, 10, "a")
            .expect("pushed");
        batch.push_marker("m");
        batch
            .push_record(b"{\"b\":2}", RecordKind::Errors, 8, 11, "b")
            .expect("pushed");
        assert_eq!(batch.len(), 3);

        let mut expected = Vec::new();
        push_record(&mut expected, FORMAT_VERSION, b"{\"a\":1}", Some(7));
        let first_len = expected.len();
        push_record(&mut expected, FORMAT_VERSION, b"{\"b\":2}", Some(8));
        assert_eq!(batch.frames, expected);
        assert!(frame(&batch.frames, 0).is_some());
        assert!(frame(&batch.frames, first_len).is_some());
        assert!(matches!(
            batch.entries[0],
            Entry::Record { frame_len, record_len: 7, at_ms: 10, .. } if frame_len == first_len
        ));
        assert!(matches!(batch.entries[1], Entry::Marker { token: "m" }));
    }

    #[test]
    fn a_record_over_the_limit_is_refused_and_nothing_is_framed() {
        let mut batch = RecordBatch::default();
        let big = vec![b' '; MAX_RECORD_BYTES + 1];
        assert_eq!(
            batch.push_record(&big, RecordKind::Observations, 1, 1, ()),
            Err(AppendError::TooLarge {
                len: MAX_RECORD_BYTES + 1,
                max: MAX_RECORD_BYTES
            })
        );
        assert!(batch.is_empty());
        assert!(batch.frames.is_empty());
    }
}
