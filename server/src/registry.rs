//! The registry of live sockets on this node, indexed by user, session, role
//! and room, with each room's presence (its members, keyed `u:<user id>` or
//! `g:<socket id>`, ../shared/PROTOCOL.md "presence").
//!
//! Every frame the server sends to a socket passes through [`Registry`]: acks,
//! fan-out and server-side rebinds alike. It knows nothing of HTTP, accounts
//! or rooms' storage: callers hand it bindings, room codes and frames.
//!
//! # Slow consumers
//!
//! A socket whose queue overflows (`socket-queue-frames`) is evicted at
//! once: out of every index and every room's presence (its rooms get a
//! `presence_diff`), logged once; its task then closes it with 4002 `too_slow`.
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use axum::extract::ws::Utf8Bytes;
use rand::Rng;
use serde_json::json;
use tether_protocol::{close_code, topic, LiveSocket, Member, Role, ServerFrame, UnbindReason, User};
use tokio::sync::mpsc;

pub mod queue;

use queue::{Push, Queue};

use crate::db::{now_rfc3339, now_unix};

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

    /// The presence member of a socket with this binding: a user is one
    /// member (`u:<id>`) across their sockets, a guest socket one of its own.
    fn member(&self, public_id: &str) -> Member {
        match self {
            Binding::User { user, .. } => {
                Member { key: format!("u:{}", user.id), id: Some(user.id.clone()), name: user.name.clone() }
            }
            Binding::Guest { name } => Member { key: format!("g:{public_id}"), id: None, name: name.to_string() },
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

/// Who an emit is for: plain data, resolved against the indexes.
#[derive(Debug, Clone, Copy)]
pub enum Audience<'a> {
    Socket(SocketId),
    User(&'a str),
    Session(&'a str),
    Role(Role),
    Room(&'a str),
    All,
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
    /// Rooms subscribed to whose join is not complete yet (see [`Registry::subscribe`]).
    joining: BTreeSet<Arc<str>>,
    connected_at: String,
}

impl Entry {
    fn member(&self) -> Member {
        self.binding.member(&self.public_id)
    }
}

/// A member of a room, on this node and on others: present while it has a
/// socket in the room on any node.
struct Present {
    member: Member,
    /// This node's sockets in the room it stands for.
    sockets: usize,
    /// The other nodes where it has sockets in the room ([`Registry::remote_presence`]).
    nodes: BTreeSet<Arc<str>>,
}

impl Present {
    fn is_gone(&self) -> bool {
        self.sockets == 0 && self.nodes.is_empty()
    }
}

/// A change of this node's own part of the cluster's presence, or of its
/// socket list, for the other nodes ([`Registry::cluster_feed`]). Plain data:
/// the bus carries it to every node, where [`Registry::remote_presence`] applies it.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeChange {
    /// This node's first socket of `member` is in `room` (or the member's details changed).
    Joined { room: String, member: Member },
    /// This node's last socket of the member keyed `key` left `room`.
    Left { room: String, key: String },
    /// This node's socket list changed (the admin view, `sockets.changed`).
    SocketsChanged,
}

/// What adding a socket's member did to a room's member list.
enum Added {
    Unchanged,
    Joined,
    /// The key was there with other details (a renamed user): this was the old member.
    Replaced(Member),
}

#[derive(Default)]
struct RoomState {
    sockets: BTreeSet<SocketId>,
    members: BTreeMap<String, Present>,
    /// Per joined socket, the newest `seq` it already has (from its join's
    /// history): a message at or below it is not sent again.
    floors: HashMap<SocketId, i64>,
    /// Sockets between [`Registry::subscribe`] and [`Registry::join`]: the
    /// room's messages meanwhile, by `seq`, held until the join's history is known.
    joining: Mutex<HashMap<SocketId, Vec<(i64, Utf8Bytes)>>>,
}

impl RoomState {
    /// Adds one of this node's sockets' member (`node`: `None`) or another
    /// node's part (`Some`). With it, whether this node's own part changed
    /// (the other nodes must hear of it).
    fn add(&mut self, member: &Member, node: Option<&Arc<str>>) -> (Added, bool) {
        let present = self.members.entry(member.key.clone()).or_insert_with(|| Present {
            member: member.clone(),
            sockets: 0,
            nodes: BTreeSet::new(),
        });
        let was_gone = present.is_gone();
        let first_here = match node {
            None => {
                present.sockets += 1;
                present.sockets == 1
            }
            Some(node) => {
                present.nodes.insert(node.clone());
                false
            }
        };
        let added = if was_gone {
            Added::Joined
        } else if present.member == *member {
            Added::Unchanged
        } else {
            Added::Replaced(std::mem::replace(&mut present.member, member.clone()))
        };
        let here_changed = first_here || (node.is_none() && matches!(added, Added::Replaced(_)));
        (added, here_changed)
    }

    /// Takes away one of this node's sockets' member (`node`: `None`) or
    /// another node's part. With it: the member, when it is now gone from the
    /// room on every node; whether this node's own part changed.
    fn remove(&mut self, key: &str, node: Option<&str>) -> (Option<Member>, bool) {
        let Some(present) = self.members.get_mut(key) else { return (None, false) };
        let last_here = match node {
            None if present.sockets > 0 => {
                present.sockets -= 1;
                present.sockets == 0
            }
            None => return (None, false),
            Some(node) => {
                if !present.nodes.remove(node) {
                    return (None, false);
                }
                false
            }
        };
        if !present.is_gone() {
            return (None, last_here);
        }
        (self.members.remove(key).map(|p| p.member), last_here)
    }

    fn members(&self) -> Vec<Member> {
        self.members.values().map(|p| p.member.clone()).collect()
    }

    fn is_unused(&mut self) -> bool {
        self.sockets.is_empty()
            && self.members.is_empty()
            && self.joining.get_mut().unwrap_or_else(|p| p.into_inner()).is_empty()
    }
}

/// Sockets evicted while only a read lock was held, waiting to be removed.
#[derive(Default)]
struct Evictions {
    ids: Mutex<Vec<SocketId>>,
    /// Whether `ids` may be non-empty, read without taking the mutex.
    pending: AtomicBool,
}

impl Evictions {
    fn push(&self, id: SocketId) {
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).push(id);
        self.pending.store(true, Ordering::Release);
    }

    fn take(&self) -> Vec<SocketId> {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        self.pending.store(false, Ordering::Release);
        std::mem::take(&mut *ids)
    }

    fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }
}

#[derive(Default)]
struct Indexes {
    sockets: HashMap<SocketId, Entry>,
    by_user: HashMap<String, BTreeSet<SocketId>>,
    by_session: HashMap<Arc<str>, BTreeSet<SocketId>>,
    by_role: HashMap<Role, BTreeSet<SocketId>>,
    rooms: HashMap<Arc<str>, RoomState>,
    /// Revoked session ids with their expiry, so a rebind racing a revocation
    /// cannot bind to a dead session. Swept once they expire.
    revoked: HashMap<Arc<str>, i64>,
    /// Sockets whose queue overflowed under a read lock, removed once it is released.
    evicted: Arc<Evictions>,
    /// Sockets bound to a user (the rest are guests), for the `tether_sockets` gauge.
    bound: usize,
    /// Where this node's own changes go for the other nodes, once a bus asked.
    feed: Option<mpsc::UnboundedSender<NodeChange>>,
}

pub struct Registry {
    indexes: RwLock<Indexes>,
    /// The same as the indexes' own, so `settle` can check it without the lock.
    evicted: Arc<Evictions>,
    next_id: AtomicU64,
    /// Names this node in socket ids and the admin view; unique across restarts.
    node: String,
    allow_guests: bool,
    /// Frames a socket may have queued before it counts as too slow and is dropped.
    queue_frames: usize,
}

fn text(frame: &ServerFrame) -> Utf8Bytes {
    Utf8Bytes::from(frame.to_json())
}

/// Counts frames queued to sockets (`tether_frames_out_total`, crate::telemetry).
fn count_out(kind: &'static str, frames: usize) {
    if frames > 0 {
        metrics::counter!("tether_frames_out_total", "type" => kind).increment(frames as u64);
    }
}

/// Counts a rebind in place (`tether_rebinds_total`).
fn count_rebind(kind: &'static str) {
    metrics::counter!("tether_rebinds_total", "kind" => kind).increment(1);
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
            if entry.queue.push(outbound) == Push::Evicted {
                tracing::warn!(socket_id = %entry.public_id, "slow socket evicted: its queue overflowed");
                metrics::counter!("tether_evictions_total", "cause" => "queue").increment(1);
                self.evicted.push(id);
            }
        }
    }

    /// Tells the other nodes (through the bus's feed, when there is one).
    fn tell(&self, change: NodeChange) {
        if let Some(feed) = &self.feed {
            // Closed only when the bus is gone: then nobody is listening.
            let _ = feed.send(change);
        }
    }

    /// `sockets.changed` to this node's admins (the admin view is stale).
    fn tell_admins_sockets_changed(&self) {
        let event = text(&ServerFrame::Event { topic: topic::SOCKETS_CHANGED.into(), data: json!({}) });
        let admins = self.recipients(Audience::Role(Role::Admin));
        for &id in &admins {
            self.send_text(id, &event);
        }
        count_out("event", admins.len());
    }

    fn send_text(&self, id: SocketId, bytes: &Utf8Bytes) {
        self.send(id, Outbound::Text(bytes.clone()));
    }

    fn send_frame(&self, id: SocketId, frame: &ServerFrame) {
        count_out(frame.kind(), 1);
        self.send(id, Outbound::Text(text(frame)));
    }

    fn recipients(&self, audience: Audience) -> Vec<SocketId> {
        let from = |set: Option<&BTreeSet<SocketId>>| set.map(|s| s.iter().copied().collect()).unwrap_or_default();
        match audience {
            Audience::Socket(id) => vec![id],
            Audience::User(user_id) => from(self.by_user.get(user_id)),
            Audience::Session(sid) => from(self.by_session.get(sid)),
            Audience::Role(role) => from(self.by_role.get(&role)),
            Audience::Room(room) => from(self.rooms.get(room).map(|r| &r.sockets)),
            Audience::All => self.sockets.keys().copied().collect(),
        }
    }

    fn index_binding(&mut self, id: SocketId, binding: &Binding) {
        if let Binding::User { user, session_id, .. } = binding {
            self.bound += 1;
            insert_index(&mut self.by_user, user.id.clone(), id);
            insert_index(&mut self.by_session, session_id.clone(), id);
            insert_index(&mut self.by_role, user.role, id);
        }
    }

    fn unindex_binding(&mut self, id: SocketId, binding: &Binding) {
        if let Binding::User { user, session_id, .. } = binding {
            self.bound -= 1;
            remove_index(&mut self.by_user, &user.id, id);
            remove_index(&mut self.by_session, session_id, id);
            remove_index(&mut self.by_role, &user.role, id);
        }
    }

    /// Sends a room's member-list change to its sockets, but `except`.
    fn send_diff(&self, room: &str, joins: Vec<Member>, leaves: Vec<Member>, except: Option<SocketId>) {
        if joins.is_empty() && leaves.is_empty() {
            return;
        }
        let Some(state) = self.rooms.get(room) else { return };
        let frame = text(&ServerFrame::PresenceDiff { room: room.to_string(), joins, leaves });
        let mut sent = 0;
        for id in state.sockets.iter().filter(|id| Some(**id) != except) {
            self.send_text(*id, &frame);
            sent += 1;
        }
        count_out("presence_diff", sent);
    }

    /// Takes a socket out of one room; the others hear of its member leaving.
    fn remove_from_room(&mut self, id: SocketId, room: &str, member: &Member) {
        let Some(state) = self.rooms.get_mut(room) else { return };
        state.sockets.remove(&id);
        state.floors.remove(&id);
        let (left, last_here) = state.remove(&member.key, None);
        let unused = state.is_unused();
        if last_here {
            self.tell(NodeChange::Left { room: room.to_string(), key: member.key.clone() });
        }
        if unused {
            self.rooms.remove(room);
        } else if let Some(left) = left {
            self.send_diff(room, Vec::new(), vec![left], None);
        }
    }

    /// Applies other nodes' presence changes to this node's view of the
    /// rooms; this node's sockets in them get the cluster's diff.
    fn apply_remote(&mut self, node: &str, joins: &[(String, Member)], leaves: &[(String, String)]) {
        let node: Arc<str> = node.into();
        let mut diffs: BTreeMap<Arc<str>, (Vec<Member>, Vec<Member>)> = BTreeMap::new();
        for (room, key) in leaves {
            let Some(state) = self.rooms.get_mut(room.as_str()) else { continue };
            if let (Some(left), _) = state.remove(key, Some(&node)) {
                diffs.entry(room.as_str().into()).or_default().1.push(left);
            }
        }
        for (room, member) in joins {
            let code: Arc<str> = room.as_str().into();
            let state = self.rooms.entry(code.clone()).or_default();
            let diff = diffs.entry(code).or_default();
            match state.add(member, Some(&node)).0 {
                Added::Unchanged => {}
                Added::Joined => diff.0.push(member.clone()),
                Added::Replaced(old) => {
                    diff.0.push(member.clone());
                    diff.1.push(old);
                }
            }
        }
        for (room, (joins, leaves)) in diffs {
            let unused = self.rooms.get_mut(&room).is_some_and(RoomState::is_unused);
            if unused {
                self.rooms.remove(&room);
            } else {
                self.send_diff(&room, joins, leaves, None);
            }
        }
    }

    /// Each room member with a socket on `node` (another node), by room.
    fn remote_part(&self, node: &str) -> Vec<(String, String)> {
        let mut part = Vec::new();
        for (room, state) in &self.rooms {
            for (key, present) in &state.members {
                if present.nodes.contains(node) {
                    part.push((room.to_string(), key.clone()));
                }
            }
        }
        part
    }

    /// Replaces a socket's binding, updating each of its rooms' member lists
    /// (and telling the rooms, this socket included). Returns the old binding.
    fn rebind(&mut self, id: SocketId, binding: Binding) -> Option<Binding> {
        let entry = self.sockets.get(&id)?;
        let old = entry.binding.clone();
        let old_member = entry.member();
        let new_member = binding.member(&entry.public_id);
        let rooms: Vec<Arc<str>> = entry.rooms.iter().cloned().collect();
        self.unindex_binding(id, &old);
        self.index_binding(id, &binding);
        self.sockets.get_mut(&id)?.binding = binding;
        if old_member == new_member {
            return Some(old);
        }
        for room in rooms {
            let Some(state) = self.rooms.get_mut(&room) else { continue };
            let (left, last_here) = state.remove(&old_member.key, None);
            let mut leaves: Vec<Member> = left.into_iter().collect();
            let mut joins = Vec::new();
            let (added, here_changed) = state.add(&new_member, None);
            match added {
                Added::Unchanged => {}
                Added::Joined => joins.push(new_member.clone()),
                Added::Replaced(old) => {
                    leaves.push(old);
                    joins.push(new_member.clone());
                }
            }
            if last_here {
                self.tell(NodeChange::Left { room: room.to_string(), key: old_member.key.clone() });
            }
            if here_changed {
                self.tell(NodeChange::Joined { room: room.to_string(), member: new_member.clone() });
            }
            self.send_diff(&room, joins, leaves, None);
        }
        Some(old)
    }

    /// Removes a socket from the registry: its indexes, its rooms' presence.
    fn remove(&mut self, id: SocketId) -> Option<Entry> {
        let entry = self.sockets.remove(&id)?;
        self.unindex_binding(id, &entry.binding);
        let member = entry.member();
        for room in &entry.rooms {
            self.remove_from_room(id, room, &member);
        }
        for room in &entry.joining {
            self.stop_joining(id, room);
        }
        Some(entry)
    }

    /// Takes the user away from one socket: it becomes a guest (or is closed
    /// with 4401 when guests are off), keeping its rooms.
    fn unbind(&mut self, id: SocketId, reason: &'static str, notice: Option<UnbindReason>, allow_guests: bool) {
        // The notice goes first: the rooms' new presence follows it.
        if let Some(reason) = notice {
            self.send_frame(id, &ServerFrame::Unbound { reason });
        }
        let Some(old) = self.rebind(id, Binding::guest()) else { return };
        tracing::info!(
            socket_id = %self.sockets[&id].public_id,
            user_id = old.user().map(|u| u.id.as_str()).unwrap_or("-"),
            reason,
            "socket unbound"
        );
        count_rebind(reason);
        self.send(id, Outbound::Deadline(None));
        if !allow_guests {
            self.send(id, Outbound::Close(close_code::NOT_AUTHENTICATED, "not_authenticated"));
        }
    }

    /// Forgets a socket's unfinished join of a room (and what it held).
    fn stop_joining(&mut self, id: SocketId, room: &str) {
        let Some(state) = self.rooms.get_mut(room) else { return };
        state.joining.get_mut().unwrap_or_else(|p| p.into_inner()).remove(&id);
        if state.is_unused() {
            self.rooms.remove(room);
        }
    }

    fn take_evicted(&self) -> Vec<SocketId> {
        self.evicted.take()
    }
}

