//! The S3 store: AWS S3 and S3-compatible stores (MinIO, R2, B2, Wasabi, Supabase Storage's
//! S3 endpoint), with aws-sdk-s3.
//!
//! * Keys live under the repository URL's prefix. A custom `endpoint` means path-style
//!   addressing. Credentials come from the policy or else the standard AWS chain
//!   (environment, profile, web identity); no secret is ever printed.
//! * Create-if-absent is a conditional PUT (`If-None-Match: *`): an object is never
//!   overwritten, and two writers cannot both create one lock. Objects larger than
//!   [`PART_SIZE`] go up as multipart uploads, aborted on any failure so nothing stray is left,
//!   and completed with the same condition. An upload whose process is killed cannot abort
//!   itself: give the bucket a lifecycle rule `AbortIncompleteMultipartUpload` (e.g. 7 days).
//! * With `object_lock`, every immutable object (blobs, manifests, meta.json, run records) is
//!   written with that retention (retain-until = write time + days). A compromised backup host
//!   can then add objects, but neither delete nor overwrite what is there until it expires.
//!   Locks (`locks/`) are written without retention: they must be deletable.
//! * Checksums: `auto` sends SHA-256 checksums to AWS and only required ones to a custom
//!   endpoint (several S3-compatible stores reject the SDK's default CRC headers);
//!   `when_required` and `always` force either way.
//! * Retries: the SDK's standard strategy, 5 attempts, exponential backoff with jitter, on
//!   throttling, 5xx, timeouts and dropped connections; never on authentication or permission
//!   errors. One semaphore of `connections` permits bounds every request, uploads and
//!   downloads alike.
//! * Errors name the backend, operation, bucket and key (`s3: put object bucket/key: ...`).

use super::{Entry, Put, PutMode, Store};
use crate::error::{Error, Kind, Result};
use crate::s3client::{client, ClientConfig, Multipart};
use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{ChecksumAlgorithm, ObjectLockEnabled, ObjectLockMode};
use aws_sdk_s3::Client;
use std::sync::Arc;
use tokio::sync::Semaphore;

pub use crate::s3client::PART_SIZE;

/// How many times a GET whose body is cut off midway is made in all.
const BODY_ATTEMPTS: u32 = 5;

/// Why a GET failed: the request (final), or its body cut off midway (tried again).
enum GetFailed {
    Request(Error),
    Cut(aws_sdk_s3::primitives::ByteStreamError),
}

#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<secrecy::SecretString>,
    pub object_lock: Option<(String, u32)>,
    pub checksums: String,
    pub connections: usize,
    pub part_size: usize,
}

pub struct S3Store {
    client: Client,
    config: S3Config,
    permits: Arc<Semaphore>,
    send_sha256: bool,
}

/// One version (or delete marker) of an object, as a version listing gives it.
struct Version {
    key: String,
    version_id: Option<String>,
    size: u64,
    modified: chrono::DateTime<chrono::Utc>,
    marker: bool,
}

fn to_chrono(t: Option<&DateTime>) -> chrono::DateTime<chrono::Utc> {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
        .unwrap_or_else(chrono::Utc::now)
}

