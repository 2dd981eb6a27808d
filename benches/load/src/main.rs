//! `ccstream-load`: parses the command line and wires the library's parts; see `lib.rs`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ccstream_load::payload::{topic_filter, AWS_TOPIC_TEMPLATE};
use ccstream_load::procstat::{self, parse_name_pid, CpuWatch, Spec, Target};
use ccstream_load::publish::{self, parse_broker, Counters, Outcome, PublishConfig};
use ccstream_load::receiver::{self, Receiver};
use ccstream_load::report::{per_message_us, ProcessCpu, ReplicaFigures, Report};
use ccstream_load::scrape::{CounterWatch, STORED_COUNTER};
use ccstream_load::{rule_writes, scenario, subscriber};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rumqttc::QoS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Publish shadow updates (and receive webhooks with --receiver).
    Publish,
    /// Only subscribe to the same topics and count messages: the broker's own ceiling.
    BareSubscriber,
    /// Only serve the receiver (webhooks and the `_bulk` stand-in) until --count documents
    /// were indexed or --duration seconds passed: how fast ccstream catches up with a backlog.
    Receive,
    /// Write rules through the RuleLambda API of --api (--rules created, then --count created,
    /// updated and removed, over --connections clients) and wait after each phase until every
    /// --ccstream-metrics replica has applied them.
    RuleWrites,
}

/// Load generator for ccstream's end-to-end benchmark: publishes shadow updates over MQTT,
/// receives the rules' webhooks, reports throughput and latency.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[arg(long, value_enum, default_value = "publish")]
    mode: Mode,
    /// MQTT broker, `mqtt://host:port`.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    broker: String,
    /// Topic; `{thing}` is the thing name (`thing-update/{thing}` for the embedded broker).
    #[arg(long, default_value = AWS_TOPIC_TEMPLATE)]
    topic_template: String,
    /// Number of things, named thing-000001, thing-000002, ...
    #[arg(long, default_value_t = 1000)]
    things: u32,
    /// Messages per second over all connections; 0: as fast as the broker takes them.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// MQTT QoS, 0 or 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Publishing connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Unacknowledged QoS 1 publishes per connection.
    #[arg(long, default_value_t = 100)]
    inflight: u16,
    /// Messages to publish (or to wait for, in bare-subscriber mode). Default 10000 when
    /// --duration is not given either.
    #[arg(long)]
    count: Option<u64>,
    /// Seconds to publish (or to listen, in bare-subscriber mode).
    #[arg(long)]
    duration: Option<f64>,
    /// Share of updates with temp >= 100, which the generated rules turn into webhooks.
    #[arg(long, default_value_t = 0.01)]
    fire_ratio: f64,
    /// Serve a webhook receiver on this address (e.g. 127.0.0.1:8090).
    #[arg(long)]
    receiver: Option<SocketAddr>,
    /// After publishing, wait this many seconds without a new webhook (or subscriber message,
    /// or observation stored by ccstream) before reporting.
    #[arg(long, default_value_t = 3.0)]
    drain_secs: f64,
    /// ccstream's pid, repeatable (once per replica): report its CPU seconds over the run (and
    /// per message published) and its peak RSS (VmHWM, since it started) at the end; with
    /// several replicas the CPU is summed, the peak RSS is the largest, and each replica's
    /// figures come as `replicas`. Linux only.
    #[arg(long = "ccstream-pid", value_name = "PID")]
    ccstream_pids: Vec<u32>,
    /// `NAME=PID`, repeatable: report the CPU seconds of another process over the run (and per
    /// message), e.g. `mosquitto=1234`. The generator's own CPU comes as `generator`.
    #[arg(long = "cpu-pid", value_name = "NAME=PID", value_parser = parse_name_pid)]
    cpu_pids: Vec<(String, u32)>,
    /// ccstream's Prometheus endpoint (`http://127.0.0.1:8080/metrics`), repeatable (once per
    /// replica, in the order of --ccstream-pid): after publishing, wait until
    /// `ccstream_objects_records_total`, summed over the replicas, grew by the messages published
    /// (or --drain-secs without growth) and report the observations stored (also per replica)
    /// and the end-to-end rate.
    #[arg(long = "ccstream-metrics", value_name = "URL")]
    ccstream_metrics: Vec<String>,
    /// ccstream's API, `http://host:port` (--mode rule-writes).
    #[arg(long)]
    api: Option<String>,
    /// Write the report as JSON to this file too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress bar (it is hidden anyway when stderr is not a terminal).
    #[arg(long)]
    no_progress: bool,
    /// Write a directory snapshot of --things things over --thing-types types, and exit.
    #[arg(long, requires = "gen_rules")]
    gen_directory: Option<PathBuf>,
    /// Write --rules RuleLambda CREATE attributes as a JSON list, and exit.
    #[arg(long, requires = "gen_directory")]
    gen_rules: Option<PathBuf>,
    #[arg(long, default_value_t = 1000)]
    thing_types: u32,
    #[arg(long, default_value_t = 10_000)]
    rules: u32,
    /// The generated rules' webhook URL (the receiver's address; ccstream needs
    /// `webhook.allow_cidrs` to reach loopback).
    #[arg(long, default_value = "http://127.0.0.1:8090/hook")]
    webhook_url: String,
    /// Give the rules that never match (`temp < -100`) `threshold.count = 2`: every update of
    /// their thing types then has a threshold step (a miss that resets a run), which is what
    /// threshold state in Redis pays for.
    #[arg(long)]
    counting_rules: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let (Some(dir), Some(rules)) = (&args.gen_directory, &args.gen_rules) {
        return generate(&args, dir, rules);
    }
    let report = match args.mode {
        // Its own figures, one row per phase.
        Mode::RuleWrites => return run_rule_writes(&args).await,
        Mode::Publish => run_publish(&args).await?,
        Mode::BareSubscriber => run_subscriber(&args).await?,
        Mode::Receive => run_receive(&args).await?,
    };
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

