//! Supabase Storage over its REST API, as Supabase documents it.
//!
//! * Every request carries the key twice, as `apikey` and as `Authorization: Bearer`.
//! * Listing: `POST /storage/v1/object/list-v2/{bucket}`, a flat listing of whole paths with
//!   cursor pagination (`hasNext`, `nextCursor`). Projects where list-v2 is not enabled answer it
//!   with an error; backstop then walks the v1 `POST /storage/v1/object/list/{bucket}` folder by
//!   folder (folders come back with `id: null`), paging with `offset` until an empty page (a
//!   server may cap its pages below the limit asked for). The bucket's existence is
//!   checked first (`GET /storage/v1/bucket/{id}`), because a listing of a missing bucket may
//!   simply be empty.
//! * Download: `GET /storage/v1/object/authenticated/{bucket}/{path}`; upload:
//!   `POST /storage/v1/object/{bucket}/{path}` with `x-upsert: true`, the recorded content type
//!   and cache control. Each path segment is percent-encoded (everything but unreserved
//!   characters), so names with spaces, `#`, `%`, `+`, `?`, `=` or any Unicode round-trip.

use super::{Download, ObjectInfo, Reader, StorageSource, UploadMeta};
use crate::error::{Error, Kind, Result};
use async_trait::async_trait;
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

pub struct SupabaseSource {
    base: String,
    key: String,
    http: reqwest::Client,
}

