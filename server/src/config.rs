//! Settings: `Leptos.toml` holds the defaults, environment variables override them.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use leptos::config::LeptosOptions;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read settings file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("setting {name}: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// The longest duration a setting may give, in seconds (ten years): the server
/// adds durations to its clock (socket deadlines, `iat + token-ttl-secs` in
/// i64 seconds), which a larger one would overflow.
pub const MAX_SECS: u64 = 10 * 365 * 86400;

/// The `[tether]` table of `Leptos.toml`; strings so that "empty" can mean "derive it".
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct TetherTable {
    data_dir: String,
    database_url: String,
    token_ttl_secs: u64,
    public_origin: String,
    allowed_origins: String,
    admin_emails: String,
    allow_guests: bool,
    cookie_secure: String,
    trusted_proxies: String,
    /// Absent from an older settings file: metrics off.
    #[serde(default)]
    metrics_addr: String,
    #[serde(default)]
    log_format: String,
    #[serde(flatten)]
    limits: LimitsTable,
}

/// The resource limits of the `[tether]` table, as numbers (seconds or counts).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct LimitsTable {
    header_read_timeout_secs: u64,
    request_timeout_secs: u64,
    max_connections: u64,
    max_connections_per_address: u64,
    ping_interval_secs: u64,
    pong_timeout_secs: u64,
    write_timeout_secs: u64,
    close_timeout_secs: u64,
    socket_idle_timeout_secs: u64,
    socket_queue_frames: u64,
    socket_write_buffer_bytes: u64,
    session_recheck_secs: u64,
    registrations_per_minute: u64,
    rooms_per_minute_per_user: u64,
    rooms_per_minute_per_address: u64,
    database_connect_timeout_secs: u64,
    database_acquire_timeout_secs: u64,
}

