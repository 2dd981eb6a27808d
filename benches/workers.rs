//! Observations per second at 1 and 2 `engine.workers`, from a synthetic in-process source (no
//! broker): the whole pipeline as the service runs it, metrics recorder included: parse,
//! directory, 10,000 rules, local threshold state, record building, the redelivery window, and
//! the spool's group commit with fsync on this machine's disk (`objects.sink = "none"`: sealed
//! batches are read back and dropped). The data is `rule_eval`'s (100,000 things), the
//! expressions never match, so no webhook is sent.
//!
//! Each run starts a fresh engine on a fresh temporary directory, hands it `--observations`
//! messages as fast as it takes them, closes the channel and waits until every worker has
//! drained and the spool has committed everything (the engine's shutdown). Worker counts are
//! interleaved run by run, so the machine's drift spreads over both.
//!
//! Run: `cargo bench --bench workers [-- --workers 1,2 --observations 1000000 --runs 5
//! --linger-us 1000]` (`--linger-us`: `objects.commit_linger_us`, default its default).
//! Prints one line per run (observations/s, CPU per observation of the whole process) and the
//! median per worker count.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use ccstream::config::Config;
use ccstream::engine::{self, Intake};
use ccstream::store::RuleStore;
use ingest::{AckToken, Acker, Inbound, ShadowUpdate};
use rule_engine::Directory;
use sinks::objects::config::SinkKind;
use tokio::sync::{mpsc, Notify};

mod data;

use data::{directory, observations, rules, Lcg};

/// Distinct payloads the messages cycle through.
const DISTINCT: usize = 8_192;

struct Options {
    workers: Vec<usize>,
    observations: usize,
    runs: usize,
    /// `objects.commit_linger_us`; the default when not given.
    linger_us: Option<u64>,
}

impl Options {
    /// `cargo bench` adds `--bench`; other flags are ours.
    fn parse() -> anyhow::Result<Options> {
        let mut options = Options {
            workers: vec![1, 2],
            observations: 1_000_000,
            runs: 5,
            linger_us: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--workers" => {
                    options.workers = value()?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()
                        .context("--workers: a list like 1,2")?;
                }
                "--observations" => options.observations = value()?.parse()?,
                "--runs" => options.runs = value()?.parse()?,
                "--linger-us" => options.linger_us = Some(value()?.parse()?),
                _ => {}
            }
        }
        Ok(options)
    }
}

/// What one run measured.
struct Run {
    per_second: f64,
    cpu_us_per_observation: f64,
    /// Of that, the runtime's threads (workers, dispatcher, acks, uploads) and the main thread
    /// (the synthetic source); the rest ran on threads that ended with the run (the spool's
    /// and the outbox's).
    runtime_us: f64,
    source_us: f64,
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        ccstream::telemetry::init_metrics()?;
        let mut rng = Lcg(0x5eed);
        let directory = directory(&mut rng);
        let rules = rules(&mut rng);
        let payloads: Vec<(String, Bytes)> = observations(&mut rng, DISTINCT)
            .into_iter()
            .map(|(thing, raw)| (thing, Bytes::from(raw)))
            .collect();
        eprintln!(
            "workers: {} rules, {} things, {} messages per run, {} cores",
            rules.len(),
            directory.len(),
            options.observations,
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        );
        let mut results: Vec<(usize, Vec<Run>)> =
            options.workers.iter().map(|&w| (w, Vec::new())).collect();
        for run in 1..=options.runs {
            for (workers, runs) in &mut results {
                let result = one_run(
                    *workers,
                    options.linger_us,
                    options.observations,
                    &directory,
                    &rules,
                    &payloads,
                )
                .await?;
                println!(
                    "run {run} workers {workers}: {:.0} observations/s, {:.2} µs CPU per observation \
                     (runtime threads {:.2}, source {:.2}, spool and outbox {:.2})",
                    result.per_second,
                    result.cpu_us_per_observation,
                    result.runtime_us,
                    result.source_us,
                    result.cpu_us_per_observation - result.runtime_us - result.source_us,
                );
                runs.push(result);
            }
        }
        let base = median(&results[0].1, |r| r.per_second);
        for (workers, runs) in &results {
            let rate = median(runs, |r| r.per_second);
            println!(
                "median workers {workers}: {rate:.0} observations/s ({:.2}× {} workers), {:.2} µs CPU per observation",
                rate / base,
                results[0].0,
                median(runs, |r| r.cpu_us_per_observation),
            );
        }
        anyhow::Ok(())
    })
}

