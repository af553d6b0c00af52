//! Login throttling: per email (failures) and per client address (attempts).
//!
//! [`Throttle::Local`] counts in this process ([`LoginThrottle`], one node on
//! SQLite); [`Throttle::Shared`] counts in Postgres tables
//! ([`SharedThrottle`]), so the limits hold across every node of a cluster.
//!
//! Rules (PROTOCOL.md, login row): 10 failed attempts for one email within 15
//! minutes lock that email for every address until the oldest of them is 15
//! minutes old; 60 attempts a minute from one client address lock that
//! address for the rest of the minute.
//!
//! A client address is an IPv4 address or an IPv6 /64 ([`client_key`]).
//!
//! Memory is bounded (issue 10 item 4): a failure is recorded only for a
//! syntactically plausible email of at most 254 bytes, lower-cased; an email
//! keeps at most its last 10 failure instants; one client address can hold at
//! most [`EMAILS_PER_ADDRESS`] recorded emails and the whole throttle
//! [`EMAILS_TOTAL`]. Past a cap the email whose last failure is oldest (that
//! address's own, for the per-address cap) is forgotten first. The per-address
//! cap is above the 900 distinct emails an address can fail on in 15 minutes at
//! 60 attempts a minute, so it never weakens the per-email rule at that rate.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::extract::client_key;

const EMAIL_FAILURES: usize = 10;
const EMAIL_WINDOW: Duration = Duration::from_secs(15 * 60);
const ADDRESS_ATTEMPTS: usize = 60;
const ADDRESS_WINDOW: Duration = Duration::from_secs(60);
/// Addresses kept before idle ones are swept.
const SWEEP_ABOVE: usize = 10_000;
/// Longest email recorded, in bytes (RFC 5321's path limit).
pub const MAX_EMAIL_BYTES: usize = 254;
/// Recorded emails one client address can hold at once.
pub const EMAILS_PER_ADDRESS: usize = 1000;
/// Recorded emails the throttle holds at once, across all addresses.
pub const EMAILS_TOTAL: usize = 50_000;

pub struct LoginThrottle {
    failures: Mutex<Failures>,
    attempts_by_address: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
    emails_per_address: usize,
    emails_total: usize,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        LoginThrottle::with_caps(EMAILS_PER_ADDRESS, EMAILS_TOTAL)
    }
}

/// The recorded failures, indexed for oldest-first eviction: each record has
/// a serial number, renewed at its every failure, so the smallest serial is
/// the record whose last failure is oldest.
#[derive(Default)]
struct Failures {
    by_email: HashMap<Arc<str>, Record>,
    by_serial: BTreeMap<u64, Arc<str>>,
    /// Per client address: the records whose last failure came from it.
    by_address: HashMap<IpAddr, BTreeMap<u64, Arc<str>>>,
    next_serial: u64,
}

struct Record {
    /// The last failures, oldest first, at most [`EMAIL_FAILURES`].
    times: VecDeque<Instant>,
    serial: u64,
    address: IpAddr,
}

impl Failures {
    fn remove(&mut self, email: &str) -> Option<Record> {
        let record = self.by_email.remove(email)?;
        self.by_serial.remove(&record.serial);
        if let Some(own) = self.by_address.get_mut(&record.address) {
            own.remove(&record.serial);
            if own.is_empty() {
                self.by_address.remove(&record.address);
            }
        }
        Some(record)
    }

    fn insert(&mut self, email: Arc<str>, mut record: Record) {
        record.serial = self.next_serial;
        self.next_serial += 1;
        self.by_serial.insert(record.serial, email.clone());
        self.by_address.entry(record.address).or_default().insert(record.serial, email.clone());
        self.by_email.insert(email, record);
    }

    /// Forgets records whose last failure is out of the window.
    fn expire(&mut self, now: Instant) {
        while let Some((_, email)) = self.by_serial.first_key_value() {
            let stale = self.by_email.get(email).and_then(|r| r.times.back()).is_none_or(|t| now.duration_since(*t) >= EMAIL_WINDOW);
            if !stale {
                break;
            }
            let email = email.clone();
            self.remove(&email);
        }
    }

    fn oldest_of(&self, address: IpAddr) -> Option<Arc<str>> {
        self.by_address.get(&address).and_then(|own| own.first_key_value()).map(|(_, email)| email.clone())
    }
}