/// Every resource one client can make the server hold, bounded in one place
/// (issue 10). Defaults live in `Leptos.toml`'s `[tether]` table under the
/// kebab-case key named on each field; the `TETHER_*` variable of the same name
/// (upper case, dashes as underscores) overrides it. Durations are read as
/// whole seconds, counts as plain integers; timeouts and counts must be at
/// least 1 (`session-recheck-secs` may be 0: every use rereads the database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `header-read-timeout-secs` (10): time a connection may take to send a
    /// request head, counted from its accept and, between requests, from the
    /// end of the previous one. An idle, silent or byte-a-second connection
    /// (an unfinished upgrade included) is closed when it runs out. Rule: PROTOCOL.md
    /// "connections that never finish their HTTP request or upgrade are closed after a timeout".
    pub header_read_timeout: Duration,
    /// `request-timeout-secs` (30): time an `/api` request may take from its
    /// head to its answer, so its whole body must arrive within it; else 408
    /// `request_timeout` in the error shape. Rule: issue 10 item 2.
    pub request_timeout: Duration,
    /// `max-connections` (10000): open TCP connections in total, HTTP and
    /// upgraded WebSockets alike; one more is closed at once. Rule: issue 10.
    pub max_connections: usize,
    /// `max-connections-per-address` (2048): open TCP connections from one
    /// client (peer) address; one more is closed at once. Generous, since the
    /// load tests open about 1000 sockets from 127.0.0.1. Rule: issue 10.
    pub max_connections_per_address: usize,
    /// `ping-interval-secs` (20): the server pings every WebSocket this often
    /// (HTTP/2 connections too, with HTTP/2 pings). Rule: PROTOCOL.md "The
    /// server pings every socket on an interval".
    pub ping_interval: Duration,
    /// `pong-timeout-secs` (20): a socket (or HTTP/2 connection) whose pong has
    /// not come this long after a ping is closed. Rule: PROTOCOL.md "closes one
    /// that stops answering".
    pub pong_timeout: Duration,
    /// `write-timeout-secs` (10): one write to a socket may block this long
    /// before the socket is dropped (a client that stopped reading). Rule: issue 10 item 7.
    pub write_timeout: Duration,
    /// `close-timeout-secs` (5): after sending its Close frame the server waits
    /// this long for the peer's Close, reading (and discarding) what still
    /// arrives, before dropping TCP. Rule: RFC 6455 7.1.1, issue 10 item 3.
    pub close_timeout: Duration,
    /// `socket-idle-timeout-secs` (60): a WebSocket that sends nothing at all
    /// (no frame, no pong) this long is closed. Rule: issue 10 item 2.
    pub socket_idle_timeout: Duration,
    /// `socket-queue-frames` (256): frames queued for one socket while it is
    /// being written; the one that overflows it evicts the socket (4002
    /// `too_slow`). Fan-out frames are shared, so this bounds references, not
    /// copies. Rule: PROTOCOL.md v2 close 4002, issue 9 item 4.
    pub socket_queue_frames: usize,
    /// `socket-write-buffer-bytes` (8388608): most bytes one socket's write
    /// buffer may hold while its peer does not read (control-frame answers
    /// included); beyond it the socket is dropped as too slow. It must hold the
    /// largest frame the server sends: a resuming join's history (500 messages
    /// of up to 8000 bytes). Rule: issue 10 item 1.
    pub socket_write_buffer_bytes: usize,
    /// `session-recheck-secs` (5): a cached session and its user are trusted
    /// this long before they are read again from the database, so a deleted or
    /// changed user stops (or changes) authenticating within it. Rule: issue 10 item 8.
    pub session_recheck: Duration,
    /// `registrations-per-minute` (30): `POST /api/auth/register` from one client
    /// address, a minute, also the burst; beyond it 429 `rate_limited` with
    /// `Retry-After`. Rule: PROTOCOL.md v2, register row.
    pub registrations_per_minute: NonZeroU32,
    /// `rooms-per-minute-per-user` (10): `POST /api/rooms` by one user, a
    /// minute, also the burst; beyond it 429 `rate_limited`. Rule: PROTOCOL.md v2.
    pub rooms_per_minute_per_user: NonZeroU32,
    /// `rooms-per-minute-per-address` (30): `POST /api/rooms` from one client
    /// address, a minute, also the burst; beyond it 429 `rate_limited`. Rule: PROTOCOL.md v2.
    pub rooms_per_minute_per_address: NonZeroU32,
    /// `database-connect-timeout-secs` (30): how long start-up retries an
    /// unreachable Postgres (doubling delays from 250 ms to 5 s, one warning an
    /// attempt) before it exits 1 naming `DATABASE_URL`. Rule: issue 11.
    pub database_connect_timeout: Duration,
    /// `database-acquire-timeout-secs` (5): how long a request waits for a
    /// database connection; beyond it (Postgres down) 503 `unavailable`. Rule: issue 11.
    pub database_acquire_timeout: Duration,
}

