//! `directory.resolver`: updates of things the directory does not know, against the built
//! binary, a real Mosquitto and a webhook receiver, with the thing's service answering:
//!
//! - `aws-iot`: moto in server mode (no AWS account here), things created with boto3 with a
//!   thing type and a `domain` attribute; ccstream asks with `aws-sdk-iot`'s DescribeThing;
//! - `thing-lambda`: a stand-in written here that speaks the Lambda Invoke protocol (the
//!   platform's ThingLambda cannot run here) and answers GET and FIND as spec 11 describes.
//!
//! A burst of 1,000 updates from 100 unknown things makes 100 lookups and fires every rule as
//! if the things had been known (count thresholds included, so the order per thing is kept);
//! while the service is down the updates are stored, counted unresolved, and the thing is
//! asked again later.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use common::receiver::Receiver;
use common::{free_port, unique_suffix, Ccstream, LISTEN};
use serde_json::{json, Value};
use testkit::mosquitto::{publish_all, Mosquitto};
use testkit::moto::{self, Moto};

const RULES: &str = "RuleLambda";
const WAIT: Duration = Duration::from_secs(30);
const THINGS: usize = 100;
const UPDATES_PER_THING: usize = 10;

fn aws_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AWS_ACCESS_KEY_ID", moto::ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", moto::SECRET_KEY),
        ("AWS_REGION", moto::REGION),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
}

fn thing(j: usize) -> String {
    format!("dev-{j:03}")
}

/// Even things are in `sub1` (given as an id), odd ones in `sub2` (given as its path).
fn domain_of(j: usize) -> &'static str {
    if j.is_multiple_of(2) {
        "sub1"
    } else {
        "sub2"
    }
}

/// ccstream against `broker`, knowing the domains of fixtures/directory/small.json but none of
/// the `dev-*` things, with `[directory]` lines `directory`.
async fn start(broker: &Mosquitto, directory: &str) -> Ccstream {
    start_with(
        broker,
        Sections {
            directory,
            ..Sections::default()
        },
    )
    .await
}

/// More lines for some sections of the test's configuration.
#[derive(Default)]
struct Sections<'a> {
    mqtt: &'a str,
    engine: &'a str,
    directory: &'a str,
}

async fn start_with(broker: &Mosquitto, more: Sections<'_>) -> Ccstream {
    let suffix = unique_suffix();
    let config = format!(
        "[stack]\nname = \"resolver-{suffix}\"\n\
         [api]\nlisten = \"{LISTEN}\"\n\
         [mqtt]\nembedded = false\nurl = \"{}\"\nclient_id = \"resolver-{suffix}\"\n{}\n\
         [webhook]\nallow_cidrs = [\"127.0.0.1/32\"]\nbackoff_initial_ms = 50\n\
         [engine]\nrules_poll_ms = 200\n{}\n\
         [directory]\nimport_file = \"{}/fixtures/directory/small.json\"\n{}\n",
        broker.url(),
        more.mqtt,
        more.engine,
        env!("CARGO_MANIFEST_DIR"),
        more.directory,
    );
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let svc =
        Ccstream::start_with(&config.replace(LISTEN, &addr.to_string()), &aws_env(), addr).await;
    wait_ready(&svc).await;
    svc
}

