//! Webhook receivers that fail, at the scale issue 12 names, against the built binary, a real
//! Mosquitto and local receivers:
//!
//! - a receiver down (503) for 60 s while 1,000 observations a second fire: ingest keeps its
//!   rate, and once the receiver is back every firing arrives exactly once, counted exactly;
//! - two destinations, one of them dead (it never answers): the live one's latency p99 stays
//!   within 20 ms of what it was before the dead one took firings (in one of three trials, so
//!   that a stall of the VM in one phase does not decide it).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::receiver::{Received, Receiver, Reply};
use common::{unique_suffix, Ccstream, LISTEN};
use serde_json::json;
use testkit::mosquitto::{publish_all, Mosquitto};

/// Publications per second, one observation (and so one firing) each.
const RATE: u64 = 1_000;
/// How long the receiver is down.
const OUTAGE: Duration = Duration::from_secs(60);
/// Publications go out in chunks this often.
const TICK: Duration = Duration::from_millis(100);

/// One test at a time: the latency comparison must not share the machine with the outage's
/// 1,000 firings a second.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config(broker: &Mosquitto, webhook: &str) -> String {
    format!(
        "[api]\nlisten = \"{LISTEN}\"\n\
         [mqtt]\nembedded = false\nurl = \"{}\"\nclient_id = \"ccstream-outage-{}\"\n\
         [webhook]\nallow_cidrs = [\"127.0.0.1/32\"]\n{webhook}\
         [engine]\nrules_poll_ms = 200\n\
         [directory]\nimport_file = \"{}/fixtures/directory/small.json\"\n",
        broker.url(),
        unique_suffix(),
        env!("CARGO_MANIFEST_DIR"),
    )
}

async fn metric(svc: &Ccstream, series: &str) -> f64 {
    let (status, body) = svc.get("/metrics").await;
    assert_eq!(status, 200, "/metrics: {body}");
    common::metric_value(&body, series)
}

/// Waits up to `within` for `series` to reach `want`, and asserts it is exactly `want` then;
/// `what` says what that means when it is not.
async fn expect_metric(
    svc: &Ccstream,
    series: &str,
    want: f64,
    within: Duration,
    what: impl std::fmt::Display,
) {
    let deadline = Instant::now() + within;
    let mut value = metric(svc, series).await;
    while value < want && Instant::now() <= deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        value = metric(svc, series).await;
    }
    assert_eq!(value, want, "{series}: {what}");
}

/// Creates a rule firing a WEBHOOK to `url` for every `temp` above 50 of thing-001, and waits
/// until the engine has `rules` rules.
async fn create_rule(svc: &Ccstream, id: &str, url: &str, rules: usize) {
    let attributes = json!({
        "id": id,
        "name": id,
        "enabled": true,
        "filter": {"domain": "root", "thingType": "Pump", "thingNames": ["thing-001"]},
        "expression": {"operator": "gt", "resource": "temp", "value": 50},
        "actions": [{"type": "WEBHOOK", "config": {"url": url}}]
    });
    svc.invoke(
        "RuleLambda",
        json!({"action": "CREATE", "attributes": attributes}),
        None,
    )
    .await
    .ok();
    expect_metric(
        svc,
        "ccstream_rules_loaded",
        rules as f64,
        Duration::from_secs(10),
        format_args!("rule {id} not loaded"),
    )
    .await;
}

/// The observations with `temp` from `first` to `first + count - 1`, in that order.
fn observations(first: u64, count: u64) -> Vec<(String, Vec<u8>)> {
    (first..first + count)
        .map(|temp| {
            let payload = json!({"state": {"reported": {"temp": temp}}});
            (
                "$aws/things/thing-001/shadow/update".to_owned(),
                payload.to_string().into_bytes(),
            )
        })
        .collect()
}

/// Publishes `count` observations from `temp = first` at `rate` a second, in chunks every
/// [`TICK`]; returns when each chunk was sent, by its first temp.
async fn publish_at_rate(port: u16, first: u64, count: u64, rate: u64) -> Vec<(u64, Instant)> {
    let per_tick = rate * TICK.as_millis() as u64 / 1000;
    let started = tokio::time::Instant::now();
    let mut sent = Vec::new();
    let mut next = first;
    let mut tick = 0u32;
    while next < first + count {
        tokio::time::sleep_until(started + TICK * tick).await;
        let n = per_tick.min(first + count - next);
        sent.push((next, Instant::now()));
        publish_all(port, observations(next, n)).await;
        next += n;
        tick += 1;
    }
    sent
}

