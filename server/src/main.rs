use std::process::ExitCode;

use server::config::Settings;
use server::{AppState, StartupError};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
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
