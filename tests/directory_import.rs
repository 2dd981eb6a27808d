//! `directory.import_file` at start-up, read a piece at a time into the directory and one store
//! transaction (issue 18): a bad file stops the start, naming the entry or the line and column,
//! and leaves nothing of itself in the store, even when pieces before the bad entry had already
//! been written into the transaction.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{run_to_exit, Ccstream, LISTEN};
use serde_json::{json, Value};
use testkit::free_port;

fn config(store: &Path, import: &Path) -> String {
    let mqtt = free_port();
    format!(
        "[api]\nlisten = \"{LISTEN}\"\n\
         [store]\nurl = \"sqlite://{}\"\n\
         [mqtt]\nembedded = true\nembedded_listen = \"127.0.0.1:{mqtt}\"\n\
         url = \"mqtt://127.0.0.1:{mqtt}\"\n\
         [directory]\nimport_file = \"{}\"\n",
        store.display(),
        import.display()
    )
}

/// `count` things in domain `sub1`; the one at `empty_domain` has an empty domain.
fn snapshot(count: usize, empty_domain: Option<usize>) -> Value {
    let things: Vec<Value> = (0..count)
        .map(|i| {
            let domain = if Some(i) == empty_domain { "" } else { "sub1" };
            json!({"thingName": format!("bulk-{i:05}"), "thingType": "Pump", "domain": domain})
        })
        .collect();
    json!({"domains": [{"id": "sub1", "parent": "root"}], "things": things})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_import_file_stops_the_start_and_stores_nothing_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("ccstream.db");

    // Refused after the first 1,024 entries went into the store's transaction.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, snapshot(1500, Some(1400)).to_string()).unwrap();
    let exited = run_to_exit(&config(&store, &bad), None, &[], Duration::from_secs(60));
    assert!(!exited.status.success(), "{}", exited.output());
    assert!(
        exited
            .output()
            .contains("things[1400]: domain must not be empty"),
        "{}",
        exited.output()
    );

    // Cut short: the JSON error's position.
    let cut = dir.path().join("cut.json");
    let text = snapshot(1500, None).to_string();
    std::fs::write(&cut, &text[..text.len() / 2]).unwrap();
    let exited = run_to_exit(&config(&store, &cut), None, &[], Duration::from_secs(60));
    assert!(!exited.status.success(), "{}", exited.output());
    let output = exited.output();
    assert!(
        output.contains("not a directory snapshot") && output.contains("line 1 column"),
        "{output}"
    );

    // A good file: the store holds its things and nothing of the two refused ones.
    let good = dir.path().join("good.json");
    std::fs::write(
        &good,
        json!({"things": [{"thingName": "good-1", "thingType": "Valve", "domain": "root"}]})
            .to_string(),
    )
    .unwrap();
    let svc = Ccstream::start(&config(&store, &good)).await;
    let (status, body) = svc.get("/directory").await;
    assert_eq!(status, 200, "{body}");
    let directory: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        directory,
        json!({"domains": [], "things": [
            {"thingName": "good-1", "thingType": "Valve", "domain": "root"}]})
    );

    // ... and so does the directory a restart loads from it, without the file.
    drop(svc);
    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, "{}").unwrap();
    let svc = Ccstream::start(&config(&store, &empty)).await;
    let (status, again) = svc.get("/directory").await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(serde_json::from_str::<Value>(&again).unwrap(), directory);
}

/// While a large import loads, the API already answers: `/healthz` 200 (alive, starting),
/// `/readyz` and the rest 503 saying so; then the service takes over the same socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_are_answered_while_the_directory_loads() {
    let dir = tempfile::tempdir().unwrap();
    let import = dir.path().join("large.json");
    std::fs::write(&import, snapshot(300_000, None).to_string()).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let config_file = dir.path().join("ccstream.toml");
    std::fs::write(
        &config_file,
        config(&dir.path().join("ccstream.db"), &import).replace(LISTEN, &listen),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(common::binary());
    cmd.arg("--config")
        .arg(&config_file)
        .current_dir(dir.path());
    for (key, _) in std::env::vars() {
        if key.starts_with("CCSTREAM_") {
            cmd.env_remove(key);
        }
    }
    let log = std::fs::File::create(dir.path().join("ccstream.log")).unwrap();
    let mut child = cmd
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();

    let client = reqwest::Client::new();
    let get = |path: &str| {
        let request = client.get(format!("http://{listen}{path}")).send();
        async move {
            let r = request.await.ok()?;
            Some((r.status().as_u16(), r.text().await.unwrap_or_default()))
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let mut starting = None;
    let built = loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "ccstream exited: {}",
            std::fs::read_to_string(dir.path().join("ccstream.log")).unwrap()
        );
        assert!(std::time::Instant::now() < deadline, "not ready in time");
        if let (Some(health), Some(ready), Some(rules)) = (
            get("/healthz").await,
            get("/readyz").await,
            get("/directory").await,
        ) {
            if ready.0 == 200 {
                break (health, rules);
            }
            if ready.1.contains("starting") {
                starting.get_or_insert((health, ready, rules));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = child.kill();
    let _ = child.wait();

    let (health, ready, other) = starting.expect("no answer while the directory loaded");
    assert_eq!(health.0, 200, "{health:?}");
    assert!(health.1.contains("starting"), "{health:?}");
    assert_eq!(ready.0, 503, "{ready:?}");
    assert_eq!(other.0, 503, "{other:?}");
    let (health, directory) = built;
    assert_eq!(health, (200, "ok\n".to_owned()));
    assert_eq!(directory.0, 200);
    let directory: Value = serde_json::from_str(&directory.1).unwrap();
    assert_eq!(directory["things"].as_array().unwrap().len(), 300_000);
}
