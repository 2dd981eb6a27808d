//! `--ccstream-metrics`: one counter of ccstream's Prometheus `/metrics`, at one or more replicas,
//! polled during a run ([`CounterWatch`]). The text-format sum ([`counter_sum`]) is pure.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::{Client, Url};

/// The counter ccstream increments for each observation it spooled (and so acknowledged).
pub const STORED_COUNTER: &str = "ccstream_objects_records_total";

/// Bigger answers are refused: ccstream's whole `/metrics` is tens of KiB, so more is not it.
const MAX_RESPONSE: usize = 16 << 20;
/// Per request, body included: a stalled scrape must not hold up the end of a run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// GETs `url` and returns the body of a 2xx answer, at most [`MAX_RESPONSE`] bytes.
pub(crate) async fn get(client: &Client, url: &Url) -> anyhow::Result<Vec<u8>> {
    let mut response = client
        .get(url.clone())
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("GET {url}"))?;
    // Read chunk by chunk: a chunked body has no Content-Length to check up front.
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .with_context(|| format!("GET {url}: read the body"))?
    {
        anyhow::ensure!(
            body.len() + chunk.len() <= MAX_RESPONSE,
            "GET {url}: answer over {MAX_RESPONSE} bytes"
        );
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The sum over all label sets of counter `name` in Prometheus text exposition format. Samples of
/// other metrics, including ones that only start with `name`, do not count; a counter that is not
/// there yet (nothing counted) sums to 0.
pub fn counter_sum(text: &str, name: &str) -> anyhow::Result<f64> {
    let mut sum = 0.0;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(after) = line.strip_prefix(name) else {
            continue;
        };
        // The name goes on (`name_x`): another metric that only starts like this one.
        if !(after.is_empty() || after.starts_with(['{', ' ', '\t'])) {
            continue;
        }
        let after = after.trim_start();
        let rest = match after.strip_prefix('{') {
            Some(labels) => {
                let end = labels_end(labels)
                    .with_context(|| format!("line {}: unclosed labels: {line:?}", i + 1))?;
                &labels[end..]
            }
            None => after,
        };
        let value = rest
            .split_whitespace()
            .next()
            .with_context(|| format!("line {}: no value: {line:?}", i + 1))?;
        let v: f64 = value
            .parse()
            .with_context(|| format!("line {}: bad value {value:?}", i + 1))?;
        anyhow::ensure!(v.is_finite(), "line {}: counter value {value}", i + 1);
        sum += v;
    }
    Ok(sum)
}

/// Where the label set that `s` starts inside ends: just past its `}`. Label values are quoted
/// and may hold `}`, `"` and `\` escaped with `\`.
fn labels_end(s: &str) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in s.char_indices() {
        match (quoted, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => quoted = false,
            (false, _, '"') => quoted = true,
            (false, _, '}') => return Some(i + 1),
            _ => {}
        }
    }
    None
}

#[derive(Debug)]
struct Progress {
    /// Each change of the counter's growth since the start (summed over the endpoints), with
    /// when it was seen. Bounded by the run's length over the poll interval.
    changes: Vec<(Instant, u64)>,
    /// Each endpoint's growth as last seen, in the order given.
    per_endpoint: Vec<u64>,
    last_change: Instant,
    last_error: Option<String>,
}

/// One `/metrics` endpoint and the counter's value there at the start.
#[derive(Debug)]
struct Endpoint {
    url: Url,
    base: f64,
}

/// Counter `name` at one or more `/metrics` endpoints (one per ccstream replica): its value at
/// the start, then polled, summed over the endpoints. Counts only growth after the start, so
/// earlier runs against the same ccstream do not count.
#[derive(Debug)]
pub struct CounterWatch {
    /// One client for every poll: it keeps the connections to ccstream alive between them.
    client: Client,
    endpoints: Vec<Endpoint>,
    name: String,
    /// std `Mutex`: held for a push or a read, never across an `.await`.
    progress: Mutex<Progress>,
}

impl CounterWatch {
    /// Reads the start values; fails when an endpoint does not answer.
    pub async fn start(urls: &[String], name: &str) -> anyhow::Result<Arc<CounterWatch>> {
        anyhow::ensure!(!urls.is_empty(), "--ccstream-metrics: no URL");
        let client = Client::builder()
            .timeout(REQUEST_TIMEOUT)
            // ccstream is on loopback; an HTTP(S)_PROXY set for the outside world must not
            // catch the scrape.
            .no_proxy()
            .build()
            .context("HTTP client for --ccstream-metrics")?;
        let mut endpoints = Vec::with_capacity(urls.len());
        for url in urls {
            let url = Url::parse(url).with_context(|| format!("--ccstream-metrics {url:?}"))?;
            let base = read_counter(&client, &url, name)
                .await
                .with_context(|| format!("--ccstream-metrics: the start value of {name}"))?;
            endpoints.push(Endpoint { url, base });
        }
        Ok(Arc::new(CounterWatch {
            client,
            name: name.to_owned(),
            progress: Mutex::new(Progress {
                changes: Vec::new(),
                per_endpoint: vec![0; endpoints.len()],
                last_change: Instant::now(),
                last_error: None,
            }),
            endpoints,
        }))
    }

