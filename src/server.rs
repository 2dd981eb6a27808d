//! Wiring: builds every part from the configuration, serves until a shutdown signal, then
//! drains within `shutdown.grace_secs`.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use rule_engine::DomainTree;

use crate::api::rule_lambda::RuleApi;
use crate::api::{router, AppState};
use crate::auth::Authenticator;
use crate::config::Config;
use crate::store::RuleStore;

/// Builds the domain tree of `[[domains]]`, refusing cycles and self-parents by name.
pub fn domain_tree(config: &Config) -> anyhow::Result<DomainTree> {
    let mut tree = DomainTree::new();
    for d in &config.domains {
        tree.insert(d.id.clone(), d.parent.clone())
            .with_context(|| format!("[[domains]] id = {:?}, parent = {:?}", d.id, d.parent))?;
    }
    Ok(tree)
}

/// Runs ccstream until `shutdown` completes.
pub async fn run(
    config: Config,
    metrics: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let domains = Arc::new(RwLock::new(domain_tree(&config)?));
    let auth = Authenticator::from_config(&config.api)?;
    let store = RuleStore::connect(&config.store.url)
        .await
        .with_context(|| format!("opening the rule store {}", redact(&config.store.url)))?;
    let id_prefix = (!config.stack.production).then(|| config.stack.name.clone());
    let rules = RuleApi::new(store.clone(), domains, id_prefix);
    let state = AppState::new(auth, rules, store, metrics, config.api.max_body_bytes);
    let app = router(state, Duration::from_secs(config.api.request_timeout_secs));

    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("binding api.listen {}", config.api.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        auth = ?config.api.auth,
        store = %redact(&config.store.url),
        "ccstream API listening"
    );

    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = drain_tx.send(());
    });
    let grace = Duration::from_secs(config.shutdown.grace_secs);
    let server = tokio::spawn(async move { serve.await });
    // Once the signal arrives, in-flight requests get `grace` to finish.
    tokio::pin!(server);
    tokio::select! {
        res = &mut server => res??,
        _ = drain_rx => {
            match tokio::time::timeout(grace, &mut server).await {
                Ok(res) => res??,
                Err(_) => tracing::warn!(grace_secs = grace.as_secs(), "grace period over, in-flight requests dropped"),
            }
        }
    }
    tracing::info!("ccstream stopped");
    Ok(())
}

/// A store URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://data/x.db"), "sqlite://data/x.db");
    }
}