impl LimitsTable {
    fn resolve(&self, var: &impl Fn(&str) -> Option<String>) -> Result<Limits, ConfigError> {
        let number = |name: &'static str, default: u64, min: u64| -> Result<u64, ConfigError> {
            let value = match var(name) {
                Some(v) => v.trim().parse::<u64>().map_err(|e| invalid(name, e))?,
                None => default,
            };
            if value < min {
                return Err(invalid(name, format!("must be at least {min}")));
            }
            Ok(value)
        };
        let secs = |name, default| number(name, default, 1).and_then(|n| duration(name, n));
        let count = |name, default| number(name, default, 1).map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let rate = |name: &'static str, default| {
            number(name, default, 1).and_then(|n| {
                u32::try_from(n).ok().and_then(NonZeroU32::new).ok_or_else(|| invalid(name, "too large"))
            })
        };
        Ok(Limits {
            header_read_timeout: secs("TETHER_HEADER_READ_TIMEOUT_SECS", self.header_read_timeout_secs)?,
            request_timeout: secs("TETHER_REQUEST_TIMEOUT_SECS", self.request_timeout_secs)?,
            max_connections: count("TETHER_MAX_CONNECTIONS", self.max_connections)?,
            max_connections_per_address: count("TETHER_MAX_CONNECTIONS_PER_ADDRESS", self.max_connections_per_address)?,
            ping_interval: secs("TETHER_PING_INTERVAL_SECS", self.ping_interval_secs)?,
            pong_timeout: secs("TETHER_PONG_TIMEOUT_SECS", self.pong_timeout_secs)?,
            write_timeout: secs("TETHER_WRITE_TIMEOUT_SECS", self.write_timeout_secs)?,
            close_timeout: secs("TETHER_CLOSE_TIMEOUT_SECS", self.close_timeout_secs)?,
            socket_idle_timeout: secs("TETHER_SOCKET_IDLE_TIMEOUT_SECS", self.socket_idle_timeout_secs)?,
            socket_queue_frames: count("TETHER_SOCKET_QUEUE_FRAMES", self.socket_queue_frames)?,
            // Above the 4 KiB a write gathers (tungstenite requires it).
            socket_write_buffer_bytes: number("TETHER_SOCKET_WRITE_BUFFER_BYTES", self.socket_write_buffer_bytes, 64 * 1024)
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX))?,
            session_recheck: number("TETHER_SESSION_RECHECK_SECS", self.session_recheck_secs, 0)
                .and_then(|n| duration("TETHER_SESSION_RECHECK_SECS", n))?,
            registrations_per_minute: rate("TETHER_REGISTRATIONS_PER_MINUTE", self.registrations_per_minute)?,
            rooms_per_minute_per_user: rate("TETHER_ROOMS_PER_MINUTE_PER_USER", self.rooms_per_minute_per_user)?,
            rooms_per_minute_per_address: rate("TETHER_ROOMS_PER_MINUTE_PER_ADDRESS", self.rooms_per_minute_per_address)?,
            database_connect_timeout: secs("TETHER_DATABASE_CONNECT_TIMEOUT_SECS", self.database_connect_timeout_secs)?,
            database_acquire_timeout: secs("TETHER_DATABASE_ACQUIRE_TIMEOUT_SECS", self.database_acquire_timeout_secs)?,
        })
    }
}

/// Every setting's environment variable and meaning, for `server --help`
/// (../shared/PROTOCOL.md "Settings", and the limits above).
pub const SETTINGS: &[(&str, &str)] = &[
    ("LEPTOS_SITE_ADDR", "address and port to listen on"),
    ("DATABASE_URL", "sqlite://path or postgres://user:pass@host/db (default: <data dir>/tether.db)"),
    ("TETHER_JWT_SECRET", "signing secret, at least 32 bytes; generated and stored when unset"),
    ("TETHER_TOKEN_TTL_SECS", "session and JWT lifetime, seconds"),
    ("TETHER_PUBLIC_ORIGIN", "the site's origin as browsers see it"),
    ("TETHER_ALLOWED_ORIGINS", "comma-separated extra allowed origins"),
    ("TETHER_ADMIN_EMAILS", "comma-separated emails made admin at registration and every login"),
    ("TETHER_ALLOW_GUESTS", "true or false"),
    ("TETHER_COOKIE_SECURE", "force the cookie's Secure flag (default: https public origin)"),
    ("TETHER_DATA_DIR", "where the SQLite file and generated secret live"),
    ("TETHER_TRUSTED_PROXIES", "CIDRs whose X-Forwarded-For is believed"),
    ("TETHER_METRICS_ADDR", "separate listener for GET /metrics (empty: none)"),
    ("TETHER_LOG_FORMAT", "text or json"),
    ("TETHER_HEADER_READ_TIMEOUT_SECS", "seconds to send a request head"),
    ("TETHER_REQUEST_TIMEOUT_SECS", "seconds for an /api request, body included"),
    ("TETHER_MAX_CONNECTIONS", "open connections in total"),
    ("TETHER_MAX_CONNECTIONS_PER_ADDRESS", "open connections from one client address"),
    ("TETHER_PING_INTERVAL_SECS", "WebSocket heartbeat interval"),
    ("TETHER_PONG_TIMEOUT_SECS", "seconds a pong may take"),
    ("TETHER_WRITE_TIMEOUT_SECS", "seconds one socket write may block"),
    ("TETHER_CLOSE_TIMEOUT_SECS", "seconds the closing handshake may take"),
    ("TETHER_SOCKET_IDLE_TIMEOUT_SECS", "seconds a socket may send nothing"),
    ("TETHER_SOCKET_QUEUE_FRAMES", "frames queued for one socket before it is dropped (4002)"),
    ("TETHER_SOCKET_WRITE_BUFFER_BYTES", "bytes one socket's write buffer may hold"),
    ("TETHER_SESSION_RECHECK_SECS", "seconds a cached session is trusted"),
    ("TETHER_REGISTRATIONS_PER_MINUTE", "registrations per client address a minute"),
    ("TETHER_ROOMS_PER_MINUTE_PER_USER", "room creations per user a minute"),
    ("TETHER_ROOMS_PER_MINUTE_PER_ADDRESS", "room creations per client address a minute"),
    ("TETHER_DATABASE_CONNECT_TIMEOUT_SECS", "seconds start-up retries an unreachable Postgres"),
    ("TETHER_DATABASE_ACQUIRE_TIMEOUT_SECS", "seconds a request waits for a database connection (then 503)"),
    ("TETHER_CONFIG", "the settings file (default Leptos.toml)"),
    ("RUST_LOG", "log filter (default info,sqlx=warn)"),
];