    /// The counter's current value at every endpoint, read at the same time.
    async fn read(&self) -> anyhow::Result<Vec<f64>> {
        let reads: Vec<_> = self
            .endpoints
            .iter()
            .map(|e| {
                let (client, url, name) = (self.client.clone(), e.url.clone(), self.name.clone());
                tokio::spawn(async move { read_counter(&client, &url, &name).await })
            })
            .collect();
        let mut values = Vec::with_capacity(reads.len());
        for read in reads {
            values.push(read.await.context("a /metrics read panicked")??);
        }
        Ok(values)
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the counter once at every endpoint. A failed read is kept as the last error, not
    /// returned, and leaves the growth as it was (a sum over some endpoints would be wrong): a
    /// slow scrape in the middle of a run should not end the run.
    pub async fn poll(&self) {
        let values = self.read().await;
        let now = Instant::now();
        let mut p = self.progress();
        match values {
            Ok(values) => {
                // A restarted ccstream starts from 0 again: no growth rather than a wrap.
                p.per_endpoint = values
                    .iter()
                    .zip(&self.endpoints)
                    .map(|(v, e)| (v - e.base).max(0.0) as u64)
                    .collect();
                let delta = p.per_endpoint.iter().sum();
                if p.changes.last().map_or(delta > 0, |&(_, d)| d != delta) {
                    p.changes.push((now, delta));
                    p.last_change = now;
                }
            }
            Err(e) => p.last_error = Some(format!("{e:#}")),
        }
    }

    /// Polls every `every` until the returned task is aborted.
    pub fn spawn_poller(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.poll().await;
            }
        })
    }

    /// Growth since the start (summed over the endpoints) as last seen, and when it last
    /// changed (the start if never).
    pub fn growth(&self) -> (u64, Instant) {
        let p = self.progress();
        (p.changes.last().map_or(0, |&(_, d)| d), p.last_change)
    }

    /// Each endpoint's growth since the start as last seen, in the order given.
    pub fn growth_per_endpoint(&self) -> Vec<u64> {
        self.progress().per_endpoint.clone()
    }

    /// When the summed growth was first seen at or over `target`.
    pub fn reached(&self, target: u64) -> Option<Instant> {
        first_reaching(&self.progress().changes, target)
    }

    pub fn last_error(&self) -> Option<String> {
        self.progress().last_error.clone()
    }
}

/// Counter `name` at `url`.
async fn read_counter(client: &Client, url: &Url, name: &str) -> anyhow::Result<f64> {
    let body = get(client, url).await?;
    counter_sum(&String::from_utf8_lossy(&body), name)
        .with_context(|| format!("{name} in the answer of {url}"))
}

