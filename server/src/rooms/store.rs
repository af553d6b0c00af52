//! SQL for rooms and their messages.

use rand::Rng;
use tether_protocol::{ChatMessage, Room, Sender, HISTORY_LEN};

use crate::db::{with_pool, Db};
use crate::db::now_rfc3339;

/// Room codes avoid look-alike characters, so they can be read out and typed.
const CODE_ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
const CODE_LEN: usize = 6;

fn new_code() -> String {
    let mut rng = rand::thread_rng();
    (0..CODE_LEN).map(|_| CODE_ALPHABET[rng.gen_range(0..CODE_ALPHABET.len())] as char).collect()
}

pub async fn create(db: &Db, name: &str, created_by: &str) -> sqlx::Result<Room> {
    with_pool!(db, |pool| {
        loop {
            let room = Room { code: new_code(), name: name.into(), created_by: created_by.into(), created_at: now_rfc3339() };
            let inserted = sqlx::query(
                "INSERT INTO rooms (code, name, created_by, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (code) DO NOTHING",
            )
            .bind(&room.code)
            .bind(&room.name)
            .bind(&room.created_by)
            .bind(&room.created_at)
            .execute(pool)
            .await?;
            if inserted.rows_affected() == 1 {
                return Ok(room);
            }
        }
    })
}

pub async fn list(db: &Db) -> sqlx::Result<Vec<Room>> {
    with_pool!(db, |pool| {
        let rows: Vec<(String, String, String, String)> =
            sqlx::query_as("SELECT code, name, created_by, created_at FROM rooms ORDER BY created_at, code")
                .fetch_all(pool)
                .await?;
        Ok(rows.into_iter().map(|(code, name, created_by, created_at)| Room { code, name, created_by, created_at }).collect())
    })
}

pub async fn find(db: &Db, code: &str) -> sqlx::Result<Option<Room>> {
    with_pool!(db, |pool| {
        let row: Option<(String, String, String, String)> =
            sqlx::query_as("SELECT code, name, created_by, created_at FROM rooms WHERE code = $1")
                .bind(code)
                .fetch_optional(pool)
                .await?;
        Ok(row.map(|(code, name, created_by, created_at)| Room { code, name, created_by, created_at }))
    })
}

/// Stores a message: binds room, seq, sender id, sender name, text, at; answers its id.
pub const INSERT_MESSAGE_SQL: &str = "INSERT INTO messages (room_code, seq, sender_id, sender_name, text, created_at)
     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";

/// A room's newest message (binds the room): its `seq` and `created_at`.
pub const TAIL_SQL: &str = "SELECT seq, created_at FROM messages WHERE room_code = $1 ORDER BY seq DESC LIMIT 1";

/// Stores a message at its place in the room (`seq`), stamped `at`; returns its id.
/// The caller (the bus, in the room's turn) chose `seq` and `at`.
pub async fn insert_message(db: &Db, message: &NewMessage<'_>) -> sqlx::Result<i64> {
    with_pool!(db, |pool| {
        sqlx::query_scalar(INSERT_MESSAGE_SQL)
        .bind(message.room)
        .bind(message.seq)
        .bind(&message.from.id)
        .bind(&message.from.name)
        .bind(message.text)
        .bind(message.at)
        .fetch_one(pool)
        .await
    })
}

/// A message about to be stored.
pub struct NewMessage<'a> {
    pub room: &'a str,
    pub seq: i64,
    pub from: &'a Sender,
    pub text: &'a str,
    pub at: &'a str,
}

/// The room's last `seq` and the `at` of that message (none yet: 0 and `None`).
pub async fn tail(db: &Db, room: &str) -> sqlx::Result<(i64, Option<String>)> {
    with_pool!(db, |pool| {
        let row: Option<(i64, String)> =
            sqlx::query_as(TAIL_SQL)
                .bind(room)
                .fetch_optional(pool)
                .await?;
        Ok(row.map_or((0, None), |(seq, at)| (seq, Some(at))))
    })
}

type MessageRow = (i64, i64, Option<String>, String, String, String);

fn messages(room: &str, rows: Vec<MessageRow>) -> Vec<ChatMessage> {
    rows.into_iter()
        .map(|(id, seq, sender_id, sender_name, text, at)| ChatMessage {
            room: room.into(),
            id: id.to_string(),
            seq,
            from: Sender { id: sender_id, name: sender_name },
            text,
            at,
        })
        .collect()
}

const COLUMNS: &str = "id, seq, sender_id, sender_name, text, created_at";

/// Which end of a range a page keeps when the range holds more than its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The newest messages (history, resume, "load older").
    Newest,
    /// The oldest (a node filling a gap in what it delivered, in order).
    Oldest,
}

/// `limit` messages with `seq` in `after < seq < before`, oldest first: the
/// newest or the oldest of the range, as `keep` says.
pub async fn page(db: &Db, room: &str, after: i64, before: i64, limit: i64, keep: Keep) -> sqlx::Result<Vec<ChatMessage>> {
    let order = match keep {
        Keep::Newest => "DESC",
        Keep::Oldest => "ASC",
    };
    with_pool!(db, |pool| {
        let rows: Vec<MessageRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM messages WHERE room_code = $1 AND seq > $2 AND seq < $3 ORDER BY seq {order} LIMIT $4"
        ))
        .bind(room)
        .bind(after)
        .bind(before)
        .bind(limit)
        .fetch_all(pool)
        .await?;
        let mut page = messages(room, rows);
        if keep == Keep::Newest {
            page.reverse();
        }
        Ok(page)
    })
}

/// The last [`HISTORY_LEN`] messages of a room, oldest first.
pub async fn history(db: &Db, room: &str) -> sqlx::Result<Vec<ChatMessage>> {
    page(db, room, 0, i64::MAX, HISTORY_LEN, Keep::Newest).await
}
