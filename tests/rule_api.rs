//! The Rule API (spec section 6, errors 1.2) over HTTP against the built `ccstream` binary:
//! every action and documented error, SQLite and PostgreSQL stores, restarts, ids, JWT roles
//! and domain visibility, the Lambda protocol errors, an unmodified boto3 client, and start-up
//! configuration checks.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::jwt::{self, RsaKey};
use common::{free_port, now_secs, run_to_exit, Ccstream, PgDb, LISTEN};
use serde_json::{json, Value};

const FUNCTION: &str = "RuleLambda";
/// At least 32 bytes: the binary refuses shorter HS256 secrets.
const SECRET: &str = "test-secret-0123456789abcdef0123456789";

fn sqlite_config() -> String {
    format!("[api]\nlisten = \"{LISTEN}\"\n")
}

fn postgres_config(db: &PgDb) -> String {
    format!(
        "[api]\nlisten = \"{LISTEN}\"\n[store]\nurl = \"{}\"\n",
        db.url()
    )
}

/// The spec 6.2.1 example rule, in `domain`.
fn attrs(domain: &str) -> Value {
    json!({
        "name": "Thing Overheating",
        "description": "Triggered if the temperature is too high",
        "enabled": true,
        "filter": {"domain": domain, "thingType": "Pump", "thingNames": ["thing-001", "thing-002"]},
        "expression": {"operator": "gte", "resource": "temp", "value": 50},
        "actions": [{"type": "WEBHOOK", "config": {"url": "https://example.com/hook"}}],
        "threshold": {"count": 0, "interval": 60000}
    })
}

fn create_payload(attributes: Value) -> Value {
    json!({"action": "CREATE", "attributes": attributes})
}

fn update_payload(id: &str, mut attributes: Value) -> Value {
    attributes["id"] = json!(id);
    json!({"action": "UPDATE", "attributes": attributes})
}

fn id_payload(action: &str, id: &str) -> Value {
    json!({"action": action, "attributes": {"id": id}})
}

enum Seg {
    Key(String),
    Idx(usize),
}

/// `filter.domain`, `actions[0].config.url` → path segments.
fn segments(path: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !name.is_empty() {
            out.push(Seg::Key(name.to_owned()));
        }
        while let Some(inner) = rest.strip_prefix('[') {
            let end = inner.find(']').unwrap();
            out.push(Seg::Idx(inner[..end].parse().unwrap()));
            rest = &inner[end + 1..];
        }
    }
    out
}

/// `value` with the property at `path` set to `new`, or removed when `new` is `None`.
fn with(mut value: Value, path: &str, new: Option<Value>) -> Value {
    let segs = segments(path);
    let (last, parents) = segs.split_last().unwrap();
    let mut cur = &mut value;
    for seg in parents {
        cur = match seg {
            Seg::Key(k) => cur.get_mut(k.as_str()).unwrap(),
            Seg::Idx(i) => cur.get_mut(*i).unwrap(),
        };
    }
    match (last, new) {
        (Seg::Key(k), Some(n)) => {
            cur.as_object_mut().unwrap().insert(k.clone(), n);
        }
        (Seg::Key(k), None) => {
            cur.as_object_mut().unwrap().remove(k);
        }
        (Seg::Idx(i), Some(n)) => cur[*i] = n,
        (Seg::Idx(i), None) => {
            cur.as_array_mut().unwrap().remove(*i);
        }
    }
    value
}

/// The property at `path`, if present.
fn path_value<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    segments(path).iter().try_fold(value, |cur, seg| match seg {
        Seg::Key(k) => cur.get(k.as_str()),
        Seg::Idx(i) => cur.get(*i),
    })
}

/// Rules of a LIST result by id.
fn by_id(list: &Value) -> BTreeMap<String, Value> {
    list.as_array()
        .unwrap_or_else(|| panic!("LIST must return an array: {list}"))
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_owned(), r.clone()))
        .collect()
}

fn ids(list: &Value) -> Vec<String> {
    by_id(list).into_keys().collect()
}

/// Asserts that `rule` carries what `attrs` asked for.
#[track_caller]
fn assert_rule_matches(rule: &Value, attrs: &Value) {
    for key in [
        "name",
        "description",
        "enabled",
        "filter",
        "expression",
        "threshold",
    ] {
        assert_eq!(rule.get(key), attrs.get(key), "{key} of {rule}");
    }
    let want = attrs["actions"].as_array().unwrap();
    let got = rule["actions"]
        .as_array()
        .unwrap_or_else(|| panic!("actions of {rule}"));
    assert_eq!(got.len(), want.len(), "actions of {rule}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g["type"], w["type"], "actions of {rule}");
        assert_eq!(g["config"]["url"], w["config"]["url"], "actions of {rule}");
    }
}

async fn create(svc: &Ccstream, attributes: Value, bearer: Option<&str>) -> Value {
    svc.invoke(FUNCTION, create_payload(attributes), bearer)
        .await
        .ok()
        .clone()
}

async fn list(svc: &Ccstream, bearer: Option<&str>) -> Value {
    svc.invoke(FUNCTION, json!({"action": "LIST"}), bearer)
        .await
        .ok()
        .clone()
}

