//! The one S3 client builder, shared by the repository's S3 store and the S3 storage source:
//! rustls with ring, the SDK's standard retries (5 attempts), connect and attempt timeouts,
//! path-style addressing for custom endpoints, and request checksums "when required" for
//! S3-compatible endpoints that reject the SDK's default CRC headers.

use crate::error::{Error, Result};
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::upload_part::UploadPartError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Objects above this size are uploaded in parts of this size (S3's minimum part is 5 MiB).
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// What an S3 client needs: shared by the repository store and the S3 storage source.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<SecretString>,
    pub checksums: String,
}

/// An S3 client (rustls with ring, standard retries, timeouts), and whether SHA-256 request
/// checksums should be sent.
pub async fn client(config: &ClientConfig) -> Result<(Client, bool)> {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let region = config.region.clone().unwrap_or_else(|| "us-east-1".into());
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new(region))
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(5))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .operation_attempt_timeout(Duration::from_secs(120))
                .build(),
        );
    match (&config.access_key_id, &config.secret_access_key) {
        (Some(id), Some(secret)) => {
            loader = loader.credentials_provider(Credentials::new(id, secret.expose_secret(), None, None, "backstop-policy"));
        }
        (None, None) => {}
        _ => {
            return Err(Error::input(
                "set both access_key_id and secret_access_key, or neither (to use the AWS credential chain)",
            ))
        }
    }
    let shared = loader.load().await;
    let mut builder = aws_sdk_s3::config::Builder::from(&shared);
    if let Some(endpoint) = &config.endpoint {
        builder = builder.endpoint_url(endpoint).force_path_style(true);
    }
    let custom = config.endpoint.is_some();
    let (calculation, validation, send_sha256) = match config.checksums.as_str() {
        "when_required" => (
            RequestChecksumCalculation::WhenRequired,
            ResponseChecksumValidation::WhenRequired,
            false,
        ),
        "always" => (
            RequestChecksumCalculation::WhenSupported,
            ResponseChecksumValidation::WhenSupported,
            true,
        ),
        _ if custom => (
            RequestChecksumCalculation::WhenRequired,
            ResponseChecksumValidation::WhenRequired,
            false,
        ),
        _ => (
            RequestChecksumCalculation::WhenSupported,
            ResponseChecksumValidation::WhenSupported,
            true,
        ),
    };
    builder = builder
        .request_checksum_calculation(calculation)
        .response_checksum_validation(validation);
    Ok((Client::from_conf(builder.build()), send_sha256))
}

/// A body's MD5, as the `Content-MD5` header wants it (base64) and as S3-compatible stores
/// answer it in the ETag of a single-part write (hex).
pub struct Md5 {
    pub base64: String,
    pub hex: String,
}

impl Md5 {
    pub fn of(data: &[u8]) -> Md5 {
        use base64::Engine;
        use md5::Digest;
        let digest = md5::Md5::digest(data);
        Md5 {
            base64: base64::engine::general_purpose::STANDARD.encode(digest),
            hex: hex::encode(digest),
        }
    }

    /// Whether the store's answer confirms the bytes sent. Every store checks `Content-MD5`
    /// and refuses a body that fails it (`BadDigest`); the ETag is compared as well, where it
    /// is an MD5 (S3, MinIO, R2, B2 and moto answer one for a single-part write), so that a
    /// store that ignored the header is caught too. Another ETag (SSE-KMS) is not evidence
    /// either way.
    pub fn confirmed_by(&self, etag: Option<&str>) -> bool {
        let etag = etag.unwrap_or("").trim_matches('"');
        let is_md5 = etag.len() == 32 && etag.chars().all(|c| c.is_ascii_hexdigit());
        !is_md5 || etag.eq_ignore_ascii_case(&self.hex)
    }
}

/// Whether a write was refused because its body failed `Content-MD5` (damaged on its way).
pub fn is_bad_digest<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    matches!(e.code(), Some("BadDigest") | Some("InvalidDigest"))
}

/// How many times one write whose bytes arrived damaged is sent in all.
pub const WRITE_ATTEMPTS: u32 = 3;

/// An open multipart upload, the one part loop that the repository's S3 store and the S3
/// storage source share. Parts go up one at a time from a stream, so at most one part is in
/// memory. Dropped before [`Multipart::done`] or [`Multipart::abort`] (a failed or cancelled
/// run), it aborts itself in the background, so no stray parts are left behind.
pub struct Multipart {
    client: Client,
    bucket: String,
    key: String,
    upload_id: Option<String>,
    sha256: bool,
    parts: Vec<CompletedPart>,
}

