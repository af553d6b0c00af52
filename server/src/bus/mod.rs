//! The seam between this node's [`Registry`] and the other nodes of a
//! cluster: everything that changes what a socket receives or who it belongs
//! to, on any node, passes through a [`Bus`].
//!
//! Who a delivery is for is plain data ([`Target`], [`Delivery`]): serialized,
//! sent to every node, and evaluated there against that node's registry.
//! Two implementations, as socketioxide splits its adapters:
//!
//! - [`local::LocalBus`]: one node (the embedded SQLite default). A delivery is
//!   applied to the registry at once; rooms are numbered by an in-process
//!   [`local::Sequencer`].
//! - [`postgres::PgBus`]: every node on one Postgres. A delivery is applied on
//!   this node and sent to the others with `NOTIFY` (its body through the
//!   `bus_payloads` table when it would not fit in one); room messages are
//!   numbered under the room's row lock and sent in the transaction that
//!   stores them, so every node sees them in commit order, which is `seq` order.

pub mod local;
pub mod postgres;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tether_protocol::{ChatMessage, LiveSocket, Role, Sender, ServerFrame, UnbindReason, User};

use crate::registry::{Audience, Registry};

/// Who an emit is for, evaluated on each node: the audiences model events
/// use ([`crate::events`]). Room messages, sessions and users have their own
/// [`Delivery`] kinds; a socket id is meaningful only on its own node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "to", content = "key", rename_all = "snake_case")]
pub enum Target {
    Role(Role),
    All,
}

impl Target {
    pub fn audience(&self) -> Audience<'static> {
        match self {
            Target::Role(role) => Audience::Role(*role),
            Target::All => Audience::All,
        }
    }
}

/// One change of what sockets receive or who they belong to, as every node
/// applies it ([`apply`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Delivery {
    /// A frame for every socket of `target`.
    Emit { target: Target, frame: ServerFrame },
    /// A stored room message, for the room's sockets (`seq` decides who already has it).
    Message { message: ChatMessage },
    /// A session ended: its sockets are unbound with `reason`, its cookie no longer authenticates.
    RevokeSession { session_id: String, expires_at: i64, reason: UnbindReason },
    /// A stored user changed (role, name): their sockets are rebound and get `bound`.
    UpdateUser { user: User },
}

/// What a node must stop trusting in its caches because the database changed.
#[derive(Debug, Clone, PartialEq)]
pub enum Invalidation {
    Session(String),
    User(String),
    /// Changes may have been missed (the bus reconnected): forget everything,
    /// and recheck every binding against the database.
    All,
}

/// Called with every [`Invalidation`] a delivery implies, before the
/// registry changes (the feature layer's caches hang here).
pub type InvalidationHook = Arc<dyn Fn(&Invalidation) + Send + Sync>;

/// Applies a delivery to this node's registry.
pub fn apply(registry: &Registry, on_invalidate: &InvalidationHook, delivery: &Delivery) {
    match delivery {
        Delivery::Emit { target, frame } => {
            registry.emit(target.audience(), frame);
        }
        Delivery::Message { message } => {
            registry.emit_message(&message.room, message.seq, &ServerFrame::Message(message.clone()));
        }
        Delivery::RevokeSession { session_id, expires_at, reason } => {
            on_invalidate(&Invalidation::Session(session_id.clone()));
            registry.revoke_session(session_id, *expires_at, *reason);
        }
        Delivery::UpdateUser { user } => {
            on_invalidate(&Invalidation::User(user.id.clone()));
            registry.update_user(user);
        }
    }
}

/// A message to store and fan out: [`Bus::append`] numbers and stamps it.
#[derive(Debug, Clone)]
pub struct Draft {
    pub room: String,
    pub from: Sender,
    pub text: String,
}

/// The transport between this node's registry and every node's (its own included).
pub trait Bus: Send + Sync {
    /// Applies `delivery` on this node at once, then on every other node.
    /// `Err` when the other nodes could not be told (the database is down).
    fn publish(&self, delivery: Delivery) -> BoxFuture<'_, sqlx::Result<()>>;

    /// Numbers (`seq`), stamps (`at`, never decreasing along `seq`) and
    /// stores a room message, then delivers it to the room on every node,
    /// every node in the one order of `seq`.
    fn append(&self, draft: Draft) -> BoxFuture<'_, sqlx::Result<ChatMessage>>;

    /// Every live socket of every live node, oldest first per node.
    fn sockets(&self) -> BoxFuture<'_, Vec<LiveSocket>>;

    /// The node stops: it leaves the cluster at once (other nodes stop
    /// counting its sockets).
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}
