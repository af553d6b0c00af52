//! Live sessions kept in memory, so authenticating a socket upgrade or a
//! request costs no database round trip once a session was seen.
//!
//! Every change to a session or its user passes through this server and
//! invalidates here. A multi-node build must also invalidate on the other
//! nodes (the same place that will publish emits to them).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use sqlx::SqlitePool;

use super::store::{self, Session};
use crate::db::now_unix;

/// Entries kept before the cache is swept of expired ones (and, if still
/// full, emptied): it is a cache, the database stays the truth.
const MAX_ENTRIES: usize = 100_000;

#[derive(Default)]
pub struct SessionCache {
    sessions: RwLock<HashMap<String, Session>>,
    /// Bumped by every invalidation: a lookup that read the database before
    /// an invalidation must not store what it read.
    generation: AtomicU64,
}

impl SessionCache {
    /// The session if it is live now, with its user as stored.
    pub async fn live(&self, db: &SqlitePool, session_id: &str) -> sqlx::Result<Option<Session>> {
        if let Some(session) = self.read().get(session_id) {
            if session.expires_at > now_unix() {
                return Ok(Some(session.clone()));
            }
        }
        let generation = self.generation.load(Ordering::Acquire);
        let session = store::live_session(db, session_id).await?;
        if let Some(session) = &session {
            let mut sessions = self.write();
            if self.generation.load(Ordering::Acquire) == generation {
                if sessions.len() >= MAX_ENTRIES {
                    let now = now_unix();
                    sessions.retain(|_, s| s.expires_at > now);
                    if sessions.len() >= MAX_ENTRIES {
                        sessions.clear();
                    }
                }
                sessions.insert(session.id.clone(), session.clone());
            }
        }
        Ok(session)
    }

    /// A session was revoked.
    pub fn forget(&self, session_id: &str) {
        let mut sessions = self.write();
        self.generation.fetch_add(1, Ordering::AcqRel);
        sessions.remove(session_id);
    }

    /// A user changed (role) or lost every session.
    pub fn forget_user(&self, user_id: &str) {
        let mut sessions = self.write();
        self.generation.fetch_add(1, Ordering::AcqRel);
        sessions.retain(|_, s| s.user.id != user_id);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Session>> {
        self.sessions.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Session>> {
        self.sessions.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
