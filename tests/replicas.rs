//! Several ccstream replicas on one broker (issue 11): a shared subscription spreads the
//! updates, Redis holds the threshold state, PostgreSQL the rules. Real Mosquitto, Redis and
//! PostgreSQL, each test with its own (a database of its own on the machine's PostgreSQL).
//!
//! The firing set is computed from the published sequence: things report in rounds, and a round
//! is published only once every replica has evaluated the one before, so each thing's updates
//! are evaluated in order although consecutive ones go to different replicas. Rules:
//! `count3` (temp > 50, three matches in a row) and `hourly` (temp > 50, at most once an hour).
//! Records are stored by the `local` object sink, newline-delimited, and read back from every
//! replica's directory after a graceful stop.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::receiver::Receiver;
use common::{unique_suffix, Ccstream, PgDb, LISTEN};
use serde_json::{json, Value};
use testkit::mosquitto::{publish_all, Mosquitto};
use testkit::redis::Redis;

const WAIT: Duration = Duration::from_secs(30);
const GROUP: &str = "ccstream";
const EVALUATED: &str = "ccstream_observations_evaluated_total";
const EVALUATED_AGAIN: &str = "ccstream_observations_evaluated_again_total";

/// Which (rule, thing, round) fired.
type Firing = (String, String, u64);

fn thing(j: usize) -> String {
    format!("t{j:04}")
}

