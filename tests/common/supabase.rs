//! A small HTTP double of Supabase Storage's REST API, written from Supabase's documented
//! behaviour (the one allowed double: the real service cannot run here). Objects are files
//! under `root/<bucket>/<name>`. Implemented: bucket read and create, `object/list-v2` (flat,
//! cursor pagination; answers `FeatureNotEnabled` when switched off), `object/list` (v1: one
//! folder level, folders with `id: null`, offset paging), authenticated download (optionally
//! cut mid-object), upload with `x-upsert`. Requests without `apikey` and `Authorization:
//! Bearer` for the right key are refused as Supabase refuses them.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub const KEY: &str = "service-role-key-for-tests";
/// A key the double answers as the real server answers an expired one.
pub const EXPIRED_KEY: &str = "expired-service-role-key";

#[derive(Default)]
pub struct State {
    pub list_v2: AtomicBool,
    /// Object names whose download is cut after half their bytes.
    pub cut: Mutex<Vec<String>>,
    /// Object names whose next download only is cut (then served whole).
    pub cut_once: Mutex<Vec<String>>,
    /// bucket/name -> (content type, cache control) of uploads.
    pub meta: Mutex<HashMap<String, (String, String)>>,
    pub requests: Mutex<Vec<String>>,
    stop: AtomicBool,
}

pub struct Supabase {
    pub port: u16,
    pub root: PathBuf,
    pub state: Arc<State>,
}

/// Page size the double uses whatever the client asks, so pagination is exercised.
const PAGE: usize = 100;

impl Supabase {
    pub fn start(root: &Path) -> Supabase {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        state.list_v2.store(true, Ordering::SeqCst);
        let (st, dir) = (state.clone(), root.to_path_buf());
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !st.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (st, dir) = (st.clone(), dir.clone());
                        conn.set_nonblocking(false).unwrap();
                        std::thread::spawn(move || {
                            let _ = serve(conn, &dir, &st);
                        });
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        });
        Supabase {
            port,
            root: root.to_path_buf(),
            state,
        }
    }

    /// The file that holds object `name` of `bucket` (any legal object name).
    pub fn object_path(&self, bucket: &str, name: &str) -> PathBuf {
        self.root.join(bucket).join(disk_path(name))
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Supabase {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
    }
}

struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

fn read_request(conn: &mut BufReader<TcpStream>) -> std::io::Result<Request> {
    let mut line = String::new();
    conn.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        conn.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut body = Vec::new();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            conn.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            conn.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(len) = headers
        .get("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        body.resize(len, 0);
        conn.read_exact(&mut body)?;
    }
    Ok(Request {
        method,
        path,
        headers,
        body,
    })
}

fn respond(
    conn: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    write!(
        conn,
        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )?;
    conn.write_all(body)
}

fn json_reply(conn: &mut TcpStream, status: u16, v: Value) -> std::io::Result<()> {
    respond(conn, status, "application/json", v.to_string().as_bytes())
}

