//! Configuration: a TOML file overridden by `CCSTREAM_<SECTION>__<KEY>` environment variables.
//!
//! Defaults live in the `Default` impls below and nowhere else; `ccstream.example.toml` lists the
//! same values and a test keeps the two in step.

use std::net::SocketAddr;
use std::path::Path;

use ccstream_common::redact;
use ccstream_common::ConfigError as KeyError;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use sinks::objects::writer::firehose::MAX_RECORD_BYTES;
use sinks::objects::SinkKind;

/// Largest MQTT payload the Firehose sink can always take: its record limit less room for the
/// keys a record adds (thing names and domain paths are far shorter in practice).
pub const FIREHOSE_MAX_PAYLOAD_BYTES: usize = MAX_RECORD_BYTES - 8 * 1024;

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "CCSTREAM_";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Which deployment this is (spec 6.2.1.1: ids carry the stack name outside production).
    pub stack: StackConfig,
    /// The management API (RuleLambda- and ObservationLambda-compatible invoke endpoint).
    pub api: ApiConfig,
    /// Where rules are persisted.
    pub store: StoreConfig,
    /// Log output.
    pub log: LogConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// The MQTT source (and the optional embedded broker).
    pub mqtt: ingest::MqttConfig,
    /// WEBHOOK actions: timeouts, retries, queue, SSRF guard, dead letters.
    pub webhook: sinks::webhook::WebhookConfig,
    /// Rule evaluation.
    pub engine: EngineConfig,
    /// Observation batches: spool, rolling, and where objects go.
    pub objects: sinks::objects::ObjectsConfig,
    /// OpenSearch: indexing of every observation and the backend of ObservationLambda FIND.
    pub search: sinks::search::SearchConfig,
    /// The directory of things and domains.
    pub directory: DirectoryConfig,
    /// The domain tree: every domain but the implicit `root`, with its parent. Merged with what
    /// life cycle events and directory imports add.
    pub domains: Vec<DomainEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// How often each replica checks the store for rules written through another replica, in
    /// ms. Rules written through this replica take effect at once.
    pub rules_poll_ms: u64,
    /// Most (rule, thing, resource) threshold states kept; beyond it new runs are not tracked
    /// and are counted (`ccstream_rules_threshold_state_full_total`). `local` state only.
    pub threshold_max_keys: usize,
    /// Where threshold state (count in a row, interval since the last firing) lives: `local`
    /// (this process) or `redis` (shared by every replica, kept across restarts).
    pub state: StateMode,
    /// `redis://[user:password@]host:port[/db]` or `rediss://...` (TLS); needed by
    /// `state = "redis"`. Redis 6+ or Valkey.
    pub redis_url: Option<String>,
    /// With `state = "local"`: how often the threshold state is saved to the store (it is also
    /// saved at shutdown and loaded at start), in seconds. A crash loses at most this much.
    pub state_save_secs: u64,
    /// How long a threshold key outlives its interval in Redis when its thing reports no more
    /// (a run in progress is forgotten after this much silence), in seconds.
    pub state_ttl_secs: u64,
    /// Pipeline tasks evaluating observations, each owning the things its share of names
    /// routes to (see `engine::dispatch`). Unset: one per core the process may use.
    pub workers: Option<usize>,
}

/// Most `engine.workers`: more tasks than this would only share the same cores.
pub const MAX_WORKERS: usize = 256;

impl EngineConfig {
    /// `engine.workers`, or the cores this process may run on (cgroup quota included).
    pub fn worker_count(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, std::num::NonZeroUsize::get)
                .min(MAX_WORKERS)
        })
    }
}

