//! A real SMTP server on loopback: aiosmtpd from PyPI (installed beside moto by
//! scripts/test.sh), started on a free port with a handler that appends every accepted message
//! to a JSON-lines file, and AUTH LOGIN/PLAIN for one user. Stopped on drop.

use serde_json::Value;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "backstop";
pub const PASSWORD: &str = "smtp-pa$$word";

const SERVER: &str = r#"
import asyncio, json, sys
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

port, out = int(sys.argv[1]), sys.argv[2]
user, password = sys.argv[3].encode(), sys.argv[4].encode()

def authenticator(server, session, envelope, mechanism, data):
    ok = data.login == user and data.password == password
    return AuthResult(success=ok, auth_data=data.login if ok else None)

class Handler:
    async def handle_DATA(self, server, session, envelope):
        with open(out, "a") as f:
            f.write(json.dumps({
                "from": envelope.mail_from, "to": envelope.rcpt_tos,
                "login": (session.auth_data or b"").decode(),
                "data": envelope.content.decode("utf-8", "replace"),
            }) + "\n")
        return "250 OK"

c = Controller(Handler(), hostname="127.0.0.1", port=port, authenticator=authenticator,
               auth_require_tls=False)
c.start()
print("ready", flush=True)
sys.stdin.read()
c.stop()
"#;

pub struct Smtp {
    pub port: u16,
    out: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Smtp {
    pub fn start() -> Smtp {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("mail.jsonl");
        let port = super::pg::free_port();
        let python = super::s3::venv_python();
        let child = Command::new(&python)
            .args(["-c", SERVER, &port.to_string()])
            .arg(&out)
            .args([USER, PASSWORD])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting aiosmtpd with {}: {e}; run scripts/test.sh, which installs it",
                    python.display()
                )
            });
        let smtp = Smtp {
            port,
            out,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "aiosmtpd did not listen on port {port} within 30s (is it installed in the test \
                 servers' virtual environment? run scripts/test.sh)"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        smtp
    }

    /// `smtp://USER:PASSWORD@127.0.0.1:PORT`, the password percent-encoded.
    pub fn url(&self) -> String {
        format!(
            "smtp://{USER}:{}@127.0.0.1:{}",
            PASSWORD.replace('$', "%24"),
            self.port
        )
    }

    /// Every accepted message: `from`, `to`, `login` and `data` (headers and body).
    pub fn messages(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