/// Drops instants older than the window; returns the wait until there is
/// room under `limit` again, or `None` when there is room now.
fn wait_time(times: &mut VecDeque<Instant>, limit: usize, window: Duration, now: Instant) -> Option<Duration> {
    while times.front().is_some_and(|t| now.duration_since(*t) >= window) {
        times.pop_front();
    }
    (times.len() >= limit).then(|| window - now.duration_since(times[times.len() - limit]))
}

/// The email as recorded: trimmed and lower-cased, or `None` when it is not
/// a plausible address of at most [`MAX_EMAIL_BYTES`] (never recorded).
pub fn throttle_key(email: &str) -> Option<String> {
    let email = email.trim();
    (email.len() <= MAX_EMAIL_BYTES && super::validate::valid_email(email)).then(|| email.to_lowercase())
}

impl LoginThrottle {
    /// A throttle holding at most `emails_per_address` recorded emails for one
    /// client address and `emails_total` in all.
    pub fn with_caps(emails_per_address: usize, emails_total: usize) -> LoginThrottle {
        LoginThrottle {
            failures: Mutex::default(),
            attempts_by_address: Mutex::default(),
            emails_per_address: emails_per_address.max(1),
            emails_total: emails_total.max(1),
        }
    }

    /// Counts one attempt from `address` for `email`; `Err(seconds to wait)` when over a limit.
    pub fn attempt(&self, address: IpAddr, email: &str) -> Result<(), u64> {
        let address = client_key(address);
        let now = Instant::now();
        let mut by_address = lock(&self.attempts_by_address);
        if by_address.len() > SWEEP_ABOVE {
            by_address.retain(|_, times| times.back().is_some_and(|t| now.duration_since(*t) < ADDRESS_WINDOW));
        }
        let attempts = by_address.entry(address).or_default();
        if let Some(wait) = wait_time(attempts, ADDRESS_ATTEMPTS, ADDRESS_WINDOW, now) {
            return Err(wait.as_secs() + 1);
        }
        attempts.push_back(now);
        drop(by_address);

        let Some(key) = throttle_key(email) else { return Ok(()) };
        let mut failures = lock(&self.failures);
        if let Some(record) = failures.by_email.get_mut(key.as_str()) {
            if let Some(wait) = wait_time(&mut record.times, EMAIL_FAILURES, EMAIL_WINDOW, now) {
                return Err(wait.as_secs() + 1);
            }
        }
        Ok(())
    }

    /// Records a failed login for `email` from `address` (nothing for an
    /// implausible email).
    pub fn failed(&self, address: IpAddr, email: &str) {
        let Some(key) = throttle_key(email) else { return };
        let address = client_key(address);
        let now = Instant::now();
        let mut failures = lock(&self.failures);
        failures.expire(now);
        let mut record = match failures.remove(&key) {
            Some(record) => record,
            None => {
                if failures.by_address.get(&address).is_some_and(|own| own.len() >= self.emails_per_address) {
                    if let Some(oldest) = failures.oldest_of(address) {
                        failures.remove(&oldest);
                    }
                }
                if failures.by_email.len() >= self.emails_total {
                    if let Some((_, oldest)) = failures.by_serial.first_key_value() {
                        let oldest = oldest.clone();
                        failures.remove(&oldest);
                    }
                }
                Record { times: VecDeque::with_capacity(EMAIL_FAILURES), serial: 0, address }
            }
        };
        if record.times.len() >= EMAIL_FAILURES {
            record.times.pop_front();
        }
        record.times.push_back(now);
        record.address = address;
        failures.insert(key.into(), record);
    }

    pub fn succeeded(&self, email: &str) {
        if let Some(key) = throttle_key(email) {
            lock(&self.failures).remove(&key);
        }
    }

