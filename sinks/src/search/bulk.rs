//! Bulk request building, as plain functions over data: daily index names, the batcher that
//! decides when a bulk request is full, the NDJSON body, and the shape of a `_bulk` response.
//! No I/O; the batcher takes the time as an argument.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use tokio::time::Instant;

use crate::utc;

const MS_PER_DAY: u64 = 86_400_000;

/// The daily index of a record: `<prefix>YYYY.MM.DD`, the UTC day of `timestamp_ms`.
pub fn index_name(prefix: &str, timestamp_ms: u64) -> String {
    let t = utc::from_ms(timestamp_ms);
    let (year, month, day) = (t.year(), u8::from(t.month()), t.day());
    format!("{prefix}{year:04}.{month:02}.{day:02}")
}

/// Daily index names with the last day remembered: records arrive in near time order, so one
/// entry saves formatting a name per record.
#[derive(Debug)]
pub struct IndexNames {
    prefix: String,
    last: Option<(u64, Arc<str>)>,
}

impl IndexNames {
    /// Names below `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            last: None,
        }
    }

    /// The index of a record with this timestamp.
    pub fn get(&mut self, timestamp_ms: u64) -> Arc<str> {
        let day = timestamp_ms / MS_PER_DAY;
        match &self.last {
            Some((last_day, name)) if *last_day == day => Arc::clone(name),
            _ => {
                let name: Arc<str> = index_name(&self.prefix, timestamp_ms).into();
                self.last = Some((day, Arc::clone(&name)));
                name
            }
        }
    }
}

/// One record on its way to OpenSearch.
#[derive(Debug, Clone)]
pub struct Item {
    /// The JSON record, one document.
    pub record: Bytes,
    /// Its daily index.
    pub index: Arc<str>,
    /// When it was queued (for the queue age gauge).
    pub received: Instant,
    /// Read from the spool, which keeps it until it is indexed: retried without limit.
    pub replayable: bool,
}

const ACTION_HEAD: &[u8] = br#"{"index":{"_index":""#;
const ACTION_ID: &[u8] = br#"","_id":""#;
const ACTION_TAIL: &[u8] = b"\"}}\n";
/// Hex digits of a document id.
pub const DOCUMENT_ID_LEN: usize = 32;

/// A record's document `_id`: the first 128 bits of the SHA-256 of the record's bytes as stored,
/// in hex. Derived from the record alone, so that indexing it again (a retried request,
/// `ccstream reindex` from the stored objects) overwrites the document instead of adding a
/// second one. Two records with the same bytes (same thing, timestamp, domain and payload) are
/// the same document. SHA-256, not a faster hash: devices choose most of a record's bytes, and
/// must not be able to make their record collide with another's document (128 bits leave about
/// 2^64 work for a collision).
pub fn document_id(record: &[u8]) -> [u8; DOCUMENT_ID_LEN] {
    use sha2::{Digest, Sha256};
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(record);
    let mut id = [0u8; DOCUMENT_ID_LEN];
    for (i, byte) in digest.iter().take(DOCUMENT_ID_LEN / 2).enumerate() {
        id[2 * i] = HEX[usize::from(byte >> 4)];
        id[2 * i + 1] = HEX[usize::from(byte & 0x0f)];
    }
    id
}

impl Item {
    /// Bytes this item adds to a bulk body: its action line, the record and a newline.
    pub fn encoded_len(&self) -> usize {
        ACTION_HEAD.len()
            + self.index.len()
            + ACTION_ID.len()
            + DOCUMENT_ID_LEN
            + ACTION_TAIL.len()
            + self.record.len()
            + 1
    }
}

/// The NDJSON body of a `_bulk` request: per item
/// `{"index":{"_index":"<index>","_id":"<document_id>"}}\n<record>\n`.
///
/// The `_id` is [`document_id`]: a whole request retried after a timeout overwrites what the
/// first attempt indexed instead of indexing it twice.
///
/// A newline inside a record would end the document early. In JSON, raw line breaks can only be
/// whitespace between tokens (inside strings they must be escaped), so they become spaces.
/// Index names come from the validated prefix and digits: nothing to escape.
pub fn encode(items: &[Item]) -> Bytes {
    let len = items.iter().map(Item::encoded_len).sum();
    let mut body = BytesMut::with_capacity(len);
    for item in items {
        body.put_slice(ACTION_HEAD);
        body.put_slice(item.index.as_bytes());
        body.put_slice(ACTION_ID);
        body.put_slice(&document_id(&item.record));
        body.put_slice(ACTION_TAIL);
        if item.record.contains(&b'\n') || item.record.contains(&b'\r') {
            body.extend(item.record.iter().map(|&b| match b {
                b'\n' | b'\r' => b' ',
                other => other,
            }));
        } else {
            body.put_slice(&item.record);
        }
        body.put_u8(b'\n');
    }
    body.freeze()
}

/// Collects items into bulk requests of at most `max_actions` items and `max_bytes` bytes (a
/// single larger item goes alone), and says when the oldest has waited `max_wait`.
#[derive(Debug)]
pub struct Batcher {
    items: Vec<Item>,
    bytes: usize,
    opened: Option<Instant>,
    max_bytes: usize,
    max_actions: usize,
    max_wait: Duration,
}

