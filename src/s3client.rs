//! The one S3 client builder, shared by the repository's S3 store and the S3 storage source:
//! rustls with ring, the SDK's standard retries (5 attempts), connect and attempt timeouts,
//! path-style addressing for custom endpoints, and request checksums "when required" for
//! S3-compatible endpoints that reject the SDK's default CRC headers.

use crate::error::{Error, Result};
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::Client;
use std::time::Duration;

/// Objects above this size are uploaded in parts of this size (S3's minimum part is 5 MiB).
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// What an S3 client needs: shared by the repository store and the S3 storage source.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
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
            loader = loader.credentials_provider(Credentials::new(id, secret, None, None, "backstop-policy"));
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