impl S3Store {
    /// Every version and delete marker of the `wanted` keys directly under `parent`.
    async fn versions(
        &self,
        parent: &str,
        wanted: &std::collections::HashSet<&str>,
    ) -> Result<Vec<Version>> {
        let _p = self.permits.acquire().await;
        let strip = if self.config.prefix.is_empty() {
            0
        } else {
            self.config.prefix.len() + 1
        };
        let prefix = self.key(&format!("{parent}/"));
        let mut out = Vec::new();
        let (mut key_marker, mut version_marker) = (None::<String>, None::<String>);
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.config.bucket)
                .prefix(&prefix)
                .set_key_marker(key_marker.clone())
                .set_version_id_marker(version_marker.clone())
                .send()
                .await
                .map_err(|e| self.error("list object versions", parent, e))?;
            let short = |k: &str| k[strip.min(k.len())..].to_string();
            for v in page.versions() {
                let Some(k) = v.key().map(short) else {
                    continue;
                };
                if wanted.contains(k.as_str()) {
                    out.push(Version {
                        key: k,
                        version_id: v.version_id().map(str::to_string),
                        size: v.size().unwrap_or(0).max(0) as u64,
                        modified: to_chrono(v.last_modified()),
                        marker: false,
                    });
                }
            }
            for m in page.delete_markers() {
                let Some(k) = m.key().map(short) else {
                    continue;
                };
                if wanted.contains(k.as_str()) {
                    out.push(Version {
                        key: k,
                        version_id: m.version_id().map(str::to_string),
                        size: 0,
                        modified: to_chrono(m.last_modified()),
                        marker: true,
                    });
                }
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            version_marker = page.next_version_id_marker().map(str::to_string);
            if key_marker.is_none() && version_marker.is_none() {
                break;
            }
        }
        Ok(out)
    }

    /// Deletes up to 1,000 versions in one request; returns what was freed and the versions
    /// the server refused because retention still holds them, with their dates.
    #[allow(clippy::type_complexity)]
    async fn delete_versions(
        &self,
        batch: &[Version],
    ) -> Result<(
        Vec<(String, u64)>,
        Vec<(String, chrono::DateTime<chrono::Utc>)>,
    )> {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        let objects = batch
            .iter()
            .map(|v| {
                ObjectIdentifier::builder()
                    .key(self.key(&v.key))
                    .set_version_id(v.version_id.clone())
                    .build()
                    .map_err(|e| Error::failed(format!("s3: delete {}: {e}", v.key)))
            })
            .collect::<Result<Vec<_>>>()?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| Error::failed(format!("s3: delete objects: {e}")))?;
        let answer = {
            let _p = self.permits.acquire().await;
            self.client
                .delete_objects()
                .bucket(&self.config.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| self.error("delete objects", "", e))?
        };
        let mut refused = Vec::new();
        let mut failed = std::collections::HashSet::new();
        for err in answer.errors() {
            let full = err.key().unwrap_or("");
            let Some(v) = batch
                .iter()
                .find(|v| self.key(&v.key) == full && v.version_id.as_deref() == err.version_id())
            else {
                continue;
            };
            failed.insert((v.key.clone(), v.version_id.clone()));
            if err.code() == Some("AccessDenied") {
                let head = self
                    .client
                    .head_object()
                    .bucket(&self.config.bucket)
                    .key(full)
                    .set_version_id(v.version_id.clone())
                    .send()
                    .await;
                if let Some(until) = head
                    .ok()
                    .and_then(|h| h.object_lock_retain_until_date().cloned())
                {
                    refused.push((v.key.clone(), to_chrono(Some(&until))));
                    continue;
                }
            }
            return Err(Error::failed(format!(
                "s3: delete {}/{full}: {}: {}",
                self.config.bucket,
                err.code().unwrap_or("error"),
                err.message().unwrap_or("")
            )));
        }
        let freed = batch
            .iter()
            .filter(|v| !failed.contains(&(v.key.clone(), v.version_id.clone())))
            .map(|v| (v.key.clone(), v.size))
            .collect();
        Ok((freed, refused))
    }
    pub async fn connect(config: S3Config) -> Result<S3Store> {
        let (client, send_sha256) = client(&ClientConfig {
            endpoint: config.endpoint.clone(),
            region: config.region.clone(),
            access_key_id: config.access_key_id.clone(),
            secret_access_key: config.secret_access_key.clone(),
            checksums: config.checksums.clone(),
        })
        .await?;
        Ok(S3Store {
            client,
            permits: Arc::new(Semaphore::new(config.connections.max(1))),
            config,
            send_sha256,
        })
    }

    fn key(&self, key: &str) -> String {
        if self.config.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.config.prefix)
        }
    }

    fn where_(&self) -> String {
        match &self.config.endpoint {
            Some(e) => format!("bucket {} at {e}", self.config.bucket),
            None => format!("bucket {}", self.config.bucket),
        }
    }

    /// Turns an SDK error into a message naming operation, bucket and key, with its kind.
    fn error<E>(&self, op: &str, key: &str, e: SdkError<E, HttpResponse>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let target = format!("{}/{}", self.config.bucket, self.key(key));
        match &e {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => Error::new(
                Kind::Unavailable,
                format!(
                    "s3: {op} {target}: cannot reach {}: {}; check the endpoint and the network",
                    self.config.endpoint.as_deref().unwrap_or("AWS S3"),
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                ),
            ),
            _ if e.code().is_none() && e.raw_response().map(|r| r.status().as_u16()) == Some(403) => Error::input(format!(
                "s3: {op} {target}: HTTP 403: the credentials were refused or lack permission on {}; check access_key_id, secret_access_key and the bucket policy",
                self.where_()
            )),
            _ => {
                let code = e.code().unwrap_or("");
                let message = e.message().unwrap_or("").to_string();
                let (kind, hint) = match code {
                    "NoSuchBucket" => (Kind::Input, format!("{} does not exist; create it or fix repository.url", self.where_())),
                    "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "InvalidToken" | "ExpiredToken" => (
                        Kind::Input,
                        format!("the credentials were refused by {}; check access_key_id and secret_access_key", self.where_()),
                    ),
                    "AuthorizationHeaderMalformed" | "PermanentRedirect" | "IllegalLocationConstraintException" => (
                        Kind::Input,
                        format!("{} is in another region; set repository.region to the bucket's", self.where_()),
                    ),
                    "AccessDenied" | "Forbidden" => (
                        Kind::Input,
                        format!("access denied by {}; the credentials need s3:GetObject, s3:PutObject, s3:ListBucket and s3:DeleteObject on it", self.where_()),
                    ),
                    // Server errors that outlived the SDK's retries, and throttling: the
                    // store could not answer, which says nothing of what it holds.
                    "InternalError" | "ServiceUnavailable" | "SlowDown" | "RequestTimeout" => {
                        (Kind::Unavailable, String::new())
                    }
                    _ if e
                        .raw_response()
                        .is_some_and(|r| r.status().as_u16() >= 500) =>
                    {
                        (Kind::Unavailable, String::new())
                    }
                    _ => (Kind::Failed, String::new()),
                };
                let detail = if code.is_empty() {
                    aws_sdk_s3::error::DisplayErrorContext(&e).to_string()
                } else {
                    format!("{code}: {message}")
                };
                let text = if hint.is_empty() {
                    format!("s3: {op} {target}: {detail}")
                } else {
                    format!("s3: {op} {target}: {detail}; {hint}")
                };
                Error::new(kind, text)
            }
        }
    }

    fn retention(&self, mode: PutMode) -> Option<(ObjectLockMode, DateTime)> {
        if mode != PutMode::Create {
            return None;
        }
        let (m, days) = self.config.object_lock.as_ref()?;
        let lock_mode = if m == "compliance" {
            ObjectLockMode::Compliance
        } else {
            ObjectLockMode::Governance
        };
        let until = chrono::Utc::now() + chrono::Duration::days(i64::from(*days));
        Some((lock_mode, DateTime::from_secs(until.timestamp())))
    }

    async fn put_multipart(&self, key: &str, data: Vec<u8>, mode: PutMode) -> Result<Put> {
        let full = self.key(key);
        let mut create = self
            .client
            .create_multipart_upload()
            .bucket(&self.config.bucket)
            .key(&full);
        let retention = self.retention(mode);
        let sha256 = self.send_sha256 || retention.is_some();
        if sha256 {
            create = create.checksum_algorithm(ChecksumAlgorithm::Sha256);
        }
        if let Some((m, until)) = retention {
            create = create
                .object_lock_mode(m)
                .object_lock_retain_until_date(until);
        }
        let upload = create
            .send()
            .await
            .map_err(|e| self.error("create multipart upload", key, e))?;
        let upload_id = upload
            .upload_id()
            .ok_or_else(|| {
                Error::failed(format!(
                    "s3: create multipart upload {key}: no upload id returned"
                ))
            })?
            .to_string();
        // Aborts the upload if this future is dropped before it completes (a cancelled or timed
        // out run); failures below abort it explicitly.
        let mut upload =
            Multipart::new(&self.client, &self.config.bucket, &full, &upload_id, sha256);
        let result = async {
            let part_size = self.config.part_size;
            let on_error = |e| self.error("upload part", key, e);
            upload
                .send_parts(Vec::new(), &mut data.as_slice(), part_size, on_error)
                .await?;
            let mut complete = self
                .client
                .complete_multipart_upload()
                .bucket(&self.config.bucket)
                .key(&full)
                .upload_id(&upload_id)
                .multipart_upload(upload.completed());
            if mode != PutMode::Replace {
                complete = complete.if_none_match("*");
            }
            match complete.send().await {
                Ok(_) => {}
                Err(e) if is_precondition_failed(&e) => return Ok(Put::Exists),
                Err(e) => return Err(self.error("complete multipart upload", key, e)),
            }
            // Retention is also requested at creation, but not every S3-compatible store
            // carries it over to the completed object: set it explicitly.
            if let Some((m, until)) = self.retention(mode) {
                let retention = aws_sdk_s3::types::ObjectLockRetention::builder()
                    .mode(m.as_str().into())
                    .retain_until_date(until)
                    .build();
                self.client
                    .put_object_retention()
                    .bucket(&self.config.bucket)
                    .key(&full)
                    .retention(retention)
                    .checksum_algorithm(ChecksumAlgorithm::Sha256)
                    .send()
                    .await
                    .map_err(|e| self.error("put object retention", key, e))?;
            }
            Ok(Put::Created)
        }
        .await;
        // A completion refused because the object exists leaves the upload open: abort it too.
        match result {
            Ok(Put::Created) => upload.done(),
            _ => upload.abort().await,
        }
        result
    }
}

