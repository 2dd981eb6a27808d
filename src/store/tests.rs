//! One suite, run against SQLite (a file in a temporary directory) and PostgreSQL (a database
//! of its own on the server named by `TEST_POSTGRES_URL`).

use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::Arc;

use rule_engine::Rule;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Executor};
use tokio::sync::Barrier;

use super::{RuleChanges, RuleStore, SqliteTarget, StoreError};

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database that lives as long as the test: a temporary directory for SQLite, a database of
/// its own for PostgreSQL (dropped when the guard is).
struct TestDb {
    url: String,
    _dir: Option<tempfile::TempDir>,
    _postgres: Option<PgDatabase>,
}

impl TestDb {
    fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temporary directory");
        // A missing parent directory: connect must create it.
        let file = dir.path().join("nested").join("rules.db");
        TestDb {
            url: format!("sqlite://{}", file.display()),
            _dir: Some(dir),
            _postgres: None,
        }
    }

    async fn postgres() -> TestDb {
        let db = PgDatabase::create().await;
        TestDb {
            url: db.url.clone(),
            _dir: None,
            _postgres: Some(db),
        }
    }
}

/// A `ccstream_test_<hex>` database, dropped (with its open connections) on drop.
struct PgDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl PgDatabase {
    async fn create() -> PgDatabase {
        let admin_url =
            std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
        let mut admin = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is unreachable at {admin_url}: {e}. These tests need it: start it \
                 (pg_ctlcluster --skip-systemctl-redirect <version> main start) or point \
                 TEST_POSTGRES_URL at a server with trust auth"
            )
        });
        let name = format!("ccstream_test_{}", random_hex());
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create test database");
        admin.close().await.ok();
        let url = PgConnectOptions::from_str(&admin_url)
            .expect("parse TEST_POSTGRES_URL")
            .database(&name)
            .to_url_lossy()
            .to_string();
        PgDatabase {
            admin_url,
            name,
            url,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot be blocked on; a thread with a
        // runtime of its own does the async clean-up, also when the test panicked.
        let admin_url = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&admin_url).await?;
                admin.execute(sql.as_str()).await?;
                admin.close().await
            })?;
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("dropping test database {} panicked", self.name),
        }
    }
}

fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // RandomState is seeded randomly per process; time, pid and a counter separate the rest.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{:016x}", hasher.finish())
}

fn rule(id: &str, domain: &str) -> Rule {
    serde_json::from_value(json!({
        "id": id,
        "name": format!("rule {id}"),
        "enabled": true,
        "filter": {"domain": domain, "thingType": "sensor"},
        "expression": {"operator": "gt", "resource": "temp", "value": 30},
        "actions": [{"type": "WEBHOOK", "config": {"url": "https://example.com/hook"}}]
    }))
    .expect("valid rule")
}

async fn connect(db: &TestDb) -> RuleStore {
    RuleStore::connect(&db.url).await.expect("connect store")
}

/// Generates one `#[tokio::test]` per backend for each suite function.
macro_rules! backend_suite {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let db = super::TestDb::sqlite();
                    super::$case(&db).await;
                }
            )+
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let db = super::TestDb::postgres().await;
                    super::$case(&db).await;
                }
            )+
        }
    };
}

backend_suite!(
    crud_round_trip,
    duplicate_id_is_already_exists,
    concurrent_duplicate_inserts_one_wins,
    stale_version_conflicts,
    next_id_survives_reconnect,
    concurrent_next_id_is_distinct,
    generated_ids_skip_ids_taken_explicitly,
    concurrent_cas_updates_lose_nothing,
    corrupt_row_is_reported_not_fatal,
    every_rule_write_bumps_the_generation,
    directory_changes_and_imports_persist,
    changes_since_tell_writes_and_removals,
    changes_followed_under_concurrent_writes,
    concurrent_writes_share_commits_and_keep_their_own_answers,
);

