//! The `[search]` configuration section: defaults in one place, `validate()` names the bad key.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use ccstream_common::ConfigError;

/// Default values of [`SearchConfig`], in one place.
pub mod defaults {
    /// Prefix of the daily indices (`observations-2026.11.26`).
    pub const INDEX_PREFIX: &str = "observations-";
    /// Alias on every daily index; FIND searches it.
    pub const ALIAS: &str = "observations";
    /// Largest bulk request body, bytes (5 MiB).
    pub const BULK_MAX_BYTES: usize = 5 * 1024 * 1024;
    /// Most records in one bulk request.
    pub const BULK_MAX_ACTIONS: usize = 5_000;
    /// A bulk request goes out at the latest this long after its first record, ms.
    pub const FLUSH_INTERVAL_MS: u64 = 1_000;
    /// Records waiting to be indexed.
    pub const QUEUE_CAPACITY: usize = 100_000;
    /// Retries of one bulk request (whole or of its failed items) before its records are given up.
    pub const MAX_RETRIES: u32 = 5;
    /// Timeout of one HTTP request to OpenSearch, seconds.
    pub const TIMEOUT_SECS: u64 = 30;
    /// First backoff ceiling, ms.
    pub const BACKOFF_INITIAL_MS: u64 = 200;
    /// Largest backoff wait, ms.
    pub const BACKOFF_MAX_MS: u64 = 30_000;
}

// Upper bounds that keep a typo from becoming a resource problem. OpenSearch refuses request
// bodies above `http.max_content_length` (100 MiB by default).
const MAX_BULK_BYTES: usize = 100 * 1024 * 1024;
const MAX_BULK_ACTIONS: usize = 100_000;
const MAX_FLUSH_INTERVAL_MS: u64 = 3_600_000;
const MAX_QUEUE_CAPACITY: usize = 10_000_000;
const MAX_RETRIES_LIMIT: u32 = 100;
const MAX_TIMEOUT_SECS: u64 = 600;
const MAX_BACKOFF_MS: u64 = 3_600_000;

/// The `[search]` section: indexing observations into OpenSearch, and where FIND searches.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    /// Base URL of OpenSearch (`https://search.example.com:9200`, a path prefix is kept).
    /// Indexing and FIND are on when it is set.
    pub url: Option<String>,
    /// User name for HTTP basic authentication; needs `password`.
    pub username: Option<String>,
    /// Password for HTTP basic authentication; needs `username`. Never logged.
    pub password: Option<String>,
    /// Prefix of the daily indices: a record goes to `<index_prefix>YYYY.MM.DD` (UTC, by the
    /// record's timestamp). The index template covers `<index_prefix>*`.
    pub index_prefix: String,
    /// Alias put on every daily index by the index template; FIND searches it. Also the name of
    /// the index template.
    pub alias: String,
    /// Largest bulk request body in bytes; a single larger record goes alone.
    pub bulk_max_bytes: usize,
    /// Most records in one bulk request.
    pub bulk_max_actions: usize,
    /// A bulk request goes out at the latest this many ms after its first record arrived.
    pub flush_interval_ms: u64,
    /// Records waiting to be indexed: how far the spool follower reads ahead of OpenSearch
    /// (it waits when the queue is full; the spool keeps the rest). A `try_send` producer's
    /// records are dropped and counted when it is full (`ccstream_search_dropped_total`).
    pub queue_capacity: usize,
    /// Retries of one bulk request before its records are given up: a whole request after 429,
    /// 5xx or a connection error, or only its items that OpenSearch rejected with 429 or 5xx.
    /// Records read from the spool are retried without limit (the spool keeps them until they
    /// are indexed); this bounds `ccstream reindex` and `try_send` producers.
    pub max_retries: u32,
    /// Timeout of one HTTP request to OpenSearch in seconds, connecting included.
    pub timeout_secs: u64,
    /// Backoff ceiling before the first retry in ms; it doubles per retry and the wait is drawn
    /// from its upper half (`ccstream_common::Backoff`).
    pub backoff_initial_ms: u64,
    /// Cap on one backoff wait in ms.
    pub backoff_max_ms: u64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            url: None,
            username: None,
            password: None,
            index_prefix: defaults::INDEX_PREFIX.to_owned(),
            alias: defaults::ALIAS.to_owned(),
            bulk_max_bytes: defaults::BULK_MAX_BYTES,
            bulk_max_actions: defaults::BULK_MAX_ACTIONS,
            flush_interval_ms: defaults::FLUSH_INTERVAL_MS,
            queue_capacity: defaults::QUEUE_CAPACITY,
            max_retries: defaults::MAX_RETRIES,
            timeout_secs: defaults::TIMEOUT_SECS,
            backoff_initial_ms: defaults::BACKOFF_INITIAL_MS,
            backoff_max_ms: defaults::BACKOFF_MAX_MS,
        }
    }
}

