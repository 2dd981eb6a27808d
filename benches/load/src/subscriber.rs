//! `--mode bare-subscriber`: one connection subscribed to the load's topics that only counts
//! messages (and reads `sentAt` for publish → delivery latency). It measures the broker's own
//! ceiling in the same run as ccstream.

use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::payload::sent_at_bytes;
use crate::report::Latencies;

#[derive(Debug, Clone)]
pub struct SubscribeConfig {
    pub host: String,
    pub port: u16,
    pub filter: String,
    pub qos: QoS,
    /// Stop after this many messages...
    pub count: Option<u64>,
    /// ...or this long after subscribing...
    pub duration: Option<Duration>,
    /// ...or when nothing arrived for this long after the first message.
    pub idle: Duration,
}

#[derive(Debug)]
pub struct Outcome {
    pub received: u64,
    /// From the first to the last message.
    pub elapsed: Duration,
    pub latencies: Latencies,
}

/// Subscribes, calls `on_subscribed` once the broker acknowledged the subscription, then counts.
pub async fn run(
    cfg: SubscribeConfig,
    on_subscribed: impl FnOnce(),
    mut on_message: impl FnMut(u64),
) -> anyhow::Result<Outcome> {
    let mut opts = MqttOptions::new(
        format!("ccstream-load-sub-{}", std::process::id()),
        cfg.host.clone(),
        cfg.port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    client
        .subscribe(cfg.filter.clone(), cfg.qos)
        .await
        .context("subscribe")?;
    let mut on_subscribed = Some(on_subscribed);
    let mut subscribed_at = Instant::now();
    let (mut first, mut last) = (None::<Instant>, Instant::now());
    let mut received = 0u64;
    let mut latencies = Latencies::new();
    loop {
        if cfg.count.is_some_and(|c| received >= c)
            || (on_subscribed.is_none()
                && cfg.duration.is_some_and(|d| subscribed_at.elapsed() >= d))
        {
            break;
        }
        let wait = if first.is_some() {
            cfg.idle.saturating_sub(last.elapsed())
        } else {
            // Before the first message only --duration bounds the wait.
            Duration::from_millis(200)
        };
        let event = match tokio::time::timeout(wait, eventloop.poll()).await {
            Ok(e) => e.with_context(|| format!("connection to {}:{}", cfg.host, cfg.port))?,
            Err(_) if first.is_some() => break,
            Err(_) => continue,
        };
        match event {
            Event::Incoming(Packet::SubAck(_)) => {
                if let Some(f) = on_subscribed.take() {
                    subscribed_at = Instant::now();
                    f();
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                received += 1;
                if let Some(t) = sent_at_bytes(&p.payload) {
                    latencies.record(t, crate::now_ms());
                }
                on_message(received);
            }
            _ => {}
        }
    }
    let _ = client.disconnect().await;
    Ok(Outcome {
        received,
        elapsed: first.map(|f| last - f).unwrap_or_default(),
        latencies,
    })
}
