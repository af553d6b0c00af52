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
//!   per-room order on a node never skips and never repeats. A read that
//!   fails (the database is down) is retried at every heartbeat until it
//!   succeeds; the feature layer rechecks every bound socket's session.
//! - **Stale presence after a node dies**: nodes heartbeat in `nodes` every
//!   [`HEARTBEAT`]; a node silent for [`NODE_TIMEOUT`] counts as gone, and a
//!   node that stops normally deletes its row at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgListener, PgPool};
use sqlx::PgConnection;
use tether_protocol::{ChatMessage, LiveSocket, Member};
use tokio::sync::mpsc;

use super::{apply, Bus, Delivery, Draft, Invalidation, InvalidationHook};
use crate::db::{format_rfc3339, now_ms, parse_rfc3339, Db};
use crate::registry::{NodeChange, Registry};
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
/// The most changes of this node's presence written in one transaction.
const PRESENCE_BATCH: usize = 1024;
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
    /// The origin's part of presence changed (the last change per room and
    /// member of a batch): `joins` as (room, member), `leaves` as (room, key).
    Presence {
        joins: Vec<(String, Member)>,
        leaves: Vec<(String, String)>,
        /// Its socket list changed too (admins get `sockets.changed`).
        sockets_changed: bool,
    },
    /// The origin rewrote its whole part of presence: read it from `presence`.
    PresenceReset,
    /// A node left the cluster: it stopped, or another found it silent.
    NodeGone { node: String },
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
    /// This node's part of presence in the table may be wrong (a write
    /// failed, or another node took this one for dead): rewrite it whole.
    presence_stale: AtomicBool,
    /// The node is stopping: its presence is no longer shared, its heartbeat stops.
    stopping: AtomicBool,
    /// This node's view of the other nodes' presence may have missed a change
    /// (a read failed): reread it at the next heartbeat.
    remote_presence_stale: AtomicBool,
    /// A room's messages may have a gap here (a replay or a stored body could
    /// not be read): replay every room at the next heartbeat.
    messages_stale: AtomicBool,
    /// One applier at a time: the listener's notifications, and the
    /// heartbeat's repairs, so a reread or replay never interleaves with them.
    applying: tokio::sync::Mutex<()>,
}

pub struct PgBus {
    inner: Arc<Inner>,
}

impl PgBus {
    /// Registers this node in `nodes`, starts listening and heartbeating.
    /// Returns once the listener is subscribed, so nothing published after is missed.
    pub async fn start(pool: PgPool, registry: Arc<Registry>, on_invalidate: InvalidationHook) -> sqlx::Result<PgBus> {
        let feed = registry.cluster_feed();
        let inner = Arc::new(Inner {
            pool,
            registry,
            on_invalidate,
            waiting: Mutex::default(),
            delivered: Mutex::default(),
            presence_stale: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            remote_presence_stale: AtomicBool::new(false),
            messages_stale: AtomicBool::new(false),
            applying: tokio::sync::Mutex::new(()),
        });
        inner.heartbeat().await?;
        let listener = subscribe(&inner.pool).await?;
        tokio::spawn(listen(inner.clone(), listener));
        tokio::spawn(share_presence(inner.clone(), feed));
        let beating = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            loop {
                tick.tick().await;
                let Some(inner) = beating.upgrade() else { return };
                // Deregistered: a heartbeat now would bring the node back.
                if inner.stopping.load(Ordering::Acquire) {
                    return;
                }
                if let Err(e) = inner.heartbeat().await {
                    tracing::warn!(error = %e, "cluster heartbeat failed");
                }
                let _applying = inner.applying.lock().await;
                if let Err(e) = inner.drop_dead_nodes().await {
                    tracing::warn!(error = %e, "cluster: could not check for dead nodes");
                }
                inner.repair().await;
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
        // `xmax = 0`: the row was inserted, not updated.
        let inserted: bool = sqlx::query_scalar(
            "INSERT INTO nodes (name, started_at, heartbeat_at) VALUES ($1, now(), now())
             ON CONFLICT (name) DO UPDATE SET heartbeat_at = now() RETURNING xmax = 0",
        )
        .bind(self.node())
        .fetch_one(&self.pool)
        .await?;
        if inserted && !self.registry.local_presence().is_empty() {
            // Another node took this one for dead and deleted its presence.
            self.presence_stale.store(true, Ordering::Release);
        }
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
                // Whatever it was, repair both kinds of state it could have changed.
                None => {
                    self.remote_presence_stale.store(true, Ordering::Release);
                    self.messages_stale.store(true, Ordering::Release);
                    return;
                }
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
            Body::Presence { .. } | Body::PresenceReset if own => {}
            Body::Presence { joins, leaves, sockets_changed } => {
                self.registry.remote_presence(&envelope.origin, &joins, &leaves);
                if sockets_changed {
                    self.registry.sockets_changed_elsewhere();
                }
            }
            Body::PresenceReset => {
                if let Err(e) = self.load_presence(Some(&envelope.origin)).await {
                    tracing::warn!(error = %e, node = %envelope.origin, "cluster: could not read a node's presence");
                    self.remote_presence_stale.store(true, Ordering::Release);
                }
                self.registry.sockets_changed_elsewhere();
            }
            Body::NodeGone { node } if node == self.node() => {
                // Taken for dead while alive: the heartbeat re-registers it.
                self.presence_stale.store(true, Ordering::Release);
            }
            Body::NodeGone { node } => {
                self.registry.replace_remote_presence(&node, &[]);
                self.registry.sockets_changed_elsewhere();
            }
        }
    }

