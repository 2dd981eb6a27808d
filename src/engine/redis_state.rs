//! Threshold state in Redis (`engine.state = "redis"`): shared by every replica, so a thing's
//! updates may reach any of them, and kept across restarts and rollouts.
//!
//! **Keys.** One hash per (rule, thing, resource path):
//! `<prefix>:{<thing>}:<rule id>:<rule epoch>:<path>` with fields `r` (matches in a row), `q`
//! (no firing before this time, ms), `l` (the last step applied) and `d` (its decision). The
//! thing in braces is a Redis Cluster hash tag: all keys of one thing sit in one slot, so one
//! script call can take every step of an observation. The epoch is a hash of the rule's
//! expression and threshold ([`rule_epoch`]): an UPDATE that changes either starts on fresh keys,
//! and the old ones expire, on every replica at once and without a scan.
//!
//! **Steps.** The script ([`SCRIPT`]) applies the steps of one observation in order with the
//! semantics of [`rule_engine::ThresholdState`] (a miss resets the run, a firing resets it and
//! starts the interval, matches during the interval count). The steps of a whole batch of
//! observations go in one pipelined round trip.
//!
//! **Retries are idempotent.** Each observation's steps carry an id (the client id and the
//! observation id, see `pipeline::step_id`); a key that already applied that id answers the
//! decision it gave then. So a round trip that failed half way (the connection dropped after
//! Redis ran some of the scripts) is simply sent again, and a message redelivered after a crash
//! is decided as it was the first time.
//!
//! **Expiry.** A key expires `engine.state_ttl_secs` after its last step plus what remains of its
//! interval; a key that holds nothing (run 0, interval over) is kept only [`IDLE_KEY_TTL_MS`],
//! long enough for a retry to find its decision. So Redis holds the runs in progress and the
//! intervals still running, as the local state does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use rule_engine::deferred::{Step, StepKind};
use rule_engine::threshold::Decision;
use rule_engine::Rule;

/// How long a key that carries no state is kept, for retries.
pub const IDLE_KEY_TTL_MS: u64 = 10 * 60 * 1000;

/// Longest wait for one round trip before it counts as failed and is retried.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Applies one observation's steps. KEYS: one per step. ARGV: now (ms), the observation's step
/// id, the TTL bound (ms), then per step its kind (`m` match, `x` miss), count and interval.
/// Returns one decision per step: 0 fire, 1 counting, 2 throttled, -1 for a miss.
pub const SCRIPT: &str = r#"
local now = tonumber(ARGV[1])
local id = ARGV[2]
local bound = tonumber(ARGV[3])
local idle_ttl = tonumber(ARGV[4])
local out = {}
for i, key in ipairs(KEYS) do
  local base = 4 + (i - 1) * 3
  local kind = ARGV[base + 1]
  local s = redis.call('HMGET', key, 'r', 'q', 'l', 'd')
  local run = tonumber(s[1]) or 0
  local quiet = tonumber(s[2]) or 0
  if kind == 'x' then
    if run > 0 then
      redis.call('HSET', key, 'r', 0)
      if quiet <= now then redis.call('PEXPIRE', key, idle_ttl) end
    end
    out[i] = -1
  elseif s[3] == id then
    out[i] = tonumber(s[4])
  else
    local count = tonumber(ARGV[base + 2])
    local interval = tonumber(ARGV[base + 3])
    local d
    run = math.min(run + 1, count)
    if run < count then
      d = 1
    elseif now < quiet then
      d = 2
    else
      d = 0
      run = 0
      if interval > 0 then quiet = now + interval else quiet = 0 end
    end
    redis.call('HSET', key, 'r', run, 'q', quiet, 'l', id, 'd', d)
    if run == 0 and quiet <= now then
      redis.call('PEXPIRE', key, idle_ttl)
    else
      local ttl = bound
      if quiet > now then ttl = ttl + (quiet - now) end
      redis.call('PEXPIRE', key, ttl)
    end
    out[i] = d
  end
