//! Chat rooms: `/api/rooms`, and the `join`/`send` frames.

pub mod store;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Map, Value};
use crate::db::Db;
use tether_protocol::{
    to_fields, ChatMessage, CreateRoomRequest, HistoryAck, JoinAck, RoomResponse, RoomsResponse, SendAck, Sender,
    ServerFrame, HISTORY_LEN, MAX_HISTORY_PAGE, MAX_MESSAGE_CHARS, MAX_RESUME_LEN, MAX_ROOM_NAME_CHARS,
};
use time::OffsetDateTime;
use tokio::sync::OwnedMutexGuard;

use crate::auth::AuthSession;
use crate::db::{format_rfc3339, now_ms, parse_rfc3339};
use crate::error::{ApiError, ApiResult};
use crate::events::{publish, ModelEvent};
use crate::extract::ApiJson;
use crate::registry::{Audience, SocketId};
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/rooms", get(list).post(create))
}

async fn list(State(state): State<AppState>) -> ApiResult<Json<RoomsResponse>> {
    Ok(Json(RoomsResponse { rooms: store::list(&state.db).await? }))
}

async fn create(
    State(state): State<AppState>,
    AuthSession(session): AuthSession,
    crate::extract::ClientIp(ip): crate::extract::ClientIp,
    ApiJson(body): ApiJson<CreateRoomRequest>,
) -> ApiResult<(StatusCode, Json<RoomResponse>)> {
    state.rate_limits.create_room(&session.user.id, ip)?;
    let name = body.name.trim();
    let chars = name.chars().count();
    if !(1..=MAX_ROOM_NAME_CHARS).contains(&chars) || name.chars().any(char::is_control) {
        return Err(ApiError::invalid("invalid_name", format!("a room name has 1 to {MAX_ROOM_NAME_CHARS} characters")));
    }
    let room = store::create(&state.db, name, &session.user.id).await?;
    publish(&state.registry, ModelEvent::RoomCreated(room.clone()));
    Ok((StatusCode::CREATED, Json(RoomResponse { room })))
}

/// One writer per room on this node. A room's sends pass through its lock one
/// at a time: each is numbered (`seq`), stamped (`at`, never decreasing),
/// stored and fanned out before the next, so ids, `seq`, `at`, live order and
/// history order are one order. A join reads its history and subscribes under
/// the same lock, so every message reaches a joined socket exactly once, in
/// history or live (../shared/PROTOCOL.md, `join` and `message`).
#[derive(Default)]
pub struct Sequencer {
    rooms: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Tail>>>>>,
}

/// The newest message of a room: its `seq` and `at`.
struct Tail {
    seq: i64,
    at: OffsetDateTime,
}

impl Sequencer {
    /// Waits for the room's turn; the tail is loaded from the database on first use.
    async fn lock(&self, db: &Db, room: &str) -> ApiResult<OwnedMutexGuard<Option<Tail>>> {
        let slot = {
            let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
            rooms.entry(room.to_string()).or_default().clone()
        };
        let mut guard = slot.lock_owned().await;
        if guard.is_none() {
            let (seq, at) = store::tail(db, room).await?;
            let at = at.as_deref().and_then(parse_rfc3339).unwrap_or(OffsetDateTime::UNIX_EPOCH);
            *guard = Some(Tail { seq, at });
        }
        Ok(guard)
    }
}

/// The `join` frame: history and subscription at one point of the room's
/// order; the ack (history, members) first, then `presence`.
pub async fn join(
    state: &AppState,
    id: SocketId,
    code: &str,
    since: Option<i64>,
    reference: Option<i64>,
) -> ApiResult<()> {
    let room = store::find(&state.db, code).await?.ok_or(ApiError::NotFound)?;
    let turn = state.sequencer.lock(&state.db, code).await?;
    let (history, truncated) = match since {
        None => (store::history(&state.db, code).await?, false),
        Some(since) => {
            let mut missed = store::page(&state.db, code, since, i64::MAX, MAX_RESUME_LEN + 1).await?;
            let truncated = missed.len() as i64 > MAX_RESUME_LEN;
            if truncated {
                missed.remove(0);
            }
            (missed, truncated)
        }
    };
    state.registry.join(id, code, |members| {
        let ack = JoinAck { room, history, members: members.to_vec(), truncated };
        reference.map(|r| ServerFrame::ack_ok(r, to_fields(&ack)))
    });
    drop(turn);
    Ok(())
}

/// The `history` frame: the page of messages before `before` ("load older").
pub async fn history(
    state: &AppState,
    id: SocketId,
    code: &str,
    before: i64,
    limit: Option<i64>,
) -> ApiResult<Map<String, Value>> {
    let limit = limit.unwrap_or(HISTORY_LEN);
    if !(1..=MAX_HISTORY_PAGE).contains(&limit) {
        return Err(ApiError::invalid("bad_frame", format!("limit is 1 to {MAX_HISTORY_PAGE}")));
    }
    store::find(&state.db, code).await?.ok_or(ApiError::NotFound)?;
    if !state.registry.is_in_room(id, code) {
        return Err(not_in_room());
    }
    let history = store::page(&state.db, code, 0, before, limit).await?;
    Ok(to_fields(&HistoryAck { history }))
}

fn not_in_room() -> ApiError {
    ApiError::invalid("not_in_room", "join the room first")
}

/// The `send` frame: stamps the sender from the socket's binding, then, in
/// the room's turn, numbers, stores and fans the message out to the room,
/// the sender's sockets included.
pub async fn send(state: &AppState, id: SocketId, room: &str, text: String) -> ApiResult<Map<String, Value>> {
    let binding = state.registry.binding(id).ok_or(ApiError::NotAuthenticated)?;
    let user = binding.user().ok_or(ApiError::NotAuthenticated)?;
    if !state.registry.is_in_room(id, room) {
        return Err(not_in_room());
    }
    let chars = text.chars().count();
    if !(1..=MAX_MESSAGE_CHARS).contains(&chars) {
        return Err(ApiError::invalid("invalid_text", format!("a message has 1 to {MAX_MESSAGE_CHARS} characters")));
    }
    let from = Sender { id: Some(user.id.clone()), name: user.name.clone() };
    let mut turn = state.sequencer.lock(&state.db, room).await?;
    let tail = turn.as_mut().expect("lock loads the tail");
    let seq = tail.seq + 1;
    // The clock may step back (or two sends share a millisecond): `at` never decreases along `seq`.
    let at = now_ms().max(tail.at);
    let at_text = format_rfc3339(at);
    let new = store::NewMessage { room, seq, from: &from, text: &text, at: &at_text };
    let message_id = match store::insert_message(&state.db, &new).await {
        Ok(id) => id.to_string(),
        Err(e) => {
            // A commit whose answer was lost (the connection dropped) leaves the
            // cached tail behind the table: reload it on the next turn.
            *turn = None;
            return Err(e.into());
        }
    };
    *tail = Tail { seq, at };
    let message = ChatMessage { room: room.into(), id: message_id.clone(), seq, from, text, at: at_text };
    state.registry.emit(Audience::Room(room), &ServerFrame::Message(message));
    drop(turn);
    Ok(to_fields(&SendAck { id: message_id }))
}
