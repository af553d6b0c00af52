use std::process::ExitCode;

use server::config::Settings;
use server::{AppState, StartupError};
use tracing_subscriber::EnvFilter;

/// Allocations from this size up are mapped and unmapped on their own. A
/// fixed threshold also stops glibc from raising it after the first free of
/// an argon2 buffer (19 MiB), which would keep every such buffer in the heap.
const MMAP_THRESHOLD_BYTES: i32 = 1 << 20;

fn main() -> ExitCode {
    // SAFETY: called once, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a Tokio runtime").block_on(serve())
}

async fn serve() -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
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
