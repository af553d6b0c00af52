//! The database: the embedded SQLite file (the default) or a Postgres server
//! that several nodes share (`DATABASE_URL=postgres://...`).
//!
//! Every difference between the two dialects lives in this module: how to
//! connect (and retry), the migrations (`migrations/sqlite`, `migrations/postgres`),
//! which errors mean "the database is unreachable", where a generated secret is
//! kept, and the few statements that differ. Everywhere else one statement
//! serves both: the stores write `$1, $2...` placeholders (SQLite reads `$NNN`
//! as the NNN-th argument too) and run it through [`with_pool!`].
//! Timestamps are stored as fixed-width RFC 3339 text and ids as text or
//! 64-bit integers on both, so the contract's shapes come out the same.

use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, PgPool, SqlitePool};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A pool on one of the two backends. Cheap to clone (the pools are shared).
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs one body against whichever pool a [`Db`] holds: the body is compiled
/// once per backend, so a statement written once serves both.
///
/// ```ignore
/// let n: i64 = with_pool!(db, |pool| sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(pool).await)?;
/// ```
#[macro_export]
macro_rules! with_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($pool) => $body,
            $crate::db::Db::Postgres($pool) => $body,
        }
    };
}
pub use with_pool;

/// How the server waits for its database at start-up and while serving.
#[derive(Debug, Clone, Copy)]
pub struct ConnectTimeouts {
    /// `database-connect-timeout-secs`: how long start-up retries an unreachable
    /// Postgres before it gives up (issue 11: 30 s).
    pub connect: Duration,
    /// `database-acquire-timeout-secs`: how long a request waits for a
    /// connection before it is answered 503 `unavailable`.
    pub acquire: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("DATABASE_URL {0:?}: not sqlite://... or postgres://...")]
    Unsupported(String),
    #[error("DATABASE_URL {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("DATABASE_URL {url}: cannot open the database: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("DATABASE_URL {url}: Postgres unreachable for {waited_secs} s ({attempts} attempts), last: {source}")]
    Unreachable { url: String, waited_secs: u64, attempts: u32, source: sqlx::Error },
    #[error("DATABASE_URL {url}: cannot migrate the database: {source}")]
    Migrate { url: String, source: sqlx::migrate::MigrateError },
}

/// Most connections one node holds open to Postgres.
const POSTGRES_POOL_SIZE: u32 = 16;
/// SQLite serialises writers anyway; a few readers run beside them (WAL).
const SQLITE_POOL_SIZE: u32 = 8;

/// Opens (creating an SQLite file if needed) and migrates the database.
///
/// SQLite: `sqlite://path`. Postgres: `postgres://user:pass@host:port/db` or the
/// unix-socket form `postgres:///db?host=/dir`. An unreachable Postgres is
/// retried with doubling delays (logged, one warning an attempt) for
/// `timeouts.connect`; a refused login or a missing database fails at once.
pub async fn connect(url: &str, timeouts: ConnectTimeouts) -> Result<Db, DbError> {
    if url.starts_with("sqlite:") {
        return connect_sqlite(url, timeouts).await.map(Db::Sqlite);
    }
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        return connect_postgres(url, timeouts).await.map(Db::Postgres);
    }
    Err(DbError::Unsupported(redact(url)))
}

async fn connect_sqlite(url: &str, timeouts: ConnectTimeouts) -> Result<SqlitePool, DbError> {
    let open_error = |source| DbError::Open { url: url.to_string(), source };
    let options = SqliteConnectOptions::from_str(url)
        .map_err(open_error)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(SQLITE_POOL_SIZE)
        .acquire_timeout(timeouts.acquire)
        .connect_with(options)
        .await
        .map_err(open_error)?;
    sqlx::migrate!("./migrations/sqlite")
        .run(&pool)
        .await
        .map_err(|source| DbError::Migrate { url: url.to_string(), source })?;
    Ok(pool)
}