/// An error as supabase/storage answers it: a client error is HTTP 400 whatever it is, with
/// the real status as a string in the body's `statusCode`.
fn error(conn: &mut TcpStream, status: u16, code: &str, message: &str) -> std::io::Result<()> {
    let http = if (400..500).contains(&status) {
        400
    } else {
        status
    };
    json_reply(
        conn,
        http,
        json!({ "statusCode": status.to_string(), "error": code, "message": message }),
    )
}

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or(""), 16)
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// Where the double keeps object `name` under its bucket directory. Names that are not file
/// paths (`a//x`, `/lead`, `dir/`, `x/../y`) are legal object names on the real server, so
/// the double keeps them too: an empty, `.` or `..` segment, or one starting with `%`, is
/// stored under a `%` form that [`object_name`] reverses.
pub fn disk_path(name: &str) -> String {
    name.split('/')
        .map(|s| match s {
            "" => "%empty".to_string(),
            "." => "%dot".to_string(),
            ".." => "%dotdot".to_string(),
            s if s.starts_with('%') => format!("%{s}"),
            s => s.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn object_name(rel: &str) -> String {
    rel.split('/')
        .map(|s| match s {
            "%empty" => "",
            "%dot" => ".",
            "%dotdot" => "..",
            s => s.strip_prefix('%').unwrap_or(s),
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn files(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        if e.path().is_dir() {
            files(&e.path(), &rel, out);
        } else {
            out.push((rel, e.path()));
        }
    }
}

fn object_json(st: &State, bucket: &str, name: &str, path: &Path) -> Value {
    let meta = std::fs::metadata(path).unwrap();
    let updated = meta
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let (ct, cc) = st
        .meta
        .lock()
        .unwrap()
        .get(&format!("{bucket}/{name}"))
        .cloned()
        .unwrap_or(("application/octet-stream".into(), "max-age=3600".into()));
    json!({
        "id": format!("{:x}", md5_like(name)),
        "name": name,
        "updated_at": format!("t{updated}"),
        "created_at": "2026-01-01T00:00:00Z",
        "metadata": { "size": meta.len(), "mimetype": ct, "cacheControl": cc, "eTag": format!("\"{}-{updated}\"", meta.len()) }
    })
}

fn md5_like(s: &str) -> u64 {
    s.bytes().fold(1469598103934665603u64, |h, b| {
        (h ^ b as u64).wrapping_mul(1099511628211)
    })
}

fn serve(conn: TcpStream, root: &Path, st: &State) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let req = read_request(&mut reader)?;
    let mut conn = conn;
    st.requests
        .lock()
        .unwrap()
        .push(format!("{} {}", req.method, req.path));
    // Supabase refuses a request without both headers carrying a valid key.
    let bearer = req
        .headers
        .get("authorization")
        .cloned()
        .unwrap_or_default();
    // Only `Authorization: Bearer` counts; the `apikey` header is ignored.
    if bearer.is_empty() {
        return error(
            &mut conn,
            400,
            "Error",
            "headers must have required property 'authorization'",
        );
    }
    if bearer == format!("Bearer {EXPIRED_KEY}") {
        return error(&mut conn, 403, "Unauthorized", "jwt expired");
    }
    if bearer != format!("Bearer {KEY}") {
        return error(
            &mut conn,
            403,
            "Unauthorized",
            "signature verification failed",
        );
    }
    let path = req.path.split('?').next().unwrap_or("").to_string();
    let Some(rest) = path.strip_prefix("/storage/v1/") else {
        return error(&mut conn, 404, "NotFound", "no such route");
    };
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    match (req.method.as_str(), rest) {
        ("GET", r) if r.starts_with("bucket/") => {
            let b = percent_decode(&r["bucket/".len()..]);
            if root.join(&b).is_dir() {
                json_reply(
                    &mut conn,
                    200,
                    json!({ "id": b, "name": b, "public": false }),
                )
            } else {
                error(&mut conn, 404, "Bucket not found", "Bucket not found")
            }
        }
        ("POST", "bucket") => {
            let id = body["id"].as_str().unwrap_or("").to_string();
            std::fs::create_dir_all(root.join(&id))?;
            json_reply(&mut conn, 200, json!({ "name": id }))
        }
        ("POST", r) if r.starts_with("object/list-v2/") => {
            if !st.list_v2.load(Ordering::SeqCst) {
                return error(
                    &mut conn,
                    400,
                    "FeatureNotEnabled",
                    "feature list_v2 is not enabled for this project",
                );
            }
            let b = percent_decode(&r["object/list-v2/".len()..]);
            let mut all = Vec::new();
            files(&root.join(&b), "", &mut all);
            let mut all: Vec<(String, PathBuf)> =
                all.into_iter().map(|(n, p)| (object_name(&n), p)).collect();
            all.sort();
            let after = body["cursor"]
                .as_str()
                .map(|c| String::from_utf8(hex::decode(c).unwrap()).unwrap());
            let rest: Vec<_> = all
                .into_iter()
                .filter(|(n, _)| after.as_ref().is_none_or(|a| n > a))
                .collect();
            let limit = body["limit"].as_u64().unwrap_or(1000).min(PAGE as u64) as usize;
            let page: Vec<_> = rest.iter().take(limit).collect();
            let has_next = rest.len() > limit;
            let objects: Vec<Value> = page
                .iter()
                .map(|(n, p)| object_json(st, &b, n, p))
                .collect();
            let mut v = json!({ "hasNext": has_next, "folders": [], "objects": objects });
            if has_next {
                v["nextCursor"] = json!(hex::encode(page.last().unwrap().0.as_bytes()));
            }
            json_reply(&mut conn, 200, v)
        }
        ("POST", r) if r.starts_with("object/list/") => {
            let b = percent_decode(&r["object/list/".len()..]);
            let prefix = body["prefix"]
                .as_str()
                .unwrap_or("")
                .trim_matches('/')
                .to_string();
            let dir = if prefix.is_empty() {
                root.join(&b)
            } else {
                root.join(&b).join(&prefix)
            };
            let mut entries: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| (e.file_name().to_string_lossy().to_string(), e.path()))
                .collect();
            entries.sort();
            let offset = body["offset"].as_u64().unwrap_or(0) as usize;
            let limit = body["limit"].as_u64().unwrap_or(100).min(PAGE as u64) as usize;
            let out: Vec<Value> = entries
                .iter()
                .skip(offset)
                .take(limit)
                .map(|(n, p)| {
                    if p.is_dir() {
                        json!({ "name": n, "id": null, "updated_at": null, "metadata": null })
                    } else {
                        let full = if prefix.is_empty() {
                            n.clone()
                        } else {
                            format!("{prefix}/{n}")
                        };
                        let mut v = object_json(st, &b, &full, p);
                        v["name"] = json!(n);
                        v
                    }
                })
                .collect();
            json_reply(&mut conn, 200, Value::Array(out))
        }
        ("GET", r) if r.starts_with("object/authenticated/") => {
            let (b, name) = r["object/authenticated/".len()..]
                .split_once('/')
                .unwrap_or(("", ""));
            let (b, name) = (percent_decode(b), percent_decode(name));
            let p = root.join(&b).join(disk_path(&name));
            let Ok(data) = std::fs::read(&p) else {
                return error(&mut conn, 404, "not_found", "Object not found");
            };
            let once = {
                let mut once = st.cut_once.lock().unwrap();
                let hit = once.iter().position(|n| n == &name);
                hit.map(|i| once.remove(i)).is_some()
            };
            if once || st.cut.lock().unwrap().contains(&name) {
                write!(conn, "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", data.len())?;
                conn.write_all(&data[..data.len() / 2])?;
                conn.flush()?;
                return conn.shutdown(std::net::Shutdown::Both);
            }
            let (ct, _) = st
                .meta
                .lock()
                .unwrap()
                .get(&format!("{b}/{name}"))
                .cloned()
                .unwrap_or(("application/octet-stream".into(), String::new()));
            respond(&mut conn, 200, &ct, &data)
        }
        ("POST", r) if r.starts_with("object/") => {
            let (b, name) = r["object/".len()..].split_once('/').unwrap_or(("", ""));
            let (b, name) = (percent_decode(b), percent_decode(name));
            let p = root.join(&b).join(disk_path(&name));
            let upsert = req.headers.get("x-upsert").is_some_and(|v| v == "true");
            if !root.join(&b).is_dir() {
                return error(&mut conn, 404, "Bucket not found", "Bucket not found");
            }
            if p.exists() && !upsert {
                return error(&mut conn, 409, "Duplicate", "The resource already exists");
            }
            std::fs::create_dir_all(p.parent().unwrap())?;
            std::fs::write(&p, &req.body)?;
            let ct = req.headers.get("content-type").cloned().unwrap_or_default();
            let cc = req
                .headers
                .get("cache-control")
                .cloned()
                .unwrap_or_default();
            st.meta
                .lock()
                .unwrap()
                .insert(format!("{b}/{name}"), (ct, cc));
            json_reply(&mut conn, 200, json!({ "Key": format!("{b}/{name}") }))
        }
        _ => error(&mut conn, 404, "NotFound", "no such route"),
    }
}