/// Writes that arrive together are committed together (fewer commits than writes), and each
/// still gets its own answer: a refused one does not fail the others, and neither does a write
/// the database rejects (PostgreSQL refuses a NUL in text; SQLite stores it).
async fn concurrent_writes_share_commits_and_keep_their_own_answers(db: &TestDb) {
    let store = connect(db).await;
    for i in 0..10 {
        store
            .insert(&rule(&format!("old-{i}"), "acme"))
            .await
            .expect("insert");
    }
    let concurrently = |rules: Vec<Rule>| {
        let tasks: Vec<_> = rules
            .into_iter()
            .map(|r| {
                let store = store.clone();
                tokio::spawn(async move { (r.id.clone(), store.insert(&r).await) })
            })
            .collect();
        async move {
            let mut out = Vec::new();
            for task in tasks {
                out.push(task.await.expect("task"));
            }
            out
        }
    };

    let g0 = store.rules_generation().await.expect("generation");
    let rules = (0..60)
        .map(|i| match i % 6 {
            0 => rule(&format!("old-{}", i % 10), "acme"),
            _ => rule(&format!("new-{i}"), "acme"),
        })
        .collect();
    let mut created = 0;
    for (id, result) in concurrently(rules).await {
        match result {
            Ok(_) => created += 1,
            Err(StoreError::AlreadyExists(taken)) if id.starts_with("old-") => {
                assert_eq!(taken, id)
            }
            other => panic!("{id}: {other:?}"),
        }
    }
    assert_eq!(created, 50);
    let commits = store.rules_generation().await.expect("generation") - g0;
    eprintln!("60 concurrent writes ({created} accepted) in {commits} commits");
    assert!(
        commits < created,
        "{commits} commits for {created} writes: none shared"
    );

    let mut rules: Vec<Rule> = (0..10)
        .map(|i| rule(&format!("more-{i}"), "acme"))
        .collect();
    rules.insert(5, rule("nul", "ac\u{0}me"));
    for (id, result) in concurrently(rules).await {
        match (id.as_str(), result) {
            ("nul", result) if db._postgres.is_some() => {
                assert!(matches!(result, Err(StoreError::Db(_))), "{result:?}")
            }
            (_, Ok(stored)) => assert_eq!(stored.rule.id, id),
            (_, other) => panic!("{id}: {other:?}"),
        }
    }
    let nul_stored = usize::from(db._postgres.is_none());
    assert_eq!(store.list().await.expect("list").len(), 70 + nul_stored);
}

/// Writes queued together on a single-threaded runtime (the writer cannot run before both are
/// queued) share one group; the group's last write of an id decides whether it is a removal.
async fn one_group_keeps_the_last_write_of_an_id(db: &TestDb) {
    let store = connect(db).await;
    store.insert(&rule("x", "acme")).await.expect("insert");
    let g0 = store.rules_generation().await.expect("generation");
    let (x, z) = (rule("x", "again"), rule("z", "acme"));
    let (removed, recreated, created, gone) = tokio::join!(
        store.remove("x", None),
        store.insert(&x),
        store.insert(&z),
        store.remove("z", None),
    );
    assert!(removed.expect("remove x"));
    recreated.expect("re-create x");
    created.expect("create z");
    assert!(gone.expect("remove z"));
    let (generation, written, removed) = since(store.changes_since(g0).await.expect("changes"));
    assert_eq!(generation, g0 + 1, "one group, one generation");
    assert_eq!(written, pairs(&[("x", "again")]));
    assert_eq!(removed, BTreeSet::from(["z".to_owned()]));
}

#[tokio::test]
async fn one_group_keeps_the_last_write_of_an_id_sqlite() {
    one_group_keeps_the_last_write_of_an_id(&TestDb::sqlite()).await;
}

#[tokio::test]
async fn one_group_keeps_the_last_write_of_an_id_postgres() {
    one_group_keeps_the_last_write_of_an_id(&TestDb::postgres().await).await;
}

