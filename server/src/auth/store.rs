//! SQL for users, sessions and socket tickets.

use sqlx::SqlitePool;
use tether_protocol::{Role, User};

use crate::db::{now_rfc3339, now_unix};

#[derive(sqlx::FromRow)]
struct UserRow {
    id: String,
    email: String,
    name: String,
    role: String,
}

impl From<UserRow> for User {
    fn from(row: UserRow) -> User {
        User { id: row.id, email: row.email, name: row.name, role: Role::parse(&row.role).unwrap_or(Role::User) }
    }
}

/// A user with the stored password hash, for login only.
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
}

/// A live (unrevoked, unexpired) session and its user as stored now.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub user: User,
    /// Unix seconds.
    pub expires_at: i64,
}

pub enum Inserted {
    Created(User),
    EmailTaken,
}

pub async fn insert_user(db: &SqlitePool, email: &str, name: &str, password_hash: &str, role: Role) -> sqlx::Result<Inserted> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let result = sqlx::query(
        "INSERT INTO users (id, email, email_key, name, password_hash, role, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (email_key) DO NOTHING",
    )
    .bind(&id)
    .bind(email)
    .bind(email.to_lowercase())
    .bind(name)
    .bind(password_hash)
    .bind(role.as_str())
    .bind(now_rfc3339())
    .execute(db)
    .await?;
    if result.rows_affected() == 0 {
        return Ok(Inserted::EmailTaken);
    }
    Ok(Inserted::Created(User { id, email: email.to_string(), name: name.to_string(), role }))
}

pub async fn credentials_by_email(db: &SqlitePool, email: &str) -> sqlx::Result<Option<Credentials>> {
    let row: Option<(String, String, String, String, String)> =
        sqlx::query_as("SELECT id, email, name, role, password_hash FROM users WHERE email_key = ?")
            .bind(email.to_lowercase())
            .fetch_optional(db)
            .await?;
    Ok(row.map(|(id, email, name, role, password_hash)| Credentials {
        user: UserRow { id, email, name, role }.into(),
        password_hash,
    }))
}

pub async fn user_by_id(db: &SqlitePool, id: &str) -> sqlx::Result<Option<User>> {
    let row: Option<UserRow> = sqlx::query_as("SELECT id, email, name, role FROM users WHERE id = ?")
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(row.map(User::from))
}

/// Stores a role; `None` when there is no such user.
pub async fn set_role(db: &SqlitePool, id: &str, role: Role) -> sqlx::Result<Option<User>> {
    sqlx::query("UPDATE users SET role = ? WHERE id = ?").bind(role.as_str()).bind(id).execute(db).await?;
    user_by_id(db, id).await
}

pub async fn insert_session(db: &SqlitePool, user_id: &str, expires_at: i64) -> sqlx::Result<String> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    sqlx::query("INSERT INTO sessions (id, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)")
        .bind(&id)
        .bind(user_id)
        .bind(now_rfc3339())
        .bind(expires_at)
        .execute(db)
        .await?;
    Ok(id)
}

/// The session if it is neither revoked nor expired, with its user as stored now.
pub async fn live_session(db: &SqlitePool, session_id: &str) -> sqlx::Result<Option<Session>> {
    let row: Option<(String, i64, String, String, String, String)> = sqlx::query_as(
        "SELECT s.id, s.expires_at, u.id, u.email, u.name, u.role
         FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE s.id = ? AND s.revoked_at IS NULL AND s.expires_at > ?",
    )
    .bind(session_id)
    .bind(now_unix())
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(sid, expires_at, id, email, name, role)| Session {
        id: sid,
        user: UserRow { id, email, name, role }.into(),
        expires_at,
    }))
}

pub async fn revoke_session(db: &SqlitePool, session_id: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
        .bind(now_rfc3339())
        .bind(session_id)
        .execute(db)
        .await?;
    Ok(())
}

/// Revokes every live session of a user; returns their ids and expiry times.
pub async fn revoke_user_sessions(db: &SqlitePool, user_id: &str) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as(
        "UPDATE sessions SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL RETURNING id, expires_at",
    )
    .bind(now_rfc3339())
    .bind(user_id)
    .fetch_all(db)
    .await
}

pub async fn insert_ticket(db: &SqlitePool, ticket: &str, session_id: &str, expires_at: i64) -> sqlx::Result<()> {
    // Spent and stale tickets are swept as new ones are issued.
    sqlx::query("DELETE FROM socket_tickets WHERE expires_at <= ?").bind(now_unix()).execute(db).await?;
    sqlx::query("INSERT INTO socket_tickets (ticket, session_id, expires_at) VALUES (?, ?, ?)")
        .bind(ticket)
        .bind(session_id)
        .bind(expires_at)
        .execute(db)
        .await?;
    Ok(())
}

/// Spends a ticket: deleting and reading it is one statement, so of two
/// sockets racing for the same ticket exactly one gets the session id.
pub async fn take_ticket(db: &SqlitePool, ticket: &str) -> sqlx::Result<Option<String>> {
    let row: Option<(String, i64)> =
        sqlx::query_as("DELETE FROM socket_tickets WHERE ticket = ? RETURNING session_id, expires_at")
            .bind(ticket)
            .fetch_optional(db)
            .await?;
    Ok(row.and_then(|(session_id, expires_at)| (expires_at > now_unix()).then_some(session_id)))
}
