//! `ccstream directory import --from-thing-lambda`: every thing (and the domain paths their
//! `domainTopic`s give) from the platform's ThingLambda FIND, page by page until an empty one
//! (sorted by `thingName`, each page after the last name seen), merged into the
//! store in one transaction. On PostgreSQL the running replicas merge it at once (the store's
//! directory notice); on SQLite the service takes it up at its next start. `--output` writes the
//! snapshot as JSON instead (for `directory.import_file` or `POST /directory`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use rule_engine::directory::{DirectorySnapshot, DomainEntry};
use serde_json::json;

use super::thing_lambda::{thing_from_json, ThingLambda};
use crate::config::Config;
use crate::store::RuleStore;

/// What the command was asked to do.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Load from ThingLambda's FIND (the only source so far): the function's name or ARN,
    /// directory.thing_lambda when not given.
    #[arg(long, required = true, value_name = "FUNCTION")]
    #[allow(clippy::option_option)] // clap: the flag alone, or with a value
    pub from_thing_lambda: Option<Option<String>>,
    /// Lambda's region and endpoint (default: directory.region, directory.endpoint).
    #[arg(long)]
    pub region: Option<String>,
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Things per FIND call.
    #[arg(long, default_value_t = 1000)]
    pub page_size: usize,
    /// Write the snapshot to this file instead of the store.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// Runs the import; the JSON report to print.
pub async fn run(config: &Config, args: &ImportArgs) -> anyhow::Result<String> {
    anyhow::ensure!(args.page_size > 0, "--page-size must be greater than 0");
    let function = args
        .from_thing_lambda
        .clone()
        .flatten()
        .or_else(|| config.directory.thing_lambda.clone())
        .filter(|f| !f.trim().is_empty())
        .context("no function: give --from-thing-lambda FUNCTION or set directory.thing_lambda")?;
    let sdk = sinks::objects::writer::s3::sdk_config(
        args.region
            .clone()
            .or_else(|| config.directory.region.clone()),
        args.endpoint
            .clone()
            .or_else(|| config.directory.endpoint.clone()),
        None,
        "--endpoint",
    )
    .await?;
    let lambda = ThingLambda::new(&sdk, &function);

    let mut things = Vec::new();
    // Domain → parent, from the topics; a later thing's topic is as good as an earlier one's.
    let mut domains: BTreeMap<String, String> = BTreeMap::new();
    let mut skipped = 0usize;
    let mut pages = 0usize;
    let mut after: Option<String> = None;
    loop {
        let page = lambda
            .find_page(after.as_deref(), args.page_size)
            .await
            .with_context(|| format!("FIND page {}", pages + 1))?;
        pages += 1;
        if page.is_empty() {
            break;
        }
        let mut last = None;
        for source in &page {
            match thing_from_json(source) {
                Ok((name, thing)) => {
                    let snapshot = thing.snapshot(&name);
                    for DomainEntry { id, parent } in snapshot.domains {
                        domains.insert(id, parent);
                    }
                    things.extend(snapshot.things);
                    last = Some(name);
                }
                Err(missing) => {
                    skipped += 1;
                    eprintln!("ccstream: skipped a thing without {missing}: {source}");
                    if let Some(name) = source.get("thingName").and_then(|n| n.as_str()) {
                        last = Some(name.to_owned());
                    }
                }
            }
        }
        eprintln!("ccstream: page {pages}: {} things", page.len());
        // Pages end only when one comes back empty (a function may cap their size); a page
        // that does not move past the last name would loop for ever.
        match last {
            Some(name) if after.as_ref().is_none_or(|a| name > *a) => after = Some(name),
            _ => anyhow::bail!(
                "FIND page {pages} did not move past {:?}: does the function apply the range \
                 on thingName and the sort?",
                after.as_deref().unwrap_or("")
            ),
        }
    }
    // Parents before children, as the tree wants them.
    let mut ordered = Vec::with_capacity(domains.len());
    let mut placed = std::collections::HashSet::from([rule_engine::ROOT.to_owned()]);
    while ordered.len() < domains.len() {
        let before = ordered.len();
        for (id, parent) in &domains {
            if !placed.contains(id) && placed.contains(parent) {
                ordered.push(DomainEntry {
                    id: id.clone(),
                    parent: parent.clone(),
                });
                placed.insert(id.clone());
            }
        }
        anyhow::ensure!(
            ordered.len() > before,
            "the things' domain topics do not form a tree"
        );
    }
    let snapshot = DirectorySnapshot {
        domains: ordered,
        things,
    };
    let report = json!({"things": snapshot.things.len(), "domains": snapshot.domains.len(),
        "pages": pages, "skipped": skipped});
    match &args.output {
        Some(path) => std::fs::write(path, serde_json::to_vec(&snapshot)?)
            .with_context(|| format!("writing {}", path.display()))?,
        None => {
            // Checked as the service will merge it, before anything is stored.
            rule_engine::Directory::from_snapshot(snapshot.clone())
                .context("the imported directory")?;
            let store = RuleStore::connect(&config.store.url)
                .await
                .context("opening the rule store")?;
            store
                .import_directory(&snapshot)
                .await
                .context("storing the directory")?;
        }
    }
    Ok(format!("{report}\n"))
}
