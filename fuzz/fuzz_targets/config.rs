//! The settings parser: `Settings::resolve` on any settings file text and any
//! variable values. It returns settings or a `ConfigError`, never panics, and
//! the settings it returns are usable.
//!
//! Input: the file text, then optionally a NUL byte and `NAME=value` lines for
//! the variable lookup (the first line naming a variable counts). A line
//! `LEPTOS_SITE_ADDR=<socket address>` sets the site address.
#![no_main]

use std::net::SocketAddr;
use std::time::Duration;

use leptos::config::LeptosOptions;
use libfuzzer_sys::fuzz_target;
use server::config::{normalize_origin, Settings};

fuzz_target!(|data: &[u8]| {
    let (file, vars) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(file) = std::str::from_utf8(file) else { return };
    let vars = String::from_utf8_lossy(vars);
    let vars: Vec<(&str, &str)> = vars.lines().filter_map(|line| line.split_once('=')).collect();
    let lookup = |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string());

    let site_addr = lookup("LEPTOS_SITE_ADDR")
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 3000)));
    let leptos = LeptosOptions::builder().output_name("tether").site_addr(site_addr).build();

    let Ok(settings) = Settings::resolve(leptos, file, lookup) else { return };

    assert_eq!(settings.allowed_origins.first(), Some(&settings.public_origin));
    for origin in &settings.allowed_origins {
        assert_eq!(normalize_origin(origin).as_ref(), Some(origin), "an allowed origin is normalized");
        assert!(settings.is_allowed_origin(origin));
    }
    if let Some(secret) = &settings.jwt_secret {
        assert!(secret.len() >= 32);
    }
    let limits = &settings.limits;
    let now = tokio::time::Instant::now();
    for (name, duration) in [
        ("token ttl", settings.token_ttl),
        ("header read timeout", limits.header_read_timeout),
        ("request timeout", limits.request_timeout),
        ("ping interval", limits.ping_interval),
        ("pong timeout", limits.pong_timeout),
        ("write timeout", limits.write_timeout),
        ("close timeout", limits.close_timeout),
        ("socket idle timeout", limits.socket_idle_timeout),
        ("session recheck", limits.session_recheck),
    ] {
        if name != "session recheck" {
            assert!(duration >= Duration::from_secs(1), "{name} is at least a second");
        }
        // The server adds these to the clock (socket deadlines, token expiry).
        assert!(now.checked_add(duration).is_some(), "{name} {duration:?} overflows a deadline");
    }
    // Token expiry is `iat + ttl` in i64 unix seconds.
    assert!(i64::try_from(settings.token_ttl.as_secs()).is_ok_and(|ttl| ttl.checked_add(i64::from(u32::MAX)).is_some()));
    assert!(limits.max_connections >= 1 && limits.max_connections_per_address >= 1);
});