#[derive(Debug, Deserialize)]
struct SettingsFile {
    tether: TetherTable,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub leptos: LeptosOptions,
    pub data_dir: PathBuf,
    pub database_url: String,
    /// `None`: generated once and kept in the data directory.
    pub jwt_secret: Option<String>,
    pub token_ttl: Duration,
    pub public_origin: String,
    /// Every allowed origin, normalized; matched exactly.
    pub allowed_origins: Vec<String>,
    /// Lower-cased.
    pub admin_emails: Vec<String>,
    pub allow_guests: bool,
    pub cookie_secure: bool,
    /// `TETHER_TRUSTED_PROXIES`: peers whose `X-Forwarded-For` is believed
    /// for the client address (default: none).
    pub trusted_proxies: Vec<IpNet>,
    /// `TETHER_METRICS_ADDR` (`metrics-addr`): where `GET /metrics` listens, apart
    /// from the public listener. `None` (empty, the default): no metrics listener.
    pub metrics_addr: Option<SocketAddr>,
    /// `TETHER_LOG_FORMAT` (`log-format`): `text` (default) or `json`, one object a line.
    pub log_format: LogFormat,
    pub limits: Limits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl Settings {
    /// Reads the settings file named by `TETHER_CONFIG` (default `Leptos.toml`)
    /// and applies the process environment over it.
    pub fn from_env() -> Result<Settings, ConfigError> {
        let path = std::env::var("TETHER_CONFIG").unwrap_or_else(|_| "Leptos.toml".into());
        let leptos = leptos::config::get_configuration(Some(&path))
            .map_err(|e| ConfigError::File { path: path.clone(), reason: e.to_string() })?
            .leptos_options;
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ConfigError::File { path: path.clone(), reason: e.to_string() })?;
        Settings::resolve(leptos, &text, |name| std::env::var(name).ok())
    }

