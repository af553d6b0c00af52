//! Request rate limits for registration and room creation (PROTOCOL.md v2:
//! 429 `rate_limited` with `Retry-After`), as keyed GCRA limiters from the
//! `governor` crate. Login has its own throttle ([`crate::auth::throttle`]),
//! since its per-email rule counts failures, not requests.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

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

/// The rate limits of the state-changing requests other than login.
pub struct RateLimits {
    /// `POST /api/auth/register` per client address (`registrations-per-minute`).
    pub registrations_by_address: KeyedLimit<IpAddr>,
    /// `POST /api/rooms` per user id (`rooms-per-minute-per-user`).
    pub rooms_by_user: KeyedLimit<String>,
    /// `POST /api/rooms` per client address (`rooms-per-minute-per-address`).
    pub rooms_by_address: KeyedLimit<IpAddr>,
}

impl RateLimits {
    pub fn new(limits: &Limits) -> RateLimits {
        RateLimits {
            registrations_by_address: KeyedLimit::per_minute(limits.registrations_per_minute),
            rooms_by_user: KeyedLimit::per_minute(limits.rooms_per_minute_per_user),
            rooms_by_address: KeyedLimit::per_minute(limits.rooms_per_minute_per_address),
        }
    }

    /// One registration from `address` (an IPv6 one counts as its /64);
    /// 429 `rate_limited` past its rate.
    pub fn register(&self, address: IpAddr) -> Result<(), ApiError> {
        self.registrations_by_address.check(&client_key(address))
    }

    /// One room creation by `user_id` from `address` (an IPv6 one counts as its /64); 429 `rate_limited` when
    /// either is past its rate. Every request counts against both, refused
    /// ones included (as with registration).
    pub fn create_room(&self, user_id: &str, address: IpAddr) -> Result<(), ApiError> {
        let by_user = self.rooms_by_user.check(&user_id.to_string());
        let by_address = self.rooms_by_address.check(&client_key(address));
        by_user.and(by_address)
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
