//! Hostile clients of the account and room endpoints (issue 10 items 4, 5
//! and 8): the login throttle's memory stays bounded under floods of failed
//! logins, registration and room creation are rate limited (429
//! `rate_limited` with `Retry-After`), registrations cannot starve logins of
//! argon2 time, and a cached session follows changes made in the database.
//!
//! Requests go through the router directly (as in the other suites), so their
//! peer is 0.0.0.0; with that address trusted as a proxy, `X-Forwarded-For`
//! gives each request the client address the test wants.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, Method, StatusCode};
use common::{start_with, Reply, TestServer, PASSWORD};
use serde_json::json;
use server::auth::throttle::{Throttle, MAX_EMAIL_BYTES};

const DEADLINE: Duration = Duration::from_secs(60);
const BEHIND_PROXY: (&str, &str) = ("TETHER_TRUSTED_PROXIES", "0.0.0.0/32");

async fn login_from(server: &TestServer, address: &str, email: &str, password: &str) -> Reply {
    server
        .call(Method::POST, "/api/auth/login")
        .header("x-forwarded-for", address)
        .json(json!({"email": email, "password": password}))
        .send()
        .await
}

async fn register_from(server: &TestServer, address: &str, email: &str) -> Reply {
    server
        .call(Method::POST, "/api/auth/register")
        .header("x-forwarded-for", address)
        .json(json!({"email": email, "name": "N", "password": PASSWORD}))
        .send()
        .await
}

fn assert_rate_limited(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{}", reply.body);
    assert_eq!(reply.code(), "rate_limited");
    assert!(reply.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    let retry_after: u64 = reply.headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1, "{retry_after}");
}

