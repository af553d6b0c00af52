//! The Tether server: accounts, the bound WebSocket and its registry, rooms.
//!
//! Layers, bottom to top; a module imports only from layers below its own
//! (`../shared/tools/module-cycles` finds none):
//!
//! 1. Storage and shared types: [`db`], [`config`], [`error`], [`extract`],
//!    [`origin`], [`rate_limit`], [`telemetry`], and each feature's `store` (SQL only).
//! 2. [`registry`]: this node's live sockets by user, session, role and room,
//!    and rooms' presence. It knows nothing of HTTP, accounts or storage; its
//!    audiences are plain data ([`registry::Audience`]). Every frame a socket
//!    receives and every change of who it belongs to passes through it.
//! 3. [`bus`]: the seam to the other nodes. Everything that changes what a
//!    socket receives or who it belongs to passes through a [`bus::Bus`]:
//!    [`bus::local::LocalBus`] on one node (SQLite), [`bus::postgres::PgBus`]
//!    on a shared Postgres (LISTEN/NOTIFY). Deliveries are plain data.
//! 4. Features: [`auth`], [`rooms`], [`admin`], [`events`].
//! 5. Transport and routers: [`ws`] (the upgrade and the per-socket task),
//!    [`site`], [`connections`] (the accept loop), [`copy_db`] (the `copy-db`
//!    subcommand), and [`app`] / [`serve`] here.

pub mod admin;
pub mod auth;
pub mod bus;
pub mod config;
pub mod connections;
pub mod copy_db;
pub mod db;
pub mod error;
pub mod events;
pub mod extract;
pub mod origin;
pub mod rate_limit;
pub mod registry;
pub mod rooms;
pub mod site;
pub mod telemetry;
pub mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, FromRef};
use axum::routing::get;
use axum::{middleware, BoxError, Router};
use leptos::config::LeptosOptions;
use tether_protocol::MAX_BODY_BYTES;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::trace::TraceLayer;

use auth::sessions::SessionCache;
use auth::throttle::{LoginThrottle, SharedThrottle, Throttle};
use auth::token::Keys;
use config::Settings;
use connections::ConnectionLimits;
use error::ApiError;
use rate_limit::RateLimits;
use registry::Registry;

#[derive(Clone)]
pub struct AppState {
    pub db: db::Db,
    pub settings: Arc<Settings>,
    pub keys: Arc<Keys>,
    pub registry: Arc<Registry>,
    pub socket_timeouts: ws::SocketTimeouts,
    /// Everything that changes what sockets receive, on this node and the others.
    pub bus: Arc<dyn bus::Bus>,
    pub throttle: Arc<Throttle>,
    pub sessions: Arc<SessionCache>,
    /// Registration and room creation rates.
    pub rate_limits: Arc<RateLimits>,
    /// Open connections, counted by the accept loop ([`serve`]).
    pub connections: Arc<ConnectionLimits>,
    /// Verified against when a login names an unknown email.
    pub decoy_hash: Arc<str>,
    pub leptos: LeptosOptions,
}

impl FromRef<AppState> for LeptosOptions {
    fn from_ref(state: &AppState) -> Self {
        state.leptos.clone()
    }
}

/// Why the server could not start; printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("data directory {path} is not writable: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Database(#[from] db::DbError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start: {0}")]
    Other(String),
}

