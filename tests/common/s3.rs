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

/// The python of the test servers' virtual environment (it also holds aiosmtpd).
pub fn venv_python() -> PathBuf {
    moto_server().with_file_name("python")
}

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
         environment (python3 -m venv ~/.cache/backstop/moto-venv && ~/.cache/backstop/moto-venv/bin/pip install 'moto[server]' aiosmtpd)",
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

    /// A server that checks every signature, holding `bucket`; returns it with the access key
    /// id and secret of an IAM user allowed everything. (Moto creates the user, its policy and
    /// its key unauthenticated, through boto3 from its own virtual environment.)
    pub fn with_user(bucket: &str) -> (Moto, String, String) {
        let moto = Self::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "3")]);
        let python = venv_python();
        let script = format!(
            r#"
import boto3, json
ep = "{}"
iam = boto3.client("iam", endpoint_url=ep, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
iam.create_user(UserName="backstop")
iam.put_user_policy(UserName="backstop", PolicyName="all", PolicyDocument=json.dumps({{"Version": "2012-10-17", "Statement": [{{"Effect": "Allow", "Action": "*", "Resource": "*"}}]}}))
k = iam.create_access_key(UserName="backstop")["AccessKey"]
s3 = boto3.client("s3", endpoint_url=ep, region_name="us-east-1", aws_access_key_id=k["AccessKeyId"], aws_secret_access_key=k["SecretAccessKey"])
s3.create_bucket(Bucket="{bucket}")
print(k["AccessKeyId"], k["SecretAccessKey"])
"#,
            moto.endpoint()
        );
        let out = Command::new(&python)
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "creating an IAM user in moto with {}: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let (id, secret) = text.trim().split_once(' ').unwrap();
        (moto, id.to_string(), secret.to_string())
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

    /// Turns versioning on (without object lock).
    pub fn enable_versioning(&self, bucket: &str) {
        use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
        let c = self.client();
        rt().block_on(async {
            c.put_bucket_versioning()
                .bucket(bucket)
                .versioning_configuration(
                    VersioningConfiguration::builder()
                        .status(BucketVersioningStatus::Enabled)
                        .build(),
                )
                .send()
                .await
                .expect("enable versioning");
        });
    }

    /// Every version and delete marker in a bucket, as (key, is a delete marker).
    pub fn versions(&self, bucket: &str) -> Vec<(String, bool)> {
        let c = self.client();
        rt().block_on(async {
            let out = c
                .list_object_versions()
                .bucket(bucket)
                .send()
                .await
                .expect("list versions");
            let mut v: Vec<(String, bool)> = out
                .versions()
                .iter()
                .filter_map(|o| Some((o.key()?.to_string(), false)))
                .collect();
            v.extend(
                out.delete_markers()
                    .iter()
                    .filter_map(|m| Some((m.key()?.to_string(), true))),
            );
            v
        })
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
/// refuses new ones; `restore()` lets traffic through again. `cut_bodies` cuts answers midway:
/// a connection that has carried [`CUT_AFTER`] bytes towards the client is closed there, for
/// the next `once` such connections and then every `every`-th.
pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    cutter: Arc<Cutter>,
    faults: Arc<Faults>,
}

/// Faults that need to see the HTTP requests: one flipped byte in the body of every `flip`-th
/// request whose body has at least 1 KiB, and the answers to writes (PUT) whose path ends with
/// `drop_answers` lost (the connection closed when the answer arrives).
#[derive(Default)]
pub struct Faults {
    flip_every: std::sync::atomic::AtomicUsize,
    bodies: std::sync::atomic::AtomicUsize,
    /// Request bodies flipped so far.
    pub flipped: std::sync::atomic::AtomicUsize,
    drop_answers: Mutex<Option<String>>,
    /// Answers dropped so far.
    pub dropped: std::sync::atomic::AtomicUsize,
}

impl Faults {
    fn flip_this_body(&self, len: usize) -> bool {
        let every = self.flip_every.load(Ordering::SeqCst);
        if every == 0 || len < 1024 {
            return false;
        }
        let n = self.bodies.fetch_add(1, Ordering::SeqCst) + 1;
        n.is_multiple_of(every)
    }

    fn drops(&self, request_line: &str) -> bool {
        if !request_line.starts_with("PUT ") {
            return false;
        }
        let path = request_line.split(' ').nth(1).unwrap_or("");
        let path = path.split('?').next().unwrap_or("");
        self.drop_answers
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|suffix| path.ends_with(suffix.as_str()))
    }
}

/// Bytes an answer carries before `cut_bodies` may cut it: past the headers, inside a blob.
pub const CUT_AFTER: usize = 48 * 1024;

