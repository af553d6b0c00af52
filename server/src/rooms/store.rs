//! SQL for rooms and their messages.

use rand::Rng;
use sqlx::SqlitePool;
use tether_protocol::{ChatMessage, Room, Sender, HISTORY_LEN};

use crate::db::now_rfc3339;

/// Room codes avoid look-alike characters, so they can be read out and typed.
const CODE_ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
const CODE_LEN: usize = 6;

fn new_code() -> String {
    let mut rng = rand::thread_rng();
    (0..CODE_LEN).map(|_| CODE_ALPHABET[rng.gen_range(0..CODE_ALPHABET.len())] as char).collect()
}

pub async fn create(db: &SqlitePool, name: &str, created_by: &str) -> sqlx::Result<Room> {
    loop {
        let room = Room { code: new_code(), name: name.into(), created_by: created_by.into(), created_at: now_rfc3339() };
        let inserted = sqlx::query(
            "INSERT INTO rooms (code, name, created_by, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (code) DO NOTHING",
        )
        .bind(&room.code)
        .bind(&room.name)
        .bind(&room.created_by)
        .bind(&room.created_at)
        .execute(db)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(room);
        }
    }
}

pub async fn list(db: &SqlitePool) -> sqlx::Result<Vec<Room>> {
    let rows: Vec<(String, String, String, String)> =
        sqlx::query_as("SELECT code, name, created_by, created_at FROM rooms ORDER BY created_at, code")
            .fetch_all(db)
            .await?;
    Ok(rows.into_iter().map(|(code, name, created_by, created_at)| Room { code, name, created_by, created_at }).collect())
}

pub async fn find(db: &SqlitePool, code: &str) -> sqlx::Result<Option<Room>> {
    let row: Option<(String, String, String, String)> =
        sqlx::query_as("SELECT code, name, created_by, created_at FROM rooms WHERE code = ?")
            .bind(code)
            .fetch_optional(db)
            .await?;
    Ok(row.map(|(code, name, created_by, created_at)| Room { code, name, created_by, created_at }))
}

pub async fn insert_message(db: &SqlitePool, room: &str, from: Sender, text: String) -> sqlx::Result<ChatMessage> {
    let at = now_rfc3339();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO messages (room_code, sender_id, sender_name, text, created_at) VALUES (?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(room)
    .bind(&from.id)
    .bind(&from.name)
    .bind(&text)
    .bind(&at)
    .fetch_one(db)
    .await?;
    Ok(ChatMessage { room: room.into(), id: id.to_string(), from, text, at })
}

/// The last messages of a room, oldest first.
pub async fn history(db: &SqlitePool, room: &str) -> sqlx::Result<Vec<ChatMessage>> {
    let rows: Vec<(i64, Option<String>, String, String, String)> = sqlx::query_as(
        "SELECT id, sender_id, sender_name, text, created_at FROM
           (SELECT * FROM messages WHERE room_code = ? ORDER BY id DESC LIMIT ?)
         ORDER BY id",
    )
    .bind(room)
    .bind(HISTORY_LEN)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, sender_id, sender_name, text, at)| ChatMessage {
            room: room.into(),
            id: id.to_string(),
            from: Sender { id: sender_id, name: sender_name },
            text,
            at,
        })
        .collect())
}
