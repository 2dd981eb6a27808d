//! Reading stored objects back (`ccstream reindex`): a body as the writers made it, gzip or not,
//! split into its records: JSON objects back to back, or one per line.

use std::borrow::Cow;
use std::io::Read;
use std::ops::Range;

use serde::de::IgnoredAny;

/// The gzip magic number, which no JSON text starts with.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The body without its gzip encoding, if it has one.
pub fn decode(body: &[u8]) -> std::io::Result<Cow<'_, [u8]>> {
    if !body.starts_with(&GZIP_MAGIC) {
        return Ok(Cow::Borrowed(body));
    }
    // Room for a typical ratio, not for the worst case of a large object.
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(64 << 20));
    flate2::read::MultiGzDecoder::new(body).read_to_end(&mut out)?;
    Ok(Cow::Owned(out))
}

/// The byte range of each record: every JSON value in `data`, whatever whitespace lies between
/// them (none, or the newline delimiter). The ranges hold the record's bytes exactly as stored.
pub fn split_records(data: &[u8]) -> Result<Vec<Range<usize>>, serde_json::Error> {
    let mut ranges = Vec::new();
    let mut values = serde_json::Deserializer::from_slice(data).into_iter::<IgnoredAny>();
    let mut end = 0;
    while let Some(value) = values.next() {
        value?;
        let start = end
            + data[end..]
                .iter()
                .take_while(|b| b.is_ascii_whitespace())
                .count();
        end = values.byte_offset();
        ranges.push(start..end);
    }
    Ok(ranges)
}

/// A record's `timestamp` (ms) as ingest reads it: a non-negative integer, or a number with a
/// fraction (truncated). `None` when it is missing or something else (a string, null): ingest
/// then indexed the record under its receive time, which the record does not keep.
pub fn record_timestamp(record: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Head {
        timestamp: Option<serde_json::Value>,
    }
    let head = serde_json::from_slice::<Head>(record).ok()?;
    match head.timestamp? {
        serde_json::Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| (0.0..1.8e19).contains(f))
                .map(|f| f as u64)
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn records_back_to_back_or_one_per_line() {
        let data = br#"{"a":1}{"b":[1,2]}{"c":"}{"}"#;
        let ranges = split_records(data).expect("records");
        let got: Vec<&[u8]> = ranges.iter().map(|r| &data[r.clone()]).collect();
        assert_eq!(
            got,
            [&br#"{"a":1}"#[..], br#"{"b":[1,2]}"#, br#"{"c":"}{"}"#]
        );
        let lines = b"{\"a\":1}\n{\"b\":2}\n";
        let ranges = split_records(lines).expect("records");
        assert_eq!(ranges, [0..7, 8..15]);
        assert!(
            split_records(b"{\"a\":1}{\"b\"").is_err(),
            "a torn record is an error"
        );
    }

    #[test]
    fn gzip_bodies_are_decoded() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"{\"a\":1}").expect("write");
        let body = gz.finish().expect("gzip");
        assert_eq!(&*decode(&body).expect("decoded"), b"{\"a\":1}");
        assert_eq!(&*decode(b"{\"a\":1}").expect("plain"), b"{\"a\":1}");
    }

    #[test]
    fn timestamps_come_from_the_record() {
        assert_eq!(
            record_timestamp(br#"{"thingName":"t","timestamp":1764160000000,"state":{}}"#),
            Some(1_764_160_000_000)
        );
        assert_eq!(record_timestamp(br#"{"thingName":"t"}"#), None);
        assert_eq!(
            record_timestamp(br#"{"timestamp":1.5e12}"#),
            Some(1_500_000_000_000)
        );
        assert_eq!(record_timestamp(br#"{"timestamp":"soon"}"#), None);
        assert_eq!(record_timestamp(br#"{"timestamp":-1}"#), None);
    }
}