impl Batcher {
    /// An empty batcher with these limits (each at least 1).
    pub fn new(max_bytes: usize, max_actions: usize, max_wait: Duration) -> Self {
        Self {
            items: Vec::new(),
            bytes: 0,
            opened: None,
            max_bytes: max_bytes.max(1),
            max_actions: max_actions.max(1),
            max_wait,
        }
    }

    /// Adds `item`, received at `now`. When it does not fit, the items collected so far are
    /// returned as a full batch and `item` starts the next one.
    pub fn push(&mut self, item: Item, now: Instant) -> Option<Vec<Item>> {
        let size = item.encoded_len();
        let full = if !self.items.is_empty()
            && (self.items.len() >= self.max_actions || self.bytes + size > self.max_bytes)
        {
            Some(self.take())
        } else {
            None
        };
        if self.items.is_empty() {
            self.opened = Some(now);
        }
        self.bytes += size;
        self.items.push(item);
        full
    }

    /// No room for another item: send now.
    pub fn is_full(&self) -> bool {
        self.items.len() >= self.max_actions || self.bytes >= self.max_bytes
    }

    /// When the batch is due by time (`None` when empty).
    pub fn due_at(&self) -> Option<Instant> {
        self.opened.map(|opened| opened + self.max_wait)
    }

    /// Whether the batch should go out at `now`: full, or due by time.
    pub fn ready(&self, now: Instant) -> bool {
        !self.items.is_empty() && (self.is_full() || self.due_at().is_some_and(|due| due <= now))
    }

    /// Takes the collected items.
    pub fn take(&mut self) -> Vec<Item> {
        self.bytes = 0;
        self.opened = None;
        std::mem::take(&mut self.items)
    }

    /// Items collected.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Nothing collected.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Body bytes collected.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// When the oldest collected item was received.
    pub fn oldest(&self) -> Option<Instant> {
        self.items.first().map(|item| item.received)
    }
}

/// The parts of a `_bulk` response the indexer reads: `errors`, and per item its status and
/// error. Items are in the order of the request.
#[derive(Debug, Deserialize)]
pub struct BulkResponse {
    /// Whether any item failed.
    #[serde(default)]
    pub errors: bool,
    /// One entry per action, `{"index": {...}}`.
    #[serde(default)]
    pub items: Vec<BulkItem>,
}

/// One entry of `items`: the result under the action's name (`index` here; `create`, `update`
/// and `delete` are accepted too).
#[derive(Debug, Deserialize)]
pub struct BulkItem {
    #[serde(alias = "create", alias = "update", alias = "delete")]
    index: ItemResult,
}

impl BulkItem {
    /// The item's result.
    pub fn result(&self) -> &ItemResult {
        &self.index
    }
}

/// The result of one action.
#[derive(Debug, Deserialize)]
pub struct ItemResult {
    /// HTTP status of the action (201 created).
    #[serde(default)]
    pub status: u16,
    /// The failure, when it failed.
    #[serde(default)]
    pub error: Option<ItemError>,
}

/// A failed action's error: `{"type": "mapper_parsing_exception", "reason": "..."}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ItemError {
    /// The documented shape.
    Detailed {
        /// The exception type.
        #[serde(rename = "type", default)]
        kind: String,
        /// The human-readable reason.
        #[serde(default)]
        reason: Option<String>,
    },
    /// Very old versions answered a string.
    Text(String),
}

impl ItemError {
    /// The exception type (`""` when unknown).
    pub fn kind(&self) -> &str {
        match self {
            ItemError::Detailed { kind, .. } => kind,
            ItemError::Text(_) => "",
        }
    }

    /// The reason (`""` when none).
    pub fn reason(&self) -> &str {
        match self {
            ItemError::Detailed { reason, .. } => reason.as_deref().unwrap_or(""),
            ItemError::Text(text) => text,
        }
    }
}

