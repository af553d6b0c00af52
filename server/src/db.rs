//! The database: an SQLite file created on first start, migrated at every start.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("DATABASE_URL {0:?}: only sqlite:// is supported by this build (Postgres arrives with multi-node fan-out)")]
    Unsupported(String),
    #[error("cannot open database {url}: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("cannot migrate database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub async fn connect(url: &str) -> Result<SqlitePool, DbError> {
    if !url.starts_with("sqlite:") {
        return Err(DbError::Unsupported(url.to_string()));
    }
    let open_error = |source| DbError::Open { url: url.to_string(), source };
    let options = SqliteConnectOptions::from_str(url)
        .map_err(open_error)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new().max_connections(8).connect_with(options).await.map_err(open_error)?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
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
