//! The real server binary in its own process, on its own data directory and,
//! when the suites run on Postgres, its own database.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::postgres::test_database;
use super::raw::http;
use super::{Socket, PASSWORD};

/// How long a server process may take to answer `/healthz`.
const START_PATIENCE: Duration = Duration::from_secs(60);

pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub data: tempfile::TempDir,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server binary with the settings every test gives it: the repository's
/// `Leptos.toml`, `addr`, `data_dir`, warnings only; more through `env`.
/// Its log is dropped unless `TETHER_TEST_LOGS` is set (then it is the test's output).
pub fn server_command(addr: &str, data_dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_server"));
    command
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("LEPTOS_SITE_ADDR", addr)
        .env("TETHER_DATA_DIR", data_dir)
        .env("RUST_LOG", "warn")
        .env_remove("DATABASE_URL")
        .env_remove("TETHER_JWT_SECRET")
        .stdout(if std::env::var_os("TETHER_TEST_LOGS").is_some() { Stdio::inherit() } else { Stdio::null() })
        .stderr(Stdio::piped());
    command
}

/// A free port on 127.0.0.1 (bound and released).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

impl ServerProcess {
    /// Starts the binary with `vars` (a `DATABASE_URL` among them, or else the
    /// suites' backend) and waits until it answers `/healthz`.
    pub async fn start(vars: &[(&str, &str)]) -> ServerProcess {
        let database = match vars.iter().any(|(k, _)| *k == "DATABASE_URL") {
            true => None,
            false => test_database(),
        };
        let data = tempfile::tempdir().unwrap();
        let addr = free_addr();
        let mut command = server_command(&addr.to_string(), data.path());
        command.stderr(Stdio::inherit()).envs(vars.iter().copied());
        if let Some(url) = &database {
            command.env("DATABASE_URL", url);
        }
        let child = command.spawn().expect("the server binary starts");
        let server = ServerProcess { child, addr, data };
        server.wait_until_up().await;
        server
    }

    /// Waits (up to a minute) until the server answers `/healthz`.
    pub async fn wait_until_up(&self) {
        let deadline = Instant::now() + START_PATIENCE;
        while http(self.addr, "GET", "/healthz", None, None).await.map(|(status, _, _)| status) != Some(200) {
            assert!(Instant::now() < deadline, "the server answers /healthz within {START_PATIENCE:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Registers a user (password [`PASSWORD`]); returns the session cookie.
    pub async fn register(&self, email: &str) -> String {
        let body = json!({"email": email, "name": email, "password": PASSWORD});
        let (status, headers, body) = http(self.addr, "POST", "/api/auth/register", Some(&body), None).await.unwrap();
        assert_eq!(status, 201, "{body}");
        cookie_of(&headers)
    }

    /// SIGTERM, then waits (blocking: the server needs no help to stop) for
    /// the exit; whether it exited 0. The data directory stays.
    pub fn terminate(&mut self) -> bool {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        self.child.wait().unwrap().success()
    }

    /// Whether the process is still running (it did not panic or exit).
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

/// The `name=value` of the `Set-Cookie` line of a response head.
pub fn cookie_of(head: &str) -> String {
    let line = head.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).expect("a Set-Cookie header");
    line.split_once(':').unwrap().1.trim().split(';').next().unwrap().to_string()
}

/// A failed start: exit code 1, `expected` in the one `tether:` line on
/// stderr, and no panic.
pub fn assert_one_line_failure(output: &std::process::Output, expected: &str) {
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(expected), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.trim().lines().filter(|l| l.starts_with("tether:")).count(), 1, "{stderr}");
}

pub async fn get(server: &ServerProcess, path: &str, cookie: Option<&str>) -> (u16, Value) {
    let (status, _, body) = http(server.addr, "GET", path, None, cookie).await.expect("an answer");
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

pub async fn post(server: &ServerProcess, path: &str, body: Value, cookie: Option<&str>) -> (u16, String, Value) {
    let (status, head, body) = http(server.addr, "POST", path, Some(&body), cookie).await.expect("an answer");
    (status, head, serde_json::from_str(&body).unwrap_or(Value::Null))
}

pub async fn create_room(server: &ServerProcess, cookie: &str, name: &str) -> String {
    let (status, _, body) = post(server, "/api/rooms", json!({"name": name}), Some(cookie)).await;
    assert_eq!(status, 201, "{body}");
    body["room"]["code"].as_str().unwrap().to_string()
}

pub async fn send(socket: &mut Socket, room: &str, text: &str) -> Value {
    socket.request(json!({"type": "send", "room": room, "text": text})).await
}

