//! The embedded broker (rumqttd) with the MQTT source.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use common::*;
use ingest::{AckOutcome, EmbeddedBroker, Error, Inbound, MqttConfig, MqttSource};
use testkit::free_port;

/// Shutdown normally takes milliseconds; the bound is only there to fail instead of hanging.
const GRACE: Duration = WAIT;

fn embedded_config(broker: &EmbeddedBroker, client_id: &str) -> MqttConfig {
    let addr = broker.local_addr();
    MqttConfig {
        url: format!("mqtt://{addr}"),
        client_id: Some(client_id.to_owned()),
        embedded: true,
        embedded_listen: addr,
        keep_alive_secs: 5,
        reconnect_initial_ms: 50,
        reconnect_max_ms: 500,
        ..MqttConfig::default()
    }
}

/// Starts a broker, and waits until it has closed the connection of its start-up probe (see
/// [`wait_until_broker_closed_its_connections`]: the probe ends with a DISCONNECT).
async fn start_broker() -> EmbeddedBroker {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let broker = EmbeddedBroker::start(addr).expect("embedded broker");
    wait_until_broker_closed_its_connections(&broker).await;
    broker
}

/// Waits until rumqttd holds no connection on its port: no socket of that local port still
/// ESTABLISHED or CLOSE_WAIT in `/proc/net/tcp`. Call it before a client connects right after
/// another one's DISCONNECT.
///
/// rumqttd 0.20 takes a DISCONNECT and the socket's close that follows as two disconnections of
/// the same connection id, and reuses ids: a client that connects in between gets the old id
/// and the late second one drops it. Its connection task queues that second event to the
/// router, whose queue is FIFO, before it closes the socket; once every socket is closed, a new
/// client's CONNECT is queued behind it.
async fn wait_until_broker_closed_its_connections(broker: &EmbeddedBroker) {
    let port = format!(":{:04X}", broker.local_addr().port());
    wait_until("the broker closed its connections", || {
        let tcp = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
        !tcp.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address (IP:PORT in hex) and st (01 ESTABLISHED, 08 CLOSE_WAIT).
            fields.len() > 3 && fields[1].ends_with(&port) && matches!(fields[3], "01" | "08")
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_receives_from_the_embedded_broker() {
    init_tracing();
    let broker = start_broker().await;
    assert!(broker.is_running());
    let cfg = embedded_config(&broker, &unique_id("emb"));
    cfg.validate().unwrap();
    assert_eq!(cfg.shadow_topics(), vec!["thing-update/#"]);
    let (mut rx, acker, handle) = MqttSource::start(&cfg, "test", "host").unwrap();
    let status = handle.status();
    wait_until("subscribed", || status.is_subscribed()).await;

    let port = broker.local_addr().port();
    publish(
        port,
        vec![
            (
                "thing-update/sub1/thing-7".into(),
                br#"{"state":{"reported":{"temp":3}}}"#.to_vec(),
            ),
            ("thing-update/thing-8".into(), b"{}".to_vec()),
            ("event/sub1".into(), br#"{"type":"THING.UPDATE"}"#.to_vec()),
        ],
    )
    .await;
    let item = recv(&mut rx).await;
    assert_eq!(
        shadow_of(&item),
        (
            "thing-7".into(),
            r#"{"state":{"reported":{"temp":3}}}"#.into()
        )
    );
    assert_eq!(acker.ack(item.into_ack()), AckOutcome::Sent);
    let item = recv(&mut rx).await;
    assert_eq!(shadow_of(&item).0, "thing-8");
    acker.ack(item.into_ack());
    match recv(&mut rx).await {
        Inbound::Event { topic, ack, .. } => {
            assert_eq!(topic, "event/sub1");
            acker.ack(ack);
        }
        other => panic!("expected an event, got {other:?}"),
    }
    handle.shutdown(GRACE).await.unwrap();
}

/// rumqttd's in-flight window: it sends a subscriber at most this many un-acked QoS 1 messages
/// (`MAX_INFLIGHT` in rumqttd 0.20's `router/iobufs.rs`, not configurable; also its largest
/// packet id, and a broker may not reuse a packet id before its PUBACK).
const RUMQTTD_WINDOW: usize = 100;
/// Messages acked in reverse order in the session test.
const ACKED: usize = 20;

/// rumqttd disconnects a client on an out-of-order PUBACK; acks given in reverse order must
/// reach it in order, and a client reconnect must redeliver exactly the un-acked messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_keeps_the_session_across_a_client_reconnect() {
    init_tracing();
    let broker = start_broker().await;
    let port = broker.local_addr().port();
    let cfg = embedded_config(&broker, &unique_id("emb-session"));
    let (mut rx, acker, handle) = MqttSource::start(&cfg, "test", "host").unwrap();
    let status = handle.status();
    wait_until("subscribed", || status.is_subscribed()).await;

    // A full window and ACKED more: rumqttd sends those last ones only as it frees window
    // slots, one per PUBACK it has processed on the source's connection.
    const N: usize = RUMQTTD_WINDOW + ACKED;
    publish(
        port,
        (0..N)
            .map(|i| (format!("thing-update/t{i}"), i.to_string().into_bytes()))
            .collect(),
    )
    .await;
    let mut tokens = Vec::new();
    for i in 0..RUMQTTD_WINDOW {
        let item = recv(&mut rx).await;
        assert_eq!(shadow_of(&item), (format!("t{i}"), i.to_string()));
        tokens.push(item.into_ack());
    }
    // Ack 0..ACKED in reverse order; keep the rest un-acked. The Acker holds each ack back
    // until t0's, which releases all ACKED of them, in order.
    let mut unacked = tokens.split_off(ACKED);
    let outcomes: Vec<AckOutcome> = tokens.into_iter().rev().map(|t| acker.ack(t)).collect();
    let mut expected = vec![AckOutcome::Held; ACKED - 1];
    expected.push(AckOutcome::Sent);
    assert_eq!(outcomes, expected);
    // The round trip that proves rumqttd took every PUBACK, in order, on this connection: the
    // last ACKED messages arrive, right after the window and in sequence. A disconnect on a bad
    // PUBACK would instead redeliver, after the reconnect, from the first message it had no
    // PUBACK for (rumqttd does not set DUP on a redelivery, so the sequence is the proof).
    for i in RUMQTTD_WINDOW..N {
        let item = recv(&mut rx).await;
        assert_eq!(shadow_of(&item), (format!("t{i}"), i.to_string()));
        unacked.push(item.into_ack());
    }
    // The window is full again (t20 to t119 un-acked) and nothing else was published.
    assert_eq!(acker.pending(), RUMQTTD_WINDOW);
    assert!(status.is_connected(), "the broker dropped the connection");
    assert_eq!(status.connect_failures(), 0);
    handle.shutdown(GRACE).await.unwrap();
    wait_until_broker_closed_its_connections(&broker).await;
    drop(unacked);
    drop(rx);

    // Published while the source is away: kept in the broker's in-memory session.
    publish(port, vec![("thing-update/late".into(), b"late".to_vec())]).await;

    let (mut rx, acker, handle) = MqttSource::start(&cfg, "test", "host").unwrap();
    let mut names = Vec::new();
    for _ in ACKED..=N {
        let item = recv(&mut rx).await;
        names.push(shadow_of(&item).0);
        acker.ack(item.into_ack());
    }
    let expected: Vec<String> = (ACKED..N)
        .map(|i| format!("t{i}"))
        .chain(["late".to_owned()])
        .collect();
    assert_eq!(names, expected);
    // Nothing more: rumqttd keeps one log per filter, and the sentinel is on the same one
    // (`thing-update/#`) as everything above, so any other redelivery would come first.
    expect_sentinel_next(port, "thing-update/sentinel", &mut rx, &acker).await;
    handle.shutdown(GRACE).await.unwrap();
}

#[test]
fn embedded_broker_on_a_taken_port_fails_with_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = EmbeddedBroker::start(addr).expect_err("the port is taken");
    assert!(matches!(err, Error::BrokerBind { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&addr.to_string()) && message.contains("mqtt.embedded_listen"),
        "{message}"
    );
    assert!(message.to_lowercase().contains("address"), "{message}");
}

#[test]
fn embedded_broker_on_port_zero_picks_a_port() {
    let broker = EmbeddedBroker::start(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    assert_ne!(broker.local_addr().port(), 0);
    assert!(broker.is_running());
    // A second broker on the same address fails clearly too.
    let err = EmbeddedBroker::start(broker.local_addr()).expect_err("in use by the first");
    assert!(matches!(err, Error::BrokerBind { .. }), "{err:?}");
}
