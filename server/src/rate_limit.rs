//! Request rate limits for registration and room creation (PROTOCOL.md v2:
//! 429 `rate_limited` with `Retry-After`), as keyed GCRA limiters: from the
//! `governor` crate in memory on one node, and the same algorithm in one SQL
//! statement ([`SharedLimit`], table `rate_limits`) when nodes share a
//! Postgres, so N nodes allow the contract's rate, not N times it. Login has
//! its own throttle ([`crate::auth::throttle`]), since its per-email rule
//! counts failures, not requests.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sqlx::PgPool;

use crate::config::Limits;
use crate::error::ApiError;
use crate::extract::client_key;

/// Checks between two sweeps of keys whose limit has fully replenished.
const SWEEP_EVERY: u64 = 1024;

/// One keyed limiter: `per_minute` requests a minute for each key, with a
/// burst of as many. Its memory is one small cell per key seen within the
/// last minute; older keys are swept every [`SWEEP_EVERY`] checks.
pub struct KeyedLimit<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    clock: DefaultClock,
    checks: AtomicU64,
}

impl<K: Hash + Eq + Clone> KeyedLimit<K> {
    pub fn per_minute(per_minute: NonZeroU32) -> Self {
        KeyedLimit { limiter: RateLimiter::keyed(Quota::per_minute(per_minute)), clock: DefaultClock::default(), checks: AtomicU64::new(0) }
    }

    /// Counts one request for `key`; `Err` is 429 `rate_limited` carrying the
    /// whole seconds (at least 1) until the key may ask again.
    pub fn check(&self, key: &K) -> Result<(), ApiError> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            ApiError::RateLimited { retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0) }
        })
    }

    /// Keys currently held.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

/// GCRA as [`KeyedLimit`] computes it (`per_minute` a minute, a burst of as
/// many: emission interval T = 60 s / per_minute, a request is let through
/// while max(tat, now) + T - now <= 60 s, and moves tat there), in one
/// statement on the database's clock. $1 kind, $2 key, $3 T in seconds.
/// A row back: let through.
const GCRA_SQL: &str = "INSERT INTO rate_limits (kind, key, tat) VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3))
     ON CONFLICT (kind, key) DO UPDATE SET tat = GREATEST(rate_limits.tat, clock_timestamp()) + make_interval(secs => $3)
     WHERE GREATEST(rate_limits.tat, clock_timestamp()) + make_interval(secs => $3) - clock_timestamp() <= interval '60 seconds'
     RETURNING 1";
/// Seconds until a refused key may ask again: max(tat, now) + T - 60 s - now.
const GCRA_WAIT_SQL: &str = "SELECT EXTRACT(EPOCH FROM GREATEST(tat, clock_timestamp()) + make_interval(secs => $3)
         - interval '60 seconds' - clock_timestamp())::float8
     FROM rate_limits WHERE kind = $1 AND key = $2";

/// One limit kept in Postgres for every node: the same rule as [`KeyedLimit`].
pub struct SharedLimit {
    pool: PgPool,
    kind: &'static str,
    /// The emission interval, seconds.
    interval_secs: f64,
}

impl SharedLimit {
    fn per_minute(pool: PgPool, kind: &'static str, per_minute: NonZeroU32) -> SharedLimit {
        SharedLimit { pool, kind, interval_secs: 60.0 / f64::from(per_minute.get()) }
    }

    async fn check(&self, key: &str) -> Result<(), ApiError> {
        if self.query::<i32>(GCRA_SQL, key).await?.is_some() {
            return Ok(());
        }
        let wait = self.query::<f64>(GCRA_WAIT_SQL, key).await?;
        Err(ApiError::RateLimited { retry_after_secs: wait.unwrap_or(1.0).ceil().max(1.0) as u64 })
    }

    /// Runs one of the GCRA statements for `key`.
    async fn query<T>(&self, sql: &'static str, key: &str) -> sqlx::Result<Option<T>>
    where
        T: Send + Unpin + for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        sqlx::query_scalar(sql).bind(self.kind).bind(key).bind(self.interval_secs).fetch_optional(&self.pool).await
    }
}