/// See [`EngineConfig::state`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateMode {
    #[default]
    Local,
    Redis,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            rules_poll_ms: 500,
            threshold_max_keys: 1_000_000,
            state: StateMode::Local,
            redis_url: None,
            state_save_secs: 30,
            state_ttl_secs: 7 * 24 * 3600,
            workers: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectoryConfig {
    /// A JSON directory snapshot (`{"domains": [...], "things": [...]}`) merged into the stored
    /// directory at start-up.
    pub import_file: Option<std::path::PathBuf>,
    /// An update on `thing-update/<domainPath>/<thingName>` must name the thing's full domain
    /// path (spec 9.1.2); one that does not is stored as an error record and not evaluated.
    /// Off when an AWS IoT rule republishes `$aws/things/+/shadow/update` to
    /// `thing-update/${topic(3)}`, which carries no domain path.
    pub check_topic_domain: bool,
    /// Who is asked about a thing the directory does not know (see [`ResolverKind`]).
    pub resolver: ResolverKind,
    /// `aws-iot`: the thing attribute holding its domain (an id, or a path `/sub1/sub2/`).
    pub domain_attribute: String,
    /// `thing-lambda`: the platform's ThingLambda function (name or ARN).
    pub thing_lambda: Option<String>,
    /// Region and endpoint of AWS IoT or Lambda, as `objects` has them (tests, compatible
    /// services); credentials come from the standard AWS chain.
    pub region: Option<String>,
    pub endpoint: Option<String>,
    /// Lookups in flight at most.
    pub resolve_concurrency: usize,
    /// How long one lookup may take once asked (the thing's updates wait, unacked, for it).
    pub resolve_timeout_ms: u64,
    /// Observations waiting for answers, at most; past it they are stored and not evaluated.
    pub resolve_queue: usize,
    /// How long "no such thing" is believed.
    pub negative_ttl_secs: u64,
    /// After a failed lookup (service down), how long the thing's updates are not held before
    /// it is asked again.
    pub retry_secs: u64,
    /// A thing learnt from the resolver is asked again after this long (at its next update,
    /// which does not wait): what no life cycle event announced (a changed type or domain) is
    /// picked up.
    pub positive_ttl_secs: u64,
}

/// `directory.resolver`: who answers for a thing the directory does not know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResolverKind {
    /// Nobody: updates of unknown things are stored and counted, not evaluated.
    #[default]
    None,
    /// AWS IoT `DescribeThing`: the type from `thingTypeName`, the domain from an attribute.
    AwsIot,
    /// The platform's ThingLambda `GET`, through Lambda Invoke.
    ThingLambda,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        Self {
            import_file: None,
            check_topic_domain: true,
            resolver: ResolverKind::None,
            domain_attribute: "domain".to_owned(),
            thing_lambda: None,
            region: None,
            endpoint: None,
            resolve_concurrency: 8,
            resolve_timeout_ms: 5_000,
            resolve_queue: 10_000,
            negative_ttl_secs: 300,
            retry_secs: 10,
            positive_ttl_secs: 3_600,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StackConfig {
    /// Stack name; generated rule ids are `<name>-00000001` unless `production` is true.
    pub name: String,
    /// In production generated ids carry no stack prefix (`00000001`).
    pub production: bool,
}

impl Default for StackConfig {
    fn default() -> Self {
        Self {
            name: "dev".to_owned(),
            production: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// `none`: every caller is root with ReadWrite (only allowed on a loopback address);
    /// `jwt`: `Authorization: Bearer <token>` checked as `api.jwt` says; `sigv4`: requests
    /// signed by an AWS SDK with an access key `ccstream credentials create` made, checked as
    /// `api.sigv4` says. A list (`["sigv4", "jwt"]`) accepts each of its ways.
    pub auth: AuthModes,
    /// Largest request body accepted, in bytes (AWS Lambda's synchronous payload limit is 6 MB;
    /// rules are small, so 1 MiB is plenty and bounds memory per request).
    pub max_body_bytes: usize,
    /// Seconds before a request is answered with a timeout error.
    pub request_timeout_secs: u64,
    pub jwt: JwtConfig,
    pub sigv4: SigV4Config,
    pub oidc: OidcConfig,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8088)),
            auth: AuthModes::One(AuthMode::None),
            max_body_bytes: 1024 * 1024,
            request_timeout_secs: 30,
            jwt: JwtConfig::default(),
            sigv4: SigV4Config::default(),
            oidc: OidcConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    None,
    Jwt,
    Sigv4,
}

/// `api.auth`: one way, or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AuthModes {
    One(AuthMode),
    Many(Vec<AuthMode>),
}

impl AuthModes {
    pub fn modes(&self) -> &[AuthMode] {
        match self {
            AuthModes::One(mode) => std::slice::from_ref(mode),
            AuthModes::Many(modes) => modes,
        }
    }

