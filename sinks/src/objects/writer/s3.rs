//! `objects.sink = "s3"`: batches as S3 objects, one PutObject per batch.
//!
//! The object is the batch body as is, under the batch key: a retry of the same batch writes the
//! same key, so it overwrites instead of duplicating. Gzip bodies are stored the way Firehose
//! stores them: a plain `.gz` file, no `Content-Encoding` (clients that honour that header would
//! otherwise decompress on download and hand analysts a file that no longer matches its name).
//!
//! The AWS plumbing both writers share (HTTP client, timeouts, region and credentials, error
//! classification) lives here too, as `pub(super)` items, so the Firehose writer does not need a
//! module of its own for it.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::Credentials;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};

use super::{Batch, WriteError};

/// Region used when neither the settings nor the environment (`AWS_REGION`, profile, instance
/// metadata) name one. SeaweedFS and MinIO accept any region in the signature.
pub const DEFAULT_REGION: &str = "us-east-1";

/// TCP connect timeout of every AWS call.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One attempt (request and response) of an AWS call: a 5 MiB PutObject needs ~170 KB/s.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// A whole AWS call including the SDK's own retries: bounds how long `store` can take.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts per call made by the SDK itself (throttling, 5xx, connection errors) before the
/// error reaches the uploader, which then retries the batch with its own, longer backoff.
const SDK_MAX_ATTEMPTS: u32 = 3;

/// S3 error codes that get their own `code` label on `ccstream_objects_s3_errors_total`; any other
/// code is counted as `other`, so the label stays bounded whatever a server answers.
const KNOWN_S3_CODES: &[&str] = &[
    "AccessDenied",
    "AuthorizationHeaderMalformed",
    "EntityTooLarge",
    "ExpiredToken",
    "InternalError",
    "InvalidAccessKeyId",
    "InvalidBucketName",
    "NoSuchBucket",
    "PermanentRedirect",
    "RequestTimeTooSkewed",
    "RequestTimeout",
    "ServiceUnavailable",
    "SignatureDoesNotMatch",
    "SlowDown",
];

/// Service error codes worth retrying, in S3's and Firehose's vocabularies. Any 5xx and any 429
/// is retried too, whatever its code.
const RETRYABLE_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "RequestTimeout",
    "RequestTimeoutException",
    "RequestTimeTooSkewed",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    // Temporary credentials ran out: the credentials cache fetches new ones on the next call.
    "ExpiredToken",
    "ExpiredTokenException",
];

/// Where to store, from `objects.bucket`, `objects.region`, `objects.endpoint` and
/// `objects.path_style`.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// The bucket; must exist (the writer never creates it).
    pub bucket: String,
    /// The region; `None`: the standard AWS chain, then [`DEFAULT_REGION`].
    pub region: Option<String>,
    /// An endpoint URL instead of AWS's (SeaweedFS, MinIO): `http://host:port`.
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which SeaweedFS and MinIO need.
    pub path_style: bool,
    /// Static `(access key id, secret access key)`, for tests and local stores. `None` (what the
    /// binary uses): the standard AWS credentials chain (environment, profile, web identity,
    /// container and instance metadata).
    pub credentials: Option<(String, String)>,
}

/// Stores batches as S3 objects.
#[derive(Debug, Clone)]
pub struct S3Writer {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3Writer {
    /// Builds the client. Credentials are not fetched here but on the first `store`, so a
    /// missing credential shows up as a store error, not a start-up failure.
    pub async fn new(settings: S3Settings) -> Result<S3Writer, WriteError> {
        if settings.bucket.trim().is_empty() {
            return Err(WriteError::Permanent(
                "objects.bucket: required when objects.sink = \"s3\"".into(),
            ));
        }
        let sdk = sdk_config(
            settings.region,
            settings.endpoint,
            settings.credentials,
            "objects.endpoint",
        )
        .await?;
        let config = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(settings.path_style)
            .build();
        Ok(S3Writer {
            client: aws_sdk_s3::Client::from_conf(config),
            bucket: settings.bucket,
        })
    }

    /// The region requests are signed for (for the start-up log).
    pub fn region(&self) -> Option<&str> {
        self.client.config().region().map(|r| r.as_ref())
    }

