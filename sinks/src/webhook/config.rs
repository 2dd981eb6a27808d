//! The `[webhook]` configuration section: defaults in one place, `validate()` names the bad key.

use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::ssrf::{parse_cidr, SsrfPolicy};
use ccstream_common::ConfigError;

/// Default values of [`WebhookConfig`], in one place.
pub mod defaults {
    /// Whole-request timeout per attempt, seconds.
    pub const TIMEOUT_SECS: u64 = 10;
    /// Attempts per firing, the first included.
    pub const MAX_ATTEMPTS: u32 = 3;
    /// First backoff ceiling, milliseconds.
    pub const BACKOFF_INITIAL_MS: u64 = 200;
    /// Largest backoff (and `Retry-After`) wait, milliseconds.
    pub const BACKOFF_MAX_MS: u64 = 10_000;
    /// Firing bodies the dispatcher holds in memory (the rest wait on disk).
    pub const QUEUE_CAPACITY: usize = 10_000;
    /// Outbox directory.
    pub const OUTBOX_DIR: &str = "data/outbox";
    /// Largest outbox, bytes (1 GiB).
    pub const OUTBOX_MAX_BYTES: u64 = 1 << 30;
    /// Firings in flight at once.
    pub const CONCURRENCY: usize = 64;
    /// Firings in flight at once to one destination.
    pub const CONCURRENCY_PER_DESTINATION: usize = 32;
    /// Failed attempts in a row that open a destination's circuit.
    pub const BREAKER_FAILURES: u32 = 5;
    /// Seconds between probes of a destination whose circuit is open.
    pub const PROBE_INTERVAL_SECS: u64 = 5;
    /// Oldest firing still sent, seconds (one day).
    pub const MAX_AGE_SECS: u64 = 86_400;
    /// Dead-letter directory.
    pub const DEAD_LETTER_DIR: &str = "data/dead-letter";
    /// `User-Agent` header.
    pub const USER_AGENT: &str = concat!("ccstream/", env!("CARGO_PKG_VERSION"));
}

// Upper bounds that keep a typo from becoming a resource problem.
const MAX_TIMEOUT_SECS: u64 = 300;
const MAX_ATTEMPTS_LIMIT: u32 = 20;
const MAX_BACKOFF_MS: u64 = 3_600_000;
const MAX_QUEUE_CAPACITY: usize = 10_000_000;
const MAX_CONCURRENCY: usize = 4_096;
const MIN_OUTBOX_BYTES: u64 = 1 << 20;

/// The `[webhook]` section: how rule WEBHOOK actions are sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Timeout of one attempt in seconds, from connecting to the end of the response (1-300).
    pub timeout_secs: u64,
    /// Attempts per firing, the first included (1 = never retry; at most 20). Retried: connection
    /// errors, timeouts, 429 and 5xx.
    pub max_attempts: u32,
    /// Backoff ceiling before the second attempt in ms; it doubles per attempt and the wait is
    /// drawn from its upper half (`ccstream_common::Backoff`).
    pub backoff_initial_ms: u64,
    /// Cap on one backoff wait in ms; a `Retry-After` from a 429 or 5xx is honoured up to it.
    pub backoff_max_ms: u64,
    /// Firings waiting to be sent whose body the dispatcher keeps in memory; past it they wait
    /// in the outbox only, read back when their turn comes (memory stays bounded, nothing is
    /// dropped).
    pub queue_capacity: usize,
    /// Firings in flight at once: a request, or the backoff wait before its retry (1-4096).
    pub concurrency: usize,
    /// Firings in flight at once to one destination (`scheme://host:port`), so that a slow
    /// receiver holds at most this share of `concurrency` (1-4096).
    pub concurrency_per_destination: usize,
    /// Failed attempts in a row (connection errors, timeouts, 429, 5xx) that open a
    /// destination's circuit: its firings then wait, and one probe goes every
    /// `probe_interval_secs` until it answers (1-1000).
    pub breaker_failures: u32,
    /// Seconds between probes of a destination whose circuit is open (1-3600).
    pub probe_interval_secs: u64,
    /// A firing not delivered this many seconds after it fired is dead-lettered as too old
    /// (60 s to 30 days).
    pub max_age_secs: u64,
    /// Allow every destination address, loopback and private ones included (the SSRF guard
    /// off). Only for deployments where tenants are trusted.
    pub allow_private: bool,
    /// Destination ranges allowed although the SSRF guard would refuse them, as CIDRs
    /// (`"10.1.0.0/16"`, `"127.0.0.1/32"`, `"fd00::/8"`); a bare address means that address.
    pub allow_cidrs: Vec<String>,
    /// Directory of the dead-letter files, `webhooks-YYYY-MM-DD.jsonl` (UTC), one JSON object per
    /// firing that could not be delivered.
    pub dead_letter_dir: PathBuf,
    /// `User-Agent` header of every request.
    pub user_agent: String,
    /// Directory of the durable outbox: every firing is written there before its message is
    /// acked, and stays until delivered or dead-lettered (its own volume in production).
    pub outbox_dir: PathBuf,
    /// Largest outbox in bytes (at least 1 MiB). When it is full, ingest stops acking (the broker
    /// keeps the messages) and `/readyz` says why, until deliveries free space.
    pub outbox_max_bytes: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            timeout_secs: defaults::TIMEOUT_SECS,
            max_attempts: defaults::MAX_ATTEMPTS,
            backoff_initial_ms: defaults::BACKOFF_INITIAL_MS,
            backoff_max_ms: defaults::BACKOFF_MAX_MS,
            queue_capacity: defaults::QUEUE_CAPACITY,
            concurrency: defaults::CONCURRENCY,
            concurrency_per_destination: defaults::CONCURRENCY_PER_DESTINATION,
            breaker_failures: defaults::BREAKER_FAILURES,
            probe_interval_secs: defaults::PROBE_INTERVAL_SECS,
            max_age_secs: defaults::MAX_AGE_SECS,
            allow_private: false,
            allow_cidrs: Vec::new(),
            dead_letter_dir: PathBuf::from(defaults::DEAD_LETTER_DIR),
            user_agent: defaults::USER_AGENT.to_owned(),
            outbox_dir: PathBuf::from(defaults::OUTBOX_DIR),
            outbox_max_bytes: defaults::OUTBOX_MAX_BYTES,
        }
    }
}

