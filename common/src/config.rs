//! The error of a configuration check, in one format for every section: `section.key: reason`.

/// A configuration value ccstream refuses, named by its full key (`webhook.timeout_secs`,
/// `webhook.allow_cidrs[1]`), so the operator knows what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    /// The full key, with an index for list entries.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// `value` of `key` must lie in `min..=max`.
    pub fn check_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
        if (min..=max).contains(&value) {
            Ok(())
        } else {
            Err(ConfigError::new(
                key,
                format!("must be between {min} and {max}, got {value}"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ConfigError;

    #[test]
    fn the_message_names_the_key() {
        let e = ConfigError::check_range("webhook.timeout_secs", 0, 1, 300)
            .expect_err("0 is out of range");
        assert_eq!(e.key, "webhook.timeout_secs");
        assert_eq!(
            e.to_string(),
            "webhook.timeout_secs: must be between 1 and 300, got 0"
        );
        assert_eq!(ConfigError::check_range("k", 1, 1, 1), Ok(()));
        assert_eq!(ConfigError::check_range("k", 300, 1, 300), Ok(()));
    }
}