fn is_precondition_failed<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    matches!(
        e.code(),
        Some("PreconditionFailed") | Some("ConditionalRequestConflict")
    )
}

/// Whether a body read failed its checksum validation (with `checksums = "always"`, the SDK
/// checks what it reads against the checksum stored with the object).
fn is_checksum_mismatch(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err
            .downcast_ref::<aws_smithy_checksums::body::validate::Error>()
            .is_some()
        {
            return true;
        }
        next = err.source();
    }
    false
}

fn is_not_found<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    matches!(e.code(), Some("NoSuchKey") | Some("NotFound"))
}

#[async_trait]
impl Store for S3Store {
    fn describe(&self) -> String {
        let url = if self.config.prefix.is_empty() {
            format!("s3://{}", self.config.bucket)
        } else {
            format!("s3://{}/{}", self.config.bucket, self.config.prefix)
        };
        match &self.config.endpoint {
            Some(e) => format!("{url} (endpoint {e})"),
            None => url,
        }
    }

    async fn check(&self) -> Result<()> {
        let _p = self.permits.acquire().await;
        // A one-key listing rather than HEAD: its error answer has a body, whose code tells a
        // missing bucket, a wrong secret, an unknown key and another region apart.
        self.client
            .list_objects_v2()
            .bucket(&self.config.bucket)
            .prefix(self.key(""))
            .max_keys(1)
            .send()
            .await
            .map_err(|e| self.error("list", "", e))?;
        if self.config.object_lock.is_some() {
            let enabled = match self
                .client
                .get_object_lock_configuration()
                .bucket(&self.config.bucket)
                .send()
                .await
            {
                Ok(out) => {
                    out.object_lock_configuration()
                        .and_then(|c| c.object_lock_enabled())
                        == Some(&ObjectLockEnabled::Enabled)
                }
                Err(e) if e.code() == Some("ObjectLockConfigurationNotFoundError") => false,
                Err(e) => return Err(self.error("get object lock configuration", "", e)),
            };
            if !enabled {
                return Err(Error::input(format!(
                    "s3: {} does not have object lock enabled, but the policy sets repository.object_lock: create the bucket with object lock (aws s3api create-bucket --object-lock-enabled-for-bucket ...) or remove object_lock from the policy",
                    self.where_()
                )));
            }
        }
        Ok(())
    }

