//! Starting a release build of the server with its own temporary database.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::http;

pub struct ServerProcess {
    child: Child,
    data_dir: PathBuf,
    log: PathBuf,
    pub pid: u32,
    pub addr: SocketAddr,
    /// How it was started, as one shell line.
    pub command: String,
}

/// A free port on 127.0.0.1 (bound and released).
fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl ServerProcess {
    /// Starts `bin` with cwd `root` (where Leptos.toml is), optionally pinned to `cpu`.
    pub fn start(bin: &Path, root: &Path, cpu: Option<usize>) -> io::Result<ServerProcess> {
        if !bin.exists() {
            return Err(io::Error::other(format!("{} not found: run `cargo build --release -p server`", bin.display())));
        }
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let data_dir = std::env::temp_dir().join(format!("tether-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&data_dir)?;
        let log = data_dir.join("server.log");
        let log_file = std::fs::File::create(&log)?;
        let mut command = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        command
            .current_dir(root)
            .env("TETHER_DATA_DIR", &data_dir)
            .env("LEPTOS_SITE_ADDR", addr.to_string())
            .env("RUST_LOG", "warn")
            // The benchmarks open up to 10,000 sockets per source address and
            // register hundreds of users from 127.0.0.1: far past the per-client
            // limits a public server wants (Leptos.toml), so they are raised here.
            .env("TETHER_MAX_CONNECTIONS", "1000000")
            .env("TETHER_MAX_CONNECTIONS_PER_ADDRESS", "1000000")
            .env("TETHER_REGISTRATIONS_PER_MINUTE", "1000000")
            .env("TETHER_ROOMS_PER_MINUTE_PER_ADDRESS", "1000000")
            .env("TETHER_ROOMS_PER_MINUTE_PER_USER", "1000000")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let child = command.spawn()?;
        let shown_bin = bin.strip_prefix(root).unwrap_or(bin).display().to_string();
        // DATABASE_URL is inherited: scripts/bench sets it for a throw-away Postgres.
        let database = match std::env::var("DATABASE_URL") {
            Ok(url) if url.starts_with("postgres") => "DATABASE_URL=<throw-away Postgres (scripts/pg)> ",
            _ => "",
        };
        let line = format!(
            "{database}TETHER_DATA_DIR=<fresh tmp dir> LEPTOS_SITE_ADDR={addr} RUST_LOG=warn TETHER_MAX_CONNECTIONS=1000000 \
             TETHER_MAX_CONNECTIONS_PER_ADDRESS=1000000 TETHER_REGISTRATIONS_PER_MINUTE=1000000 \
             TETHER_ROOMS_PER_MINUTE_PER_ADDRESS=1000000 TETHER_ROOMS_PER_MINUTE_PER_USER=1000000 {}{shown_bin}",
            cpu.map(|c| format!("taskset -c {c} ")).unwrap_or_default()
        );
        Ok(ServerProcess { pid: child.id(), child, data_dir, log, addr, command: line })
    }

    pub async fn wait_ready(&mut self, patience: Duration) -> io::Result<()> {
        let started = Instant::now();
        while started.elapsed() < patience {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                return Err(io::Error::other(format!("server exited with {status}: {log}")));
            }
            if http::healthy(self.addr).await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(io::Error::other("server did not answer /healthz"))
    }

    /// Lines of the server's log mentioning evicted slow sockets.
    pub fn evictions(&self) -> usize {
        std::fs::read_to_string(&self.log).unwrap_or_default().lines().filter(|l| l.contains("dropping slow socket")).count()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, then SIGKILL after 5 s; removes the data directory.
    pub fn stop(mut self) {
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}
