//! The one error type of this crate.
//!
//! Bad messages from the network are not errors: they are counted and acknowledged by the
//! source (see [`crate::source`]). What is here stops the source or the broker from starting.

use std::net::SocketAddr;
use std::path::PathBuf;

use ccstream_common::ConfigError;

/// Why the MQTT source or the embedded broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is invalid; the error names the full key (`mqtt.url`).
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// A TLS file named in the configuration cannot be read or holds no usable PEM item.
    #[error("{key}: {path}: {message}")]
    TlsFile {
        key: &'static str,
        path: PathBuf,
        message: String,
    },

    /// rustls refused the TLS setup (for example a key that does not match the certificate).
    #[error("mqtt TLS setup: {0}")]
    Tls(#[from] rustls::Error),

    /// The embedded broker cannot listen on its address (most often: the port is taken).
    #[error("embedded MQTT broker cannot listen on {addr}: {source} (mqtt.embedded_listen; set mqtt.embedded = false to use another broker)")]
    BrokerBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    /// The embedded broker was started but did not come up.
    #[error("embedded MQTT broker on {addr}: {message}")]
    BrokerStart { addr: SocketAddr, message: String },

    /// The source's task did not stop within the grace period and was aborted.
    #[error("MQTT source did not stop within {0:?}; its task was aborted")]
    ShutdownTimeout(std::time::Duration),
}

impl Error {
    pub(crate) fn config(key: &'static str, message: impl Into<String>) -> Self {
        Error::Config(ConfigError::new(key, message))
    }
}
