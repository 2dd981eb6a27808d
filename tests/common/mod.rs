//! Test harness for integration tests that drive the real `ccstream` binary.
//!
//! - [`Ccstream`]: starts the built binary with a TOML config in its own temp dir, on a free
//!   port, waits for `/healthz`, and stops it (by pid) when dropped. Its stdout and stderr go to
//!   files in that dir and are printed when a test fails.
//! - [`PgDb`]: a throw-away PostgreSQL database, made and dropped with the `psql` CLI.
//! - [`jwt`]: HS256 and RS256 tokens (RS256 keys made with the `openssl` CLI).
//! - [`receiver`]: a local webhook receiver that records requests and can answer 500.
//!
//! Mosquitto, SeaweedFS and the OpenSearch stand-in are shared with the other crates' tests:
//! `testkit::mosquitto`, `testkit::weed`, `testkit::search_standin`; so is [`free_port`].
//!
//! Not every test file uses every helper.
#![allow(dead_code, clippy::unwrap_used)]

// Here for tests/rule_engine.rs; the other suites that share this module do not use it.
#[allow(unused_imports)]
pub use testkit::receiver;

use std::fs::{self, File, OpenOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tempfile::TempDir;
pub use testkit::free_port;

/// The placeholder a test config uses for the listen address the harness picks.
pub const LISTEN: &str = "@LISTEN@";

/// How long the binary gets to answer `/healthz` after it is spawned.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the binary gets to exit after SIGTERM (it must shut down gracefully).
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A name unlikely to collide across test processes and runs.
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:x}{:x}{n}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The value of a series in Prometheus text (`name` or `name{label="v",...}`), summed over the
/// exported series of that name whose labels include the given ones (so
/// `x_total{result="ok"}` counts `x_total{result="ok",destination="..."}` too); 0 when none
/// was ever touched.
pub fn metric_value(text: &str, series: &str) -> f64 {
    let (name, want) = split_series(series);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (exported, value) = l.rsplit_once(' ')?;
            let (n, labels) = split_series(exported);
            (n == name && want.iter().all(|w| labels.contains(w)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// `name{a="1",b="2"}` → (`name`, [`a="1"`, `b="2"`]). Label values here hold no `",`.
fn split_series(series: &str) -> (&str, Vec<&str>) {
    match series.split_once('{') {
        Some((name, rest)) => {
            let rest = rest.strip_suffix('}').unwrap_or(rest);
            let labels = rest
                .split("\",")
                .map(|l| l.trim_end_matches('"'))
                .filter(|l| !l.is_empty())
                .collect();
            (name, labels)
        }
        None => (series, Vec::new()),
    }
}

/// The binary under test, as cargo built it for this integration test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_ccstream")
}

/// A `Command` for the binary with a clean `CCSTREAM_*` environment: variables of the
/// developer's shell (or the test's own `TEST_POSTGRES_URL`) must not reach it.
fn command(dir: &Path, config: &Path, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(binary());
    cmd.arg("--config").arg(config).current_dir(dir);
    for (key, _) in std::env::vars() {
        if key.starts_with("CCSTREAM_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// What a finished run of the binary left: exit status and output.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Exited {
    pub fn output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs the binary with `config_toml` (with [`LISTEN`] replaced by a free loopback address
/// unless `listen` is given) and expects it to exit on its own within `timeout`: for configs
/// that must be refused. Kills it and panics when it keeps running.
pub fn run_to_exit(
    config_toml: &str,
    listen: Option<&str>,
    env: &[(&str, &str)],
    timeout: Duration,
) -> Exited {
    let dir = TempDir::new().unwrap();
    let listen = listen
        .map(str::to_owned)
        .unwrap_or_else(|| format!("127.0.0.1:{}", free_port()));
    let config = dir.path().join("ccstream.toml");
    fs::write(&config, config_toml.replace(LISTEN, &listen)).unwrap();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut child = command(dir.path(), &config, &env)
        .stdout(File::create(dir.path().join("stdout.log")).unwrap())
        .stderr(File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .expect("spawn ccstream");
    let status = testkit::wait_or_kill(&mut child, timeout).unwrap_or_else(|| {
        panic!(
            "ccstream was expected to exit but was still running after {timeout:?}\n\
             --- stdout ---\n{}\n--- stderr ---\n{}",
            read_lossy(&dir.path().join("stdout.log")),
            read_lossy(&dir.path().join("stderr.log"))
        )
    });
    Exited {
        status,
        stdout: read_lossy(&dir.path().join("stdout.log")),
        stderr: read_lossy(&dir.path().join("stderr.log")),
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// A running `ccstream` binary in its own temp dir. Dropping it kills the process.
pub struct Ccstream {
    dir: TempDir,
    config: PathBuf,
    env: Vec<(String, String)>,
    addr: SocketAddr,
    child: Option<Child>,
    client: reqwest::Client,
}

impl Ccstream {
    /// Starts the binary with `config_toml`, whose `[api] listen` must be [`LISTEN`]: the
    /// harness puts a free loopback address there.
    pub async fn start(config_toml: &str) -> Ccstream {
        assert!(
            config_toml.contains(LISTEN),
            "test config must set `listen = \"{LISTEN}\"` under [api]"
        );
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = config_toml.replace(LISTEN, &addr.to_string());
        Self::start_with(&config, &[], addr).await
    }

    /// Starts the binary with `config_toml` as given, extra environment variables, and the
    /// address it is expected to answer on.
    pub async fn start_with(config_toml: &str, env: &[(&str, &str)], addr: SocketAddr) -> Ccstream {
        let dir = TempDir::new().unwrap();
        let config = dir.path().join("ccstream.toml");
        fs::write(&config, config_toml).unwrap();
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // Tests run in parallel: unless a test chooses its broker, each instance gets its own
        // embedded broker on a free port (kept across restarts).
        let chooses_mqtt = config_toml.contains("[mqtt]")
            || env.iter().any(|(k, _)| k.starts_with("CCSTREAM_MQTT__"));
        if !chooses_mqtt {
            let mqtt = format!("127.0.0.1:{}", free_port());
            env.push(("CCSTREAM_MQTT__EMBEDDED_LISTEN".into(), mqtt.clone()));
            env.push(("CCSTREAM_MQTT__URL".into(), format!("mqtt://{mqtt}")));
        }
        // A test that syncs on a sentinel observation of another thing relies on arrival order
        // across things, which only one worker keeps (several keep it per thing); the tests of
        // several workers (in tests/rule_engine.rs and tests/resolver.rs) set `engine.workers`.
        let chooses_workers = config_toml
            .lines()
            .any(|line| line.trim_start().starts_with("workers ="))
            || env.iter().any(|(k, _)| k == "CCSTREAM_ENGINE__WORKERS");
        if !chooses_workers {
            env.push(("CCSTREAM_ENGINE__WORKERS".into(), "1".into()));
        }
        let mut svc = Ccstream {
            dir,
            config,
            env,
            addr,
            child: None,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap(),
        };
        svc.spawn().await;
        svc
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Runs the binary once more with this instance's config and environment and `args` (a
    /// subcommand such as `healthcheck`), and waits for it to exit.
    pub fn run_command(&self, args: &[&str]) -> Exited {
        let output = command(self.dir.path(), &self.config, &self.env)
            .args(args)
            .output()
            .expect("run ccstream");
        Exited {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The temp dir the binary runs in (its working directory).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The embedded broker's address the harness chose (`CCSTREAM_MQTT__EMBEDDED_LISTEN`), when
    /// the test did not choose its broker.
    pub fn embedded_mqtt(&self) -> Option<SocketAddr> {
        self.env
            .iter()
            .find(|(k, _)| k == "CCSTREAM_MQTT__EMBEDDED_LISTEN")
            .map(|(_, v)| v.parse().unwrap())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the binary printed so far (all runs, stdout then stderr).
    pub fn logs(&self) -> String {
        format!(
            "--- ccstream stdout ({}) ---\n{}\n--- ccstream stderr ---\n{}",
            self.dir.path().display(),
            read_lossy(&self.dir.path().join("stdout.log")),
            read_lossy(&self.dir.path().join("stderr.log"))
        )
    }

    async fn spawn(&mut self) {
        let append = |name: &str| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join(name))
                .unwrap()
        };
        let child = command(self.dir.path(), &self.config, &self.env)
            .stdout(append("stdout.log"))
            .stderr(append("stderr.log"))
            .spawn()
            .expect("spawn ccstream");
        self.child = Some(child);
        self.wait_healthy().await;
    }

    async fn wait_healthy(&mut self) {
        let url = format!("{}/healthz", self.base_url());
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().unwrap() {
                    self.child = None;
                    panic!(
                        "ccstream exited during start-up with {status}\n{}",
                        self.logs()
                    );
                }
            }
            // While it loads the store and the directory, /healthz already answers 200 but says
            // "starting" (src/api/starting.rs); a test needs the service built.
            let ok = match self
                .client
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                Ok(r) if r.status() == 200 => {
                    !r.text().await.unwrap_or_default().contains("starting")
                }
                _ => false,
            };
            if ok {
                return;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "ccstream did not answer 200 on {url} within {START_TIMEOUT:?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and waits for the process to exit; panics (after SIGKILL) when it does not
    /// exit within the grace period. Returns the exit status.
    pub async fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("run kill -TERM");
        assert!(sent.success(), "kill -TERM {} failed", child.id());
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "ccstream did not exit within {STOP_TIMEOUT:?} of SIGTERM\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stops the binary (SIGTERM) and starts it again with the same dir, config and address.
    pub async fn restart(&mut self) {
        let status = self.stop().await;
        if let Some(status) = status {
            assert!(
                status.success(),
                "ccstream exited with {status} after SIGTERM\n{}",
                self.logs()
            );
        }
        self.spawn().await;
    }

    /// SIGKILL, then the binary again in the same dir with the same config: a crash and the
    /// recovery from what it left on disk.
    pub async fn crash_and_restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// One series of `/metrics` (see [`metric_value`]).
    pub async fn metric(&self, series: &str) -> f64 {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "/metrics: {body}");
        metric_value(&body, series)
    }

    /// `POST /2015-03-31/functions/{function}/invocations` with `payload` as the body.
    pub async fn invoke(&self, function: &str, payload: Value, bearer: Option<&str>) -> Response {
        let body = serde_json::to_vec(&payload).unwrap();
        self.invoke_raw(function, body, bearer, &[]).await
    }

    /// The invoke call with a raw body and extra headers.
    pub async fn invoke_raw(
        &self,
        function: &str,
        body: Vec<u8>,
        bearer: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Response {
        match self.try_invoke_raw(function, body, bearer, headers).await {
            Ok(resp) => resp,
            Err(e) => panic!("invoke {function}: request failed: {e:?}\n{}", self.logs()),
        }
    }

    /// [`Ccstream::invoke_raw`] that returns transport errors instead of panicking.
    pub async fn try_invoke_raw(
        &self,
        function: &str,
        body: Vec<u8>,
        bearer: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Response, reqwest::Error> {
        let url = format!(
            "{}/2015-03-31/functions/{function}/invocations",
            self.base_url()
        );
        let mut req = self.client.post(url).body(body);
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await?;
        Ok(Response::read(resp).await)
    }

    /// `GET path`, returning status and body text.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = self
            .client
            .get(format!("{}{path}", self.base_url()))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }
}

impl Drop for Ccstream {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// An HTTP response from the invoke endpoint.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    /// The body parsed as JSON; `Value::String(raw)` when it is not JSON.
    pub body: Value,
    pub raw: String,
}

impl Response {
    async fn read(resp: reqwest::Response) -> Response {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let raw = resp.text().await.unwrap();
        let body = serde_json::from_str(&raw).unwrap_or_else(|_| Value::String(raw.clone()));
        Response {
            status,
            headers,
            body,
            raw,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a successful invocation (200, no `X-Amz-Function-Error`) and returns the result.
    #[track_caller]
    pub fn ok(&self) -> &Value {
        assert_eq!(self.status, 200, "expected 200, got {self:?}");
        assert!(
            self.header("x-amz-function-error").is_none(),
            "expected success, got a function error: {}",
            self.raw
        );
        &self.body
    }

    /// Asserts a function error (200, `X-Amz-Function-Error: Unhandled`, body
    /// `{"errorMessage": "<JSON string>"}`) and returns the parsed error object.
    #[track_caller]
    pub fn function_error(&self) -> Value {
        assert_eq!(self.status, 200, "function errors come with 200: {self:?}");
        assert_eq!(
            self.header("x-amz-function-error"),
            Some("Unhandled"),
            "expected X-Amz-Function-Error: Unhandled: {self:?}"
        );
        let msg = self
            .body
            .get("errorMessage")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("errorMessage must be a JSON string: {}", self.raw));
        let err: Value = serde_json::from_str(msg)
            .unwrap_or_else(|e| panic!("errorMessage does not parse as JSON ({e}): {msg}"));
        assert!(
            err.get("message")
                .and_then(Value::as_str)
                .is_some_and(|m| !m.is_empty()),
            "error needs a non-empty message: {err}"
        );
        err
    }

    /// Asserts a function error with this `messageKey` and `property` (`None`: no property).
    #[track_caller]
    pub fn expect_error(&self, key: &str, property: Option<&str>) -> Value {
        let err = self.function_error();
        assert_eq!(
            err.get("messageKey").and_then(Value::as_str),
            Some(key),
            "messageKey in {err}"
        );
        if let Some(property) = property {
            assert_eq!(
                err.get("property").and_then(Value::as_str),
                Some(property),
                "property in {err}"
            );
        }
        err
    }

    /// Asserts an AWS-style protocol error: this status, `x-amzn-ErrorType` naming `error_type`
    /// and a body `{"Type": "User", "message": "..."}`.
    #[track_caller]
    pub fn expect_protocol_error(&self, status: u16, error_type: &str) {
        assert_eq!(self.status, status, "status of {self:?}");
        let header = self.header("x-amzn-errortype").unwrap_or_default();
        // AWS may append ":<url>" to the type; the SDKs cut it off.
        assert_eq!(
            header.split(':').next(),
            Some(error_type),
            "x-amzn-ErrorType of {self:?}"
        );
        assert_eq!(
            self.body.get("Type").and_then(Value::as_str),
            Some("User"),
            "body Type of {self:?}"
        );
        assert!(
            self.body
                .get("message")
                .and_then(Value::as_str)
                .is_some_and(|m| !m.is_empty()),
            "body message of {self:?}"
        );
    }
}

/// A PostgreSQL database made for one test and dropped with it.
pub struct PgDb {
    admin_url: String,
    name: String,
    url: String,
}

impl PgDb {
    /// Server from `TEST_POSTGRES_URL` (default
    /// `postgres://postgres@127.0.0.1:5432/postgres`). Panics when it cannot connect: the
    /// PostgreSQL tests are never skipped (`scripts/setup-test-deps.sh` starts the server).
    pub fn create() -> PgDb {
        let admin_url = std::env::var("TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let name = format!("ccstream_it_{}", unique_suffix());
        psql(&admin_url, &format!("CREATE DATABASE {name}")).unwrap_or_else(|e| {
            panic!(
                "cannot create a test database on {admin_url}: {e}\n\
                 Run scripts/setup-test-deps.sh (it starts PostgreSQL) or set \
                 TEST_POSTGRES_URL."
            )
        });
        let url = with_database(&admin_url, &name);
        PgDb {
            admin_url,
            name,
            url,
        }
    }

    /// URL of the test database, for `store.url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs SQL in the test database and returns psql's unaligned output.
    pub fn query(&self, sql: &str) -> String {
        psql(&self.url, sql).unwrap()
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = psql(&self.admin_url, &sql) {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args(["-w", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .arg("-d")
        .arg(url)
        .arg("-c")
        .arg(sql)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "psql exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `postgres://user@host:port/db?x` with the database replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{db}", &base[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Runs an SDK test script, `program script args...` in `dir`, off the runtime (the SDKs' own
/// timeouts bound it); panics with its output and the service's logs unless it exits 0 having
/// printed `ok`.
pub async fn sdk_script(
    svc: &Ccstream,
    (program, dir, script): (&'static str, &'static str, &'static str),
    args: &[&str],
    ok: &str,
) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let shown = args.first().cloned().unwrap_or_default();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(program)
            .arg(script)
            .args(&args)
            .current_dir(dir)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .output()
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("run {program} (scripts/setup-test-deps.sh installs it): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains(ok),
        "{script} {shown}:\n{text}\n{}",
        svc.logs()
    );
}

/// Runs tests/sdk_tenants.py (boto3) with `args`.
pub async fn sdk_tenants(svc: &Ccstream, args: &[&str]) {
    let tests = concat!(env!("CARGO_MANIFEST_DIR"), "/tests");
    sdk_script(
        svc,
        ("python3", tests, "sdk_tenants.py"),
        args,
        "sdk_tenants: OK",
    )
    .await;
}

/// JSON Web Tokens for the `api.auth = "jwt"` tests.
pub mod jwt {
    use std::path::Path;
    use std::process::Command;

    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use serde_json::{json, Value};

    use super::now_secs;

    /// Claims with the default claim names, valid for an hour.
    pub fn claims(user: &str, role: &str, domain: &str) -> Value {
        json!({"sub": user, "role": role, "domain": domain, "exp": now_secs() + 3600})
    }

    pub fn hs256(claims: &Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    pub fn rs256(claims: &Value, key: &RsaKey) -> String {
        encode(
            &Header::new(Algorithm::RS256),
            claims,
            &EncodingKey::from_rsa_pem(key.private_pem.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    /// RS256 with a key id in the header, as identity providers sign.
    pub fn rs256_kid(claims: &Value, key: &RsaKey, kid: &str) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_owned());
        encode(
            &header,
            claims,
            &EncodingKey::from_rsa_pem(key.private_pem.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    /// An RSA key pair in PEM, made with the `openssl` CLI.
    pub struct RsaKey {
        pub private_pem: String,
        pub public_pem: String,
        /// The modulus, big-endian bytes (the exponent is openssl's default, 65537).
        pub modulus: Vec<u8>,
    }

    impl RsaKey {
        pub fn generate(dir: &Path) -> RsaKey {
            let name = super::unique_suffix();
            let private = dir.join(format!("jwt-{name}.key"));
            let public = dir.join(format!("jwt-{name}.pub"));
            let run = |args: &[&str]| {
                let out = Command::new("openssl").args(args).output().unwrap();
                assert!(
                    out.status.success(),
                    "openssl {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            let (private_s, public_s) = (private.to_str().unwrap(), public.to_str().unwrap());
            run(&[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                private_s,
            ]);
            run(&["pkey", "-in", private_s, "-pubout", "-out", public_s]);
            let out = Command::new("openssl")
                .args(["rsa", "-in", private_s, "-noout", "-modulus"])
                .output()
                .unwrap();
            let text = String::from_utf8(out.stdout).unwrap();
            let hex = text.trim().strip_prefix("Modulus=").unwrap();
            let modulus = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            RsaKey {
                private_pem: std::fs::read_to_string(&private).unwrap(),
                public_pem: std::fs::read_to_string(&public).unwrap(),
                modulus,
            }
        }

        /// This key as a JSON Web Key Set of one key named `kid`.
        pub fn jwks(&self, kid: &str) -> Value {
            use base64::Engine as _;
            let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.modulus);
            json!({"keys": [{"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                             "n": n, "e": "AQAB"}]})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_is_replaced_in_urls() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h:1/db?sslmode=disable", "x"),
            "postgres://u:p@h:1/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    }
}