/// Updates queued together go in one statement: each still gets its own answer (a stale
/// version, a rule that is not there, a second update of an id in the same group), and a create
/// between them splits the statement without changing what happens.
async fn one_group_updates_distinct_rules_in_one_statement(db: &TestDb) {
    let store = connect(db).await;
    for id in ["a", "b", "c", "d"] {
        store.insert(&rule(id, "acme")).await.expect("insert");
    }
    store.update(&rule("d", "acme"), 1).await.expect("update d");
    let g0 = store.rules_generation().await.expect("generation");
    let rules = [
        rule("a", "first"),
        rule("b", "stale"),
        rule("a", "second"),
        rule("e", "acme"),
        rule("c", "after-create"),
        rule("missing", "acme"),
        rule("d", "acme/d"),
    ];
    let (a, stale, a_again, created, c, missing, d) = tokio::join!(
        store.update(&rules[0], 1),
        store.update(&rules[1], 7),
        store.update(&rules[2], 1),
        store.insert(&rules[3]),
        store.update(&rules[4], 1),
        store.update(&rules[5], 1),
        store.update(&rules[6], 2),
    );
    assert_eq!(a.expect("a").version, 2);
    assert!(matches!(stale, Err(StoreError::Conflict(id)) if id == "b"));
    assert!(
        matches!(a_again, Err(StoreError::Conflict(id)) if id == "a"),
        "the first update of a moved its version on"
    );
    created.expect("create e");
    assert_eq!(c.expect("c").version, 2);
    assert!(matches!(missing, Err(StoreError::Conflict(id)) if id == "missing"));
    assert_eq!(d.expect("d").version, 3);

    let (generation, written, removed) = since(store.changes_since(g0).await.expect("changes"));
    assert_eq!(generation, g0 + 1, "one group, one generation");
    assert_eq!(
        written,
        pairs(&[
            ("a", "first"),
            ("c", "after-create"),
            ("d", "acme/d"),
            ("e", "acme")
        ])
    );
    assert!(removed.is_empty());
    let b = store.get("b").await.expect("get").expect("b");
    assert_eq!((b.version, b.rule.filter.domain.as_str()), (1, "acme"));
}

#[tokio::test]
async fn one_group_updates_distinct_rules_in_one_statement_sqlite() {
    one_group_updates_distinct_rules_in_one_statement(&TestDb::sqlite()).await;
}

#[tokio::test]
async fn one_group_updates_distinct_rules_in_one_statement_postgres() {
    one_group_updates_distinct_rules_in_one_statement(&TestDb::postgres().await).await;
}

fn since(changes: RuleChanges) -> (i64, BTreeSet<(String, String)>, BTreeSet<String>) {
    match changes {
        RuleChanges::Since {
            generation,
            written,
            removed,
        } => (
            generation,
            written
                .into_iter()
                .map(|v| (v.rule.id, v.rule.filter.domain))
                .collect(),
            removed.into_iter().collect(),
        ),
        RuleChanges::TooOld => panic!("changes unexpectedly pruned"),
    }
}

