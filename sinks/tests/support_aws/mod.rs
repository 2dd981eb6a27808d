//! Real servers for the S3 and Firehose writer tests: SeaweedFS (`weed server -s3`) and moto in
//! server mode ([`testkit::moto`]); plain SDK clients pointed at them; a scripted Firehose
//! stand-in ([`firehose_standin`]).
//!
//! A missing `weed` or moto makes the test fail with the install line, never skip.
#![allow(dead_code)]

pub mod firehose_standin;

pub use testkit::free_port;
pub use testkit::moto::{Moto, ACCESS_KEY, REGION, SECRET_KEY};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

pub fn credentials() -> Option<(String, String)> {
    Some((ACCESS_KEY.to_owned(), SECRET_KEY.to_owned()))
}

/// Plain SDK clients pointed at moto.
pub trait MotoClients {
    fn s3(&self) -> aws_sdk_s3::Client;
    fn firehose(&self) -> aws_sdk_firehose::Client;
}

impl MotoClients for Moto {
    fn s3(&self) -> aws_sdk_s3::Client {
        s3_client(&self.endpoint())
    }

    fn firehose(&self) -> aws_sdk_firehose::Client {
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