async fn one_run(
    workers: usize,
    linger_us: Option<u64>,
    count: usize,
    directory: &Directory,
    rules: &[rule_engine::Rule],
    payloads: &[(String, Bytes)],
) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let mut config = Config::default();
    config.store.url = format!("sqlite://{}", dir.path().join("rules.db").display());
    config.objects.sink = SinkKind::None;
    config.objects.dir = dir.path().join("observations");
    config.objects.spool_dir = dir.path().join("spool");
    config.webhook.outbox_dir = dir.path().join("outbox");
    config.engine.workers = Some(workers);
    if let Some(linger_us) = linger_us {
        config.objects.commit_linger_us = linger_us;
    }
    let store = RuleStore::connect(&config.store.url).await?;
    // Concurrent creates share the group writer's commits.
    let mut creates = tokio::task::JoinSet::new();
    for rule in rules {
        let (store, rule) = (store.clone(), rule.clone());
        creates.spawn(async move { store.insert(&rule).await });
    }
    while let Some(created) = creates.join_next().await {
        created??;
    }

    let (tx, rx) = mpsc::channel(config.mqtt.inflight);
    let engine = engine::start_with(
        &config,
        &store,
        Arc::new(RwLock::new(directory.clone())),
        Arc::new(Notify::new()),
        Intake::InProcess {
            inbound: rx,
            acker: Acker::without_broker(),
            client_id: "bench".to_owned(),
        },
    )
    .await?;
    let received_at_ms = 1_700_000_000_000;
    let messages: Vec<Inbound> = (0..count)
        .map(|i| {
            let (thing, payload) = &payloads[i % payloads.len()];
            Inbound::Shadow(ShadowUpdate {
                thing_name: thing.clone(),
                topic_domain: None,
                received_at_ms: received_at_ms + i as u64,
                payload: payload.clone(),
                dup: false,
                pkid: 0,
                ack: AckToken::not_required(),
            })
        })
        .collect();

    let cpu_before = process_on_cpu_ns()?;
    let threads_before = threads_on_cpu_ns()?;
    let started = Instant::now();
    for message in messages {
        tx.send(message)
            .await
            .context("the engine stopped taking messages")?;
    }
    drop(tx);
    engine.shutdown(Duration::from_secs(300)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process_on_cpu_ns()?.saturating_sub(cpu_before) as f64;
    let threads = threads_on_cpu_ns()?;
    let spent = |name: &str| {
        let ns = |t: &[(String, u64)]| -> u64 {
            t.iter().filter(|(n, _)| n == name).map(|(_, ns)| ns).sum()
        };
        ns(&threads).saturating_sub(ns(&threads_before)) as f64 / 1e3 / count as f64
    };
    Ok(Run {
        per_second: count as f64 / elapsed,
        cpu_us_per_observation: cpu / 1e3 / count as f64,
        runtime_us: spent("tokio-rt-worker"),
        source_us: spent("main"),
    })
}

/// Nanoseconds this process has run on a CPU, threads that ended included (`/proc/self/stat`,
/// user and system time in USER_HZ ticks, which Linux fixes at 100 per second).
fn process_on_cpu_ns() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("/proc/self/stat")?
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15; `fields[0]` is field 3.
    let ticks: u64 = [11, 12]
        .iter()
        .map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum::<Option<u64>>()
        .context("/proc/self/stat: utime, stime")?;
    Ok(ticks * 10_000_000)
}

/// (name, ns on a CPU) of each thread alive now; the main thread is named `main`.
fn threads_on_cpu_ns() -> anyhow::Result<Vec<(String, u64)>> {
    let main = std::process::id().to_string();
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")? {
        let task = task?;
        let ns: u64 = std::fs::read_to_string(task.path().join("schedstat"))?
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse().ok())
            .context("schedstat")?;
        let name = if task.file_name().to_str() == Some(main.as_str()) {
            "main".to_owned()
        } else {
            std::fs::read_to_string(task.path().join("comm"))?
                .trim()
                .to_owned()
        };
        out.push((name, ns));
    }
    Ok(out)
}

fn median(runs: &[Run], figure: impl Fn(&Run) -> f64) -> f64 {
    let mut values: Vec<f64> = runs.iter().map(figure).collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}
