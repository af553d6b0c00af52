//! Every node on one Postgres: `LISTEN`/`NOTIFY` on channel [`CHANNEL`].
//!
//! Faults other Postgres adapters are known for, and what this one does:
//!
//! - **Payloads over NOTIFY's 8000 bytes** (a 2,000-character message of
//!   4-byte characters): a body longer than [`INLINE_LIMIT`] is stored in
//!   `bus_payloads` in the same transaction, and the notification carries
//!   its id; receivers read it before handling anything newer, so the order
//!   holds. Rows older than [`PAYLOAD_RETENTION`] are deleted.
//! - **Notifications lost while the listener reconnects**: a node treats its
//!   caches as stale on a reconnect ([`Invalidation::All`]) and, once
//!   listening again, replays from the `messages` table every room message
//!   its sockets missed, before anything newer. A message whose `seq` skips
//!   past the last one this node delivered in its room is preceded by the
//!   missing ones from the table; one it already delivered is dropped. So the
//!   per-room order on a node never skips and never repeats.
//! - **Stale presence after a node dies**: nodes heartbeat in `nodes` every
//!   [`HEARTBEAT`]; a node silent for [`NODE_TIMEOUT`] counts as gone, and a
//!   node that stops normally deletes its row at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgListener, PgPool};
use sqlx::PgConnection;
use tether_protocol::{ChatMessage, LiveSocket};
use tokio::sync::mpsc;

use super::{apply, Bus, Delivery, Draft, Invalidation, InvalidationHook};
use crate::db::{format_rfc3339, now_ms, parse_rfc3339, Db};
use crate::registry::Registry;
use crate::rooms::store;

/// The `LISTEN` channel every node shares.
pub const CHANNEL: &str = "tether_bus";
/// Bodies up to this many bytes travel inside the notification (Postgres
/// refuses payloads of 8000 bytes or more; the envelope adds a little).
pub const INLINE_LIMIT: usize = 7000;
/// How often a node renews its row in `nodes`.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// A node whose heartbeat is this old is gone: its sockets leave the admin view.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a stored body is kept for listeners that are behind.
pub const PAYLOAD_RETENTION: Duration = Duration::from_secs(600);
/// Messages read from the table at a time when a node fills a gap.
const REPLAY_PAGE: i64 = 500;
/// How long the admin view waits for the other nodes' sockets.
const SOCKETS_WAIT: Duration = Duration::from_secs(2);

/// What one notification carries: a body, or the id of its row in `bus_payloads`.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    origin: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<Body>,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Body {
    Deliver { delivery: Delivery },
    /// The admin view asks every node for its sockets.
    SocketsRequest { request: String },
    SocketsReply { request: String, to: String, sockets: Vec<LiveSocket> },
}

type Replies = mpsc::UnboundedSender<(String, Vec<LiveSocket>)>;

struct Inner {
    pool: PgPool,
    registry: Arc<Registry>,
    on_invalidate: InvalidationHook,
    /// Admin-view requests of this node waiting for replies, by request id.
    waiting: Mutex<HashMap<String, Replies>>,
    /// Per room, the newest `seq` this node delivered (listener task only).
    delivered: Mutex<HashMap<String, i64>>,
}

pub struct PgBus {
    inner: Arc<Inner>,
}

impl PgBus {
    /// Registers this node in `nodes`, starts listening and heartbeating.
    /// Returns once the listener is subscribed, so nothing published after is missed.
    pub async fn start(pool: PgPool, registry: Arc<Registry>, on_invalidate: InvalidationHook) -> sqlx::Result<PgBus> {
        let inner = Arc::new(Inner { pool, registry, on_invalidate, waiting: Mutex::default(), delivered: Mutex::default() });
        inner.heartbeat().await?;
        let listener = subscribe(&inner.pool).await?;
        tokio::spawn(listen(inner.clone(), listener));
        let beating = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            loop {
                tick.tick().await;
                let Some(inner) = beating.upgrade() else { return };
                if let Err(e) = inner.heartbeat().await {
                    tracing::warn!(error = %e, "cluster heartbeat failed");
                }
            }
        });
        Ok(PgBus { inner })
    }
}

impl Inner {
    fn node(&self) -> &str {
        self.registry.node()
    }

