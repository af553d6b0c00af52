//! Live sessions kept in memory, so authenticating a socket upgrade or a
//! request costs no database round trip once a session was seen.
//!
//! Every change to a session or its user made through this server
//! invalidates here at once. A change made elsewhere (the database edited
//! directly) shows within the recheck interval (`session-recheck-secs`,
//! [`crate::config::Limits::session_recheck`]): a cached entry older than
//! that is read again from the database. On Postgres, where other nodes
//! change sessions too, the interval is zero: every lookup reads the database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use crate::db::Db;

use super::store::{self, Session};
use crate::db::now_unix;

/// Entries kept before the cache is swept of expired ones (and, if still
/// full, emptied): it is a cache, the database stays the truth.
const MAX_ENTRIES: usize = 100_000;

/// A session as read from the database, and when.
struct Cached {
    session: Session,
    read_at: Instant,
}

pub struct SessionCache {
    sessions: RwLock<HashMap<String, Cached>>,
    /// Bumped by every invalidation: a lookup that read the database before
    /// an invalidation must not store what it read.
    generation: AtomicU64,
    /// How long an entry is trusted before it is read again.
    recheck_after: Duration,
}

impl SessionCache {
    /// A cache whose entries are reread from the database once they are
    /// `recheck_after` old (zero: on every lookup).
    pub fn new(recheck_after: Duration) -> SessionCache {
        SessionCache { sessions: RwLock::default(), generation: AtomicU64::new(0), recheck_after }
    }

    /// The session if it is live now, with its user as stored at most
    /// `recheck_after` ago.
    pub async fn live(&self, db: &Db, session_id: &str) -> sqlx::Result<Option<Session>> {
        if let Some(cached) = self.read().get(session_id) {
            if cached.session.expires_at > now_unix() && cached.read_at.elapsed() < self.recheck_after {
                return Ok(Some(cached.session.clone()));
            }
        }
        let read_at = Instant::now();
        let generation = self.generation.load(Ordering::Acquire);
        let session = store::live_session(db, session_id).await?;
        let mut sessions = self.write();
        match &session {
            Some(session) if self.generation.load(Ordering::Acquire) == generation => {
                if sessions.len() >= MAX_ENTRIES {
                    let now = now_unix();
                    sessions.retain(|_, c| c.session.expires_at > now && c.read_at.elapsed() < self.recheck_after);
                    if sessions.len() >= MAX_ENTRIES {
                        sessions.clear();
                    }
                }
                sessions.insert(session.id.clone(), Cached { session: session.clone(), read_at });
            }
            Some(_) => {}
            // Gone from the database (revoked elsewhere, user deleted): not kept.
            None => {
                sessions.remove(session_id);
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
        sessions.retain(|_, c| c.session.user.id != user_id);
    }

    /// Changes may have been missed (another node's): nothing cached is trusted.
    pub fn forget_all(&self) {
        let mut sessions = self.write();
        self.generation.fetch_add(1, Ordering::AcqRel);
        sessions.clear();
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Cached>> {
        self.sessions.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Cached>> {
        self.sessions.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
