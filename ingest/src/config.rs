//! The `[mqtt]` section of the ccstream configuration.
//!
//! Defaults live in [`MqttConfig::default`] (and the two topic lists just below it) and nowhere
//! else. [`MqttConfig::validate`] names the bad key. Turning the section into rumqttc options is
//! here too, so that `validate` and the source read the URL the same way.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use rumqttc::MqttOptions;
use serde::{Deserialize, Serialize};
use url::Url;

use ccstream_common::redact;

use crate::error::Error;
use crate::topic::{check_filter, effective_filter};

/// Shadow update filter for an external broker (AWS IoT, Mosquitto, EMQX).
pub const DEFAULT_TOPICS: &[&str] = &["$aws/things/+/shadow/update"];
/// Shadow update filter for the embedded broker: rumqttd 0.20 refuses filters that start with
/// `$` (it disconnects the subscriber) and never routes `$...` topics, so on it devices publish
/// to the spec 9.1 form `thing-update/<domainPath>/<thingName>`.
pub const EMBEDDED_DEFAULT_TOPICS: &[&str] = &["thing-update/#"];
/// Life cycle events (spec 1.3): `event/<domainPath>`.
pub const DEFAULT_EVENT_TOPICS: &[&str] = &["event/#"];

/// AWS IoT refuses longer client ids; the derived default is cut to this length.
pub const MAX_CLIENT_ID_BYTES: usize = 128;
/// The largest payload an MQTT 3.1.1 packet can carry (remaining length 268,435,455).
pub const MQTT_MAX_PACKET_BYTES: usize = 268_435_455;

/// Where ccstream reads shadow updates and life cycle events from (`[mqtt]`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Broker URL, `mqtt://host:port` or `mqtts://host:port` (TLS, port 8883 by default), read
    /// as rumqttc's `MqttOptions::parse_url` reads it. May carry `?client_id=...` (otherwise
    /// `client_id` below, or the derived default, is added) and `user:password@`. Its
    /// `clean_session` and `keep_alive_secs` query parameters are refused: the session is always
    /// persistent and `keep_alive_secs` below sets the keep-alive. With `embedded = true` it must
    /// be `mqtt://` and use the port of `embedded_listen`.
    pub url: String,
    /// MQTT client id. The broker keeps the persistent session (subscriptions and the QoS 1
    /// messages not yet acknowledged) under this id, so it must stay the same across restarts
    /// and differ between replicas. Default: `ccstream-<stack>-<hostname>`, which is stable for
    /// a plain host or a StatefulSet pod, but NOT for a Deployment pod (its name changes on
    /// every restart): set it there.
    pub client_id: Option<String>,
    /// Topic filters shadow updates arrive on, subscribed with QoS 1. Default:
    /// `["$aws/things/+/shadow/update"]`, or `["thing-update/#"]` with the embedded broker,
    /// which refuses `$` filters. Both topic forms of spec 9.1 are read on either.
    pub topics: Option<Vec<String>>,
    /// Shared subscription group of the replicas. When set, the shadow update filters are
    /// subscribed as `$share/<group>/<filter>`, so the broker hands each update to one replica
    /// of the group; `event_topics` stay unshared, as every replica needs every life cycle
    /// event. Which topic a broker can share: see the README ("Several replicas").
    pub share_group: Option<String>,
    /// Topic filters of life cycle events (spec 1.3), subscribed with QoS 1; empty for none.
    pub event_topics: Vec<String>,
    /// User name for the broker (not needed with client certificates).
    pub username: Option<String>,
    /// Password for the broker; needs `username`.
    pub password: Option<String>,
    /// PEM file of the CA certificate(s) that sign the broker's certificate (`mqtts://` only).
    /// Default: the Mozilla root set built into ccstream (which includes Amazon's roots).
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate chain, for brokers that authenticate clients by
    /// certificate (AWS IoT on port 8883). Needs `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub client_key_file: Option<PathBuf>,
    /// Seconds between keep-alive pings when the connection is idle (5..=65535).
    pub keep_alive_secs: u16,
    /// Largest payload forwarded, in bytes (the AWS IoT limit). A larger message is counted
    /// (`ccstream_ingest_rejected_total{reason="too_large"}`), acknowledged and dropped, so the
    /// broker does not deliver it again and again.
    pub max_payload_bytes: usize,
    /// First reconnect delay, in milliseconds; it doubles per failed attempt.
    pub reconnect_initial_ms: u64,
    /// Longest reconnect delay, in milliseconds.
    pub reconnect_max_ms: u64,
    /// Messages received but not yet acknowledged that ccstream holds (the capacity of the
    /// channel to the pipeline). Set it at least as large as the broker's in-flight window for
    /// this client (Mosquitto `max_inflight_messages`, default 20; EMQX 32; AWS IoT 100; the
    /// embedded broker 100), so that the window, not this queue, holds back the broker.
    pub inflight: usize,
    /// Start the embedded broker (rumqttd) on `embedded_listen` and read from it. Its queues
    /// are in memory only: see the crate documentation before relying on it in production.
    pub embedded: bool,
    /// Address the embedded broker listens on (MQTT 3.1.1, no TLS).
    pub embedded_listen: SocketAddr,
}