/// Where the limits are counted.
enum Counted {
    Here { registrations_by_address: KeyedLimit<IpAddr>, rooms_by_user: KeyedLimit<String>, rooms_by_address: KeyedLimit<IpAddr> },
    Shared { registrations_by_address: SharedLimit, rooms_by_user: SharedLimit, rooms_by_address: SharedLimit },
}

/// The rate limits of the state-changing requests other than login:
/// `POST /api/auth/register` per client address (`registrations-per-minute`),
/// `POST /api/rooms` per user id (`rooms-per-minute-per-user`) and per client
/// address (`rooms-per-minute-per-address`).
pub struct RateLimits {
    counted: Counted,
}

impl RateLimits {
    /// Counted in this process (one node).
    pub fn new(limits: &Limits) -> RateLimits {
        RateLimits {
            counted: Counted::Here {
                registrations_by_address: KeyedLimit::per_minute(limits.registrations_per_minute),
                rooms_by_user: KeyedLimit::per_minute(limits.rooms_per_minute_per_user),
                rooms_by_address: KeyedLimit::per_minute(limits.rooms_per_minute_per_address),
            },
        }
    }

    /// Counted in Postgres for every node sharing it; also starts the task
    /// that deletes fully replenished rows every minute.
    pub fn shared(limits: &Limits, pool: PgPool) -> RateLimits {
        let sweeping = pool.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                if let Err(e) = sqlx::query("DELETE FROM rate_limits WHERE tat < clock_timestamp()").execute(&sweeping).await {
                    tracing::warn!(error = %e, "rate limits: could not delete replenished rows");
                }
            }
        });
        let limit = |kind, per_minute| SharedLimit::per_minute(pool.clone(), kind, per_minute);
        RateLimits {
            counted: Counted::Shared {
                registrations_by_address: limit("registrations_by_address", limits.registrations_per_minute),
                rooms_by_user: limit("rooms_by_user", limits.rooms_per_minute_per_user),
                rooms_by_address: limit("rooms_by_address", limits.rooms_per_minute_per_address),
            },
        }
    }

    /// One registration from `address` (an IPv6 one counts as its /64);
    /// 429 `rate_limited` past its rate (503 `unavailable` when shared and
    /// the database is down).
    pub async fn register(&self, address: IpAddr) -> Result<(), ApiError> {
        let address = client_key(address);
        match &self.counted {
            Counted::Here { registrations_by_address, .. } => registrations_by_address.check(&address),
            Counted::Shared { registrations_by_address, .. } => registrations_by_address.check(&address.to_string()).await,
        }
    }

    /// One room creation by `user_id` from `address` (an IPv6 one counts as its /64); 429 `rate_limited` when
    /// either is past its rate. Every request counts against both, refused
    /// ones included (as with registration).
    pub async fn create_room(&self, user_id: &str, address: IpAddr) -> Result<(), ApiError> {
        let address = client_key(address);
        match &self.counted {
            Counted::Here { rooms_by_user, rooms_by_address, .. } => {
                let by_user = rooms_by_user.check(&user_id.to_string());
                by_user.and(rooms_by_address.check(&address))
            }
            Counted::Shared { rooms_by_user, rooms_by_address, .. } => {
                let by_user = rooms_by_user.check(user_id).await;
                let by_address = rooms_by_address.check(&address.to_string()).await;
                by_user.and(by_address)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_burst_then_waits_and_other_keys_do_not() {
        let limit = KeyedLimit::per_minute(NonZeroU32::new(3).unwrap());
        let home: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(limit.check(&home).is_ok());
        }
        match limit.check(&home) {
            Err(ApiError::RateLimited { retry_after_secs }) => assert!((1..=20).contains(&retry_after_secs), "{retry_after_secs}"),
            other => panic!("{other:?}"),
        }
        assert!(limit.check(&"10.0.0.2".parse().unwrap()).is_ok());
        assert_eq!(limit.len(), 2);
    }
}