fn pairs(list: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

async fn changes_since_tell_writes_and_removals(db: &TestDb) {
    let store = connect(db).await;
    for id in ["a", "b", "c"] {
        store.insert(&rule(id, "acme")).await.expect("insert");
    }
    let (g0, all) = store.list_with_generation().await.expect("list");
    assert_eq!(all.len(), 3);
    assert_eq!(g0, store.rules_generation().await.expect("generation"));
    assert_eq!(
        since(store.changes_since(g0).await.expect("changes")),
        (g0, BTreeSet::new(), BTreeSet::new())
    );
    // From before the first write: everything.
    let (_, written, removed) = since(store.changes_since(0).await.expect("changes"));
    assert_eq!(written.len(), 3);
    assert!(removed.is_empty());

    store.update(&rule("a", "other"), 1).await.expect("update");
    assert!(store.remove("b", None).await.expect("remove"));
    store.insert(&rule("d", "acme")).await.expect("insert");
    // A refused write leaves no trace among the changes.
    assert!(store.update(&rule("c", "x"), 9).await.is_err());
    assert!(!store.remove("missing", None).await.expect("remove missing"));
    let g1 = store.rules_generation().await.expect("generation");
    assert_eq!(g1, g0 + 3);
    assert_eq!(
        since(store.changes_since(g0).await.expect("changes")),
        (
            g1,
            pairs(&[("a", "other"), ("d", "acme")]),
            BTreeSet::from(["b".to_owned()])
        )
    );
    // A re-created id is a write again, no longer a removal.
    store.insert(&rule("b", "again")).await.expect("insert");
    let (_, written, removed) = since(store.changes_since(g0).await.expect("changes"));
    assert_eq!(
        written,
        pairs(&[("a", "other"), ("b", "again"), ("d", "acme")])
    );
    assert!(removed.is_empty());

    // Pruning removals moves the horizon: older generations must read everything again.
    assert!(store.remove("d", None).await.expect("remove"));
    let g2 = store.rules_generation().await.expect("generation");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(
        store
            .prune_removals(std::time::Duration::from_secs(3600))
            .await
            .expect("prune"),
        0,
        "nothing is an hour old"
    );
    assert_eq!(
        since(store.changes_since(g0).await.expect("changes")).2,
        BTreeSet::from(["d".to_owned()])
    );
    assert_eq!(
        store
            .prune_removals(std::time::Duration::ZERO)
            .await
            .expect("prune"),
        1
    );
    assert!(matches!(
        store.changes_since(g0).await.expect("changes"),
        RuleChanges::TooOld
    ));
    assert!(matches!(
        store.changes_since(g2 - 1).await.expect("changes"),
        RuleChanges::TooOld
    ));
    assert_eq!(
        since(store.changes_since(g2).await.expect("changes")),
        (g2, BTreeSet::new(), BTreeSet::new())
    );
    // Ahead of the store (a database restored from a backup): read everything again.
    assert!(matches!(
        store.changes_since(g2 + 1).await.expect("changes"),
        RuleChanges::TooOld
    ));
}

/// A reader that applies the changes since its generation, again and again while writers
/// create, update and remove rules, ends with exactly the stored rules.
async fn changes_followed_under_concurrent_writes(db: &TestDb) {
    let store = connect(db).await;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let store = store.clone();
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut model = std::collections::BTreeMap::<String, i64>::new();
            let mut generation = 0;
            let mut reads = 0;
            loop {
                let last = done.load(std::sync::atomic::Ordering::SeqCst);
                match store.changes_since(generation).await.expect("changes") {
                    RuleChanges::Since {
                        generation: g,
                        written,
                        removed,
                    } => {
                        assert!(g >= generation, "generation went back: {generation} → {g}");
                        for id in removed {
                            model.remove(&id);
                        }
                        for v in written {
                            model.insert(v.rule.id, v.version);
                        }
                        generation = g;
                    }
                    RuleChanges::TooOld => panic!("nothing was pruned"),
                }
                reads += 1;
                if last {
                    return (model, reads);
                }
            }
        })
    };
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..40 {
                    let id = format!("r{}", (w * 7 + i) % 12);
                    match i % 3 {
                        0 => {
                            let _ = store.insert(&rule(&id, "acme")).await;
                        }
                        1 => {
                            if let Some(v) = store.get(&id).await.expect("get") {
                                let _ = store.update(&rule(&id, "moved"), v.version).await;
                            }
                        }
                        _ => {
                            store.remove(&id, None).await.expect("remove");
                        }
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (model, reads) = reader.await.expect("reader");
    let stored: std::collections::BTreeMap<String, i64> = store
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|v| (v.rule.id, v.version))
        .collect();
    assert_eq!(model, stored);
    eprintln!("{reads} reads followed {} rules", stored.len());
}

