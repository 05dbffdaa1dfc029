//! The daemon's HTTP side, on `--listen` (give a loopback address unless a scraper elsewhere
//! needs it): `GET /healthz` (200 while the daemon's loop is alive and a policy is loaded, 503
//! otherwise), `GET /metrics` (Prometheus text format 0.0.4; recovery point ages computed at
//! scrape time) and `GET /report` (the HTML compliance report of every policy over the last 30
//! days). HTTP/1.1 on hyper (a request may arrive in pieces); one request per connection, which
//! closes after its answer as before (scrapers and `curl` read to the end), and a client gets
//! 10 s to send its request's head.

use super::Shared;
use crate::error::{Error, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long a client gets to send a request's head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

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
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(answer(&req, &shared).await) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEAD_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!("http: {e}");
                }
            });
        }
    });
    Ok(())
}

fn reply(status: StatusCode, kind: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(kind) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

async fn answer<B>(req: &Request<B>, shared: &Shared) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    match req.uri().path() {
        "/healthz" => {
            if crate::util::lock(&shared.policies).is_empty() {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "no policy is loaded\n",
                )
            } else {
                reply(StatusCode::OK, "text/plain", "ok\n")
            }
        }
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics(shared),
        ),
        "/report" => report(shared).await,
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /healthz, /metrics or /report\n",
        ),
    }
}

/// Every metric family, the recovery point ages as of now.
fn metrics(shared: &Shared) -> String {
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
    text
}

/// The HTML report of every loaded policy over the last 30 days.
async fn report(shared: &Shared) -> Response<Full<Bytes>> {
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
        Ok(report) => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            crate::report::render::html(&report),
        ),
        Err(e) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("could not read a repository: {}\n", e.message),
        ),
    }
}