end
return out
"#;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis answered {got} decisions for {want} steps")]
    Mismatch { got: usize, want: usize },
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// Whether Redis answered the last round trip, for `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct StateStatus {
    down: Arc<AtomicBool>,
    reason: Arc<Mutex<String>>,
}

impl StateStatus {
    /// `Some(reason)` while the last round trip failed.
    pub fn unavailable(&self) -> Option<String> {
        if !self.down.load(Ordering::Relaxed) {
            return None;
        }
        Some(match self.reason.lock() {
            Ok(r) => r.clone(),
            Err(p) => p.into_inner().clone(),
        })
    }

    fn set(&self, error: Option<&StateError>) {
        if let Some(e) = error {
            let mut reason = match self.reason.lock() {
                Ok(r) => r,
                Err(p) => p.into_inner(),
            };
            *reason = e.to_string();
        }
        self.down.store(error.is_some(), Ordering::Relaxed);
        metrics::gauge!("ccstream_redis_up").set(if error.is_some() { 0.0 } else { 1.0 });
    }
}

/// The steps of one observation, ready to be decided.
#[derive(Debug)]
pub struct ObservationSteps<'a> {
    pub thing: &'a str,
    pub steps: &'a [Step],
    /// The same for every evaluation of one message (see the module docs).
    pub step_id: &'a str,
    pub now_ms: u64,
}

/// The connection and the script. Clones share the connection (multiplexed) and the status:
/// every worker of the engine has one.
#[derive(Clone)]
pub struct RedisThresholds {
    conn: ConnectionManager,
    script: redis::Script,
    prefix: String,
    ttl_bound_ms: u64,
    status: StateStatus,
}