async fn every_rule_write_bumps_the_generation(db: &TestDb) {
    let store = connect(db).await;
    let g0 = store.rules_generation().await.expect("generation");
    let v = store.insert(&rule("g", "acme")).await.expect("insert");
    let g1 = store.rules_generation().await.expect("generation");
    assert!(g1 > g0);
    // A refused write changes nothing.
    assert!(matches!(
        store.insert(&rule("g", "acme")).await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(matches!(
        store.update(&rule("g", "other"), v.version + 7).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.rules_generation().await.expect("generation"), g1);
    store
        .update(&rule("g", "other"), v.version)
        .await
        .expect("update");
    let g2 = store.rules_generation().await.expect("generation");
    assert!(g2 > g1);
    assert!(!store.remove("missing", None).await.expect("remove missing"));
    assert_eq!(store.rules_generation().await.expect("generation"), g2);
    assert!(store.remove("g", None).await.expect("remove"));
    assert!(store.rules_generation().await.expect("generation") > g2);
}

async fn directory_changes_and_imports_persist(db: &TestDb) {
    use rule_engine::directory::{Directory, DirectorySnapshot};

    let store = connect(db).await;
    let snapshot: DirectorySnapshot = serde_json::from_value(json!({
        "domains": [{"id": "sub1", "parent": "root"}, {"id": "sub2", "parent": "sub1"}],
        "things": [
            {"thingName": "t1", "thingType": "Pump", "domain": "sub1"},
            {"thingName": "t2", "thingType": 7, "domain": "sub2"},
            {"thingName": "t1", "thingType": "Pump", "domain": "sub2"}
        ]
    }))
    .expect("snapshot");
    store.import_directory(&snapshot).await.expect("import");
    let loaded = store.load_directory().await.expect("load");
    assert_eq!(loaded.domains.len(), 2);
    assert_eq!(loaded.things.len(), 2);
    // The later entry for t1 wins, as it would applied one by one.
    assert_eq!(loaded.things[0].thing_name, "t1");
    assert_eq!(loaded.things[0].domain, "sub2");
    assert_eq!(loaded.things[1].thing_type, "7");

    let mut dir = Directory::from_snapshot(loaded).expect("directory");
    let created = dir
        .apply_event(
            "event/root/sub1/sub3",
            br#"{"type":"THING.CREATE","source":{"thingName":"t3","thingType":"Fan","domain":"sub3"}}"#,
        )
        .expect("create event");
    store
        .apply_directory_change(&created)
        .await
        .expect("store create");
    let removed = dir
        .apply_event(
            "event/root/sub1",
            br#"{"type":"THING.REMOVE","source":{"thingName":"t2"}}"#,
        )
        .expect("remove event");
    store
        .apply_directory_change(&removed)
        .await
        .expect("store remove");

    let reloaded = store.load_directory().await.expect("reload");
    assert_eq!(reloaded, dir.export());
    // Read row by row into a directory, as at start-up: the same directory.
    let mut streamed = rule_engine::Directory::new();
    store
        .load_directory_into(&mut streamed)
        .await
        .expect("load into a directory");
    assert_eq!(streamed.export(), dir.export());
    let names: Vec<_> = reloaded
        .things
        .iter()
        .map(|t| t.thing_name.as_str())
        .collect();
    assert_eq!(names, ["t1", "t3"]);
    assert!(reloaded
        .domains
        .iter()
        .any(|d| d.id == "sub3" && d.parent == "sub1"));

    // A large import goes through in chunks, and is read back in pages (4,096 things each),
    // names that JSON escapes included.
    let odd = [
        "quote\"d",
        "back\\slash",
        "tab\there",
        "é-ü",
        "line\nbreak",
        "\u{1}",
    ];
    let many = DirectorySnapshot {
        domains: vec![],
        things: (0..9000)
            .map(|i| rule_engine::directory::ThingEntry {
                thing_name: match odd.get(i) {
                    Some(name) => (*name).to_owned(),
                    None => format!("bulk-{i:05}"),
                },
                thing_type: format!("type-{}", i % 7),
                domain: "sub1".to_owned(),
            })
            .collect(),
    };
    store.import_directory(&many).await.expect("bulk import");
    let mut loaded = store.load_directory().await.expect("load");
    assert_eq!(loaded.things.len(), 9002);
    // By bytes, as export sorts (PostgreSQL's collation may not).
    loaded
        .things
        .sort_unstable_by(|a, b| a.thing_name.cmp(&b.thing_name));
    let mut paged = rule_engine::Directory::new();
    store
        .load_directory_into(&mut paged)
        .await
        .expect("load into a directory");
    assert_eq!(paged.export(), loaded);
    assert_eq!(paged.len(), 9002);
}

async fn crud_round_trip(db: &TestDb) {
    let store = connect(db).await;
    store.ping().await.expect("ping");
    assert_eq!(store.get("a").await.expect("get missing"), None);
    assert!(store.list().await.expect("list empty").is_empty());

    // Ids whose byte order differs from typical locale collations.
    for id in ["a", "B", "_x", "A-1"] {
        let stored = store.insert(&rule(id, "acme")).await.expect("insert");
        assert_eq!(stored.version, 1);
        assert_eq!(stored.rule, rule(id, "acme"));
    }
    let got = store.get("a").await.expect("get").expect("present");
    assert_eq!(got.rule, rule("a", "acme"));
    assert_eq!(got.version, 1);
    let ids: Vec<String> = store
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|v| v.rule.id)
        .collect();
    assert_eq!(ids, ["A-1", "B", "_x", "a"]);

    let mut changed = rule("a", "acme/plant-1");
    changed.enabled = false;
    let updated = store.update(&changed, 1).await.expect("update");
    assert_eq!(updated.version, 2);
    let got = store.get("a").await.expect("get").expect("present");
    assert_eq!(got, updated);
    let domain: String = sqlx::query_scalar("SELECT domain FROM rules WHERE id = $1")
        .bind("a")
        .fetch_one(&store.pool)
        .await
        .expect("domain column");
    assert_eq!(
        domain, "acme/plant-1",
        "the indexed column follows the document"
    );

    assert!(store.remove("a", Some(2)).await.expect("remove"));
    assert_eq!(store.get("a").await.expect("get removed"), None);
    assert!(!store.remove("a", None).await.expect("remove again"));
    assert!(store.remove("B", None).await.expect("unconditional remove"));
    assert_eq!(store.list().await.expect("list").len(), 2);
}

async fn duplicate_id_is_already_exists(db: &TestDb) {
    let store = connect(db).await;
    store.insert(&rule("r1", "acme")).await.expect("insert");
    match store.insert(&rule("r1", "other")).await {
        Err(StoreError::AlreadyExists(id)) => assert_eq!(id, "r1"),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    let kept = store.get("r1").await.expect("get").expect("present");
    assert_eq!(
        kept.rule.filter.domain, "acme",
        "the first rule is untouched"
    );
    assert_eq!(kept.version, 1);
}

async fn concurrent_duplicate_inserts_one_wins(db: &TestDb) {
    let store = connect(db).await;
    let tasks = 16;
    let barrier = Arc::new(Barrier::new(tasks));
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.insert(&rule("same", &format!("domain-{i}"))).await
            })
        })
        .collect();
    let mut won = 0;
    for handle in handles {
        match handle.await.expect("task") {
            Ok(_) => won += 1,
            Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(won, 1);
}

async fn stale_version_conflicts(db: &TestDb) {
    let store = connect(db).await;
    store.insert(&rule("r1", "acme")).await.expect("insert");
    let v2 = store
        .update(&rule("r1", "acme/a"), 1)
        .await
        .expect("update");
    assert_eq!(v2.version, 2);

    assert!(matches!(
        store.update(&rule("r1", "acme/b"), 1).await,
        Err(StoreError::Conflict(id)) if id == "r1"
    ));
    assert!(matches!(
        store.remove("r1", Some(1)).await,
        Err(StoreError::Conflict(id)) if id == "r1"
    ));
    let kept = store.get("r1").await.expect("get").expect("still there");
    assert_eq!(kept, v2, "a losing writer changes nothing");

    // Gone since it was read: the caller's retry re-reads and finds nothing.
    assert!(matches!(
        store.update(&rule("missing", "acme"), 1).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(!store.remove("missing", Some(1)).await.expect("remove"));
}

async fn generated_ids_skip_ids_taken_explicitly(db: &TestDb) {
    let store = connect(db).await;
    // Rules migrated with their ids hold the numbers the sequence would hand out next.
    for id in [
        "dev-00000001",
        "dev-00000002",
        "dev-00000007",
        "other-00000099",
        "dev-x",
    ] {
        store.insert(&rule(id, "acme")).await.expect("insert");
    }
    let created = store
        .insert_with_generated_id(&rule("", "acme"), Some("dev"))
        .await
        .expect("an id-less create succeeds");
    assert_eq!(created.rule.id, "dev-00000008");
    assert!(store.get("dev-00000008").await.expect("get").is_some());
    let next = store
        .insert_with_generated_id(&rule("", "acme"), Some("dev"))
        .await
        .expect("create");
    assert_eq!(next.rule.id, "dev-00000009", "the sequence carries on");
    // Production ids have no prefix.
    store
        .insert(&rule("00000010", "acme"))
        .await
        .expect("insert");
    let unprefixed = store
        .insert_with_generated_id(&rule("", "acme"), None)
        .await
        .expect("create");
    assert_eq!(unprefixed.rule.id, "00000011");
}

async fn next_id_survives_reconnect(db: &TestDb) {
    let store = connect(db).await;
    for expected in 1..=3 {
        assert_eq!(store.next_id().await.expect("next_id"), expected);
    }
    store.insert(&rule("kept", "acme")).await.expect("insert");
    store.pool.close().await;

    // A restart: migrations run again (as a no-op) and the counter carries on.
    let store = connect(db).await;
    assert_eq!(store.next_id().await.expect("next_id"), 4);
    assert!(store.get("kept").await.expect("get").is_some());
}

async fn concurrent_next_id_is_distinct(db: &TestDb) {
    let store = connect(db).await;
    let tasks: u64 = 50;
    let barrier = Arc::new(Barrier::new(50));
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.next_id().await
            })
        })
        .collect();
    let mut ids = BTreeSet::new();
    for handle in handles {
        let id = handle.await.expect("task").expect("next_id");
        assert!(ids.insert(id), "id {id} handed out twice");
    }
    assert_eq!(ids, (1..=tasks).collect::<BTreeSet<_>>());
}