/// CREATE (generated and explicit id), GET, LIST, UPDATE, REMOVE on an empty store.
async fn crud_flow(svc: &Ccstream) {
    assert_eq!(list(svc, None).await, json!([]));

    let a = attrs("root");
    let first = create(svc, a.clone(), None).await;
    assert_eq!(first["id"], "dev-00000001", "{first}");
    assert_eq!(first["readonly"], false, "{first}");
    assert_rule_matches(&first, &a);

    let got = svc
        .invoke(FUNCTION, id_payload("GET", "dev-00000001"), None)
        .await;
    assert_eq!(got.ok(), &first);

    let b = with(attrs("root"), "id", Some(json!("my-rule")));
    let second = create(svc, b.clone(), None).await;
    assert_eq!(second["id"], "my-rule");
    assert_rule_matches(&second, &b);

    let all = list(svc, None).await;
    let rules = by_id(&all);
    assert_eq!(ids(&all), ["dev-00000001", "my-rule"]);
    assert!(rules.values().all(|r| r["readonly"] == false), "{all}");
    assert_eq!(rules["dev-00000001"], first);

    // UPDATE replaces the whole rule: the threshold it leaves out is gone.
    let changed = with(
        with(
            with(attrs("root"), "name", Some(json!("Renamed"))),
            "expression",
            Some(json!({"operator": "lt", "resource": "pump.pressure", "value": 1.5})),
        ),
        "threshold",
        None,
    );
    let updated = svc
        .invoke(
            FUNCTION,
            update_payload("dev-00000001", changed.clone()),
            None,
        )
        .await;
    let updated = updated.ok();
    assert_eq!(updated["id"], "dev-00000001");
    assert_eq!(updated["readonly"], false);
    assert_rule_matches(updated, &changed);
    let got = svc
        .invoke(FUNCTION, id_payload("GET", "dev-00000001"), None)
        .await;
    assert_eq!(got.ok(), updated);
    assert!(
        got.body.get("threshold").is_none_or(Value::is_null),
        "{}",
        got.raw
    );

    let removed = svc
        .invoke(FUNCTION, id_payload("REMOVE", "my-rule"), None)
        .await;
    assert_eq!(removed.ok(), &Value::Null, "REMOVE returns null");
    assert_eq!(removed.raw.trim(), "null");
    svc.invoke(FUNCTION, id_payload("GET", "my-rule"), None)
        .await
        .expect_error("RULE_NOT_FOUND", Some("id"));
    assert_eq!(ids(&list(svc, None).await), ["dev-00000001"]);
}

/// Three rules, the last removed, a restart: the other two are found again and the next
/// generated id is the fourth (ids are never reused).
async fn restart_flow(svc: &mut Ccstream) {
    let mut made = Vec::new();
    for name in ["one", "two", "three"] {
        let rule = create(svc, with(attrs("root"), "name", Some(json!(name))), None).await;
        made.push(rule);
    }
    let made_ids: Vec<&str> = made.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(made_ids, ["dev-00000001", "dev-00000002", "dev-00000003"]);
    svc.invoke(FUNCTION, id_payload("REMOVE", "dev-00000003"), None)
        .await
        .ok();

    svc.restart().await;

    let all = list(svc, None).await;
    let rules = by_id(&all);
    assert_eq!(ids(&all), ["dev-00000001", "dev-00000002"], "{all}");
    assert_eq!(rules["dev-00000001"], made[0]);
    assert_eq!(rules["dev-00000002"], made[1]);
    let got = svc
        .invoke(FUNCTION, id_payload("GET", "dev-00000002"), None)
        .await;
    assert_eq!(got.ok(), &made[1]);

    let next = create(svc, attrs("root"), None).await;
    assert_eq!(
        next["id"], "dev-00000004",
        "generated ids must not be reused"
    );
}

// ---------------------------------------------------------------------------------------------
// CRUD and persistence

#[tokio::test]
async fn crud_flow_sqlite() {
    let svc = Ccstream::start(&sqlite_config()).await;
    crud_flow(&svc).await;
}

#[tokio::test]
async fn restart_keeps_rules_and_id_sequence_sqlite() {
    let mut svc = Ccstream::start(&sqlite_config()).await;
    restart_flow(&mut svc).await;
    assert!(
        svc.dir().join("data/ccstream.db").is_file(),
        "the default store is sqlite://data/ccstream.db relative to the working directory"
    );
}

#[tokio::test]
async fn crud_flow_postgres() {
    let db = PgDb::create();
    let svc = Ccstream::start(&postgres_config(&db)).await;
    crud_flow(&svc).await;
    let tables =
        db.query("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'");
    assert_ne!(
        tables, "0",
        "the binary made no tables in the test database"
    );
    assert!(
        !svc.dir().join("data/ccstream.db").exists(),
        "store.url = postgres://... must not use the SQLite file"
    );
}

#[tokio::test]
async fn restart_keeps_rules_and_id_sequence_postgres() {
    let db = PgDb::create();
    let mut svc = Ccstream::start(&postgres_config(&db)).await;
    restart_flow(&mut svc).await;
}