/// Waits until `/readyz` answers 200 (subscribed: the first session has no queue before).
async fn wait_ready(svc: &Ccstream) {
    let deadline = Instant::now() + WAIT;
    while svc.get("/readyz").await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "/readyz never 200:\n{}",
            svc.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two rules on `temp` for Pumps in sub1 (and so sub2): `hot` fires at every match, `third` at
/// every third match in a row.
async fn create_rules(svc: &Ccstream, hooks: &Receiver) {
    for (id, threshold) in [("hot", Value::Null), ("third", json!({"count": 3}))] {
        let mut rule = json!({
            "id": id, "name": id, "enabled": true,
            "filter": {"domain": "sub1", "thingType": "Pump", "thingNames": []},
            "expression": {"operator": "gte", "resource": "temp", "value": 50},
            "actions": [{"type": "WEBHOOK", "config": {"url": hooks.url(&format!("/{id}"))}}]
        });
        if !threshold.is_null() {
            rule["threshold"] = threshold;
        }
        svc.invoke(RULES, json!({"action": "CREATE", "attributes": rule}), None)
            .await
            .ok();
    }
    wait_metric(svc, "ccstream_rules_loaded", 2.0).await;
}

/// Waits until the metric `series` is at least `at_least`.
async fn wait_metric(svc: &Ccstream, series: &str, at_least: f64) {
    let deadline = Instant::now() + WAIT;
    while svc.metric(series).await < at_least {
        assert!(
            Instant::now() < deadline,
            "{series} stayed below {at_least}:\n{}",
            svc.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `UPDATES_PER_THING` updates of every thing, round after round (thing after thing within a
/// round), with `temp` 50, 51, ... per thing.
fn burst() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for k in 0..UPDATES_PER_THING {
        for j in 0..THINGS {
            let payload = json!({"state": {"reported": {"temp": 50 + k}}});
            out.push((
                format!("$aws/things/{}/shadow/update", thing(j)),
                payload.to_string().into_bytes(),
            ));
        }
    }
    out
}

/// (thing, temp) of every firing of rule `id`, sorted.
fn fired(hooks: &Receiver, id: &str) -> Vec<(String, i64)> {
    let mut got: Vec<(String, i64)> = hooks
        .requests_to(&format!("/{id}"))
        .iter()
        .map(|r| {
            let body = r.json();
            (
                body["thing"]["thingName"].as_str().unwrap().to_owned(),
                body["resource"]["value"].as_i64().unwrap(),
            )
        })
        .collect();
    got.sort();
    got
}

/// What the rules fire for the burst when every thing is known: `hot` every update, `third`
/// at the 3rd, 6th and 9th.
fn expected(id: &str) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for j in 0..THINGS {
        for k in 0..UPDATES_PER_THING {
            if id == "hot" || (k + 1).is_multiple_of(3) {
                out.push((thing(j), 50 + k as i64));
            }
        }
    }
    out.sort();
    out
}

/// Publishes the burst and checks that the rules fired as if the things had been known, and
/// that the directory now has every thing with its type and domain.
async fn burst_fires_as_if_known(svc: &Ccstream, broker: &Mosquitto, hooks: &Receiver) {
    let started = Instant::now();
    publish_all(broker.port(), burst()).await;
    let total = expected("hot").len() + expected("third").len();
    assert!(
        hooks.wait_for(total, WAIT).await.is_some(),
        "{} of {total} firings arrived; logs:\n{}",
        hooks.count(),
        svc.logs()
    );
    // For BENCHMARKS.md: the burst with lookups against the same burst with known things.
    eprintln!(
        "burst of {} updates: {total} firings arrived {:?} after the first publish",
        THINGS * UPDATES_PER_THING,
        started.elapsed()
    );
    assert_eq!(fired(hooks, "hot"), expected("hot"));
    assert_eq!(
        fired(hooks, "third"),
        expected("third"),
        "count thresholds see each thing's updates in order"
    );
    let (status, body) = svc.get("/directory").await;
    assert_eq!(status, 200, "{body}");
    let directory: Value = serde_json::from_str(&body).unwrap();
    let things: HashMap<&str, &Value> = directory["things"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["thingName"].as_str().unwrap(), t))
        .collect();
    for j in 0..THINGS {
        let t = things
            .get(thing(j).as_str())
            .expect("the thing is in the directory");
        assert_eq!(t["thingType"], "Pump");
        assert_eq!(t["domain"], domain_of(j));
    }
    assert_eq!(
        svc.metric("ccstream_observations_unknown_thing_total")
            .await,
        0.0
    );
}

// ---------------------------------------------------------------------------------------------
// aws-iot, against moto

/// Creates the thing type Pump and the `dev-*` things in moto with boto3.
fn create_things_in_moto(moto: &Moto) {
    let script = r#"
import sys, boto3
iot = boto3.client("iot", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="k", aws_secret_access_key="s")
iot.create_thing_type(thingTypeName="Pump")
for j in range(int(sys.argv[2])):
    domain = "sub1" if j % 2 == 0 else "/sub1/sub2/"
    iot.create_thing(thingName=f"dev-{j:03}", thingTypeName="Pump",
                     attributePayload={"attributes": {"domain": domain}})
iot.create_thing(thingName="no-domain", thingTypeName="Pump")
"#;
    let out = std::process::Command::new(moto::python_executable())
        .args(["-c", script, &moto.endpoint(), &THINGS.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// DescribeThing requests moto answered for `thing`.
fn describe_requests(moto: &Moto) -> usize {
    moto.log()
        .lines()
        .filter(|l| l.contains("GET /things/dev-"))
        .count()
}

#[tokio::test]
async fn aws_iot_one_lookup_per_unknown_thing_and_rules_fire_as_if_known() {
    let moto = Moto::start();
    create_things_in_moto(&moto);
    let broker = Mosquitto::start();
    let hooks = Receiver::start();
    let mut svc = start(
        &broker,
        &format!(
            // moto answers its first IoT calls slowly while it loads the service.
            "resolver = \"aws-iot\"\nregion = \"us-east-1\"\nendpoint = \"{}\"\n\
             resolve_timeout_ms = 30000\n",
            moto.endpoint()
        ),
    )
    .await;
    create_rules(&svc, &hooks).await;

    burst_fires_as_if_known(&svc, &broker, &hooks).await;
    assert_eq!(
        describe_requests(&moto),
        THINGS,
        "one DescribeThing per thing"
    );
    assert_eq!(
        svc.metric("ccstream_directory_lookups_total{outcome=\"found\",resolver=\"aws-iot\"}")
            .await,
        THINGS as f64
    );

    // Not in AWS IoT, and in it without a domain: stored, not evaluated, asked about once: the
    // second round comes after the first was answered, so it meets the cached answer.
    for round in 1..=2 {
        let misses: Vec<(String, Vec<u8>)> = ["ghost-1", "no-domain"]
            .iter()
            .map(|t| {
                (
                    format!("$aws/things/{t}/shadow/update"),
                    br#"{"state":{"reported":{"temp":99}}}"#.to_vec(),
                )
            })
            .collect();
        publish_all(broker.port(), misses).await;
        let unknown = 2.0 * f64::from(round);
        wait_metric(&svc, "ccstream_observations_unknown_thing_total", unknown).await;
    }
    assert_eq!(
        svc.metric("ccstream_directory_lookups_total{outcome=\"not_found\",resolver=\"aws-iot\"}")
            .await,
        2.0,
        "a negative answer is cached"
    );
    assert_eq!(hooks.requests_to("/hot").len(), expected("hot").len());

    // A restart knows the things from the store: the next update fires without a lookup.
    svc.restart().await;
    wait_ready(&svc).await;
    let update = json!({"state": {"reported": {"temp": 70}}}).to_string();
    broker.publish(
        &format!("$aws/things/{}/shadow/update", thing(7)),
        update.as_bytes(),
    );
    let want = expected("hot").len() + 1;
    assert!(
        hooks
            .wait_until(WAIT, |got| got.iter().filter(|r| r.path == "/hot").count()
                >= want)
            .await
            .is_some(),
        "no firing after the restart:\n{}",
        svc.logs()
    );
    assert_eq!(
        describe_requests(&moto),
        THINGS,
        "no lookup after the restart"
    );
}

// ---------------------------------------------------------------------------------------------
// thing-lambda, against a stand-in speaking the Lambda Invoke protocol

/// ThingLambda as spec 11 describes GET and FIND, with a switch that makes it answer 503.
#[derive(Clone, Default)]
struct ThingLambda {
    /// thing → (type, domain id, domainTopic).
    things: Arc<BTreeMap<String, (String, String, String)>>,
    gets: Arc<Mutex<Vec<String>>>,
    finds: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
}

impl ThingLambda {
    fn with_things() -> ThingLambda {
        let things = (0..THINGS)
            .map(|j| {
                let topic = if j.is_multiple_of(2) {
                    "/sub1/"
                } else {
                    "/sub1/sub2/"
                };
                (thing(j), ("Pump".into(), domain_of(j).into(), topic.into()))
            })
            .collect();
        ThingLambda {
            things: Arc::new(things),
            ..ThingLambda::default()
        }
    }

    /// Serves on a free port; the endpoint URL.
    async fn serve(&self) -> String {
        let app = Router::new()
            .route("/2015-03-31/functions/{name}/invocations", post(invoke))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn gets(&self) -> Vec<String> {
        self.gets.lock().unwrap().clone()
    }

    fn thing_json(&self, name: &str) -> Option<Value> {
        self.things.get(name).map(|(ty, domain, topic)| {
            json!({"thingName": name, "thingType": ty,
                   "domain": {"id": domain, "name": domain, "description": "", "data": {}},
                   "domainTopic": topic})
        })
    }
}

/// A function error in the platform's format (spec 1.2).
fn function_error(key: &str, message: &str) -> Response {
    let error = json!({"message": message, "messageKey": key}).to_string();
    (
        StatusCode::OK,
        [("x-amz-function-error", "Unhandled")],
        Json(json!({ "errorMessage": error })),
    )
        .into_response()
}

async fn invoke(
    State(lambda): State<ThingLambda>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    assert_eq!(name, "ThingLambda");
    // The Invoke API takes the payload as it is, whatever its content type.
    let payload: Value = serde_json::from_slice(&body).expect("the payload is JSON");
    assert!(
        headers
            .get("authorization")
            .is_some_and(|a| a.to_str().unwrap().starts_with("AWS4-HMAC-SHA256 ")),
        "SigV4-signed"
    );
    if lambda.down.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("x-amzn-ErrorType", "ServiceException")],
            Json(json!({"Type": "Service", "message": "down for the test"})),
        )
            .into_response();
    }
    match payload["action"].as_str() {
        Some("GET") => {
            let thing = payload["attributes"]["thingName"]
                .as_str()
                .unwrap_or_default();
            lambda.gets.lock().unwrap().push(thing.to_owned());
            for asked in ["thingType", "domain", "domainTopic"] {
                assert!(
                    payload["attributes"].get(asked).is_some_and(Value::is_null),
                    "GET asks for {asked} with null: {payload}"
                );
            }
            match lambda.thing_json(thing) {
                Some(t) => Json(t).into_response(),
                None => function_error("THING_NOT_FOUND", "Thing not found"),
            }
        }
        Some("FIND") => {
            lambda.finds.fetch_add(1, Ordering::SeqCst);
            let query = &payload["query"];
            let size = query["size"].as_u64().unwrap_or(10) as usize;
            let after = query
                .pointer("/query/range/thingName/gt")
                .and_then(Value::as_str);
            let hits: Vec<Value> = lambda
                .things
                .keys()
                .filter(|n| after.is_none_or(|a| n.as_str() > a))
                .take(size)
                .map(|n| json!({"_source": lambda.thing_json(n)}))
                .collect();
            Json(json!({"hits": {"total": lambda.things.len(), "hits": hits}})).into_response()
        }
        _ => function_error("INVALID_ARGUMENTS", "unknown action"),
    }
}

fn thing_lambda_config(endpoint: &str) -> String {
    format!(
        "resolver = \"thing-lambda\"\nthing_lambda = \"ThingLambda\"\nregion = \"us-east-1\"\n\
         endpoint = \"{endpoint}\"\nretry_secs = 1\n"
    )
}

#[tokio::test]
async fn thing_lambda_one_get_per_unknown_thing_and_rules_fire_as_if_known() {
    let lambda = ThingLambda::with_things();
    let endpoint = lambda.serve().await;
    let broker = Mosquitto::start();
    let hooks = Receiver::start();
    let svc = start(&broker, &thing_lambda_config(&endpoint)).await;
    create_rules(&svc, &hooks).await;

    burst_fires_as_if_known(&svc, &broker, &hooks).await;
    let mut gets = lambda.gets();
    gets.sort();
    let want: Vec<String> = (0..THINGS).map(thing).collect();
    assert_eq!(gets, want, "one GET per thing");
    // The domain paths came with the answers: sub2 is under sub1.
    let (_, body) = svc.get("/directory").await;
    let directory: Value = serde_json::from_str(&body).unwrap();
    assert!(directory["domains"]
        .as_array()
        .unwrap()
        .contains(&json!({"id": "sub2", "parent": "sub1"})));
}

/// Four workers: each has its own waiting room, the one resolver's answers go to the worker
/// of their thing, and each worker decides its batches in Redis.
#[tokio::test]
async fn thing_lambda_with_threshold_state_in_redis_over_four_workers() {
    let lambda = ThingLambda::with_things();
    let endpoint = lambda.serve().await;
    let broker = Mosquitto::start();
    let hooks = Receiver::start();
    let engine =
        "state = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\nworkers = 4\n".to_owned();
    let svc = start_with(
        &broker,
        Sections {
            engine: &engine,
            directory: &thing_lambda_config(&endpoint),
            ..Sections::default()
        },
    )
    .await;
    create_rules(&svc, &hooks).await;

    // Held updates are decided in Redis like any batch: the same firings, in order.
    burst_fires_as_if_known(&svc, &broker, &hooks).await;
    assert_eq!(lambda.gets().len(), THINGS);
}

#[tokio::test]
async fn an_unknown_thing_on_a_thing_update_topic_is_resolved_then_its_path_checked() {
    let lambda = ThingLambda::with_things();
    let endpoint = lambda.serve().await;
    let broker = Mosquitto::start();
    let hooks = Receiver::start();
    let svc = start_with(
        &broker,
        Sections {
            mqtt: "topics = [\"thing-update/#\"]",
            directory: &thing_lambda_config(&endpoint),
            ..Sections::default()
        },
    )
    .await;
    create_rules(&svc, &hooks).await;
    let update = |topic: String, temp: i64| {
        (
            topic,
            json!({"state": {"reported": {"temp": temp}}})
                .to_string()
                .into_bytes(),
        )
    };
    // dev-001 is in sub2 (root/sub1/sub2): the wrong path first, while the thing is unknown.
    publish_all(
        broker.port(),
        vec![
            update(format!("thing-update/sub2/{}", thing(1)), 71),
            update(format!("thing-update/sub1/sub2/{}", thing(1)), 72),
            update(format!("thing-update/{}", thing(1)), 73),
        ],
    )
    .await;
    assert!(hooks.wait_for(1, WAIT).await.is_some(), "{}", svc.logs());
    let rejected = "ccstream_observations_rejected_total{reason=\"topic_domain\"}";
    wait_metric(&svc, rejected, 2.0).await;
    assert_eq!(fired(&hooks, "hot"), vec![(thing(1), 72)]);
    assert_eq!(lambda.gets(), vec![thing(1)]);
}

#[tokio::test]
async fn thing_lambda_down_updates_are_stored_counted_and_the_thing_is_asked_again() {
    let lambda = ThingLambda::with_things();
    lambda.down.store(true, Ordering::SeqCst);
    let endpoint = lambda.serve().await;
    let broker = Mosquitto::start();
    let hooks = Receiver::start();
    let svc = start(&broker, &thing_lambda_config(&endpoint)).await;
    create_rules(&svc, &hooks).await;

    let update = |temp: i64| {
        vec![(
            format!("$aws/things/{}/shadow/update", thing(0)),
            json!({"state": {"reported": {"temp": temp}}})
                .to_string()
                .into_bytes(),
        )]
    };
    // Down: the update is stored (a record in the spool), counted unresolved, not evaluated.
    publish_all(broker.port(), update(60)).await;
    let unresolved = "ccstream_observations_unresolved_total{reason=\"lookup_failed\"}";
    wait_metric(&svc, unresolved, 1.0).await;
    wait_metric(
        &svc,
        "ccstream_objects_records_total{kind=\"observations\"}",
        1.0,
    )
    .await;
    assert!(hooks.requests_to("/hot").is_empty());
    assert_eq!(
        svc.metric(
            "ccstream_directory_lookups_total{outcome=\"failed\",resolver=\"thing-lambda\"}"
        )
        .await,
        1.0
    );

    // Back: after retry_secs the thing is asked again and its next update fires.
    lambda.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    publish_all(broker.port(), update(61)).await;
    let got = hooks.wait_for(1, WAIT).await;
    assert!(
        got.is_some(),
        "no firing after the service came back:\n{}",
        svc.logs()
    );
    assert_eq!(fired(&hooks, "hot"), vec![(thing(0), 61)]);
    assert_eq!(lambda.gets(), vec![thing(0)], "asked again once it answers");
}

// Two workers: the command runs synchronously on one while the stand-in answers on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_import_from_thing_lambda_pages_through_find() {
    let lambda = ThingLambda::with_things();
    let endpoint = lambda.serve().await;
    let broker = Mosquitto::start();
    let hooks = Receiver::start();
    // No resolver: the things come from the import alone.
    let mut svc = start(&broker, "").await;
    let out = svc.run_command(&[
        "directory",
        "import",
        "--from-thing-lambda",
        "ThingLambda",
        "--region",
        "us-east-1",
        "--endpoint",
        &endpoint,
        "--page-size",
        "30",
    ]);
    assert!(out.status.success(), "{}", out.output());
    let report: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(report["things"], THINGS);
    // Three full pages, the rest, and the empty one that ends the paging.
    assert_eq!(report["pages"], 5);
    assert_eq!(
        lambda.finds.load(Ordering::SeqCst),
        5,
        "100 things in pages of 30"
    );
    assert_eq!(
        report["domains"], 2,
        "sub1 and sub2, from the domain topics"
    );

    // On SQLite the service takes the stored directory up at its next start.
    svc.restart().await;
    wait_ready(&svc).await;
    create_rules(&svc, &hooks).await;
    burst_fires_as_if_known(&svc, &broker, &hooks).await;
    assert!(lambda.gets().is_empty());
}
