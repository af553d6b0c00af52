//! The tab's one WebSocket, shared through context.
//!
//! The socket survives login and logout: those send `login`/`logout` frames
//! over it and the server rebinds it in place. It reconnects with
//! exponential backoff and jitter, except after a close the contract calls
//! final (4401, 1008).

use std::collections::HashMap;

use leptos::prelude::*;
use serde_json::{Map, Value};
use tether_protocol::{ChatMessage, ClientFrame, ErrorBody, Member, Room, User};

use crate::identity::Auth;

#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Connecting,
    Online,
    Offline { retry_in_secs: u32 },
    /// A final close: no retry without a user action.
    Stopped { code: u16, reason: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub at: String,
    pub kind: &'static str,
    pub detail: String,
}

/// Reactive state of the socket; cheap to copy into closures.
#[derive(Clone, Copy)]
pub struct Socket {
    pub status: RwSignal<Status>,
    pub socket_id: RwSignal<Option<String>>,
    /// Who the server says this socket belongs to.
    pub user: RwSignal<Option<User>>,
    pub guest_name: RwSignal<Option<String>>,
    pub log: RwSignal<Vec<LogEntry>>,
    pub messages: RwSignal<HashMap<String, Vec<ChatMessage>>>,
    pub presence: RwSignal<HashMap<String, Vec<Member>>>,
    pub rooms: RwSignal<Vec<Room>>,
    /// `user.registered` events seen by this (admin) tab, newest last.
    pub registrations: RwSignal<Vec<User>>,
    /// Bumped whenever the server reports sockets coming or going.
    pub sockets_changed: RwSignal<u64>,
    pub auth: Auth,
}

pub fn use_socket() -> Socket {
    expect_context::<Socket>()
}

impl Socket {
    pub fn new(auth: Auth) -> Socket {
        Socket {
            status: RwSignal::new(Status::Connecting),
            socket_id: RwSignal::new(None),
            user: RwSignal::new(None),
            guest_name: RwSignal::new(None),
            log: RwSignal::new(Vec::new()),
            messages: RwSignal::new(HashMap::new()),
            presence: RwSignal::new(HashMap::new()),
            rooms: RwSignal::new(Vec::new()),
            registrations: RwSignal::new(Vec::new()),
            sockets_changed: RwSignal::new(0),
            auth,
        }
    }

    /// Opens the socket (in the browser; nothing on the server).
    pub fn start(self) {
        #[cfg(feature = "hydrate")]
        client::start(self);
    }

    /// Sends a frame and waits for its `ack`: the success fields, or the error.
    pub async fn request(self, frame: ClientFrame) -> Result<Map<String, Value>, ErrorBody> {
        #[cfg(feature = "hydrate")]
        {
            client::request(frame).await
        }
        #[cfg(not(feature = "hydrate"))]
        {
            let _ = frame;
            Err(ErrorBody::new("offline", "the socket runs in the browser"))
        }
    }

    /// Binds this socket to the session behind `ticket`.
    pub async fn login(self, ticket: String) -> Result<User, ErrorBody> {
        let fields = self.request(ClientFrame::Login { ticket }).await?;
        let ack: tether_protocol::LoginAck =
            serde_json::from_value(Value::Object(fields)).map_err(|e| ErrorBody::new("bad_frame", e.to_string()))?;
        self.user.set(Some(ack.user.clone()));
        self.guest_name.set(None);
        self.note("bound", format!("as {}", ack.user.name));
        Ok(ack.user)
    }

    /// Makes this socket a guest again, then asks for its new guest name.
    pub async fn logout(self) -> Result<(), ErrorBody> {
        self.request(ClientFrame::Logout).await?;
        self.user.set(None);
        self.refresh_identity().await;
        self.note("unbound", "logout (this tab)".into());
        Ok(())
    }

    /// Asks the server who this socket is (after a server-side unbind, for the new guest name).
    pub async fn refresh_identity(self) {
        if let Ok(fields) = self.request(ClientFrame::Whoami).await {
            if let Ok(who) = serde_json::from_value::<tether_protocol::WhoamiAck>(Value::Object(fields)) {
                self.user.set(who.user);
                self.guest_name.set(who.guest_name);
            }
        }
    }

    pub fn note(self, kind: &'static str, detail: String) {
        self.log.update(|log| {
            log.push(LogEntry { at: clock(), kind, detail });
            let excess = log.len().saturating_sub(200);
            log.drain(..excess);
        });
    }
}

/// Adds messages to a room's list, kept in `seq` order without duplicates
/// (a message can arrive live and again in a resumed join's history).
pub fn merge_messages(held: &mut Vec<ChatMessage>, incoming: impl IntoIterator<Item = ChatMessage>) {
    for message in incoming {
        match held.binary_search_by_key(&message.seq, |m| m.seq) {
            Ok(_) => {}
            Err(at) => held.insert(at, message),
        }
    }
}

