//! One task per socket: it writes the socket's queue, reads and answers its
//! frames, enforces the limits, pings the peer, unbinds the socket when its
//! session expires, and closes it with a Close frame and its code.

use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::Map;
use tether_protocol::{
    close_code, to_fields, ClientEnvelope, ClientFrame, ErrorBody, LoginAck, ServerFrame, WhoamiAck,
};

use crate::registry::{Audience, Binding, Connection, Outbound, SocketId};
use crate::auth::store::{self as auth_store, Session};
use crate::db::now_unix;
use crate::error::ApiError;
use crate::rooms;
use crate::AppState;

/// Sustained frames a second per socket (pings included), and the burst allowed above it.
const FRAMES_PER_SEC: f64 = 20.0;
const FRAME_BURST: f64 = 40.0;
/// Refusals after which the socket is closed with 1008 (../shared/PROTOCOL.md "Limits").
const REFUSALS_BEFORE_CLOSE: u32 = 50;

/// How long a socket may take over the things a client controls; from the
/// `[tether]` settings ([`crate::config::Limits`]).
#[derive(Debug, Clone, Copy)]
pub struct SocketTimeouts {
    /// The server pings a socket this often (PROTOCOL.md: "pings every socket on an interval").
    pub ping_interval: Duration,
    /// A socket that sends nothing (no frame, no pong) this long after a ping is closed.
    pub pong_timeout: Duration,
    /// A socket that sends nothing at all this long is closed.
    pub idle_timeout: Duration,
    /// Longest a write of queued frames may block before the socket counts as too slow (4002).
    pub write_timeout: Duration,
    /// Longest the closing handshake may take: our Close written, the peer's awaited.
    pub close_timeout: Duration,
}

impl SocketTimeouts {
    pub fn from_limits(limits: &crate::config::Limits) -> SocketTimeouts {
        SocketTimeouts {
            ping_interval: limits.ping_interval,
            pong_timeout: limits.pong_timeout,
            idle_timeout: limits.socket_idle_timeout,
            write_timeout: limits.write_timeout,
            close_timeout: limits.close_timeout,
        }
    }
}

/// Token bucket over a socket's incoming frames.
struct FrameLimiter {
    tokens: f64,
    refilled: Instant,
    /// Refusals not yet paid back: +1 per refused frame, -1 per admitted one, so
    /// 50 in a row close the socket and slipping one frame in between does not
    /// reset the count.
    refusals: u32,
}

enum Admission {
    Process,
    Refuse,
    Close,
}

impl FrameLimiter {
    fn new() -> FrameLimiter {
        FrameLimiter { tokens: FRAME_BURST, refilled: Instant::now(), refusals: 0 }
    }

