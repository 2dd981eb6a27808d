//! Object keys in the layout Firehose writes and spec 5.2 documents. Pure.
//!
//! `<prefix>[errors/]YYYY/MM/DD/HH/<stack>-firehose-1-YYYY-MM-DD-HH-mm-ss-<random>[.gz]`, UTC,
//! at the time of the batch's first record. Spec 5.2 writes the seconds field as `<dd>`; the
//! files Firehose actually writes (and the tools that read them) have seconds there.

use std::fmt::Write;

use super::config::Compression;
use super::record::RecordKind;
use crate::utc;

/// The object key of a batch. `random` makes keys of batches opened in the same second
/// distinct ([`random_suffix`]).
pub fn object_key(
    prefix: &str,
    kind: RecordKind,
    stack: &str,
    first_record_ms: u64,
    random: &str,
    compression: Compression,
) -> String {
    let t = utc::from_ms(first_record_ms);
    let (y, mo, d, h, mi, s) = (
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
    );
    let mut key = String::with_capacity(prefix.len() + stack.len() + random.len() + 64);
    key.push_str(prefix);
    if kind == RecordKind::Errors {
        key.push_str("errors/");
    }
    // Writing to a String cannot fail.
    let _ = write!(
        key,
        "{y:04}/{mo:02}/{d:02}/{h:02}/{stack}-firehose-1-{y:04}-{mo:02}-{d:02}-{h:02}-{mi:02}-{s:02}-{random}"
    );
    if compression == Compression::Gzip {
        key.push_str(".gz");
    }
    key
}

/// A random UUID (version 4, lowercase, hyphenated), as Firehose ends its object names with.
pub fn random_suffix() -> String {
    let hi = fastrand::u64(..);
    let lo = fastrand::u64(..);
    // Version 4 and the RFC 4122 variant bits.
    let hi = (hi & !0xF000) | 0x4000;
    let lo = (lo & !(0xC000 << 48)) | (0x8000 << 48);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xFFFF,
        hi & 0xFFFF,
        lo >> 48,
        lo & 0xFFFF_FFFF_FFFF
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ms: u64) -> String {
        object_key(
            "",
            RecordKind::Observations,
            "prod",
            ms,
            "r4nd",
            Compression::None,
        )
    }

    #[test]
    fn exact_layout() {
        // 2016-03-23T10:05:31.999Z (spec 5.2's example day).
        assert_eq!(
            key(1_458_727_531_999),
            "2016/03/23/10/prod-firehose-1-2016-03-23-10-05-31-r4nd"
        );
        assert_eq!(
            key(0),
            "1970/01/01/00/prod-firehose-1-1970-01-01-00-00-00-r4nd"
        );
    }

    #[test]
    fn prefix_errors_and_gzip() {
        let k = object_key(
            "obs/",
            RecordKind::Errors,
            "dev",
            1_458_727_531_000,
            "x",
            Compression::Gzip,
        );
        assert_eq!(
            k,
            "obs/errors/2016/03/23/10/dev-firehose-1-2016-03-23-10-05-31-x.gz"
        );
    }

    #[test]
    fn edge_times() {
        // Last millisecond of 2023 and the first of 2024.
        assert_eq!(
            key(1_704_067_199_999),
            "2023/12/31/23/prod-firehose-1-2023-12-31-23-59-59-r4nd"
        );
        assert_eq!(
            key(1_704_067_200_000),
            "2024/01/01/00/prod-firehose-1-2024-01-01-00-00-00-r4nd"
        );
        // Hour boundary.
        assert_eq!(
            key(1_704_070_799_999),
            "2024/01/01/00/prod-firehose-1-2024-01-01-00-59-59-r4nd"
        );
        assert_eq!(
            key(1_704_070_800_000),
            "2024/01/01/01/prod-firehose-1-2024-01-01-01-00-00-r4nd"
        );
        // Leap day.
        assert_eq!(
            key(1_709_164_800_000),
            "2024/02/29/00/prod-firehose-1-2024-02-29-00-00-00-r4nd"
        );
    }

    #[test]
    fn random_suffix_is_a_v4_uuid() {
        let a = random_suffix();
        let b = random_suffix();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
        assert!(a
            .bytes()
            .all(|c| c == b'-' || c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
    }
}