// By hand, so that the password never reaches a log line.
impl fmt::Debug for SearchConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SearchConfig")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("index_prefix", &self.index_prefix)
            .field("alias", &self.alias)
            .field("bulk_max_bytes", &self.bulk_max_bytes)
            .field("bulk_max_actions", &self.bulk_max_actions)
            .field("flush_interval_ms", &self.flush_interval_ms)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_retries", &self.max_retries)
            .field("timeout_secs", &self.timeout_secs)
            .field("backoff_initial_ms", &self.backoff_initial_ms)
            .field("backoff_max_ms", &self.backoff_max_ms)
            .finish()
    }
}

impl SearchConfig {
    /// Whether indexing and FIND are on (`url` is set).
    pub fn enabled(&self) -> bool {
        self.url.is_some()
    }

    /// Checks every field; the error names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.url {
            base_url(url)?;
        }
        match (&self.username, &self.password) {
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "search.password",
                    "is required with username",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "search.username",
                    "is required with password",
                ))
            }
            (Some(user), Some(_)) if user.is_empty() || user.contains(':') => {
                return Err(ConfigError::new(
                    "search.username",
                    "must be non-empty and contain no ':' (HTTP basic authentication)",
                ))
            }
            _ => {}
        }
        index_name_part("search.index_prefix", &self.index_prefix)?;
        index_name_part("search.alias", &self.alias)?;
        if self.alias.starts_with(&self.index_prefix) {
            // The template's pattern `<index_prefix>*` would then also cover the alias' name.
            return Err(ConfigError::new(
                "search.alias",
                format!(
                    "must not start with index_prefix ({:?}), got {:?}",
                    self.index_prefix, self.alias
                ),
            ));
        }
        ConfigError::check_range(
            "search.bulk_max_bytes",
            self.bulk_max_bytes as u64,
            1,
            MAX_BULK_BYTES as u64,
        )?;
        ConfigError::check_range(
            "search.bulk_max_actions",
            self.bulk_max_actions as u64,
            1,
            MAX_BULK_ACTIONS as u64,
        )?;
        ConfigError::check_range(
            "search.flush_interval_ms",
            self.flush_interval_ms,
            1,
            MAX_FLUSH_INTERVAL_MS,
        )?;
        ConfigError::check_range(
            "search.queue_capacity",
            self.queue_capacity as u64,
            1,
            MAX_QUEUE_CAPACITY as u64,
        )?;
        ConfigError::check_range(
            "search.max_retries",
            u64::from(self.max_retries),
            0,
            u64::from(MAX_RETRIES_LIMIT),
        )?;
        ConfigError::check_range(
            "search.timeout_secs",
            self.timeout_secs,
            1,
            MAX_TIMEOUT_SECS,
        )?;
        ConfigError::check_range(
            "search.backoff_initial_ms",
            self.backoff_initial_ms,
            1,
            MAX_BACKOFF_MS,
        )?;
        ConfigError::check_range(
            "search.backoff_max_ms",
            self.backoff_max_ms,
            1,
            MAX_BACKOFF_MS,
        )?;
        if self.backoff_max_ms < self.backoff_initial_ms {
            return Err(ConfigError::new(
                "search.backoff_max_ms",
                format!(
                    "must be at least backoff_initial_ms ({}), got {}",
                    self.backoff_initial_ms, self.backoff_max_ms
                ),
            ));
        }
        Ok(())
    }

    /// `url` parsed, with a trailing `/` so that endpoint paths join below it; `None` when
    /// indexing is off.
    pub fn base_url(&self) -> Result<Option<url::Url>, ConfigError> {
        self.url.as_deref().map(base_url).transpose()
    }

    /// Timeout of one request.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    /// Flush interval.
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }
}

