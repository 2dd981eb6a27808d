//! The MQTT source against a real Mosquitto: delivery, manual acks, persistent sessions,
//! broker restarts and backpressure.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use ingest::{AckOutcome, Inbound, MqttSource, ShadowUpdate};
use testkit::free_port;
use testkit::mosquitto::Mosquitto;

/// Shutdown normally takes milliseconds; the bound is only there to fail instead of hanging.
const GRACE: Duration = WAIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receives_shadow_updates_and_events() {
    init_tracing();
    let broker = Mosquitto::start();
    let cfg = source_config(broker.port(), &unique_id("recv"));
    let (mut rx, acker, handle) = MqttSource::start(&cfg, "test", "host").unwrap();
    let status = handle.status();
    wait_until("subscribed", || status.is_subscribed()).await;

    publish(
        broker.port(),
        vec![
            shadow("thing-1", r#"{"state":{"reported":{"temp":21.5}}}"#),
            shadow("odd:name_x-1", r#"{"state":{"reported":{"on":true}}}"#),
            (
                "thing-update/sub1/sub2/thing-2".into(),
                br#"{"state":{"reported":{"x":1}}}"#.to_vec(),
            ),
            (
                "event/sub1".into(),
                br#"{"type":"THING.CREATE","source":{"thingName":"t"}}"#.to_vec(),
            ),
            // Not routed: the shadow service's answer topics are not subscribed.
            (
                "$aws/things/thing-1/shadow/update/accepted".into(),
                b"{}".to_vec(),
            ),
        ],
    )
    .await;

    let first = recv(&mut rx).await;
    assert_eq!(
        shadow_of(&first),
        (
            "thing-1".into(),
            r#"{"state":{"reported":{"temp":21.5}}}"#.into()
        )
    );
    let Inbound::Shadow(ShadowUpdate { received_at_ms, .. }) = &first else {
        unreachable!()
    };
    assert!(*received_at_ms > 1_600_000_000_000);
    assert_eq!(acker.ack(first.into_ack()), AckOutcome::Sent);

    let second = recv(&mut rx).await;
    assert_eq!(shadow_of(&second).0, "odd:name_x-1");
    acker.ack(second.into_ack());

    let third = recv(&mut rx).await;
    assert_eq!(shadow_of(&third).0, "thing-2");
    acker.ack(third.into_ack());

    match recv(&mut rx).await {
        Inbound::Event {
            topic,
            payload,
            ack,
            ..
        } => {
            assert_eq!(topic, "event/sub1");
            assert!(payload.starts_with(b"{\"type\":\"THING.CREATE\""));
            assert_eq!(acker.ack(ack), AckOutcome::Sent);
        }
        other => panic!("expected an event, got {other:?}"),
    }
    // Nothing more, the answer topic's message included: it reached the broker before the
    // sentinel, so had it been forwarded it would come first.
    expect_sentinel_next(
        broker.port(),
        "$aws/things/thing-1/shadow/update",
        &mut rx,
        &acker,
    )
    .await;
    assert_eq!(acker.pending(), 0);
    assert!(handle.is_connected());
    handle.shutdown(GRACE).await.unwrap();
    assert!(!status.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_are_redelivered_after_reconnect_and_acked_ones_are_not() {
    init_tracing();
    let broker = Mosquitto::start();
    let id = unique_id("redeliver");
    let cfg = source_config(broker.port(), &id);
    let (mut rx, acker, handle) = MqttSource::start(&cfg, "test", "host").unwrap();
    let status = handle.status();
    wait_until("subscribed", || status.is_subscribed()).await;

    publish(
        broker.port(),
        (1..=4).map(|i| shadow("t", &format!("m{i}"))).collect(),
    )
    .await;
    let items: Vec<Inbound> = vec![
        recv(&mut rx).await,
        recv(&mut rx).await,
        recv(&mut rx).await,
        recv(&mut rx).await,
    ];
    let payloads: Vec<String> = items.iter().map(|i| shadow_of(i).1).collect();
    assert_eq!(payloads, ["m1", "m2", "m3", "m4"]);
    let mut items = items.into_iter();
    for item in items.by_ref().take(2) {
        assert_eq!(acker.ack(item.into_ack()), AckOutcome::Sent);
    }
    let unacked: Vec<Inbound> = items.collect();
    handle.shutdown(GRACE).await.unwrap();
    wait_for_disconnect_read(&broker, &cfg).await;
    drop(unacked);
    drop(rx);

    // Same client id, persistent session: m3 and m4 again, m1 and m2 not.
    let (mut rx, acker, handle) = MqttSource::start(&cfg, "test", "host").unwrap();
    let again = vec![recv(&mut rx).await, recv(&mut rx).await];
    let payloads: Vec<String> = again.iter().map(|i| shadow_of(i).1).collect();
    assert_eq!(payloads, ["m3", "m4"]);
    assert_eq!(acker.ack_all(again.into_iter().map(Inbound::into_ack)), 2);
    // The broker resent the session's un-acked messages when it resumed it, before anything
    // published now: a redelivery of m1 or m2 would come before the sentinel.
    expect_sentinel_next(
        broker.port(),
        "$aws/things/t/shadow/update",
        &mut rx,
        &acker,
    )
    .await;
    handle.shutdown(GRACE).await.unwrap();
    wait_for_disconnect_read(&broker, &cfg).await;

    // All acked now: a third start gets nothing before a message published after it connected.
    let (mut rx, acker, handle) = MqttSource::start(&cfg, "test", "host").unwrap();
    let status = handle.status();
    wait_until("subscribed", || status.is_subscribed()).await;
    expect_sentinel_next(
        broker.port(),
        "$aws/things/t/shadow/update",
        &mut rx,
        &acker,
    )
    .await;
    handle.shutdown(GRACE).await.unwrap();
}

/// What the pipeline's redelivery check relies on: a message the broker sends again because it
/// has no PUBACK for it carries the DUP flag and its first packet id; new messages do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_message_has_dup_set_and_keeps_its_packet_id() {
    init_tracing();
    let broker = Mosquitto::start();
    let cfg = source_config(broker.port(), &unique_id("dup"));
    let (mut rx, acker, handle) = MqttSource::start(&cfg, "test", "host").unwrap();
    let status = handle.status();
    wait_until("subscribed", || status.is_subscribed()).await;

    publish(
        broker.port(),
        (1..=3).map(|i| shadow("t", &format!("m{i}"))).collect(),
    )
    .await;
    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(recv(&mut rx).await);
    }
    assert!(
        first.iter().all(|i| !i.is_dup()),
        "first deliveries: {first:?}"
    );
    let pkids: Vec<u16> = first.iter().map(Inbound::pkid).collect();
    assert!(pkids.iter().all(|p| *p != 0), "QoS 1 packet ids: {pkids:?}");
    let mut first = first.into_iter();
    assert_eq!(
        acker.ack(first.next().unwrap().into_ack()),
        AckOutcome::Sent
    );
    // m2 and m3 were received but never acked (as after a crash between the spool's fsync and
    // the PUBACK): the broker keeps them in the session.
    let unacked: Vec<Inbound> = first.collect();
    handle.shutdown(GRACE).await.unwrap();
    wait_for_disconnect_read(&broker, &cfg).await;
    drop(unacked);
    drop(rx);

    let (mut rx, acker, handle) = MqttSource::start(&cfg, "test", "host").unwrap();
    for (expected, pkid) in ["m2", "m3"].into_iter().zip(&pkids[1..]) {
        let item = recv(&mut rx).await;
        match &item {
            Inbound::Shadow(ShadowUpdate {
                payload,
                dup,
                pkid: got,
                ..
            }) => {
                assert_eq!(&payload[..], expected.as_bytes());
                assert!(*dup, "{expected} is redelivered with DUP set");
                assert_eq!(got, pkid, "{expected} keeps its packet id");
            }
            other => panic!("expected a shadow update, got {other:?}"),
        }
        assert_eq!(acker.ack(item.into_ack()), AckOutcome::Sent);
    }
    // A new message on the same session: no DUP.
    publish(broker.port(), vec![shadow("t", "m4")]).await;
    let item = recv(&mut rx).await;
    assert_eq!(shadow_of(&item).1, "m4");
    assert!(!item.is_dup());
    acker.ack(item.into_ack());
    expect_sentinel_next(
        broker.port(),
        "$aws/things/t/shadow/update",
        &mut rx,
        &acker,
    )
    .await;
    handle.shutdown(GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_while_stopped_arrive_after_restart() {
    init_tracing();
    let broker = Mosquitto::start();
    let cfg = source_config(broker.port(), &unique_id("offline"));
    // The first start creates the session and its subscriptions.
    let (rx, _acker, handle) = MqttSource::start(&cfg, "test", "host").unwrap();
    let status = handle.status();
    wait_until("subscribed", || status.is_subscribed()).await;
    handle.shutdown(GRACE).await.unwrap();
    drop(rx);

    publish(
        broker.port(),
        (0..50)
            .map(|i| shadow(&format!("t{i}"), &format!("{i}")))
            .collect(),
    )
    .await;

    let (mut rx, acker, handle) = MqttSource::start(&cfg, "test", "host").unwrap();
    for i in 0..50 {
        let item = recv(&mut rx).await;
        assert_eq!(shadow_of(&item), (format!("t{i}"), format!("{i}")));
        acker.ack(item.into_ack());
    }
    // No duplicates and nothing else: the same subscription, `$aws/things/+/shadow/update`.
    expect_sentinel_next(
        broker.port(),
        "$aws/things/sentinel/shadow/update",
        &mut rx,
        &acker,
    )
    .await;
    handle.shutdown(GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_and_resubscribes_after_a_broker_restart() {
    init_tracing();
    let mut broker = Mosquitto::start();
    let port = broker.port();
    let cfg = source_config(port, &unique_id("restart"));
    let (mut rx, acker, handle) = MqttSource::start(&cfg, "test", "host").unwrap();
    let status = handle.status();
    wait_until("subscribed", || status.is_subscribed()).await;

    publish(port, vec![shadow("before", "1")]).await;
    let item = recv(&mut rx).await;
    assert_eq!(shadow_of(&item).0, "before");
    acker.ack(item.into_ack());

    // A fresh broker on the same port: the session is gone, so only resubscribing helps.
    broker.kill();
    wait_until("disconnected", || !status.is_connected()).await;
    broker.start_again();
    wait_until("subscribed again", || status.is_subscribed()).await;

    publish(port, vec![shadow("after", "2")]).await;
    let item = recv(&mut rx).await;
    assert_eq!(shadow_of(&item), ("after".into(), "2".into()));
    assert_eq!(acker.ack(item.into_ack()), AckOutcome::Sent);
    handle.shutdown(GRACE).await.unwrap();
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_broker_does_not_delay_shutdown() {
    init_tracing();
    let port = free_port();
    // After a failed attempt the source waits at least half an hour: a shutdown that waited
    // for the backoff would miss GRACE by far, whatever the machine's load.
    let cfg = ingest::MqttConfig {
        reconnect_initial_ms: 3_600_000,
        reconnect_max_ms: 3_600_000,
        ..source_config(port, &unique_id("nobroker"))
    };
    let (_rx, _acker, handle) = MqttSource::start(&cfg, "test", "host").unwrap();
    let status = handle.status();
    wait_until("a failed connection attempt", || {
        status.connect_failures() > 0
    })
    .await;
    assert!(!handle.is_connected());
    handle
        .shutdown(GRACE)
        .await
        .expect("shutdown waited for the reconnect backoff");
}

/// A consumer slower than the broker, with a channel (4) smaller than Mosquitto's window (20):
/// the source keeps order and loses nothing, and the connection survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_loses_nothing() {
    init_tracing();
    let broker = Mosquitto::start();
    let cfg = ingest::MqttConfig {
        inflight: 4,
        ..source_config(broker.port(), &unique_id("slow"))
    };
    let (mut rx, acker, handle) = MqttSource::start(&cfg, "test", "host").unwrap();
    let status = handle.status();
    wait_until("subscribed", || status.is_subscribed()).await;

    const N: usize = 200;
    publish(
        broker.port(),
        (0..N).map(|i| shadow("t", &i.to_string())).collect(),
    )
    .await;
    let mut batch = Vec::new();
    for i in 0..N {
        let item = recv(&mut rx).await;
        assert_eq!(shadow_of(&item).1, i.to_string());
        batch.push(item.into_ack());
        if batch.len() == 7 {
            // A slow "fsync", then the batch is acked in reverse: the Acker keeps the order.
            tokio::time::sleep(Duration::from_millis(5)).await;
            for token in batch.drain(..).rev() {
                acker.ack(token);
            }
        }
    }
    acker.ack_all(batch);
    assert_eq!(acker.pending(), 0);
    assert!(status.is_connected());
    handle.shutdown(GRACE).await.unwrap();
    wait_for_disconnect_read(&broker, &cfg).await;

    // Nothing left un-acked in the session.
    let (mut rx, acker, handle) = MqttSource::start(&cfg, "test", "host").unwrap();
    let status = handle.status();
    wait_until("subscribed", || status.is_subscribed()).await;
    expect_sentinel_next(
        broker.port(),
        "$aws/things/t/shadow/update",
        &mut rx,
        &acker,
    )
    .await;
    handle.shutdown(GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_group_splits_updates_and_every_member_gets_every_event() {
    init_tracing();
    let broker = Mosquitto::start();
    let member = |name: &str| ingest::MqttConfig {
        topics: Some(vec!["thing-update/#".into()]),
        share_group: Some("ccstream".into()),
        ..source_config(broker.port(), &unique_id(name))
    };
    let (a, b) = (member("share-a"), member("share-b"));
    let (mut rx_a, acker_a, handle_a) = MqttSource::start(&a, "test", "host").unwrap();
    let (mut rx_b, acker_b, handle_b) = MqttSource::start(&b, "test", "host").unwrap();
    let (status_a, status_b) = (handle_a.status(), handle_b.status());
    wait_until("both subscribed", || {
        status_a.is_subscribed() && status_b.is_subscribed()
    })
    .await;
    assert!(broker.log().contains(&format!(
        "{} 1 $share/ccstream/thing-update/#",
        a.client_id.as_deref().unwrap()
    )));

    const N: usize = 100;
    let mut messages: Vec<(String, Vec<u8>)> = (0..N)
        .map(|i| {
            (
                format!("thing-update/root/t{i}"),
                i.to_string().into_bytes(),
            )
        })
        .collect();
    messages.push((
        "event/root".into(),
        br#"{"type":"THING.CREATE","source":{"thingName":"t"}}"#.to_vec(),
    ));
    publish(broker.port(), messages).await;

    // Each update reaches one member; the event reaches both (its subscription is not shared).
    let mut seen = vec![0_u32; N];
    let mut per_member = [0_usize; 2];
    let mut events = [0_usize; 2];
    while per_member.iter().sum::<usize>() < N || events.contains(&0) {
        let (member, item) = tokio::select! {
            item = recv(&mut rx_a) => (0, item),
            item = recv(&mut rx_b) => (1, item),
        };
        let acker = if member == 0 { &acker_a } else { &acker_b };
        match &item {
            Inbound::Shadow(_) => {
                let i: usize = shadow_of(&item).1.parse().unwrap();
                seen[i] += 1;
                per_member[member] += 1;
            }
            Inbound::Event { .. } => events[member] += 1,
        }
        acker.ack(item.into_ack());
    }
    assert!(seen.iter().all(|&n| n == 1), "each update once: {seen:?}");
    assert_eq!(events, [1, 1]);
    // Mosquitto hands them round-robin; any real split will do.
    assert!(
        per_member.iter().all(|&n| n >= N / 4),
        "updates split {per_member:?}"
    );
    // Nothing more for either member: the sentinel event reaches both, and comes next.
    expect_sentinel_next(broker.port(), "event/root", &mut rx_a, &acker_a).await;
    let item = recv(&mut rx_b).await;
    assert_eq!(&item.payload()[..], SENTINEL, "{item:?}");
    acker_b.ack(item.into_ack());
    handle_a.shutdown(GRACE).await.unwrap();
    handle_b.shutdown(GRACE).await.unwrap();
}