    pub fn accepts(&self, mode: AuthMode) -> bool {
        self.modes().contains(&mode)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigV4Config {
    /// When set, a request's credential scope must name this region; any region otherwise.
    pub region: Option<String>,
    /// 32 random bytes in base64 (`openssl rand -base64 32`), the same on every replica: access
    /// keys' secrets are stored sealed under it. Give it through the environment
    /// (`CCSTREAM_API__SIGV4__MASTER_KEY`, from a Secret) or `master_key_file`.
    pub master_key: Option<String>,
    /// A file holding the master key (a mounted Secret), read at start-up.
    pub master_key_file: Option<String>,
}

/// The OpenID Connect provider whose tokens STS `AssumeRoleWithWebIdentity` and Cognito
/// Identity `GetCredentialsForIdentity` exchange for temporary credentials (served on `POST /`
/// when `issuer` is set). The caller comes from the claims `api.jwt` names.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// The `iss` tokens must carry (`https://login.example.com`).
    pub issuer: Option<String>,
    /// The `aud` tokens must carry (the client id the provider issued them to).
    pub audience: Option<String>,
    /// The provider's keys (a JSON Web Key Set) from a file, read at start-up...
    pub jwks_file: Option<String>,
    /// ...or from a URL, fetched at start-up and again when a token names a key not seen yet.
    pub jwks_url: Option<String>,
    /// When set, Cognito calls must name this identity pool.
    pub identity_pool_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Shared secret for HS256 tokens.
    pub hs256_secret: Option<String>,
    /// PEM public key for RS256 tokens (inline).
    pub rs256_public_key_pem: Option<String>,
    /// PEM public key for RS256 tokens, read from this file at start-up.
    pub rs256_public_key_file: Option<String>,
    /// Claim that holds the user name.
    pub user_claim: String,
    /// Claim that holds the role: `Read` or `ReadWrite`.
    pub role_claim: String,
    /// Claim that holds the caller's domain id.
    pub domain_claim: String,
    /// When set, the `iss` claim must equal it.
    pub issuer: Option<String>,
    /// When set, the `aud` claim must contain it.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            hs256_secret: None,
            rs256_public_key_pem: None,
            rs256_public_key_file: None,
            user_claim: "sub".to_owned(),
            role_claim: "role".to_owned(),
            domain_claim: "domain".to_owned(),
            issuer: None,
            audience: None,
            leeway_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://path/to/file.db` (created when missing) or `postgres://user@host/db`.
    pub url: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://data/ccstream.db".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` for people, `json` for log collectors.
    pub format: LogFormat,
    /// A `tracing` filter: `info`, `debug`, `ccstream=debug,sqlx=warn`. `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info,rumqttd=warn".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Seconds allowed for in-flight work to finish after SIGINT/SIGTERM.
    pub grace_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { grace_secs: 30 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainEntry {
    pub id: String,
    pub parent: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or the environment does not parse into the configuration; one line naming
    /// the key and where it came from.
    #[error("invalid configuration: {}", load_error_line(.0))]
    Load(#[from] Box<figment::Error>),
    /// A value is refused; the message names its full key (`webhook.timeout_secs`), whichever
    /// crate checked it.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] KeyError),
}

/// The `<prefix><SECTION>__<KEY>` variables. Every key lives in a section, so a variable without
/// `__` is not ours: Kubernetes sets `CCSTREAM_PORT`, `CCSTREAM_SERVICE_HOST`, ... for a Service
/// named `ccstream` (service links), and those must not stop the start-up as unknown keys.
fn environment(prefix: &str) -> Env {
    Env::prefixed(prefix)
        .filter(|key| key.as_str().contains("__"))
        .split("__")
}

/// figment's error on one line: `api.listn: unknown field ... (in ccstream.toml TOML file)`.
/// Its own Display puts the profile before the key and, for TOML syntax errors, spreads the
/// parser's report with its caret drawing over several lines.
fn load_error_line(e: &figment::Error) -> String {
    let key = e.path.join(".");
    let what = e
        .kind
        .to_string()
        .lines()
        .map(str::trim)
        // The parser's drawing of the line at fault: "1 | [api", "  |     ^".
        .filter(|line| !line.is_empty() && !line.contains('|'))
        .collect::<Vec<_>>()
        .join(": ");
    let from = e
        .metadata
        .as_ref()
        .map(|m| match &m.source {
            Some(source) => format!(" (in {source}, {})", m.name),
            None => format!(" (in {})", m.name),
        })
        .unwrap_or_default();
    if key.is_empty() {
        format!("{what}{from}")
    } else {
        format!("{key}: {what}{from}")
    }
}

impl Config {
    /// Defaults, then the file (when given), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_from(file, environment(ENV_PREFIX))
    }

    fn load_from(file: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(KeyError::new(
                    "--config",
                    format!("{} does not exist", path.display()),
                )
                .into());
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let config: Config = figment.merge(env).extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration with every secret replaced by `***`: the JWT secret, passwords, and
    /// the passwords in URLs. For `ccstream check-config` and logs.
    pub fn redacted(&self) -> Config {
        const HIDDEN: &str = "***";
        let hide = |s: &Option<String>| s.as_ref().map(|_| HIDDEN.to_owned());
        let mut c = self.clone();
        c.api.jwt.hs256_secret = hide(&c.api.jwt.hs256_secret);
        c.api.sigv4.master_key = hide(&c.api.sigv4.master_key);
        c.mqtt.password = hide(&c.mqtt.password);
        c.mqtt.url = redact::url_password(&c.mqtt.url);
        c.store.url = redact::url_password(&c.store.url);
        c.search.password = hide(&c.search.password);
        c.engine.redis_url = c.engine.redis_url.as_deref().map(redact::url_password);
        c
    }

    /// The configuration as a TOML document (what `ccstream check-config` prints, redacted).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(self)
    }

    /// `[directory]`'s resolver settings.
    fn validate_directory(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| ConfigError::from(KeyError::new(key, reason));
        let d = &self.directory;
        if d.resolver == ResolverKind::ThingLambda
            && d.thing_lambda
                .as_deref()
                .is_none_or(|f| f.trim().is_empty())
        {
            return Err(invalid(
                "directory.thing_lambda",
                "is needed by resolver = \"thing-lambda\"",
            ));
        }
        if d.resolver == ResolverKind::AwsIot && d.domain_attribute.trim().is_empty() {
            return Err(invalid("directory.domain_attribute", "must not be empty"));
        }
        if let Some(endpoint) = d.endpoint.as_deref().filter(|e| !e.trim().is_empty()) {
            match url::Url::parse(endpoint) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
                _ => return Err(invalid("directory.endpoint", "must be an http(s) URL")),
            }
        }
        const DAY: u64 = 24 * 3600;
        for (key, value, max) in [
            (
                "directory.resolve_concurrency",
                d.resolve_concurrency as u64,
                1_000,
            ),
            (
                "directory.resolve_timeout_ms",
                d.resolve_timeout_ms,
                600_000,
            ),
            (
                "directory.resolve_queue",
                d.resolve_queue as u64,
                10_000_000,
            ),
            ("directory.retry_secs", d.retry_secs, DAY),
            ("directory.negative_ttl_secs", d.negative_ttl_secs, 30 * DAY),
            (
                "directory.positive_ttl_secs",
                d.positive_ttl_secs,
                365 * DAY,
            ),
        ] {
            if value == 0 || value > max {
                return Err(ConfigError::from(KeyError::new(
                    key,
                    format!("must be between 1 and {max}"),
                )));
            }
        }
        Ok(())
    }

    /// Checks what types alone cannot say, naming the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| ConfigError::from(KeyError::new(key, reason));
        if self.stack.name.is_empty() && !self.stack.production {
            return Err(invalid(
                "stack.name",
                "must not be empty outside production",
            ));
        }
        if self
            .engine
            .workers
            .is_some_and(|w| !(1..=MAX_WORKERS).contains(&w))
        {
            return Err(invalid(
                "engine.workers",
                "must be between 1 and 256 (unset: one per core)",
            ));
        }
        let modes = self.api.auth.modes();
        if modes.is_empty() {
            return Err(invalid(
                "api.auth",
                "name at least one way: none, jwt, sigv4",
            ));
        }
        if modes.len() > 1 && self.api.auth.accepts(AuthMode::None) {
            return Err(invalid(
                "api.auth",
                "\"none\" accepts every caller: it cannot be combined with other ways",
            ));
        }
        if modes
            .iter()
            .enumerate()
            .any(|(i, m)| modes[..i].contains(m))
        {
            return Err(invalid("api.auth", "a way is named twice"));
        }
        if self.api.auth.accepts(AuthMode::None) && !self.api.listen.ip().is_loopback() {
            return Err(invalid(
                "api.auth",
                "\"none\" makes every caller root; it is only allowed when api.listen is a \
                 loopback address (use \"jwt\" or \"sigv4\")",
            ));
        }
        if self.api.auth.accepts(AuthMode::Sigv4) {
            let sigv4 = &self.api.sigv4;
            if sigv4.master_key.is_some() == sigv4.master_key_file.is_some() {
                return Err(invalid(
                    "api.sigv4",
                    "set exactly one of master_key, master_key_file (32 random bytes in \
                     base64: openssl rand -base64 32)",
                ));
            }
            if let Some(key) = &sigv4.master_key {
                crate::auth::seal::MasterKey::from_base64(key)
                    .map_err(|e| KeyError::new("api.sigv4.master_key", e.to_string()))?;
            }
            if sigv4.region.as_deref().is_some_and(str::is_empty) {
                return Err(invalid("api.sigv4.region", "must not be empty when set"));
            }
        }
        let oidc = &self.api.oidc;
        if oidc.issuer.is_some() {
            if !self.api.auth.accepts(AuthMode::Sigv4) {
                return Err(invalid(
                    "api.oidc",
                    "the credentials it hands out are SigV4 keys: api.auth must accept \"sigv4\"",
                ));
            }
            if oidc.audience.as_deref().is_none_or(str::is_empty) {
                return Err(invalid(
                    "api.oidc.audience",
                    "must be set with api.oidc.issuer",
                ));
            }
            if oidc.jwks_file.is_some() == oidc.jwks_url.is_some() {
                return Err(invalid(
                    "api.oidc",
                    "set exactly one of jwks_file, jwks_url",
                ));
            }
        } else if oidc.audience.is_some()
            || oidc.jwks_file.is_some()
            || oidc.jwks_url.is_some()
            || oidc.identity_pool_id.is_some()
        {
            return Err(invalid(
                "api.oidc.issuer",
                "must be set with the other api.oidc keys",
            ));
        }
        if self.api.auth.accepts(AuthMode::Jwt) {
            let jwt = &self.api.jwt;
            let keys = [
                jwt.hs256_secret.is_some(),
                jwt.rs256_public_key_pem.is_some(),
                jwt.rs256_public_key_file.is_some(),
            ];
            if keys.iter().filter(|k| **k).count() != 1 {
                return Err(invalid(
                    "api.jwt",
                    "set exactly one of hs256_secret, rs256_public_key_pem, rs256_public_key_file",
                ));
            }
            if jwt.hs256_secret.as_ref().is_some_and(|s| s.len() < 32) {
                return Err(invalid(
                    "api.jwt.hs256_secret",
                    "must be at least 32 bytes long",
                ));
            }
        }
        if self.api.max_body_bytes == 0 {
            return Err(invalid("api.max_body_bytes", "must be greater than 0"));
        }
        if !(self.store.url.starts_with("sqlite:") || self.store.url.starts_with("postgres")) {
            return Err(invalid(
                "store.url",
                "must start with sqlite:// or postgres://",
            ));
        }
        self.mqtt.validate().map_err(|e| match e {
            ingest::Error::Config(e) => e,
            ingest::Error::TlsFile { key, path, message } => {
                KeyError::new(key, format!("{}: {message}", path.display()))
            }
            other => KeyError::new("mqtt", other.to_string()),
        })?;
        self.webhook.validate()?;
        self.objects.validate()?;
        self.search.validate()?;
        if self.objects.sink == SinkKind::Firehose
            && self.mqtt.max_payload_bytes > FIREHOSE_MAX_PAYLOAD_BYTES
        {
            // Caught here, not at the first large message: Firehose refuses a whole record over
            // its limit, and a batch holding one ends in the spool's failed/ folder.
            return Err(KeyError::new(
                "mqtt.max_payload_bytes",
                format!(
                    "must be at most {FIREHOSE_MAX_PAYLOAD_BYTES} with objects.sink = \"firehose\" \
                     (Firehose refuses records over {MAX_RECORD_BYTES} bytes, and a record adds \
                     thingName, timestamp and domain to the payload)"
                ),
            )
            .into());
        }
        if self.engine.rules_poll_ms == 0 {
            return Err(invalid("engine.rules_poll_ms", "must be greater than 0"));
        }
        if self.engine.state == StateMode::Redis {
            match &self.engine.redis_url {
                None => {
                    return Err(invalid(
                        "engine.redis_url",
                        "is needed by state = \"redis\"",
                    ))
                }
                Some(url) if !(url.starts_with("redis://") || url.starts_with("rediss://")) => {
                    return Err(invalid(
                        "engine.redis_url",
                        "must start with redis:// or rediss://",
                    ))
                }
                Some(_) => {}
            }
        }
        if self.engine.state_save_secs == 0 {
            return Err(invalid("engine.state_save_secs", "must be greater than 0"));
        }
        if self.engine.state_ttl_secs == 0 {
            return Err(invalid("engine.state_ttl_secs", "must be greater than 0"));
        }
        self.validate_directory()?;
        for d in &self.domains {
            if d.id.is_empty() || d.parent.is_empty() {
                return Err(invalid("domains", "id and parent must not be empty"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
// figment's Jail API returns its large error type; that is its signature, not ours.
#[allow(clippy::unwrap_used, clippy::result_large_err)]
mod tests {
    use super::*;

    fn env_none() -> Env {
        Env::prefixed("CCSTREAM_TEST_UNUSED_PREFIX_").split("__")
    }

    #[test]
    fn defaults_without_file() {
        let c = Config::load_from(None, env_none()).unwrap();
        assert_eq!(c.api.listen.to_string(), "127.0.0.1:8088");
        assert_eq!(c.store.url, "sqlite://data/ccstream.db");
        assert_eq!(c.stack.name, "dev");
        assert!(!c.stack.production);
    }

    #[test]
    fn example_file_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("ccstream.example.toml");
        let from_file = Config::load_from(Some(&path), env_none()).unwrap();
        let defaults = Config::default();
        assert_eq!(
            serde_json::to_value(&from_file).unwrap(),
            serde_json::to_value(&defaults).unwrap(),
            "ccstream.example.toml must list exactly the defaults"
        );
    }

    #[test]
    fn env_overrides_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[api]\nlisten = \"127.0.0.1:1\"\n")?;
            jail.set_env("CCSTREAM_API__LISTEN", "127.0.0.1:9000");
            jail.set_env("CCSTREAM_STORE__URL", "postgres://x@localhost/db");
            let c = Config::load(Some(Path::new("c.toml"))).unwrap();
            assert_eq!(c.api.listen.to_string(), "127.0.0.1:9000");
            assert_eq!(c.store.url, "postgres://x@localhost/db");
            Ok(())
        });
    }

    #[test]
    fn variables_without_a_section_are_not_configuration() {
        figment::Jail::expect_with(|jail| {
            // What Kubernetes' service links set for a Service named "ccstream".
            jail.set_env("CCSTREAM_PORT", "tcp://10.0.0.1:8088");
            jail.set_env("CCSTREAM_SERVICE_HOST", "10.0.0.1");
            jail.set_env("CCSTREAM_SHUTDOWN__GRACE_SECS", "7");
            let c = Config::load(None).unwrap();
            assert_eq!(c.shutdown.grace_secs, 7);
            jail.set_env("CCSTREAM_SHUTDOWN__GRACE_SECONDS", "7");
            let err = Config::load(None).unwrap_err();
            assert!(err.to_string().contains("grace_seconds"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn unknown_key_is_named() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[api]\nlisen = \"127.0.0.1:1\"\n")?;
            let err = Config::load_from(Some(Path::new("c.toml")), env_none()).unwrap_err();
            assert!(err.to_string().contains("lisen"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn firehose_sink_refuses_payloads_it_could_not_send() {
        let mut c = Config::default();
        c.objects.sink = SinkKind::Firehose;
        c.objects.delivery_stream = Some("stream".into());
        c.mqtt.max_payload_bytes = FIREHOSE_MAX_PAYLOAD_BYTES;
        c.validate().unwrap();
        c.mqtt.max_payload_bytes = FIREHOSE_MAX_PAYLOAD_BYTES + 1;
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("mqtt.max_payload_bytes") && err.contains("firehose"),
            "{err}"
        );
        // Other sinks take what MQTT allows.
        c.objects.sink = SinkKind::S3;
        c.objects.bucket = Some("b".into());
        c.validate().unwrap();
    }

    #[test]
    fn engine_workers_default_to_the_cores_and_are_bounded() {
        let mut c = Config::default();
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        assert_eq!(c.engine.worker_count(), cores);
        for (workers, valid) in [(0, false), (1, true), (256, true), (257, false)] {
            c.engine.workers = Some(workers);
            let result = c.validate();
            assert_eq!(result.is_ok(), valid, "workers = {workers}: {result:?}");
            if let Err(e) = result {
                assert!(e.to_string().contains("engine.workers"), "{e}");
            }
        }
        c.engine.workers = Some(3);
        assert_eq!(c.engine.worker_count(), 3);
    }

    #[test]
    fn auth_none_refused_off_loopback() {
        let mut c = Config::default();
        c.api.listen = "0.0.0.0:8088".parse().unwrap();
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("api.auth"), "{err}");
    }

    #[test]
    fn jwt_needs_one_key() {
        let mut c = Config::default();
        c.api.auth = AuthModes::One(AuthMode::Jwt);
        assert!(c.validate().is_err());
        c.api.jwt.hs256_secret = Some("x".repeat(32));
        c.validate().unwrap();
        c.api.jwt.rs256_public_key_pem = Some("pem".into());
        assert!(c.validate().is_err());
    }

    #[test]
    fn sigv4_and_oidc_name_what_is_missing() {
        let key = |c: &Config| c.validate().unwrap_err().to_string();
        let mut c = Config::default();
        c.api.auth = AuthModes::Many(vec![AuthMode::Sigv4, AuthMode::Sigv4]);
        assert!(key(&c).contains("named twice"));
        c.api.auth = AuthModes::One(AuthMode::Sigv4);
        assert!(
            key(&c).contains("api.sigv4: set exactly one"),
            "{}",
            key(&c)
        );
        c.api.sigv4.master_key = Some("c2hvcnQ=".into());
        assert!(key(&c).contains("api.sigv4.master_key: the master key must be 32 bytes"));
        c.api.sigv4.master_key = Some("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into());
        c.validate().unwrap();
        c.api.oidc.issuer = Some("https://idp".into());
        assert!(key(&c).contains("api.oidc.audience:"), "{}", key(&c));
        c.api.oidc.audience = Some("app".into());
        assert!(key(&c).contains("jwks_file, jwks_url"), "{}", key(&c));
        c.api.oidc.jwks_url = Some("https://idp/jwks".into());
        c.validate().unwrap();
        c.api.auth = AuthModes::One(AuthMode::None);
        assert!(key(&c).contains("must accept \"sigv4\""), "{}", key(&c));
        c.api.oidc.issuer = None;
        assert!(key(&c).contains("api.oidc.issuer:"), "{}", key(&c));
    }

    #[test]
    fn redis_state_needs_a_redis_url_and_hides_its_password() {
        let mut c = Config::default();
        c.engine.state = StateMode::Redis;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("engine.redis_url: "), "{err}");
        c.engine.redis_url = Some("http://127.0.0.1:6379".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("engine.redis_url: "), "{err}");
        c.engine.redis_url = Some("rediss://user:secret@redis.example:6380/0".into());
        c.validate().unwrap();
        let shown = c.redacted().engine.redis_url.unwrap();
        assert!(
            !shown.contains("secret") && shown.contains("***"),
            "{shown}"
        );
        c.engine.state_ttl_secs = 0;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("engine.state_ttl_secs: "), "{err}");
    }
}