impl RedisThresholds {
    /// Connects lazily (the first round trip connects; a failure there is retried like any
    /// other), so that a replica starts while Redis is down and says so in `/readyz`.
    pub fn new(url: &str, stack: &str, ttl_bound: Duration) -> Result<Self, StateError> {
        if url.starts_with("rediss://") {
            // redis-rs builds its TLS config from the process default provider.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(RedisThresholds {
            conn,
            script: redis::Script::new(SCRIPT),
            prefix: format!("ccstream:{stack}:th"),
            ttl_bound_ms: u64::try_from(ttl_bound.as_millis()).unwrap_or(u64::MAX),
            status: StateStatus::default(),
        })
    }

    pub fn status(&self) -> StateStatus {
        self.status.clone()
    }

    /// PINGs Redis every `every` and keeps [`StateStatus`] current between batches, so that
    /// `/readyz` tells an unreachable Redis before the next observation needs it (at start, or
    /// while no update comes).
    pub fn spawn_health_check(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let mut conn = self.conn.clone();
        let status = self.status.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let cmd = redis::cmd("PING");
                let ping = cmd.query_async::<String>(&mut conn);
                let result = match tokio::time::timeout(RESPONSE_TIMEOUT, ping).await {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(StateError::Redis(e)),
                    Err(_) => Some(StateError::Timeout(RESPONSE_TIMEOUT)),
                };
                status.set(result.as_ref());
            }
        })
    }

    /// Writes the key of a step into `key`; `rule_part` is `<rule id>:<epoch>` (see
    /// [`rule_epoch`]).
    fn write_key(&self, key: &mut String, thing: &str, rule_part: &str, path: &str) {
        key.clear();
        key.push_str(&self.prefix);
        key.push_str(":{");
        key.push_str(thing);
        key.push_str("}:");
        key.push_str(rule_part);
        key.push(':');
        key.push_str(path);
    }

    /// Decides every match step of `batch` in one round trip: for each observation, one decision
    /// per [`StepKind::Match`] step, in order. `rule_part` gives `<rule id>:<epoch>`.
    pub async fn decide<P: AsRef<str>>(
        &mut self,
        batch: &[ObservationSteps<'_>],
        rule_part: impl Fn(&Arc<str>) -> P,
    ) -> Result<Vec<Vec<Decision>>, StateError> {
        let started = Instant::now();
        let result = self.round_trip(batch, &rule_part).await;
        let result = match result {
            // Redis restarted and lost its script cache: load it and send the batch again (the
            // steps are idempotent).
            Err(StateError::Redis(e))
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                self.load_script().await?;
                self.round_trip(batch, &rule_part).await
            }
            other => other,
        };
        metrics::histogram!("ccstream_redis_round_trip_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("ccstream_redis_round_trips_total").increment(1);
        match &result {
            Ok(_) => self.status.set(None),
            Err(e) => {
                metrics::counter!("ccstream_redis_errors_total").increment(1);
                self.status.set(Some(e));
            }
        }
        result
    }

    async fn load_script(&mut self) -> Result<(), StateError> {
        let _: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(SCRIPT)
            .query_async(&mut self.conn)
            .await?;
        Ok(())
    }

    async fn round_trip<P: AsRef<str>>(
        &mut self,
        batch: &[ObservationSteps<'_>],
        rule_part: &impl Fn(&Arc<str>) -> P,
    ) -> Result<Vec<Vec<Decision>>, StateError> {
        let mut pipe = redis::pipe();
        let mut calls = 0;
        let mut key = String::new();
        for obs in batch.iter().filter(|o| !o.steps.is_empty()) {
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(self.script.get_hash())
                .arg(obs.steps.len());
            for step in obs.steps {
                self.write_key(
                    &mut key,
                    obs.thing,
                    rule_part(&step.rule).as_ref(),
                    &step.path,
                );
                cmd.arg(key.as_str());
            }
            cmd.arg(obs.now_ms)
                .arg(obs.step_id)
                .arg(self.ttl_bound_ms)
                .arg(IDLE_KEY_TTL_MS);
            for step in obs.steps {
                match step.kind {
                    StepKind::Match(t) => cmd.arg("m").arg(t.count).arg(t.interval),
                    StepKind::Miss => cmd.arg("x").arg(0).arg(0),
                };
            }
            calls += 1;
        }
        if calls == 0 {
            return Ok(batch.iter().map(|_| Vec::new()).collect());
        }
        let answers: Vec<Vec<i64>> =
            tokio::time::timeout(RESPONSE_TIMEOUT * 2, pipe.query_async(&mut self.conn))
                .await
                .map_err(|_| StateError::Timeout(RESPONSE_TIMEOUT * 2))??;
        if answers.len() != calls {
            return Err(StateError::Mismatch {
                got: answers.len(),
                want: calls,
            });
        }
        let mut answers = answers.into_iter();
        let mut out = Vec::with_capacity(batch.len());
        for obs in batch {
            if obs.steps.is_empty() {
                out.push(Vec::new());
                continue;
            }
            let codes = answers.next().unwrap_or_default();
            if codes.len() != obs.steps.len() {
                return Err(StateError::Mismatch {
                    got: codes.len(),
                    want: obs.steps.len(),
                });
            }
            out.push(
                codes
                    .into_iter()
                    .zip(obs.steps)
                    .filter(|(_, s)| matches!(s.kind, StepKind::Match(_)))
                    .map(|(code, _)| decision(code))
                    .collect(),
            );
        }
        Ok(out)
    }
}

fn decision(code: i64) -> Decision {
    match code {
        0 => Decision::Fire,
        2 => Decision::Throttled,
        _ => Decision::Counting,
    }
}

/// The part of a rule its threshold state depends on, as a short stable hash: the expression
/// and the threshold. Stable across processes and versions (rapidhash V3, as observation ids).
pub fn rule_epoch(rule: &Rule) -> String {
    let mut text = serde_json::to_vec(&rule.expression).unwrap_or_default();
    text.push(0);
    text.extend(serde_json::to_vec(&rule.threshold).unwrap_or_default());
    format!("{:08x}", rapidhash::v3::rapidhash_v3(&text) as u32)
}
