//! The registry of live sockets, indexed by user, session, role and room.
//!
//! Every frame the server sends to a socket passes through [`Registry`]: acks,
//! fan-out and server-side rebinds alike. That makes `emit` the one place
//! where a later multi-node build would also publish to other nodes.
//!
//! # Why a rebind is atomic with respect to emits
//!
//! Each socket has one FIFO outbound queue, and frames are only ever put on
//! it while holding the registry lock: emits take the read lock, resolve
//! their recipients from the indexes and enqueue; rebinds take the write
//! lock, change the binding and the indexes, and enqueue their `ack` (or
//! `unbound`/`bound`) before releasing it. So every emit is ordered entirely
//! before or entirely after a rebind: a frame addressed to the old user was
//! enqueued before the ack and is written before it, and once the ack is
//! enqueued the indexes no longer lead any emit for the old user to this
//! socket. The socket task writes its queue in order, so the client never
//! sees a frame for the old user after the ack.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use axum::extract::ws::Utf8Bytes;
use rand::Rng;
use tether_protocol::{close_code, LiveSocket, Member, Role, ServerFrame, UnbindReason, User};

use super::queue::Queue;

use crate::db::{now_rfc3339, now_unix};

/// Frames a socket may have queued before it counts as too slow and is dropped.
pub const OUTBOUND_QUEUE: usize = 256;

pub type SocketId = u64;

/// Who a socket belongs to.
#[derive(Debug, Clone)]
pub enum Binding {
    Guest { name: Arc<str> },
    User { user: User, session_id: Arc<str>, expires_at: i64 },
}

impl Binding {
    pub fn guest() -> Binding {
        Binding::Guest { name: format!("guest-{}", rand::thread_rng().gen_range(1000..10000)).into() }
    }

    pub fn user(&self) -> Option<&User> {
        match self {
            Binding::User { user, .. } => Some(user),
            Binding::Guest { .. } => None,
        }
    }

    pub fn guest_name(&self) -> Option<&str> {
        match self {
            Binding::Guest { name } => Some(name),
            Binding::User { .. } => None,
        }
    }

    pub fn session_id(&self) -> Option<&str> {
        match self {
            Binding::User { session_id, .. } => Some(session_id),
            Binding::Guest { .. } => None,
        }
    }

    pub fn expires_at(&self) -> Option<i64> {
        match self {
            Binding::User { expires_at, .. } => Some(*expires_at),
            Binding::Guest { .. } => None,
        }
    }

    fn member(&self) -> Member {
        match self {
            Binding::User { user, .. } => Member { id: Some(user.id.clone()), name: user.name.clone() },
            Binding::Guest { name } => Member { id: None, name: name.to_string() },
        }
    }
}