/// Parses a `_bulk` response body.
pub fn parse_response(body: &[u8]) -> Result<BulkResponse, serde_json::Error> {
    serde_json::from_slice(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(record: &str, index: &str, received: Instant) -> Item {
        Item {
            record: Bytes::from(record.to_owned()),
            index: index.into(),
            received,
            replayable: false,
        }
    }

    #[test]
    fn daily_index_names_are_utc_days() {
        assert_eq!(index_name("observations-", 0), "observations-1970.01.01");
        // 2016-04-14T19:23:33.164Z, the spec's FIND example.
        assert_eq!(
            index_name("observations-", 1_460_661_813_164),
            "observations-2016.04.14"
        );
        // 2026-11-26T23:59:59.999Z and the next millisecond.
        assert_eq!(index_name("obs-", 1_795_737_599_999), "obs-2026.11.26");
        assert_eq!(index_name("obs-", 1_795_737_600_000), "obs-2026.11.27");
        // Leap day, and the turn of a century that is a leap year.
        assert_eq!(index_name("o-", 951_782_400_000), "o-2000.02.29");
        assert_eq!(index_name("o-", 1_709_164_800_000), "o-2024.02.29");
        assert_eq!(index_name("o-", 1_735_689_599_000), "o-2024.12.31");
        // Far future does not panic.
        let _ = index_name("o-", u64::MAX);
    }

    #[test]
    fn index_names_cache_follows_the_day() {
        let mut names = IndexNames::new("observations-");
        let a = names.get(1_795_737_599_999);
        let b = names.get(1_795_737_500_000);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*names.get(1_795_737_600_000), "observations-2026.11.27");
    }

    #[test]
    fn document_ids_are_the_records_sha256_cut_to_128_bits() {
        // FIPS 180-2's "abc" vector: ba7816bf 8f01cfea 414140de 5dae2223 b00361a3 ...
        assert_eq!(&document_id(b"abc"), b"ba7816bf8f01cfea414140de5dae2223");
        assert_ne!(document_id(b"{\"a\":1}"), document_id(b"{\"a\":2}"));
    }

    #[test]
    fn ndjson_body_is_action_line_then_record() {
        let now = Instant::now();
        let items = vec![
            item(r#"{"a":1}"#, "observations-2026.11.26", now),
            item("{\n  \"b\": \"x\"\r\n}", "observations-2026.11.27", now),
        ];
        let body = encode(&items);
        assert_eq!(
            std::str::from_utf8(&body).expect("utf-8"),
            "{\"index\":{\"_index\":\"observations-2026.11.26\",\"_id\":\"015abd7f5cc57a2dd94b7590f04ad808\"}}\n\
             {\"a\":1}\n\
             {\"index\":{\"_index\":\"observations-2026.11.27\",\"_id\":\"e4b5ef9f0702fd07c94eeaf38929da9c\"}}\n\
             {   \"b\": \"x\"  }\n"
        );
        assert_eq!(
            body.len(),
            items.iter().map(Item::encoded_len).sum::<usize>()
        );
    }

    #[test]
    fn batcher_fills_by_count_and_bytes_and_times_out() {
        let t0 = Instant::now();
        let wait = Duration::from_millis(100);
        let mut b = Batcher::new(1 << 20, 2, wait);
        assert!(b.due_at().is_none() && !b.ready(t0));
        assert!(b.push(item("{}", "i", t0), t0).is_none());
        assert!(!b.ready(t0 + Duration::from_millis(99)));
        assert!(b.ready(t0 + wait));
        assert!(b.push(item("{}", "i", t0), t0).is_none());
        assert!(b.is_full() && b.ready(t0));
        // A third item does not fit: the two go out, it starts the next batch.
        let full = b.push(item("{}", "i", t0), t0 + wait).expect("full batch");
        assert_eq!(full.len(), 2);
        assert_eq!(b.len(), 1);
        assert_eq!(b.due_at(), Some(t0 + wait + wait));

        // By bytes: each item is 22 + 2 + 1 = 25 bytes with index "i".
        let one = item("{}", "i", t0).encoded_len();
        let mut b = Batcher::new(2 * one, 100, wait);
        assert!(b.push(item("{}", "i", t0), t0).is_none());
        assert!(!b.is_full());
        assert!(b.push(item("{}", "i", t0), t0).is_none());
        assert!(b.is_full());
        assert_eq!(b.push(item("{}", "i", t0), t0).map(|v| v.len()), Some(2));
        // A record larger than the limit goes alone.
        let big = "x".repeat(10 * one);
        let mut b = Batcher::new(2 * one, 100, wait);
        assert!(b.push(item(&big, "i", t0), t0).is_none());
        assert!(b.is_full());
        assert_eq!(b.push(item("{}", "i", t0), t0).map(|v| v.len()), Some(1));
        assert_eq!(b.bytes(), one);
    }

    #[test]
    fn bulk_responses_parse() {
        let body = br#"{"took":30,"errors":true,"items":[
            {"index":{"_index":"o","_id":"1","status":201,"result":"created"}},
            {"index":{"_index":"o","status":429,"error":{"type":"es_rejected_execution_exception","reason":"queue full"}}},
            {"create":{"_index":"o","status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [x]"}}},
            {"index":{"status":500,"error":"boom"}}
        ]}"#;
        let r = parse_response(body).expect("parses");
        assert!(r.errors);
        let statuses: Vec<u16> = r.items.iter().map(|i| i.result().status).collect();
        assert_eq!(statuses, [201, 429, 400, 500]);
        let e = r.items[2].result().error.as_ref().expect("error");
        assert_eq!(e.kind(), "mapper_parsing_exception");
        assert_eq!(e.reason(), "failed to parse field [x]");
        assert_eq!(
            r.items[3].result().error.as_ref().expect("error").reason(),
            "boom"
        );
        // filter_path=errors,items.*.status,items.*.error keeps only these.
        let r = parse_response(br#"{"errors":false,"items":[{"index":{"status":201}}]}"#)
            .expect("parses");
        assert!(!r.errors && r.items.len() == 1);
    }
}