#[derive(Default)]
pub struct Cutter {
    once: std::sync::atomic::AtomicUsize,
    every: std::sync::atomic::AtomicUsize,
    crossings: std::sync::atomic::AtomicUsize,
    /// How many answers were cut.
    pub cuts: std::sync::atomic::AtomicUsize,
}

impl Cutter {
    /// Whether a connection that just carried `CUT_AFTER` bytes is cut.
    fn doomed(&self) -> bool {
        let n = self.crossings.fetch_add(1, Ordering::SeqCst) + 1;
        let once = self
            .once
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |o| o.checked_sub(1))
            .is_ok();
        let every = self.every.load(Ordering::SeqCst);
        let cut = once || (every > 0 && n.is_multiple_of(every));
        if cut {
            self.cuts.fetch_add(1, Ordering::SeqCst);
        }
        cut
    }
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
            cutter: Arc::new(Cutter::default()),
            faults: Arc::new(Faults::default()),
        };
        let (up, stop, conns) = (p.up.clone(), p.stop.clone(), p.conns.clone());
        let (cutter, faults) = (p.cutter.clone(), p.faults.clone());
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
                        let doomed = Arc::new(AtomicBool::new(false));
                        requests(
                            client.try_clone().unwrap(),
                            server.try_clone().unwrap(),
                            faults.clone(),
                            doomed.clone(),
                        );
                        pipe(server, client, Some(cutter.clone()), doomed);
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

    /// Cuts the next `once` answers that pass [`CUT_AFTER`] bytes, then every `every`-th (0:
    /// none).
    pub fn cut_bodies(&self, once: usize, every: usize) {
        self.cutter.once.store(once, Ordering::SeqCst);
        self.cutter.every.store(every, Ordering::SeqCst);
    }

    /// How many answers were cut so far.
    pub fn cuts(&self) -> usize {
        self.cutter.cuts.load(Ordering::SeqCst)
    }

    /// Flips one byte in the body of every `every`-th request body of 1 KiB or more (0: none).
    pub fn flip_request_bodies(&self, every: usize) {
        self.faults.flip_every.store(every, Ordering::SeqCst);
    }

    /// Loses every answer to a write (PUT) whose path ends with `suffix` (`None`: none).
    pub fn drop_answers(&self, suffix: Option<&str>) {
        *self.faults.drop_answers.lock().unwrap() = suffix.map(str::to_string);
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }
}

/// Forwards requests from the client to the server, reading each request's head and its
/// `Content-Length` body so that faults can pick requests: a body to damage, an answer to
/// lose (`doomed` tells the answering pipe). A chunked body is passed on as it comes.
fn requests(from: TcpStream, mut to: TcpStream, faults: Arc<Faults>, doomed: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(from);
        loop {
            let mut head = Vec::new();
            loop {
                let mut line = Vec::new();
                match std::io::BufRead::read_until(&mut reader, b'\n', &mut line) {
                    Ok(0) | Err(_) => {
                        let _ = to.shutdown(Shutdown::Both);
                        return;
                    }
                    Ok(_) => {}
                }
                head.extend_from_slice(&line);
                if line == b"\r\n" {
                    break;
                }
            }
            let text = String::from_utf8_lossy(&head).to_string();
            let length: usize = text
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            let chunked = text
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked");
            if faults.drops(text.lines().next().unwrap_or("")) {
                faults.dropped.fetch_add(1, Ordering::SeqCst);
                doomed.store(true, Ordering::SeqCst);
            }
            if to.write_all(&head).is_err() {
                return;
            }
            if chunked {
                // Pass the rest of the connection through untouched.
                let _ = std::io::copy(&mut reader, &mut to);
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
            let mut body = vec![0u8; length];
            if reader.read_exact(&mut body).is_err() {
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
            if faults.flip_this_body(body.len()) {
                let at = body.len() / 2;
                body[at] ^= 0x20;
                faults.flipped.fetch_add(1, Ordering::SeqCst);
            }
            if to.write_all(&body).is_err() {
                return;
            }
        }
    });
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    cutter: Option<Arc<Cutter>>,
    doomed: Arc<AtomicBool>,
) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        let mut carried = 0;
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) if doomed.load(Ordering::SeqCst) => {
                    // The answer to a request whose answer is to be lost: close instead.
                    let _ = from.shutdown(Shutdown::Both);
                    break;
                }
                Ok(n) => {
                    let crossed = carried < CUT_AFTER && carried + n >= CUT_AFTER;
                    if crossed && cutter.as_ref().is_some_and(|c| c.doomed()) {
                        let _ = to.write_all(&buf[..CUT_AFTER - carried]);
                        let _ = from.shutdown(Shutdown::Both);
                        break;
                    }
                    carried += n;
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}