/// temp of thing `j` in round `r`: above 50 about two times in three, deterministically.
fn temp(j: usize, r: u64) -> u64 {
    let h =
        (j as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ r.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    if (h >> 33).is_multiple_of(3) {
        20
    } else {
        80
    }
}

/// What a single evaluator with the spec's threshold semantics fires for rounds `rounds`.
fn expected(things: usize, rounds: std::ops::Range<u64>) -> BTreeSet<Firing> {
    let mut out = BTreeSet::new();
    for j in 0..things {
        let (mut run, mut hourly_fired) = (0, false);
        for r in rounds.clone() {
            if temp(j, r) <= 50 {
                run = 0;
                continue;
            }
            run += 1;
            if run == 3 {
                run = 0;
                out.insert(("count3".to_owned(), thing(j), r));
            }
            if !hourly_fired {
                hourly_fired = true;
                out.insert(("hourly".to_owned(), thing(j), r));
            }
        }
    }
    out
}

/// The updates of round `r`: `thing-update/<thing>` (root things: the root is implicit) with `temp` and `round`.
fn round_messages(things: usize, r: u64) -> Vec<(String, Vec<u8>)> {
    (0..things)
        .map(|j| {
            let payload = json!({"state": {"reported": {"temp": temp(j, r), "round": r}}});
            (
                format!("thing-update/{}", thing(j)),
                payload.to_string().into_bytes(),
            )
        })
        .collect()
}

fn directory_file(dir: &Path, things: usize) -> String {
    let things: Vec<Value> = (0..things)
        .map(|j| json!({"thingName": thing(j), "thingType": "Pump", "domain": "root"}))
        .collect();
    let path = dir.join("directory.json");
    std::fs::write(&path, json!({"domains": [], "things": things}).to_string()).unwrap();
    path.to_str().unwrap().to_owned()
}

struct Cluster {
    replicas: Vec<Ccstream>,
    hooks: Receiver,
    broker: Mosquitto,
    redis: Redis,
    _db: PgDb,
    _dir: tempfile::TempDir,
    /// Evaluated observations counted by processes stopped since (metrics restart at 0).
    evaluated_before: f64,
    published: usize,
}

/// How often replicas poll for rules written elsewhere: short, except where a test shows that
/// changes arrive by notification.
const POLL_MS: u64 = 200;

/// The `[engine]` settings a test varies.
#[derive(Clone, Copy)]
struct Engine {
    poll_ms: u64,
    workers: usize,
}

fn replica_config(
    i: usize,
    broker: &Mosquitto,
    redis: &Redis,
    db: &PgDb,
    directory: &str,
    run: &str,
    engine: Engine,
) -> String {
    let Engine { poll_ms, workers } = engine;
    format!(
        "[api]\nlisten = \"{LISTEN}\"\n\
         [mqtt]\nembedded = false\nurl = \"{}\"\nclient_id = \"ccstream-{run}-{i}\"\n\
         topics = [\"thing-update/#\"]\nshare_group = \"{GROUP}\"\n\
         keep_alive_secs = 5\nreconnect_initial_ms = 50\nreconnect_max_ms = 500\n\
         [webhook]\nbackoff_initial_ms = 50\nbackoff_max_ms = 200\nallow_cidrs = [\"127.0.0.1/32\"]\n\
         [engine]\nrules_poll_ms = {poll_ms}\nstate = \"redis\"\nredis_url = \"{}\"\n\
         workers = {workers}\n\
         [store]\nurl = \"{}\"\n\
         [objects]\ndelimiter = \"newline\"\nmax_age_secs = 1\n\
         [directory]\nimport_file = \"{directory}\"\n",
        broker.url(),
        redis.url(),
        db.url()
    )
}

impl Cluster {
    async fn start(replicas: usize, things: usize) -> Cluster {
        Cluster::start_polling(replicas, things, POLL_MS).await
    }

    async fn start_polling(replicas: usize, things: usize, poll_ms: u64) -> Cluster {
        let engine = Engine {
            poll_ms,
            workers: 1,
        };
        Cluster::start_with(replicas, things, engine).await
    }

    async fn start_with(replicas: usize, things: usize, engine: Engine) -> Cluster {
        let broker = Mosquitto::builder().log_packets(false).start();
        let redis = Redis::start_persistent();
        let db = PgDb::create();
        let dir = tempfile::tempdir().unwrap();
        let directory = directory_file(dir.path(), things);
        let run = unique_suffix();
        let mut started = Vec::new();
        for i in 0..replicas {
            let config = replica_config(i, &broker, &redis, &db, &directory, &run, engine);
            started.push(Ccstream::start(&config).await);
        }
        let cluster = Cluster {
            replicas: started,
            hooks: Receiver::start(),
            broker,
            redis,
            _db: db,
            _dir: dir,
            evaluated_before: 0.0,
            published: 0,
        };
        for i in 0..replicas {
            cluster.wait_ready(i).await;
        }
        cluster
    }

    async fn wait_ready(&self, i: usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, body) = self.replicas[i].get("/readyz").await;
            if status == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica {i}: /readyz {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn metric(&self, i: usize, series: &str) -> f64 {
        self.replicas[i].metric(series).await
    }

    async fn sum(&self, series: &str) -> f64 {
        let mut total = 0.0;
        for i in 0..self.replicas.len() {
            total += self.metric(i, series).await;
        }
        total
    }

    /// Observations replica `i` evaluated, less those it evaluated again: redeliveries of
    /// observations an earlier run stored but may not have fired (see `Delivery::StoredNotFired`
    /// in src/engine/dedupe.rs), which count twice in `ccstream_observations_evaluated_total`.
    async fn evaluated_once(&self, i: usize) -> f64 {
        self.metric(i, EVALUATED).await - self.metric(i, EVALUATED_AGAIN).await
    }

    /// [`evaluated_once`](Self::evaluated_once) over every replica.
    async fn sum_evaluated_once(&self) -> f64 {
        self.sum(EVALUATED).await - self.sum(EVALUATED_AGAIN).await
    }

    /// Creates `count3` and `hourly` through replica 0 and waits until every replica has them.
    async fn create_rules(&self) {
        self.create_rule("count3", json!({"count": 3})).await;
        self.create_rule("hourly", json!({"interval": 3_600_000}))
            .await;
        self.wait_rules(2).await;
    }

    /// Creates rule `id` (temp > 50 on things of type Pump, `threshold`, a webhook to `/<id>`)
    /// through replica 0.
    async fn create_rule(&self, id: &str, threshold: Value) {
        let attributes = json!({
            "id": id,
            "name": id,
            "enabled": true,
            "filter": {"domain": "root", "thingType": "Pump"},
            "expression": {"operator": "gt", "resource": "temp", "value": 50},
            "threshold": threshold,
            "actions": [{"type": "WEBHOOK", "config": {"url": self.hooks.url(&format!("/{id}"))}}]
        });
        self.replicas[0]
            .invoke(
                "RuleLambda",
                json!({"action": "CREATE", "attributes": attributes}),
                None,
            )
            .await
            .ok();
    }

    /// Waits until every replica has loaded `n` rules.
    async fn wait_rules(&self, n: usize) {
        for i in 0..self.replicas.len() {
            let deadline = Instant::now() + WAIT;
            while self.metric(i, "ccstream_rules_loaded").await < n as f64 {
                assert!(
                    Instant::now() < deadline,
                    "replica {i} did not load {n} rules"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// SIGTERM to replica `i`, then starts it again on its own directory (spool, client id).
    async fn restart(&mut self, i: usize) {
        self.evaluated_before += self.evaluated_once(i).await;
        self.replicas[i].restart().await;
        self.wait_ready(i).await;
    }

    /// Publishes one round without waiting for its evaluation.
    async fn publish_round(&mut self, things: usize, r: u64) {
        publish_all(self.broker.port(), round_messages(things, r)).await;
        self.published += things;
    }

    /// Publishes rounds `rounds` for `things` things, each round once the previous one is
    /// evaluated everywhere.
    async fn publish_rounds(&mut self, things: usize, rounds: std::ops::Range<u64>) {
        for r in rounds {
            self.publish_round(things, r).await;
            self.wait_evaluated().await;
        }
    }

    /// Waits until every published observation was evaluated by some replica.
    async fn wait_evaluated(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let evaluated = self.evaluated_before + self.sum_evaluated_once().await;
            if evaluated >= self.published as f64 {
                assert_eq!(
                    evaluated, self.published as f64,
                    "evaluated more than published"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{evaluated} of {} observations evaluated",
                self.published
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the receiver has every firing the replicas fired and returns them, by
    /// (rule, thing, round), with the replica (idempotency key prefix) that sent each.
    async fn firings(&self, want: usize) -> BTreeMap<Firing, Vec<String>> {
        let got = self
            .hooks
            .wait_for(want, WAIT)
            .await
            .unwrap_or_else(|| panic!("{} of {want} webhooks arrived", self.hooks.count()));
        let mut out: BTreeMap<Firing, Vec<String>> = BTreeMap::new();
        for req in got {
            let body = req.json();
            let key = req.header("idempotency-key").unwrap_or_default();
            let process = key.rsplit_once('-').map_or("", |(p, _)| p).to_owned();
            let firing = (
                body["rule"]["id"].as_str().unwrap().to_owned(),
                body["thing"]["thingName"].as_str().unwrap().to_owned(),
                body["thing"]["state"]["round"].as_u64().unwrap(),
            );
            out.entry(firing).or_default().push(process);
        }
        out
    }

    /// Asserts that `count3` and `hourly` fired exactly `want`, each once, once the receiver
    /// has at least `want.len() + extra` requests.
    async fn assert_fired_exactly(
        &self,
        want: &BTreeSet<Firing>,
        extra: usize,
    ) -> BTreeMap<Firing, Vec<String>> {
        let got = self.firings(want.len() + extra).await;
        self.check_fired(want, got)
    }

    fn check_fired(
        &self,
        want: &BTreeSet<Firing>,
        mut got: BTreeMap<Firing, Vec<String>>,
    ) -> BTreeMap<Firing, Vec<String>> {
        got.retain(|(rule, _, _), _| rule == "count3" || rule == "hourly");
        let repeated: Vec<_> = got.iter().filter(|(_, by)| by.len() > 1).collect();
        assert!(repeated.is_empty(), "fired more than once: {repeated:?}");
        let got_set: BTreeSet<Firing> = got.keys().cloned().collect();
        assert_eq!(
            got_set.difference(want).collect::<Vec<_>>(),
            Vec::<&Firing>::new(),
            "unexpected firings"
        );
        assert_eq!(
            want.difference(&got_set).collect::<Vec<_>>(),
            Vec::<&Firing>::new(),
            "missing firings"
        );
        got
    }

    /// The (thing, round) pairs every replica has stored so far (objects roll every second).
    fn stored_so_far(&self) -> BTreeSet<(String, u64)> {
        self.replicas
            .iter()
            .flat_map(|r| local_records(&r.dir().join("data/observations")))
            .map(|record| {
                (
                    record["thingName"].as_str().unwrap().to_owned(),
                    record["state"]["reported"]["round"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    /// Stops every replica (SIGTERM: open batches are stored) and reads back every record of
    /// every replica: (thing, round) → how many times stored, and by which replica.
    async fn stop_and_read_records(&mut self) -> BTreeMap<(String, u64), Vec<usize>> {
        let mut out: BTreeMap<(String, u64), Vec<usize>> = BTreeMap::new();
        for (i, replica) in self.replicas.iter_mut().enumerate() {
            let status = replica.stop().await;
            assert!(
                status.is_some_and(|s| s.success()),
                "replica {i} exit: {status:?}"
            );
            for record in local_records(&replica.dir().join("data/observations")) {
                let key = (
                    record["thingName"].as_str().unwrap().to_owned(),
                    record["state"]["reported"]["round"].as_u64().unwrap(),
                );
                out.entry(key).or_default().push(i);
            }
        }
        out
    }
}

/// Every newline-delimited record under `dir` (the `local` object sink).
fn local_records(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let hidden = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if path.is_dir() {
                stack.push(path);
            } else if !hidden && !path.to_string_lossy().contains("/errors/") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.extend(
                    text.lines()
                        .filter(|l| !l.is_empty())
                        .map(|l| serde_json::from_str::<Value>(l).unwrap()),
                );
            }
        }
    }
    out
}

/// Every (thing, round) stored, each by exactly one replica.
fn assert_stored_once(records: &BTreeMap<(String, u64), Vec<usize>>, things: usize, rounds: u64) {
    assert_eq!(
        records.len(),
        things * rounds as usize,
        "distinct records stored"
    );
    let twice: Vec<_> = records.iter().filter(|(_, by)| by.len() != 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_the_stream_and_fire_exactly_as_one_evaluator() {
    // 1,000 things: not a multiple of 3, so Mosquitto's round-robin hands a thing's updates to
    // a different replica from one round to the next.
    const THINGS: usize = 1000;
    const ROUNDS: u64 = 60;
    let mut cluster = Cluster::start(3, THINGS).await;
    cluster.create_rules().await;
    cluster.publish_rounds(THINGS, 0..ROUNDS).await;

    let want = expected(THINGS, 0..ROUNDS);
    let fired = cluster
        .sum("ccstream_actions_fired_total{type=\"WEBHOOK\"}")
        .await;
    assert_eq!(fired, want.len() as f64, "firings dispatched");
    let got = cluster.assert_fired_exactly(&want, 0).await;
    // Firings of one rule for one thing came from several replicas: its state was shared.
    let mut by_thing: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for ((rule, thing, _), by) in &got {
        if rule == "count3" {
            by_thing.entry(thing).or_default().insert(&by[0]);
        }
    }
    let shared = by_thing.values().filter(|p| p.len() > 1).count();
    assert!(
        shared * 2 > by_thing.len(),
        "count3 firings of a thing came from one replica for most things: {shared} of {}",
        by_thing.len()
    );

    // Every observation stored exactly once, and each thing's updates spread over replicas.
    let records = cluster.stop_and_read_records().await;
    assert_stored_once(&records, THINGS, ROUNDS);
    for j in 0..THINGS {
        let replicas: BTreeSet<usize> = (0..ROUNDS).map(|r| records[&(thing(j), r)][0]).collect();
        assert_eq!(
            replicas.len(),
            3,
            "{}'s updates went to {replicas:?}",
            thing(j)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_keeps_counts_and_intervals() {
    const THINGS: usize = 500;
    let mut cluster = Cluster::start(3, THINGS).await;
    cluster.create_rules().await;
    cluster.publish_rounds(THINGS, 0..8).await;
    // One replica after the other, a round between restarts: runs of count3 and hourly
    // intervals started before a restart go on after it.
    for (i, r) in [(0, 8), (1, 9), (2, 10)] {
        cluster.restart(i).await;
        cluster.publish_rounds(THINGS, r..r + 1).await;
    }
    cluster.publish_rounds(THINGS, 11..16).await;
    let want = expected(THINGS, 0..16);
    cluster.assert_fired_exactly(&want, 0).await;
    let records = cluster.stop_and_read_records().await;
    assert_stored_once(&records, THINGS, 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_for_twenty_seconds_stops_evaluation_and_loses_nothing() {
    const THINGS: usize = 500;
    const OUTAGE: Duration = Duration::from_secs(20);
    let mut cluster = Cluster::start(3, THINGS).await;
    cluster.create_rules().await;
    cluster.publish_rounds(THINGS, 0..6).await;

    cluster.redis.stop();
    let stopped = Instant::now();
    cluster.publish_round(THINGS, 6).await;
    // Every replica got part of the round and waits for Redis: /readyz says so.
    for i in 0..3 {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, body) = cluster.replicas[i].get("/readyz").await;
            if status == 503 && body.contains("Redis") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica {i}: /readyz {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The outage itself is the wait here.
    tokio::time::sleep(OUTAGE.saturating_sub(stopped.elapsed())).await;
    // Nothing was evaluated without state, and nothing of the round acked.
    let evaluated = cluster.sum(EVALUATED).await;
    assert_eq!(
        evaluated,
        (6 * THINGS) as f64,
        "evaluated during the outage"
    );
    let acked_before = cluster.sum("ccstream_mqtt_acks_written_total").await;

    cluster.redis.start_again();
    cluster.wait_evaluated().await;
    assert!(cluster.sum("ccstream_mqtt_acks_written_total").await > acked_before);
    for i in 0..3 {
        cluster.wait_ready(i).await;
    }
    cluster.publish_rounds(THINGS, 7..12).await;
    let want = expected(THINGS, 0..12);
    cluster.assert_fired_exactly(&want, 0).await;
    let records = cluster.stop_and_read_records().await;
    assert_stored_once(&records, THINGS, 12);
}

/// Polls `check` every 5 ms until it holds and returns how long that took; fails after `WAIT`.
async fn time_until<F, Fut>(what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < WAIT,
            "{what} did not happen within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

/// The things `GET /directory` of replica `i` lists.
async fn directory_things(cluster: &Cluster, i: usize) -> BTreeSet<String> {
    let (status, body) = cluster.replicas[i].get("/directory").await;
    assert_eq!(status, 200, "{body}");
    let dir: Value = serde_json::from_str(&body).unwrap();
    dir["things"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["thingName"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_every_replica_at_once() {
    const THINGS: usize = 100;
    // Polling once a minute: within the test, only a notification can bring a change.
    let mut cluster = Cluster::start_polling(3, THINGS, 60_000).await;

    // A rule written through replica 0 is in force on all three within a second (replica 0
    // too: its own reload is not synchronous with the write, and may come after the others').
    cluster.create_rule("every", json!({"count": 1})).await;
    let took = time_until("the rule reached all three replicas", || async {
        let mut all = true;
        for i in 0..3 {
            all &= cluster.metric(i, "ccstream_rules_loaded").await == 1.0;
        }
        all
    })
    .await;
    eprintln!("rule created through replica 0 in force on all three after {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // ... and fires on the updates they take.
    cluster.publish_rounds(THINGS, 0..3).await;
    let hot = (0..THINGS)
        .map(|j| (0..3).filter(|&r| temp(j, r) > 50).count())
        .sum::<usize>();
    let Some(got) = cluster.hooks.wait_for(hot, WAIT).await else {
        panic!(
            "{} of {hot} firings arrived",
            cluster.hooks.requests().len()
        );
    };
    let senders: BTreeSet<&str> = got
        .iter()
        .filter_map(|r| {
            r.header("idempotency-key")?
                .rsplit_once('-')
                .map(|(p, _)| p)
        })
        .collect();
    assert_eq!(senders.len(), 3, "firings came from {senders:?}");

    // Things imported through replica 0 are known to the others within a second.
    let imported = json!({"domains": [], "things": [
        {"thingName": "imported-1", "thingType": "Pump", "domain": "root"}]});
    let answer = cluster.replicas[0]
        .client()
        .post(format!("{}/directory", cluster.replicas[0].base_url()))
        .json(&imported)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let took = time_until("the import reached replicas 1 and 2", || async {
        directory_things(&cluster, 1).await.contains("imported-1")
            && directory_things(&cluster, 2).await.contains("imported-1")
    })
    .await;
    eprintln!("thing imported through replica 0 known to replicas 1 and 2 after {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // An import too large for a notification: the notice says "read the store", and the others
    // merge the stored directory a page (4,096 things) at a time.
    let bulk: Vec<Value> = (0..1500)
        .map(
            |i| json!({"thingName": format!("bulk-{i:04}"), "thingType": "Pump", "domain": "root"}),
        )
        .collect();
    let answer = cluster.replicas[0]
        .client()
        .post(format!("{}/directory", cluster.replicas[0].base_url()))
        .json(&json!({ "things": bulk }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let took = time_until("the large import reached replicas 1 and 2", || async {
        let all =
            |things: BTreeSet<String>| (0..1500).all(|i| things.contains(&format!("bulk-{i:04}")));
        all(directory_things(&cluster, 1).await) && all(directory_things(&cluster, 2).await)
    })
    .await;
    eprintln!("1,500 things imported through replica 0 known to replicas 1 and 2 after {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");

    // A life cycle event is not shared: every replica applies it.
    let create = json!({"type": "THING.CREATE",
                        "source": {"thingName": "created-1", "thingType": "Pump", "domain": "root"}});
    cluster
        .broker
        .publish("event/root", create.to_string().as_bytes());
    time_until("THING.CREATE reached all three", || async {
        let mut all = true;
        for i in 0..3 {
            all &= directory_things(&cluster, i).await.contains("created-1");
        }
        all
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_round_stores_every_observation_once() {
    // 3,000 things: a round takes a replica tens of milliseconds, so the kill lands in it.
    const THINGS: usize = 3000;
    const KILLED: u64 = 6;
    const ROUNDS: u64 = 10;
    let mut cluster = Cluster::start(3, THINGS).await;
    cluster.create_rules().await;
    cluster.publish_rounds(THINGS, 0..KILLED).await;

    // Killed once it has taken part of the round, while the rest is still coming.
    let taken = "ccstream_mqtt_messages_total{kind=\"shadow\"}";
    let before = cluster.metric(1, taken).await;
    let publisher = tokio::spawn(publish_all(
        cluster.broker.port(),
        round_messages(THINGS, KILLED),
    ));
    time_until("replica 1 took part of the round", || async {
        cluster.metric(1, taken).await >= before + 100.0
    })
    .await;
    cluster.replicas[1].crash_and_restart().await;
    publisher.await.unwrap();
    cluster.published += THINGS;
    cluster.wait_ready(1).await;
    // The killed process's counters died with it: wait for the records instead (every update
    // of the round stored by some replica), then count from what the live processes say.
    let want_stored = THINGS * (KILLED as usize + 1);
    let deadline = Instant::now() + WAIT;
    loop {
        let stored = cluster.stored_so_far().len();
        if stored == want_stored {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{stored} of {want_stored} stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        cluster.metric(1, taken).await > 0.0,
        "the kill came after replica 1 had taken all of its share of the round"
    );
    let redelivered = cluster
        .metric(1, "ccstream_observations_redelivered_skipped_total")
        .await;
    eprintln!("after the restart replica 1 skipped {redelivered} redeliveries already stored");
    let live = cluster.sum_evaluated_once().await;
    cluster.evaluated_before = cluster.published as f64 - live;
    cluster.publish_rounds(THINGS, KILLED + 1..ROUNDS).await;

    // Stored exactly once: what the killed replica committed is stored from its spool at the
    // restart (and its redeliveries skipped), what it had not committed is redelivered.
    let want = expected(THINGS, 0..ROUNDS);
    // Every process delivered every webhook in its outbox (the restarted one's included, what
    // the killed process left there).
    for i in 0..3 {
        time_until("the webhooks were delivered", || async {
            let fired = cluster
                .metric(i, "ccstream_actions_fired_total{type=\"WEBHOOK\"}")
                .await;
            let delivered = cluster
                .metric(i, "ccstream_webhook_deliveries_total{result=\"delivered\"}")
                .await;
            let unfinished = cluster
                .metric(i, "ccstream_webhook_outbox_unfinished")
                .await;
            delivered >= fired && unfinished == 0.0
        })
        .await;
    }
    let got = cluster.hooks.requests();
    let records = cluster.stop_and_read_records().await;
    assert_stored_once(&records, THINGS, ROUNDS);

    // Firings: none unexpected, none lost, and each one delivered once, or more than once with
    // one Idempotency-Key (the outbox resends, after the restart, what the killed process had
    // delivered but not yet recorded as delivered; a redelivered message whose firing was in
    // the outbox does not fire again).
    let mut by_firing: BTreeMap<Firing, Vec<String>> = BTreeMap::new();
    for req in got {
        let body = req.json();
        let firing = (
            body["rule"]["id"].as_str().unwrap().to_owned(),
            body["thing"]["thingName"].as_str().unwrap().to_owned(),
            body["thing"]["state"]["round"].as_u64().unwrap(),
        );
        let key = req.header("idempotency-key").unwrap_or_default().to_owned();
        by_firing.entry(firing).or_default().push(key);
    }
    let mut resent = 0;
    for (firing, keys) in &mut by_firing {
        let sent = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 1, "{firing:?} fired more than once: {keys:?}");
        resent += sent - 1;
    }
    eprintln!("after the kill {resent} deliveries were repeated with their key");
    cluster.check_fired(&want, by_firing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_redis_is_down_leaves_the_unevaluated_to_the_broker() {
    const THINGS: usize = 200;
    // Four workers, each holding a batch it cannot decide: shutdown still ends within its grace
    // period. (They learn of it from the engine, not only from their channels: with a broker
    // window larger than a worker's queue the dispatcher could be waiting on a full one.)
    let engine = Engine {
        poll_ms: POLL_MS,
        workers: 4,
    };
    let mut cluster = Cluster::start_with(1, THINGS, engine).await;
    cluster.create_rules().await;
    cluster.publish_rounds(THINGS, 0..3).await;

    cluster.redis.stop();
    cluster.publish_round(THINGS, 3).await;
    time_until("/readyz named Redis", || async {
        let (status, body) = cluster.replicas[0].get("/readyz").await;
        status == 503 && body.contains("Redis")
    })
    .await;
    cluster.evaluated_before += cluster.evaluated_once(0).await;
    // Stops within the grace period although the batch it holds can never be decided.
    let status = cluster.replicas[0].stop().await;
    assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");

    // The round was not acked: the broker gives it to the next start, which evaluates it.
    cluster.redis.start_again();
    cluster.replicas[0].restart().await;
    cluster.wait_ready(0).await;
    cluster.wait_evaluated().await;
    cluster.publish_rounds(THINGS, 4..7).await;
    let want = expected(THINGS, 0..7);
    cluster.assert_fired_exactly(&want, 0).await;
    let records = cluster.stop_and_read_records().await;
    assert_stored_once(&records, THINGS, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_redis_without_traffic() {
    let mut cluster = Cluster::start(1, 10).await;
    cluster.redis.stop();
    let took = time_until("/readyz named Redis", || async {
        let (status, body) = cluster.replicas[0].get("/readyz").await;
        status == 503 && body.contains("Redis")
    })
    .await;
    eprintln!("/readyz turned 503 {took:?} after Redis stopped, with no traffic");
    cluster.redis.start_again();
    cluster.wait_ready(0).await;
}