#[tokio::test]
async fn production_ids_have_no_stack_prefix() {
    let svc = Ccstream::start(&format!(
        "[stack]\nname = \"prod\"\nproduction = true\n{}",
        sqlite_config()
    ))
    .await;
    assert_eq!(create(&svc, attrs("root"), None).await["id"], "00000001");
    assert_eq!(create(&svc, attrs("root"), None).await["id"], "00000002");
}

#[tokio::test]
async fn ids_carry_the_stack_name() {
    let svc = Ccstream::start(&format!("[stack]\nname = \"qa\"\n{}", sqlite_config())).await;
    assert_eq!(create(&svc, attrs("root"), None).await["id"], "qa-00000001");
}

#[tokio::test]
async fn concurrent_creates_get_distinct_ids() {
    let svc = Arc::new(Ccstream::start(&sqlite_config()).await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let svc = Arc::clone(&svc);
        tasks.spawn(async move {
            let a = with(attrs("root"), "name", Some(json!(format!("rule {i}"))));
            create(&svc, a, None).await["id"]
                .as_str()
                .unwrap()
                .to_owned()
        });
    }
    let mut got = tasks.join_all().await;
    got.sort();
    let want: Vec<String> = (1..=20).map(|n| format!("dev-{n:08}")).collect();
    assert_eq!(got, want);
    assert_eq!(ids(&list(&svc, None).await), want);
}

// ---------------------------------------------------------------------------------------------
// CREATE / UPDATE / GET / REMOVE errors

#[tokio::test]
async fn create_reports_each_missing_property() {
    let svc = Ccstream::start(&sqlite_config()).await;
    for path in [
        "name",
        "enabled",
        "filter",
        "filter.domain",
        "filter.thingType",
        "expression",
        "expression.operator",
        "expression.resource",
        "expression.value",
        "actions",
    ] {
        let resp = svc
            .invoke(
                FUNCTION,
                create_payload(with(attrs("root"), path, None)),
                None,
            )
            .await;
        resp.expect_error("PROPERTY_REQUIRED", Some(path));
    }
    assert_eq!(list(&svc, None).await, json!([]));
}

#[tokio::test]
async fn create_optional_properties_may_be_left_out() {
    let svc = Ccstream::start(&sqlite_config()).await;
    // The rule may come back with the omitted property absent, null or at its neutral value
    // (an empty list, count 0): all mean the same.
    for (path, neutral) in [
        ("description", json!("")),
        ("filter.thingNames", json!([])),
        ("threshold", Value::Null),
        ("threshold.count", json!(0)),
    ] {
        let a = with(attrs("root"), path, None);
        let rule = create(&svc, a.clone(), None).await;
        let stripped = match path_value(&rule, path) {
            Some(v) if v.is_null() || *v == neutral => with(rule.clone(), path, None),
            _ => rule.clone(),
        };
        assert_rule_matches(&stripped, &a);
    }
    // `value` is a JSON scalar (eq/ne compare any scalar; the ordering operators may demand
    // numbers); every operator of spec 6.1 is accepted.
    for (op, value) in [
        ("eq", json!("on")),
        ("ne", json!(true)),
        ("gt", json!(12.5)),
        ("lte", json!(-3)),
    ] {
        let a = with(attrs("root"), "expression.operator", Some(json!(op)));
        create(&svc, with(a, "expression.value", Some(value)), None).await;
    }
    for op in ["gt", "gte", "lt", "lte", "eq", "ne"] {
        create(
            &svc,
            with(attrs("root"), "expression.operator", Some(json!(op))),
            None,
        )
        .await;
    }
}

#[tokio::test]
async fn create_rejects_wrong_types_and_values() {
    let svc = Ccstream::start(&sqlite_config()).await;
    let mut two_actions = attrs("root");
    two_actions["actions"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "SMS", "config": {"url": "https://example.com/x"}}));

    let cases: Vec<(Value, &str, &str)> = vec![
        (
            with(attrs("root"), "expression.operator", Some(json!("between"))),
            "INVALID_ARGUMENTS",
            "expression.operator",
        ),
        (
            with(attrs("root"), "expression.value", Some(json!({"a": 1}))),
            "INVALID_ARGUMENTS",
            "expression.value",
        ),
        (
            with(attrs("root"), "actions[0].type", Some(json!("EMAIL"))),
            "INVALID_ARGUMENTS",
            "actions[0].type",
        ),
        (two_actions, "INVALID_ARGUMENTS", "actions[1].type"),
        (
            with(
                attrs("root"),
                "actions[0].config.url",
                Some(json!("ftp://example.com/hook")),
            ),
            "INVALID_ARGUMENTS",
            "actions[0].config.url",
        ),
        (
            with(
                attrs("root"),
                "actions[0].config.url",
                Some(json!("not a url")),
            ),
            "INVALID_ARGUMENTS",
            "actions[0].config.url",
        ),
        (
            with(attrs("root"), "name", Some(json!(42))),
            "INVALID_ARGUMENTS",
            "name",
        ),
        (
            with(attrs("root"), "enabled", Some(json!("yes"))),
            "INVALID_ARGUMENTS",
            "enabled",
        ),
        (
            with(attrs("root"), "filter.thingNames", Some(json!("thing-001"))),
            "INVALID_ARGUMENTS",
            "filter.thingNames",
        ),
        (
            with(attrs("root"), "threshold.count", Some(json!("ten"))),
            "PROPERTY_NOT_A_NUMBER",
            "threshold.count",
        ),
        (
            with(attrs("root"), "threshold.interval", Some(json!("soon"))),
            "PROPERTY_NOT_A_NUMBER",
            "threshold.interval",
        ),
        (
            with(attrs("root"), "threshold.count", Some(json!(-1))),
            "PROPERTY_NOT_IN_RANGE",
            "threshold.count",
        ),
        (
            with(attrs("root"), "threshold.interval", Some(json!(-5))),
            "PROPERTY_NOT_IN_RANGE",
            "threshold.interval",
        ),
    ];
    for (attributes, key, property) in cases {
        let resp = svc
            .invoke(FUNCTION, create_payload(attributes.clone()), None)
            .await;
        let err = resp.function_error();
        assert_eq!(
            (err["messageKey"].as_str(), err["property"].as_str()),
            (Some(key), Some(property)),
            "CREATE {attributes} gave {err}"
        );
    }
    assert_eq!(
        list(&svc, None).await,
        json!([]),
        "nothing invalid was stored"
    );
}

