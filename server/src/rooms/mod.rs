//! Chat rooms: `/api/rooms`, and the `join`/`send` frames.

pub mod store;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Map, Value};
use tether_protocol::{
    to_fields, CreateRoomRequest, HistoryAck, JoinAck, RoomResponse, RoomsResponse, SendAck, Sender,
    ServerFrame, HISTORY_LEN, MAX_HISTORY_PAGE, MAX_MESSAGE_CHARS, MAX_RESUME_LEN, MAX_ROOM_NAME_CHARS,
};

use crate::auth::AuthSession;
use crate::bus::Draft;
use crate::error::{ApiError, ApiResult};
use crate::events::{publish, ModelEvent};
use crate::extract::ApiJson;
use crate::registry::SocketId;
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
    state.rate_limits.create_room(&session.user.id, ip).await?;
    let name = body.name.trim();
    let chars = name.chars().count();
    if !(1..=MAX_ROOM_NAME_CHARS).contains(&chars) || name.chars().any(char::is_control) {
        return Err(ApiError::invalid("invalid_name", format!("a room name has 1 to {MAX_ROOM_NAME_CHARS} characters")));
    }
    let room = store::create(&state.db, name, &session.user.id).await?;
    publish(&state.bus, ModelEvent::RoomCreated(room.clone())).await;
    Ok((StatusCode::CREATED, Json(RoomResponse { room })))
}

/// The `join` frame: the socket subscribes first, then reads its history,
/// so a message stored meanwhile (on any node) is neither missed nor sent
/// twice (the registry holds it and drops what the history has). The ack
/// (history, members) first, then `presence`.
pub async fn join(
    state: &AppState,
    id: SocketId,
    code: &str,
    since: Option<i64>,
    reference: Option<i64>,
) -> ApiResult<()> {
    let room = store::find(&state.db, code).await?.ok_or(ApiError::NotFound)?;
    if !state.registry.subscribe(id, code) {
        return Ok(());
    }
    let read = async {
        let (history, truncated) = match since {
            None => (store::history(&state.db, code).await?, false),
            Some(since) => {
                let mut missed = store::page(&state.db, code, since, i64::MAX, MAX_RESUME_LEN + 1, store::Keep::Newest).await?;
                let truncated = missed.len() as i64 > MAX_RESUME_LEN;
                if truncated {
                    missed.remove(0);
                }
                (missed, truncated)
            }
        };
        // The newest `seq` the socket has once it reads the ack.
        let floor = match history.last() {
            Some(newest) => newest.seq,
            None => {
                let tail = store::tail(&state.db, code).await?.0;
                since.map_or(tail, |since| since.min(tail))
            }
        };
        Ok::<_, sqlx::Error>((history, truncated, floor))
    };
    let (history, truncated, floor) = match read.await {
        Ok(read) => read,
        Err(e) => {
            state.registry.unsubscribe(id, code);
            return Err(ApiError::from(e));
        }
    };
    state.registry.join(id, code, floor, |members| {
        let ack = JoinAck { room, history, members: members.to_vec(), truncated };
        reference.map(|r| ServerFrame::ack_ok(r, to_fields(&ack)))
    });
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
    let history = store::page(&state.db, code, 0, before, limit, store::Keep::Newest).await?;
    Ok(to_fields(&HistoryAck { history }))
}

fn not_in_room() -> ApiError {
    ApiError::invalid("not_in_room", "join the room first")
}

/// The `send` frame: stamps the sender from the socket's binding; the bus
/// numbers, stores and fans the message out to the room on every node, the
/// sender's sockets included.
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
    let message = state.bus.append(Draft { room: room.into(), from, text }).await?;
    Ok(to_fields(&SendAck { id: message.id }))
}
