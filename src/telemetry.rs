//! Logs (`tracing`, text or JSON) and the Prometheus metrics recorder.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global log subscriber. `RUST_LOG`, when set, wins over `log.level`.
pub fn init_logs(cfg: &LogConfig) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::try_new(env)?,
        _ => EnvFilter::try_new(&cfg.level)
            .map_err(|e| anyhow::anyhow!("log.level {:?}: {e}", cfg.level))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match cfg.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
}

/// How often queued histogram samples are folded into their buckets.
const METRICS_UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the global metrics recorder and returns the handle `/metrics` renders. Call it
/// inside the Tokio runtime: it spawns the recorder's upkeep task.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".to_owned()),
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0,
            ],
        )?
        .install_recorder()?;
    // `install_recorder` leaves upkeep to its caller. Without it, every histogram sample stays
    // queued until the next scrape: a replica nobody scrapes grows by 8 bytes per sample.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    describe();
    Ok(handle)
}

fn describe() {
    metrics::describe_histogram!(
        "ccstream_evaluation_duration_seconds",
        metrics::Unit::Seconds,
        "Time to evaluate the rules for one observation (one observation in 64 is timed)"
    );
    metrics::describe_counter!(
        "ccstream_api_requests_total",
        "Invocations of the management API by function, action and outcome (ok or messageKey)"
    );
    metrics::describe_histogram!(
        "ccstream_api_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time to answer an invocation"
    );
    metrics::describe_counter!(
        "ccstream_store_errors_total",
        "Rule store operations that failed"
    );
    metrics::describe_counter!(
        "ccstream_observations_redelivered_skipped_total",
        "QoS 1 redeliveries (DUP) of observations already spooled: acked, not stored again"
    );
    metrics::describe_counter!(
        "ccstream_observations_evaluated_again_total",
        "Redeliveries of observations an earlier run stored but may not have fired, evaluated again to complete their firings (counted twice in ccstream_observations_evaluated_total)"
    );
    metrics::describe_counter!(
        "ccstream_store_unreadable_rules_total",
        "Stored rules skipped because their document no longer parses (unknown operator, ...)"
    );
    metrics::describe_gauge!(
        "ccstream_rules_generation",
        "Rule store generation of the rules in force (replicas that agree on it have the same rules)"
    );
    metrics::describe_histogram!(
        "ccstream_store_writes_per_commit",
        "Rule writes committed together in one transaction (group commit)"
    );
    metrics::describe_histogram!(
        "ccstream_rules_index_update_seconds",
        metrics::Unit::Seconds,
        "Time to apply one batch of rule changes to a copy of the rule index"
    );
    metrics::describe_counter!(
        "ccstream_rules_drift_repaired_total",
        "Periodic full reloads that found rules the changes since a generation had not shown (written by an earlier version during a rolling upgrade?)"
    );
    metrics::describe_counter!(
        "ccstream_rules_changes_applied_total",
        "Rule writes and removals applied incrementally (read as changes since a generation)"
    );
    metrics::describe_counter!(
        "ccstream_redis_round_trips_total",
        "Round trips to Redis deciding a batch's threshold steps (engine.state = \"redis\")"
    );
    metrics::describe_counter!(
        "ccstream_redis_errors_total",
        "Redis round trips that failed (the batch is retried; nothing is acked meanwhile)"
    );
    metrics::describe_histogram!(
        "ccstream_redis_round_trip_seconds",
        metrics::Unit::Seconds,
        "Time to decide one batch's threshold steps in Redis"
    );
    metrics::describe_gauge!(
        "ccstream_redis_up",
        "1 while Redis answers (last round trip or PING), 0 otherwise"
    );
    metrics::describe_counter!(
        "ccstream_store_notifications_total",
        "Change notifications from other replicas (PostgreSQL LISTEN/NOTIFY), by channel"
    );
    metrics::describe_counter!(
        "ccstream_store_listener_errors_total",
        "Losses of the change listener's connection (polling covers the gap)"
    );
    metrics::describe_counter!(
        "ccstream_threshold_state_save_errors_total",
        "Saves of the local threshold state that failed"
    );
    // Registered at zero so dashboards and tests see the series before the first request.
    metrics::counter!("ccstream_store_errors_total").absolute(0);
    metrics::counter!("ccstream_observations_redelivered_skipped_total").absolute(0);
}