#[tokio::test]
async fn create_with_an_existing_id_is_refused() {
    let svc = Ccstream::start(&sqlite_config()).await;
    let generated = create(&svc, attrs("root"), None).await;
    assert_eq!(generated["id"], "dev-00000001");
    create(
        &svc,
        with(attrs("root"), "id", Some(json!("my-rule"))),
        None,
    )
    .await;
    for id in ["my-rule", "dev-00000001"] {
        svc.invoke(
            FUNCTION,
            create_payload(with(attrs("root"), "id", Some(json!(id)))),
            None,
        )
        .await
        .expect_error("RULE_ID_EXISTS", Some("id"));
    }
    assert_eq!(ids(&list(&svc, None).await), ["dev-00000001", "my-rule"]);
}

/// Rules migrated with their ids may hold the numbers the sequence hands out next: an
/// id-less CREATE then gets the next free number instead of RULE_ID_EXISTS.
#[tokio::test]
async fn generated_ids_skip_ids_created_explicitly() {
    let svc = Ccstream::start(&sqlite_config()).await;
    for id in ["dev-00000001", "dev-00000002"] {
        create(&svc, with(attrs("root"), "id", Some(json!(id))), None).await;
    }
    let generated = create(&svc, attrs("root"), None).await;
    assert_eq!(generated["id"], "dev-00000003", "{generated}");
    assert_eq!(
        ids(&list(&svc, None).await),
        ["dev-00000001", "dev-00000002", "dev-00000003"]
    );
}

/// Spec 6.2.1.2: the created rule "as described above". What was given is answered as given:
/// an omitted optional property stays omitted, a thing type id stays a number.
#[tokio::test]
async fn rules_are_answered_as_they_were_given() {
    let svc = Ccstream::start(&sqlite_config()).await;
    let minimal = json!({
        "name": "minimal",
        "enabled": true,
        "filter": {"domain": "root", "thingType": 7},
        "expression": {"operator": "gt", "resource": "temp", "value": 50},
        "actions": [{"type": "WEBHOOK", "config": {"url": "https://example.com/hook"}}]
    });
    let created = create(&svc, minimal.clone(), None).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let mut expected = minimal.clone();
    expected["id"] = json!(id);
    expected["readonly"] = json!(false);
    assert_eq!(created, expected);
    let got = svc.invoke(FUNCTION, id_payload("GET", &id), None).await;
    assert_eq!(got.ok(), &expected);
    assert_eq!(list(&svc, None).await, json!([expected]));

    // Given, they come back, empty list included.
    let full = with(
        with(attrs("root"), "filter.thingNames", Some(json!([]))),
        "filter.thingType",
        Some(json!("7")),
    );
    let created = create(&svc, full.clone(), None).await;
    assert_eq!(created["filter"], full["filter"]);
    assert_eq!(created["threshold"], full["threshold"]);
    assert_eq!(created["description"], full["description"]);
}

#[tokio::test]
async fn get_and_remove_errors() {
    let svc = Ccstream::start(&sqlite_config()).await;
    for action in ["GET", "REMOVE"] {
        svc.invoke(FUNCTION, json!({"action": action, "attributes": {}}), None)
            .await
            .expect_error("PROPERTY_REQUIRED", Some("id"));
        svc.invoke(FUNCTION, json!({"action": action}), None)
            .await
            .expect_error("PROPERTY_REQUIRED", Some("id"));
        svc.invoke(FUNCTION, id_payload(action, "dev-00000099"), None)
            .await
            .expect_error("RULE_NOT_FOUND", Some("id"));
    }
}