    async fn put(&self, key: &str, data: Vec<u8>, mode: PutMode) -> Result<Put> {
        if data.len() > self.config.part_size {
            let _p = self.permits.acquire().await;
            return self.put_multipart(key, data, mode).await;
        }
        // Every write carries its Content-MD5 and is confirmed against the answer's ETag: a
        // body damaged on its way is sent again, never committed as it arrived.
        let md5 = crate::s3client::Md5::of(&data);
        let body = bytes::Bytes::from(data);
        let mut attempt = 1;
        loop {
            let permit = self.permits.acquire().await;
            let mut req = self
                .client
                .put_object()
                .bucket(&self.config.bucket)
                .key(self.key(key))
                .content_md5(&md5.base64)
                .body(ByteStream::from(body.clone()));
            if mode != PutMode::Replace {
                req = req.if_none_match("*");
            }
            let retention = self.retention(mode);
            // S3 requires a checksum on every write that sets object-lock retention.
            if self.send_sha256 || retention.is_some() {
                req = req.checksum_algorithm(ChecksumAlgorithm::Sha256);
            }
            if let Some((m, until)) = retention {
                req = req.object_lock_mode(m).object_lock_retain_until_date(until);
            }
            let sent = req.send().await;
            drop(permit);
            let damaged = match sent {
                Ok(out) if md5.confirmed_by(out.e_tag()) => return Ok(Put::Created),
                Ok(out) => {
                    // A store that ignored Content-MD5 kept the damaged bytes: remove them
                    // (the object is this write's own, just created) before sending again.
                    let removed = self.remove(&[key.to_string()]).await?;
                    if !removed.locked.is_empty() {
                        return Err(Error::failed(format!(
                            "s3: put object {}/{}: the store kept a damaged body (ETag {}, MD5 {}) under object lock: it cannot be removed; its snapshot is never committed",
                            self.config.bucket,
                            self.key(key),
                            out.e_tag().unwrap_or("none"),
                            md5.hex
                        )));
                    }
                    format!(
                        "the store answered ETag {} for a body whose MD5 is {}",
                        out.e_tag().unwrap_or("none"),
                        md5.hex
                    )
                }
                Err(e) if is_precondition_failed(&e) => return Ok(Put::Exists),
                Err(e) if crate::s3client::is_bad_digest(&e) => {
                    "the store found the body damaged (BadDigest)".to_string()
                }
                Err(e) => return Err(self.error("put object", key, e)),
            };
            if attempt >= crate::s3client::WRITE_ATTEMPTS {
                return Err(Error::failed(format!(
                    "s3: put object {}/{}: {damaged}, {attempt} times: the bytes are damaged on their way to the store",
                    self.config.bucket,
                    self.key(key)
                )));
            }
            tracing::warn!(
                "s3: put object {}/{}: {damaged}; sending it again",
                self.config.bucket,
                self.key(key)
            );
            attempt += 1;
        }
    }

