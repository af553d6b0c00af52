//! One node: deliveries go straight to this node's registry.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tether_protocol::{ChatMessage, LiveSocket};
use time::OffsetDateTime;
use tokio::sync::OwnedMutexGuard;

use super::{apply, Bus, Delivery, Draft, InvalidationHook};
use crate::db::{format_rfc3339, now_ms, parse_rfc3339, Db};
use crate::registry::Registry;
use crate::rooms::store;

pub struct LocalBus {
    db: Db,
    registry: Arc<Registry>,
    on_invalidate: InvalidationHook,
    sequencer: Sequencer,
}

impl LocalBus {
    pub fn new(db: Db, registry: Arc<Registry>, on_invalidate: InvalidationHook) -> LocalBus {
        LocalBus { db, registry, on_invalidate, sequencer: Sequencer::default() }
    }
}

impl Bus for LocalBus {
    fn publish(&self, delivery: Delivery) -> BoxFuture<'_, sqlx::Result<()>> {
        apply(&self.registry, &self.on_invalidate, &delivery);
        std::future::ready(Ok(())).boxed()
    }

    fn append(&self, draft: Draft) -> BoxFuture<'_, sqlx::Result<ChatMessage>> {
        async move {
            let mut turn = self.sequencer.lock(&self.db, &draft.room).await?;
            let tail = turn.as_mut().expect("lock loads the tail");
            let seq = tail.seq + 1;
            // The clock may step back (or two sends share a millisecond): `at` never decreases along `seq`.
            let at = now_ms().max(tail.at);
            let at_text = format_rfc3339(at);
            let new = store::NewMessage { room: &draft.room, seq, from: &draft.from, text: &draft.text, at: &at_text };
            let id = match store::insert_message(&self.db, &new).await {
                Ok(id) => id,
                Err(e) => {
                    // A commit whose answer was lost leaves the cached tail
                    // behind the table: reload it on the next turn.
                    *turn = None;
                    return Err(e);
                }
            };
            *tail = Tail { seq, at };
            let message = ChatMessage { room: draft.room, id: id.to_string(), seq, from: draft.from, text: draft.text, at: at_text };
            // Fanned out inside the turn: the next message of the room waits for this one.
            self.registry.emit_message(&message.room, seq, &tether_protocol::ServerFrame::Message(message.clone()));
            drop(turn);
            Ok(message)
        }
        .boxed()
    }

    fn sockets(&self) -> BoxFuture<'_, Vec<LiveSocket>> {
        std::future::ready(self.registry.snapshot()).boxed()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        std::future::ready(()).boxed()
    }
}

/// One writer per room on this node. A room's sends pass through its lock
/// one at a time: each is numbered (`seq`), stamped (`at`, never
/// decreasing), stored and fanned out before the next, so ids, `seq`, `at`,
/// live order and history order are one order (../shared/PROTOCOL.md `message`).
#[derive(Default)]
pub struct Sequencer {
    rooms: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Tail>>>>>,
}

/// The newest message of a room: its `seq` and `at`.
pub struct Tail {
    seq: i64,
    at: OffsetDateTime,
}

impl Sequencer {
    /// Waits for the room's turn; the tail is loaded from the database on first use.
    async fn lock(&self, db: &Db, room: &str) -> sqlx::Result<OwnedMutexGuard<Option<Tail>>> {
        let slot = {
            let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
            rooms.entry(room.to_string()).or_default().clone()
        };
        let mut guard = slot.lock_owned().await;
        if guard.is_none() {
            let (seq, at) = store::tail(db, room).await?;
            let at = at.as_deref().and_then(parse_rfc3339).unwrap_or(OffsetDateTime::UNIX_EPOCH);
            *guard = Some(Tail { seq, at });
        }
        Ok(guard)
    }
}
