//! UTC calendar time of a millisecond timestamp, for the names and fields that carry dates:
//! object keys, daily index names, dead-letter files and their `time` field.

use time::OffsetDateTime;

/// UTC time of `ms` since the epoch. Times past year 9999 (never from a real clock) are clamped
/// to the epoch rather than failing a batch or a record.
pub(crate) fn from_ms(ms: u64) -> OffsetDateTime {
    i64::try_from(ms / 1000)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .map_or(OffsetDateTime::UNIX_EPOCH, |t| {
            // `ms % 1000` < 1000, so this cannot fail.
            t.replace_millisecond((ms % 1000) as u16).unwrap_or(t)
        })
}

#[cfg(test)]
mod tests {
    use super::from_ms;
    use time::Month;

    #[test]
    fn calendar_fields() {
        let t = from_ms(1_460_661_813_164);
        assert_eq!((t.year(), t.month(), t.day()), (2016, Month::April, 14));
        assert_eq!((t.hour(), t.minute(), t.second()), (19, 23, 33));
        assert_eq!(t.millisecond(), 164);
        assert_eq!(from_ms(u64::MAX), time::OffsetDateTime::UNIX_EPOCH);
    }
}