/// Applies a `presence_diff`: leaves first, then joins (a key in both left and came back).
pub fn apply_presence_diff(members: &mut Vec<Member>, joins: Vec<Member>, leaves: Vec<Member>) {
    members.retain(|m| !leaves.iter().any(|l| l.key == m.key));
    for member in joins {
        members.retain(|m| m.key != member.key);
        members.push(member);
    }
}

fn clock() -> String {
    #[cfg(feature = "hydrate")]
    {
        let date = js_sys::Date::new_0();
        format!("{:02}:{:02}:{:02}", date.get_hours(), date.get_minutes(), date.get_seconds())
    }
    #[cfg(not(feature = "hydrate"))]
    String::new()
}

#[cfg(feature = "hydrate")]
mod client {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::time::Duration;

    use futures_channel::oneshot;
    use leptos::prelude::*;
    use serde_json::{Map, Value};
    use tether_protocol::{close_code, ClientEnvelope, ClientFrame, ErrorBody, ServerFrame};
    use wasm_bindgen::closure::Closure;
    use wasm_bindgen::JsCast;
    use web_sys::{CloseEvent, MessageEvent, WebSocket};

    use super::{Socket, Status};

    type AckResult = Result<Map<String, Value>, ErrorBody>;

    /// Longest wait between reconnect attempts.
    const MAX_BACKOFF_SECS: f64 = 30.0;
    /// Attempts after which the log says `reconnect_failed` (retrying goes on).
    const ATTEMPTS_BEFORE_FAILED: u32 = 10;

    #[derive(Default)]
    struct Connection {
        ws: Option<WebSocket>,
        next_ref: i64,
        pending: HashMap<i64, oneshot::Sender<AckResult>>,
        attempts: u32,
        handlers: Vec<Closure<dyn FnMut(web_sys::Event)>>,
    }

    thread_local! {
        static CONNECTION: RefCell<Connection> = RefCell::new(Connection::default());
    }

    fn ws_url() -> String {
        let location = window().location();
        let scheme = if location.protocol().ok().as_deref() == Some("https:") { "wss" } else { "ws" };
        format!("{scheme}://{}/ws", location.host().unwrap_or_default())
    }

