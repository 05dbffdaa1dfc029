//! The daemon's HTTP side, on `--listen` (give a loopback address unless a scraper elsewhere
//! needs it): `GET /healthz` (200 while the daemon's loop is alive and a policy is loaded, 503 otherwise), `GET /metrics`
//! (Prometheus text format 0.0.4; recovery point ages computed at scrape time) and
//! `GET /report` (the HTML compliance report of every policy over the last 30 days). A tiny
//! HTTP/1.1 responder: one request per connection, GET only.

use super::Shared;
use crate::error::{Error, Result};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub async fn serve(addr: &str, shared: Arc<Shared>) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::input(format!("--listen {addr}: {e}")))?;
    tracing::info!(
        "listening on http://{}",
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| addr.to_string())
    );
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let Some(n) = read_head(&mut conn, &mut buf).await else {
                    return;
                };
                let request = String::from_utf8_lossy(&buf[..n]);
                let mut parts = request.split_whitespace();
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let (status, kind, body) = answer(method, path, &shared).await;
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(&body).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    Ok(())
}

/// Reads a request's head (up to its blank line, at most `buf.len()` bytes) within 10 s;
/// the length read, or `None` when the client went away or was too slow.
async fn read_head(conn: &mut tokio::net::TcpStream, buf: &mut [u8]) -> Option<usize> {
    let read = async {
        let mut n = 0;
        while n < buf.len() {
            match conn.read(&mut buf[n..]).await {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        (n > 0).then_some(n)
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .ok()
        .flatten()
}

async fn answer(
    method: &str,
    path: &str,
    shared: &Shared,
) -> (&'static str, &'static str, Vec<u8>) {
    if method != "GET" {
        return (
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n".to_vec(),
        );
    }
    match path.split('?').next().unwrap_or("") {
        "/healthz" => {
            if crate::util::lock(&shared.policies).is_empty() {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    b"no policy is loaded\n".to_vec(),
                )
            } else {
                ("200 OK", "text/plain", b"ok\n".to_vec())
            }
        }
        "/metrics" => {
            let metrics: Vec<_> = crate::util::lock(&shared.metrics)
                .values()
                .cloned()
                .collect();
            let mut text = crate::metrics::render(&metrics, chrono::Utc::now());
            let streams = crate::util::lock(&shared.streams).clone();
            text.push_str(&crate::metrics::render_streams(
                streams
                    .iter()
                    .map(|(p, s)| (p.as_str(), s.last_commit, s.lag_bytes, s.segments)),
            ));
            let errors = crate::util::lock(&shared.load_errors).clone();
            text.push_str(&crate::metrics::render_load_errors(
                errors.keys().map(String::as_str),
            ));
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                text.into_bytes(),
            )
        }
        "/report" => {
            let policies: Vec<crate::policy::Policy> = crate::util::lock(&shared.policies)
                .iter()
                .map(|p| (**p).clone())
                .collect();
            let to = chrono::Utc::now();
            let window = crate::report::Window {
                from: to - chrono::Duration::days(30),
                to,
            };
            match crate::ops::report::run(&policies, &window, false).await {
                Ok(report) => (
                    "200 OK",
                    "text/html; charset=utf-8",
                    crate::report::render::html(&report).into_bytes(),
                ),
                Err(e) => (
                    "503 Service Unavailable",
                    "text/plain",
                    format!("could not read a repository: {}\n", e.message).into_bytes(),
                ),
            }
        }
        _ => (
            "404 Not Found",
            "text/plain",
            b"try /healthz, /metrics or /report\n".to_vec(),
        ),
    }
}