async fn connect_postgres(url: &str, timeouts: ConnectTimeouts) -> Result<PgPool, DbError> {
    let shown = redact(url);
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| DbError::Url { url: shown.clone(), reason: e.to_string() })?
        .application_name("tether");
    // One probe connection first, so that start-up can tell "not there yet"
    // (retried) from "will never work" (a refused login, a missing database).
    let started = Instant::now();
    let mut delay = Duration::from_millis(250);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match options.connect().await {
            Ok(probe) => {
                let _ = probe.close().await;
                break;
            }
            Err(error) if is_unavailable(&error) => {
                let waited = started.elapsed();
                if waited >= timeouts.connect {
                    return Err(DbError::Unreachable { url: shown, waited_secs: waited.as_secs(), attempts, source: error });
                }
                let wait = delay.min(timeouts.connect - waited);
                tracing::warn!(attempt = attempts, %error, "DATABASE_URL {shown}: Postgres unreachable; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(source) => return Err(DbError::Open { url: shown, source }),
        }
    }
    let pool = PgPoolOptions::new()
        .max_connections(POSTGRES_POOL_SIZE)
        .acquire_timeout(timeouts.acquire)
        .connect_lazy_with(options);
    // Nodes that start together race to migrate; sqlx takes an advisory lock
    // around it, so one migrates and the others then see it done.
    sqlx::migrate!("./migrations/postgres")
        .run(&pool)
        .await
        .map_err(|source| DbError::Migrate { url: shown, source })?;
    Ok(pool)
}

/// Whether an error means the database cannot be reached now (answer 503
/// `unavailable` and let the pool reconnect), rather than a fault in the request.
/// Postgres SQLSTATE classes: 08 connection exception, 57P01..57P03 shutdown
/// or start-up in progress, 53300 too many connections.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => true,
        sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(e) => {
            let code = e.code().unwrap_or_default();
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
        }
        _ => false,
    }
}

/// A database URL fit for a log line: its password replaced by `***`.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// The signing secret shared by every node of a Postgres database: the first
/// node to start stores `candidate`, every node (that one included) reads back
/// whichever was stored first. `None` on SQLite, whose secret is a file in the
/// data directory (../shared/PROTOCOL.md "Settings").
pub async fn shared_secret(db: &Db, candidate: &str) -> sqlx::Result<Option<String>> {
    let Db::Postgres(pool) = db else { return Ok(None) };
    sqlx::query("INSERT INTO server_secrets (name, value) VALUES ('jwt', $1) ON CONFLICT (name) DO NOTHING")
        .bind(candidate)
        .execute(pool)
        .await?;
    sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = 'jwt'").fetch_one(pool).await.map(Some)
}

/// RFC 3339 in UTC with exactly three fraction digits (`2026-01-02T03:04:05.678Z`):
/// fixed width, so stored timestamps sort as text in time order.
const RFC3339_MS: &[time::format_description::FormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// Now, truncated to the millisecond (the precision of every stored timestamp).
pub fn now_ms() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_millisecond(now.millisecond()).expect("a valid millisecond")
}

/// A UTC instant as a fixed-width RFC 3339 timestamp (see [`RFC3339_MS`]).
pub fn format_rfc3339(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC).format(RFC3339_MS).expect("every UTC time formats")
}

/// Reads a stored RFC 3339 timestamp.
pub fn parse_rfc3339(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

/// Now as an RFC 3339 UTC timestamp with millisecond precision.
pub fn now_rfc3339() -> String {
    format_rfc3339(now_ms())
}

pub fn now_unix() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_never_reaches_a_log_line() {
        assert_eq!(redact("postgres://tether:hunter2@db:5432/tether"), "postgres://tether:***@db:5432/tether");
        assert_eq!(redact("postgres:///tether?host=/run/pg"), "postgres:///tether?host=/run/pg");
        assert_eq!(redact("sqlite://data/tether.db"), "sqlite://data/tether.db");
    }

    #[test]
    fn connection_failures_are_unavailable_and_request_faults_are_not() {
        let refused = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(is_unavailable(&refused));
        assert!(is_unavailable(&sqlx::Error::PoolTimedOut));
        assert!(!is_unavailable(&sqlx::Error::RowNotFound));
        assert!(!is_unavailable(&sqlx::Error::ColumnNotFound("x".into())));
    }
}