/// Port of the embedded broker by default: 1884, not MQTT's 1883, because 1883 is usually
/// taken on a machine that also runs a system broker (Debian's `mosquitto` package starts one
/// there, and the test setup installs it), and the default run must start on such a machine.
pub const EMBEDDED_DEFAULT_PORT: u16 = 1884;

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: format!("mqtt://127.0.0.1:{EMBEDDED_DEFAULT_PORT}"),
            client_id: None,
            topics: None,
            share_group: None,
            event_topics: DEFAULT_EVENT_TOPICS.iter().map(|s| s.to_string()).collect(),
            username: None,
            password: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            keep_alive_secs: 30,
            max_payload_bytes: 128 * 1024,
            reconnect_initial_ms: 100,
            reconnect_max_ms: 10_000,
            inflight: 1000,
            embedded: true,
            embedded_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, EMBEDDED_DEFAULT_PORT)),
        }
    }
}

/// Debug without the password (in `password` or in the URL).
impl fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttConfig")
            .field("url", &redact::url_password(&self.url))
            .field("client_id", &self.client_id)
            .field("topics", &self.topics)
            .field("share_group", &self.share_group)
            .field("event_topics", &self.event_topics)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("ca_file", &self.ca_file)
            .field("client_cert_file", &self.client_cert_file)
            .field("client_key_file", &self.client_key_file)
            .field("keep_alive_secs", &self.keep_alive_secs)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("reconnect_initial_ms", &self.reconnect_initial_ms)
            .field("reconnect_max_ms", &self.reconnect_max_ms)
            .field("inflight", &self.inflight)
            .field("embedded", &self.embedded)
            .field("embedded_listen", &self.embedded_listen)
            .finish()
    }
}

/// A group name as MQTT 5 (4.8.2) allows it, on a broker that shares subscriptions.
fn check_share_group(group: &str, embedded: bool) -> Result<(), &'static str> {
    if embedded {
        return Err("needs an external broker (the embedded one serves a single replica)");
    }
    if group.is_empty() {
        return Err("must not be empty");
    }
    if group.contains(['/', '+', '#']) {
        return Err("must not contain /, + or #");
    }
    Ok(())
}

/// The parts of the broker URL the source needs besides rumqttc's options.
pub(crate) struct BrokerEndpoint {
    pub(crate) options: MqttOptions,
    pub(crate) tls: bool,
    pub(crate) client_id: String,
}

