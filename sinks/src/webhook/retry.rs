//! Retry rules, as pure functions: which outcomes of an attempt are worth another, and how long
//! to wait before it. Tested without a network and without sleeping.

use std::time::Duration;

use ccstream_common::Backoff;

/// What one attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A response with this status; `retry_after` from its `Retry-After` header (seconds).
    Status {
        /// The HTTP status code.
        code: u16,
        /// The parsed `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// No complete response within the timeout.
    Timeout,
    /// Connecting, resolving or talking to the server failed before a complete response.
    Connect,
    /// The SSRF guard refused the destination.
    Refused,
    /// The request could not be built.
    Invalid,
}

impl AttemptOutcome {
    /// The `outcome` label of `ccstream_webhook_requests_total`.
    pub fn label(&self) -> &'static str {
        match self {
            AttemptOutcome::Status { code, .. } => match code {
                200..=299 => "2xx",
                300..=399 => "3xx",
                400..=499 => "4xx",
                500..=599 => "5xx",
                _ => "error",
            },
            AttemptOutcome::Timeout | AttemptOutcome::Connect | AttemptOutcome::Invalid => "error",
            AttemptOutcome::Refused => "refused",
        }
    }

    /// A 2xx response.
    pub fn is_success(&self) -> bool {
        matches!(
            self,
            AttemptOutcome::Status {
                code: 200..=299,
                ..
            }
        )
    }
}

/// Whether to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Worth another attempt, after the server's `Retry-After` when it gave one.
    Yes {
        /// The server's requested wait.
        after: Option<Duration>,
    },
    /// Final: success, or a failure another attempt will not fix.
    No,
}

/// Connection errors, timeouts, 429 and 5xx are retried; 2xx, 3xx (redirects are not followed),
/// other 4xx, refusals and unbuildable requests are final.
pub fn classify(outcome: &AttemptOutcome) -> Retry {
    match *outcome {
        AttemptOutcome::Status {
            code: 429,
            retry_after,
        } => Retry::Yes { after: retry_after },
        AttemptOutcome::Status {
            code: 500..=599,
            retry_after,
        } => Retry::Yes { after: retry_after },
        AttemptOutcome::Status { .. } => Retry::No,
        AttemptOutcome::Timeout | AttemptOutcome::Connect => Retry::Yes { after: None },
        AttemptOutcome::Refused | AttemptOutcome::Invalid => Retry::No,
    }
}

/// The wait after failed attempt `attempt` (1-based): the server's `Retry-After` capped at the
/// backoff's `max`, or the jittered backoff.
pub fn retry_delay(after: Option<Duration>, attempt: u32, backoff: &Backoff) -> Duration {
    match after {
        Some(wait) => wait.min(backoff.max()),
        None => backoff.delay(attempt),
    }
}

/// Parses a `Retry-After` value given in seconds. HTTP-date values are not honoured (`None`:
/// the normal backoff applies).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> AttemptOutcome {
        AttemptOutcome::Status {
            code,
            retry_after: None,
        }
    }

    #[test]
    fn classification() {
        for code in [500, 502, 503, 504, 599, 429] {
            assert_eq!(
                classify(&status(code)),
                Retry::Yes { after: None },
                "{code}"
            );
        }
        for code in [200, 204, 301, 302, 307, 400, 401, 403, 404, 410, 422] {
            assert_eq!(classify(&status(code)), Retry::No, "{code}");
        }
        assert_eq!(
            classify(&AttemptOutcome::Timeout),
            Retry::Yes { after: None }
        );
        assert_eq!(
            classify(&AttemptOutcome::Connect),
            Retry::Yes { after: None }
        );
        assert_eq!(classify(&AttemptOutcome::Refused), Retry::No);
        assert_eq!(classify(&AttemptOutcome::Invalid), Retry::No);
        let limited = AttemptOutcome::Status {
            code: 429,
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(
            classify(&limited),
            Retry::Yes {
                after: Some(Duration::from_secs(7))
            }
        );
    }

    #[test]
    fn labels() {
        assert_eq!(status(204).label(), "2xx");
        assert_eq!(status(302).label(), "3xx");
        assert_eq!(status(404).label(), "4xx");
        assert_eq!(status(503).label(), "5xx");
        assert_eq!(AttemptOutcome::Timeout.label(), "error");
        assert_eq!(AttemptOutcome::Refused.label(), "refused");
        assert!(status(200).is_success() && !status(302).is_success());
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let max = Duration::from_secs(10);
        let backoff = Backoff::new(Duration::from_millis(200), max);
        assert_eq!(
            retry_delay(Some(Duration::from_secs(3)), 1, &backoff),
            Duration::from_secs(3)
        );
        assert_eq!(
            retry_delay(Some(Duration::from_secs(3600)), 1, &backoff),
            max
        );
        let wait = retry_delay(None, 2, &backoff);
        assert!(
            (Duration::from_millis(200)..=Duration::from_millis(400)).contains(&wait),
            "{wait:?}"
        );
        assert_eq!(parse_retry_after(" 5 "), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after("0"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }
}