    /// The bucket batches go to.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// PutObject of `batch.body` under `batch.key`.
    #[tracing::instrument(name = "s3_put", skip_all, fields(bucket = %self.bucket, key = %batch.key, bytes = batch.body.len()))]
    pub async fn store(&self, batch: &Batch) -> Result<(), WriteError> {
        let content_type = if batch.key.ends_with(".gz") {
            "application/gzip"
        } else {
            "application/json"
        };
        let result = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&batch.key)
            .content_type(content_type)
            .body(ByteStream::from(batch.body.clone()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) => {
                let failure = classify(&err);
                let label = s3_code_label(&failure.code);
                metrics::counter!("ccstream_objects_s3_errors_total", "code" => label).increment(1);
                let message = format!(
                    "S3 PutObject s3://{}/{}: {}: {}",
                    self.bucket, batch.key, failure.code, failure.detail
                );
                tracing::debug!(code = %failure.code, retryable = failure.retryable, "{message}");
                Err(failure.into_write_error(message))
            }
        }
    }
}

/// Reading back what was stored (`ccstream reindex`).
impl S3Writer {
    /// Every key under `prefix`, in the order S3 lists them.
    pub async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, WriteError> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| self.read_error("ListObjectsV2", prefix, &e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            token = page.next_continuation_token().map(str::to_owned);
            if token.is_none() {
                return Ok(keys);
            }
        }
    }

    /// The body of `key`.
    pub async fn get(&self, key: &str) -> Result<Vec<u8>, WriteError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.read_error("GetObject", key, &e))?;
        let body = out.body.collect().await.map_err(|e| {
            WriteError::Retryable(format!("S3 GetObject s3://{}/{key}: {e}", self.bucket))
        })?;
        Ok(body.into_bytes().to_vec())
    }

    fn read_error<E>(&self, call: &str, key: &str, err: &SdkError<E, HttpResponse>) -> WriteError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let failure = classify(err);
        let message = format!(
            "S3 {call} s3://{}/{key}: {}: {}",
            self.bucket, failure.code, failure.detail
        );
        failure.into_write_error(message)
    }
}

/// Declares the S3 writer's metrics (name, unit, help) to the installed recorder.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "ccstream_objects_s3_errors_total",
        metrics::Unit::Count,
        "Failed S3 PutObject calls, by S3 error code (unknown codes as `other`; `timeout`, \
         `connection`, `response` and `construction` when there was no S3 answer)"
    );
}

/// The SDK configuration both writers (and the directory resolver) start from: our HTTPS
/// client (rustls with ring, no aws-lc), timeouts, SDK retries, region and credentials.
/// `endpoint_key` names the setting in error messages.
pub async fn sdk_config(
    region: Option<String>,
    endpoint: Option<String>,
    credentials: Option<(String, String)>,
    endpoint_key: &str,
) -> Result<SdkConfig, WriteError> {
    if let Some(endpoint) = endpoint.as_deref().filter(|e| !e.trim().is_empty()) {
        match url::Url::parse(endpoint) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
            _ => {
                return Err(WriteError::Permanent(format!(
                    "{endpoint_key}: not an http(s) URL: {endpoint:?}"
                )))
            }
        }
    }
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let loader = |region: Option<Region>| {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .operation_attempt_timeout(ATTEMPT_TIMEOUT)
            .operation_timeout(OPERATION_TIMEOUT)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client.clone())
            .timeout_config(timeouts)
            .retry_config(RetryConfig::standard().with_max_attempts(SDK_MAX_ATTEMPTS));
        if let Some(region) = region {
            loader = loader.region(region);
        }
        if let Some(endpoint) = endpoint.clone().filter(|e| !e.trim().is_empty()) {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some((access_key_id, secret_access_key)) = credentials.clone() {
            loader = loader.credentials_provider(Credentials::new(
                access_key_id,
                secret_access_key,
                None,
                None,
                "ccstream-static",
            ));
        }
        loader
    };
    let configured = region.filter(|r| !r.trim().is_empty()).map(Region::new);
    // Without a configured region the loader asks the standard chain (environment, profile,
    // instance metadata) with our HTTP client; `RegionProviderChain::default_provider()` would
    // not get that client and panics without the SDK's default one. When the chain finds none,
    // load again with the default, so the credential providers (STS) see the region too.
    let sdk = loader(configured.clone()).load().await;
    if configured.is_none() && sdk.region().is_none() {
        return Ok(loader(Some(Region::from_static(DEFAULT_REGION)))
            .load()
            .await);
    }
    Ok(sdk)
}

