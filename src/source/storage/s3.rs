//! Any S3 endpoint as a storage source (Supabase Storage's `/storage/v1/s3` among them:
//! path-style, request checksums only when required), with its own credentials from the
//! policy's `[storage]`, separate from the repository's.

use super::{Download, ObjectInfo, Reader, StorageSource, UploadMeta};
use crate::error::{Error, Kind, Result};
use crate::policy::StorageSource as Config;
use crate::s3client::{client, ClientConfig, Multipart, PART_SIZE};
use async_trait::async_trait;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use tokio::io::AsyncReadExt;

pub struct S3Source {
    client: Client,
    endpoint: String,
}

impl S3Source {
    pub async fn connect(config: &Config) -> Result<S3Source> {
        let (client, _) = client(&ClientConfig {
            endpoint: config.endpoint.clone(),
            region: config.region.clone(),
            access_key_id: config.access_key_id.clone(),
            secret_access_key: config.secret_access_key.clone(),
            checksums: "when_required".into(),
        })
        .await
        .map_err(|e| e.context("storage"))?;
        Ok(S3Source {
            client,
            endpoint: config.endpoint.clone().unwrap_or_else(|| "AWS S3".into()),
        })
    }

    fn error(&self, what: &str, e: impl ProvideErrorMetadata + std::fmt::Display) -> Error {
        let hint = match e.code() {
            Some("NoSuchBucket") => Some("the bucket does not exist: check storage.buckets"),
            Some("InvalidAccessKeyId") => {
                Some("the access key id is not known there: check storage.access_key_id")
            }
            Some("SignatureDoesNotMatch") => {
                Some("the secret access key is wrong: check storage.secret_access_key")
            }
            Some("AccessDenied") => Some("the credentials lack permission on the bucket"),
            Some("AuthorizationHeaderMalformed") | Some("PermanentRedirect") => {
                Some("the bucket is in another region: set storage.region to the bucket's")
            }
            _ => None,
        };
        let kind = if hint.is_some() {
            Kind::Input
        } else {
            Kind::Failed
        };
        let detail = match (e.code(), e.message()) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c.to_string(),
            _ => e.to_string(),
        };
        let hint = hint.map(|h| format!("; {h}")).unwrap_or_default();
        Error::new(
            kind,
            format!("storage: s3 {what} at {}: {detail}{hint}", self.endpoint),
        )
    }
}

#[async_trait]
impl StorageSource for S3Source {
    fn describe(&self) -> String {
        format!("S3 storage at {}", self.endpoint)
    }

    async fn check_buckets(&self, buckets: &[String]) -> Result<()> {
        for bucket in buckets {
            // A one-key listing: unlike HEAD, its error answers carry S3's codes.
            self.client
                .list_objects_v2()
                .bucket(bucket)
                .max_keys(1)
                .send()
                .await
                .map_err(|e| self.error(&format!("list bucket {bucket}"), e))?;
        }
        Ok(())
    }

    async fn list(&self, bucket: &str) -> Result<Vec<ObjectInfo>> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error(&format!("list bucket {bucket}"), e))?;
            for o in page.contents() {
                let Some(key) = o.key() else { continue };
                let mut info = ObjectInfo::new(bucket, key);
                info.size = o.size().map(|s| s.max(0) as u64);
                info.etag = o.e_tag().map(str::to_string);
                info.updated_at = o.last_modified().map(|t| t.to_string());
                out.push(info);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn read(&self, object: &ObjectInfo) -> Result<Download> {
        let out = self
            .client
            .get_object()
            .bucket(&object.bucket)
            .key(&object.name)
            .send()
            .await
            .map_err(|e| self.error(&format!("get {}/{}", object.bucket, object.name), e))?;
        Ok(Download {
            content_type: out.content_type().map(str::to_string),
            cache_control: out.cache_control().map(str::to_string),
            reader: Box::pin(out.body.into_async_read()),
        })
    }

    async fn ensure_bucket(&self, bucket: &str) -> Result<()> {
        if self
            .client
            .head_bucket()
            .bucket(bucket)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        self.client
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| self.error(&format!("create bucket {bucket}"), e))?;
        Ok(())
    }

    /// One PUT up to the part size; above it, a multipart upload holding one part in memory at
    /// a time, aborted on failure.
    async fn write(
        &self,
        bucket: &str,
        name: &str,
        meta: &UploadMeta,
        mut body: Reader,
    ) -> Result<()> {
        let what = format!("put {bucket}/{name}");
        let mut first = Vec::with_capacity(PART_SIZE.min(meta.size as usize + 1));
        (&mut body)
            .take(PART_SIZE as u64 + 1)
            .read_to_end(&mut first)
            .await
            .map_err(|e| Error::failed(format!("storage: {what}: {e}")))?;
        if first.len() <= PART_SIZE {
            self.client
                .put_object()
                .bucket(bucket)
                .key(name)
                .set_content_type(meta.content_type.clone())
                .set_cache_control(meta.cache_control.clone())
                .body(ByteStream::from(first))
                .send()
                .await
                .map_err(|e| self.error(&what, e))?;
            return Ok(());
        }
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(name)
            .set_content_type(meta.content_type.clone())
            .set_cache_control(meta.cache_control.clone())
            .send()
            .await
            .map_err(|e| self.error(&what, e))?;
        let id = upload.upload_id().unwrap_or_default().to_string();
        let mut upload = Multipart::new(&self.client, bucket, name, &id, false);
        let result = async {
            let on_error = |e| self.error(&what, e);
            upload
                .send_parts(first, &mut body, PART_SIZE, on_error)
                .await?;
            self.client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(name)
                .upload_id(&id)
                .multipart_upload(upload.completed())
                .send()
                .await
                .map_err(|e| self.error(&what, e))?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => upload.done(),
            Err(_) => upload.abort().await,
        }
        result
    }
}
