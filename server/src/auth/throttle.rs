//! Login throttling: per email (failures) and per client address (attempts).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const EMAIL_FAILURES: usize = 10;
const EMAIL_WINDOW: Duration = Duration::from_secs(15 * 60);
const ADDRESS_ATTEMPTS: usize = 60;
const ADDRESS_WINDOW: Duration = Duration::from_secs(60);
/// Keys kept before idle ones are swept.
const SWEEP_ABOVE: usize = 10_000;

#[derive(Default)]
pub struct LoginThrottle {
    failures_by_email: Mutex<HashMap<String, VecDeque<Instant>>>,
    attempts_by_address: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

/// Drops instants older than the window; returns the wait until there is
/// room under `limit` again, or `None` when there is room now.
fn wait_time(times: &mut VecDeque<Instant>, limit: usize, window: Duration, now: Instant) -> Option<Duration> {
    while times.front().is_some_and(|t| now.duration_since(*t) >= window) {
        times.pop_front();
    }
    (times.len() >= limit).then(|| window - now.duration_since(times[times.len() - limit]))
}

fn sweep<K: std::hash::Hash + Eq>(map: &mut HashMap<K, VecDeque<Instant>>, window: Duration, now: Instant) {
    if map.len() > SWEEP_ABOVE {
        map.retain(|_, times| times.back().is_some_and(|t| now.duration_since(*t) < window));
    }
}

impl LoginThrottle {
    /// Counts one attempt from `address` for `email`; `Err(seconds to wait)` when over a limit.
    pub fn attempt(&self, address: IpAddr, email: &str) -> Result<(), u64> {
        let now = Instant::now();
        let mut by_address = self.attempts_by_address.lock().expect("throttle lock");
        sweep(&mut by_address, ADDRESS_WINDOW, now);
        let attempts = by_address.entry(address).or_default();
        if let Some(wait) = wait_time(attempts, ADDRESS_ATTEMPTS, ADDRESS_WINDOW, now) {
            return Err(wait.as_secs() + 1);
        }
        attempts.push_back(now);
        drop(by_address);

        let mut by_email = self.failures_by_email.lock().expect("throttle lock");
        if let Some(failures) = by_email.get_mut(&email.to_lowercase()) {
            if let Some(wait) = wait_time(failures, EMAIL_FAILURES, EMAIL_WINDOW, now) {
                return Err(wait.as_secs() + 1);
            }
        }
        Ok(())
    }

    pub fn failed(&self, email: &str) {
        let now = Instant::now();
        let mut by_email = self.failures_by_email.lock().expect("throttle lock");
        sweep(&mut by_email, EMAIL_WINDOW, now);
        by_email.entry(email.to_lowercase()).or_default().push_back(now);
    }

    pub fn succeeded(&self, email: &str) {
        self.failures_by_email.lock().expect("throttle lock").remove(&email.to_lowercase());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn ten_failures_lock_the_email_for_every_address() {
        let throttle = LoginThrottle::default();
        for _ in 0..10 {
            assert!(throttle.attempt(HOME, "a@x.io").is_ok());
            throttle.failed("A@x.io");
        }
        let wait = throttle.attempt("10.0.0.1".parse().unwrap(), "a@X.io").unwrap_err();
        assert!((899..=901).contains(&wait), "{wait}");
        assert!(throttle.attempt("10.0.0.1".parse().unwrap(), "b@x.io").is_ok());
    }

    #[test]
    fn sixty_attempts_a_minute_from_one_address() {
        let throttle = LoginThrottle::default();
        for i in 0..60 {
            assert!(throttle.attempt(HOME, &format!("u{i}@x.io")).is_ok());
        }
        assert!(throttle.attempt(HOME, "new@x.io").is_err());
        assert!(throttle.attempt("10.0.0.2".parse().unwrap(), "new@x.io").is_ok());
    }

    #[test]
    fn success_clears_the_failures() {
        let throttle = LoginThrottle::default();
        for _ in 0..9 {
            throttle.failed("a@x.io");
        }
        throttle.succeeded("a@x.io");
        throttle.failed("a@x.io");
        assert!(throttle.attempt(HOME, "a@x.io").is_ok());
    }
}