    /// Combines site options, the settings file's text and a variable lookup.
    pub fn resolve(
        leptos: LeptosOptions,
        file_text: &str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let file: SettingsFile = toml::from_str(file_text)
            .map_err(|e| ConfigError::File { path: "[tether]".into(), reason: e.to_string() })?;
        let table = file.tether;
        let get = |name: &str, default: String| var(name).unwrap_or(default);

        let data_dir = PathBuf::from(get("TETHER_DATA_DIR", table.data_dir));
        let database_url = match get("DATABASE_URL", table.database_url) {
            url if url.trim().is_empty() => format!("sqlite://{}", data_dir.join("tether.db").display()),
            url => url,
        };
        let token_ttl_secs = match var("TETHER_TOKEN_TTL_SECS") {
            Some(v) => v.trim().parse::<u64>().map_err(|e| invalid("TETHER_TOKEN_TTL_SECS", e))?,
            None => table.token_ttl_secs,
        };
        if token_ttl_secs == 0 {
            return Err(invalid("TETHER_TOKEN_TTL_SECS", "must be at least 1"));
        }
        let token_ttl = duration("TETHER_TOKEN_TTL_SECS", token_ttl_secs)?;
        let jwt_secret = var("TETHER_JWT_SECRET").filter(|s| !s.is_empty());
        if let Some(secret) = &jwt_secret {
            if secret.len() < 32 {
                return Err(invalid("TETHER_JWT_SECRET", "must be at least 32 bytes"));
            }
        }

        let public_origin = match get("TETHER_PUBLIC_ORIGIN", table.public_origin) {
            o if o.trim().is_empty() => format!("http://{}", leptos.site_addr),
            o => normalize_origin(&o).ok_or_else(|| invalid("TETHER_PUBLIC_ORIGIN", "not an origin"))?,
        };
        let mut allowed_origins = vec![public_origin.clone()];
        if let Some(localhost) = localhost_twin(&public_origin, leptos.site_addr) {
            allowed_origins.push(localhost);
        }
        for entry in split_list(&get("TETHER_ALLOWED_ORIGINS", table.allowed_origins)) {
            let origin = normalize_origin(&entry)
                .ok_or_else(|| invalid("TETHER_ALLOWED_ORIGINS", format!("{entry:?} is not an origin")))?;
            allowed_origins.push(origin);
        }
        allowed_origins.dedup();

        let admin_emails = split_list(&get("TETHER_ADMIN_EMAILS", table.admin_emails))
            .into_iter()
            .map(|e| e.to_lowercase())
            .collect();
        let allow_guests = match var("TETHER_ALLOW_GUESTS") {
            Some(v) => parse_bool("TETHER_ALLOW_GUESTS", &v)?,
            None => table.allow_guests,
        };
        let cookie_secure = match get("TETHER_COOKIE_SECURE", table.cookie_secure) {
            v if v.trim().is_empty() => public_origin.starts_with("https://"),
            v => parse_bool("TETHER_COOKIE_SECURE", &v)?,
        };
        let trusted_proxies = split_list(&get("TETHER_TRUSTED_PROXIES", table.trusted_proxies))
            .into_iter()
            .map(|entry| parse_cidr(&entry).ok_or_else(|| invalid("TETHER_TRUSTED_PROXIES", format!("{entry:?} is not a CIDR"))))
            .collect::<Result<Vec<_>, _>>()?;
        let limits = table.limits.resolve(&var)?;
        let metrics_addr = match get("TETHER_METRICS_ADDR", table.metrics_addr) {
            a if a.trim().is_empty() => None,
            a => Some(a.trim().parse().map_err(|e| invalid("TETHER_METRICS_ADDR", e))?),
        };
        let log_format = match get("TETHER_LOG_FORMAT", table.log_format).trim() {
            "" | "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(invalid("TETHER_LOG_FORMAT", format!("{other:?} is not text or json"))),
        };

        Ok(Settings {
            leptos,
            data_dir,
            database_url,
            jwt_secret,
            token_ttl,
            public_origin,
            allowed_origins,
            admin_emails,
            allow_guests,
            cookie_secure,
            trusted_proxies,
            metrics_addr,
            log_format,
            limits,
        })
    }

    pub fn site_addr(&self) -> SocketAddr {
        self.leptos.site_addr
    }

    pub fn is_admin_email(&self, email: &str) -> bool {
        let email = email.to_lowercase();
        self.admin_emails.contains(&email)
    }

    pub fn is_allowed_origin(&self, origin: &str) -> bool {
        self.allowed_origins.iter().any(|allowed| allowed == origin)
    }

    /// Whether a peer at `ip` is a trusted proxy (its `X-Forwarded-For` counts).
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

/// Whole seconds as a duration, at most [`MAX_SECS`].
fn duration(name: &'static str, secs: u64) -> Result<Duration, ConfigError> {
    if secs > MAX_SECS {
        return Err(invalid(name, format!("must be at most {MAX_SECS} seconds")));
    }
    Ok(Duration::from_secs(secs))
}

fn invalid(name: &'static str, reason: impl ToString) -> ConfigError {
    ConfigError::Invalid { name, reason: reason.to_string() }
}

fn parse_bool(name: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(name, format!("{value:?} is not true or false"))),
    }
}