/// Supabase Storage's error body; `statusCode` is a string ("404") or a number.
#[derive(Deserialize, Default)]
struct ApiError {
    #[serde(default, rename = "statusCode")]
    status_code: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

impl ApiError {
    fn code(&self) -> Option<u16> {
        match self.status_code.as_ref()? {
            serde_json::Value::String(s) => s.parse().ok(),
            serde_json::Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct ListV2 {
    #[serde(default, rename = "hasNext")]
    has_next: bool,
    #[serde(default, rename = "nextCursor")]
    next_cursor: Option<String>,
    #[serde(default)]
    objects: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    name: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    updated_at: Option<String>,
    #[serde(default)]
    metadata: Option<Metadata>,
}

#[derive(Deserialize, Default)]
struct Metadata {
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    mimetype: Option<String>,
    #[serde(default, rename = "cacheControl")]
    cache_control: Option<String>,
    #[serde(default, rename = "eTag")]
    etag: Option<String>,
}

/// Percent-encodes each `/`-separated segment of an object path. A name with a `.` or `..`
/// segment is sent as one segment, its slashes encoded as `%2F`: every URL parser (the url
/// crate, WHATWG) collapses dot segments even when their dots are percent-encoded, which
/// would request another object (`a/../../etc/x` as `/object/etc/x`). The server decodes the
/// wildcard parameter, so it still sees the exact name. A name that is exactly `.` or `..`
/// cannot be put in a URL path at all; its download fails, named.
pub fn encode_path(name: &str) -> String {
    if name.split('/').any(|s| s == "." || s == "..") {
        return crate::util::percent_encode(name);
    }
    name.split('/')
        .map(crate::util::percent_encode)
        .collect::<Vec<_>>()
        .join("/")
}

impl SupabaseSource {
    pub fn new(url: &str, key: &str) -> Result<SupabaseSource> {
        let parsed = url::Url::parse(url)
            .map_err(|e| Error::input(format!("storage.url `{url}` is not a URL ({e}); write the project URL, e.g. https://REF.supabase.co")))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| Error::failed(format!("storage: HTTP client: {e}")))?;
        Ok(SupabaseSource {
            base: parsed.as_str().trim_end_matches('/').to_string(),
            key: key.to_string(),
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/storage/v1/{path}", self.base)
    }

    fn authed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        req.header("apikey", &self.key).bearer_auth(&self.key)
    }

    async fn send(&self, what: &str, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = self.authed(req).send().await.map_err(|e| {
            Error::failed(format!(
                "storage: {what} at {}: cannot reach Supabase Storage: {e}",
                self.base
            ))
        })?;
        Ok(resp)
    }

    /// The error an unsuccessful answer means. Supabase Storage answers client errors with
    /// HTTP 400 and the real status in the body (`{"statusCode":"403","error":"Unauthorized",
    /// "message":"signature verification failed"}`), so the body's code decides, not the
    /// HTTP status. A refused key is bad input (exit 2, as every refused credential).
    async fn fail(&self, what: &str, resp: reqwest::Response) -> Error {
        self.answer_error(what, resp).await.1
    }

    /// [`SupabaseSource::fail`], with the status the answer really means.
    async fn answer_error(&self, what: &str, resp: reqwest::Response) -> (u16, Error) {
        let http = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let body: ApiError = serde_json::from_str(&text).unwrap_or_default();
        let code = body.code().unwrap_or(http);
        let message = body.message.clone().unwrap_or_default();
        let error = body.error.clone().unwrap_or_default();
        let shown: String = format!("{error}: {message}").chars().take(300).collect();
        let lower = format!("{error} {message}").to_lowercase();
        let key_problem = (code == 401 || code == 403)
            .then(|| {
                if lower.contains("expired") || lower.contains("\"exp\"") {
                    "the key has expired: issue a new service-role or secret key"
                } else if lower.contains("signature") || lower.contains("jws") || lower.contains("jwt") {
                    "the key is not one this project signed (a wrong or forged key): use the project's service-role or secret key"
                } else {
                    "the key was refused or lacks the rights: storage.key must be a service-role or secret key"
                }
            })
            .or_else(|| {
                (lower.contains("invalidkey") || lower.contains("'authorization'"))
                    .then_some("the key was refused as malformed: storage.key must be a service-role or secret key")
            });
        if let Some(hint) = key_problem {
            let e = Error::input(format!(
                "storage: {what} at {}: the key was refused ({code} {shown}); {hint}",
                self.base
            ));
            return (code, e);
        }
        let kind = if code == 404 {
            Kind::Input
        } else {
            Kind::Failed
        };
        let e = Error::new(
            kind,
            format!(
                "storage: {what} at {}: HTTP {http} ({code}) {shown}",
                self.base
            ),
        );
        (code, e)
    }

    async fn bucket_exists(&self, bucket: &str) -> Result<bool> {
        let resp = self
            .send(
                "reading bucket",
                self.http
                    .get(self.url(&format!("bucket/{}", encode_path(bucket)))),
            )
            .await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(true);
        }
        let what = format!("reading bucket {bucket}");
        match self.answer_error(&what, resp).await {
            // Not found, as the body (or the HTTP status) says: the bucket is missing.
            (404, _) => Ok(false),
            (_, e) => Err(e),
        }
    }

    /// The flat list-v2 listing, or `None` when the project does not offer it.
    async fn list_v2(&self, bucket: &str) -> Result<Option<Vec<ObjectInfo>>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut body = json!({ "prefix": "", "limit": 1000, "with_delimiter": false });
            if let Some(c) = &cursor {
                body["cursor"] = json!(c);
            }
            let req = self
                .http
                .post(self.url(&format!("object/list-v2/{}", encode_path(bucket))))
                .json(&body);
            let resp = self.send("listing (list-v2)", req).await?;
            let status = resp.status();
            if !status.is_success() {
                let e = self.fail(&format!("listing bucket {bucket}"), resp).await;
                if e.kind == Kind::Input {
                    return Err(e);
                }
                tracing::info!(
                    "list-v2 is not available ({}); walking folders with list v1",
                    e.message
                );
                return Ok(None);
            }
            let page: ListV2 = resp.json().await.map_err(|e| {
                Error::failed(format!(
                    "storage: listing bucket {bucket} (list-v2): unreadable answer: {e}"
                ))
            })?;
            out.extend(
                page.objects
                    .into_iter()
                    .filter(|e| e.id.is_some())
                    .map(|e| info(bucket, e.name.clone(), e)),
            );
            match (page.has_next, page.next_cursor) {
                (true, Some(c)) if Some(&c) != cursor.as_ref() => cursor = Some(c),
                (true, _) => {
                    return Err(Error::failed(format!(
                        "storage: listing bucket {bucket} (list-v2): the server said there is more but gave no new cursor"
                    )))
                }
                (false, _) => return Ok(Some(out)),
            }
        }
    }

