//! The embedded broker (rumqttd) with the MQTT source.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use common::*;
use ingest::{AckOutcome, EmbeddedBroker, Error, Inbound, MqttConfig, MqttSource};
use testkit::free_port;

const GRACE: Duration = Duration::from_secs(5);

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

fn start_broker() -> EmbeddedBroker {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    EmbeddedBroker::start(addr).expect("embedded broker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_receives_from_the_embedded_broker() {
    init_tracing();
    let broker = start_broker();
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

/// rumqttd disconnects a client on an out-of-order PUBACK; acks given in reverse order must
/// reach it in order, and a client reconnect must redeliver exactly the un-acked messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_keeps_the_session_across_a_client_reconnect() {
    init_tracing();
    let broker = start_broker();
    let port = broker.local_addr().port();
    let cfg = embedded_config(&broker, &unique_id("emb-session"));
    let (mut rx, acker, handle) = MqttSource::start(&cfg, "test", "host").unwrap();
    let status = handle.status();
    wait_until("subscribed", || status.is_subscribed()).await;

    publish(
        port,
        (0..30)
            .map(|i| (format!("thing-update/t{i}"), i.to_string().into_bytes()))
            .collect(),
    )
    .await;
    let mut tokens = Vec::new();
    for i in 0..30 {
        let item = recv(&mut rx).await;
        assert_eq!(shadow_of(&item), (format!("t{i}"), i.to_string()));
        tokens.push(item.into_ack());
    }
    // Ack 0..20 in reverse order; keep 20..30 un-acked.
    let unacked = tokens.split_off(20);
    for token in tokens.into_iter().rev() {
        acker.ack(token);
    }
    assert_eq!(acker.pending(), 10);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(status.is_connected(), "the broker dropped the connection");
    handle.shutdown(GRACE).await.unwrap();
    drop(unacked);
    drop(rx);

    // Published while the source is away: kept in the broker's in-memory session.
    publish(port, vec![("thing-update/late".into(), b"late".to_vec())]).await;

    let (mut rx, acker, handle) = MqttSource::start(&cfg, "test", "host").unwrap();
    let mut names = Vec::new();
    for _ in 0..11 {
        let item = recv(&mut rx).await;
        names.push(shadow_of(&item).0);
        acker.ack(item.into_ack());
    }
    let expected: Vec<String> = (20..30)
        .map(|i| format!("t{i}"))
        .chain(["late".to_owned()])
        .collect();
    assert_eq!(names, expected);
    assert_quiet(&mut rx, Duration::from_millis(500)).await;
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