/// What a socket task takes from its queue.
#[derive(Debug)]
pub enum Outbound {
    Text(Utf8Bytes),
    /// The binding now expires at these unix seconds (`None`: never).
    Deadline(Option<i64>),
    Close(u16, &'static str),
}

/// Who an emit is for.
pub enum Audience<'a> {
    Socket(SocketId),
    User(&'a str),
    Session(&'a str),
    Role(Role),
    Room(&'a str),
    All,
    Matching(&'a (dyn Fn(&Binding) -> bool + Sync)),
}

/// A socket task's end of its registration.
pub struct Connection {
    pub id: SocketId,
    pub public_id: Arc<str>,
    /// Ends (`None`) when the socket fell too far behind and must be dropped.
    pub outbound: Arc<Queue<Outbound>>,
}

struct Entry {
    public_id: Arc<str>,
    queue: Arc<Queue<Outbound>>,
    binding: Binding,
    rooms: BTreeSet<Arc<str>>,
    connected_at: String,
}

#[derive(Default)]
struct Indexes {
    sockets: HashMap<SocketId, Entry>,
    by_user: HashMap<String, BTreeSet<SocketId>>,
    by_session: HashMap<Arc<str>, BTreeSet<SocketId>>,
    by_role: HashMap<Role, BTreeSet<SocketId>>,
    by_room: HashMap<Arc<str>, BTreeSet<SocketId>>,
    /// Revoked session ids with their expiry, so a rebind racing a revocation
    /// cannot bind to a dead session. Swept once they expire.
    revoked: HashMap<Arc<str>, i64>,
}

pub struct Registry {
    indexes: RwLock<Indexes>,
    next_id: AtomicU64,
    /// Makes public socket ids unique across restarts.
    node: String,
    allow_guests: bool,
}

fn text(frame: &ServerFrame) -> Utf8Bytes {
    Utf8Bytes::from(frame.to_json())
}

fn insert_index<K: std::hash::Hash + Eq>(index: &mut HashMap<K, BTreeSet<SocketId>>, key: K, id: SocketId) {
    index.entry(key).or_default().insert(id);
}

fn remove_index<K: std::hash::Hash + Eq>(index: &mut HashMap<K, BTreeSet<SocketId>>, key: &K, id: SocketId) {
    if let Some(set) = index.get_mut(key) {
        set.remove(&id);
        if set.is_empty() {
            index.remove(key);
        }
    }
}

impl Indexes {
    /// Queues a frame for one socket; a socket whose queue is full is evicted.
    fn send(&self, id: SocketId, outbound: Outbound) {
        if let Some(entry) = self.sockets.get(&id) {
            if entry.queue.push(outbound).is_err() {
                tracing::warn!(socket_id = %entry.public_id, "outbound queue full; dropping slow socket");
            }
        }
    }

    fn send_text(&self, id: SocketId, bytes: &Utf8Bytes) {
        self.send(id, Outbound::Text(bytes.clone()));
    }

    fn recipients(&self, audience: &Audience) -> Vec<SocketId> {
        let from = |set: Option<&BTreeSet<SocketId>>| set.map(|s| s.iter().copied().collect()).unwrap_or_default();
        match audience {
            Audience::Socket(id) => vec![*id],
            Audience::User(user_id) => from(self.by_user.get(*user_id)),
            Audience::Session(sid) => from(self.by_session.get(*sid)),
            Audience::Role(role) => from(self.by_role.get(role)),
            Audience::Room(room) => from(self.by_room.get(*room)),
            Audience::All => self.sockets.keys().copied().collect(),
            Audience::Matching(keep) => {
                self.sockets.iter().filter(|(_, e)| keep(&e.binding)).map(|(id, _)| *id).collect()
            }
        }
    }

    fn index_binding(&mut self, id: SocketId, binding: &Binding) {
        if let Binding::User { user, session_id, .. } = binding {
            insert_index(&mut self.by_user, user.id.clone(), id);
            insert_index(&mut self.by_session, session_id.clone(), id);
            insert_index(&mut self.by_role, user.role, id);
        }
    }

    fn unindex_binding(&mut self, id: SocketId, binding: &Binding) {
        if let Binding::User { user, session_id, .. } = binding {
            remove_index(&mut self.by_user, &user.id, id);
            remove_index(&mut self.by_session, session_id, id);
            remove_index(&mut self.by_role, &user.role, id);
        }
    }

    /// Replaces a socket's binding; returns the old one.
    fn rebind(&mut self, id: SocketId, binding: Binding) -> Option<Binding> {
        let old = self.sockets.get(&id)?.binding.clone();
        self.unindex_binding(id, &old);
        self.index_binding(id, &binding);
        let entry = self.sockets.get_mut(&id)?;
        entry.binding = binding;
        Some(old)
    }

    fn members(&self, room: &str) -> Vec<Member> {
        let mut members: Vec<Member> = Vec::new();
        for id in self.by_room.get(room).into_iter().flatten() {
            let member = self.sockets[id].binding.member();
            // A user is one member however many of their sockets are in the room.
            if member.id.is_none() || !members.iter().any(|m| m.id == member.id) {
                members.push(member);
            }
        }
        members
    }

    fn send_presence(&self, room: &str) {
        let frame = text(&ServerFrame::Presence { room: room.to_string(), members: self.members(room) });
        for id in self.by_room.get(room).into_iter().flatten() {
            self.send_text(*id, &frame);
        }
    }

    /// Whether a user has a socket other than `except` in the room.
    fn user_in_room_elsewhere(&self, user_id: &str, room: &str, except: SocketId) -> bool {
        self.by_user.get(user_id).is_some_and(|ids| {
            ids.iter().any(|other| *other != except && self.sockets.get(other).is_some_and(|e| e.rooms.contains(room)))
        })
    }

    /// Whether adding or removing this socket changes the room's member list:
    /// not when another socket of the same user stays or already is there.
    fn changes_members(&self, id: SocketId, binding: &Binding, room: &str) -> bool {
        binding.user().is_none_or(|user| !self.user_in_room_elsewhere(&user.id, room, id))
    }

    /// Rebinds a socket and sends presence to each of its rooms whose member list changed.
    fn rebind_in_rooms(&mut self, id: SocketId, binding: Binding) -> Option<Binding> {
        let rooms: Vec<Arc<str>> = self.sockets.get(&id)?.rooms.iter().cloned().collect();
        let before: Vec<Vec<Member>> = rooms.iter().map(|room| self.members(room)).collect();
        let old = self.rebind(id, binding)?;
        for (room, before) in rooms.iter().zip(before) {
            if self.members(room) != before {
                self.send_presence(room);
            }
        }
        Some(old)
    }

    /// Takes the user away from one socket: it becomes a guest (or is closed
    /// with 4401 when guests are off), keeping its rooms.
    fn unbind(&mut self, id: SocketId, reason: &str, notice: Option<UnbindReason>, allow_guests: bool) {
        let Some(old) = self.rebind_in_rooms(id, Binding::guest()) else { return };
        tracing::info!(
            socket_id = %self.sockets[&id].public_id,
            user_id = old.user().map(|u| u.id.as_str()).unwrap_or("-"),
            reason,
            "socket unbound"
        );
        if let Some(reason) = notice {
            self.send(id, Outbound::Text(text(&ServerFrame::Unbound { reason })));
        }
        self.send(id, Outbound::Deadline(None));
        if !allow_guests {
            self.send(id, Outbound::Close(close_code::NOT_AUTHENTICATED, "not_authenticated"));
        }
    }
}

impl Registry {
    pub fn new(allow_guests: bool) -> Registry {
        let node: String = (0..6).map(|_| char::from(b'a' + rand::thread_rng().gen_range(0..26))).collect();
        Registry { indexes: RwLock::default(), next_id: AtomicU64::new(1), node, allow_guests }
    }

    pub fn allow_guests(&self) -> bool {
        self.allow_guests
    }

    /// A socket came, went or was rebound: whoever watches the sockets
    /// (the admin view) hears of it. Called with the lock released.
    fn announce_change(&self) {
        crate::events::publish(self, crate::events::ModelEvent::SocketsChanged);
    }

    fn read(&self) -> RwLockReadGuard<'_, Indexes> {
        self.indexes.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Indexes> {
        self.indexes.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a socket and queues its `welcome` as the first frame.
    pub fn connect(&self, binding: Binding) -> Connection {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let public_id: Arc<str> = format!("{}-{id:x}", self.node).into();
        let queue = Arc::new(Queue::new(OUTBOUND_QUEUE));
        let mut ix = self.write();
        // A session revoked while this upgrade was being authenticated binds nothing.
        let binding = match binding {
            Binding::User { ref session_id, .. } if ix.revoked.contains_key(session_id) => Binding::guest(),
            binding => binding,
        };
        let welcome = ServerFrame::Welcome {
            socket_id: public_id.to_string(),
            user: binding.user().cloned(),
            guest_name: binding.guest_name().map(String::from),
            expires_at: binding.expires_at(),
        };
        tracing::info!(
            socket_id = %public_id,
            user_id = binding.user().map(|u| u.id.as_str()).unwrap_or("-"),
            reason = "connect",
            "socket bound"
        );
        ix.index_binding(id, &binding);
        let deadline = binding.expires_at();
        ix.sockets.insert(
            id,
            Entry {
                public_id: public_id.clone(),
                queue: queue.clone(),
                binding,
                rooms: BTreeSet::new(),
                connected_at: now_rfc3339(),
            },
        );
        ix.send(id, Outbound::Text(text(&welcome)));
        ix.send(id, Outbound::Deadline(deadline));
        drop(ix);
        self.announce_change();
        Connection { id, public_id, outbound: queue }
    }

    /// Removes a closed socket; its rooms get the new presence.
    pub fn disconnect(&self, id: SocketId) {
        let mut ix = self.write();
        let Some(entry) = ix.sockets.remove(&id) else { return };
        ix.unindex_binding(id, &entry.binding);
        for room in &entry.rooms {
            remove_index(&mut ix.by_room, room, id);
            if ix.changes_members(id, &entry.binding, room) {
                ix.send_presence(room);
            }
        }
        tracing::info!(socket_id = %entry.public_id, "socket disconnected");
        drop(ix);
        self.announce_change();
    }

    /// Sends a frame to every socket of the audience, serialized once.
    pub fn emit(&self, audience: Audience, frame: &ServerFrame) -> usize {
        let ix = self.read();
        let recipients = ix.recipients(&audience);
        if recipients.is_empty() {
            return 0;
        }
        let bytes = text(frame);
        for id in &recipients {
            ix.send_text(*id, &bytes);
        }
        recipients.len()
    }

    pub fn binding(&self, id: SocketId) -> Option<Binding> {
        self.read().sockets.get(&id).map(|e| e.binding.clone())
    }

    /// Binds a socket to a session (a `login` frame) and queues `ack` with
    /// the lock held. `None`, and nothing changed, when the session was revoked.
    pub fn bind(&self, id: SocketId, binding: Binding, ack: impl FnOnce(&User) -> Option<ServerFrame>) -> Option<User> {
        let mut ix = self.write();
        let session_id = binding.session_id()?;
        if ix.revoked.contains_key(session_id) {
            return None;
        }
        let user = binding.user()?.clone();
        let deadline = binding.expires_at();
        // The ack goes first; the rooms' new presence follows it.
        if let Some(ack) = ack(&user) {
            ix.send(id, Outbound::Text(text(&ack)));
        }
        ix.rebind_in_rooms(id, binding)?;
        tracing::info!(socket_id = %ix.sockets[&id].public_id, user_id = %user.id, reason = "login", "socket bound");
        ix.send(id, Outbound::Deadline(deadline));
        drop(ix);
        self.announce_change();
        Some(user)
    }

    /// Makes a socket a guest (a `logout` frame), queueing `ack` with the lock held.
    pub fn unbind_socket(&self, id: SocketId, ack: Option<ServerFrame>) {
        let mut ix = self.write();
        if !ix.sockets.contains_key(&id) {
            return;
        }
        if let Some(ack) = ack {
            ix.send(id, Outbound::Text(text(&ack)));
        }
        let Some(old) = ix.rebind_in_rooms(id, Binding::guest()) else { return };
        tracing::info!(
            socket_id = %ix.sockets[&id].public_id,
            user_id = old.user().map(|u| u.id.as_str()).unwrap_or("-"),
            reason = "logout",
            "socket unbound"
        );
        ix.send(id, Outbound::Deadline(None));
        if !self.allow_guests {
            ix.send(id, Outbound::Close(close_code::NOT_AUTHENTICATED, "not_authenticated"));
        }
        drop(ix);
        self.announce_change();
    }

    /// A session ended server-side: every socket bound through it is unbound.
    pub fn revoke_session(&self, session_id: &str, expires_at: i64, reason: UnbindReason) {
        let mut ix = self.write();
        let now = now_unix();
        ix.revoked.retain(|_, exp| *exp > now);
        ix.revoked.insert(session_id.into(), expires_at);
        let ids: Vec<SocketId> = ix.by_session.get(session_id).into_iter().flatten().copied().collect();
        let changed = !ids.is_empty();
        for id in ids {
            ix.unbind(id, reason.as_str(), Some(reason), self.allow_guests);
        }
        drop(ix);
        if changed {
            self.announce_change();
        }
    }

    /// Unbinds a socket whose binding reached its `exp`, unless it was rebound meanwhile.
    pub fn expire(&self, id: SocketId) {
        let mut ix = self.write();
        let expired = ix.sockets.get(&id).and_then(|e| e.binding.expires_at()).is_some_and(|exp| exp <= now_unix());
        if expired {
            ix.unbind(id, "expired", Some(UnbindReason::Expired), self.allow_guests);
            drop(ix);
            self.announce_change();
        }
    }

    /// The stored user changed (role, name): every live socket of theirs gets `bound`.
    pub fn update_user(&self, user: &User) -> usize {
        let mut ix = self.write();
        let ids: Vec<SocketId> = ix.by_user.get(&user.id).into_iter().flatten().copied().collect();
        for &id in &ids {
            let Some(Binding::User { session_id, expires_at, .. }) = ix.sockets.get(&id).map(|e| e.binding.clone())
            else {
                continue;
            };
            ix.send(id, Outbound::Text(text(&ServerFrame::Bound { user: user.clone(), expires_at: Some(expires_at) })));
            ix.rebind_in_rooms(id, Binding::User { user: user.clone(), session_id, expires_at });
            tracing::info!(socket_id = %ix.sockets[&id].public_id, user_id = %user.id, reason = "user changed", "socket bound");
        }
        drop(ix);
        if !ids.is_empty() {
            self.announce_change();
        }
        ids.len()
    }

    /// Adds a socket to a room: `ack` first, then the room's new presence.
    pub fn join(&self, id: SocketId, room: &str, ack: Option<ServerFrame>) {
        let mut ix = self.write();
        let room: Arc<str> = room.into();
        let Some(entry) = ix.sockets.get_mut(&id) else { return };
        let newly_in = entry.rooms.insert(room.clone());
        let binding = entry.binding.clone();
        insert_index(&mut ix.by_room, room.clone(), id);
        if let Some(ack) = ack {
            ix.send(id, Outbound::Text(text(&ack)));
        }
        if newly_in && ix.changes_members(id, &binding, &room) {
            ix.send_presence(&room);
        } else {
            // The member list is unchanged; the joining socket still learns it.
            let frame = ServerFrame::Presence { room: room.to_string(), members: ix.members(&room) };
            ix.send(id, Outbound::Text(text(&frame)));
        }
    }

    /// Removes a socket from a room: `ack` to it, the new presence to the others.
    pub fn leave(&self, id: SocketId, room: &str, ack: Option<ServerFrame>) {
        let mut ix = self.write();
        let was_member = ix.sockets.get_mut(&id).is_some_and(|e| e.rooms.remove(room));
        if let Some(ack) = ack {
            ix.send(id, Outbound::Text(text(&ack)));
        }
        if was_member {
            remove_index(&mut ix.by_room, &Arc::from(room), id);
            let binding = ix.sockets[&id].binding.clone();
            if ix.changes_members(id, &binding, room) {
                ix.send_presence(room);
            }
        }
    }

    pub fn is_in_room(&self, id: SocketId, room: &str) -> bool {
        self.read().sockets.get(&id).is_some_and(|e| e.rooms.contains(room))
    }

    /// Every live socket, oldest first, for the admin view.
    pub fn snapshot(&self) -> Vec<LiveSocket> {
        let ix = self.read();
        let mut ids: Vec<&SocketId> = ix.sockets.keys().collect();
        ids.sort();
        ids.into_iter()
            .map(|id| {
                let e = &ix.sockets[id];
                LiveSocket {
                    socket_id: e.public_id.to_string(),
                    user: e.binding.user().cloned(),
                    guest_name: e.binding.guest_name().map(String::from),
                    rooms: e.rooms.iter().map(|r| r.to_string()).collect(),
                    connected_at: e.connected_at.clone(),
                }
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.read().sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Server shutdown: every socket is closed with 1001.
    pub fn close_all(&self) {
        let ix = self.read();
        for id in ix.sockets.keys() {
            ix.send(*id, Outbound::Close(close_code::GOING_AWAY, "server shutting down"));
        }
    }
}
