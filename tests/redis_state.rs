//! The Redis threshold script against a real Redis: it decides as the local
//! `ThresholdState` does, retries are idempotent, keys expire, a changed rule starts afresh.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use ccstream::engine::redis_state::{ObservationSteps, RedisThresholds, IDLE_KEY_TTL_MS};
use rule_engine::deferred::{Step, StepKind};
use rule_engine::threshold::{Decision, ResourcePath, Throttle};
use rule_engine::ThresholdState;
use testkit::redis::Redis;

const BOUND: Duration = Duration::from_secs(3600);

fn throttle(count: u64, interval: u64) -> Throttle {
    Throttle::new(count, interval)
}

fn step(rule: &str, kind: StepKind) -> Step {
    Step {
        rule: Arc::from(rule),
        path: "temp".to_owned(),
        kind,
    }
}

async fn decide(
    redis: &mut RedisThresholds,
    thing: &str,
    steps: &[Step],
    id: &str,
    now_ms: u64,
) -> Vec<Decision> {
    let batch = [ObservationSteps {
        thing,
        steps,
        step_id: id,
        now_ms,
    }];
    redis
        .decide(&batch, |rule| format!("{rule}:e1"))
        .await
        .unwrap()
        .pop()
        .unwrap()
}

#[tokio::test]
async fn decides_as_the_local_state_on_a_random_sequence() {
    let server = Redis::start();
    let mut redis = RedisThresholds::new(&server.url(), "test", BOUND).unwrap();
    let mut local = ThresholdState::new();
    let rules: [(&str, Throttle); 3] = [
        ("count3", throttle(3, 0)),
        ("every100ms", throttle(1, 100)),
        ("count2-per-50ms", throttle(2, 50)),
    ];
    let path = ResourcePath::thing("temp");
    let mut rng = fastrand::Rng::with_seed(7);
    let mut now = 1_700_000_000_000_u64;
    let (mut fired, mut held) = (0, 0);
    for n in 0..2000 {
        now += rng.u64(0..40);
        let thing = format!("thing-{}", rng.u32(0..4));
        let mut steps = Vec::new();
        let mut want = Vec::new();
        for (rule, t) in &rules {
            let id: Arc<str> = Arc::from(*rule);
            if rng.u8(0..3) > 0 {
                steps.push(step(rule, StepKind::Match(*t)));
                want.push(local.on_match(&id, *t, &thing, path, now));
            } else if t.counts_runs() {
                steps.push(step(rule, StepKind::Miss));
                local.on_miss(&id, &thing, path, now);
            }
        }
        let got = decide(&mut redis, &thing, &steps, &format!("obs-{n}"), now).await;
        assert_eq!(got, want, "observation {n} of {thing} at {now}: {steps:?}");
        fired += want.iter().filter(|d| **d == Decision::Fire).count();
        held += want.iter().filter(|d| **d != Decision::Fire).count();
    }
    assert!(
        fired > 100 && held > 100,
        "a sequence that tests both: {fired} fired, {held} held"
    );
}

#[tokio::test]
async fn a_retried_observation_gets_its_first_decisions_and_counts_once() {
    let server = Redis::start();
    let mut redis = RedisThresholds::new(&server.url(), "test", BOUND).unwrap();
    let count3 = [step("r", StepKind::Match(throttle(3, 0)))];
    let now = 1_000_000;
    assert_eq!(
        decide(&mut redis, "t", &count3, "a", now).await,
        [Decision::Counting]
    );
    assert_eq!(
        decide(&mut redis, "t", &count3, "b", now).await,
        [Decision::Counting]
    );
    // "b" again (a retry, or a redelivery after a crash): still counting, and not counted.
    assert_eq!(
        decide(&mut redis, "t", &count3, "b", now).await,
        [Decision::Counting]
    );
    assert_eq!(
        decide(&mut redis, "t", &count3, "c", now).await,
        [Decision::Fire]
    );
    // The firing, retried, fires again rather than being lost (its webhook gets a new key
    // only when the process that sent it is gone).
    assert_eq!(
        decide(&mut redis, "t", &count3, "c", now).await,
        [Decision::Fire]
    );
    assert_eq!(
        decide(&mut redis, "t", &count3, "d", now).await,
        [Decision::Counting]
    );
}