    pub fn start(socket: Socket) {
        socket.status.set(Status::Connecting);
        let Ok(ws) = WebSocket::new(&ws_url()) else {
            socket.note("connect_error", "cannot create a WebSocket".into());
            return schedule_reconnect(socket);
        };
        let on_open = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
            CONNECTION.with_borrow_mut(|c| c.attempts = 0);
        });
        let on_message = Closure::<dyn FnMut(web_sys::Event)>::new(move |event: web_sys::Event| {
            let Some(text) = event.dyn_ref::<MessageEvent>().and_then(|m| m.data().as_string()) else { return };
            match serde_json::from_str::<ServerFrame>(&text) {
                Ok(frame) => receive(socket, frame),
                Err(e) => socket.note("error", format!("unreadable frame: {e}")),
            }
        });
        let on_error = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
            if socket.status.get_untracked() == Status::Connecting {
                socket.note("connect_error", "the connection failed".into());
            }
        });
        let on_close = Closure::<dyn FnMut(web_sys::Event)>::new(move |event: web_sys::Event| {
            let (code, reason) =
                event.dyn_ref::<CloseEvent>().map(|c| (c.code(), c.reason())).unwrap_or((1006, String::new()));
            closed(socket, code, reason);
        });
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        CONNECTION.with_borrow_mut(|c| {
            c.ws = Some(ws);
            c.handlers = vec![on_open, on_message, on_error, on_close];
        });
    }

    fn closed(socket: Socket, code: u16, reason: String) {
        let pending = CONNECTION.with_borrow_mut(|c| {
            c.ws = None;
            std::mem::take(&mut c.pending)
        });
        for (_, waiter) in pending {
            let _ = waiter.send(Err(ErrorBody::new("disconnected", "the socket closed before answering")));
        }
        let was_online = socket.status.get_untracked() == Status::Online;
        if was_online || close_code::is_final(code) {
            socket.note("disconnect", format!("code {code}{}", if reason.is_empty() { String::new() } else { format!(": {reason}") }));
        }
        socket.socket_id.set(None);
        if close_code::is_final(code) {
            let why = if code == close_code::NOT_AUTHENTICATED { "log in to connect" } else { "closed for breaking the rate limit" };
            socket.status.set(Status::Stopped { code, reason: why.into() });
            socket.note("reconnect_failed", format!("not retrying after code {code}"));
            return;
        }
        schedule_reconnect(socket);
    }

    fn schedule_reconnect(socket: Socket) {
        let attempts = CONNECTION.with_borrow_mut(|c| {
            c.attempts += 1;
            c.attempts
        });
        if attempts == ATTEMPTS_BEFORE_FAILED {
            socket.note("reconnect_failed", format!("{attempts} attempts failed; still retrying"));
        }
        // Exponential backoff with jitter: half to all of min(30 s, 0.5 s × 2^n).
        let ceiling = (0.5 * 2f64.powi(attempts.min(10) as i32 - 1)).min(MAX_BACKOFF_SECS);
        let delay = ceiling * (0.5 + js_sys::Math::random() / 2.0);
        socket.status.set(Status::Offline { retry_in_secs: delay.ceil() as u32 });
        let countdown = set_interval_with_handle(
            move || {
                if let Status::Offline { retry_in_secs } = socket.status.get_untracked() {
                    socket.status.set(Status::Offline { retry_in_secs: retry_in_secs.saturating_sub(1) });
                }
            },
            Duration::from_secs(1),
        )
        .ok();
        set_timeout(
            move || {
                if let Some(handle) = countdown {
                    handle.clear();
                }
                socket.note("reconnect_attempt", format!("attempt {attempts}"));
                start(socket);
            },
            Duration::from_secs_f64(delay),
        );
    }

    fn receive(socket: Socket, frame: ServerFrame) {
        match frame {
            ServerFrame::Welcome { socket_id, user, guest_name, .. } => {
                socket.note("connect", format!("socket {socket_id}"));
                socket.socket_id.set(Some(socket_id));
                // The cookie is the truth: a welcome without a user means no live session.
                socket.auth.user.set(user.clone());
                socket.user.set(user);
                socket.guest_name.set(guest_name);
                socket.status.set(Status::Online);
            }
            ServerFrame::Ack { reference, ok, error, fields } => {
                let waiter = CONNECTION.with_borrow_mut(|c| c.pending.remove(&reference));
                if let Some(waiter) = waiter {
                    let result = if ok { Ok(fields) } else { Err(error.unwrap_or_else(|| ErrorBody::new("failed", "failed"))) };
                    let _ = waiter.send(result);
                }
            }
            ServerFrame::Bound { user, .. } => {
                socket.note("bound", format!("as {} ({})", user.name, user.role.as_str()));
                socket.auth.user.set(Some(user.clone()));
                socket.user.set(Some(user));
                socket.guest_name.set(None);
            }
            ServerFrame::Unbound { reason } => {
                socket.note("unbound", reason.as_str().into());
                socket.user.set(None);
                socket.auth.user.set(None);
                leptos::task::spawn_local(socket.refresh_identity());
            }
            ServerFrame::Message(message) => {
                socket.messages.update(|all| {
                    super::merge_messages(all.entry(message.room.clone()).or_default(), [message]);
                });
            }
            ServerFrame::Presence { room, members } => {
                socket.presence.update(|all| {
                    all.insert(room, members);
                });
            }
            ServerFrame::PresenceDiff { room, joins, leaves } => {
                socket.presence.update(|all| super::apply_presence_diff(all.entry(room).or_default(), joins, leaves));
            }
            ServerFrame::Event { topic, data } => match topic.as_str() {
                tether_protocol::topic::ROOM_CREATED => {
                    if let Ok(room) = serde_json::from_value::<tether_protocol::Room>(data) {
                        socket.rooms.update(|rooms| {
                            if !rooms.iter().any(|r| r.code == room.code) {
                                rooms.push(room);
                            }
                        });
                    }
                }
                tether_protocol::topic::USER_REGISTERED => {
                    if let Ok(user) = serde_json::from_value::<tether_protocol::User>(data) {
                        socket.registrations.update(|list| list.push(user));
                    }
                }
                tether_protocol::topic::SOCKETS_CHANGED => socket.sockets_changed.update(|n| *n += 1),
                _ => {}
            },
            ServerFrame::Error(error) => socket.note("error", format!("{}: {}", error.code, error.message)),
        }
    }

    pub async fn request(frame: ClientFrame) -> AckResult {
        let (sender, receiver) = oneshot::channel();
        let sent = CONNECTION.with_borrow_mut(|c| {
            let ws = c.ws.as_ref().filter(|ws| ws.ready_state() == WebSocket::OPEN)?;
            c.next_ref += 1;
            let reference = c.next_ref;
            ws.send_with_str(&ClientEnvelope::encode(&frame, reference)).ok()?;
            c.pending.insert(reference, sender);
            Some(())
        });
        if sent.is_none() {
            return Err(ErrorBody::new("offline", "not connected; try again in a moment"));
        }
        receiver.await.unwrap_or_else(|_| Err(ErrorBody::new("disconnected", "the socket closed")))
    }
}
