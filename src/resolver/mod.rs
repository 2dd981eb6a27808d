//! Who is asked about a thing the directory does not know (`directory.resolver`): AWS IoT
//! `DescribeThing` ([`aws_iot`]) or the platform's ThingLambda `GET` ([`thing_lambda`]).
//!
//! One task takes the names the pipeline asks about and answers each once, at most
//! `resolve_concurrency` at a time, each within `resolve_timeout_ms`. While the service fails
//! (no answer, throttling, a server error; not a refusal about one thing, which is "not found")
//! it is not asked for `retry_secs` (every name asked meanwhile is answered [`Answer::Failed`]
//! at once), so that an outage costs one timeout, not one per unknown thing. What the pipeline
//! does with the answers (holding the thing's updates meanwhile, caching them) is in
//! `engine::pipeline::resolving`.

pub mod aws_iot;
pub mod import;
pub mod thing_lambda;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rule_engine::directory::{DirectorySnapshot, DomainEntry, ThingEntry};
use rule_engine::ROOT;
use tokio::sync::{mpsc, Semaphore};

use crate::config::{DirectoryConfig, ResolverKind};

/// What the resolver says about a thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Found(ResolvedThing),
    /// The service does not know the thing (or it lacks a type or a domain): why.
    NotFound(String),
    /// The service could not be asked or did not answer: why.
    Failed(String),
}

/// A thing as the service describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedThing {
    pub thing_type: String,
    pub domain: String,
    /// The domains from below root down to `domain`'s parent when the service gave the path
    /// (empty: right under root); `None` when it gave only the id.
    pub ancestors: Option<Vec<String>>,
}

impl ResolvedThing {
    /// The thing and its domain path, as a snapshot to merge into the directory.
    pub fn snapshot(&self, thing_name: &str) -> DirectorySnapshot {
        let mut domains = Vec::new();
        if let Some(ancestors) = self.ancestors.as_ref().filter(|_| self.domain != ROOT) {
            let mut parent = ROOT;
            for id in ancestors.iter().chain(std::iter::once(&self.domain)) {
                domains.push(DomainEntry {
                    id: id.clone(),
                    parent: parent.to_owned(),
                });
                parent = id;
            }
        }
        DirectorySnapshot {
            domains,
            things: vec![ThingEntry {
                thing_name: thing_name.to_owned(),
                thing_type: self.thing_type.clone(),
                domain: self.domain.clone(),
            }],
        }
    }
}

/// A domain as a service writes it: an id (`sub2`), or a path (`/sub1/sub2/`, `root/sub1/sub2`:
/// the last level is the domain, the others its ancestors below root; `/` is root). `None`
/// when it is empty.
pub fn parse_domain(value: &str) -> Option<(String, Option<Vec<String>>)> {
    if !value.contains('/') {
        return (!value.is_empty()).then(|| (value.to_owned(), None));
    }
    let mut levels: Vec<&str> = value.split('/').filter(|l| !l.is_empty()).collect();
    if levels.first() == Some(&ROOT) {
        levels.remove(0);
    }
    let domain = levels.pop().unwrap_or(ROOT).to_owned();
    Some((
        domain,
        Some(levels.into_iter().map(str::to_owned).collect()),
    ))
}

/// One of the services a resolver asks.
pub enum Source {
    AwsIot(aws_iot::AwsIot),
    ThingLambda(thing_lambda::ThingLambda),
}

impl Source {
    /// The service `config` names; `None` for `resolver = "none"`.
    pub async fn from_config(config: &DirectoryConfig) -> Result<Option<Source>, String> {
        let sdk = || {
            sinks::objects::writer::s3::sdk_config(
                config.region.clone(),
                config.endpoint.clone(),
                None,
                "directory.endpoint",
            )
        };
        Ok(match config.resolver {
            ResolverKind::None => None,
            ResolverKind::AwsIot => Some(Source::AwsIot(aws_iot::AwsIot::new(
                &sdk().await.map_err(|e| e.to_string())?,
                config.domain_attribute.clone(),
            ))),
            ResolverKind::ThingLambda => Some(Source::ThingLambda(thing_lambda::ThingLambda::new(
                &sdk().await.map_err(|e| e.to_string())?,
                config.thing_lambda.as_deref().unwrap_or_default(),
            ))),
        })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Source::AwsIot(_) => "aws-iot",
            Source::ThingLambda(_) => "thing-lambda",
        }
    }

    pub async fn lookup(&self, thing_name: &str) -> Answer {
        match self {
            Source::AwsIot(s) => s.lookup(thing_name).await,
            Source::ThingLambda(s) => s.lookup(thing_name).await,
        }
    }
}

/// The two ends of a running resolver.
pub struct Resolver {
    /// Names to ask about (bounded: a full queue is answered by the caller as a failure).
    pub requests: mpsc::Sender<String>,
    /// Every name asked gets exactly one answer here.
    pub answers: mpsc::Receiver<(String, Answer)>,
}