impl WebhookConfig {
    /// Checks every field; the error names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        ConfigError::check_range(
            "webhook.timeout_secs",
            self.timeout_secs,
            1,
            MAX_TIMEOUT_SECS,
        )?;
        ConfigError::check_range(
            "webhook.max_attempts",
            u64::from(self.max_attempts),
            1,
            u64::from(MAX_ATTEMPTS_LIMIT),
        )?;
        ConfigError::check_range(
            "webhook.backoff_initial_ms",
            self.backoff_initial_ms,
            1,
            MAX_BACKOFF_MS,
        )?;
        ConfigError::check_range(
            "webhook.backoff_max_ms",
            self.backoff_max_ms,
            1,
            MAX_BACKOFF_MS,
        )?;
        if self.backoff_max_ms < self.backoff_initial_ms {
            return Err(ConfigError::new(
                "webhook.backoff_max_ms",
                format!(
                    "must be at least backoff_initial_ms ({}), got {}",
                    self.backoff_initial_ms, self.backoff_max_ms
                ),
            ));
        }
        ConfigError::check_range(
            "webhook.queue_capacity",
            self.queue_capacity as u64,
            1,
            MAX_QUEUE_CAPACITY as u64,
        )?;
        ConfigError::check_range(
            "webhook.concurrency",
            self.concurrency as u64,
            1,
            MAX_CONCURRENCY as u64,
        )?;
        ConfigError::check_range(
            "webhook.concurrency_per_destination",
            self.concurrency_per_destination as u64,
            1,
            MAX_CONCURRENCY as u64,
        )?;
        ConfigError::check_range(
            "webhook.breaker_failures",
            u64::from(self.breaker_failures),
            1,
            1000,
        )?;
        ConfigError::check_range(
            "webhook.probe_interval_secs",
            self.probe_interval_secs,
            1,
            3600,
        )?;
        ConfigError::check_range("webhook.max_age_secs", self.max_age_secs, 60, 30 * 86_400)?;
        self.allow_nets()?;
        if self.dead_letter_dir.as_os_str().is_empty() {
            return Err(ConfigError::new(
                "webhook.dead_letter_dir",
                "must not be empty",
            ));
        }
        if self.outbox_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("webhook.outbox_dir", "must not be empty"));
        }
        ConfigError::check_range(
            "webhook.outbox_max_bytes",
            self.outbox_max_bytes,
            MIN_OUTBOX_BYTES,
            u64::MAX,
        )?;
        if reqwest::header::HeaderValue::from_str(&self.user_agent).is_err() {
            return Err(ConfigError::new(
                "webhook.user_agent",
                "must be visible ASCII text (it is sent as a header)",
            ));
        }
        Ok(())
    }

    /// The SSRF policy this section describes.
    pub fn ssrf_policy(&self) -> Result<SsrfPolicy, ConfigError> {
        Ok(SsrfPolicy::new(self.allow_private, self.allow_nets()?))
    }

    /// Timeout of one attempt.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    /// Time between probes of an open circuit.
    pub fn probe_interval(&self) -> Duration {
        Duration::from_secs(self.probe_interval_secs)
    }

    fn allow_nets(&self) -> Result<Vec<IpNet>, ConfigError> {
        self.allow_cidrs
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                parse_cidr(entry)
                    .map_err(|reason| ConfigError::new(format!("webhook.allow_cidrs[{i}]"), reason))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones_and_valid() {
        let c = WebhookConfig::default();
        assert_eq!(c.timeout_secs, 10);
        assert_eq!(c.max_attempts, 3);
        assert_eq!(c.backoff_initial_ms, 200);
        assert_eq!(c.backoff_max_ms, 10_000);
        assert_eq!(c.queue_capacity, 10_000);
        assert_eq!(c.concurrency, 64);
        assert_eq!(c.concurrency_per_destination, 32);
        assert_eq!((c.breaker_failures, c.probe_interval_secs), (5, 5));
        assert_eq!(c.max_age_secs, 86_400);
        assert!(!c.allow_private);
        assert!(c.allow_cidrs.is_empty());
        assert_eq!(c.dead_letter_dir, PathBuf::from("data/dead-letter"));
        assert!(c.user_agent.starts_with("ccstream/"));
        assert_eq!(c.outbox_dir, PathBuf::from("data/outbox"));
        assert_eq!(c.outbox_max_bytes, 1 << 30);
        c.validate().expect("defaults are valid");
    }

    #[test]
    fn empty_section_deserializes_to_defaults() {
        let c: WebhookConfig = serde_json::from_str("{}").expect("parses");
        assert_eq!(c, WebhookConfig::default());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err =
            serde_json::from_str::<WebhookConfig>(r#"{"timeout":5}"#).expect_err("unknown key");
        assert!(err.to_string().contains("unknown field `timeout`"), "{err}");
    }

    #[test]
    fn bad_cidr_is_named() {
        let c = WebhookConfig {
            allow_cidrs: vec!["127.0.0.1/32".into(), "10.0.0.0/33".into()],
            ..WebhookConfig::default()
        };
        let err = c.validate().expect_err("bad prefix");
        assert_eq!(err.key, "webhook.allow_cidrs[1]");
        let text = err.to_string();
        assert!(text.starts_with("webhook.allow_cidrs[1]: "), "{text}");
        assert!(text.contains("10.0.0.0/33"), "{text}");
    }

    #[test]
    fn out_of_range_values_are_named() {
        let cases: Vec<(WebhookConfig, &str)> = vec![
            (
                WebhookConfig {
                    timeout_secs: 0,
                    ..Default::default()
                },
                "timeout_secs",
            ),
            (
                WebhookConfig {
                    max_attempts: 0,
                    ..Default::default()
                },
                "max_attempts",
            ),
            (
                WebhookConfig {
                    queue_capacity: 0,
                    ..Default::default()
                },
                "queue_capacity",
            ),
            (
                WebhookConfig {
                    concurrency: 0,
                    ..Default::default()
                },
                "concurrency",
            ),
            (
                WebhookConfig {
                    backoff_initial_ms: 500,
                    backoff_max_ms: 100,
                    ..Default::default()
                },
                "backoff_max_ms",
            ),
            (
                WebhookConfig {
                    user_agent: "bad\nagent".into(),
                    ..Default::default()
                },
                "user_agent",
            ),
            (
                WebhookConfig {
                    dead_letter_dir: PathBuf::new(),
                    ..Default::default()
                },
                "dead_letter_dir",
            ),
            (
                WebhookConfig {
                    concurrency_per_destination: 0,
                    ..Default::default()
                },
                "concurrency_per_destination",
            ),
            (
                WebhookConfig {
                    breaker_failures: 0,
                    ..Default::default()
                },
                "breaker_failures",
            ),
            (
                WebhookConfig {
                    probe_interval_secs: 0,
                    ..Default::default()
                },
                "probe_interval_secs",
            ),
            (
                WebhookConfig {
                    max_age_secs: 59,
                    ..Default::default()
                },
                "max_age_secs",
            ),
            (
                WebhookConfig {
                    outbox_dir: PathBuf::new(),
                    ..Default::default()
                },
                "outbox_dir",
            ),
            (
                WebhookConfig {
                    outbox_max_bytes: 1000,
                    ..Default::default()
                },
                "outbox_max_bytes",
            ),
        ];
        for (config, key) in cases {
            assert_eq!(
                config.validate().expect_err(key).key,
                format!("webhook.{key}")
            );
        }
    }
}
