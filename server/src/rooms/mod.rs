//! Chat rooms: `/api/rooms`, and the `join`/`send` frames.

pub mod store;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Map, Value};
use tether_protocol::{
    to_fields, CreateRoomRequest, JoinAck, RoomResponse, RoomsResponse, SendAck, Sender, ServerFrame,
    MAX_MESSAGE_CHARS, MAX_ROOM_NAME_CHARS,
};

use crate::auth::AuthSession;
use crate::error::{ApiError, ApiResult};
use crate::events::{publish, ModelEvent};
use crate::extract::ApiJson;
use crate::ws::registry::SocketId;
use crate::ws::Audience;
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

/// The `join` frame: the ack with history first, then the room's new presence.
pub async fn join(state: &AppState, id: SocketId, code: &str, reference: Option<i64>) -> ApiResult<()> {
    let room = store::find(&state.db, code).await?.ok_or(ApiError::NotFound)?;
    let history = store::history(&state.db, code).await?;
    let ack = reference.map(|r| ServerFrame::ack_ok(r, to_fields(&JoinAck { room, history })));
    state.registry.join(id, code, ack);
    Ok(())
}

/// The `send` frame: stamps the sender from the socket's binding, stores the
/// message and fans it out to the room, the sender's sockets included.
pub async fn send(state: &AppState, id: SocketId, room: &str, text: String) -> ApiResult<Map<String, Value>> {
    let binding = state.registry.binding(id).ok_or(ApiError::NotAuthenticated)?;
    let user = binding.user().ok_or(ApiError::NotAuthenticated)?;
    if !state.registry.is_in_room(id, room) {
        return Err(ApiError::invalid("not_in_room", "join the room before sending to it"));
    }
    let chars = text.chars().count();
    if !(1..=MAX_MESSAGE_CHARS).contains(&chars) {
        return Err(ApiError::invalid("invalid_text", format!("a message has 1 to {MAX_MESSAGE_CHARS} characters")));
    }
    let from = Sender { id: Some(user.id.clone()), name: user.name.clone() };
    let message = store::insert_message(&state.db, room, from, text).await?;
    let id = message.id.clone();
    state.registry.emit(Audience::Room(room), &ServerFrame::Message(message));
    Ok(to_fields(&SendAck { id }))
}