    /// The v1 listing, walked folder by folder.
    async fn list_v1(&self, bucket: &str) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        let mut folders = vec![String::new()];
        while let Some(prefix) = folders.pop() {
            let mut offset = 0usize;
            loop {
                let body = json!({
                    "prefix": prefix, "limit": 1000, "offset": offset,
                    "sortBy": { "column": "name", "order": "asc" }
                });
                let req = self
                    .http
                    .post(self.url(&format!("object/list/{}", encode_path(bucket))))
                    .json(&body);
                let resp = self.send("listing (list)", req).await?;
                if !resp.status().is_success() {
                    return Err(self
                        .fail(&format!("listing bucket {bucket} folder `{prefix}`"), resp)
                        .await);
                }
                let page: Vec<Entry> = resp.json().await.map_err(|e| {
                    Error::failed(format!(
                        "storage: listing bucket {bucket} (list): unreadable answer: {e}"
                    ))
                })?;
                let n = page.len();
                for e in page {
                    let full = if prefix.is_empty() {
                        e.name.clone()
                    } else {
                        format!("{prefix}/{}", e.name)
                    };
                    if e.id.is_none() {
                        folders.push(full);
                    } else {
                        out.push(info(bucket, full, e));
                    }
                }
                // A server may return fewer than asked for while more remain (it caps its
                // pages), so only an empty page ends the folder.
                if n == 0 {
                    break;
                }
                offset += n;
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

fn info(bucket: &str, name: String, e: Entry) -> ObjectInfo {
    let m = e.metadata.unwrap_or_default();
    let mut o = ObjectInfo::new(bucket, &name);
    o.size = m.size;
    o.etag = m.etag;
    o.updated_at = e.updated_at;
    o.content_type = m.mimetype;
    o.cache_control = m.cache_control;
    o
}

#[async_trait]
impl StorageSource for SupabaseSource {
    fn describe(&self) -> String {
        format!("Supabase Storage at {}", self.base)
    }

    async fn check_buckets(&self, buckets: &[String]) -> Result<()> {
        for bucket in buckets {
            if !self.bucket_exists(bucket).await? {
                return Err(Error::input(format!(
                    "storage: bucket {bucket} does not exist at {}",
                    self.base
                )));
            }
        }
        Ok(())
    }

    async fn list(&self, bucket: &str) -> Result<Vec<ObjectInfo>> {
        if !self.bucket_exists(bucket).await? {
            return Err(Error::input(format!(
                "storage: bucket {bucket} does not exist at {}",
                self.base
            )));
        }
        let mut objects = match self.list_v2(bucket).await? {
            Some(o) => o,
            None => self.list_v1(bucket).await?,
        };
        objects.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(objects)
    }

    fn unfetchable(&self, object: &ObjectInfo) -> Option<String> {
        (object.name == "." || object.name == "..").then(|| {
            format!(
                "{}/{}: the Storage REST API cannot address an object named `{}` (every URL path collapses it); back it up through the S3 protocol ([storage] kind = \"s3\" with the project's S3 endpoint and keys), or rename it",
                object.bucket, object.name, object.name
            )
        })
    }

    async fn read(&self, object: &ObjectInfo) -> Result<Download> {
        let url = self.url(&format!(
            "object/authenticated/{}/{}",
            encode_path(&object.bucket),
            encode_path(&object.name)
        ));
        let what = format!("downloading {}/{}", object.bucket, object.name);
        let resp = self.send(&what, self.http.get(url)).await?;
        if !resp.status().is_success() {
            return Err(self.fail(&what, resp).await);
        }
        let header = |name: reqwest::header::HeaderName| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header(reqwest::header::CONTENT_TYPE);
        let cache_control = header(reqwest::header::CACHE_CONTROL);
        let stream = resp.bytes_stream().map_err(std::io::Error::other);
        Ok(Download {
            reader: Box::pin(tokio_util::io::StreamReader::new(stream)),
            content_type,
            cache_control,
        })
    }

    async fn ensure_bucket(&self, bucket: &str) -> Result<()> {
        if self.bucket_exists(bucket).await? {
            return Ok(());
        }
        let req = self
            .http
            .post(self.url("bucket"))
            .json(&json!({ "id": bucket, "name": bucket, "public": false }));
        let resp = self.send("creating bucket", req).await?;
        if !resp.status().is_success() {
            return Err(self.fail(&format!("creating bucket {bucket}"), resp).await);
        }
        tracing::info!("created bucket {bucket} at {}", self.base);
        Ok(())
    }

    async fn write(&self, bucket: &str, name: &str, meta: &UploadMeta, body: Reader) -> Result<()> {
        let url = self.url(&format!(
            "object/{}/{}",
            encode_path(bucket),
            encode_path(name)
        ));
        let stream = tokio_util::io::ReaderStream::new(body);
        let mut req = self
            .http
            .post(url)
            .header("x-upsert", "true")
            .header(reqwest::header::CONTENT_LENGTH, meta.size)
            .header(
                reqwest::header::CONTENT_TYPE,
                meta.content_type
                    .as_deref()
                    .unwrap_or("application/octet-stream"),
            )
            .body(reqwest::Body::wrap_stream(stream));
        if let Some(cc) = &meta.cache_control {
            req = req.header(reqwest::header::CACHE_CONTROL, cc);
        }
        let what = format!("uploading {bucket}/{name}");
        let resp = self.send(&what, req).await?;
        if !resp.status().is_success() {
            return Err(self.fail(&what, resp).await);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn encodes_each_segment() {
        assert_eq!(
            super::encode_path("a b/c#d%e+f?g=h/ü.pdf"),
            "a%20b/c%23d%25e%2Bf%3Fg%3Dh/%C3%BC.pdf"
        );
    }

    #[test]
    fn dot_segments_are_never_collapsed() {
        for name in ["a/../../etc/x", "x/./y", "../x", "a//x", "/lead", "dir/"] {
            let url = format!("http://h/object/b/{}", super::encode_path(name));
            let parsed = url::Url::parse(&url).unwrap();
            let sent = parsed.path().strip_prefix("/object/b/").unwrap();
            assert_eq!(crate::util::percent_decode(sent), name, "{url}");
        }
    }
}
