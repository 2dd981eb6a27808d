//! `ccstream dead-letter list | replay`: the operator's side of the webhook dead letters in
//! `webhook.dead_letter_dir` ([`sinks::webhook::replay`] reads, filters and re-sends them).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;
use sinks::webhook::replay::{self, DeadLetters, Filter, Letter};

use crate::config::Config;

/// Which letters a command takes, as given on the command line.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Selection {
    /// Only letters given up at or after this time (RFC 3339, or a date: midnight UTC).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only letters given up before this time.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only letters of this rule id.
    #[arg(long, value_name = "ID")]
    pub rule: Option<String>,
    /// Only letters whose url starts with this.
    #[arg(long, value_name = "PREFIX")]
    pub url_prefix: Option<String>,
}

impl Selection {
    /// The filter, or which time does not parse.
    pub fn filter(&self) -> anyhow::Result<Filter> {
        Ok(Filter {
            since_ms: time_flag("since", self.since.as_deref())?,
            until_ms: time_flag("until", self.until.as_deref())?,
            rule: self.rule.clone(),
            url_prefix: self.url_prefix.clone(),
        })
    }
}

/// A command line time (`--since`, `--until`): RFC 3339, or a date (midnight UTC), in ms.
pub(crate) fn time_flag(flag: &str, text: Option<&str>) -> anyhow::Result<Option<u64>> {
    text.map(|t| {
        replay::parse_time(t)
            .with_context(|| format!("--{flag} {t:?}: not an RFC 3339 time or a YYYY-MM-DD date"))
    })
    .transpose()
}

/// The summary by rule, destination and reason: a table, or JSON lines.
pub fn list(config: &Config, selection: &Selection, json: bool) -> anyhow::Result<String> {
    let filter = selection.filter()?;
    let dir = &config.webhook.dead_letter_dir;
    let found = DeadLetters::read(dir).with_context(|| format!("reading {}", dir.display()))?;
    let rows = found.summary(&filter);
    let mut out = String::new();
    if json {
        for row in &rows {
            let _ = writeln!(out, "{}", serde_json::to_string(row)?);
        }
        return Ok(out);
    }
    let _ = writeln!(
        out,
        "{:<24} {:<40} {:<26} {:>8} {:>8}  oldest / newest",
        "rule", "destination", "reason", "letters", "replayed"
    );
    for r in &rows {
        let _ = writeln!(
            out,
            "{:<24} {:<40} {:<26} {:>8} {:>8}  {} / {}",
            r.rule_id, r.destination, r.reason, r.letters, r.replayed, r.oldest, r.newest
        );
    }
    let letters: usize = rows.iter().map(|r| r.letters).sum();
    let replayed: usize = rows.iter().map(|r| r.replayed).sum();
    let _ = writeln!(
        out,
        "{letters} letters, {replayed} replayed, {} not replayed{}",
        letters - replayed,
        if found.unreadable > 0 {
            format!("; {} unreadable lines skipped", found.unreadable)
        } else {
            String::new()
        }
    );
    Ok(out)
}

/// Re-sends the selected letters not replayed yet (or, with `dry_run`, says which it would).
pub async fn replay(
    config: &Config,
    selection: &Selection,
    dry_run: bool,
    wait: Duration,
) -> anyhow::Result<String> {
    let filter = selection.filter()?;
    let dir = &config.webhook.dead_letter_dir;
    let found = DeadLetters::read(dir).with_context(|| format!("reading {}", dir.display()))?;
    let pending: Vec<&Letter> = found.pending(&filter);
    if dry_run {
        let mut out = String::new();
        for l in &pending {
            let _ = writeln!(
                out,
                "{} {} {} {} ({})",
                l.time, l.rule_id, l.method, l.url, l.reason
            );
        }
        let _ = writeln!(out, "{} letters would be replayed", pending.len());
        return Ok(out);
    }
    sinks::webhook::describe_metrics();
    let report = replay::replay(&config.webhook, &pending, wait)
        .await
        .context("replaying dead letters")?;
    Ok(format!("{}\n", serde_json::to_string(&report)?))
}