async fn concurrent_cas_updates_lose_nothing(db: &TestDb) {
    let store = connect(db).await;
    store.insert(&rule("hot", "acme")).await.expect("insert");

    // Round 1: everyone writes against version 1 at once; exactly one may win.
    let writers = 20;
    let barrier = Arc::new(Barrier::new(writers));
    let handles: Vec<_> = (0..writers)
        .map(|i| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                let mut mine = rule("hot", "acme");
                mine.name = format!("writer {i}");
                barrier.wait().await;
                store.update(&mine, 1).await
            })
        })
        .collect();
    let mut winners = Vec::new();
    for handle in handles {
        match handle.await.expect("task") {
            Ok(v) => winners.push(v),
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one writer wins version 1");
    let current = store.get("hot").await.expect("get").expect("present");
    assert_eq!(current, winners[0]);
    assert_eq!(current.version, 2);

    // Round 2: read-modify-write loops that retry on Conflict must not lose an increment.
    let (workers, increments) = (10u64, 5u64);
    let barrier = Arc::new(Barrier::new(10));
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let mut versions = Vec::new();
                let mut conflicts = 0u64;
                while (versions.len() as u64) < increments {
                    let read = store.get("hot").await?.ok_or(sqlx::Error::RowNotFound)?;
                    let count: u64 = read
                        .rule
                        .description
                        .as_deref()
                        .unwrap_or("0")
                        .parse()
                        .unwrap_or(0);
                    let mut next = read.rule.clone();
                    next.description = Some((count + 1).to_string());
                    match store.update(&next, read.version).await {
                        Ok(written) => versions.push(written.version),
                        Err(StoreError::Conflict(_)) => conflicts += 1,
                        Err(e) => return Err(e),
                    }
                }
                Ok::<_, StoreError>((versions, conflicts))
            })
        })
        .collect();
    let mut versions = BTreeSet::new();
    let mut conflicts = 0;
    for handle in handles {
        let (mine, lost) = handle.await.expect("task").expect("worker");
        conflicts += lost;
        for v in mine {
            assert!(versions.insert(v), "version {v} won twice");
        }
    }
    let successes = workers * increments;
    let last = store.get("hot").await.expect("get").expect("present");
    assert_eq!(
        last.rule.description.as_deref(),
        Some("50"),
        "no lost update"
    );
    assert_eq!(last.version, 2 + successes as i64);
    assert_eq!(versions, (3..=last.version).collect::<BTreeSet<_>>());
    eprintln!("CAS round 2: {successes} updates, {conflicts} conflicts retried");
}

