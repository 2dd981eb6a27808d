//! UTC calendar time of a millisecond timestamp, for the names and fields that carry dates:
//! object keys, daily index names, dead-letter files and their `time` field, and the times the
//! service's commands print.

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

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of `ms` since the epoch.
pub fn rfc3339(ms: u64) -> String {
    let t = from_ms(ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::{from_ms, rfc3339};
    use time::Month;

    #[test]
    fn calendar_fields() {
        let t = from_ms(1_460_661_813_164);
        assert_eq!((t.year(), t.month(), t.day()), (2016, Month::April, 14));
        assert_eq!((t.hour(), t.minute(), t.second()), (19, 23, 33));
        assert_eq!(t.millisecond(), 164);
        assert_eq!(from_ms(u64::MAX), time::OffsetDateTime::UNIX_EPOCH);
        assert_eq!(rfc3339(1_460_661_813_164), "2016-04-14T19:23:33.164Z");
    }
}
