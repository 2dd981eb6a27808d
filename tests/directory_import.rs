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