async fn corrupt_row_is_reported_not_fatal(db: &TestDb) {
    let store = connect(db).await;
    for id in ["good-1", "bad", "good-2"] {
        store.insert(&rule(id, "acme")).await.expect("insert");
    }
    sqlx::query("UPDATE rules SET doc = $1 WHERE id = $2")
        .bind("{\"id\": \"bad\", \"name\": ")
        .bind("bad")
        .execute(&store.pool)
        .await
        .expect("corrupt a row");

    match store.get("bad").await {
        Err(StoreError::Corrupt { id, .. }) => assert_eq!(id, "bad"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let ids: Vec<String> = store
        .list()
        .await
        .expect("list skips the bad row")
        .into_iter()
        .map(|v| v.rule.id)
        .collect();
    assert_eq!(ids, ["good-1", "good-2"]);
    // An operator can still clear it out.
    assert!(store.remove("bad", None).await.expect("remove"));
}

#[tokio::test]
async fn unsupported_url_is_refused() {
    for url in [
        "mysql://root@localhost/db",
        "rules.db",
        "http://example.com",
    ] {
        assert!(
            matches!(
                RuleStore::connect(url).await,
                Err(StoreError::UnsupportedUrl(_))
            ),
            "{url}"
        );
    }
}

#[tokio::test]
async fn in_memory_sqlite_keeps_one_database() {
    let store = RuleStore::connect("sqlite::memory:")
        .await
        .expect("connect");
    store.insert(&rule("r1", "acme")).await.expect("insert");
    // Several round trips on the pool see the same (single) in-memory database.
    for _ in 0..5 {
        assert!(store.get("r1").await.expect("get").is_some());
    }
    assert_eq!(store.next_id().await.expect("next_id"), 1);
}

#[test]
fn sqlite_urls_create_their_file() {
    let default = SqliteTarget::parse("sqlite://data/ccstream.db").expect("parse");
    assert_eq!(default.url, "sqlite://data/ccstream.db?mode=rwc");
    assert_eq!(
        default.file.as_deref(),
        Some(std::path::Path::new("data/ccstream.db"))
    );

    let with_query = SqliteTarget::parse("sqlite:/var/lib/x.db?cache=shared").expect("parse");
    assert_eq!(with_query.url, "sqlite:/var/lib/x.db?cache=shared&mode=rwc");

    let chosen = SqliteTarget::parse("sqlite://x.db?mode=ro").expect("parse");
    assert_eq!(
        chosen.url, "sqlite://x.db?mode=ro",
        "an explicit mode is kept"
    );

    let memory = SqliteTarget::parse("sqlite::memory:").expect("parse");
    assert_eq!(memory.file, None);
}

#[tokio::test]
async fn sqlite_file_uses_wal_and_waits_for_writers() {
    let db = TestDb::sqlite();
    let store = connect(&db).await;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&store.pool)
        .await
        .expect("journal_mode");
    assert_eq!(mode.to_ascii_lowercase(), "wal");
    let timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(&store.pool)
        .await
        .expect("busy_timeout");
    assert_eq!(timeout, 10_000);
}