fn split_list(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// `scheme://host[:port]` in lower case without a trailing slash, or `None`
/// when the text is not an http(s) origin (a path, userinfo or wildcard).
pub fn normalize_origin(value: &str) -> Option<String> {
    let value = value.trim().trim_end_matches('/').to_ascii_lowercase();
    let (scheme, rest) = value.split_once("://")?;
    if !matches!(scheme, "http" | "https") || rest.is_empty() {
        return None;
    }
    if rest.contains(['/', '@', '*', '?', '#', ' ']) {
        return None;
    }
    Some(value)
}

/// `10.0.0.0/8`, `::1/128`, or a bare address (a one-address block).
fn parse_cidr(entry: &str) -> Option<IpNet> {
    entry.parse::<IpNet>().ok().or_else(|| entry.parse::<IpAddr>().ok().map(IpNet::from)).map(|net| net.trunc())
}

/// For a loopback site address, browsers may also use `localhost`.
fn localhost_twin(public_origin: &str, site_addr: SocketAddr) -> Option<String> {
    let default_origin = format!("http://{site_addr}");
    (public_origin == default_origin && site_addr.ip().is_loopback())
        .then(|| format!("http://localhost:{}", site_addr.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = include_str!("../../Leptos.toml");

    fn site(addr: &str) -> LeptosOptions {
        LeptosOptions::builder().output_name("tether").site_addr(addr.parse::<SocketAddr>().unwrap()).build()
    }

    fn resolve(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::resolve(site("127.0.0.1:3000"), FILE, |name| {
            vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn defaults_from_the_settings_file() {
        let s = resolve(&[]).unwrap();
        assert_eq!(s.data_dir, PathBuf::from("data"));
        assert_eq!(s.database_url, "sqlite://data/tether.db");
        assert_eq!(s.token_ttl, Duration::from_secs(604800));
        assert_eq!(s.allowed_origins, ["http://127.0.0.1:3000", "http://localhost:3000"]);
        assert!(s.allow_guests);
        assert!(!s.cookie_secure);
        assert!(s.jwt_secret.is_none());
        assert!(s.trusted_proxies.is_empty());
        let l = &s.limits;
        assert_eq!(l.header_read_timeout, Duration::from_secs(10));
        assert_eq!(l.request_timeout, Duration::from_secs(30));
        assert_eq!((l.max_connections, l.max_connections_per_address), (10_000, 2048));
        assert_eq!((l.ping_interval, l.pong_timeout), (Duration::from_secs(20), Duration::from_secs(20)));
        assert_eq!((l.write_timeout, l.close_timeout), (Duration::from_secs(10), Duration::from_secs(5)));
        assert_eq!(l.socket_idle_timeout, Duration::from_secs(60));
        assert_eq!((l.socket_queue_frames, l.socket_write_buffer_bytes), (256, 8 * 1024 * 1024));
        assert_eq!(l.session_recheck, Duration::from_secs(5));
        assert_eq!(l.registrations_per_minute.get(), 30);
        assert_eq!((l.rooms_per_minute_per_user.get(), l.rooms_per_minute_per_address.get()), (10, 30));
    }

    #[test]
    fn limits_and_proxies_from_variables() {
        let s = resolve(&[
            ("TETHER_HEADER_READ_TIMEOUT_SECS", "2"),
            ("TETHER_MAX_CONNECTIONS_PER_ADDRESS", "7"),
            ("TETHER_SESSION_RECHECK_SECS", "0"),
            ("TETHER_ROOMS_PER_MINUTE_PER_USER", "3"),
            ("TETHER_TRUSTED_PROXIES", "10.1.2.3/8, ::1, 192.168.0.7"),
        ])
        .unwrap();
        assert_eq!(s.limits.header_read_timeout, Duration::from_secs(2));
        assert_eq!(s.limits.max_connections_per_address, 7);
        assert_eq!(s.limits.session_recheck, Duration::ZERO);
        assert_eq!(s.limits.rooms_per_minute_per_user.get(), 3);
        assert!(s.is_trusted_proxy("10.200.0.1".parse().unwrap()));
        assert!(s.is_trusted_proxy("::ffff:10.0.0.9".parse().unwrap()), "IPv4-mapped counts as IPv4");
        assert!(s.is_trusted_proxy("::1".parse().unwrap()));
        assert!(s.is_trusted_proxy("192.168.0.7".parse().unwrap()));
        assert!(!s.is_trusted_proxy("192.168.0.8".parse().unwrap()));
        assert!(!s.is_trusted_proxy("11.0.0.1".parse().unwrap()));
    }

    #[test]
    fn durations_in_the_file_are_bounded_too() {
        let file = FILE.replace("ping-interval-secs = 20", "ping-interval-secs = 9223372036854775807");
        let err = Settings::resolve(site("127.0.0.1:3000"), &file, |_| None).unwrap_err().to_string();
        assert!(err.contains("TETHER_PING_INTERVAL_SECS") && err.contains("at most"), "{err}");
        let max = MAX_SECS.to_string();
        let longest = resolve(&[("TETHER_TOKEN_TTL_SECS", max.as_str())]).unwrap();
        assert_eq!(longest.token_ttl, Duration::from_secs(MAX_SECS));
    }

    #[test]
    fn variables_override_the_file() {
        let s = resolve(&[
            ("TETHER_DATA_DIR", "/tmp/x"),
            ("TETHER_TOKEN_TTL_SECS", "60"),
            ("TETHER_PUBLIC_ORIGIN", "https://Chat.Example.com/"),
            ("TETHER_ALLOWED_ORIGINS", "http://a.test:8080, https://b.test"),
            ("TETHER_ADMIN_EMAILS", "Root@X.io"),
            ("TETHER_ALLOW_GUESTS", "false"),
        ])
        .unwrap();
        assert_eq!(s.database_url, "sqlite:///tmp/x/tether.db");
        assert_eq!(s.token_ttl, Duration::from_secs(60));
        assert_eq!(s.allowed_origins, ["https://chat.example.com", "http://a.test:8080", "https://b.test"]);
        assert!(s.is_admin_email("root@x.IO"));
        assert!(!s.allow_guests);
        assert!(s.cookie_secure, "an https public origin makes the cookie Secure");
        assert!(!resolve(&[("TETHER_COOKIE_SECURE", "false"), ("TETHER_PUBLIC_ORIGIN", "https://a.b")]).unwrap().cookie_secure);
    }

    #[test]
    fn bad_values_are_refused_with_their_name() {
        for (name, value) in [
            ("TETHER_JWT_SECRET", "short"),
            ("TETHER_TOKEN_TTL_SECS", "soon"),
            ("TETHER_ALLOW_GUESTS", "maybe"),
            ("TETHER_ALLOWED_ORIGINS", "*.evil.test"),
            ("TETHER_PUBLIC_ORIGIN", "ftp://x"),
            ("TETHER_TRUSTED_PROXIES", "10.0.0.0/33"),
            ("TETHER_TRUSTED_PROXIES", "everyone"),
            ("TETHER_HEADER_READ_TIMEOUT_SECS", "0"),
            ("TETHER_MAX_CONNECTIONS", "-1"),
            ("TETHER_REGISTRATIONS_PER_MINUTE", "0"),
            ("TETHER_REGISTRATIONS_PER_MINUTE", "99999999999"),
            // Durations the server's clock arithmetic would overflow (the
            // config fuzz target's deadline check): a socket's first ping
            // deadline panicked, a token TTL wrapped to a negative i64.
            ("TETHER_PING_INTERVAL_SECS", "18446744073709551615"),
            ("TETHER_TOKEN_TTL_SECS", "9223372036854775808"),
            ("TETHER_SESSION_RECHECK_SECS", "315360001"),
        ] {
            let err = resolve(&[(name, value)]).unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
        }
    }
}
