//! Test harness: a real Mosquitto per test on a free port (`testkit::mosquitto`), a rumqttc
//! publisher, and helpers to wait for the source. Mosquitto missing is a test failure, not a
//! skip.

#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ingest::{AckOutcome, Acker, Inbound, MqttConfig, ShadowUpdate};
use tokio::sync::mpsc;

/// Generous timeouts: CI machines have 2 cores shared with other builds.
pub const WAIT: Duration = Duration::from_secs(15);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "ingest=debug,rumqttd=warn".into()),
        )
        .try_init();
}

/// A client id no other test (or earlier run) uses, so sessions never collide.
pub fn unique_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Config for a source on Mosquitto at `port`, reading both shadow topic forms and events.
pub fn source_config(port: u16, client_id: &str) -> MqttConfig {
    MqttConfig {
        url: format!("mqtt://127.0.0.1:{port}"),
        client_id: Some(client_id.to_owned()),
        topics: Some(vec![
            "$aws/things/+/shadow/update".into(),
            "thing-update/#".into(),
        ]),
        embedded: false,
        keep_alive_secs: 5,
        reconnect_initial_ms: 50,
        reconnect_max_ms: 500,
        ..MqttConfig::default()
    }
}

/// Publishes every message with QoS 1 and waits for all the PUBACKs, so the broker has them
/// when this returns (any broker on 127.0.0.1, the embedded one too).
pub use testkit::mosquitto::publish_all as publish;

pub fn shadow(thing: &str, payload: &str) -> (String, Vec<u8>) {
    (
        format!("$aws/things/{thing}/shadow/update"),
        payload.as_bytes().to_vec(),
    )
}

/// Waits for `cond`, polling every 20 ms, failing after [`WAIT`].
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn recv(rx: &mut mpsc::Receiver<Inbound>) -> Inbound {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("no message within the timeout")
        .expect("the source's channel closed")
}

/// Payload of the sentinel of [`expect_sentinel_next`].
pub const SENTINEL: &[u8] = b"sentinel";

/// Proves that nothing is queued for the source ahead of a new message, without waiting for
/// a quiet period: publishes a sentinel (payload [`SENTINEL`], QoS 1) to `topic` on the broker
/// at `port` and asserts it is the next item the source forwards, new (no DUP), then acks it.
///
/// Whatever must not arrive (a message that should have been dropped, a redelivery of an acked
/// one) must reach the broker's queue for this session before the sentinel: published earlier
/// ([`publish`] returns after the PUBACKs) or, for a redelivery, queued when the session
/// resumed (call this once the source is connected). The sentinel must then take the same
/// ordering path: QoS 1 like the rest, and a `topic` in the subscription the unwanted message
/// would come through. Mosquitto keeps one ordered queue per client (what the cross-topic order
/// assertions of these tests rely on too); rumqttd keeps one log per subscription filter, so
/// there the filter must be the same.
pub async fn expect_sentinel_next(
    port: u16,
    topic: &str,
    rx: &mut mpsc::Receiver<Inbound>,
    acker: &Acker,
) {
    publish(port, vec![(topic.to_owned(), SENTINEL.to_vec())]).await;
    let item = recv(rx).await;
    let same_topic = match &item {
        Inbound::Shadow(ShadowUpdate { thing_name, .. }) => {
            topic.split('/').any(|level| level == thing_name)
        }
        Inbound::Event { topic: got, .. } => got == topic,
    };
    assert!(
        &item.payload()[..] == SENTINEL && same_topic,
        "expected the sentinel on {topic}, got {item:?}"
    );
    assert!(!item.is_dup(), "the sentinel is a new message: {item:?}");
    assert_eq!(acker.ack(item.into_ack()), AckOutcome::Sent);
}

/// Waits until Mosquitto has read every connection of `cfg`'s client id to its DISCONNECT; call
/// it after [`ingest::SourceHandle::shutdown`] and before starting a source with the same id.
///
/// `shutdown` returns once the PUBACKs and the DISCONNECT are written. A source that connects
/// again under the same client id before Mosquitto read them takes the session over, and
/// Mosquitto drops what it had not read of the old connection: acked messages come back.
/// Mosquitto reads a connection in order, so the end of a connection logged means every PUBACK
/// before it was taken: its DISCONNECT, or, when the socket closed before rumqttc flushed the
/// DISCONNECT (seen once right after a re-subscribe, under load), the close itself. Needs the
/// packet log (`log_type all`, testkit's default).
pub async fn wait_for_disconnect_read(broker: &testkit::mosquitto::Mosquitto, cfg: &MqttConfig) {
    let id = cfg.client_id.as_deref().expect("tests set a client id");
    let connected = format!(" as {id} (");
    let disconnected = format!("Received DISCONNECT from {id}\n");
    let closed = format!("Client {id} closed its connection.\n");
    wait_until("Mosquitto read the end of the connection", || {
        let log = broker.log();
        log.matches(&disconnected).count() + log.matches(&closed).count()
            >= log.matches(&connected).count()
    })
    .await;
}

/// The thing name and payload (as text) of a shadow update.
pub fn shadow_of(item: &Inbound) -> (String, String) {
    match item {
        Inbound::Shadow(ShadowUpdate {
            thing_name,
            payload,
            ..
        }) => (
            thing_name.clone(),
            String::from_utf8_lossy(payload).into_owned(),
        ),
        other => panic!("expected a shadow update, got {other:?}"),
    }
}