    /// Emails recorded now.
    pub fn len(&self) -> usize {
        lock(&self.failures).by_email.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of email text and failure instants recorded now (the payload;
    /// map overhead adds a constant per email).
    pub fn bytes(&self) -> usize {
        let failures = lock(&self.failures);
        failures.by_email.iter().map(|(email, r)| email.len() + r.times.capacity() * size_of::<Instant>()).sum()
    }
}

/// The login throttle of this deployment: in memory on one node, in the
/// database when nodes share one. `Ok(Err(seconds))`: over a limit, retry
/// after that many seconds; `Err`: the database is unreachable.
pub enum Throttle {
    Local(LoginThrottle),
    Shared(SharedThrottle),
}

impl Throttle {
    /// Counts one attempt from `address` for `email`.
    pub async fn attempt(&self, address: IpAddr, email: &str) -> sqlx::Result<Result<(), u64>> {
        match self {
            Throttle::Local(local) => Ok(local.attempt(address, email)),
            Throttle::Shared(shared) => shared.attempt(address, email).await,
        }
    }

    /// Records a failed login for `email` from `address`.
    pub async fn failed(&self, address: IpAddr, email: &str) -> sqlx::Result<()> {
        match self {
            Throttle::Local(local) => Ok(local.failed(address, email)),
            Throttle::Shared(shared) => shared.failed(email).await,
        }
    }

    /// A right password: the email's failures are forgotten.
    pub async fn succeeded(&self, email: &str) -> sqlx::Result<()> {
        match self {
            Throttle::Local(local) => Ok(local.succeeded(email)),
            Throttle::Shared(shared) => shared.succeeded(email).await,
        }
    }
}

/// How long until there is room under a limit again, in whole seconds (as
/// [`LoginThrottle`] rounds): a row only when the key is over the limit.
/// `$1` the key, `$2` the limit, `$3` the window in seconds.
const ATTEMPTS_WAIT_SQL: &str = "SELECT FLOOR(EXTRACT(EPOCH FROM min(at) + make_interval(secs => $3) - clock_timestamp()))::BIGINT + 1
     FROM (SELECT at FROM login_attempts WHERE address = $1 AND at > clock_timestamp() - make_interval(secs => $3)
           ORDER BY at DESC LIMIT $2) recent
     HAVING count(*) >= $2";
const FAILURES_WAIT_SQL: &str = "SELECT FLOOR(EXTRACT(EPOCH FROM min(at) + make_interval(secs => $3) - clock_timestamp()))::BIGINT + 1
     FROM (SELECT at FROM login_failures WHERE email = $1 AND at > clock_timestamp() - make_interval(secs => $3)
           ORDER BY at DESC LIMIT $2) recent
     HAVING count(*) >= $2";

/// The same rules as [`LoginThrottle`], counted in `login_attempts` and
/// `login_failures` (migration 0005) by every node, on the database's clock
/// (`clock_timestamp()`: the time of the statement, not of a transaction that
/// waited for the lock).
/// An address's count and insert happen under a transaction-scoped advisory
/// lock on it, so nodes racing on one address cannot both pass the limit.
/// Rows out of their window are deleted every minute.
pub struct SharedThrottle {
    pool: PgPool,
}

impl SharedThrottle {
    /// Also starts the task that deletes rows out of their window.
    pub fn new(pool: PgPool) -> SharedThrottle {
        let sweeping = pool.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ADDRESS_WINDOW);
            loop {
                tick.tick().await;
                let swept = async {
                    sqlx::query("DELETE FROM login_attempts WHERE at <= now() - make_interval(secs => $1)")
                        .bind(ADDRESS_WINDOW.as_secs_f64())
                        .execute(&sweeping)
                        .await?;
                    sqlx::query("DELETE FROM login_failures WHERE at <= now() - make_interval(secs => $1)")
                        .bind(EMAIL_WINDOW.as_secs_f64())
                        .execute(&sweeping)
                        .await
                };
                if let Err(e) = swept.await {
                    tracing::warn!(error = %e, "login throttle: could not delete old rows");
                }
            }
        });
        SharedThrottle { pool }
    }

    async fn attempt(&self, address: IpAddr, email: &str) -> sqlx::Result<Result<(), u64>> {
        let address = client_key(address).to_string();
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('login:' || $1))").bind(&address).execute(&mut *tx).await?;
        let wait: Option<i64> = sqlx::query_scalar(ATTEMPTS_WAIT_SQL)
            .bind(&address)
            .bind(ADDRESS_ATTEMPTS as i64)
            .bind(ADDRESS_WINDOW.as_secs_f64())
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(wait) = wait {
            return Ok(Err(wait.max(1) as u64));
        }
        sqlx::query("INSERT INTO login_attempts (address, at) VALUES ($1, clock_timestamp())").bind(&address).execute(&mut *tx).await?;
        tx.commit().await?;
        let Some(key) = throttle_key(email) else { return Ok(Ok(())) };
        let wait: Option<i64> = sqlx::query_scalar(FAILURES_WAIT_SQL)
            .bind(&key)
            .bind(EMAIL_FAILURES as i64)
            .bind(EMAIL_WINDOW.as_secs_f64())
            .fetch_optional(&self.pool)
            .await?;
        Ok(wait.map_or(Ok(()), |wait| Err(wait.max(1) as u64)))
    }

    async fn failed(&self, email: &str) -> sqlx::Result<()> {
        let Some(key) = throttle_key(email) else { return Ok(()) };
        sqlx::query("INSERT INTO login_failures (email, at) VALUES ($1, clock_timestamp())").bind(key).execute(&self.pool).await?;
        Ok(())
    }

    async fn succeeded(&self, email: &str) -> sqlx::Result<()> {
        let Some(key) = throttle_key(email) else { return Ok(()) };
        sqlx::query("DELETE FROM login_failures WHERE email = $1").bind(key).execute(&self.pool).await?;
        Ok(())
    }

    /// Emails with failures recorded now.
    pub async fn recorded_emails(&self) -> sqlx::Result<i64> {
        sqlx::query_scalar("SELECT count(DISTINCT email) FROM login_failures").fetch_one(&self.pool).await
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
            throttle.failed(HOME, "A@x.io");
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
            throttle.failed(HOME, "a@x.io");
        }
        throttle.succeeded("a@x.io");
        throttle.failed(HOME, "a@x.io");
        assert!(throttle.attempt(HOME, "a@x.io").is_ok());
        assert_eq!(throttle.len(), 1);
    }

    #[test]
    fn implausible_or_long_emails_are_never_recorded() {
        let throttle = LoginThrottle::default();
        let long = format!("{}@x.io", "a".repeat(MAX_EMAIL_BYTES));
        for email in ["", "nobody", "a b@x.io", &"x".repeat(64 * 1024), &long] {
            throttle.failed(HOME, email);
        }
        assert!(throttle.is_empty());
        let longest = format!("{}@x.io", "a".repeat(MAX_EMAIL_BYTES - 5));
        throttle.failed(HOME, &longest);
        assert_eq!(throttle.len(), 1);
        assert!(throttle.bytes() <= MAX_EMAIL_BYTES + EMAIL_FAILURES * size_of::<Instant>());
    }

    #[test]
    fn caps_evict_the_oldest_first() {
        let throttle = LoginThrottle::with_caps(3, 5);
        let other: IpAddr = "10.0.0.9".parse().unwrap();
        for i in 0..10 {
            throttle.failed(HOME, &format!("u{i}@x.io"));
        }
        assert_eq!(throttle.len(), 3, "one address holds at most 3");
        for i in 0..3 {
            throttle.failed(other, &format!("o{i}@x.io"));
        }
        assert_eq!(throttle.len(), 5, "at most 5 in all");
        // The survivors are the newest: u8, u9 of HOME (u7 went for the total cap) and o0..o2.
        let failures = throttle.failures.lock().unwrap();
        for kept in ["u8@x.io", "u9@x.io", "o0@x.io", "o1@x.io", "o2@x.io"] {
            assert!(failures.by_email.contains_key(kept), "{kept}");
        }
        assert_eq!(failures.by_serial.len(), 5);
        assert_eq!(failures.by_address.values().map(BTreeMap::len).sum::<usize>(), 5);
    }

    #[test]
    fn a_failure_moves_the_email_to_its_latest_address() {
        let throttle = LoginThrottle::with_caps(2, 100);
        let other: IpAddr = "10.0.0.9".parse().unwrap();
        throttle.failed(HOME, "a@x.io");
        throttle.failed(other, "a@x.io");
        throttle.failed(HOME, "b@x.io");
        throttle.failed(HOME, "c@x.io");
        assert_eq!(throttle.len(), 3, "a@x.io counts against the other address now");
        for _ in 0..8 {
            throttle.failed(HOME, "a@x.io");
        }
        assert!(throttle.attempt(other, "a@x.io").is_err(), "10 failures from two addresses lock the email");
    }
}
