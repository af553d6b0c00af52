//! `server copy-db`: moves an embedded SQLite deployment onto Postgres
//! (issue 11), so nobody loses an account, a session or a message.
//!
//! Users, sessions, rooms and messages are copied with their ids, `seq` and
//! timestamps, in one Postgres transaction that holds the tables locked: the
//! target ends either complete or untouched. Socket tickets are not copied
//! (they live 30 s). The SQLite data directory's generated JWT secret goes to
//! the shared secret table, so the copied sessions' cookies stay valid.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use futures_util::TryStreamExt;
use sqlx::query_builder::Separated;
use sqlx::sqlite::{SqliteConnectOptions, SqliteRow};
use sqlx::{PgConnection, Postgres, QueryBuilder, SqlitePool};

use crate::auth::token::SECRET_FILE;
use crate::db::{self, ConnectTimeouts, Db, DbError};

/// Rows sent in one INSERT (7 columns a message: far below Postgres's 65,535 binds).
const BATCH_ROWS: usize = 1000;

/// What `copy-db` copied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    pub users: u64,
    pub sessions: u64,
    pub rooms: u64,
    pub messages: u64,
    /// The secret file carried over, when there was one.
    pub secret_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("--from must be an sqlite:// URL and --to a postgres:// URL")]
    Backends,
    #[error("--from {0}: no such SQLite file")]
    MissingSource(String),
    #[error("--to {url}: the database is not empty ({rows} users, sessions, rooms and messages); copy-db only fills an empty one")]
    NotEmpty { url: String, rows: i64 },
    #[error(transparent)]
    Database(#[from] DbError),
    #[error("copying: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("reading the JWT secret {path}: {source}")]
    Secret { path: PathBuf, source: std::io::Error },
}

