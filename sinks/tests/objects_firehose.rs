//! The Firehose writer. No real Firehose can run here, so two substitutes:
//!
//! - **moto** in server mode (PyPI `moto[server]`): a delivery stream with an ExtendedS3
//!   destination to a moto bucket; each PutRecordBatch becomes one object there, so the tests
//!   read back what Firehose would deliver (newlines, splitting into calls, unknown stream).
//!   Fails (does not skip) when moto is missing.
//! - a **stand-in** ([`support_aws::firehose_standin`]) speaking PutRecordBatch's JSON protocol,
//!   because moto accepts every record and cannot be told to reject some: partial failures
//!   (`FailedPutCount`, per-record `ErrorCode`), whole-call errors and call contents in order.

mod support_aws;

use std::time::Duration;

use aws_sdk_firehose::types::{DeliveryStreamType, ExtendedS3DestinationConfiguration};
use bytes::Bytes;
use metrics_util::debugging::DebuggingRecorder;
use sinks::objects::writer::firehose::{FirehoseSettings, FirehoseWriter, MAX_RECORD_BYTES};
use sinks::objects::writer::{Batch, WriteError, Writer};
use support_aws::firehose_standin::{Answer, FirehoseStandIn};
use support_aws::{
    counter, credentials, free_port, get_object, list_keys, Moto, MotoClients, REGION,
};

const STREAM: &str = "observations";

fn settings(endpoint: String) -> FirehoseSettings {
    FirehoseSettings {
        region: Some(REGION.to_owned()),
        endpoint: Some(endpoint),
        credentials: credentials(),
        retry_backoff: Duration::from_millis(10),
        ..FirehoseSettings::new(STREAM)
    }
}

fn batch(records: Vec<Bytes>) -> Batch {
    Batch {
        key: "raw/2024/05/01/13/stack-firehose-1-2024-05-01-13-04-05-abc".into(),
        body: records.concat().into(),
        records,
    }
}