fn base_url(raw: &str) -> Result<url::Url, ConfigError> {
    let mut url = url::Url::parse(raw)
        .map_err(|e| ConfigError::new("search.url", format!("not a URL ({e}): {raw:?}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ConfigError::new(
            "search.url",
            format!("must be an http:// or https:// URL with a host, got {raw:?}"),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::new(
            "search.url",
            "must have no query and no fragment",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::new(
            "search.url",
            "must not carry credentials; use username and password",
        ));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// OpenSearch index and alias names: lowercase, none of `\ / * ? " < > | , #` or spaces, not
/// starting with `_`, `-` or `+`, at most 255 bytes (the date suffix takes 10).
fn index_name_part(key: &str, value: &str) -> Result<(), ConfigError> {
    let bad = value.is_empty()
        || value.len() > 200
        || value.starts_with(['_', '-', '+'])
        || value == "."
        || value == ".."
        || value.chars().any(|c| {
            c.is_uppercase()
                || c.is_whitespace()
                || c.is_control()
                || matches!(
                    c,
                    '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ',' | '#' | ':'
                )
        });
    if bad {
        return Err(ConfigError::new(
            key,
            format!(
                "must be a valid OpenSearch index name part (lowercase, at most 200 bytes, none of \
                 \\ / * ? \" < > | , # : or spaces, not starting with _ - +), got {value:?}"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones_and_valid() {
        let c = SearchConfig::default();
        assert_eq!(c.url, None);
        assert!(!c.enabled());
        assert_eq!(c.index_prefix, "observations-");
        assert_eq!(c.alias, "observations");
        assert_eq!(c.bulk_max_bytes, 5 * 1024 * 1024);
        assert_eq!(c.bulk_max_actions, 5_000);
        assert_eq!(c.flush_interval_ms, 1_000);
        assert_eq!(c.queue_capacity, 100_000);
        assert_eq!(c.max_retries, 5);
        assert_eq!(c.timeout_secs, 30);
        assert_eq!(c.backoff_initial_ms, 200);
        assert_eq!(c.backoff_max_ms, 30_000);
        c.validate().expect("defaults are valid");
    }

    #[test]
    fn empty_section_deserializes_to_defaults_and_unknown_keys_are_refused() {
        let c: SearchConfig = serde_json::from_str("{}").expect("parses");
        assert_eq!(c, SearchConfig::default());
        let err = serde_json::from_str::<SearchConfig>(r#"{"index":"x"}"#).expect_err("unknown");
        assert!(err.to_string().contains("unknown field `index`"), "{err}");
    }

    #[test]
    fn base_url_gets_a_trailing_slash() {
        let c = SearchConfig {
            url: Some("https://search.example.com:9200/os".into()),
            ..SearchConfig::default()
        };
        c.validate().expect("valid");
        let url = c.base_url().expect("valid").expect("set");
        assert_eq!(url.as_str(), "https://search.example.com:9200/os/");
        assert_eq!(
            url.join("_bulk").expect("joins").as_str(),
            "https://search.example.com:9200/os/_bulk"
        );
    }

    #[test]
    fn password_is_not_in_debug_output() {
        let c = SearchConfig {
            username: Some("ccstream".into()),
            password: Some("s3cret".into()),
            ..SearchConfig::default()
        };
        let text = format!("{c:?}");
        assert!(
            !text.contains("s3cret") && text.contains("<redacted>"),
            "{text}"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let cases: Vec<(SearchConfig, &str)> = vec![
            (
                SearchConfig {
                    url: Some("ftp://x".into()),
                    ..Default::default()
                },
                "url",
            ),
            (
                SearchConfig {
                    url: Some("http://user:pw@x:9200".into()),
                    ..Default::default()
                },
                "url",
            ),
            (
                SearchConfig {
                    username: Some("u".into()),
                    ..Default::default()
                },
                "password",
            ),
            (
                SearchConfig {
                    password: Some("p".into()),
                    ..Default::default()
                },
                "username",
            ),
            (
                SearchConfig {
                    index_prefix: "Observations-".into(),
                    ..Default::default()
                },
                "index_prefix",
            ),
            (
                SearchConfig {
                    alias: "_obs".into(),
                    ..Default::default()
                },
                "alias",
            ),
            (
                SearchConfig {
                    alias: "observations-all".into(),
                    ..Default::default()
                },
                "alias",
            ),
            (
                SearchConfig {
                    bulk_max_bytes: 0,
                    ..Default::default()
                },
                "bulk_max_bytes",
            ),
            (
                SearchConfig {
                    bulk_max_actions: 0,
                    ..Default::default()
                },
                "bulk_max_actions",
            ),
            (
                SearchConfig {
                    flush_interval_ms: 0,
                    ..Default::default()
                },
                "flush_interval_ms",
            ),
            (
                SearchConfig {
                    queue_capacity: 0,
                    ..Default::default()
                },
                "queue_capacity",
            ),
            (
                SearchConfig {
                    max_retries: 1_000,
                    ..Default::default()
                },
                "max_retries",
            ),
            (
                SearchConfig {
                    timeout_secs: 0,
                    ..Default::default()
                },
                "timeout_secs",
            ),
            (
                SearchConfig {
                    backoff_initial_ms: 500,
                    backoff_max_ms: 100,
                    ..Default::default()
                },
                "backoff_max_ms",
            ),
        ];
        for (config, key) in cases {
            let err = config.validate().expect_err(key);
            assert_eq!(err.key, format!("search.{key}"), "{err}");
            assert!(err.to_string().starts_with(&format!("search.{key}: ")));
        }
    }
}