    async fn get_opt(&self, key: &str) -> Result<Option<Vec<u8>>> {
        // The SDK retries a request that fails; a body cut off midway is retried here, the
        // whole GET again, with backoff, before the read is given up naming the attempts.
        let backoff = crate::retry::Backoff {
            attempts: BODY_ATTEMPTS,
            first: std::time::Duration::from_millis(200),
        };
        let once = |_| async {
            let _p = self.permits.acquire().await;
            let out = match self
                .client
                .get_object()
                .bucket(&self.config.bucket)
                .key(self.key(key))
                .send()
                .await
            {
                Ok(o) => o,
                Err(e) if is_not_found(&e) => return Ok(None),
                Err(e) => {
                    return Err(crate::retry::Attempt::Final(GetFailed::Request(
                        self.error("get object", key, e),
                    )))
                }
            };
            match out.body.collect().await {
                Ok(body) => Ok(Some(body.into_bytes().to_vec())),
                Err(cut) => Err(crate::retry::Attempt::Again(GetFailed::Cut(cut))),
            }
        };
        let again = |e: &GetFailed, _| {
            if let GetFailed::Cut(cut) = e {
                tracing::debug!("s3: get object {key}: body cut off ({cut}); retrying");
            }
        };
        let (cut, attempt) = match backoff.run(once, again).await {
            Ok(body) => return Ok(body),
            Err((GetFailed::Request(e), _)) => return Err(e),
            Err((GetFailed::Cut(cut), n)) => (cut, n),
        };
        if is_checksum_mismatch(&cut) {
            // Every read of it failed the checksum the store keeps with the object: the
            // stored bytes are damaged, whoever reads them (one flipped in transit would
            // have read right the next time).
            return Err(Error::new(
                Kind::Damaged,
                format!(
                    "s3: get object {}/{}: the stored bytes fail the object's checksum, {attempt} reads of {attempt} ({cut}): the object is damaged",
                    self.config.bucket,
                    self.key(key)
                ),
            ));
        }
        Err(Error::new(
            Kind::Unavailable,
            format!(
                "s3: get object {}/{}: reading the body failed {attempt} times, last: {cut}",
                self.config.bucket,
                self.key(key)
            ),
        )
        .with_source(cut))
    }

