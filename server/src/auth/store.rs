//! SQL for users, sessions and socket tickets.

use tether_protocol::{Role, User};

use crate::db::{with_pool, Db};
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

pub async fn insert_user(db: &Db, email: &str, name: &str, password_hash: &str, role: Role) -> sqlx::Result<Inserted> {
    with_pool!(db, |pool| {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let result = sqlx::query(
            "INSERT INTO users (id, email, email_key, name, password_hash, role, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (email_key) DO NOTHING",
        )
        .bind(&id)
        .bind(email)
        .bind(email.to_lowercase())
        .bind(name)
        .bind(password_hash)
        .bind(role.as_str())
        .bind(now_rfc3339())
        .execute(pool)
        .await?;
        if result.rows_affected() == 0 {
            return Ok(Inserted::EmailTaken);
        }
        Ok(Inserted::Created(User { id, email: email.to_string(), name: name.to_string(), role }))
    })
}

pub async fn credentials_by_email(db: &Db, email: &str) -> sqlx::Result<Option<Credentials>> {
    with_pool!(db, |pool| {
        let row: Option<(String, String, String, String, String)> =
            sqlx::query_as("SELECT id, email, name, role, password_hash FROM users WHERE email_key = $1")
                .bind(email.to_lowercase())
                .fetch_optional(pool)
                .await?;
        Ok(row.map(|(id, email, name, role, password_hash)| Credentials {
            user: UserRow { id, email, name, role }.into(),
            password_hash,
        }))
    })
}

pub async fn user_by_id(db: &Db, id: &str) -> sqlx::Result<Option<User>> {
    with_pool!(db, |pool| {
        let row: Option<UserRow> = sqlx::query_as("SELECT id, email, name, role FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
        Ok(row.map(User::from))
    })
}

/// Stores a role; `None` when there is no such user.
pub async fn set_role(db: &Db, id: &str, role: Role) -> sqlx::Result<Option<User>> {
    with_pool!(db, |pool| {
        sqlx::query("UPDATE users SET role = $1 WHERE id = $2").bind(role.as_str()).bind(id).execute(pool).await?;
    });
    user_by_id(db, id).await
}

pub async fn insert_session(db: &Db, user_id: &str, expires_at: i64) -> sqlx::Result<String> {
    with_pool!(db, |pool| {
        let id = uuid::Uuid::new_v4().simple().to_string();
        sqlx::query("INSERT INTO sessions (id, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(&id)
            .bind(user_id)
            .bind(now_rfc3339())
            .bind(expires_at)
            .execute(pool)
            .await?;
        Ok(id)
    })
}

/// The session if it is neither revoked nor expired, with its user as stored now.
pub async fn live_session(db: &Db, session_id: &str) -> sqlx::Result<Option<Session>> {
    with_pool!(db, |pool| {
        let row: Option<(String, i64, String, String, String, String)> = sqlx::query_as(
            "SELECT s.id, s.expires_at, u.id, u.email, u.name, u.role
             FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.id = $1 AND s.revoked_at IS NULL AND s.expires_at > $2",
        )
        .bind(session_id)
        .bind(now_unix())
        .fetch_optional(pool)
        .await?;
        Ok(row.map(|(sid, expires_at, id, email, name, role)| Session {
            id: sid,
            user: UserRow { id, email, name, role }.into(),
            expires_at,
        }))
    })
}

pub async fn revoke_session(db: &Db, session_id: &str) -> sqlx::Result<()> {
    with_pool!(db, |pool| {
        sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now_rfc3339())
            .bind(session_id)
            .execute(pool)
            .await?;
        Ok(())
    })
}

/// Revokes every live session of a user; returns their ids and expiry times.
pub async fn revoke_user_sessions(db: &Db, user_id: &str) -> sqlx::Result<Vec<(String, i64)>> {
    with_pool!(db, |pool| {
        sqlx::query_as(
            "UPDATE sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL RETURNING id, expires_at",
        )
        .bind(now_rfc3339())
        .bind(user_id)
        .fetch_all(pool)
        .await
    })
}

pub async fn insert_ticket(db: &Db, ticket: &str, session_id: &str, expires_at: i64) -> sqlx::Result<()> {
    with_pool!(db, |pool| {
        // Spent and stale tickets are swept as new ones are issued.
        sqlx::query("DELETE FROM socket_tickets WHERE expires_at <= $1").bind(now_unix()).execute(pool).await?;
        sqlx::query("INSERT INTO socket_tickets (ticket, session_id, expires_at) VALUES ($1, $2, $3)")
            .bind(ticket)
            .bind(session_id)
            .bind(expires_at)
            .execute(pool)
            .await?;
        Ok(())
    })
}

/// Spends a ticket: deleting and reading it is one statement, so of two
/// sockets racing for the same ticket exactly one gets the session id.
pub async fn take_ticket(db: &Db, ticket: &str) -> sqlx::Result<Option<String>> {
    with_pool!(db, |pool| {
        let row: Option<(String, i64)> =
            sqlx::query_as("DELETE FROM socket_tickets WHERE ticket = $1 RETURNING session_id, expires_at")
                .bind(ticket)
                .fetch_optional(pool)
                .await?;
        Ok(row.and_then(|(session_id, expires_at)| (expires_at > now_unix()).then_some(session_id)))
    })
}
