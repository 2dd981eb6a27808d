//! `--mode rule-writes`: how many rule writes a second ccstream takes through the RuleLambda API
//! with a large rule set in place, and how soon every replica has applied them.
//!
//! Phases, each timed on its own: `setup` creates `--rules` rules (ids `load-rule-<i>`, the
//! scenario's rules of [`crate::scenario::rules`]); `create` adds `--count` more
//! (`load-extra-<i>`); `update` changes `--count` of the first rules' values; `remove` removes
//! the extras. `--connections` clients write concurrently. After each phase, the run waits until
//! every replica reports the same `ccstream_rules_generation` and it stays so for longer than a
//! replica's fallback poll (`engine.rules_poll_ms`, 500 ms by default): nothing is written any
//! more, so that is the store's last generation (writes committed together share one, so it
//! cannot be computed from the count). It reports the moment every replica first had it: a
//! write a replica has not yet applied does not count as done.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::{Client, Url};
use serde::Serialize;
use serde_json::{json, Value};

use crate::scrape::{counter_sum, get};

const GENERATION_GAUGE: &str = "ccstream_rules_generation";
/// How long the replicas may take to apply a phase's writes before the run gives up.
const APPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long every replica's generation must stay the same to be the last one: longer than a
/// replica's fallback poll, so one that missed a notification has caught up by then.
const SETTLED: Duration = Duration::from_millis(1500);

#[derive(Debug, Clone)]
pub struct WritesConfig {
    /// `http://host:port/2015-03-31/functions/RuleLambda/invocations` of the replica written to.
    pub invoke_url: Url,
    /// `/metrics` of every replica, the written one first.
    pub metrics_urls: Vec<Url>,
    pub rules: u32,
    pub count: u32,
    pub connections: usize,
    pub thing_types: u32,
    pub webhook_url: String,
}

/// One phase's figures.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseFigures {
    pub phase: String,
    /// Rules in place when the phase started.
    pub rules_before: u32,
    pub writes: u64,
    /// Writes the API refused (a function error or an HTTP error); the run fails on any.
    pub refused: u64,
    /// First request to last response.
    pub write_s: f64,
    pub writes_per_s: f64,
    /// First request until every replica reports the phase's last generation.
    pub applied_s: f64,
    pub applied_per_s: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
}

pub async fn run(cfg: &WritesConfig) -> anyhow::Result<Vec<PhaseFigures>> {
    let client = Client::builder()
        .pool_max_idle_per_host(cfg.connections)
        .build()?;
    let scenario = crate::scenario::rules(cfg.rules, cfg.thing_types, &cfg.webhook_url, false);
    let base: Vec<Value> = scenario.as_array().cloned().unwrap_or_default();
    let extra = crate::scenario::rules(cfg.count, cfg.thing_types, &cfg.webhook_url, false);
    let extra: Vec<Value> = extra.as_array().cloned().unwrap_or_default();

    let with_id = |mut attrs: Value, id: String| {
        attrs["id"] = json!(id);
        attrs
    };
    let setup: Vec<Value> = base
        .iter()
        .enumerate()
        .map(|(i, a)| create(with_id(a.clone(), format!("load-rule-{i:06}"))))
        .collect();
    let creates: Vec<Value> = extra
        .iter()
        .enumerate()
        .map(|(i, a)| create(with_id(a.clone(), format!("load-extra-{i:06}"))))
        .collect();
    let updated = cfg.count.min(cfg.rules) as usize;
    let updates: Vec<Value> = base
        .iter()
        .take(updated)
        .enumerate()
        .map(|(i, a)| {
            let mut attrs = with_id(a.clone(), format!("load-rule-{i:06}"));
            // A new value: the rule's threshold state starts afresh, as a real edit's would.
            attrs["expression"]["value"] = json!(200_000 + i);
            json!({"action": "UPDATE", "attributes": attrs})
        })
        .collect();
    let removes: Vec<Value> = (0..creates.len())
        .map(|i| json!({"action": "REMOVE", "attributes": {"id": format!("load-extra-{i:06}")}}))
        .collect();

    let mut figures = Vec::new();
    let mut in_place = 0u32;
    for (phase, requests, delta) in [
        ("setup", setup, 1i64),
        ("create", creates, 1),
        ("update", updates, 0),
        ("remove", removes, -1),
    ] {
        if requests.is_empty() {
            continue;
        }
        let n = requests.len();
        let f = run_phase(&client, cfg, phase, requests, in_place).await?;
        eprintln!(
            "{phase}: {} writes in {:.2} s ({:.0}/s), applied by every replica after {:.2} s ({:.0}/s)",
            f.writes, f.write_s, f.writes_per_s, f.applied_s, f.applied_per_s
        );
        in_place = (i64::from(in_place) + delta * i64::try_from(n).unwrap_or(0))
            .clamp(0, i64::from(u32::MAX)) as u32;
        figures.push(f);
    }
    Ok(figures)
}