    /// Reads the other nodes' parts of presence (`only`: one node's) from the
    /// table into this node's view; live nodes only.
    async fn load_presence(&self, only: Option<&str>) -> sqlx::Result<()> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT p.node, p.room, p.member FROM presence p JOIN nodes n ON n.name = p.node
             WHERE p.node <> $1 AND ($2::text IS NULL OR p.node = $2)
               AND n.heartbeat_at > now() - make_interval(secs => $3)",
        )
        .bind(self.node())
        .bind(only)
        .bind(NODE_TIMEOUT.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        let mut parts: BTreeMap<String, Vec<(String, Member)>> = BTreeMap::new();
        match only {
            Some(node) => drop(parts.insert(node.to_string(), Vec::new())),
            None => parts.extend(self.registry.remote_nodes().into_iter().map(|node| (node, Vec::new()))),
        }
        for (node, room, member) in rows {
            match serde_json::from_str::<Member>(&member) {
                Ok(member) => parts.entry(node).or_default().push((room, member)),
                Err(e) => tracing::warn!(error = %e, node, room, "cluster: unreadable presence row skipped"),
            }
        }
        for (node, members) in parts {
            self.registry.replace_remote_presence(&node, &members);
        }
        Ok(())
    }

    /// Deletes the nodes silent for [`NODE_TIMEOUT`] (their presence goes
    /// with them) and tells the others; drops from this node's view every
    /// node that is not alive, whoever deleted it.
    async fn drop_dead_nodes(&self) -> sqlx::Result<()> {
        let mut tx = self.pool.begin().await?;
        let dead: Vec<String> =
            sqlx::query_scalar("DELETE FROM nodes WHERE heartbeat_at <= now() - make_interval(secs => $1) RETURNING name")
                .bind(NODE_TIMEOUT.as_secs_f64())
                .fetch_all(&mut *tx)
                .await?;
        for node in dead {
            tracing::warn!(node, "cluster: a node went silent; dropping its sockets");
            notify_on(&mut tx, &self.envelope(Body::NodeGone { node })).await?;
        }
        tx.commit().await?;
        // Known before the query: a node that joins meanwhile is not taken for gone.
        let known = self.registry.remote_nodes();
        let live: BTreeSet<String> = self.live_nodes().await?.into_iter().collect();
        let gone: Vec<String> = known.into_iter().filter(|node| !live.contains(node)).collect();
        for node in &gone {
            self.registry.replace_remote_presence(node, &[]);
        }
        if !gone.is_empty() {
            self.registry.sockets_changed_elsewhere();
        }
        Ok(())
    }

    /// Writes a batch of this node's changes and tells the other nodes, in one transaction.
    async fn share(&self, changes: &[NodeChange]) -> sqlx::Result<()> {
        let mut last: BTreeMap<(&str, &str), Option<&Member>> = BTreeMap::new();
        let mut sockets_changed = false;
        for change in changes {
            match change {
                NodeChange::Joined { room, member } => drop(last.insert((room, &member.key), Some(member))),
                NodeChange::Left { room, key } => drop(last.insert((room, key), None)),
                NodeChange::SocketsChanged => sockets_changed = true,
            }
        }
        let joins: Vec<(String, Member)> =
            last.iter().filter_map(|((room, _), m)| m.map(|m| (room.to_string(), m.clone()))).collect();
        let leaves: Vec<(String, String)> =
            last.iter().filter(|(_, m)| m.is_none()).map(|((room, key), _)| (room.to_string(), key.to_string())).collect();
        if joins.is_empty() && leaves.is_empty() && !sockets_changed {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        self.write_presence(&mut tx, &joins).await?;
        if !leaves.is_empty() {
            let (rooms, keys): (Vec<String>, Vec<String>) = leaves.iter().cloned().unzip();
            sqlx::query(
                "DELETE FROM presence p USING UNNEST($2::text[], $3::text[]) AS gone (room, key)
                 WHERE p.node = $1 AND p.room = gone.room AND p.key = gone.key",
            )
            .bind(self.node())
            .bind(rooms)
            .bind(keys)
            .execute(&mut *tx)
            .await?;
        }
        notify_on(&mut tx, &self.envelope(Body::Presence { joins, leaves, sockets_changed })).await?;
        tx.commit().await
    }

    /// Rewrites this node's whole part of presence and tells the other nodes to read it.
    async fn reset_presence(&self) -> sqlx::Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM presence WHERE node = $1").bind(self.node()).execute(&mut *tx).await?;
        self.write_presence(&mut tx, &self.registry.local_presence()).await?;
        notify_on(&mut tx, &self.envelope(Body::PresenceReset)).await?;
        tx.commit().await
    }

    async fn write_presence(&self, conn: &mut PgConnection, members: &[(String, Member)]) -> sqlx::Result<()> {
        if members.is_empty() {
            return Ok(());
        }
        let mut rooms = Vec::with_capacity(members.len());
        let mut keys = Vec::with_capacity(members.len());
        let mut bodies = Vec::with_capacity(members.len());
        for (room, member) in members {
            rooms.push(room.clone());
            keys.push(member.key.clone());
            bodies.push(serde_json::to_string(member).map_err(|e| sqlx::Error::Encode(Box::new(e)))?);
        }
        sqlx::query(
            "INSERT INTO presence (node, room, key, member)
             SELECT $1, here.room, here.key, here.member FROM UNNEST($2::text[], $3::text[], $4::text[]) AS here (room, key, member)
             ON CONFLICT (node, room, key) DO UPDATE SET member = excluded.member",
        )
        .bind(self.node())
        .bind(rooms)
        .bind(keys)
        .bind(bodies)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Delivers a room message after any this node missed before it; drops
    /// one it delivered already (a replay got there first).
    /// When the gap cannot be read now, neither is this message delivered:
    /// the next heartbeat replays the room from its last delivered `seq`.
    async fn deliver_in_order(&self, message: ChatMessage) {
        let last = self.delivered.lock().unwrap_or_else(|p| p.into_inner()).get(&message.room).copied();
        match last {
            Some(last) if message.seq <= last => return,
            Some(last) if message.seq > last + 1 => {
                if !self.replay(&message.room, last, message.seq).await {
                    self.messages_stale.store(true, Ordering::Release);
                    return;
                }
            }
            _ => {}
        }
        self.deliver(message);
    }

    fn deliver(&self, message: ChatMessage) {
        self.delivered.lock().unwrap_or_else(|p| p.into_inner()).insert(message.room.clone(), message.seq);
        let delivery = Delivery::Message { message };
        apply(&self.registry, &self.on_invalidate, &delivery);
    }

    /// Delivers a room's stored messages with `after < seq < before`, in
    /// order. False when the table could not be read (some may be delivered).
    async fn replay(&self, room: &str, after: i64, before: i64) -> bool {
        let mut after = after;
        loop {
            match store::page(&Db::Postgres(self.pool.clone()), room, after, before, REPLAY_PAGE, store::Keep::Oldest).await {
                Ok(page) => {
                    let Some(newest) = page.last().map(|m| m.seq) else { return true };
                    let full = page.len() as i64 == REPLAY_PAGE;
                    for message in page {
                        self.deliver(message);
                    }
                    if !full {
                        return true;
                    }
                    after = newest;
                }
                Err(e) => {
                    tracing::warn!(error = %e, room, "cluster: could not replay missed messages");
                    return false;
                }
            }
        }
    }

    /// Every room with sockets here gets the messages it missed, from the
    /// newest it delivered (or its sockets' oldest floor). False when a room
    /// could not be read.
    async fn replay_missed(&self) -> bool {
        let mut all = true;
        for (room, floor) in self.registry.room_floors() {
            let after = self.delivered.lock().unwrap_or_else(|p| p.into_inner()).get(&room).copied().unwrap_or(floor);
            all &= self.replay(&room, after, i64::MAX).await;
        }
        all
    }

    /// After a reconnect: the other nodes' presence is read again, and every
    /// room with sockets here gets the messages it missed.
    async fn resync(&self) {
        if let Err(e) = self.load_presence(None).await {
            tracing::warn!(error = %e, "cluster: could not read the other nodes' presence");
            self.remote_presence_stale.store(true, Ordering::Release);
        }
        if !self.replay_missed().await {
            self.messages_stale.store(true, Ordering::Release);
        }
    }

    /// At each heartbeat (with `applying` held): rereads what a failed read
    /// may have missed, until it succeeds.
    async fn repair(&self) {
        if self.remote_presence_stale.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.load_presence(None).await {
                tracing::warn!(error = %e, "cluster: could not reread the other nodes' presence");
                self.remote_presence_stale.store(true, Ordering::Release);
            }
        }
        if self.messages_stale.swap(false, Ordering::AcqRel) && !self.replay_missed().await {
            self.messages_stale.store(true, Ordering::Release);
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

/// The task that shares this node's changes ([`Registry::cluster_feed`]) in
/// order, a batch per transaction. After a failed write it rewrites this
/// node's whole part once the database answers (checked every [`HEARTBEAT`]).
async fn share_presence(inner: Arc<Inner>, mut feed: mpsc::UnboundedReceiver<NodeChange>) {
    let mut batch = Vec::new();
    loop {
        batch.clear();
        if let Ok(0) = tokio::time::timeout(HEARTBEAT, feed.recv_many(&mut batch, PRESENCE_BATCH)).await {
            return;
        }
        if inner.stopping.load(Ordering::Acquire) {
            continue;
        }
        // A rewrite covers the batch too: the registry already holds its changes.
        let shared = if inner.presence_stale.swap(false, Ordering::AcqRel) {
            inner.reset_presence().await
        } else {
            inner.share(&batch).await
        };
        if let Err(e) = shared {
            tracing::warn!(error = %e, "cluster: could not share this node's presence; rewriting it when the database is back");
            inner.presence_stale.store(true, Ordering::Release);
        }
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
    // Subscribed first, so no change made after this read is missed.
    if let Err(e) = inner.load_presence(None).await {
        tracing::warn!(error = %e, "cluster: could not read the other nodes' presence");
        inner.remote_presence_stale.store(true, Ordering::Release);
    }
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                let _applying = inner.applying.lock().await;
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
        // Changes made while nobody listened: drop the caches again (the
        // feature layer rechecks its bound sockets), fill the rooms' gaps.
        let _applying = inner.applying.lock().await;
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
            inner.stopping.store(true, Ordering::Release);
            let deregistered = async {
                let mut tx = inner.pool.begin().await?;
                // Its presence rows go with it (ON DELETE CASCADE).
                sqlx::query("DELETE FROM nodes WHERE name = $1").bind(inner.node()).execute(&mut *tx).await?;
                notify_on(&mut tx, &inner.envelope(Body::NodeGone { node: inner.node().to_string() })).await?;
                tx.commit().await
            };
            if let Err(e) = deregistered.await {
                tracing::warn!(error = %e, "cluster: could not deregister this node");
            }
        }
        .boxed()
    }
}