impl Registry {
    /// `queue_frames`: how many frames a socket may have waiting before it is
    /// evicted as too slow (`socket-queue-frames`).
    pub fn new(allow_guests: bool, queue_frames: usize) -> Registry {
        let node: String = (0..6).map(|_| char::from(b'a' + rand::thread_rng().gen_range(0..26))).collect();
        let indexes = Indexes::default();
        let evicted = indexes.evicted.clone();
        Registry { indexes: RwLock::new(indexes), evicted, next_id: AtomicU64::new(1), node, allow_guests, queue_frames }
    }

    pub fn allow_guests(&self) -> bool {
        self.allow_guests
    }

    /// This node's name, as in socket ids and the admin view's `node`.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn read(&self) -> RwLockReadGuard<'_, Indexes> {
        self.indexes.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Indexes> {
        self.indexes.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs after every operation, with the lock released: removes the sockets
    /// it evicted, and tells admins when the socket list changed (the admin view).
    fn settle(&self, mut changed: bool) {
        // Checked without the lock: this runs after every emit.
        if !changed && !self.evicted.is_pending() {
            return;
        }
        let mut ix = self.write();
        loop {
            for id in ix.take_evicted() {
                // Removing one can overflow another's queue (its presence_diff): loop.
                changed |= ix.remove(id).is_some();
            }
            if changed {
                ix.tell_admins_sockets_changed();
                ix.tell(NodeChange::SocketsChanged);
                metrics::gauge!("tether_sockets", "binding" => "user").set(ix.bound as f64);
                metrics::gauge!("tether_sockets", "binding" => "guest").set((ix.sockets.len() - ix.bound) as f64);
                changed = false;
            }
            if !ix.evicted.is_pending() {
                return;
            }
        }
    }

    /// Registers a socket and queues its `welcome` as the first frame.
    pub fn connect(&self, binding: Binding) -> Connection {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let public_id: Arc<str> = format!("{}-{id:x}", self.node).into();
        let queue = Arc::new(Queue::new(self.queue_frames));
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
                joining: BTreeSet::new(),
                connected_at: now_rfc3339(),
            },
        );
        ix.send_frame(id, &welcome);
        ix.send(id, Outbound::Deadline(deadline));
        drop(ix);
        self.settle(true);
        Connection { id, public_id, outbound: queue }
    }

    /// Removes a closed socket; its rooms hear that its member left.
    pub fn disconnect(&self, id: SocketId) {
        let removed = self.write().remove(id);
        if let Some(entry) = &removed {
            tracing::info!(socket_id = %entry.public_id, "socket disconnected");
        }
        self.settle(removed.is_some());
    }

    /// Drops a socket that cannot keep up (its write timed out): as an
    /// overflowing queue does, it leaves every index at once.
    pub fn evict(&self, id: SocketId) {
        let ix = self.read();
        if let Some(entry) = ix.sockets.get(&id) {
            if entry.queue.evict() {
                tracing::warn!(socket_id = %entry.public_id, "slow socket evicted: write timed out");
                metrics::counter!("tether_evictions_total", "cause" => "write_timeout").increment(1);
                ix.evicted.push(id);
            }
        }
        drop(ix);
        self.settle(false);
    }

    /// Sends a frame to every socket of the audience, serialized once.
    pub fn emit(&self, audience: Audience, frame: &ServerFrame) -> usize {
        let ix = self.read();
        let recipients = ix.recipients(audience);
        if !recipients.is_empty() {
            let bytes = text(frame);
            for id in &recipients {
                ix.send_text(*id, &bytes);
            }
            count_out(frame.kind(), recipients.len());
        }
        drop(ix);
        self.settle(false);
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
        if ix.revoked.contains_key(session_id) || !ix.sockets.contains_key(&id) {
            return None;
        }
        let user = binding.user()?.clone();
        let deadline = binding.expires_at();
        // The ack goes first; the rooms' new presence follows it.
        if let Some(ack) = ack(&user) {
            ix.send_frame(id, &ack);
        }
        ix.rebind(id, binding)?;
        tracing::info!(socket_id = %ix.sockets[&id].public_id, user_id = %user.id, reason = "login", "socket bound");
        count_rebind("login");
        ix.send(id, Outbound::Deadline(deadline));
        drop(ix);
        self.settle(true);
        Some(user)
    }

    /// Makes a socket a guest (a `logout` frame), queueing `ack` with the lock held.
    pub fn unbind_socket(&self, id: SocketId, ack: Option<ServerFrame>) {
        let mut ix = self.write();
        if !ix.sockets.contains_key(&id) {
            return;
        }
        if let Some(ack) = ack {
            ix.send_frame(id, &ack);
        }
        ix.unbind(id, "logout", None, self.allow_guests);
        drop(ix);
        self.settle(true);
    }

    /// A session ended server-side: every socket bound through it is unbound.
    pub fn revoke_session(&self, session_id: &str, expires_at: i64, reason: UnbindReason) {
        let mut ix = self.write();
        let now = now_unix();
        ix.revoked.retain(|_, exp| *exp > now);
        ix.revoked.insert(session_id.into(), expires_at);
        let ids: Vec<SocketId> = ix.by_session.get(session_id).into_iter().flatten().copied().collect();
        for &id in &ids {
            ix.unbind(id, reason.as_str(), Some(reason), self.allow_guests);
        }
        drop(ix);
        self.settle(!ids.is_empty());
    }

    /// Unbinds a socket whose binding reached its `exp`, unless it was rebound meanwhile.
    pub fn expire(&self, id: SocketId) {
        let mut ix = self.write();
        let expired = ix.sockets.get(&id).and_then(|e| e.binding.expires_at()).is_some_and(|exp| exp <= now_unix());
        if expired {
            ix.unbind(id, "expired", Some(UnbindReason::Expired), self.allow_guests);
        }
        drop(ix);
        self.settle(expired);
    }

    /// The stored user changed (role, name): every live socket of theirs is
    /// rebound to it and gets `bound`; their rooms see the new member. Returns
    /// how many sockets changed.
    pub fn update_user(&self, user: &User) -> usize {
        let mut ix = self.write();
        let ids: Vec<SocketId> = ix.by_user.get(&user.id).into_iter().flatten().copied().collect();
        for &id in &ids {
            let Some(Binding::User { session_id, expires_at, .. }) = ix.sockets.get(&id).map(|e| e.binding.clone())
            else {
                continue;
            };
            ix.send_frame(id, &ServerFrame::Bound { user: user.clone(), expires_at: Some(expires_at) });
            ix.rebind(id, Binding::User { user: user.clone(), session_id, expires_at });
            tracing::info!(socket_id = %ix.sockets[&id].public_id, user_id = %user.id, reason = "user changed", "socket bound");
            count_rebind("role");
        }
        drop(ix);
        self.settle(!ids.is_empty());
        ids.len()
    }

    /// The first half of a join: from now on the room's messages
    /// ([`Registry::emit_message`]) are held for this socket until
    /// [`Registry::join`] says which ones its history already has. So a join
    /// that reads history meanwhile misses nothing and repeats nothing,
    /// whichever node stored the messages. Returns false for an unknown socket.
    pub fn subscribe(&self, id: SocketId, room: &str) -> bool {
        let mut ix = self.write();
        let room: Arc<str> = room.into();
        let Some(entry) = ix.sockets.get_mut(&id) else { return false };
        if entry.rooms.contains(&room) || !entry.joining.insert(room.clone()) {
            return true;
        }
        let state = ix.rooms.entry(room).or_default();
        state.joining.get_mut().unwrap_or_else(|p| p.into_inner()).insert(id, Vec::new());
        true
    }

    /// Gives up a [`Registry::subscribe`] whose join failed.
    pub fn unsubscribe(&self, id: SocketId, room: &str) {
        let mut ix = self.write();
        let Some(entry) = ix.sockets.get_mut(&id) else { return };
        if entry.joining.remove(room) {
            ix.stop_joining(id, room);
        }
    }

    /// Sends a room's message (numbered `seq`) to its sockets; a socket
    /// still joining holds it, one whose history had it skips it.
    pub fn emit_message(&self, room: &str, seq: i64, frame: &ServerFrame) -> usize {
        let ix = self.read();
        let Some(state) = ix.rooms.get(room) else { return 0 };
        let bytes = text(frame);
        let mut sent = 0;
        for id in &state.sockets {
            if state.floors.get(id).is_none_or(|floor| seq > *floor) {
                ix.send_text(*id, &bytes);
                sent += 1;
            }
        }
        {
            let mut joining = state.joining.lock().unwrap_or_else(|p| p.into_inner());
            for (id, held) in joining.iter_mut() {
                // As bounded as the socket's queue: a join that stalls this long is evicted.
                if held.len() >= self.queue_frames {
                    if ix.sockets.get(id).is_some_and(|e| e.queue.evict()) {
                        tracing::warn!(socket_id = %ix.sockets[id].public_id, "slow socket evicted: its join held too many messages");
                        ix.evicted.push(*id);
                    }
                    continue;
                }
                held.push((seq, bytes.clone()));
            }
        }
        count_out(frame.kind(), sent);
        drop(ix);
        self.settle(false);
        sent
    }

    /// Adds a socket to a room. With the lock held: `ack` (given the room's
    /// member list) to the socket, then `presence` to it and `presence_diff`
    /// to the room's other sockets when the member list changed, then the
    /// messages held since [`Registry::subscribe`] that are newer than
    /// `floor` (the newest `seq` the ack's history gave the socket).
    pub fn join(&self, id: SocketId, room: &str, floor: i64, ack: impl FnOnce(&[Member]) -> Option<ServerFrame>) {
        let mut ix = self.write();
        let room: Arc<str> = room.into();
        let Some(entry) = ix.sockets.get_mut(&id) else { return };
        entry.joining.remove(&room);
        let newly_in = entry.rooms.insert(room.clone());
        let member = entry.member();
        let state = ix.rooms.entry(room.clone()).or_default();
        let mut diff = (Vec::new(), Vec::new());
        let mut first_here = false;
        if newly_in {
            state.sockets.insert(id);
            let (added, here_changed) = state.add(&member, None);
            first_here = here_changed;
            match added {
                Added::Unchanged => {}
                Added::Joined => diff.0.push(member.clone()),
                Added::Replaced(old) => diff = (vec![member.clone()], vec![old]),
            }
        }
        let held = state.joining.get_mut().unwrap_or_else(|p| p.into_inner()).remove(&id).unwrap_or_default();
        let floor = state.floors.get(&id).copied().unwrap_or(i64::MIN).max(floor);
        let newest = held.last().map_or(floor, |(seq, _)| floor.max(*seq));
        state.floors.insert(id, newest);
        let members = state.members();
        if let Some(ack) = ack(&members) {
            ix.send_frame(id, &ack);
        }
        ix.send_frame(id, &ServerFrame::Presence { room: room.to_string(), members });
        ix.send_diff(&room, diff.0, diff.1, Some(id));
        if first_here {
            ix.tell(NodeChange::Joined { room: room.to_string(), member });
        }
        let mut sent = 0;
        for (_, bytes) in held.iter().filter(|(seq, _)| *seq > floor) {
            ix.send_text(id, bytes);
            sent += 1;
        }
        count_out("message", sent);
        drop(ix);
        self.settle(newly_in);
    }

    /// Removes a socket from a room: `ack` to it, then `presence_diff` to the others.
    pub fn leave(&self, id: SocketId, room: &str, ack: Option<ServerFrame>) {
        let mut ix = self.write();
        if let Some(ack) = ack {
            ix.send_frame(id, &ack);
        }
        if ix.sockets.get_mut(&id).is_some_and(|e| e.joining.remove(room)) {
            ix.stop_joining(id, room);
        }
        let left = ix.sockets.get_mut(&id).and_then(|e| e.rooms.take(room).map(|room| (room, e.member())));
        if let Some((room, member)) = &left {
            ix.remove_from_room(id, room, member);
        }
        drop(ix);
        self.settle(left.is_some());
    }

    pub fn is_in_room(&self, id: SocketId, room: &str) -> bool {
        self.read().sockets.get(&id).is_some_and(|e| e.rooms.contains(room))
    }

    /// Each room with joined sockets on this node, with the oldest `seq` any
    /// of them is known to have (from its join's history or live delivery):
    /// where a replay of the room must start so none of them misses a message.
    pub fn room_floors(&self) -> Vec<(String, i64)> {
        let ix = self.read();
        ix.rooms
            .iter()
            .filter_map(|(code, state)| state.floors.values().min().map(|floor| (code.to_string(), *floor)))
            .collect()
    }

    /// Hands this node's own changes (presence, socket list) to the bus that
    /// shares them with the other nodes; from now on every change is queued,
    /// in the order it happened. Called once, by a cluster bus.
    pub fn cluster_feed(&self) -> mpsc::UnboundedReceiver<NodeChange> {
        let (feed, changes) = mpsc::unbounded_channel();
        self.write().feed = Some(feed);
        changes
    }

    /// This node's own part of presence: each room member with a socket here.
    pub fn local_presence(&self) -> Vec<(String, Member)> {
        let ix = self.read();
        let mut part = Vec::new();
        for (room, state) in &ix.rooms {
            for present in state.members.values().filter(|p| p.sockets > 0) {
                part.push((room.to_string(), present.member.clone()));
            }
        }
        part
    }

    /// Another node's part of presence changed: members in `joins` (room,
    /// member) have sockets there now, those in `leaves` (room, key) no
    /// longer. A user is one member across every node; this node's sockets
    /// get `presence_diff` only when a room's cluster-wide list changed.
    pub fn remote_presence(&self, node: &str, joins: &[(String, Member)], leaves: &[(String, String)]) {
        self.write().apply_remote(node, joins, leaves);
        self.settle(false);
    }

    /// Replaces another node's whole part of presence (its members by room;
    /// empty: the node is gone), sending the diffs that makes.
    pub fn replace_remote_presence(&self, node: &str, members: &[(String, Member)]) {
        let mut ix = self.write();
        let now: BTreeSet<(&str, &str)> = members.iter().map(|(room, m)| (room.as_str(), m.key.as_str())).collect();
        let leaves: Vec<(String, String)> =
            ix.remote_part(node).into_iter().filter(|(room, key)| !now.contains(&(room.as_str(), key.as_str()))).collect();
        ix.apply_remote(node, members, &leaves);
        drop(ix);
        self.settle(false);
    }

    /// The other nodes with members in this node's view of presence.
    pub fn remote_nodes(&self) -> BTreeSet<String> {
        let ix = self.read();
        ix.rooms
            .values()
            .flat_map(|state| state.members.values())
            .flat_map(|present| present.nodes.iter().map(|n| n.to_string()))
            .collect()
    }

    /// Each session a live socket here is bound through, with the user and
    /// expiry the binding holds: what a recheck against the database compares.
    pub fn bound_sessions(&self) -> Vec<(String, User, i64)> {
        let ix = self.read();
        let mut seen = BTreeSet::new();
        let mut bound = Vec::new();
        for entry in ix.sockets.values() {
            if let Binding::User { user, session_id, expires_at } = &entry.binding {
                if seen.insert(session_id.clone()) {
                    bound.push((session_id.to_string(), user.clone(), *expires_at));
                }
            }
        }
        bound
    }

    /// `sockets.changed` to this node's admins: another node's sockets changed.
    pub fn sockets_changed_elsewhere(&self) {
        self.read().tell_admins_sockets_changed();
        self.settle(false);
    }

    /// A room's members on every node (as far as this node knows), ordered by key.
    pub fn members(&self, room: &str) -> Vec<Member> {
        self.read().rooms.get(room).map(RoomState::members).unwrap_or_default()
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
                    node: self.node.clone(),
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