/// An SDK error sorted into retryable or not, with a short code for metrics and logs.
pub(super) struct Classified {
    pub(super) retryable: bool,
    /// The service's error code, or `timeout` / `connection` / `response` / `construction` /
    /// `other` when the service did not answer with one.
    pub(super) code: String,
    /// The service's status and message, or the error chain when it did not answer.
    pub(super) detail: String,
}

impl Classified {
    pub(super) fn into_write_error(self, message: String) -> WriteError {
        if self.retryable {
            WriteError::Retryable(message)
        } else {
            WriteError::Permanent(message)
        }
    }
}

/// Throttling, 5xx, timeouts and connection errors are retryable; other service errors (4xx:
/// AccessDenied, NoSuchBucket, ResourceNotFoundException, ...) and requests that could not be
/// built are not.
pub(super) fn classify<E>(err: &SdkError<E, HttpResponse>) -> Classified
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let (retryable, code) = match err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().map(str::to_owned);
            let retryable = status == 429
                || status >= 500
                || code
                    .as_deref()
                    .is_some_and(|c| RETRYABLE_CODES.contains(&c));
            // The service's own words, not the SDK's debug dump of the raw response.
            let detail = format!(
                "HTTP {status}: {}",
                service.err().message().unwrap_or("(no message)")
            );
            let code = code.unwrap_or_else(|| format!("HTTP {status}"));
            return Classified {
                retryable,
                code,
                detail,
            };
        }
        SdkError::TimeoutError(_) => (true, "timeout".to_owned()),
        SdkError::DispatchFailure(failure) if failure.is_timeout() => (true, "timeout".to_owned()),
        // A request the client itself refused to send (bad endpoint, no credentials found): the
        // same request will fail the same way.
        SdkError::DispatchFailure(failure) if failure.is_user() => {
            (false, "construction".to_owned())
        }
        SdkError::DispatchFailure(_) => (true, "connection".to_owned()),
        // An answer that could not be read (cut off, not XML): the next attempt may get a
        // whole one.
        SdkError::ResponseError(_) => (true, "response".to_owned()),
        SdkError::ConstructionFailure(_) => (false, "construction".to_owned()),
        _ => (true, "other".to_owned()),
    };
    Classified {
        retryable,
        code,
        // The error chain down to the cause (`tcp connect error: Connection refused`).
        detail: DisplayErrorContext(err).to_string(),
    }
}

/// The bounded `code` label for an S3 error code.
fn s3_code_label(code: &str) -> &'static str {
    const TRANSPORT: &[&str] = &["timeout", "connection", "response", "construction"];
    KNOWN_S3_CODES
        .iter()
        .chain(TRANSPORT)
        .find(|known| **known == code)
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_codes_share_one_label() {
        assert_eq!(s3_code_label("NoSuchBucket"), "NoSuchBucket");
        assert_eq!(s3_code_label("connection"), "connection");
        assert_eq!(s3_code_label("HTTP 418"), "other");
        assert_eq!(s3_code_label("SomethingNew"), "other");
    }

    #[tokio::test]
    async fn settings_are_checked_before_any_call() {
        let missing_bucket = S3Writer::new(S3Settings::default()).await;
        assert!(
            matches!(missing_bucket, Err(WriteError::Permanent(m)) if m.contains("objects.bucket"))
        );

        let bad_endpoint = S3Writer::new(S3Settings {
            bucket: "observations".into(),
            endpoint: Some("localhost:8333".into()),
            region: Some("us-east-1".into()),
            credentials: Some(("k".into(), "s".into())),
            ..S3Settings::default()
        })
        .await;
        assert!(
            matches!(bad_endpoint, Err(WriteError::Permanent(m)) if m.contains("objects.endpoint"))
        );
    }
}