fn create(attrs: Value) -> Value {
    json!({"action": "CREATE", "attributes": attrs})
}

async fn run_phase(
    client: &Client,
    cfg: &WritesConfig,
    phase: &str,
    requests: Vec<Value>,
    rules_before: u32,
) -> anyhow::Result<PhaseFigures> {
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let started = Instant::now();
    let workers: Vec<_> = (0..cfg.connections.max(1))
        .map(|_| {
            let (client, url) = (client.clone(), cfg.invoke_url.clone());
            let (requests, next) = (Arc::clone(&requests), Arc::clone(&next));
            let (refused, first_error) = (Arc::clone(&refused), Arc::clone(&first_error));
            tokio::spawn(async move {
                let mut latencies = hdrhistogram::Histogram::<u64>::new(3)?;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = requests.get(i) else {
                        return anyhow::Ok(latencies);
                    };
                    let sent = Instant::now();
                    if let Err(e) = invoke(&client, &url, body).await {
                        refused.fetch_add(1, Ordering::Relaxed);
                        first_error
                            .lock()
                            .map_err(|_| anyhow::anyhow!("poisoned"))?
                            .get_or_insert(format!("{e:#}"));
                    }
                    latencies
                        .record(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX))?;
                }
            })
        })
        .collect();
    let mut latencies = hdrhistogram::Histogram::<u64>::new(3)?;
    for w in workers {
        latencies.add(w.await??)?;
    }
    let write_s = started.elapsed().as_secs_f64();
    let refused = refused.load(Ordering::Relaxed);
    if let Some(e) = first_error
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .take()
    {
        anyhow::bail!("{phase}: {refused} writes refused, the first: {e}");
    }
    let writes = requests.len() as u64;
    let applied_s = settled_generation(client, &cfg.metrics_urls)
        .await?
        .duration_since(started)
        .as_secs_f64();
    let ms = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
    Ok(PhaseFigures {
        phase: phase.to_owned(),
        rules_before,
        writes,
        refused,
        write_s,
        writes_per_s: writes as f64 / write_s,
        applied_s,
        applied_per_s: writes as f64 / applied_s,
        latency_p50_ms: ms(0.5),
        latency_p99_ms: ms(0.99),
        latency_max_ms: latencies.max() as f64 / 1000.0,
    })
}

async fn invoke(client: &Client, url: &Url, body: &Value) -> anyhow::Result<()> {
    let response = client
        .post(url.clone())
        .json(body)
        .send()
        .await
        .context("send")?;
    let failed = response.headers().contains_key("x-amz-function-error");
    let status = response.status();
    let text = response.text().await.context("read the answer")?;
    anyhow::ensure!(
        status.is_success() && !failed,
        "{status}: {}",
        text.chars().take(300).collect::<String>()
    );
    Ok(())
}

async fn generations(client: &Client, urls: &[Url]) -> anyhow::Result<Vec<i64>> {
    let mut out = Vec::with_capacity(urls.len());
    for url in urls {
        let body = get(client, url).await?;
        let text = String::from_utf8_lossy(&body);
        // A gauge of whole generations, exposed as a float.
        out.push(counter_sum(&text, GENERATION_GAUGE)? as i64);
    }
    Ok(out)
}

/// When every replica first reported the generation they then all kept for [`SETTLED`].
async fn settled_generation(client: &Client, urls: &[Url]) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + APPLY_TIMEOUT;
    // The generation all replicas agree on and since when.
    let mut agreed: Option<(i64, Instant)> = None;
    loop {
        let now = Instant::now();
        let g = generations(client, urls).await?;
        let same = g.windows(2).all(|w| w[0] == w[1]);
        match (same, agreed, g.first().copied()) {
            (true, Some((value, since)), Some(first)) if value == first => {
                if now.duration_since(since) >= SETTLED {
                    return Ok(since);
                }
            }
            (true, _, Some(first)) => agreed = Some((first, now)),
            _ => agreed = None,
        }
        anyhow::ensure!(
            now < deadline,
            "replicas did not settle on a rule generation within {APPLY_TIMEOUT:?}: {g:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