/// The `temp` a firing carried (the spec payload's `resource.value`).
fn value_of(request: &Received) -> u64 {
    request.json()["resource"]["value"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_sixty_seconds_under_a_thousand_firings_a_second() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let broker = Mosquitto::start();
    let hooks = Receiver::start();
    let svc = Ccstream::start(&config(&broker, "")).await;
    create_rule(&svc, "outage", &hooks.url("/down"), 1).await;
    hooks.fallback(Reply::status(503));

    // Down for OUTAGE while RATE observations a second fire. Ingest keeps its rate: every ten
    // seconds, what was published is stored (and acked) within a few seconds.
    let total = RATE * OUTAGE.as_secs();
    let started = Instant::now();
    let mut published = 0;
    while published < total {
        let chunk = (RATE * 10).min(total - published);
        publish_at_rate(broker.port(), 51 + published, chunk, RATE).await;
        published += chunk;
        expect_metric(
            &svc,
            "ccstream_objects_records_total",
            published as f64,
            Duration::from_secs(5),
            format_args!(
                "ingest fell behind while the receiver was down ({:?} in)",
                started.elapsed()
            ),
        )
        .await;
    }
    let outage = started.elapsed();
    let held = metric(&svc, "ccstream_webhook_outbox_unfinished").await;
    let opened = metric(&svc, "ccstream_webhook_circuit_opened_total").await;
    eprintln!(
        "{total} published in {outage:?} while the receiver was down; {held} firings held in the \
         outbox, circuit opened {opened} times, {} attempts reached the receiver",
        hooks.count()
    );
    assert!(opened >= 1.0, "the destination's circuit never opened");
    assert!(
        (hooks.count() as u64) < total / 10,
        "a dead receiver should cost a probe per interval, not an attempt per firing: {} attempts",
        hooks.count()
    );
    assert_eq!(
        metric(&svc, "ccstream_webhook_dead_letters_total").await,
        0.0
    );

    // Back: every firing arrives exactly once (one key, one 200 per value), counted exactly.
    hooks.fallback(Reply::status(200));
    let back = Instant::now();
    expect_metric(
        &svc,
        "ccstream_webhook_deliveries_total{result=\"delivered\"}",
        total as f64,
        Duration::from_secs(180),
        "delivered after the receiver came back",
    )
    .await;
    let drained = back.elapsed();
    let mut keys: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let mut ok: BTreeMap<u64, usize> = BTreeMap::new();
    for request in hooks.requests_to("/down") {
        let value = value_of(&request);
        let key = request.header("idempotency-key").unwrap().to_owned();
        keys.entry(value).or_default().insert(key);
        if request.answered == 200 {
            *ok.entry(value).or_default() += 1;
        }
    }
    let expected: BTreeSet<u64> = (51..51 + total).collect();
    assert_eq!(
        ok.keys().copied().collect::<BTreeSet<u64>>(),
        expected,
        "firings delivered"
    );
    assert!(ok.values().all(|&n| n == 1), "a firing delivered twice");
    assert!(
        keys.values().all(|k| k.len() == 1),
        "a firing's attempts carried different idempotency keys"
    );
    assert_eq!(
        metric(&svc, "ccstream_webhook_dead_letters_total").await,
        0.0
    );
    eprintln!("all {total} delivered {drained:?} after the receiver came back");
    // Delivered firings are recorded finished on a tick: the outbox empties right after.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&svc, "ccstream_webhook_outbox_unfinished").await > 0.0 {
        assert!(
            Instant::now() < deadline,
            "the outbox still holds delivered firings"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The latency of each firing `live` received from the chunks in `sent`: arrival minus the
/// time its chunk was published.
fn latencies(live: &Receiver, sent: &[(u64, Instant)], first: u64, count: u64) -> Vec<Duration> {
    let mut out: Vec<Duration> = live
        .requests_to("/live")
        .iter()
        .filter_map(|r| {
            let value = value_of(r);
            if !(first..first + count).contains(&value) {
                return None;
            }
            let (_, at) = sent.iter().rev().find(|(from, _)| *from <= value)?;
            Some(r.at.saturating_duration_since(*at))
        })
        .collect();
    out.sort();
    out
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
}

/// One measurement of the live destination's latency, alone and then beside a dead one, each
/// phase [`PER_PHASE`] firings at [`PHASE_RATE`] a second, on a service of its own.
struct Trial {
    alone: Duration,
    beside_dead: Duration,
    summary: String,
}

/// Firings per phase of a [`Trial`].
const PER_PHASE: u64 = 2_000;
/// Publications per second in a [`Trial`]'s phases.
const PHASE_RATE: u64 = 200;

async fn measure_beside_a_dead_destination() -> Trial {
    let broker = Mosquitto::start();
    let live = Receiver::start();
    // Dead: accepts and never answers, the costliest failure (each attempt waits for its
    // timeout).
    let dead = Receiver::start();
    dead.fallback(Reply::status(200).after(Duration::from_secs(3_600)));
    // The outbox and the spool on tmpfs: this VM's disk stalls now and then for 100-400 ms on a
    // sync, which moves either phase's p99 by far more than the 20 ms compared here, and says
    // nothing about how destinations are scheduled, which is what this test is about.
    let memory = tempfile::Builder::new()
        .prefix("ccstream-isolation-")
        .tempdir_in("/dev/shm")
        .unwrap();
    let dir = memory.path().display();
    let svc = Ccstream::start(
        &config(
            &broker,
            &format!("timeout_secs = 2\noutbox_dir = \"{dir}/outbox\"\n"),
        )
        .replace(
            "[engine]",
            &format!("[objects]\nspool_dir = \"{dir}/spool\"\n[engine]"),
        ),
    )
    .await;
    create_rule(&svc, "live", &live.url("/live"), 1).await;

    // Baseline: the live destination alone.
    let sent = publish_at_rate(broker.port(), 51, PER_PHASE, PHASE_RATE).await;
    let got = live
        .wait_for(PER_PHASE as usize, Duration::from_secs(30))
        .await;
    assert!(got.is_some(), "{} of {PER_PHASE} arrived", live.count());
    let baseline = latencies(&live, &sent, 51, PER_PHASE);

    // The same with every observation also firing to the dead destination.
    create_rule(&svc, "dead", &dead.url("/dead"), 2).await;
    let first = 51 + PER_PHASE;
    let sent = publish_at_rate(broker.port(), first, PER_PHASE, PHASE_RATE).await;
    let got = live
        .wait_for(2 * PER_PHASE as usize, Duration::from_secs(30))
        .await;
    assert!(
        got.is_some(),
        "{} of {} arrived",
        live.count(),
        2 * PER_PHASE
    );
    let beside_dead = latencies(&live, &sent, first, PER_PHASE);
    assert_eq!(baseline.len(), PER_PHASE as usize);
    assert_eq!(beside_dead.len(), PER_PHASE as usize);

    let opened = metric(&svc, "ccstream_webhook_circuit_opened_total").await;
    let held = metric(&svc, "ccstream_webhook_outbox_unfinished").await;
    assert!(opened >= 1.0, "the dead destination's circuit never opened");
    assert!(held > 0.0, "the dead destination's firings are not held");
    Trial {
        alone: p99(&baseline),
        beside_dead: p99(&beside_dead),
        summary: format!(
            "live destination p99: {:?} alone, {:?} beside a dead one (p50 {:?} / {:?}); the \
             dead one's circuit opened {opened} times, {held} of its firings held, {} attempts \
             reached it",
            p99(&baseline),
            p99(&beside_dead),
            baseline[baseline.len() / 2],
            beside_dead[beside_dead.len() / 2],
            dead.count()
        ),
    }
}

/// Up to [`TRIALS`] trials, each on a fresh service: the claim holds when one of them shows it.
/// This VM stalls now and then (a neighbour's burst, the host's scheduler) for tens of
/// milliseconds, which only ever adds latency; what this test guards against, live firings
/// waiting behind the dead destination's 2 s timeouts or its queue, adds it in every trial.
const TRIALS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_destination_leaves_the_live_ones_latency_within_twenty_ms() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut seen = Vec::new();
    for _ in 0..TRIALS {
        let trial = measure_beside_a_dead_destination().await;
        eprintln!("{}", trial.summary);
        if trial.beside_dead <= trial.alone + Duration::from_millis(20) {
            return;
        }
        seen.push(trial.summary);
    }
    panic!(
        "in each of {TRIALS} trials the live destination's p99 beside a dead one exceeded its \
         p99 alone by more than 20 ms:\n{}",
        seen.join("\n")
    );
}
