use std::process::ExitCode;
use std::time::Duration;

use server::config::Settings;
use server::{AppState, StartupError};
use tracing_subscriber::EnvFilter;

/// Allocations from this size up are mapped and unmapped on their own. A
/// fixed threshold also stops glibc from raising it after the first free of
/// an argon2 buffer (19 MiB), which would keep every such buffer in the heap.
const MMAP_THRESHOLD_BYTES: i32 = 1 << 20;

const USAGE: &str = "\
Tether server: serves the site, the HTTP API and /ws.

Usage: server [--help | --version]
       server copy-db --from sqlite://FILE --to postgres://URL [--secret-file PATH]

copy-db copies users, sessions, rooms and messages from an SQLite file into an
empty Postgres database (migrated first), in one transaction, with the JWT
secret kept beside the file (or PATH), so accounts, cookies and history carry
over. It refuses a target that holds any of them.

Settings come from the [tether] and [package.metadata.leptos] tables of the
settings file (TETHER_CONFIG, default Leptos.toml in the working directory);
each one is overridden by its environment variable. With none set the server
runs on an SQLite file and a generated secret in ./data, guests allowed.
";

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("-h" | "--help") => {
            print!("{USAGE}");
            println!("\nSettings (variable: where its value comes from now):");
            let path = std::env::var("TETHER_CONFIG").unwrap_or_else(|_| "Leptos.toml".into());
            for (variable, meaning) in server::config::SETTINGS {
                let source = if std::env::var_os(variable).is_some() { "environment".to_string() } else { path.clone() };
                println!("  {variable:<36} {meaning} [{source}]");
            }
            return ExitCode::SUCCESS;
        }
        Some("copy-db") => return runtime().block_on(copy_db(std::env::args().skip(2).collect())),
        Some("-V" | "--version") => {
            println!("server {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("tether: unknown argument {other:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    // SAFETY: called once, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
    }
    runtime().block_on(serve())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a Tokio runtime")
}

/// `server copy-db --from ... --to ... [--secret-file ...]`: exit 0 with the
/// counts, 1 when the copy failed (nothing written), 2 on bad arguments.
async fn copy_db(args: Vec<String>) -> ExitCode {
    tracing_subscriber::fmt().with_env_filter(EnvFilter::new("warn")).with_writer(std::io::stderr).init();
    let (mut from, mut to, mut secret_file) = (None, None, None);
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let slot = match flag.as_str() {
            "--from" => &mut from,
            "--to" => &mut to,
            "--secret-file" => &mut secret_file,
            _ => {
                eprintln!("tether copy-db: unknown argument {flag:?}\n\n{USAGE}");
                return ExitCode::from(2);
            }
        };
        *slot = args.next();
    }
    let (Some(from), Some(to)) = (from, to) else {
        eprintln!("tether copy-db: --from and --to are required\n\n{USAGE}");
        return ExitCode::from(2);
    };
    // A one-off command: no settings file needed; Postgres gets the start-up
    // default of 30 s to appear.
    let timeouts = server::db::ConnectTimeouts { connect: Duration::from_secs(30), acquire: Duration::from_secs(30) };
    match server::copy_db::copy_db(&from, &to, secret_file.as_deref().map(std::path::Path::new), timeouts).await {
        Ok(report) => {
            println!(
                "copied {} users, {} sessions, {} rooms, {} messages to {}",
                report.users,
                report.sessions,
                report.rooms,
                report.messages,
                server::db::redact(&to)
            );
            match report.secret_file {
                Some(path) => println!("JWT secret: copied from {} (cookies stay valid)", path.display()),
                None => println!("JWT secret: none beside the SQLite file; keep TETHER_JWT_SECRET, or users log in again"),
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tether copy-db: {error}");
            ExitCode::from(1)
        }
    }
}

async fn serve() -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    // Read before the settings themselves, so that their errors are logged in the chosen format.
    if std::env::var("TETHER_LOG_FORMAT").as_deref() == Ok("json") {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        // Colours only for a person at a terminal, not in a file or a pipe.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
        tracing_subscriber::fmt().with_ansi(ansi).with_env_filter(filter).init();
    }
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tether: {error}");
            ExitCode::from(1)
        }
    }
}

async fn run() -> Result<(), StartupError> {
    let settings = Settings::from_env()?;
    let addr = settings.site_addr();
    let state = AppState::new(settings).await?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| StartupError::Bind { addr, source })?;
    tracing::info!("listening on http://{addr}");
    server::serve(listener, state).await.map_err(|e| StartupError::Other(e.to_string()))
}
