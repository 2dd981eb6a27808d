//! Test harness: a real Mosquitto per test on a free port (`testkit::mosquitto`), a rumqttc
//! publisher, and helpers to wait for the source. Mosquitto missing is a test failure, not a
//! skip.

#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ingest::{Inbound, MqttConfig};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
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

/// Publishes every message with QoS 1 from a fresh clean-session client and waits for all the
/// PUBACKs, so the broker has them when this returns.
pub async fn publish(port: u16, messages: Vec<(String, Vec<u8>)>) {
    let mut opts = MqttOptions::new(unique_id("pub"), "127.0.0.1", port);
    opts.set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let count = messages.len();
    let sender = client.clone();
    tokio::spawn(async move {
        for (topic, payload) in messages {
            if sender
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut acked = 0;
    tokio::time::timeout(WAIT, async {
        while acked < count {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("publisher: {acked} of {count} PUBACKs"));
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
}

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

/// Asserts nothing arrives within `quiet`.
pub async fn assert_quiet(rx: &mut mpsc::Receiver<Inbound>, quiet: Duration) {
    if let Ok(Some(item)) = tokio::time::timeout(quiet, rx.recv()).await {
        panic!("unexpected message: {item:?}");
    }
}

/// The thing name and payload (as text) of a shadow update.
pub fn shadow_of(item: &Inbound) -> (String, String) {
    match item {
        Inbound::Shadow {
            thing_name,
            payload,
            ..
        } => (
            thing_name.clone(),
            String::from_utf8_lossy(payload).into_owned(),
        ),
        other => panic!("expected a shadow update, got {other:?}"),
    }
}