    async fn heartbeat(&self) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO nodes (name, started_at, heartbeat_at) VALUES ($1, now(), now())
             ON CONFLICT (name) DO UPDATE SET heartbeat_at = now()",
        )
        .bind(self.node())
        .execute(&self.pool)
        .await?;
        sqlx::query("DELETE FROM bus_payloads WHERE created_at < now() - make_interval(secs => $1)")
            .bind(PAYLOAD_RETENTION.as_secs_f64())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    fn envelope(&self, body: Body) -> Envelope {
        Envelope { origin: self.node().to_string(), body: Some(body), reference: None }
    }

    /// Handles one notification, in the order they arrive.
    async fn receive(&self, payload: &str) {
        let envelope: Envelope = match serde_json::from_str(payload) {
            Ok(envelope) => envelope,
            Err(e) => return tracing::warn!(error = %e, "cluster: unreadable notification dropped"),
        };
        let body = match (envelope.body, envelope.reference) {
            (Some(body), _) => body,
            (None, Some(id)) => match self.stored_body(id).await {
                Some(body) => body,
                None => return,
            },
            (None, None) => return,
        };
        let own = envelope.origin == self.node();
        match body {
            // Room messages come back to their own node too: every node hears
            // them in the one commit order. Other deliveries were applied at once.
            Body::Deliver { delivery: Delivery::Message { message } } => self.deliver_in_order(message).await,
            Body::Deliver { delivery } if !own => apply(&self.registry, &self.on_invalidate, &delivery),
            Body::Deliver { .. } => {}
            Body::SocketsRequest { request } if !own => {
                let reply = self.envelope(Body::SocketsReply {
                    request,
                    to: envelope.origin,
                    sockets: self.registry.snapshot(),
                });
                if let Err(e) = notify(&self.pool, &reply).await {
                    tracing::warn!(error = %e, "cluster: could not answer a sockets request");
                }
            }
            Body::SocketsRequest { .. } => {}
            Body::SocketsReply { request, to, sockets } if to == self.node() => {
                let waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(replies) = waiting.get(&request) {
                    let _ = replies.send((envelope.origin, sockets));
                }
            }
            Body::SocketsReply { .. } => {}
        }
    }

    /// Delivers a room message after any this node missed before it; drops
    /// one it delivered already (a replay got there first).
    async fn deliver_in_order(&self, message: ChatMessage) {
        let last = self.delivered.lock().unwrap_or_else(|p| p.into_inner()).get(&message.room).copied();
        match last {
            Some(last) if message.seq <= last => return,
            Some(last) if message.seq > last + 1 => self.replay(&message.room, last, message.seq).await,
            _ => {}
        }
        self.deliver(message);
    }

    fn deliver(&self, message: ChatMessage) {
        self.delivered.lock().unwrap_or_else(|p| p.into_inner()).insert(message.room.clone(), message.seq);
        let delivery = Delivery::Message { message };
        apply(&self.registry, &self.on_invalidate, &delivery);
    }

    /// Delivers a room's stored messages with `after < seq < before`, in order.
    async fn replay(&self, room: &str, after: i64, before: i64) {
        let mut after = after;
        loop {
            match store::oldest_page(&Db::Postgres(self.pool.clone()), room, after, before, REPLAY_PAGE).await {
                Ok(page) => {
                    let Some(newest) = page.last().map(|m| m.seq) else { return };
                    let full = page.len() as i64 == REPLAY_PAGE;
                    for message in page {
                        self.deliver(message);
                    }
                    if !full {
                        return;
                    }
                    after = newest;
                }
                Err(e) => return tracing::warn!(error = %e, room, "cluster: could not replay missed messages"),
            }
        }
    }

    /// After a reconnect: every room with sockets here gets what it missed.
    async fn resync(&self) {
        for (room, floor) in self.registry.room_floors() {
            let after = self.delivered.lock().unwrap_or_else(|p| p.into_inner()).get(&room).copied().unwrap_or(floor);
            self.replay(&room, after, i64::MAX).await;
        }
    }

    async fn stored_body(&self, id: i64) -> Option<Body> {
        let stored: sqlx::Result<Option<String>> =
            sqlx::query_scalar("SELECT body FROM bus_payloads WHERE id = $1").bind(id).fetch_optional(&self.pool).await;
        match stored {
            Ok(Some(text)) => serde_json::from_str(&text)
                .map_err(|e| tracing::warn!(error = %e, id, "cluster: unreadable stored payload"))
                .ok(),
            Ok(None) => {
                tracing::warn!(id, "cluster: a stored payload is gone (this node fell behind)");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, id, "cluster: could not read a stored payload");
                None
            }
        }
    }

    async fn live_nodes(&self) -> sqlx::Result<Vec<String>> {
        sqlx::query_scalar("SELECT name FROM nodes WHERE heartbeat_at > now() - make_interval(secs => $1) AND name <> $2")
            .bind(NODE_TIMEOUT.as_secs_f64())
            .bind(self.node())
            .fetch_all(&self.pool)
            .await
    }
}

/// A listener connection subscribed to [`CHANNEL`].
async fn subscribe(pool: &PgPool) -> sqlx::Result<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// The listener task: applies notifications in order, for the node's life.
/// When its connection drops, whatever was sent meanwhile is lost to it:
/// it drops its caches, listens again (backoff 0.25 s doubling to 5 s), and
/// replays the room messages its sockets missed.
async fn listen(inner: Arc<Inner>, mut listener: PgListener) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                inner.receive(notification.payload()).await;
                continue;
            }
            Ok(None) => tracing::warn!("cluster: listener connection lost; listening again"),
            Err(e) => tracing::warn!(error = %e, "cluster: listener failed; listening again"),
        }
        (inner.on_invalidate)(&Invalidation::All);
        let mut backoff = Duration::from_millis(250);
        listener = loop {
            match subscribe(&inner.pool).await {
                Ok(listener) => break listener,
                Err(e) => tracing::warn!(error = %e, "cluster: cannot listen; retrying in {backoff:?}"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        };
        // Changes made while nobody listened: drop the caches again, fill the rooms' gaps.
        (inner.on_invalidate)(&Invalidation::All);
        inner.resync().await;
    }
}

