//! One task per socket: it writes the socket's queue, reads and answers its
//! frames, enforces the limits, and unbinds the socket when its session expires.

use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use serde_json::Map;
use tether_protocol::{
    close_code, to_fields, ClientEnvelope, ClientFrame, ErrorBody, LoginAck, ServerFrame, WhoamiAck,
};

use super::registry::{Binding, Connection, Outbound, SocketId};
use crate::auth::store::{self as auth_store, Session};
use crate::db::now_unix;
use crate::error::ApiError;
use crate::rooms;
use crate::AppState;

/// Sustained frames a second per socket, and the burst allowed above it.
const FRAMES_PER_SEC: f64 = 20.0;
const FRAME_BURST: f64 = 40.0;
/// Refusals in a row after which the socket is closed with 1008.
const REFUSALS_BEFORE_CLOSE: u32 = 50;

/// Token bucket over a socket's incoming frames.
struct FrameLimiter {
    tokens: f64,
    refilled: Instant,
    refusals_in_a_row: u32,
}

enum Admission {
    Process,
    Refuse,
    Close,
}

impl FrameLimiter {
    fn new() -> FrameLimiter {
        FrameLimiter { tokens: FRAME_BURST, refilled: Instant::now(), refusals_in_a_row: 0 }
    }

    fn admit(&mut self) -> Admission {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * FRAMES_PER_SEC).min(FRAME_BURST);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refusals_in_a_row = 0;
            return Admission::Process;
        }
        self.refusals_in_a_row += 1;
        if self.refusals_in_a_row >= REFUSALS_BEFORE_CLOSE {
            Admission::Close
        } else {
            Admission::Refuse
        }
    }
}

pub fn binding_of(session: Session) -> Binding {
    Binding::User { user: session.user, session_id: session.id.into(), expires_at: session.expires_at }
}

/// When a binding that expires at `exp` (unix seconds) must be unbound.
fn expiry_instant(exp: i64) -> tokio::time::Instant {
    // One second late, so the registry's whole-second check sees it expired.
    let secs = (exp - now_unix()).max(0) as u64 + 1;
    tokio::time::Instant::now() + Duration::from_secs(secs)
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86400 * 365)
}

fn close_message(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: reason.into() }))
}

/// Whether a read failed because the peer sent more than the size limit.
fn is_too_big(error: axum::Error) -> bool {
    matches!(
        error.into_inner().downcast::<tungstenite::Error>().map(|e| *e),
        Ok(tungstenite::Error::Capacity(_))
    )
}

/// Most queued frames written before one flush, so a busy socket still reads.
const WRITE_BATCH: usize = 64;

pub async fn run(state: AppState, socket: WebSocket, session: Option<Session>) {
    let binding = session.map(binding_of).unwrap_or_else(Binding::guest);
    let Connection { id, public_id, outbound } = state.registry.connect(binding);
    let (mut sink, mut stream) = socket.split();
    let mut limiter = FrameLimiter::new();
    // One timer for the socket's whole life, not one per pass.
    let expiry = tokio::time::sleep_until(far_future());
    tokio::pin!(expiry);
    let mut expiry_armed = false;

    loop {
        tokio::select! {
            biased;
            queued = outbound.pop() => {
                // `None`: evicted for falling behind.
                let Some(first) = queued else { break };
                let mut next = Some(first);
                let mut written = 0;
                let mut open = true;
                // Everything already queued goes out with one flush.
                while let Some(item) = next.take() {
                    match item {
                        Outbound::Text(text) => {
                            if sink.feed(Message::Text(text)).await.is_err() {
                                open = false;
                                break;
                            }
                            written += 1;
                        }
                        Outbound::Deadline(Some(exp)) => {
                            expiry.as_mut().reset(expiry_instant(exp));
                            expiry_armed = true;
                        }
                        Outbound::Deadline(None) => expiry_armed = false,
                        Outbound::Close(code, reason) => {
                            let _ = sink.send(close_message(code, reason)).await;
                            open = false;
                            break;
                        }
                    }
                    if written < WRITE_BATCH {
                        next = outbound.try_pop();
                    }
                }
                if !open || (written > 0 && sink.flush().await.is_err()) {
                    break;
                }
            }
            _ = &mut expiry, if expiry_armed => {
                expiry_armed = false;
                state.registry.expire(id);
            }
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Text(text))) => match limiter.admit() {
                    // Boxed: the handlers' futures (database queries) are large, and an
                    // idle socket's task should not carry their space all its life.
                    Admission::Process => Box::pin(handle_text(&state, id, text.as_str())).await,
                    Admission::Refuse => refuse_rate_limited(&state, id, text.as_str()),
                    Admission::Close => {
                        tracing::warn!(socket_id = %public_id, "frame rate limit exceeded; closing");
                        let _ = sink.send(close_message(close_code::POLICY, "rate limit exceeded")).await;
                        break;
                    }
                },
                Some(Ok(Message::Binary(_))) => {
                    reply(&state, id, None, Err(ErrorBody::new("bad_frame", "frames are JSON text")));
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    if is_too_big(error) {
                        let _ = sink.send(close_message(close_code::TOO_BIG, "message over 64 KiB")).await;
                    }
                    break;
                }
            },
        }
    }
    state.registry.disconnect(id);
}

