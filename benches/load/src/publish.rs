//! Publishing: `connections` MQTT clients, each with its own event-loop task, share the things
//! and the rate. A message counts as published when the broker acknowledged it (QoS 1) or when
//! it was written out (QoS 0).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

use crate::payload::{thing_name, topic, update};

/// What to publish and how fast.
#[derive(Debug, Clone)]
pub struct PublishConfig {
    pub host: String,
    pub port: u16,
    /// Topic with `{thing}`.
    pub topic_template: String,
    pub things: u32,
    pub connections: usize,
    pub qos: QoS,
    /// Messages/s over all connections; `None`: as fast as the broker takes them.
    pub rate: Option<f64>,
    /// Stop after this many messages over all connections...
    pub count: Option<u64>,
    /// ...or after this long, whichever comes first.
    pub duration: Option<Duration>,
    /// Share of updates hot enough to fire the scenario's webhook rule.
    pub fire_ratio: f64,
    /// Unacknowledged QoS 1 publishes per connection.
    pub inflight: u16,
}

/// Shared with the progress bar while the run goes on.
#[derive(Debug, Default)]
pub struct Counters {
    /// Acknowledged (QoS 1) or written (QoS 0).
    pub published: AtomicU64,
    /// Hot updates handed to the client.
    pub hot: AtomicU64,
}

/// The end of a publish run.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub published: u64,
    pub hot: u64,
    /// From the start to the last acknowledgement.
    pub elapsed: Duration,
}

/// `mqtt://host:port` or `host:port` (port 1883 when absent).
pub fn parse_broker(url: &str) -> anyhow::Result<(String, u16)> {
    let rest = url.strip_prefix("mqtt://").unwrap_or(url);
    let rest = rest.trim_end_matches('/');
    match rest.rsplit_once(':') {
        Some((h, p)) => Ok((
            h.to_owned(),
            p.parse()
                .with_context(|| format!("bad port in broker {url:?}"))?,
        )),
        None if !rest.is_empty() => Ok((rest.to_owned(), 1883)),
        None => anyhow::bail!("empty broker address"),
    }
}

/// The share of `total` that connection `c` of `n` sends.
fn share(total: u64, c: usize, n: usize) -> u64 {
    let (c, n) = (c as u64, n as u64);
    total / n + u64::from(c < total % n)
}

pub async fn run(cfg: PublishConfig, counters: Arc<Counters>) -> anyhow::Result<Outcome> {
    anyhow::ensure!(cfg.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(cfg.things > 0, "--things must be at least 1");
    anyhow::ensure!(
        cfg.count.is_some() || cfg.duration.is_some(),
        "give --count or --duration"
    );
    let cfg = Arc::new(cfg);
    let start = Instant::now();
    let tasks: Vec<_> = (0..cfg.connections)
        .map(|c| tokio::spawn(connection(c, cfg.clone(), counters.clone(), start)))
        .collect();
    for t in tasks {
        t.await.context("publisher task panicked")??;
    }
    Ok(Outcome {
        published: counters.published.load(Ordering::Relaxed),
        hot: counters.hot.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    })
}

async fn connection(
    c: usize,
    cfg: Arc<PublishConfig>,
    counters: Arc<Counters>,
    start: Instant,
) -> anyhow::Result<()> {
    let n = cfg.connections;
    let mut opts = MqttOptions::new(
        format!("ccstream-load-{}-{c}", std::process::id()),
        cfg.host.clone(),
        cfg.port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_inflight(cfg.inflight.max(1));
    opts.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let qos = cfg.qos;
    // Counted per connection too, so this connection knows when its own messages are done.
    let done = Arc::new(AtomicU64::new(0));
    let (done2, counters2) = (done.clone(), counters.clone());
    // One task owns the event loop and never blocks; it ends with the event loop's first
    // error, which drops the request channel, so a blocked `publish` returns an error too.
    let driver = tokio::spawn(async move {
        loop {
            let counted = match eventloop.poll().await? {
                Event::Incoming(Packet::PubAck(_)) => qos != QoS::AtMostOnce,
                Event::Outgoing(Outgoing::Publish(_)) => qos == QoS::AtMostOnce,
                Event::Outgoing(Outgoing::Disconnect) => {
                    return Ok::<(), rumqttc::ConnectionError>(())
                }
                _ => false,
            };
            if counted {
                done2.fetch_add(1, Ordering::Relaxed);
                counters2.published.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let my_count = cfg.count.map(|t| share(t, c, n));
    let my_rate = cfg.rate.map(|r| r / n as f64);
    let mut rng = fastrand::Rng::with_seed(c as u64 + 1);
    let mut sent: u64 = 0;
    let result: anyhow::Result<()> = async {
        loop {
            if my_count.is_some_and(|m| sent >= m)
                || cfg.duration.is_some_and(|d| start.elapsed() >= d)
            {
                break;
            }
            if let Some(r) = my_rate {
                // Pace by the schedule, not by sleeping a fixed gap: timer granularity then only
                // makes small bursts, and the mean rate stays exact.
                let due = start + Duration::from_secs_f64(sent as f64 / r);
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
            }
            let seq = sent * n as u64 + c as u64;
            let thing = thing_name((seq % u64::from(cfg.things)) as u32);
            let u = update(seq, crate::now_ms(), cfg.fire_ratio, &mut rng);
            client
                .publish(topic(&cfg.topic_template, &thing), qos, false, u.body)
                .await
                .context("publish: the connection to the broker ended")?;
            counters.hot.fetch_add(u64::from(u.hot), Ordering::Relaxed);
            sent += 1;
        }
        // Wait for the last acknowledgements before disconnecting.
        while done.load(Ordering::Relaxed) < sent && !driver.is_finished() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        client.disconnect().await.context("disconnect")?;
        Ok(())
    }
    .await;
    let driven = driver.await.context("event loop task panicked")?;
    match (result, driven) {
        (Ok(()), Ok(())) => Ok(()),
        (_, Err(e)) => Err(anyhow::Error::new(e).context(format!(
            "connection {c} to {}:{} failed",
            cfg.host, cfg.port
        ))),
        (Err(e), Ok(())) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        for total in [0, 1, 7, 1000, 1001] {
            for n in 1..6 {
                let sum: u64 = (0..n).map(|c| share(total, c, n)).sum();
                assert_eq!(sum, total, "{total} over {n}");
            }
        }
    }

    #[test]
    fn broker_addresses() {
        assert_eq!(
            parse_broker("mqtt://127.0.0.1:1884").expect("ok"),
            ("127.0.0.1".to_owned(), 1884)
        );
        assert_eq!(
            parse_broker("broker").expect("ok"),
            ("broker".to_owned(), 1883)
        );
        assert!(parse_broker("h:x").is_err());
    }
}