/// Copies everything from the SQLite database `from` into the empty Postgres
/// database `to` (both migrated first). The secret is read from `secret_file`,
/// else from `jwt_secret` beside the SQLite file (where the server keeps it
/// when `DATABASE_URL` is unset); a missing file is no error, since a
/// deployment with `TETHER_JWT_SECRET` set has none.
pub async fn copy_db(from: &str, to: &str, secret_file: Option<&Path>, timeouts: ConnectTimeouts) -> Result<CopyReport, CopyError> {
    if !from.starts_with("sqlite:") || !(to.starts_with("postgres:") || to.starts_with("postgresql:")) {
        return Err(CopyError::Backends);
    }
    let source_file = SqliteConnectOptions::from_str(from)
        .map_err(|source| DbError::Open { url: from.to_string(), source })?
        .get_filename()
        .to_path_buf();
    if !source_file.is_file() {
        return Err(CopyError::MissingSource(from.to_string()));
    }
    let secret_path = match secret_file {
        Some(path) => path.to_path_buf(),
        None => source_file.parent().unwrap_or(Path::new(".")).join(SECRET_FILE),
    };
    let secret = match std::fs::read_to_string(&secret_path) {
        Ok(text) => Some(text.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && secret_file.is_none() => None,
        Err(source) => return Err(CopyError::Secret { path: secret_path, source }),
    };
    let (Db::Sqlite(source), Db::Postgres(target)) = (db::connect(from, timeouts).await?, db::connect(to, timeouts).await?) else {
        unreachable!("the URL schemes were checked above");
    };
    let mut tx = target.begin().await?;
    // Nothing else writes (or reads half a copy) until the commit.
    sqlx::query("LOCK TABLE users, sessions, rooms, messages IN ACCESS EXCLUSIVE MODE").execute(&mut *tx).await?;
    let rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM users) + (SELECT COUNT(*) FROM sessions)
              + (SELECT COUNT(*) FROM rooms) + (SELECT COUNT(*) FROM messages)",
    )
    .fetch_one(&mut *tx)
    .await?;
    if rows > 0 {
        return Err(CopyError::NotEmpty { url: db::redact(to), rows });
    }
    let mut report = CopyReport::default();
    report.users = copy_rows(
        &source,
        &mut tx,
        "SELECT id, email, email_key, name, password_hash, role, created_at FROM users ORDER BY created_at, id",
        "INSERT INTO users (id, email, email_key, name, password_hash, role, created_at) ",
        |mut row, (id, email, email_key, name, hash, role, created_at): (String, String, String, String, String, String, String)| {
            row.push_bind(id).push_bind(email).push_bind(email_key).push_bind(name);
            row.push_bind(hash).push_bind(role).push_bind(created_at);
        },
    )
    .await?;
    report.sessions = copy_rows(
        &source,
        &mut tx,
        "SELECT id, user_id, created_at, expires_at, revoked_at FROM sessions ORDER BY created_at, id",
        "INSERT INTO sessions (id, user_id, created_at, expires_at, revoked_at) ",
        |mut row, (id, user_id, created_at, expires_at, revoked_at): (String, String, String, i64, Option<String>)| {
            row.push_bind(id).push_bind(user_id).push_bind(created_at).push_bind(expires_at).push_bind(revoked_at);
        },
    )
    .await?;
    report.rooms = copy_rows(
        &source,
        &mut tx,
        "SELECT code, name, created_by, created_at FROM rooms ORDER BY created_at, code",
        "INSERT INTO rooms (code, name, created_by, created_at) ",
        |mut row, (code, name, created_by, created_at): (String, String, String, String)| {
            row.push_bind(code).push_bind(name).push_bind(created_by).push_bind(created_at);
        },
    )
    .await?;
    report.messages = copy_rows(
        &source,
        &mut tx,
        "SELECT id, room_code, seq, sender_id, sender_name, text, created_at FROM messages ORDER BY id",
        "INSERT INTO messages (id, room_code, seq, sender_id, sender_name, text, created_at) ",
        |mut row, (id, room, seq, sender_id, sender_name, text, at): (i64, String, i64, Option<String>, String, String, String)| {
            row.push_bind(id).push_bind(room).push_bind(seq).push_bind(sender_id);
            row.push_bind(sender_name).push_bind(text).push_bind(at);
        },
    )
    .await?;
    // The ids were given explicitly: new messages continue after them.
    sqlx::query("SELECT setval(pg_get_serial_sequence('messages', 'id'), GREATEST((SELECT MAX(id) FROM messages), 1))")
        .execute(&mut *tx)
        .await?;
    if let Some(secret) = &secret {
        store_shared_secret(&mut tx, secret).await?;
        report.secret_file = Some(secret_path);
    }
    tx.commit().await?;
    source.close().await;
    target.close().await;
    Ok(report)
}

/// Streams the rows of `select` from SQLite into Postgres in INSERTs of
/// [`BATCH_ROWS`]; `insert` is the statement up to `VALUES`, `bind` pushes one
/// row's values in its column order. Returns the rows copied.
async fn copy_rows<R, F>(source: &SqlitePool, target: &mut PgConnection, select: &str, insert: &'static str, mut bind: F) -> sqlx::Result<u64>
where
    R: for<'r> sqlx::FromRow<'r, SqliteRow> + Send + Unpin,
    F: for<'qb, 'args> FnMut(Separated<'qb, 'args, Postgres, &'static str>, R),
{
    let mut rows = sqlx::query_as::<_, R>(select).fetch(source);
    let mut batch = Vec::with_capacity(BATCH_ROWS);
    let mut copied = 0;
    loop {
        let row = rows.try_next().await?;
        let done = row.is_none();
        batch.extend(row);
        if batch.len() == BATCH_ROWS || (done && !batch.is_empty()) {
            copied += batch.len() as u64;
            let mut query = QueryBuilder::<Postgres>::new(insert);
            query.push_values(batch.drain(..), &mut bind);
            query.build().execute(&mut *target).await?;
        }
        if done {
            return Ok(copied);
        }
    }
}

/// Replaces the shared secret every node of the target reads at start-up
/// (a node already running there keeps its old one until restarted).
async fn store_shared_secret(target: &mut PgConnection, secret: &str) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO server_secrets (name, value) VALUES ('jwt', $1) ON CONFLICT (name) DO UPDATE SET value = $1")
        .bind(secret)
        .execute(target)
        .await?;
    Ok(())
}