fn numbered(n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(format!(r#"{{"thingName":"t{i}","n":{i}}}"#)))
        .collect()
}

/// A moto bucket and a delivery stream writing to it under `prefix`.
async fn moto_stream(moto: &Moto, bucket: &str, prefix: &str) {
    moto.s3()
        .create_bucket()
        .bucket(bucket)
        .send()
        .await
        .expect("moto CreateBucket");
    moto.firehose()
        .create_delivery_stream()
        .delivery_stream_name(STREAM)
        .delivery_stream_type(DeliveryStreamType::DirectPut)
        .extended_s3_destination_configuration(
            ExtendedS3DestinationConfiguration::builder()
                .role_arn("arn:aws:iam::123456789012:role/firehose")
                .bucket_arn(format!("arn:aws:s3:::{bucket}"))
                .prefix(prefix)
                .build()
                .expect("destination"),
        )
        .send()
        .await
        .expect("moto CreateDeliveryStream");
}

/// Every object moto's Firehose wrote under `prefix`, in no particular order.
async fn delivered(moto: &Moto, bucket: &str, prefix: &str) -> Vec<Vec<u8>> {
    let s3 = moto.s3();
    let mut objects = Vec::new();
    for key in list_keys(&s3, bucket, prefix).await {
        objects.push(get_object(&s3, bucket, &key).await.0);
    }
    objects
}

#[tokio::test]
async fn records_reach_the_destination_bucket_through_moto() {
    let moto = Moto::start();
    moto_stream(&moto, "delivered", "obs/").await;

    // Newline-delimited: one call, one object, each record on its line.
    let lines = Writer::Firehose(
        FirehoseWriter::new(FirehoseSettings {
            append_newline: true,
            ..settings(moto.endpoint())
        })
        .await
        .expect("writer"),
    );
    let records = numbered(3);
    lines.store(&batch(records.clone())).await.expect("stored");
    let objects = delivered(&moto, "delivered", "obs/").await;
    let expected: String = records
        .iter()
        .map(|r| format!("{}\n", String::from_utf8_lossy(r)))
        .collect();
    assert_eq!(objects, [expected.into_bytes()]);

    // 1200 records: three calls of at most 500, three objects.
    let many = numbered(1200);
    lines.store(&batch(many.clone())).await.expect("stored");
    let objects = delivered(&moto, "delivered", "obs/").await;
    assert_eq!(objects.len(), 4);
    let mut line_counts: Vec<usize> = objects
        .iter()
        .map(|o| o.iter().filter(|&&b| b == b'\n').count())
        .collect();
    line_counts.sort_unstable();
    assert_eq!(line_counts, [3, 200, 500, 500]);
    let mut got: Vec<Vec<u8>> = objects
        .iter()
        .flat_map(|o| o.split(|&b| b == b'\n').filter(|l| !l.is_empty()))
        .map(<[u8]>::to_vec)
        .collect();
    let mut want: Vec<Vec<u8>> = records.iter().chain(&many).map(|r| r.to_vec()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test]
async fn calls_are_split_at_4_mib_through_moto() {
    let moto = Moto::start();
    moto_stream(&moto, "big", "").await;
    let writer = FirehoseWriter::new(settings(moto.endpoint()))
        .await
        .expect("writer");
    // Ten records at Firehose's 1000 KiB limit, each filled with its own byte: 4 + 4 + 2.
    let records: Vec<Bytes> = (0..10u8)
        .map(|i| Bytes::from(vec![b'a' + i; MAX_RECORD_BYTES]))
        .collect();
    writer.store(&batch(records.clone())).await.expect("stored");

    let objects = delivered(&moto, "big", "").await;
    let mut sizes: Vec<usize> = objects.iter().map(|o| o.len() / MAX_RECORD_BYTES).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [2, 4, 4]);
    let mut got: Vec<&[u8]> = objects
        .iter()
        .flat_map(|o| o.chunks(MAX_RECORD_BYTES))
        .collect();
    got.sort();
    let want: Vec<&[u8]> = records.iter().map(|r| &r[..]).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn an_unknown_delivery_stream_is_permanent() {
    let moto = Moto::start();
    let writer = FirehoseWriter::new(settings(moto.endpoint()))
        .await
        .expect("writer");
    let err = writer
        .store(&batch(numbered(2)))
        .await
        .expect_err("no stream");
    assert!(
        matches!(&err, WriteError::Permanent(m) if m.contains("ResourceNotFoundException")),
        "{err:?}"
    );
}

#[tokio::test]
async fn only_the_rejected_records_are_sent_again() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Current-thread test runtime: the store below runs on this thread.
    let _guard = metrics::set_default_local_recorder(&recorder);
    let standin = FirehoseStandIn::start(|call| {
        Answer::Records(Box::new(move |_, data: &[u8]| {
            let busy = data.starts_with(br#"{"thingName":"t1""#)
                || data.starts_with(br#"{"thingName":"t3""#);
            (call == 0 && busy).then_some("ServiceUnavailableException")
        }))
    })
    .await;
    let writer = FirehoseWriter::new(settings(standin.endpoint()))
        .await
        .expect("writer");
    let records = numbered(5);

    writer.store(&batch(records.clone())).await.expect("stored");

    let calls = standin.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[0],
        records.iter().map(|r| r.to_vec()).collect::<Vec<_>>()
    );
    assert_eq!(calls[1], [records[1].to_vec(), records[3].to_vec()]);
    assert_eq!(standin.streams(), [STREAM, STREAM]);
    assert_eq!(
        counter(
            &snapshotter,
            "ccstream_objects_firehose_failed_records_total",
            ("reason", "rejected")
        ),
        2
    );
}

#[tokio::test]
async fn records_that_keep_failing_make_the_batch_retryable() {
    let standin = FirehoseStandIn::start(|_| {
        Answer::Records(Box::new(|_, data: &[u8]| {
            (data == b"bad").then_some("InternalFailure")
        }))
    })
    .await;
    let writer = FirehoseWriter::new(FirehoseSettings {
        record_retries: 2,
        ..settings(standin.endpoint())
    })
    .await
    .expect("writer");
    let records = vec![Bytes::from("good"), Bytes::from("bad"), Bytes::from("fine")];

    let err = writer.store(&batch(records)).await.expect_err("gives up");

    assert!(
        matches!(&err, WriteError::Retryable(m) if m.contains("InternalFailure")),
        "{err:?}"
    );
    let calls = standin.calls();
    assert_eq!(calls.len(), 3, "one send and two resends");
    assert_eq!(calls[0].len(), 3);
    assert_eq!(calls[1], [b"bad".to_vec()]);
    assert_eq!(calls[2], [b"bad".to_vec()]);
}

#[tokio::test]
async fn records_go_in_order_in_calls_of_at_most_500_with_newlines() {
    let standin = FirehoseStandIn::start(|_| Answer::Records(Box::new(|_, _: &[u8]| None))).await;
    let writer = FirehoseWriter::new(FirehoseSettings {
        append_newline: true,
        ..settings(standin.endpoint())
    })
    .await
    .expect("writer");
    let records = numbered(1001);
    writer.store(&batch(records.clone())).await.expect("stored");

    let calls = standin.calls();
    assert_eq!(
        calls.iter().map(Vec::len).collect::<Vec<_>>(),
        [500, 500, 1]
    );
    let sent: Vec<Vec<u8>> = calls.into_iter().flatten().collect();
    let want: Vec<Vec<u8>> = records.iter().map(|r| [&r[..], b"\n"].concat()).collect();
    assert_eq!(sent, want);

    // An empty batch makes no call.
    writer.store(&batch(Vec::new())).await.expect("empty");
    assert_eq!(standin.calls().len(), 3);
}

#[tokio::test]
async fn an_oversized_record_is_not_sent_and_fails_the_batch_after_the_rest() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let standin = FirehoseStandIn::start(|_| Answer::Records(Box::new(|_, _: &[u8]| None))).await;
    let writer = FirehoseWriter::new(settings(standin.endpoint()))
        .await
        .expect("writer");
    let records = vec![
        Bytes::from("before"),
        Bytes::from(vec![b'x'; MAX_RECORD_BYTES + 1]),
        Bytes::from("after"),
    ];

    let err = writer.store(&batch(records)).await.expect_err("oversized");

    assert!(
        matches!(&err, WriteError::Permanent(m) if m.contains("1 record(s)")),
        "{err:?}"
    );
    assert_eq!(
        standin.calls(),
        [vec![b"before".to_vec(), b"after".to_vec()]]
    );
    assert_eq!(
        counter(
            &snapshotter,
            "ccstream_objects_firehose_failed_records_total",
            ("reason", "oversized")
        ),
        1
    );
}

// The SDK's own retries wait a jittered backoff of up to seconds; with the stand-in on the
// test's runtime and a paused clock (tokio's test-util, which the SDK's sleeps follow), those
// waits cost no real time.
#[tokio::test(start_paused = true)]
async fn whole_call_errors_are_classified() {
    for (status, kind, retryable) in [
        (503, "ServiceUnavailableException", true),
        (500, "InternalFailure", true),
        (400, "InvalidArgumentException", false),
        (400, "ResourceNotFoundException", false),
        (403, "AccessDeniedException", false),
    ] {
        let standin = FirehoseStandIn::start(move |_| Answer::CallError(status, kind)).await;
        let writer = FirehoseWriter::new(settings(standin.endpoint()))
            .await
            .expect("writer");
        let err = writer.store(&batch(numbered(1))).await.expect_err("fails");
        assert_eq!(err.is_retryable(), retryable, "{kind}: {err:?}");
        assert!(err.to_string().contains(kind), "{err}");
        let calls = standin.calls().len();
        // The SDK itself retries retryable calls a few times; never a permanent one.
        if retryable {
            assert!(calls > 1, "{kind}: {calls} calls");
        } else {
            assert_eq!(calls, 1, "{kind}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_that_is_down_is_retryable() {
    let port = free_port();
    let writer = FirehoseWriter::new(settings(format!("http://127.0.0.1:{port}")))
        .await
        .expect("writer");
    let err = writer.store(&batch(numbered(1))).await.expect_err("down");
    assert!(err.is_retryable(), "{err:?}");
}