impl AppState {
    pub async fn new(settings: Settings) -> Result<AppState, StartupError> {
        let data_dir = settings.data_dir.clone();
        let data_dir_error = |source| StartupError::DataDir { path: data_dir.clone(), source };
        std::fs::create_dir_all(&data_dir).map_err(data_dir_error)?;
        let probe = data_dir.join(".write-test");
        std::fs::write(&probe, b"").and_then(|_| std::fs::remove_file(&probe)).map_err(data_dir_error)?;
        let timeouts = db::ConnectTimeouts {
            connect: settings.limits.database_connect_timeout,
            acquire: settings.limits.database_acquire_timeout,
        };
        let db = db::connect(&settings.database_url, timeouts).await?;
        // TETHER_JWT_SECRET wins; else every node of one Postgres shares the
        // first one stored there; else (SQLite) a file in the data directory.
        let secret = match settings.jwt_secret.as_deref() {
            Some(configured) => configured.as_bytes().to_vec(),
            None => match db::shared_secret(&db, &auth::token::generate_secret()).await {
                Ok(Some(shared)) => shared.into_bytes(),
                Ok(None) => auth::token::load_or_create_secret(&data_dir).map_err(data_dir_error)?,
                Err(e) => return Err(StartupError::Other(format!("DATABASE_URL: cannot read the shared JWT secret: {e}"))),
            },
        };
        // Installed before anything is counted.
        telemetry::handle();
        let decoy_hash = auth::password::decoy().await.map_err(|e| StartupError::Other(e.to_string()))?;
        let registry = Arc::new(Registry::new(settings.allow_guests, settings.limits.socket_queue_frames));
        // On a shared database another node may revoke a session at any
        // moment and its notification takes a while to arrive, so no node
        // trusts a cached session there: a logout ends the cookie on every
        // node at once (PROTOCOL.md "Users and sessions").
        let session_recheck = match &db {
            db::Db::Sqlite(_) => settings.limits.session_recheck,
            db::Db::Postgres(_) => Duration::ZERO,
        };
        let sessions = Arc::new(SessionCache::new(session_recheck));
        let on_invalidate: bus::InvalidationHook = {
            let (sessions, db, registry) = (sessions.clone(), db.clone(), registry.clone());
            Arc::new(move |stale: &bus::Invalidation| match stale {
                bus::Invalidation::Session(id) => sessions.forget(id),
                bus::Invalidation::User(id) => sessions.forget_user(id),
                bus::Invalidation::All => {
                    sessions.forget_all();
                    // Logouts and role changes may have been missed too.
                    let (db, registry) = (db.clone(), registry.clone());
                    tokio::spawn(async move { auth::recheck_bound_sessions(&db, &registry).await });
                }
            })
        };
        let bus: Arc<dyn bus::Bus> = match &db {
            db::Db::Sqlite(_) => Arc::new(bus::local::LocalBus::new(db.clone(), registry.clone(), on_invalidate)),
            db::Db::Postgres(pool) => Arc::new(
                bus::postgres::PgBus::start(pool.clone(), registry.clone(), on_invalidate)
                    .await
                    .map_err(|e| StartupError::Other(format!("DATABASE_URL: cannot join the cluster: {e}")))?,
            ),
        };
        let throttle = Arc::new(match &db {
            db::Db::Sqlite(_) => Throttle::Local(LoginThrottle::default()),
            db::Db::Postgres(pool) => Throttle::Shared(SharedThrottle::new(pool.clone())),
        });
        let rate_limits = Arc::new(match &db {
            db::Db::Sqlite(_) => RateLimits::new(&settings.limits),
            db::Db::Postgres(pool) => RateLimits::shared(&settings.limits, pool.clone()),
        });
        Ok(AppState {
            db,
            keys: Arc::new(Keys::new(&secret)),
            registry,
            bus,
            socket_timeouts: ws::SocketTimeouts::from_limits(&settings.limits),
            throttle,
            sessions,
            rate_limits,
            connections: Arc::new(ConnectionLimits::new(&settings)),
            decoy_hash: decoy_hash.into(),
            leptos: settings.leptos.clone(),
            settings: Arc::new(settings),
        })
    }
}

pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .merge(auth::router())
        .merge(rooms::router())
        .merge(admin::router())
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), origin::refuse_foreign_writes))
        // The whole request, its body included, within `request-timeout-secs`; else 408 in the error shape.
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: BoxError| async { ApiError::RequestTimeout }))
                .timeout(state.settings.limits.request_timeout),
        );
    Router::new()
        .nest("/api", api)
        .route("/ws", get(ws::upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .merge(site::router(&state))
        .route_layer(middleware::from_fn(telemetry::track_http))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves until SIGTERM or Ctrl-C, then stops accepting, closes every socket
/// with 1001 and lets in-flight requests finish. Connections are limited and
/// timed as [`config::Limits`] says (see [`connections`]).
pub async fn serve(listener: TcpListener, state: AppState) -> std::io::Result<()> {
    if let Some(addr) = state.settings.metrics_addr {
        telemetry::serve(addr).await?;
    }
    let registry = state.registry.clone();
    let bus = state.bus.clone();
    let close_sockets = async move {
        tracing::info!("shutting down");
        // Out of the cluster first: the other nodes stop counting this one's sockets.
        bus.shutdown().await;
        registry.close_all();
        // Give the sockets a moment to write their close frames.
        for _ in 0..40 {
            if registry.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let limits = state.settings.limits.clone();
    let connections = state.connections.clone();
    connections::serve(listener, app(state), connections, &limits, shutdown_signal(), close_sockets).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