type PartError = SdkError<UploadPartError, HttpResponse>;

impl Multipart {
    /// Takes charge of the upload `upload_id` of `bucket/key`; `sha256` sends part checksums.
    pub fn new(client: &Client, bucket: &str, key: &str, upload_id: &str, sha256: bool) -> Self {
        Multipart {
            client: client.clone(),
            bucket: bucket.to_string(),
            key: key.to_string(),
            upload_id: Some(upload_id.to_string()),
            sha256,
            parts: Vec::new(),
        }
    }

    pub fn upload_id(&self) -> &str {
        self.upload_id.as_deref().unwrap_or_default()
    }

    /// Uploads `first` (bytes already read) and then the rest of `body`, in parts of
    /// `part_size`. `on_error` turns a failed part into the caller's error.
    pub async fn send_parts<R: AsyncRead + Unpin>(
        &mut self,
        first: Vec<u8>,
        body: &mut R,
        part_size: usize,
        on_error: impl Fn(PartError) -> Error,
    ) -> Result<()> {
        let mut buf = first;
        loop {
            if buf.len() < part_size {
                (&mut *body)
                    .take((part_size - buf.len()) as u64)
                    .read_to_end(&mut buf)
                    .await
                    .map_err(|e| {
                        Error::failed(format!(
                            "reading the data for {}/{}: {e}",
                            self.bucket, self.key
                        ))
                    })?;
            }
            if buf.is_empty() {
                return Ok(());
            }
            let rest = buf.split_off(buf.len().min(part_size));
            let number = self.parts.len() as i32 + 1;
            let out = self.send_part(number, buf, &on_error).await?;
            self.parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .set_checksum_sha256(out.checksum_sha256().map(str::to_string))
                    .build(),
            );
            buf = rest;
        }
    }

    /// Sends one part with its `Content-MD5`; a part whose bytes arrived damaged (refused
    /// with `BadDigest`, or answered with another MD5) is sent again, up to
    /// [`WRITE_ATTEMPTS`] times.
    async fn send_part(
        &self,
        number: i32,
        buf: Vec<u8>,
        on_error: &impl Fn(PartError) -> Error,
    ) -> Result<aws_sdk_s3::operation::upload_part::UploadPartOutput> {
        let md5 = Md5::of(&buf);
        let body = bytes::Bytes::from(buf);
        let mut attempt = 1;
        loop {
            let mut req = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(&self.key)
                .upload_id(self.upload_id())
                .part_number(number)
                .content_md5(&md5.base64)
                .body(ByteStream::from(body.clone()));
            if self.sha256 {
                req = req.checksum_algorithm(ChecksumAlgorithm::Sha256);
            }
            let damaged = match req.send().await {
                Ok(out) if md5.confirmed_by(out.e_tag()) => return Ok(out),
                Ok(out) => format!(
                    "the store answered ETag {} for a part whose MD5 is {}",
                    out.e_tag().unwrap_or("none"),
                    md5.hex
                ),
                Err(e) if is_bad_digest(&e) => {
                    "the store found its body damaged (BadDigest)".into()
                }
                Err(e) => return Err(on_error(e)),
            };
            if attempt >= WRITE_ATTEMPTS {
                return Err(Error::failed(format!(
                    "s3: upload part {number} of {}/{}: {damaged}, {attempt} times: the bytes are damaged on their way to the store",
                    self.bucket, self.key
                )));
            }
            tracing::warn!(
                "s3: upload part {number} of {}/{}: {damaged}; sending it again",
                self.bucket,
                self.key
            );
            attempt += 1;
        }
    }

    /// The parts sent so far, for CompleteMultipartUpload.
    pub fn completed(&self) -> CompletedMultipartUpload {
        CompletedMultipartUpload::builder()
            .set_parts(Some(self.parts.clone()))
            .build()
    }

    /// The upload was completed: nothing left to abort.
    pub fn done(mut self) {
        self.upload_id = None;
    }

    /// Aborts the upload now (its parts are deleted).
    pub async fn abort(mut self) {
        if let Some(id) = self.upload_id.take() {
            let _ = self.abort_request(id).send().await;
        }
    }

    fn abort_request(
        &self,
        id: String,
    ) -> aws_sdk_s3::operation::abort_multipart_upload::builders::AbortMultipartUploadFluentBuilder
    {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(id)
    }
}

impl Drop for Multipart {
    fn drop(&mut self) {
        let Some(id) = self.upload_id.take() else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let request = self.abort_request(id);
        handle.spawn(async move {
            let _ = request.send().await;
        });
    }
}