#[tokio::test]
async fn update_errors() {
    let svc = Ccstream::start(&sqlite_config()).await;
    let rule = create(&svc, attrs("root"), None).await;
    let id = rule["id"].as_str().unwrap();

    svc.invoke(
        FUNCTION,
        json!({"action": "UPDATE", "attributes": attrs("root")}),
        None,
    )
    .await
    .expect_error("PROPERTY_REQUIRED", Some("id"));
    svc.invoke(
        FUNCTION,
        update_payload("dev-00000099", attrs("root")),
        None,
    )
    .await
    .expect_error("RULE_NOT_FOUND", Some("id"));
    // The same validation as CREATE.
    svc.invoke(
        FUNCTION,
        update_payload(id, with(attrs("root"), "name", None)),
        None,
    )
    .await
    .expect_error("PROPERTY_REQUIRED", Some("name"));
    svc.invoke(
        FUNCTION,
        update_payload(id, with(attrs("root"), "expression.resource", None)),
        None,
    )
    .await
    .expect_error("PROPERTY_REQUIRED", Some("expression.resource"));
    svc.invoke(
        FUNCTION,
        update_payload(
            id,
            with(attrs("root"), "expression.operator", Some(json!("like"))),
        ),
        None,
    )
    .await
    .expect_error("INVALID_ARGUMENTS", Some("expression.operator"));
    svc.invoke(
        FUNCTION,
        update_payload(
            id,
            with(attrs("root"), "threshold.interval", Some(json!(-1))),
        ),
        None,
    )
    .await
    .expect_error("PROPERTY_NOT_IN_RANGE", Some("threshold.interval"));

    let got = svc.invoke(FUNCTION, id_payload("GET", id), None).await;
    assert_eq!(got.ok(), &rule, "failed updates changed nothing");
}

#[tokio::test]
async fn payload_errors() {
    let svc = Ccstream::start(&sqlite_config()).await;
    for payload in [json!([1, 2]), json!("LIST"), json!(42)] {
        svc.invoke(FUNCTION, payload, None)
            .await
            .expect_error("INVALID_ARGUMENTS", Some("payload"));
    }
    svc.invoke(FUNCTION, json!({}), None)
        .await
        .expect_error("PROPERTY_REQUIRED", Some("action"));
    svc.invoke(FUNCTION, json!({"attributes": {"id": "x"}}), None)
        .await
        .expect_error("PROPERTY_REQUIRED", Some("action"));
    let err = svc
        .invoke(FUNCTION, json!({"action": "FROBNICATE"}), None)
        .await
        .expect_error("INVALID_ACTION", None);
    assert_eq!(
        err["messageParams"],
        json!({"action": "FROBNICATE"}),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Protocol

#[tokio::test]
async fn protocol_errors() {
    let svc = Ccstream::start(&sqlite_config()).await;

    svc.invoke("dev-UserLambda-12345", json!({"action": "LIST"}), None)
        .await
        .expect_protocol_error(404, "ResourceNotFoundException");
    svc.invoke("Rule", json!({"action": "LIST"}), None)
        .await
        .expect_protocol_error(404, "ResourceNotFoundException");

    svc.invoke_raw(FUNCTION, br#"{"action": "LIST""#.to_vec(), None, &[])
        .await
        .expect_protocol_error(400, "InvalidRequestContentException");
    svc.invoke_raw(FUNCTION, b"not json".to_vec(), None, &[])
        .await
        .expect_protocol_error(400, "InvalidRequestContentException");

    // Valid JSON padded with whitespace: just over 1 MiB is refused, just under is served.
    let padded = |len: usize| {
        let mut body = br#"{"action":"LIST"}"#.to_vec();
        body.resize(len, b' ');
        body
    };
    // Every try, not just most: the server must read (or drain) the body before it answers,
    // or the client sees a connection reset instead of the 413.
    for _ in 0..5 {
        svc.try_invoke_raw(FUNCTION, padded(1024 * 1024 + 1), None, &[])
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "a body over 1 MiB must get a 413 response, the request failed instead \
                     (the server answered before draining the body?): {e:?}"
                )
            })
            .expect_protocol_error(413, "RequestTooLargeException");
    }
    let under = svc
        .invoke_raw(FUNCTION, padded(1024 * 1024 - 1024), None, &[])
        .await;
    assert_eq!(under.ok(), &json!([]));

    // An empty body counts as `{}`.
    svc.invoke_raw(FUNCTION, Vec::new(), None, &[])
        .await
        .expect_error("PROPERTY_REQUIRED", Some("action"));

    // A SigV4-signed request (as the AWS SDKs send) is accepted with auth = "none".
    let sigv4 = "AWS4-HMAC-SHA256 Credential=x/20260101/eu-west-1/lambda/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature=0123456789abcdef";
    let resp = svc
        .invoke_raw(
            FUNCTION,
            br#"{"action":"LIST"}"#.to_vec(),
            None,
            &[("Authorization", sigv4), ("X-Amz-Date", "20260101T000000Z")],
        )
        .await;
    assert_eq!(resp.ok(), &json!([]));
}

#[tokio::test]
async fn function_names_containing_rule_lambda_reach_the_rule_api() {
    let svc = Ccstream::start(&sqlite_config()).await;
    for name in ["RuleLambda", "dev-RuleLambda-12345", "prod-RuleLambda"] {
        let resp = svc.invoke(name, json!({"action": "LIST"}), None).await;
        assert_eq!(resp.ok(), &json!([]), "{name}");
    }
    let rule = create(&svc, attrs("root"), None).await;
    let got = svc
        .invoke(
            "dev-RuleLambda-12345",
            id_payload("GET", "dev-00000001"),
            None,
        )
        .await;
    assert_eq!(got.ok(), &rule);
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let svc = Ccstream::start(&sqlite_config()).await;
    assert_eq!(svc.get("/healthz").await.0, 200);
    assert_eq!(svc.get("/readyz").await.0, 200);
    list(&svc, None).await;
    let (status, metrics) = svc.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("ccstream_api_requests_total"),
        "metrics:\n{metrics}"
    );
}

