//! The wire contract of `shared/PROTOCOL.md`, version 2.
//!
//! Every HTTP body and WebSocket frame is defined here once and used by the
//! server and by the Wasm client alike, so the two cannot drift apart.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

mod api;
mod frames;

pub use api::*;
pub use frames::*;

/// Largest accepted HTTP request body and WebSocket message, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest chat message, in Unicode scalar values.
pub const MAX_MESSAGE_CHARS: usize = 2000;
/// Longest room name, in Unicode scalar values.
pub const MAX_ROOM_NAME_CHARS: usize = 80;
/// Shortest accepted password, in Unicode scalar values.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Messages returned as history when a socket joins a room.
pub const HISTORY_LEN: i64 = 50;
/// Most messages a `join` with `since` returns; beyond it the ack says `truncated`.
pub const MAX_RESUME_LEN: i64 = 500;
/// Largest `limit` of a `history` frame (default [`HISTORY_LEN`]).
pub const MAX_HISTORY_PAGE: i64 = 100;

/// WebSocket close codes the server uses.
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    /// RFC 6455 7.4.1: the peer broke the protocol (bad framing, unmasked frame...).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// RFC 6455 7.4.1: a text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The socket fell too far behind on what it was sent and was dropped (version 2).
    pub const TOO_SLOW: u16 = 4002;
    pub const NOT_AUTHENTICATED: u16 = 4401;

    /// Whether a client should reconnect after this close code without a user action.
    pub fn is_final(code: u16) -> bool {
        matches!(code, POLICY | NOT_AUTHENTICATED)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub name: String,
    pub email: String,
    pub role: Role,
}

/// The `error` object of every failure, over HTTP and in `ack`/`error` frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorBody { code: code.into(), message: message.into() }
    }
}

/// An error response body: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Room {
    pub code: String,
    pub name: String,
    pub created_by: String,
    pub created_at: String,
}

/// A chat message's sender, always stamped by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sender {
    pub id: Option<String>,
    pub name: String,
}

/// A presence member: a user (one entry however many sockets) or a guest socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// Unique within the room: `u:<user id>` or `g:<socket id>` (version 2).
    pub key: String,
    pub id: Option<String>,
    pub name: String,
}

/// Converts a typed value into the JSON object an `ack` carries beside `ref` and `ok`.
pub fn to_fields<T: Serialize>(value: &T) -> Map<String, Value> {
    match serde_json::to_value(value) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}
