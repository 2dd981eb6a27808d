//! Metric names of the MQTT source, and the handles the source keeps.
//!
//! Handles are taken once when the source starts, so install the metrics recorder before
//! starting it (handles taken earlier count into nothing).

use metrics::{describe_counter, describe_gauge, Counter, Gauge, Unit};

/// Messages received, by `kind`: `shadow`, `event` or `other` (a topic neither list routes).
pub const MESSAGES_TOTAL: &str = "ccstream_mqtt_messages_total";
/// Connection attempts, by `result`: `ok`, `refused` (CONNACK with an error code, e.g. bad
/// credentials) or `failed` (network, TLS or protocol error before the CONNACK).
pub const CONNECTIONS_TOTAL: &str = "ccstream_mqtt_connections_total";
/// Established connections that ended other than by shutdown.
pub const CONNECTIONS_LOST_TOTAL: &str = "ccstream_mqtt_connections_lost_total";
/// 1 while connected to the broker, else 0.
pub const CONNECTED: &str = "ccstream_mqtt_connected";
/// Messages not forwarded, by `reason`: `too_large` (over `mqtt.max_payload_bytes`) or
/// `bad_topic` (no thing name can be read from the topic). Shared with the later stages, which
/// count their own reasons (`not_json`, ...) under the same name.
pub const REJECTED_TOTAL: &str = "ccstream_ingest_rejected_total";
/// Topic filters the broker refused in a SUBACK.
pub const SUBSCRIBE_FAILURES_TOTAL: &str = "ccstream_mqtt_subscribe_failures_total";
/// Acks for messages of a connection that had ended (the broker delivers those again).
pub const ACKS_STALE_TOTAL: &str = "ccstream_mqtt_acks_stale_total";
/// PUBACKs written to the broker, and the flushes that wrote them (their ratio is the batch).
pub const ACKS_WRITTEN_TOTAL: &str = "ccstream_mqtt_acks_written_total";
pub const ACK_FLUSHES_TOTAL: &str = "ccstream_mqtt_ack_flushes_total";
/// Ack tokens dropped without an ack (a pipeline bug, or messages in flight at shutdown).
pub const UNACKED_DROPPED_TOTAL: &str = "ccstream_mqtt_unacked_dropped_total";

/// Registers descriptions for every metric above; call once after installing the recorder.
pub fn describe_metrics() {
    describe_counter!(
        MESSAGES_TOTAL,
        Unit::Count,
        "MQTT messages received, by kind"
    );
    describe_counter!(
        CONNECTIONS_TOTAL,
        Unit::Count,
        "MQTT connection attempts, by result"
    );
    describe_counter!(
        CONNECTIONS_LOST_TOTAL,
        Unit::Count,
        "Established MQTT connections that ended unexpectedly"
    );
    describe_gauge!(CONNECTED, "1 while connected to the MQTT broker");
    describe_counter!(
        REJECTED_TOTAL,
        Unit::Count,
        "Incoming messages not processed, by reason"
    );
    describe_counter!(
        SUBSCRIBE_FAILURES_TOTAL,
        Unit::Count,
        "Topic filters the MQTT broker refused"
    );
    describe_counter!(
        ACKS_STALE_TOTAL,
        Unit::Count,
        "Acks for messages of an MQTT connection that had ended"
    );
    describe_counter!(
        ACKS_WRITTEN_TOTAL,
        Unit::Count,
        "PUBACKs written to the MQTT broker"
    );
    describe_counter!(
        ACK_FLUSHES_TOTAL,
        Unit::Count,
        "Writes of PUBACKs to the MQTT broker (each carries every PUBACK ready at the time)"
    );
    describe_counter!(
        UNACKED_DROPPED_TOTAL,
        Unit::Count,
        "Messages whose ack token was dropped without an ack"
    );
}

/// Handles the source's task updates.
#[derive(Clone)]
pub(crate) struct SourceMetrics {
    pub(crate) shadow: Counter,
    pub(crate) event: Counter,
    pub(crate) other: Counter,
    pub(crate) connected_ok: Counter,
    pub(crate) connect_refused: Counter,
    pub(crate) connect_failed: Counter,
    pub(crate) lost: Counter,
    pub(crate) connected: Gauge,
    pub(crate) too_large: Counter,
    pub(crate) bad_topic: Counter,
    pub(crate) subscribe_failures: Counter,
    pub(crate) acks_stale: Counter,
    pub(crate) unacked_dropped: Counter,
    pub(crate) acks_written: Counter,
    pub(crate) ack_flushes: Counter,
}

impl SourceMetrics {
    pub(crate) fn new() -> Self {
        SourceMetrics {
            shadow: metrics::counter!(MESSAGES_TOTAL, "kind" => "shadow"),
            event: metrics::counter!(MESSAGES_TOTAL, "kind" => "event"),
            other: metrics::counter!(MESSAGES_TOTAL, "kind" => "other"),
            connected_ok: metrics::counter!(CONNECTIONS_TOTAL, "result" => "ok"),
            connect_refused: metrics::counter!(CONNECTIONS_TOTAL, "result" => "refused"),
            connect_failed: metrics::counter!(CONNECTIONS_TOTAL, "result" => "failed"),
            lost: metrics::counter!(CONNECTIONS_LOST_TOTAL),
            connected: metrics::gauge!(CONNECTED),
            too_large: metrics::counter!(REJECTED_TOTAL, "reason" => "too_large"),
            bad_topic: metrics::counter!(REJECTED_TOTAL, "reason" => "bad_topic"),
            subscribe_failures: metrics::counter!(SUBSCRIBE_FAILURES_TOTAL),
            acks_stale: metrics::counter!(ACKS_STALE_TOTAL),
            unacked_dropped: metrics::counter!(UNACKED_DROPPED_TOTAL),
            acks_written: metrics::counter!(ACKS_WRITTEN_TOTAL),
            ack_flushes: metrics::counter!(ACK_FLUSHES_TOTAL),
        }
    }
}