/// Answers a frame: an `ack` when it carried a usable `ref`, else an `error`
/// frame on failure and nothing on success.
fn reply(state: &AppState, id: SocketId, reference: Option<i64>, result: Result<Map<String, serde_json::Value>, ErrorBody>) {
    if let Some(frame) = answer(reference, result) {
        state.registry.emit(super::Audience::Socket(id), &frame);
    }
}

fn answer(reference: Option<i64>, result: Result<Map<String, serde_json::Value>, ErrorBody>) -> Option<ServerFrame> {
    match (reference, result) {
        (Some(r), Ok(fields)) => Some(ServerFrame::ack_ok(r, fields)),
        (Some(r), Err(error)) => Some(ServerFrame::ack_err(r, error)),
        (None, Ok(_)) => None,
        (None, Err(error)) => Some(ServerFrame::Error(error)),
    }
}

fn refuse_rate_limited(state: &AppState, id: SocketId, text: &str) {
    let reference = ClientEnvelope::parse(text).and_then(|e| e.reference);
    reply(state, id, reference, Err(ErrorBody::new("rate_limited", "too many frames; slow down")));
}

async fn handle_text(state: &AppState, id: SocketId, text: &str) {
    let Some(envelope) = ClientEnvelope::parse(text) else {
        return reply(state, id, None, Err(ErrorBody::new("bad_frame", "a frame is one JSON object")));
    };
    let reference = envelope.reference;
    match envelope.frame {
        Err(why) => reply(state, id, reference, Err(ErrorBody::new("bad_frame", why))),
        Ok(frame) => {
            if let Err(error) = dispatch(state, id, reference, frame).await {
                reply(state, id, reference, Err(error.body()));
            }
        }
    }
}

/// Runs one client frame. Frames whose ack must be ordered with a change of
/// the registry (login, logout, join, leave) hand the ack to the registry.
async fn dispatch(state: &AppState, id: SocketId, reference: Option<i64>, frame: ClientFrame) -> Result<(), ApiError> {
    let ok = |fields| answer(reference, Ok(fields));
    match frame {
        ClientFrame::Login { ticket } => {
            let session = match auth_store::take_ticket(&state.db, &ticket).await? {
                Some(session_id) => state.sessions.live(&state.db, &session_id).await?,
                None => None,
            };
            let bound = session.and_then(|session| {
                state.registry.bind(id, binding_of(session), |user| ok(to_fields(&LoginAck { user: user.clone() })))
            });
            if bound.is_none() {
                return Err(ApiError::invalid("invalid_ticket", "the ticket is unknown, expired or already used"));
            }
        }
        ClientFrame::Logout => state.registry.unbind_socket(id, ok(Map::new())),
        ClientFrame::Whoami => {
            let binding = state.registry.binding(id).unwrap_or_else(Binding::guest);
            let fields = to_fields(&WhoamiAck {
                user: binding.user().cloned(),
                guest_name: binding.guest_name().map(String::from),
            });
            reply(state, id, reference, Ok(fields));
        }
        ClientFrame::Ping => reply(state, id, reference, Ok(Map::new())),
        ClientFrame::Join { room } => rooms::join(state, id, &room, reference).await?,
        ClientFrame::Leave { room } => state.registry.leave(id, &room, ok(Map::new())),
        ClientFrame::Send { room, text } => {
            let fields = rooms::send(state, id, &room, text).await?;
            reply(state, id, reference, Ok(fields));
        }
    }
    Ok(())
}