fn generate(args: &Args, dir: &PathBuf, rules: &PathBuf) -> anyhow::Result<()> {
    let d = scenario::directory(args.things, args.thing_types);
    std::fs::write(dir, serde_json::to_vec(&d)?)
        .with_context(|| format!("write {}", dir.display()))?;
    let r = scenario::rules(
        args.rules,
        args.thing_types,
        &args.webhook_url,
        args.counting_rules,
    );
    std::fs::write(rules, serde_json::to_vec(&r)?)
        .with_context(|| format!("write {}", rules.display()))?;
    eprintln!(
        "wrote {} things over {} types to {}, {} rules to {}",
        args.things,
        args.thing_types,
        dir.display(),
        args.rules,
        rules.display()
    );
    Ok(())
}

async fn run_rule_writes(args: &Args) -> anyhow::Result<()> {
    let api = args
        .api
        .as_deref()
        .context("--mode rule-writes needs --api")?;
    let api = api.trim_end_matches('/');
    let invoke_url = format!("{api}/2015-03-31/functions/RuleLambda/invocations")
        .parse()
        .context("--api")?;
    let mut metrics_urls = vec![format!("{api}/metrics").parse().context("--api")?];
    for url in &args.ccstream_metrics {
        metrics_urls.push(
            url.parse()
                .with_context(|| format!("--ccstream-metrics {url}"))?,
        );
    }
    metrics_urls.dedup();
    let cfg = rule_writes::WritesConfig {
        invoke_url,
        metrics_urls,
        rules: args.rules,
        count: u32::try_from(count(args).unwrap_or(2000)).unwrap_or(u32::MAX),
        connections: args.connections,
        thing_types: args.thing_types,
        webhook_url: args.webhook_url.clone(),
    };
    let figures = rule_writes::run(&cfg).await?;
    println!(
        "{:<7} {:>7} {:>7} {:>8} {:>9} {:>10} {:>11} {:>8} {:>8}",
        "phase",
        "before",
        "writes",
        "write s",
        "writes/s",
        "applied s",
        "applied/s",
        "p50 ms",
        "p99 ms"
    );
    for f in &figures {
        println!(
            "{:<7} {:>7} {:>7} {:>8.2} {:>9.0} {:>10.2} {:>11.0} {:>8.1} {:>8.1}",
            f.phase,
            f.rules_before,
            f.writes,
            f.write_s,
            f.writes_per_s,
            f.applied_s,
            f.applied_per_s,
            f.latency_p50_ms,
            f.latency_p99_ms
        );
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&figures)?;
        std::fs::write(path, json).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

fn qos(args: &Args) -> QoS {
    if args.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

fn count(args: &Args) -> Option<u64> {
    match (args.count, args.duration) {
        (None, None) => Some(10_000),
        (c, _) => c,
    }
}

fn progress(args: &Args, len: Option<u64>) -> ProgressBar {
    let pb = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    if args.no_progress || !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {per_sec} {msg}",
    ) {
        pb.set_style(style);
    }
    pb
}

fn base_report(args: &Args, mode: &str) -> Report {
    Report {
        mode: mode.to_owned(),
        qos: args.qos,
        connections: args.connections,
        things: args.things,
        target_rate: (args.rate > 0.0).then_some(args.rate),
        ..Report::default()
    }
}

/// Aborts a background task when dropped, also when the run ends early with an error.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The processes whose CPU the run reports: the ccstream replicas first when given, the
/// generator itself when `/proc` has it (best effort: the rest of the report does not need
/// Linux), then `--cpu-pid`.
fn cpu_specs(args: &Args) -> anyhow::Result<Vec<Spec>> {
    let mut specs = Vec::new();
    for (i, &pid) in args.ccstream_pids.iter().enumerate() {
        specs.push(Spec {
            name: match args.ccstream_pids.len() {
                1 => "ccstream".to_owned(),
                _ => format!("ccstream replica {}", i + 1),
            },
            target: Target::Pid(pid),
            peak_rss: true,
        });
    }
    if procstat::read_stat(Target::Myself).is_ok() {
        specs.push(Spec {
            name: "generator".into(),
            target: Target::Myself,
            peak_rss: false,
        });
    }
    // Names key the report's `cpu` map, which ccstream's own entries are not part of (their
    // figures are fields of their own), so only the entries after them must be unique.
    let skip = args.ccstream_pids.len();
    for (name, pid) in &args.cpu_pids {
        anyhow::ensure!(
            specs[skip..].iter().all(|s| &s.name != name),
            "--cpu-pid {name}={pid}: the name {name:?} is already taken"
        );
        specs.push(Spec {
            name: name.clone(),
            target: Target::Pid(*pid),
            peak_rss: false,
        });
    }
    Ok(specs)
}

async fn run_publish(args: &Args) -> anyhow::Result<Report> {
    let (pids, urls) = (args.ccstream_pids.len(), args.ccstream_metrics.len());
    anyhow::ensure!(
        pids == 0 || urls == 0 || pids == urls,
        "{pids} --ccstream-pid but {urls} --ccstream-metrics: give both once per replica, \
         in the same order"
    );
    let (host, port) = parse_broker(&args.broker)?;
    let webhooks = match args.receiver {
        Some(addr) => {
            let state = Arc::new(Receiver::default());
            let bound = receiver::serve(addr, state.clone()).await?;
            eprintln!("webhook receiver on http://{bound}");
            Some(state)
        }
        None => None,
    };
    let procs = Arc::new(CpuWatch::start(cpu_specs(args)?)?);
    let stored = match args.ccstream_metrics.as_slice() {
        [] => None,
        urls => Some(CounterWatch::start(urls, STORED_COUNTER).await?),
    };
    let counters = Arc::new(Counters::default());
    let cfg = PublishConfig {
        host,
        port,
        topic_template: args.topic_template.clone(),
        things: args.things,
        connections: args.connections,
        qos: qos(args),
        rate: (args.rate > 0.0).then_some(args.rate),
        count: count(args),
        duration: args.duration.map(Duration::from_secs_f64),
        fire_ratio: args.fire_ratio,
        inflight: args.inflight,
    };
    let pb = progress(args, cfg.count);
    let ticker = {
        let (pb, counters, webhooks) = (pb.clone(), counters.clone(), webhooks.clone());
        AbortOnDrop(tokio::spawn(async move {
            loop {
                pb.set_position(counters.published.load(Ordering::Relaxed));
                if let Some(w) = &webhooks {
                    pb.set_message(format!("webhooks {}", w.received.load(Ordering::Relaxed)));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }))
    };
    // Polled during the run, not only read at its end: a process that exits first (the bare
    // subscriber, once it has its count) still has a recent reading.
    let cpu_poller = AbortOnDrop(procs.spawn_poller(Duration::from_millis(100)));
    let stored_poller = stored
        .as_ref()
        .map(|s| AbortOnDrop(s.spawn_poller(Duration::from_millis(50))));
    let started = Instant::now();
    let outcome = publish::run(cfg, counters).await;
    // At once, not at the next poll: the bare subscriber exits as soon as it has its count.
    procs.sample();
    drop(ticker);
    pb.finish_and_clear();
    let outcome = outcome?;
    let secs = outcome.elapsed.as_secs_f64();
    let mut report = Report {
        messages_published: Some(outcome.published),
        duration_s: secs,
        rate_per_s: outcome.published as f64 / secs.max(1e-9),
        ..base_report(args, "publish")
    };
    drain(args, &outcome, webhooks.as_deref(), stored.as_deref()).await;
    drop((cpu_poller, stored_poller));
    // The end readings: ccstream's CPU includes the drain, where it works off its backlog.
    procs.sample();
    if let Some(w) = webhooks {
        report.webhooks_expected = Some(outcome.hot);
        report.webhooks_received = Some(w.received.load(Ordering::Relaxed));
        let documents = w.documents.load(Ordering::Relaxed);
        report.search_documents = (documents > 0).then_some(documents);
        report.latency = w.latencies().summary();
    }
    // Several replicas: each one's figures too.
    let mut replicas = vec![ReplicaFigures::default(); pids.max(urls)];
    if replicas.len() == 1 {
        replicas.clear();
    }
    if let Some(s) = stored {
        s.poll().await;
        let (grown, _) = s.growth();
        report.observations_stored = Some(grown);
        for (r, n) in replicas.iter_mut().zip(s.growth_per_endpoint()) {
            r.observations_stored = Some(n);
        }
        match s
            .reached(outcome.published)
            .filter(|_| outcome.published > 0)
        {
            Some(at) => {
                let e2e = at.saturating_duration_since(started).as_secs_f64();
                report.end_to_end_s = Some(e2e);
                report.end_to_end_rate_per_s = Some(outcome.published as f64 / e2e.max(1e-9));
            }
            None => eprintln!(
                "WARNING: ccstream stored {grown} of {} observations{}",
                outcome.published,
                s.last_error()
                    .map(|e| format!("; last /metrics error: {e}"))
                    .unwrap_or_default()
            ),
        }
    }
    let mut usage = procs.usage().into_iter();
    if pids > 0 {
        let ccstream: Vec<_> = usage.by_ref().take(pids).collect();
        // Ticks summed before the conversion: the sum of the replicas' own figures, exactly.
        let cpu_s = procstat::ticks_to_s(ccstream.iter().map(|cc| cc.cpu_ticks).sum());
        report.ccstream_cpu_s = Some(cpu_s);
        report.ccstream_cpu_us_per_message = per_message_us(cpu_s, outcome.published);
        report.ccstream_peak_rss_mib = ccstream
            .iter()
            .filter_map(|cc| cc.peak_rss_kib)
            .max()
            .map(|k| k as f64 / 1024.0);
        for (i, cc) in ccstream.iter().enumerate() {
            if cc.exited {
                let which = if pids == 1 {
                    String::new()
                } else {
                    format!(" replica {} (pid {})", i + 1, args.ccstream_pids[i])
                };
                eprintln!(
                    "WARNING: ccstream{which} exited during the run; figures up to its last \
                     reading"
                );
            }
        }
        for ((r, cc), &pid) in replicas.iter_mut().zip(&ccstream).zip(&args.ccstream_pids) {
            r.pid = Some(pid);
            r.cpu_s = Some(cc.cpu_s());
            r.cpu_us_per_message = per_message_us(cc.cpu_s(), outcome.published);
            r.peak_rss_mib = cc.peak_rss_kib.map(|k| k as f64 / 1024.0);
            r.exited = cc.exited;
        }
    }
    report.replicas = replicas;
    report.cpu = usage
        .map(|u| {
            let cpu = ProcessCpu::new(u.cpu_s(), outcome.published, u.exited);
            (u.name, cpu)
        })
        .collect();
    Ok(report)
}

/// Waits for what trails the publishes: webhooks until all expected arrived, observations until
/// ccstream stored as many as were published; each gives up after --drain-secs without progress.
async fn drain(
    args: &Args,
    outcome: &Outcome,
    webhooks: Option<&Receiver>,
    stored: Option<&CounterWatch>,
) {
    let limit = Duration::from_secs_f64(args.drain_secs);
    let finished = Instant::now();
    let mut webhooks_seen = (
        webhooks.map_or(0, |w| w.received.load(Ordering::Relaxed)),
        finished,
    );
    loop {
        let webhooks_due = webhooks.is_some_and(|w| {
            let now = w.received.load(Ordering::Relaxed);
            if now != webhooks_seen.0 {
                webhooks_seen = (now, Instant::now());
            }
            now < outcome.hot && webhooks_seen.1.elapsed() < limit
        });
        let stored_due = stored.is_some_and(|s| {
            let (grown, changed) = s.growth();
            grown < outcome.published && changed.max(finished).elapsed() < limit
        });
        // With `search.url` at the receiver: until every observation is indexed too, so that
        // ccstream's CPU includes indexing them.
        let documents_due = webhooks.is_some_and(|w| {
            let documents = w.documents.load(Ordering::Relaxed);
            documents > 0 && documents < outcome.published && finished.elapsed() < limit * 4
        });
        if !webhooks_due && !stored_due && !documents_due {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Serves the receiver until `--count` documents (or `--duration` s, or `--drain-secs` without a
/// new document once some came); the rate is over the first to the last `_bulk` request.
async fn run_receive(args: &Args) -> anyhow::Result<Report> {
    let addr = args.receiver.context("--mode receive needs --receiver")?;
    let state = Arc::new(Receiver::default());
    let bound = receiver::serve(addr, state.clone()).await?;
    eprintln!("receiver on http://{bound}");
    let started = Instant::now();
    let limit = args.duration.map(Duration::from_secs_f64);
    let mut seen = (0, Instant::now());
    loop {
        let documents = state.documents.load(Ordering::Relaxed);
        if documents != seen.0 {
            seen = (documents, Instant::now());
        }
        let idle = documents > 0 && seen.1.elapsed().as_secs_f64() >= args.drain_secs;
        if args.count.is_some_and(|n| documents >= n)
            || limit.is_some_and(|l| started.elapsed() >= l)
            || idle
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let documents = state.documents.load(Ordering::Relaxed);
    let first = state.first_bulk_ms.load(Ordering::Relaxed);
    let last = state.last_bulk_ms.load(Ordering::Relaxed);
    let secs = last.saturating_sub(first) as f64 / 1000.0;
    Ok(Report {
        search_documents: Some(documents),
        webhooks_received: Some(state.received.load(Ordering::Relaxed)),
        duration_s: secs,
        rate_per_s: if secs > 0.0 {
            documents as f64 / secs
        } else {
            0.0
        },
        ..base_report(args, "receive")
    })
}

async fn run_subscriber(args: &Args) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.ccstream_pids.is_empty()
            && args.cpu_pids.is_empty()
            && args.ccstream_metrics.is_empty(),
        "--ccstream-pid, --cpu-pid and --ccstream-metrics measure a publish run; \
         pass them to the publisher"
    );
    let (host, port) = parse_broker(&args.broker)?;
    let cfg = subscriber::SubscribeConfig {
        host,
        port,
        filter: topic_filter(&args.topic_template),
        qos: qos(args),
        count: args.count,
        duration: args.duration.map(Duration::from_secs_f64),
        idle: Duration::from_secs_f64(args.drain_secs),
    };
    let pb = progress(args, cfg.count);
    let filter = cfg.filter.clone();
    // Its own CPU from the subscription on, when publishing can start: exact even when this
    // process exits before a publisher's `--cpu-pid` reads it last.
    let mut cpu_start = None;
    let outcome = subscriber::run(
        cfg,
        || {
            cpu_start = procstat::read_stat(Target::Myself).ok();
            // A line scripts and tests wait for before they start publishing.
            eprintln!("subscribed to {filter}");
        },
        |n| {
            if n % 1000 == 0 {
                pb.set_position(n);
            }
        },
    )
    .await?;
    pb.finish_and_clear();
    let mut cpu = std::collections::BTreeMap::new();
    if let (Some(start), Ok(end)) = (cpu_start, procstat::read_stat(Target::Myself)) {
        let secs = procstat::ticks_to_s(end.cpu_ticks.saturating_sub(start.cpu_ticks));
        cpu.insert(
            "generator".to_owned(),
            ProcessCpu::new(secs, outcome.received, false),
        );
    }
    let secs = outcome.elapsed.as_secs_f64();
    Ok(Report {
        messages_received: Some(outcome.received),
        cpu,
        duration_s: secs,
        rate_per_s: if secs > 0.0 {
            outcome.received as f64 / secs
        } else {
            0.0
        },
        latency: outcome.latencies.summary(),
        ..base_report(args, "bare-subscriber")
    })
}