#[tokio::test]
async fn keys_carry_the_thing_as_hash_tag_and_expire() {
    let server = Redis::start();
    let mut redis = RedisThresholds::new(&server.url(), "stack1", BOUND).unwrap();
    let interval = [step("hourly", StepKind::Match(throttle(1, 3_600_000)))];
    let count3 = [step("count3", StepKind::Match(throttle(3, 0)))];
    let now = ccstream_common::time::now_ms();
    decide(&mut redis, "pump:7", &interval, "a", now).await;
    decide(&mut redis, "pump:7", &count3, "a", now).await;
    let keys = server.keys("ccstream:stack1:th:*");
    assert_eq!(
        keys,
        [
            "ccstream:stack1:th:{pump:7}:count3:e1:temp",
            "ccstream:stack1:th:{pump:7}:hourly:e1:temp"
        ]
    );
    let ttl = |key: &str| server.cli(&["PTTL", key]).trim().parse::<u64>().unwrap();
    let bound = BOUND.as_millis() as u64;
    // A running interval: kept for the interval plus the bound.
    let hourly = ttl(&keys[1]);
    assert!(
        hourly > bound + 3_500_000 && hourly <= bound + 3_600_000,
        "{hourly}"
    );
    // A run in progress: the bound.
    let run = ttl(&keys[0]);
    assert!(run > bound - 100_000 && run <= bound, "{run}");
    // A miss ends the run: the key holds nothing and is kept only for retries.
    decide(
        &mut redis,
        "pump:7",
        &[step("count3", StepKind::Miss)],
        "b",
        now,
    )
    .await;
    let idle = ttl(&keys[0]);
    assert!(
        idle <= IDLE_KEY_TTL_MS && idle > IDLE_KEY_TTL_MS - 100_000,
        "{idle}"
    );
    // A miss where no run is in progress writes nothing.
    decide(
        &mut redis,
        "other",
        &[step("count3", StepKind::Miss)],
        "c",
        now,
    )
    .await;
    assert!(server.keys("ccstream:stack1:th:{other}*").is_empty());
}

#[tokio::test]
async fn a_changed_rule_starts_on_fresh_keys() {
    let server = Redis::start();
    let mut redis = RedisThresholds::new(&server.url(), "test", BOUND).unwrap();
    let count2 = [step("r", StepKind::Match(throttle(2, 0)))];
    let batch = |id: &'static str| {
        [ObservationSteps {
            thing: "t",
            steps: &count2,
            step_id: id,
            now_ms: 1,
        }]
    };
    let got = redis
        .decide(&batch("a"), |rule| format!("{rule}:old"))
        .await
        .unwrap();
    assert_eq!(got, [vec![Decision::Counting]]);
    // Under the new epoch the run starts again: counting, not firing.
    let got = redis
        .decide(&batch("b"), |rule| format!("{rule}:new"))
        .await
        .unwrap();
    assert_eq!(got, [vec![Decision::Counting]]);
    let got = redis
        .decide(&batch("c"), |rule| format!("{rule}:new"))
        .await
        .unwrap();
    assert_eq!(got, [vec![Decision::Fire]]);
}

#[tokio::test]
async fn the_script_is_loaded_again_after_a_redis_restart() {
    let mut server = Redis::start();
    let mut redis = RedisThresholds::new(&server.url(), "test", BOUND).unwrap();
    let count2 = [step("r", StepKind::Match(throttle(2, 0)))];
    assert_eq!(
        decide(&mut redis, "t", &count2, "a", 1).await,
        [Decision::Counting]
    );
    server.stop();
    let batch = [ObservationSteps {
        thing: "t",
        steps: &count2,
        step_id: "b",
        now_ms: 1,
    }];
    assert!(redis
        .decide(&batch, |rule| format!("{rule}:e1"))
        .await
        .is_err());
    assert!(redis.status().unavailable().is_some());
    server.start_again();
    // A new, empty Redis without the script: NOSCRIPT, loaded, decided.
    let mut answered = None;
    for _ in 0..50 {
        if let Ok(d) = redis.decide(&batch, |rule| format!("{rule}:e1")).await {
            answered = Some(d);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answered, Some(vec![vec![Decision::Counting]]));
    assert!(redis.status().unavailable().is_none());
}