    async fn stat(&self, key: &str) -> Result<Option<u64>> {
        let _p = self.permits.acquire().await;
        match self
            .client
            .head_object()
            .bucket(&self.config.bucket)
            .key(self.key(key))
            .send()
            .await
        {
            Ok(o) => Ok(Some(o.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.error("head object", key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>> {
        let _p = self.permits.acquire().await;
        let full_prefix = self.key(prefix);
        let strip = if self.config.prefix.is_empty() {
            0
        } else {
            self.config.prefix.len() + 1
        };
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.config.bucket)
            .prefix(&full_prefix)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error("list objects", prefix, e))?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    out.push(Entry {
                        key: k[strip.min(k.len())..].to_string(),
                        size: o.size().unwrap_or(0).max(0) as u64,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Lists the versions of the wanted keys, one listing per parent prefix, skips those whose
    /// retention (last modified plus the policy's lock days) has not passed, and deletes the
    /// rest by version in `DeleteObjects` batches of up to 1,000. A version the server still
    /// refuses (a longer retention than the policy says) is reported with the date its HEAD
    /// gives.
    async fn remove(&self, keys: &[String]) -> Result<super::Removed> {
        let wanted: std::collections::HashSet<&str> = keys.iter().map(|k| k.as_str()).collect();
        let mut parents: Vec<String> = keys
            .iter()
            .map(|k| k.rsplit_once('/').map_or("", |(p, _)| p).to_string())
            .collect();
        parents.sort();
        parents.dedup();
        let mut listed: Vec<Vec<Version>> = Vec::new();
        for group in parents.chunks(self.config.connections.max(1)) {
            let pages = group.iter().map(|p| self.versions(p, &wanted));
            listed.extend(futures::future::try_join_all(pages).await?);
        }
        let now = chrono::Utc::now();
        let lock_days = self.config.object_lock.as_ref().map(|(_, d)| *d as i64);
        let mut out = super::Removed::default();
        let mut doomed = Vec::new();
        for v in listed.into_iter().flatten() {
            let until = lock_days.map(|d| v.modified + chrono::Duration::days(d));
            match until {
                Some(until) if until > now && !v.marker => out.locked.push((v.key, until)),
                _ => doomed.push(v),
            }
        }
        for batch in doomed.chunks(1000) {
            let (freed, refused) = self.delete_versions(batch).await?;
            out.removed.extend(freed);
            out.locked.extend(refused);
        }
        // A key is removed once no version of it is left.
        let left: std::collections::HashSet<String> =
            out.locked.iter().map(|(k, _)| k.clone()).collect();
        let mut per_key: std::collections::BTreeMap<String, u64> = Default::default();
        for (k, size) in out.removed.drain(..) {
            *per_key.entry(k).or_default() += size;
        }
        out.removed = per_key
            .into_iter()
            .filter(|(k, _)| !left.contains(k))
            .collect();
        out.locked.sort();
        out.locked.dedup_by(|a, b| a.0 == b.0);
        Ok(out)
    }

    /// Deletes every version of the key (and its delete markers), so that on a versioned
    /// bucket a removed run lock leaves nothing behind. A version that object lock still
    /// retains stays; the object is then hidden behind a delete marker, as a plain delete
    /// would.
    async fn delete(&self, key: &str) -> Result<()> {
        let parent = key.rsplit_once('/').map_or("", |(p, _)| p);
        let wanted: std::collections::HashSet<&str> = [key].into_iter().collect();
        let versions = self.versions(parent, &wanted).await?;
        if !versions.is_empty() {
            self.delete_versions(&versions).await?;
        }
        if self.stat(key).await?.is_some() {
            let _p = self.permits.acquire().await;
            self.client
                .delete_object()
                .bucket(&self.config.bucket)
                .key(self.key(key))
                .send()
                .await
                .map_err(|e| self.error("delete object", key, e))?;
        }
        Ok(())
    }
}
