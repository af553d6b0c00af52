//! Postgres for the suites: a fresh database for each test on the cluster
//! `scripts/test` starts (`TETHER_TEST_POSTGRES`, an admin URL), so every
//! suite runs on both backends; and [`Cluster`], a test's own cluster
//! (through `scripts/pg`) for tests that stop and restart Postgres.

use std::path::Path;
use std::process::Command;

use sqlx::{Connection, Executor, PgConnection};

/// The variable `scripts/test` sets to run the suites against Postgres.
pub const TEST_POSTGRES: &str = "TETHER_TEST_POSTGRES";

/// The database a test server should use when the suites run on Postgres: a
/// new empty one on `TETHER_TEST_POSTGRES`; `None` (SQLite) when it is unset.
pub fn test_database() -> Option<String> {
    let admin = std::env::var(TEST_POSTGRES).ok().filter(|url| !url.is_empty())?;
    Some(create_database(&admin))
}

/// Creates a database named `t_<uuid>` on the server of `admin_url`; its URL.
/// Runs on its own thread, so it may be called from inside a Tokio runtime.
pub fn create_database(admin_url: &str) -> String {
    let admin = admin_url.to_string();
    std::thread::spawn(move || {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let mut connection = PgConnection::connect(&admin).await.unwrap_or_else(|e| panic!("{TEST_POSTGRES}={admin}: {e}"));
            connection.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
            let _ = connection.close().await;
        });
        database_url(&admin, &name)
    })
    .join()
    .unwrap()
}

/// `url` with its database name replaced by `name`.
pub fn database_url(url: &str, name: &str) -> String {
    let mut parsed = url::Url::parse(url).unwrap();
    parsed.set_path(&format!("/{name}"));
    parsed.to_string()
}

/// A throw-away Postgres cluster of one test, on a unix socket in a temporary
/// directory; stopped (and removed) on drop.
pub struct Cluster {
    dir: tempfile::TempDir,
    /// The admin URL (database `postgres`).
    pub url: String,
}

impl Cluster {
    /// Creates and starts a cluster (`scripts/pg start`, a second or two).
    pub fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        // The postgres user (initdb refuses root) must reach the directory inside.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
        let url = pg(dir.path(), "start");
        Cluster { dir, url }
    }

    /// Stops the server (fast shutdown: open connections are cut); the data stays.
    pub fn stop(&self) {
        pg(self.dir.path(), "stop");
    }

    /// Starts it again after [`Cluster::stop`].
    pub fn restart(&self) {
        pg(self.dir.path(), "start");
    }

    /// A new empty database on this cluster; its URL.
    pub fn database(&self) -> String {
        create_database(&self.url)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        pg(self.dir.path(), "stop");
    }
}

/// Runs `scripts/pg <command> <dir>/pg`; its output (the URL for `start`).
fn pg(dir: &Path, command: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pg");
    let output = Command::new(script).arg(command).arg(dir.join("pg")).output().expect("scripts/pg runs");
    assert!(
        output.status.success(),
        "scripts/pg {command} failed (Postgres is installed by scripts/setup): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// A fresh database: on the suites' cluster when there is one, else on a
/// cluster of this test's own (kept alive by the returned guard).
pub fn fresh_database() -> (Option<Cluster>, String) {
    match test_database() {
        Some(url) => (None, url),
        None => {
            let cluster = Cluster::start();
            let url = cluster.database();
            (Some(cluster), url)
        }
    }
}

