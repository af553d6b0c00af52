//! `GET /ws`: the cookie-authenticated upgrade and the socket transport
//! (the top layer: it drives the features for each frame).

mod socket;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use tether_protocol::{close_code, MAX_BODY_BYTES};

pub use socket::SocketTimeouts;

use crate::auth::session_from_headers;
use crate::error::ApiError;
use crate::origin::has_allowed_origin;
use crate::AppState;

/// Per-socket read buffer, allocated for every socket: tungstenite's default
/// reserves 128 KiB. Frames are small; a large one is read in several passes.
const READ_BUFFER_BYTES: usize = 512;
/// Written frames are gathered up to this size before a write (the buffer grows only as used).
const WRITE_BUFFER_BYTES: usize = 4 * 1024;

pub async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // Checked before anything else: browsers send Origin on every WebSocket
    // handshake, so a missing one is not a browser we serve.
    if !has_allowed_origin(&state, &headers) {
        count_handshake("forbidden_origin");
        return ApiError::ForbiddenOrigin.into_response();
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            count_handshake("bad_request");
            return ApiError::BadRequest(rejection.body_text()).into_response();
        }
    };
    let session = match session_from_headers(&state, &headers).await {
        Ok(session) => session,
        Err(error) => return error.into_response(),
    };
    upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        // Beyond it the socket is too slow (4002); pongs owed to a ping flood never
        // get this far, since pings count against the frame rate limit.
        .max_write_buffer_size(state.settings.limits.socket_write_buffer_bytes)
        .max_message_size(MAX_BODY_BYTES)
        .max_frame_size(MAX_BODY_BYTES)
        .on_upgrade(move |mut socket| async move {
            if session.is_none() && !state.registry.allow_guests() {
                count_handshake("guests_off");
                let close = CloseFrame { code: close_code::NOT_AUTHENTICATED, reason: "not_authenticated".into() };
                let _ = socket.send(Message::Close(Some(close))).await;
                return;
            }
            count_handshake("accepted");
            socket::run(state, socket, session).await
        })
}

/// Counts an upgrade by outcome (`tether_handshakes_total`, crate::telemetry).
fn count_handshake(outcome: &'static str) {
    metrics::counter!("tether_handshakes_total", "outcome" => outcome).increment(1);
}
