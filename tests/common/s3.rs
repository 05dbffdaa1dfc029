//! A real S3-compatible server on loopback: the moto server from PyPI, installed into a
//! virtual environment by scripts/test.sh and started here on a free port, stopped on drop.
//! Also a loopback TCP proxy whose network can be cut and restored.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const KEY_ID: &str = "backstop-test-key";
pub const SECRET: &str = "backstop-test-secret-xyz";

fn moto_server() -> PathBuf {
    let path = std::env::var_os("BACKSTOP_MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/backstop/moto-venv/bin/moto_server")
        });
    assert!(
        path.is_file(),
        "the moto S3 server is not installed at {}: run scripts/test.sh, which installs it into a Python virtual \
         environment (python3 -m venv ~/.cache/backstop/moto-venv && ~/.cache/backstop/moto-venv/bin/pip install 'moto[server]')",
        path.display()
    );
    path
}

pub struct Moto {
    pub port: u16,
    child: Child,
}

impl Moto {
    pub fn start() -> Moto {
        Self::start_with(&[])
    }

    /// `auth`: enforce IAM authentication from the first request (every key is unknown).
    pub fn start_with(env: &[(&str, &str)]) -> Moto {
        let port = super::pg::free_port();
        let mut cmd = Command::new(moto_server());
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start moto_server");
        let moto = Moto { port, child };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on port {port} within 60s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> aws_sdk_s3::Client {
        client(&self.endpoint())
    }

    pub fn create_bucket(&self, name: &str, object_lock: bool) {
        let c = self.client();
        rt().block_on(async {
            let mut req = c.create_bucket().bucket(name);
            if object_lock {
                req = req.object_lock_enabled_for_bucket(true);
            }
            req.send().await.expect("create bucket");
        });
    }

    /// Every key in a bucket.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let c = self.client();
        rt().block_on(async {
            let mut out = Vec::new();
            let mut pages = c.list_objects_v2().bucket(bucket).into_paginator().send();
            while let Some(p) = pages.next().await {
                for o in p.expect("list").contents() {
                    out.push(o.key().unwrap_or_default().to_string());
                }
            }
            out
        })
    }

    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let c = self.client();
        rt().block_on(async {
            let o = c
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .expect("get");
            o.body.collect().await.unwrap().into_bytes().to_vec()
        })
    }

    /// Overwrites (test damage), bypassing backstop's no-overwrite rule.
    pub fn put(&self, bucket: &str, key: &str, data: Vec<u8>) {
        let c = self.client();
        rt().block_on(async {
            c.put_object()
                .bucket(bucket)
                .key(key)
                .body(data.into())
                .send()
                .await
                .expect("put");
        });
    }

    pub fn delete(&self, bucket: &str, key: &str) {
        let c = self.client();
        rt().block_on(async {
            c.delete_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .expect("delete");
        });
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub fn client(endpoint: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .force_path_style(true)
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            KEY_ID, SECRET, None, None, "test",
        ))
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// A TCP proxy on a loopback port in front of `upstream`. `cut()` drops every connection and
/// refuses new ones; `restore()` lets traffic through again.
pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let p = Proxy {
            port,
            up: Arc::new(AtomicBool::new(true)),
            stop: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        let (up, stop, conns) = (p.up.clone(), p.stop.clone(), p.conns.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        if !up.load(Ordering::SeqCst) {
                            let _ = client.shutdown(Shutdown::Both);
                            continue;
                        }
                        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                            continue;
                        };
                        client.set_nonblocking(false).unwrap();
                        {
                            let mut c = conns.lock().unwrap();
                            c.push(client.try_clone().unwrap());
                            c.push(server.try_clone().unwrap());
                        }
                        pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                        pipe(server, client);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        p
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}