#[tokio::test]
async fn unmodified_boto3_client_drives_the_rule_api() {
    let svc = Ccstream::start(&sqlite_config()).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk_invoke.py");
    let out_path = svc.dir().join("sdk.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .arg(svc.base_url())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("run python3 (scripts/setup-test-deps.sh installs boto3)");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "sdk_invoke.py timed out:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    assert!(
        status.success(),
        "sdk_invoke.py failed ({status}):\n{output}"
    );
    assert!(output.contains("sdk_invoke: OK"), "{output}");
    assert_eq!(
        list(&svc, None).await,
        json!([]),
        "the script removed its rule"
    );
}

// ---------------------------------------------------------------------------------------------
// JWT

fn jwt_config(jwt_section: &str, domains: &str) -> String {
    format!("[api]\nlisten = \"{LISTEN}\"\nauth = \"jwt\"\n[api.jwt]\n{jwt_section}\n{domains}")
}

fn hs256_config(domains: &str) -> String {
    jwt_config(&format!("hs256_secret = \"{SECRET}\""), domains)
}

const TREE: &str = r#"
[[domains]]
id = "a"
parent = "root"
[[domains]]
id = "a1"
parent = "a"
[[domains]]
id = "b"
parent = "root"
"#;

fn token(user: &str, role: &str, domain: &str) -> String {
    jwt::hs256(&jwt::claims(user, role, domain), SECRET)
}

#[tokio::test]
async fn jwt_hs256_roles() {
    let svc = Ccstream::start(&hs256_config("")).await;
    let reader = token("reader", "Read", "root");
    let writer = token("writer", "ReadWrite", "root");
    let reader = Some(reader.as_str());
    let writer = Some(writer.as_str());

    assert_eq!(list(&svc, reader).await, json!([]));
    let err = svc
        .invoke(FUNCTION, create_payload(attrs("root")), reader)
        .await
        .expect_error("NOT_AUTHORIZED", None);
    assert_eq!(
        err["messageParams"],
        json!({"operation": "CREATE", "objectType": "RULE"}),
        "{err}"
    );

    let rule = create(&svc, attrs("root"), writer).await;
    let id = rule["id"].as_str().unwrap();
    assert_eq!(rule["readonly"], false);

    let got = svc.invoke(FUNCTION, id_payload("GET", id), reader).await;
    assert_eq!(got.ok(), &rule);
    assert_eq!(ids(&list(&svc, reader).await), [id]);

    let err = svc
        .invoke(FUNCTION, update_payload(id, attrs("root")), reader)
        .await
        .expect_error("NOT_AUTHORIZED", None);
    assert_eq!(
        err["messageParams"],
        json!({"operation": "UPDATE", "objectType": "RULE"}),
        "{err}"
    );
    let err = svc
        .invoke(FUNCTION, id_payload("REMOVE", id), reader)
        .await
        .expect_error("NOT_AUTHORIZED", None);
    assert_eq!(
        err["messageParams"],
        json!({"operation": "REMOVE", "objectType": "RULE"}),
        "{err}"
    );
    assert_eq!(
        ids(&list(&svc, writer).await),
        [id],
        "a reader changed nothing"
    );

    let renamed = with(attrs("root"), "name", Some(json!("Renamed")));
    let updated = svc
        .invoke(FUNCTION, update_payload(id, renamed), writer)
        .await;
    assert_eq!(updated.ok()["name"], "Renamed");
    let removed = svc.invoke(FUNCTION, id_payload("REMOVE", id), writer).await;
    assert_eq!(removed.ok(), &Value::Null);
}

#[tokio::test]
async fn jwt_rejects_missing_invalid_and_expired_tokens() {
    let svc = Ccstream::start(&hs256_config("")).await;
    let expired = jwt::hs256(
        &json!({"sub": "u", "role": "ReadWrite", "domain": "root", "exp": now_secs() - 3600}),
        SECRET,
    );
    let wrong_secret = jwt::hs256(
        &jwt::claims("u", "ReadWrite", "root"),
        "another-secret-0123456789abcdef0123456789",
    );
    let unsigned = {
        let valid = token("u", "ReadWrite", "root");
        let mut parts: Vec<&str> = valid.split('.').collect();
        parts[2] = "";
        parts.join(".")
    };
    for bearer in [
        None,
        Some("not-a-jwt"),
        Some(expired.as_str()),
        Some(wrong_secret.as_str()),
        Some(unsigned.as_str()),
    ] {
        svc.invoke(FUNCTION, json!({"action": "LIST"}), bearer)
            .await
            .expect_protocol_error(401, "UnrecognizedClientException");
    }
    // A SigV4 header is no bearer token.
    svc.invoke_raw(
        FUNCTION,
        br#"{"action":"LIST"}"#.to_vec(),
        None,
        &[(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=x/20260101/eu-west-1/lambda/aws4_request, \
             SignedHeaders=host, Signature=00",
        )],
    )
    .await
    .expect_protocol_error(401, "UnrecognizedClientException");
    // Health endpoints need no token.
    assert_eq!(svc.get("/healthz").await.0, 200);
    let ok = token("u", "Read", "root");
    assert_eq!(list(&svc, Some(&ok)).await, json!([]));
}

#[tokio::test]
async fn jwt_domain_visibility_and_write_scope() {
    let svc = Ccstream::start(&hs256_config(TREE)).await;
    let root_rw = token("admin", "ReadWrite", "root");
    let root_rw = Some(root_rw.as_str());

    let mut rule_of = BTreeMap::new();
    for domain in ["root", "a", "a1", "b", "c"] {
        let a = with(
            attrs(domain),
            "name",
            Some(json!(format!("rule in {domain}"))),
        );
        let rule = create(&svc, a, root_rw).await;
        rule_of.insert(domain, rule["id"].as_str().unwrap().to_owned());
    }
    let id = |d: &str| rule_of[d].clone();

    // Visibility: own subtree writable, ancestors read-only, other branches hidden. `c` is not
    // in [[domains]]: a direct child of root.
    let expect_visible = [
        (
            "root",
            "Read",
            vec![
                ("root", false),
                ("a", false),
                ("a1", false),
                ("b", false),
                ("c", false),
            ],
        ),
        (
            "a",
            "ReadWrite",
            vec![("root", true), ("a", false), ("a1", false)],
        ),
        (
            "a1",
            "Read",
            vec![("root", true), ("a", true), ("a1", false)],
        ),
        ("b", "ReadWrite", vec![("root", true), ("b", false)]),
        ("zzz", "Read", vec![("root", true)]),
    ];
    for (domain, role, visible) in expect_visible {
        let t = token("u", role, domain);
        let all = list(&svc, Some(&t)).await;
        let rules = by_id(&all);
        let want: BTreeMap<String, bool> = visible.iter().map(|(d, ro)| (id(d), *ro)).collect();
        let got: BTreeMap<String, bool> = rules
            .iter()
            .map(|(k, r)| (k.clone(), r["readonly"].as_bool().unwrap()))
            .collect();
        assert_eq!(
            got, want,
            "LIST (id → readonly) for a user of domain {domain}"
        );
        for (d, ro) in &visible {
            let got = svc
                .invoke(FUNCTION, id_payload("GET", &id(d)), Some(&t))
                .await;
            assert_eq!(
                got.ok()["readonly"],
                *ro,
                "GET {d} rule as user of {domain}"
            );
        }
    }

    let a_rw = token("ann", "ReadWrite", "a");
    let a_rw = Some(a_rw.as_str());
    for hidden in ["b", "c"] {
        svc.invoke(FUNCTION, id_payload("GET", &id(hidden)), a_rw)
            .await
            .expect_error("NOT_AUTHORIZED_DOMAIN", None);
    }
    // Writes outside the caller's subtree: ancestor (readonly) rules, other branches, moves.
    for target in ["root", "b"] {
        svc.invoke(FUNCTION, update_payload(&id(target), attrs(target)), a_rw)
            .await
            .expect_error("NOT_AUTHORIZED_DOMAIN", None);
        svc.invoke(FUNCTION, id_payload("REMOVE", &id(target)), a_rw)
            .await
            .expect_error("NOT_AUTHORIZED_DOMAIN", None);
        svc.invoke(FUNCTION, create_payload(attrs(target)), a_rw)
            .await
            .expect_error("NOT_AUTHORIZED_DOMAIN", None);
        svc.invoke(FUNCTION, update_payload(&id("a1"), attrs(target)), a_rw)
            .await
            .expect_error("NOT_AUTHORIZED_DOMAIN", None);
    }
    svc.invoke(FUNCTION, update_payload(&id("b"), attrs("a")), a_rw)
        .await
        .expect_error("NOT_AUTHORIZED_DOMAIN", None);

    // Inside the subtree everything works.
    let made = create(&svc, attrs("a1"), a_rw).await;
    assert_eq!(made["readonly"], false);
    let moved = svc
        .invoke(FUNCTION, update_payload(&id("a1"), attrs("a")), a_rw)
        .await;
    assert_eq!(moved.ok()["filter"]["domain"], "a");
    let removed = svc
        .invoke(FUNCTION, id_payload("REMOVE", &id("a")), a_rw)
        .await;
    assert_eq!(removed.ok(), &Value::Null);

    // Nothing outside a's subtree changed.
    let all = by_id(&list(&svc, root_rw).await);
    for d in ["root", "b", "c"] {
        assert_eq!(
            all[&id(d)]["name"],
            format!("rule in {d}"),
            "{d} rule untouched"
        );
        assert_eq!(all[&id(d)]["filter"]["domain"], d);
    }
    assert!(!all.contains_key(&id("a")));
    assert_eq!(all[&id("a1")]["filter"]["domain"], "a");
    assert!(all.contains_key(made["id"].as_str().unwrap()));
}

#[tokio::test]
async fn jwt_claim_names_are_configurable() {
    let config = jwt_config(
        &format!(
            "hs256_secret = \"{SECRET}\"\nuser_claim = \"email\"\nrole_claim = \"cc_role\"\n\
             domain_claim = \"cc_domain\""
        ),
        TREE,
    );
    let svc = Ccstream::start(&config).await;
    let custom = |role: &str, domain: &str| {
        jwt::hs256(
            &json!({"email": "u@example.com", "cc_role": role, "cc_domain": domain,
                    "exp": now_secs() + 3600}),
            SECRET,
        )
    };
    let root_rw = custom("ReadWrite", "root");
    let root_rule = create(&svc, attrs("root"), Some(&root_rw)).await;
    create(&svc, attrs("b"), Some(&root_rw)).await;

    let a_read = custom("Read", "a");
    let seen = list(&svc, Some(&a_read)).await;
    assert_eq!(ids(&seen), [root_rule["id"].as_str().unwrap()]);
    assert_eq!(seen[0]["readonly"], true);
    svc.invoke(FUNCTION, create_payload(attrs("a")), Some(&a_read))
        .await
        .expect_error("NOT_AUTHORIZED", None);
}

#[tokio::test]
async fn jwt_rs256() {
    let keys_dir = tempfile::TempDir::new().unwrap();
    let key = RsaKey::generate(keys_dir.path());
    let other = RsaKey::generate(keys_dir.path());
    let config = jwt_config(
        &format!("rs256_public_key_pem = '''\n{}'''", key.public_pem),
        TREE,
    );
    let svc = Ccstream::start(&config).await;

    let writer = jwt::rs256(&jwt::claims("w", "ReadWrite", "a"), &key);
    let reader = jwt::rs256(&jwt::claims("r", "Read", "a"), &key);
    let rule = create(&svc, attrs("a1"), Some(&writer)).await;
    assert_eq!(rule["readonly"], false);
    svc.invoke(FUNCTION, create_payload(attrs("a")), Some(&reader))
        .await
        .expect_error("NOT_AUTHORIZED", None);
    svc.invoke(FUNCTION, create_payload(attrs("b")), Some(&writer))
        .await
        .expect_error("NOT_AUTHORIZED_DOMAIN", None);
    assert_eq!(
        ids(&list(&svc, Some(&reader)).await),
        [rule["id"].as_str().unwrap()]
    );

    let foreign_key = jwt::rs256(&jwt::claims("w", "ReadWrite", "a"), &other);
    let hs = jwt::hs256(&jwt::claims("w", "ReadWrite", "a"), SECRET);
    let expired = jwt::rs256(
        &json!({"sub": "w", "role": "ReadWrite", "domain": "a", "exp": now_secs() - 3600}),
        &key,
    );
    for bad in [foreign_key, hs, expired] {
        svc.invoke(FUNCTION, json!({"action": "LIST"}), Some(&bad))
            .await
            .expect_protocol_error(401, "UnrecognizedClientException");
    }
}

// ---------------------------------------------------------------------------------------------
// Start-up configuration

const REFUSE_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn unknown_config_keys_are_refused_by_name() {
    for (config, key) in [
        (
            format!("[api]\nlisten = \"{LISTEN}\"\nbogus_option = 1\n"),
            "bogus_option",
        ),
        (
            format!("[api]\nlisten = \"{LISTEN}\"\n[nosuchsection]\nx = 1\n"),
            "nosuchsection",
        ),
        (
            format!("[api]\nlisten = \"{LISTEN}\"\n[store]\nurll = \"sqlite://x.db\"\n"),
            "urll",
        ),
    ] {
        let exited = run_to_exit(&config, None, &[], REFUSE_TIMEOUT);
        assert!(
            !exited.status.success(),
            "config with unknown key {key} must be refused:\n{}",
            exited.output()
        );
        assert!(
            exited.output().contains(key),
            "the error must name {key}:\n{}",
            exited.output()
        );
    }
}

#[tokio::test]
async fn auth_none_is_refused_on_a_non_loopback_address() {
    let listen = format!("0.0.0.0:{}", free_port());
    let config = format!("[api]\nlisten = \"{listen}\"\nauth = \"none\"\n");
    let exited = run_to_exit(&config, None, &[], REFUSE_TIMEOUT);
    assert!(
        !exited.status.success(),
        "auth = \"none\" on {listen} must be refused:\n{}",
        exited.output()
    );
}

#[tokio::test]
async fn environment_overrides_the_config_file() {
    let file_port = free_port();
    let env_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!("[api]\nlisten = \"127.0.0.1:{file_port}\"\n[stack]\nname = \"file\"\n");
    let env_listen = env_addr.to_string();
    let svc = Ccstream::start_with(
        &config,
        &[
            ("CCSTREAM_API__LISTEN", env_listen.as_str()),
            ("CCSTREAM_STACK__NAME", "qa"),
            ("CCSTREAM_STORE__URL", "sqlite://custom.db"),
        ],
        env_addr,
    )
    .await;
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", file_port)).is_err(),
        "the file's listen address must be overridden"
    );
    assert_eq!(create(&svc, attrs("root"), None).await["id"], "qa-00000001");
    assert!(svc.dir().join("custom.db").is_file(), "CCSTREAM_STORE__URL");
    assert!(!svc.dir().join("data/ccstream.db").exists());
}