/// Starts the task that asks `source`; it ends when `requests` is dropped.
pub fn spawn(source: Source, config: &DirectoryConfig) -> Resolver {
    let (requests, mut names) = mpsc::channel::<String>(config.resolve_queue);
    let (answer_tx, answers) = mpsc::channel(config.resolve_queue);
    let timeout = Duration::from_millis(config.resolve_timeout_ms);
    let pause = Duration::from_secs(config.retry_secs);
    let permits = Arc::new(Semaphore::new(config.resolve_concurrency));
    let source = Arc::new(source);
    let kind = source.kind();
    tokio::spawn(async move {
        // Until when the service is not asked (after a failure).
        let paused_until = Arc::new(std::sync::Mutex::new(None::<Instant>));
        while let Some(name) = names.recv().await {
            let paused = paused_until
                .lock()
                .ok()
                .and_then(|p| *p)
                .is_some_and(|until| Instant::now() < until);
            if paused {
                let answer = Answer::Failed("the lookup service failed lately; not asked".into());
                if answer_tx.send((name, answer)).await.is_err() {
                    break;
                }
                continue;
            }
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                break;
            };
            let (source, answer_tx, paused_until) = (
                Arc::clone(&source),
                answer_tx.clone(),
                Arc::clone(&paused_until),
            );
            tokio::spawn(async move {
                let started = Instant::now();
                let answer = match tokio::time::timeout(timeout, source.lookup(&name)).await {
                    Ok(answer) => answer,
                    Err(_) => Answer::Failed(format!("no answer within {timeout:?}")),
                };
                drop(permit);
                let outcome = match &answer {
                    Answer::Found(_) => "found",
                    Answer::NotFound(_) => "not_found",
                    Answer::Failed(_) => "failed",
                };
                metrics::counter!("ccstream_directory_lookups_total", "resolver" => kind, "outcome" => outcome)
                    .increment(1);
                metrics::histogram!("ccstream_directory_lookup_seconds", "resolver" => kind)
                    .record(started.elapsed().as_secs_f64());
                if let Answer::Failed(reason) = &answer {
                    tracing::warn!(thing = %name, resolver = kind, %reason, pause = ?pause, "directory lookup failed; the service is not asked again for a while");
                    if let Ok(mut p) = paused_until.lock() {
                        *p = Some(Instant::now() + pause);
                    }
                }
                let _ = answer_tx.send((name, answer)).await;
            });
        }
    });
    Resolver { requests, answers }
}

/// Registers the resolver's metrics with their help text.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "ccstream_directory_lookups_total",
        "Lookups of unknown things by directory.resolver, by outcome (found, not_found, failed)"
    );
    metrics::describe_histogram!(
        "ccstream_directory_lookup_seconds",
        metrics::Unit::Seconds,
        "Time a directory lookup took"
    );
    metrics::describe_counter!(
        "ccstream_observations_unresolved_total",
        "Updates of unknown things stored without evaluation because no answer came \
         (reason: lookup_failed, queue_full)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_ids_or_paths() {
        assert_eq!(parse_domain("sub1"), Some(("sub1".into(), None)));
        assert_eq!(
            parse_domain("/sub1/sub2/"),
            Some(("sub2".into(), Some(vec!["sub1".into()])))
        );
        assert_eq!(
            parse_domain("root/sub1/sub2"),
            Some(("sub2".into(), Some(vec!["sub1".into()])))
        );
        assert_eq!(parse_domain("/sub1/"), Some(("sub1".into(), Some(vec![]))));
        assert_eq!(parse_domain("/"), Some(("root".into(), Some(vec![]))));
        assert_eq!(parse_domain("root"), Some(("root".into(), None)));
        assert_eq!(parse_domain(""), None);
    }

    #[test]
    fn a_resolved_thing_brings_its_domain_path() {
        let thing = |domain: &str, ancestors: Option<&[&str]>| ResolvedThing {
            thing_type: "Pump".into(),
            domain: domain.into(),
            ancestors: ancestors.map(|a| a.iter().map(|a| a.to_string()).collect()),
        };
        let pairs = |s: DirectorySnapshot| -> Vec<(String, String)> {
            s.domains.into_iter().map(|d| (d.id, d.parent)).collect()
        };
        assert_eq!(
            pairs(thing("sub2", Some(&["sub1"])).snapshot("t")),
            [
                ("sub1".into(), "root".into()),
                ("sub2".into(), "sub1".into())
            ]
        );
        assert_eq!(
            pairs(thing("sub1", Some(&[])).snapshot("t")),
            [("sub1".into(), "root".into())]
        );
        // Only an id: where the domain hangs is left to the tree (or root until it is known).
        assert!(pairs(thing("sub2", None).snapshot("t")).is_empty());
        assert!(pairs(thing("root", Some(&[])).snapshot("t")).is_empty());
        let s = thing("sub1", None).snapshot("t");
        assert_eq!(s.things[0].thing_name, "t");
        assert_eq!(s.things[0].domain, "sub1");
    }
}
