//! Real servers for the S3 and Firehose writer tests: SeaweedFS (`weed server -s3`) and moto in
//! server mode, each started on free ports of 127.0.0.1 and killed by pid when its guard drops;
//! plain SDK clients pointed at them; a scripted Firehose stand-in ([`firehose_standin`]).
//!
//! A missing `weed` or moto makes the test fail with the install line, never skip.
#![allow(dead_code)]

pub mod firehose_standin;

pub use testkit::free_port;

use std::net::{SocketAddr, TcpStream};
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

/// moto in server mode (all mocked AWS services on one port); killed when dropped.
pub struct Moto {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Moto {
    pub fn start() -> Moto {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
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