/// Sends one envelope to every node: inline when it fits, else through `bus_payloads`.
async fn notify<'c, E>(conn: E, envelope: &Envelope) -> sqlx::Result<()>
where
    E: sqlx::Acquire<'c, Database = sqlx::Postgres>,
{
    let mut conn = conn.acquire().await?;
    notify_on(&mut conn, envelope).await
}

async fn notify_on(conn: &mut PgConnection, envelope: &Envelope) -> sqlx::Result<()> {
    let text = serde_json::to_string(envelope).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let text = if text.len() <= INLINE_LIMIT {
        text
    } else {
        let body = serde_json::to_string(&envelope.body).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let id: i64 = sqlx::query_scalar("INSERT INTO bus_payloads (body) VALUES ($1) RETURNING id")
            .bind(body)
            .fetch_one(&mut *conn)
            .await?;
        let reference = Envelope { origin: envelope.origin.clone(), body: None, reference: Some(id) };
        serde_json::to_string(&reference).map_err(|e| sqlx::Error::Encode(Box::new(e)))?
    };
    sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(text).execute(&mut *conn).await?;
    Ok(())
}

impl Bus for PgBus {
    fn publish(&self, delivery: Delivery) -> BoxFuture<'_, sqlx::Result<()>> {
        async move {
            let inner = &self.inner;
            if !matches!(delivery, Delivery::Message { .. }) {
                apply(&inner.registry, &inner.on_invalidate, &delivery);
            }
            notify(&inner.pool, &inner.envelope(Body::Deliver { delivery })).await
        }
        .boxed()
    }

    fn append(&self, draft: Draft) -> BoxFuture<'_, sqlx::Result<ChatMessage>> {
        async move {
            let inner = &self.inner;
            let mut tx = inner.pool.begin().await?;
            // The room's row lock orders its sends across nodes until commit;
            // NOTIFY delivers in commit order, so every node sees `seq` order.
            sqlx::query("SELECT code FROM rooms WHERE code = $1 FOR UPDATE")
                .bind(&draft.room)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(sqlx::Error::RowNotFound)?;
            let (tail_seq, tail_at): (i64, Option<String>) = match sqlx::query_as::<_, (i64, String)>(store::TAIL_SQL)
                .bind(&draft.room)
                .fetch_optional(&mut *tx)
                .await?
            {
                Some((seq, at)) => (seq, Some(at)),
                None => (0, None),
            };
            let seq = tail_seq + 1;
            let last_at = tail_at.as_deref().and_then(parse_rfc3339).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            // As on one node: `at` never decreases along `seq`.
            let at = format_rfc3339(now_ms().max(last_at));
            let id: i64 = sqlx::query_scalar(store::INSERT_MESSAGE_SQL)
                .bind(&draft.room)
                .bind(seq)
                .bind(&draft.from.id)
                .bind(&draft.from.name)
                .bind(&draft.text)
                .bind(&at)
                .fetch_one(&mut *tx)
                .await?;
            let message = ChatMessage { room: draft.room, id: id.to_string(), seq, from: draft.from, text: draft.text, at };
            notify_on(&mut tx, &inner.envelope(Body::Deliver { delivery: Delivery::Message { message: message.clone() } })).await?;
            tx.commit().await?;
            Ok(message)
        }
        .boxed()
    }

    fn sockets(&self) -> BoxFuture<'_, Vec<LiveSocket>> {
        async move {
            let inner = &self.inner;
            let mut sockets = inner.registry.snapshot();
            let mut others = match inner.live_nodes().await {
                Ok(nodes) => nodes,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: node list unavailable; the admin view shows this node only");
                    return sockets;
                }
            };
            if others.is_empty() {
                return sockets;
            }
            let request = uuid::Uuid::new_v4().to_string();
            let (replies, mut received) = mpsc::unbounded_channel();
            inner.waiting.lock().unwrap_or_else(|p| p.into_inner()).insert(request.clone(), replies);
            let asked = notify(&inner.pool, &inner.envelope(Body::SocketsRequest { request: request.clone() })).await;
            if asked.is_ok() {
                let deadline = tokio::time::Instant::now() + SOCKETS_WAIT;
                while !others.is_empty() {
                    match tokio::time::timeout_at(deadline, received.recv()).await {
                        Ok(Some((node, theirs))) => {
                            others.retain(|n| *n != node);
                            sockets.extend(theirs);
                        }
                        _ => break,
                    }
                }
                if !others.is_empty() {
                    tracing::warn!(nodes = ?others, "cluster: nodes did not answer the sockets request in time");
                }
            }
            inner.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(&request);
            sockets
        }
        .boxed()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        async move {
            let inner = &self.inner;
            if let Err(e) = sqlx::query("DELETE FROM nodes WHERE name = $1").bind(inner.node()).execute(&inner.pool).await {
                tracing::warn!(error = %e, "cluster: could not deregister this node");
            }
        }
        .boxed()
    }
}