    fn admit(&mut self) -> Admission {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * FRAMES_PER_SEC).min(FRAME_BURST);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refusals = self.refusals.saturating_sub(1);
            return Admission::Process;
        }
        self.refusals += 1;
        if self.refusals >= REFUSALS_BEFORE_CLOSE {
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

/// How a socket's life ends.
enum End {
    /// The server closes: this Close frame first, then the handshake.
    Close(u16, &'static str),
    /// The peer sent its Close; tungstenite has queued the reply.
    ClosedByPeer,
    /// The connection is gone (reset, or the peer vanished): nothing to say.
    Gone,
}

/// The Close a read error calls for (RFC 6455 7.4.1), or none when the connection is gone.
fn close_for(error: axum::Error) -> End {
    use tungstenite::error::{CapacityError, Error};
    match error.into_inner().downcast::<Error>().map(|e| *e) {
        Ok(Error::Capacity(CapacityError::MessageTooLong { .. })) => End::Close(close_code::TOO_BIG, "message over 64 KiB"),
        Ok(Error::Capacity(_)) => End::Close(close_code::TOO_BIG, "frame too big"),
        Ok(Error::Utf8(_)) => End::Close(close_code::INVALID_PAYLOAD, "text frame is not UTF-8"),
        Ok(Error::Protocol(error)) => {
            tracing::debug!(%error, "protocol violation");
            End::Close(close_code::PROTOCOL_ERROR, "protocol error")
        }
        // The pongs owed to a peer that sends pings and never reads filled the write buffer.
        Ok(Error::WriteBufferFull(_)) => End::Close(close_code::TOO_SLOW, "too_slow"),
        _ => End::Gone,
    }
}

/// Most queued frames written before one flush, so a busy socket still reads.
const WRITE_BATCH: usize = 64;

type Sink = SplitSink<WebSocket, Message>;
type Source = SplitStream<WebSocket>;

/// What writing one batch of the queue came to.
enum Wrote {
    Frames,
    Close(u16, &'static str),
    Failed,
}

/// Writes the queued frames starting with `first`, up to [`WRITE_BATCH`], and
/// flushes them. Arms or disarms the expiry timer as `Deadline`s pass by.
async fn write_batch(
    sink: &mut Sink,
    connection: &Connection,
    first: Outbound,
    deadline: &mut Option<Option<i64>>,
) -> Wrote {
    let mut next = Some(first);
    let mut written = 0;
    while let Some(item) = next.take() {
        match item {
            Outbound::Text(text) => {
                if sink.feed(Message::Text(text)).await.is_err() {
                    return Wrote::Failed;
                }
                written += 1;
            }
            Outbound::Deadline(exp) => *deadline = Some(exp),
            Outbound::Close(code, reason) => {
                return if sink.flush().await.is_ok() { Wrote::Close(code, reason) } else { Wrote::Failed };
            }
        }
        if written < WRITE_BATCH {
            next = connection.outbound.try_pop();
        }
    }
    if written > 0 && sink.flush().await.is_err() {
        return Wrote::Failed;
    }
    Wrote::Frames
}

pub async fn run(state: AppState, socket: WebSocket, session: Option<Session>) {
    let binding = session.map(binding_of).unwrap_or_else(Binding::guest);
    let connection = state.registry.connect(binding);
    let id = connection.id;
    let timeouts = state.socket_timeouts;
    let (mut sink, mut stream) = socket.split();
    let mut limiter = FrameLimiter::new();
    // One timer for the socket's whole life, not one per pass.
    let expiry = tokio::time::sleep_until(far_future());
    tokio::pin!(expiry);
    let mut expiry_armed = false;
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + timeouts.ping_interval,
        timeouts.ping_interval,
    );
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the peer must have said something by: moved on by every frame it
    // sends, pulled in by every ping the server sends.
    let silence = tokio::time::sleep(timeouts.idle_timeout);
    tokio::pin!(silence);

    let end = loop {
        tokio::select! {
            biased;
            queued = connection.outbound.pop() => {
                // `None`: evicted for falling behind.
                let Some(first) = queued else { break End::Close(close_code::TOO_SLOW, "too_slow") };
                let mut deadline = None;
                // A write blocked on a peer that stops reading gives up when the
                // socket is evicted or the write timeout passes.
                let wrote = tokio::select! {
                    wrote = tokio::time::timeout(timeouts.write_timeout, write_batch(&mut sink, &connection, first, &mut deadline)) => wrote,
                    _ = connection.outbound.evicted() => break End::Close(close_code::TOO_SLOW, "too_slow"),
                };
                match deadline {
                    Some(Some(exp)) => {
                        expiry.as_mut().reset(expiry_instant(exp));
                        expiry_armed = true;
                    }
                    Some(None) => expiry_armed = false,
                    None => {}
                }
                match wrote {
                    Ok(Wrote::Frames) => {}
                    Ok(Wrote::Close(code, reason)) => break End::Close(code, reason),
                    Ok(Wrote::Failed) => break End::Gone,
                    Err(_elapsed) => {
                        state.registry.evict(id);
                        break End::Close(close_code::TOO_SLOW, "too_slow");
                    }
                }
            }
            _ = &mut expiry, if expiry_armed => {
                expiry_armed = false;
                state.registry.expire(id);
            }
            _ = &mut silence => {
                tracing::info!(socket_id = %connection.public_id, "socket went silent; closing");
                break End::Close(close_code::GOING_AWAY, "no answer to ping");
            }
            _ = heartbeat.tick() => {
                let answer_by = tokio::time::Instant::now() + timeouts.pong_timeout;
                if answer_by < silence.deadline() {
                    silence.as_mut().reset(answer_by);
                }
                match tokio::time::timeout(timeouts.write_timeout, sink.send(Message::Ping(Default::default()))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break End::Gone,
                    Err(_elapsed) => {
                        state.registry.evict(id);
                        break End::Close(close_code::TOO_SLOW, "too_slow");
                    }
                }
            }
            incoming = stream.next() => {
                silence.as_mut().reset(tokio::time::Instant::now() + timeouts.idle_timeout);
                match incoming {
                    Some(Ok(Message::Text(text))) => match limiter.admit() {
                        // Boxed: the handlers' futures (database queries) are large, and an
                        // idle socket's task should not carry their space all its life.
                        Admission::Process => Box::pin(handle_text(&state, id, text.as_str())).await,
                        Admission::Refuse => refuse_rate_limited(&state, id, text.as_str()),
                        Admission::Close => break rate_limit_close(&connection),
                    },
                    Some(Ok(Message::Binary(_))) => match limiter.admit() {
                        Admission::Process | Admission::Refuse => {
                            count_refused("bad_frame");
                            reply(&state, id, None, Err(ErrorBody::new("bad_frame", "frames are JSON text")));
                        }
                        Admission::Close => break rate_limit_close(&connection),
                    },
                    // Pings count against the frame rate: tungstenite owes each one a pong.
                    Some(Ok(Message::Ping(_))) => {
                        if let Admission::Close = limiter.admit() {
                            break rate_limit_close(&connection);
                        }
                    }
                    Some(Ok(Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) => break End::ClosedByPeer,
                    None => break End::Gone,
                    Some(Err(error)) => break close_for(error),
                }
            }
        }
    };
    // Out of the indexes and presence first: the handshake below may take a while.
    state.registry.disconnect(id);
    close(&mut sink, &mut stream, end, timeouts.close_timeout).await;
}

fn rate_limit_close(connection: &Connection) -> End {
    tracing::warn!(socket_id = %connection.public_id, "frame rate limit exceeded; closing");
    End::Close(close_code::POLICY, "rate limit exceeded")
}

/// Ends the connection the RFC 6455 way (5.5.1, 7.1.1): our Close frame, then
/// the peer's frames read and dropped until its Close, so the kernel has
/// nothing unread when the TCP connection closes and does not reset it
/// (a reset would lose our Close). Bounded by `timeout` whatever the peer does.
async fn close(sink: &mut Sink, stream: &mut Source, end: End, timeout: Duration) {
    let handshake = async {
        match end {
            End::Gone => {}
            // tungstenite queued its Close reply: deliver it.
            End::ClosedByPeer => {
                let _ = sink.flush().await;
            }
            End::Close(code, reason) => {
                let close = Message::Close(Some(CloseFrame { code, reason: reason.into() }));
                if sink.send(close).await.is_err() {
                    return;
                }
                // A peer's broken framing can make every read fail: stop after a few.
                let mut failures = 0;
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(Message::Close(_)) => break,
                        Ok(_) => {}
                        Err(_) => {
                            failures += 1;
                            if failures > 8 {
                                break;
                            }
                        }
                    }
                }
            }
        }
    };
    let _ = tokio::time::timeout(timeout, handshake).await;
}

/// Counts a client frame that was not processed (`tether_frames_refused_total`).
fn count_refused(reason: &'static str) {
    metrics::counter!("tether_frames_refused_total", "reason" => reason).increment(1);
}

/// Answers a frame: an `ack` when it carried a usable `ref`, else an `error`
/// frame on failure and nothing on success.
fn reply(state: &AppState, id: SocketId, reference: Option<i64>, result: Result<Map<String, serde_json::Value>, ErrorBody>) {
    if let Some(frame) = answer(reference, result) {
        state.registry.emit(Audience::Socket(id), &frame);
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
    count_refused("rate_limited");
    // Only the `ref` is read: a refused frame costs no parse into values.
    let reference = ClientEnvelope::reference_of(text);
    reply(state, id, reference, Err(ErrorBody::new("rate_limited", "too many frames; slow down")));
}

async fn handle_text(state: &AppState, id: SocketId, text: &str) {
    let Some(envelope) = ClientEnvelope::parse(text) else {
        count_refused("bad_frame");
        return reply(state, id, None, Err(ErrorBody::new("bad_frame", "a frame is one JSON object")));
    };
    let reference = envelope.reference;
    match envelope.frame {
        Err(why) => {
            count_refused("bad_frame");
            reply(state, id, reference, Err(ErrorBody::new("bad_frame", why)))
        }
        Ok(frame) => {
            metrics::counter!("tether_frames_in_total", "type" => frame.kind()).increment(1);
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
        ClientFrame::Join { room, since } => rooms::join(state, id, &room, since, reference).await?,
        ClientFrame::History { room, before, limit } => {
            let fields = rooms::history(state, id, &room, before, limit).await?;
            reply(state, id, reference, Ok(fields));
        }
        ClientFrame::Leave { room } => state.registry.leave(id, &room, ok(Map::new())),
        ClientFrame::Send { room, text } => {
            let fields = rooms::send(state, id, &room, text).await?;
            reply(state, id, reference, Ok(fields));
        }
    }
    Ok(())
}
