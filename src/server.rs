//! Wiring: builds every part from the configuration, serves until a shutdown signal, then
//! drains within `shutdown.grace_secs`.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use ccstream_common::redact;
use metrics_exporter_prometheus::PrometheusHandle;
use rule_engine::Directory;
use sinks::search::SearchClient;
use tokio::sync::Notify;

use crate::api::observation_lambda::ObservationApi;
use crate::api::rule_lambda::RuleApi;
use crate::api::starting::Starting;
use crate::api::{router, AppState, EngineStatus};
use crate::auth::exchange::Exchange;
use crate::auth::oidc::OidcVerifier;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::engine;
use crate::store::RuleStore;

/// The directory as the store has it, then `[[domains]]` from the config, then the start-up
/// import file (stored too, so the next start has it without the file).
pub async fn load_directory(config: &Config, store: &RuleStore) -> anyhow::Result<Directory> {
    let mut directory = Directory::new();
    store
        .load_directory_into(&mut directory)
        .await
        .context("loading the directory from the store")?;
    for d in &config.domains {
        directory
            .insert_domain(&d.id, &d.parent)
            .with_context(|| format!("[[domains]] id = {:?}, parent = {:?}", d.id, d.parent))?;
    }
    if let Some(path) = &config.directory.import_file {
        let imported = crate::directory_file::import_file(path, &mut directory, store)
            .await
            .with_context(|| format!("directory.import_file {}", path.display()))?;
        tracing::info!(
            file = %path.display(),
            domains = imported.domains,
            things = imported.things,
            "directory imported"
        );
    }
    directory.shrink_to_fit();
    Ok(directory)
}

/// Runs ccstream until `shutdown` completes.
pub async fn run(
    config: Config,
    metrics: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Bound first, so probes get an answer while the store and the directory load.
    let api_socket = std::net::TcpListener::bind(config.api.listen)
        .and_then(|socket| socket.set_nonblocking(true).map(|()| socket))
        .with_context(|| format!("binding api.listen {}", config.api.listen))?;
    let starting = Starting::serve(api_socket.try_clone().context("api.listen socket")?)
        .context("serving the API while starting")?;
    tracing::info!(listen = %api_socket.local_addr()?, "starting; /healthz answers, /readyz says not ready");
    let store = RuleStore::connect(&config.store.url)
        .await
        .with_context(|| {
            format!(
                "opening the rule store {}",
                redact::url_password(&config.store.url)
            )
        })?;
    let auth = Authenticator::from_config(&config.api, &store)?;
    let exchange = match OidcVerifier::from_config(&config.api.oidc, &config.api.jwt).await? {
        // Validation made sure that api.oidc comes with sigv4, and so with a master key.
        Some(oidc) => match auth.master_key() {
            Some(master) => Some(Exchange::new(oidc, master.clone(), &config.api)),
            None => anyhow::bail!("api.oidc needs api.auth to accept \"sigv4\""),
        },
        None => None,
    };
    let directory = Arc::new(RwLock::new(load_directory(&config, &store).await?));
    let id_prefix = (!config.stack.production).then(|| config.stack.name.clone());
    let ssrf = Arc::new(
        config
            .webhook
            .ssrf_policy()
            .context("webhook.allow_cidrs")?,
    );
    let rules_changed = Arc::new(Notify::new());
    let rules = RuleApi::new(
        store.clone(),
        Arc::clone(&directory),
        id_prefix,
        ssrf,
        Arc::clone(&rules_changed),
    );
    let observations = match &config.search.url {
        Some(_) => Some(ObservationApi::new(
            SearchClient::new(&config.search).context("[search]")?,
            Arc::clone(&directory),
        )),
        None => None,
    };
    let state = AppState::new(
        auth,
        exchange,
        rules,
        observations,
        store.clone(),
        Arc::clone(&directory),
        metrics,
        config.api.max_body_bytes,
    );
    if store.announces_changes() {
        // Detached: it listens for the life of the process.
        tokio::spawn(crate::store::notify::listen(
            store.clone(),
            Arc::clone(&rules_changed),
            Arc::clone(&directory),
        ));
    }
    let engine = engine::start(&config, &store, directory, rules_changed).await?;
    state.set_engine_status(EngineStatus {
        mqtt: engine.mqtt_status(),
        objects: engine.objects(),
        threshold_state: engine.state_status(),
        outbox: engine.outbox(),
        tasks: engine.task_failure(),
    });
    let app = router(
        state.clone(),
        Duration::from_secs(config.api.request_timeout_secs),
    );

    starting.finish().await;
    let listener = tokio::net::TcpListener::from_std(api_socket).context("api.listen socket")?;
    tracing::info!(
        listen = %listener.local_addr()?,
        auth = ?config.api.auth,
        store = %redact::url_password(&config.store.url),
        "ccstream API listening"
    );

    // On the signal, /readyz turns 503 at once and the engine drains (stop intake, finish what
    // was taken, store the open batches, deliver the queued webhooks) while the API still
    // answers; the API stops last, with what is left of the grace period.
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = api_stopped.await;
    });
    let grace = Duration::from_secs(config.shutdown.grace_secs);
    let mut server = tokio::spawn(async move { serve.await });
    let failed = tokio::select! {
        res = &mut server => Some(res),
        () = shutdown => None,
    };
    state.begin_shutdown();
    let draining = tokio::time::Instant::now();
    engine.shutdown(grace).await;
    if let Some(res) = failed {
        res??;
        anyhow::bail!("the API server stopped on its own");
    }
    let _ = stop_api.send(());
    // At least a second for the API's in-flight requests, even when the engine used the grace.
    let api_grace = grace
        .saturating_sub(draining.elapsed())
        .max(Duration::from_secs(1));
    match tokio::time::timeout(api_grace, server).await {
        Ok(res) => res??,
        Err(_) => tracing::warn!(
            grace_secs = grace.as_secs(),
            "grace period over, in-flight requests dropped"
        ),
    }
    tracing::info!("ccstream stopped");
    Ok(())
}