impl MqttConfig {
    /// The shadow update filters in force (`topics`, or the default for the broker kind).
    pub fn shadow_topics(&self) -> Vec<String> {
        match &self.topics {
            Some(topics) => topics.clone(),
            None if self.embedded => EMBEDDED_DEFAULT_TOPICS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            None => DEFAULT_TOPICS.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The shadow update filters as subscribed: [`Self::shadow_topics`], each in
    /// `$share/<share_group>/...` when a group is set (a filter already written as a shared
    /// subscription is kept as it is).
    pub fn shadow_subscriptions(&self) -> Vec<String> {
        let topics = self.shadow_topics();
        match &self.share_group {
            Some(group) => topics
                .into_iter()
                .map(|t| {
                    if t.starts_with("$share/") {
                        t
                    } else {
                        format!("$share/{group}/{t}")
                    }
                })
                .collect(),
            None => topics,
        }
    }

    /// The client id in force: `client_id`, else the URL's `client_id`, else
    /// `ccstream-<stack>-<hostname>` with characters other than `[A-Za-z0-9._-]` replaced by `-`
    /// and cut to [`MAX_CLIENT_ID_BYTES`].
    pub fn effective_client_id(&self, stack: &str, hostname: &str) -> String {
        if let Some(id) = &self.client_id {
            return id.clone();
        }
        if let Some(id) = Url::parse(&self.url)
            .ok()
            .and_then(|url| query_value(&url, "client_id"))
        {
            return id;
        }
        derive_client_id(stack, hostname)
    }

    /// Checks every key; the error names the first bad one. Reads no files (the TLS files are
    /// read when the source starts).
    pub fn validate(&self) -> Result<(), Error> {
        self.endpoint("ccstream-validate")?;
        if let Some(id) = &self.client_id {
            check_client_id(id, self.embedded).map_err(|m| Error::config("mqtt.client_id", m))?;
        }
        let topics = self.shadow_topics();
        if topics.is_empty() {
            return Err(Error::config(
                "mqtt.topics",
                "must list at least one topic filter",
            ));
        }
        self.check_filters("mqtt.topics", &topics)?;
        if let Some(group) = &self.share_group {
            check_share_group(group, self.embedded)
                .map_err(|m| Error::config("mqtt.share_group", m))?;
        }
        self.check_filters("mqtt.event_topics", &self.event_topics)?;
        if self.password.is_some() && self.username.is_none() {
            return Err(Error::config(
                "mqtt.password",
                "is set but mqtt.username is not",
            ));
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            let key = if self.client_cert_file.is_some() {
                "mqtt.client_key_file"
            } else {
                "mqtt.client_cert_file"
            };
            return Err(Error::config(
                key,
                "mqtt.client_cert_file and mqtt.client_key_file go together",
            ));
        }
        if self.keep_alive_secs < 5 {
            return Err(Error::config(
                "mqtt.keep_alive_secs",
                "must be between 5 and 65535",
            ));
        }
        if self.max_payload_bytes == 0 || self.max_payload_bytes > MQTT_MAX_PACKET_BYTES {
            return Err(Error::config(
                "mqtt.max_payload_bytes",
                format!("must be between 1 and {MQTT_MAX_PACKET_BYTES}"),
            ));
        }
        if self.reconnect_initial_ms == 0 {
            return Err(Error::config(
                "mqtt.reconnect_initial_ms",
                "must be at least 1",
            ));
        }
        if self.reconnect_max_ms < self.reconnect_initial_ms {
            return Err(Error::config(
                "mqtt.reconnect_max_ms",
                "must be at least mqtt.reconnect_initial_ms",
            ));
        }
        if self.inflight == 0 || self.inflight > usize::from(u16::MAX) {
            return Err(Error::config(
                "mqtt.inflight",
                "must be between 1 and 65535",
            ));
        }
        Ok(())
    }

    fn check_filters(&self, key: &'static str, filters: &[String]) -> Result<(), Error> {
        for filter in filters {
            check_filter(filter).map_err(|m| Error::config(key, format!("{filter:?}: {m}")))?;
            if self.embedded && effective_filter(filter).starts_with('$') {
                return Err(Error::config(
                    key,
                    format!(
                        "{filter:?}: the embedded broker (rumqttd) refuses filters that start \
                         with $; devices publish to thing-update/<domainPath>/<thingName> on it \
                         (spec 9.1), or set mqtt.embedded = false and use another broker"
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn reconnect_initial(&self) -> Duration {
        Duration::from_millis(self.reconnect_initial_ms)
    }

    pub(crate) fn reconnect_max(&self) -> Duration {
        Duration::from_millis(self.reconnect_max_ms)
    }

    /// rumqttc options for this section, without TLS (added by the source from the files).
    ///
    /// rumqttc's `parse_url` insists on a `client_id` query parameter and, for `mqtts://`, builds
    /// a TLS setup from the platform's certificates that panics when they cannot be loaded; so
    /// the URL is checked here, the client id added when missing, and an `mqtts://` URL handed
    /// to `parse_url` as `mqtt://` (default port 8883) with the TLS transport set afterwards.
    pub(crate) fn endpoint(&self, default_client_id: &str) -> Result<BrokerEndpoint, Error> {
        const KEY: &str = "mqtt.url";
        let mut url = Url::parse(&self.url)
            .map_err(|e| Error::config(KEY, format!("{:?} is not a URL: {e}", self.url)))?;
        let tls = match url.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => {
                return Err(Error::config(
                    KEY,
                    format!("scheme must be mqtt:// or mqtts://, not {other}://"),
                ))
            }
        };
        if url.host_str().is_none_or(str::is_empty) {
            return Err(Error::config(KEY, "has no host"));
        }
        if !matches!(url.path(), "" | "/") {
            return Err(Error::config(KEY, "must not have a path"));
        }
        for refused in ["clean_session", "keep_alive_secs"] {
            if query_value(&url, refused).is_some() {
                return Err(Error::config(
                    KEY,
                    match refused {
                        "clean_session" => "clean_session is not a choice: ccstream always uses a persistent session",
                        _ => "keep_alive_secs belongs in mqtt.keep_alive_secs",
                    },
                ));
            }
        }
        let url_client_id = query_value(&url, "client_id");
        let client_id = match (&self.client_id, &url_client_id) {
            (Some(cfg), Some(in_url)) if cfg != in_url => {
                return Err(Error::config(
                    "mqtt.client_id",
                    format!("{cfg:?} differs from client_id={in_url:?} in mqtt.url"),
                ))
            }
            (Some(id), _) | (None, Some(id)) => id.clone(),
            (None, None) => default_client_id.to_owned(),
        };
        if url_client_id.is_some() {
            check_client_id(&client_id, self.embedded).map_err(|m| Error::config(KEY, m))?;
        } else {
            url.query_pairs_mut().append_pair("client_id", &client_id);
        }
        if !url.username().is_empty() && self.username.is_some() {
            return Err(Error::config(
                "mqtt.username",
                "is set and mqtt.url carries a user too; keep one",
            ));
        }
        if tls {
            let port = url.port().unwrap_or(8883);
            url.set_scheme("mqtt")
                .and_then(|()| url.set_port(Some(port)))
                .map_err(|()| Error::config(KEY, "cannot be read as an MQTT URL"))?;
        } else if let Some(key) = [
            ("mqtt.ca_file", &self.ca_file),
            ("mqtt.client_cert_file", &self.client_cert_file),
            ("mqtt.client_key_file", &self.client_key_file),
        ]
        .iter()
        .find_map(|(key, value)| value.is_some().then_some(*key))
        {
            return Err(Error::config(key, "is only used with an mqtts:// mqtt.url"));
        }
        if self.embedded {
            if tls {
                return Err(Error::config(
                    KEY,
                    "the embedded broker has no TLS listener: use mqtt:// with mqtt.embedded = true",
                ));
            }
            let port = url.port().unwrap_or(1883);
            if port != self.embedded_listen.port() {
                return Err(Error::config(
                    KEY,
                    format!(
                        "with mqtt.embedded = true it must point at mqtt.embedded_listen ({}), \
                         but its port is {port}",
                        self.embedded_listen
                    ),
                ));
            }
        }
        let mut options = MqttOptions::parse_url(url.as_str())
            .map_err(|e| Error::config(KEY, format!("rumqttc cannot use it: {e}")))?;
        if let Some(username) = &self.username {
            options.set_credentials(username.clone(), self.password.clone().unwrap_or_default());
        }
        Ok(BrokerEndpoint {
            options,
            tls,
            client_id,
        })
    }
}

fn query_value(url: &Url, key: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

fn check_client_id(id: &str, embedded: bool) -> Result<(), String> {
    if id.is_empty() {
        return Err("a client id must not be empty (the persistent session needs one)".into());
    }
    if id.len() > MAX_CLIENT_ID_BYTES {
        return Err(format!(
            "a client id is at most {MAX_CLIENT_ID_BYTES} bytes long"
        ));
    }
    if embedded && id.contains(['+', '$', '#', '/']) {
        return Err("the embedded broker refuses client ids with + $ # or /".into());
    }
    Ok(())
}

/// `ccstream-<stack>-<hostname>`, made safe for every broker and cut to the AWS IoT limit.
pub fn derive_client_id(stack: &str, hostname: &str) -> String {
    let raw = format!("ccstream-{stack}-{hostname}");
    let mut id: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    id.truncate(MAX_CLIENT_ID_BYTES);
    id
}

/// This machine's host name, read from the kernel (no environment variables), for the derived
/// client id; `None` when it cannot be read.
pub fn local_hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
}

/// The address a client on this machine uses to reach a listener on `listen`.
pub fn connect_addr(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, listen.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, listen.port()))
        }
        _ => listen,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn external() -> MqttConfig {
        MqttConfig {
            embedded: false,
            ..MqttConfig::default()
        }
    }

    fn key_of(result: Result<(), Error>) -> String {
        match result {
            Err(Error::Config(e)) => e.key,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        MqttConfig::default().validate().unwrap();
        external().validate().unwrap();
        let d = MqttConfig::default();
        assert_eq!(d.url, "mqtt://127.0.0.1:1884");
        assert_eq!(d.keep_alive_secs, 30);
        assert_eq!(d.max_payload_bytes, 131_072);
        assert_eq!((d.reconnect_initial_ms, d.reconnect_max_ms), (100, 10_000));
        assert_eq!(d.event_topics, vec!["event/#"]);
        assert!(d.embedded);
        assert_eq!(d.embedded_listen.to_string(), "127.0.0.1:1884");
    }

    #[test]
    fn default_topics_depend_on_the_broker() {
        assert_eq!(
            external().shadow_topics(),
            vec!["$aws/things/+/shadow/update"]
        );
        assert_eq!(
            MqttConfig::default().shadow_topics(),
            vec!["thing-update/#"]
        );
        let explicit = MqttConfig {
            topics: Some(vec!["a/#".into()]),
            ..MqttConfig::default()
        };
        assert_eq!(explicit.shadow_topics(), vec!["a/#"]);
    }

    #[test]
    fn a_share_group_shares_the_shadow_filters_only() {
        let cfg = MqttConfig {
            topics: Some(vec!["thing-update/#".into(), "$share/own/x/+".into()]),
            share_group: Some("ccstream".into()),
            ..external()
        };
        cfg.validate().unwrap();
        assert_eq!(
            cfg.shadow_subscriptions(),
            vec!["$share/ccstream/thing-update/#", "$share/own/x/+"]
        );
        assert_eq!(cfg.event_topics, vec!["event/#"]);
        assert_eq!(
            external().shadow_subscriptions(),
            external().shadow_topics()
        );

        for bad in ["", "a/b", "g+", "#"] {
            let cfg = MqttConfig {
                share_group: Some(bad.into()),
                ..external()
            };
            assert_eq!(key_of(cfg.validate()), "mqtt.share_group", "{bad:?}");
        }
        let embedded = MqttConfig {
            share_group: Some("g".into()),
            ..MqttConfig::default()
        };
        assert_eq!(key_of(embedded.validate()), "mqtt.share_group");
    }

    #[test]
    fn embedded_broker_refuses_dollar_filters() {
        let cfg = MqttConfig {
            topics: Some(vec!["$aws/things/+/shadow/update".into()]),
            ..MqttConfig::default()
        };
        assert_eq!(key_of(cfg.validate()), "mqtt.topics");
        let cfg = MqttConfig {
            topics: Some(vec!["$aws/things/+/shadow/update".into()]),
            ..external()
        };
        cfg.validate().unwrap();
    }

    #[test]
    fn client_id_is_added_to_the_url_and_derived_stably() {
        let cfg = external();
        let ep = cfg.endpoint("ccstream-dev-host1").unwrap();
        assert_eq!(ep.client_id, "ccstream-dev-host1");
        assert_eq!(ep.options.client_id(), "ccstream-dev-host1");
        assert_eq!(ep.options.broker_address(), ("127.0.0.1".to_owned(), 1884));
        assert!(!ep.tls);
        assert_eq!(derive_client_id("dev", "host 1/ä"), "ccstream-dev-host-1--");
        assert_eq!(
            derive_client_id("dev", &"h".repeat(300)).len(),
            MAX_CLIENT_ID_BYTES
        );
        assert_eq!(cfg.effective_client_id("dev", "h"), "ccstream-dev-h");
    }

    #[test]
    fn client_id_from_url_or_key() {
        let cfg = MqttConfig {
            url: "mqtt://broker:1884?client_id=from-url".into(),
            ..external()
        };
        assert_eq!(cfg.endpoint("x").unwrap().client_id, "from-url");
        assert_eq!(cfg.effective_client_id("dev", "h"), "from-url");
        let both = MqttConfig {
            client_id: Some("other".into()),
            ..cfg.clone()
        };
        assert_eq!(key_of(both.validate()), "mqtt.client_id");
        let same = MqttConfig {
            client_id: Some("from-url".into()),
            ..cfg
        };
        same.validate().unwrap();
    }

    #[test]
    fn mqtts_defaults_to_port_8883() {
        let cfg = MqttConfig {
            url: "mqtts://example.iot.eu-west-1.amazonaws.com".into(),
            client_id: Some("dev-1".into()),
            ..external()
        };
        let ep = cfg.endpoint("x").unwrap();
        assert!(ep.tls);
        assert_eq!(
            ep.options.broker_address(),
            ("example.iot.eu-west-1.amazonaws.com".to_owned(), 8883)
        );
    }

    #[test]
    fn credentials_from_url_or_keys() {
        let cfg = MqttConfig {
            url: "mqtt://user:secret@broker:1883".into(),
            ..external()
        };
        let ep = cfg.endpoint("x").unwrap();
        let login = ep.options.credentials().unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("user", "secret")
        );
        assert!(!format!("{cfg:?}").contains("secret"));
        let both = MqttConfig {
            username: Some("u".into()),
            ..cfg
        };
        assert_eq!(key_of(both.validate()), "mqtt.username");
        let keys = MqttConfig {
            username: Some("u".into()),
            password: Some("p".into()),
            ..external()
        };
        let login = keys.endpoint("x").unwrap().options.credentials().unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("u", "p")
        );
        assert!(!format!("{keys:?}").contains("\"p\""));
        let no_user = MqttConfig {
            password: Some("p".into()),
            ..external()
        };
        assert_eq!(key_of(no_user.validate()), "mqtt.password");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: Vec<(MqttConfig, &str)> = vec![
            (
                MqttConfig {
                    url: "not a url".into(),
                    ..external()
                },
                "mqtt.url",
            ),
            (
                MqttConfig {
                    url: "http://broker".into(),
                    ..external()
                },
                "mqtt.url",
            ),
            (
                MqttConfig {
                    url: "mqtt://broker/path".into(),
                    ..external()
                },
                "mqtt.url",
            ),
            (
                MqttConfig {
                    url: "mqtt://b?clean_session=true".into(),
                    ..external()
                },
                "mqtt.url",
            ),
            (
                MqttConfig {
                    url: "mqtt://b?keep_alive_secs=5".into(),
                    ..external()
                },
                "mqtt.url",
            ),
            (
                MqttConfig {
                    url: "mqtt://b?bogus=1".into(),
                    ..external()
                },
                "mqtt.url",
            ),
            (
                MqttConfig {
                    client_id: Some(String::new()),
                    ..external()
                },
                "mqtt.client_id",
            ),
            (
                MqttConfig {
                    client_id: Some("a/b".into()),
                    ..MqttConfig::default()
                },
                "mqtt.client_id",
            ),
            (
                MqttConfig {
                    topics: Some(vec![]),
                    ..external()
                },
                "mqtt.topics",
            ),
            (
                MqttConfig {
                    topics: Some(vec!["a/#/b".into()]),
                    ..external()
                },
                "mqtt.topics",
            ),
            (
                MqttConfig {
                    event_topics: vec!["ev+".into()],
                    ..external()
                },
                "mqtt.event_topics",
            ),
            (
                MqttConfig {
                    ca_file: Some("ca.pem".into()),
                    ..external()
                },
                "mqtt.ca_file",
            ),
            (
                MqttConfig {
                    url: "mqtts://b".into(),
                    client_cert_file: Some("c.pem".into()),
                    ..external()
                },
                "mqtt.client_key_file",
            ),
            (
                MqttConfig {
                    keep_alive_secs: 0,
                    ..external()
                },
                "mqtt.keep_alive_secs",
            ),
            (
                MqttConfig {
                    max_payload_bytes: 0,
                    ..external()
                },
                "mqtt.max_payload_bytes",
            ),
            (
                MqttConfig {
                    reconnect_initial_ms: 0,
                    ..external()
                },
                "mqtt.reconnect_initial_ms",
            ),
            (
                MqttConfig {
                    reconnect_max_ms: 50,
                    ..external()
                },
                "mqtt.reconnect_max_ms",
            ),
            (
                MqttConfig {
                    inflight: 0,
                    ..external()
                },
                "mqtt.inflight",
            ),
            (
                MqttConfig {
                    // A port other than embedded_listen's while embedded.
                    url: "mqtt://127.0.0.1:1885".into(),
                    ..MqttConfig::default()
                },
                "mqtt.url",
            ),
            (
                MqttConfig {
                    url: "mqtts://127.0.0.1:1883".into(),
                    ..MqttConfig::default()
                },
                "mqtt.url",
            ),
        ];
        for (cfg, key) in cases {
            assert_eq!(key_of(cfg.validate()), key, "{cfg:?}");
        }
    }

    #[test]
    fn connect_addr_replaces_unspecified_hosts() {
        assert_eq!(
            connect_addr("0.0.0.0:1883".parse().unwrap()).to_string(),
            "127.0.0.1:1883"
        );
        assert_eq!(
            connect_addr("[::]:1883".parse().unwrap()).to_string(),
            "[::1]:1883"
        );
        assert_eq!(
            connect_addr("10.1.2.3:1883".parse().unwrap()).to_string(),
            "10.1.2.3:1883"
        );
    }
}
