//! The `[mqtt]` section as the binary reads it: TOML through figment over the defaults.

#![allow(clippy::unwrap_used, clippy::result_large_err)]

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use ingest::MqttConfig;

fn load(toml: &str) -> Result<MqttConfig, figment::Error> {
    Figment::from(Serialized::defaults(MqttConfig::default()).key("mqtt"))
        .merge(Toml::string(toml))
        .extract_inner("mqtt")
}

#[test]
fn an_empty_section_gives_the_defaults() {
    assert_eq!(load("").unwrap(), MqttConfig::default());
    assert_eq!(load("[mqtt]\n").unwrap(), MqttConfig::default());
}

#[test]
fn an_aws_iot_section_reads_and_validates() {
    let cfg = load(
        r#"
        [mqtt]
        url = "mqtts://abc-ats.iot.eu-west-1.amazonaws.com"
        client_id = "ccstream-prod-1"
        topics = ["$aws/things/+/shadow/update"]
        event_topics = []
        ca_file = "/etc/ccstream/AmazonRootCA1.pem"
        client_cert_file = "/etc/ccstream/cert.pem"
        client_key_file = "/etc/ccstream/key.pem"
        inflight = 200
        embedded = false
        "#,
    )
    .unwrap();
    cfg.validate().unwrap();
    assert_eq!(cfg.shadow_topics(), vec!["$aws/things/+/shadow/update"]);
    assert!(cfg.event_topics.is_empty());
    assert_eq!(cfg.keep_alive_secs, 30);
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let err = load("[mqtt]\nurll = \"mqtt://x\"\n").unwrap_err();
    assert!(err.to_string().contains("urll"), "{err}");
}

#[test]
fn validation_names_the_key() {
    let cfg = load("[mqtt]\nembedded = false\nurl = \"ws://broker\"\n").unwrap();
    let err = cfg.validate().unwrap_err();
    assert!(err.to_string().starts_with("mqtt.url:"), "{err}");
}