/// The first time in `changes` (in time order) whose value is at least `target`.
fn first_reaching(changes: &[(Instant, u64)], target: u64) -> Option<Instant> {
    changes.iter().find(|&&(_, d)| d >= target).map(|&(t, _)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "\
# HELP ccstream_objects_records_total Records spooled.
# TYPE ccstream_objects_records_total counter
ccstream_objects_records_total{kind=\"observations\"} 3e5
ccstream_objects_records_total{kind=\"errors\",note=\"a } \\\" b\"} 12
ccstream_objects_records_total_x{kind=\"observations\"} 1000
ccstream_objects_records_totalx 7
ccstream_objects_records 5
#ccstream_objects_records_total 99
  # TYPE other counter
other_total{of=\"ccstream_objects_records_total\"} 4
";

    #[test]
    fn sums_a_counter_over_labels_only() {
        let s = counter_sum(METRICS, STORED_COUNTER).expect("sum");
        assert_eq!(s, 300_012.0);
    }

    #[test]
    fn counter_without_labels_with_timestamp_or_absent() {
        assert_eq!(
            counter_sum(
                "c_total 42 1712345678000\nc_total{a=\"1\"} 1.5\n",
                "c_total"
            )
            .expect("ok"),
            43.5
        );
        assert_eq!(counter_sum("other 1\n", "c_total").expect("ok"), 0.0);
        assert_eq!(counter_sum("", "c_total").expect("ok"), 0.0);
    }

    #[test]
    fn bad_counter_values_are_errors() {
        assert!(counter_sum("c_total abc\n", "c_total").is_err());
        assert!(counter_sum("c_total{a=\"1\" 5\n", "c_total").is_err());
        assert!(counter_sum("c_total\n", "c_total").is_err());
        assert!(counter_sum("c_total +Inf\n", "c_total").is_err());
    }

    #[test]
    fn first_time_a_target_was_reached() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let changes = [(at(50), 10), (at(100), 90), (at(150), 100), (at(200), 120)];
        assert_eq!(first_reaching(&changes, 100), Some(at(150)));
        assert_eq!(first_reaching(&changes, 1), Some(at(50)));
        assert_eq!(first_reaching(&changes, 121), None);
    }

    /// Against an axum server like ccstream's: the GET, the sum, growth between polls, and the
    /// answers that are errors.
    #[tokio::test]
    async fn reads_a_counter_from_an_axum_server() {
        use std::sync::atomic::{AtomicU64, Ordering};

        use axum::routing::get as route;
        let stored = Arc::new(AtomicU64::new(5));
        let served = stored.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new()
            .route(
                "/metrics",
                route(move || async move {
                    match served.load(Ordering::Relaxed) {
                        u64::MAX => Err(axum::http::StatusCode::SERVICE_UNAVAILABLE),
                        n => Ok(format!("{METRICS}{STORED_COUNTER}{{kind=\"test\"}} {n}\n")),
                    }
                }),
            )
            .route("/huge", route(|| async { "x".repeat(MAX_RESPONSE + 1) }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let url = |path: &str| vec![format!("http://{addr}{path}")];
        let watch = CounterWatch::start(&url("/metrics"), STORED_COUNTER)
            .await
            .expect("start");
        assert_eq!(watch.endpoints[0].base, 300_017.0);
        watch.poll().await;
        assert_eq!(watch.growth().0, 0);
        stored.store(12, Ordering::Relaxed);
        watch.poll().await;
        assert_eq!(watch.growth().0, 7);
        assert_eq!(watch.growth_per_endpoint(), [7]);
        assert!(watch.reached(7).is_some());
        assert_eq!(watch.last_error(), None);
        // A failed poll is kept as the last error and leaves the growth as it was.
        stored.store(u64::MAX, Ordering::Relaxed);
        watch.poll().await;
        assert_eq!(watch.growth().0, 7);
        let err = watch.last_error().expect("503 kept");
        assert!(err.contains("503"), "{err}");

        let err = CounterWatch::start(&url("/nope"), STORED_COUNTER)
            .await
            .expect_err("404");
        assert!(format!("{err:#}").contains("404"), "{err:#}");
        let err = CounterWatch::start(&url("/huge"), STORED_COUNTER)
            .await
            .expect_err("too big");
        assert!(format!("{err:#}").contains("bytes"), "{err:#}");
        assert!(
            CounterWatch::start(&["not a url".to_owned()], STORED_COUNTER)
                .await
                .is_err()
        );
        assert!(CounterWatch::start(&[], STORED_COUNTER).await.is_err());
    }

    /// Several replicas: the growth is summed over the endpoints and kept per endpoint; one
    /// endpoint that fails leaves both as they were.
    #[tokio::test]
    async fn sums_growth_over_several_endpoints() {
        use std::sync::atomic::{AtomicU64, Ordering};

        use axum::extract::Path;
        use axum::routing::get as route;
        let counters: Arc<[AtomicU64; 3]> = Arc::new([100, 0, 40].map(AtomicU64::new));
        let served = counters.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().route(
            "/{replica}/metrics",
            route(move |Path(i): Path<usize>| async move {
                match served[i].load(Ordering::Relaxed) {
                    u64::MAX => Err(axum::http::StatusCode::SERVICE_UNAVAILABLE),
                    n => Ok(format!("{STORED_COUNTER}{{kind=\"observations\"}} {n}\n")),
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let urls: Vec<String> = (0..3)
            .map(|i| format!("http://{addr}/{i}/metrics"))
            .collect();
        let watch = CounterWatch::start(&urls, STORED_COUNTER)
            .await
            .expect("start");
        counters[0].store(110, Ordering::Relaxed);
        counters[2].store(45, Ordering::Relaxed);
        watch.poll().await;
        assert_eq!(watch.growth().0, 15);
        assert_eq!(watch.growth_per_endpoint(), [10, 0, 5]);
        assert!(watch.reached(16).is_none());
        counters[1].store(1, Ordering::Relaxed);
        watch.poll().await;
        assert_eq!(watch.growth().0, 16);
        assert!(watch.reached(16).is_some());
        counters[1].store(u64::MAX, Ordering::Relaxed);
        counters[0].store(500, Ordering::Relaxed);
        watch.poll().await;
        assert_eq!(watch.growth().0, 16);
        assert_eq!(watch.growth_per_endpoint(), [10, 1, 5]);
        assert!(watch.last_error().expect("503 kept").contains("503"));
    }
}