/// A different client address for each `i`.
fn address(i: usize) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_with_long_or_random_emails_keep_the_throttle_bounded() {
    let server = start_with(&[BEHIND_PROXY]).await;
    // What the throttle holds: in memory on SQLite, in the database on Postgres.
    let recorded = || async {
        match &*server.state.throttle {
            Throttle::Local(memory) => (memory.len(), Some(memory.bytes())),
            Throttle::Shared(shared) => (shared.recorded_emails().await.unwrap() as usize, None),
        }
    };

    // Thousands of failures with emails no account can have, up to 16 KiB long: none is kept.
    for i in 0..3000 {
        let email = match i % 3 {
            0 => format!("{}@x.io", "a".repeat(MAX_EMAIL_BYTES + i % 1000)),
            1 => format!("no-at-sign-{}", "z".repeat(i * 5)),
            _ => format!("{i} with spaces@x.io"),
        };
        let reply = login_from(&server, &address(i), &email, "wrong password").await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);
        assert_eq!(reply.code(), "bad_credentials");
    }
    assert_eq!(recorded().await.0, 0, "implausible emails are never recorded");

    // Random plausible emails of the longest recordable size: each kept once, small.
    let plausible = 120;
    for i in 0..plausible {
        let local = format!("{i}-{}", uuid_like(i));
        let email = format!("{local}{}@X.io", "q".repeat(MAX_EMAIL_BYTES - local.len() - 5));
        assert_eq!(email.len(), MAX_EMAIL_BYTES);
        let reply = login_from(&server, &address(10_000 + i), &email, "wrong password").await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    let (emails, bytes) = recorded().await;
    assert_eq!(emails, plausible);
    if let Some(bytes) = bytes {
        assert!(bytes <= plausible * (MAX_EMAIL_BYTES + 10 * 16), "{bytes} bytes in memory");
    }

    // The per-email rule still holds: 10 failures, from 10 addresses, lock the email.
    server.register("victim@x.io", "Victim").await;
    for i in 0..10 {
        let reply = login_from(&server, &address(20_000 + i), "Victim@X.io", "wrong password").await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    let locked = login_from(&server, &address(30_000), "victim@x.io", PASSWORD).await;
    assert_rate_limited(&locked);
}

/// Some hex digits that differ for every `i`.
fn uuid_like(i: usize) -> String {
    format!("{:016x}", (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

#[tokio::test]
async fn registration_is_rate_limited_per_address() {
    let server = start_with(&[BEHIND_PROXY, ("TETHER_REGISTRATIONS_PER_MINUTE", "3")]).await;
    assert_eq!(register_from(&server, "10.0.0.1", "a@x.io").await.status, StatusCode::CREATED);
    // A refused registration counts as well.
    assert_eq!(register_from(&server, "10.0.0.1", "not an email").await.code(), "invalid_email");
    assert_eq!(register_from(&server, "10.0.0.1", "b@x.io").await.status, StatusCode::CREATED);
    assert_rate_limited(&register_from(&server, "10.0.0.1", "c@x.io").await);
    assert_eq!(register_from(&server, "10.0.0.2", "c@x.io").await.status, StatusCode::CREATED, "other addresses are not affected");
}

#[tokio::test]
async fn room_creation_is_rate_limited_per_user_and_per_address() {
    let server = start_with(&[
        BEHIND_PROXY,
        ("TETHER_ROOMS_PER_MINUTE_PER_USER", "2"),
        ("TETHER_ROOMS_PER_MINUTE_PER_ADDRESS", "3"),
    ])
    .await;
    let ann = server.register("ann@x.io", "Ann").await;
    let bob = server.register("bob@x.io", "Bob").await;
    let create = |cookie: String, address: &'static str, name: &'static str| {
        let server = &server;
        async move {
            server
                .call(Method::POST, "/api/rooms")
                .cookie(&cookie)
                .header("x-forwarded-for", address)
                .json(json!({ "name": name }))
                .send()
                .await
        }
    };
    assert_eq!(create(ann.cookie.clone(), "10.0.0.1", "one").await.status, StatusCode::CREATED);
    assert_eq!(create(ann.cookie.clone(), "10.0.0.1", "two").await.status, StatusCode::CREATED);
    assert_rate_limited(&create(ann.cookie.clone(), "10.0.0.9", "three").await);
    // Bob has his own budget, but the address has one creation left.
    assert_eq!(create(bob.cookie.clone(), "10.0.0.1", "bob's").await.status, StatusCode::CREATED);
    assert_rate_limited(&create(bob.cookie.clone(), "10.0.0.1", "bob's 2").await);
    // That refused request counted against Bob too: every request counts against both.
    assert_rate_limited(&create(bob.cookie.clone(), "10.0.0.2", "bob's 3").await);
    let cy = server.register("cy@x.io", "Cy").await;
    assert_eq!(create(cy.cookie.clone(), "10.0.0.2", "cy's").await.status, StatusCode::CREATED);
    let rooms = server.call(Method::GET, "/api/rooms").send().await;
    assert_eq!(rooms.body["rooms"].as_array().unwrap().len(), 4, "refused creations made no room");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_is_answered_while_registrations_flood() {
    const FLOOD: usize = 40;
    let server = Arc::new(start_with(&[("TETHER_REGISTRATIONS_PER_MINUTE", "1000")]).await);
    server.register("known@x.io", "Known").await;

    let registered = Arc::new(AtomicUsize::new(0));
    let (first_done, first_done_rx) = tokio::sync::oneshot::channel::<()>();
    let first_done = Arc::new(std::sync::Mutex::new(Some(first_done)));
    let mut flood = Vec::new();
    for i in 0..FLOOD {
        let (server, registered, first_done) = (server.clone(), registered.clone(), first_done.clone());
        flood.push(tokio::spawn(async move {
            let reply = server
                .call(Method::POST, "/api/auth/register")
                .json(json!({"email": format!("flood{i}@x.io"), "name": "F", "password": PASSWORD}))
                .send()
                .await;
            assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
            registered.fetch_add(1, Ordering::SeqCst);
            if let Some(tx) = first_done.lock().unwrap().take() {
                let _ = tx.send(());
            }
        }));
    }
    // Once one registration is through, the rest are queued for hashing.
    tokio::time::timeout(DEADLINE, first_done_rx).await.expect("a registration completes").unwrap();
    let login = tokio::time::timeout(DEADLINE, server.login("known@x.io")).await.expect("the login is answered");
    let registered_by_then = registered.load(Ordering::SeqCst);
    assert!(!login.cookie.is_empty());
    assert!(
        registered_by_then < FLOOD / 2,
        "the login waited for {registered_by_then} of {FLOOD} registrations: registrations must leave it a hashing slot"
    );
    for task in flood {
        tokio::time::timeout(DEADLINE, task).await.expect("the flood completes").unwrap();
    }
}

#[tokio::test]
async fn a_cached_session_follows_the_database_within_the_recheck_interval() {
    let server = start_with(&[("TETHER_SESSION_RECHECK_SECS", "1")]).await;
    let ann = server.register("ann@x.io", "Ann").await;
    let me = || async { server.call(Method::GET, "/api/auth/me").cookie(&ann.cookie).send().await };
    assert_eq!(me().await.body["user"]["name"], "Ann", "the session is cached now");

    // Changed behind the server's back (another node, an operator's SQL).
    server::with_pool!(&server.state.db, |pool| {
        sqlx::query("UPDATE users SET name = 'Ann Changed' WHERE id = $1").bind(ann.id()).execute(pool).await.unwrap();
    });
    let started = Instant::now();
    while me().await.body["user"]["name"] != "Ann Changed" {
        assert!(started.elapsed() < DEADLINE, "the change never showed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    server::with_pool!(&server.state.db, |pool| {
        sqlx::query("DELETE FROM users WHERE id = $1").bind(ann.id()).execute(pool).await.unwrap();
    });
    let started = Instant::now();
    loop {
        let reply = me().await;
        if reply.status == StatusCode::UNAUTHORIZED {
            assert_eq!(reply.code(), "not_authenticated");
            break;
        }
        assert!(started.elapsed() < DEADLINE, "a deleted user kept authenticating");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
