//! `GET /ws`: the authenticated upgrade, in-place rebinding, limits, and the
//! registry's guarantee that an acked rebind cuts off the old user's frames.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::{start, start_with, TestServer};
use serde_json::{json, Value};
use server::registry::Audience;
use tether_protocol::ServerFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

async fn refused_status(server: &TestServer, origin: Option<&str>) -> StatusCode {
    match server.connect(origin, None).await {
        Err(WsError::Http(response)) => response.status(),
        Err(other) => panic!("expected an HTTP refusal for {origin:?}, got {other}"),
        Ok(_) => panic!("the upgrade from {origin:?} was accepted"),
    }
}

#[tokio::test]
async fn only_exactly_allowed_origins_may_upgrade() {
    let server = start_with(&[("TETHER_ALLOWED_ORIGINS", "https://app.example.com")]).await;
    let own = server.origin();
    let cases = [
        None,
        Some("null".to_string()),
        Some("http://evil.test".to_string()),
        Some(format!("{own}.evil.test")),
        Some(own.replace("http://", "https://")),
        Some(own.replace("127.0.0.1", "127.0.0.2")),
        Some(format!("{own}0")),
        Some("https://app.example.com.evil.test".to_string()),
        Some("http://app.example.com".to_string()),
    ];
    for origin in &cases {
        assert_eq!(refused_status(&server, origin.as_deref()).await, StatusCode::FORBIDDEN, "{origin:?}");
    }
    for origin in [own.clone(), format!("http://localhost:{}", server.addr.port()), "https://app.example.com".into()] {
        assert!(server.connect(Some(&origin), None).await.is_ok(), "{origin}");
    }
}

#[tokio::test]
async fn a_cookie_binds_the_socket_and_no_cookie_makes_a_guest() {
    let server = start().await;
    let ann = server.register("ann@x.io", "Ann").await;
    let (_bound, welcome) = server.socket(Some(&ann.cookie)).await;
    assert_eq!(welcome["user"], ann.user);
    assert!(welcome["guest_name"].is_null());
    assert!(welcome["expires_at"].as_i64().unwrap() > 1_700_000_000);
    assert!(welcome["socket_id"].as_str().is_some_and(|id| !id.is_empty()));

    for cookie in [None, Some("tether_session=not-a-jwt")] {
        let (_guest, welcome) = server.socket(cookie).await;
        assert!(welcome["user"].is_null());
        assert!(welcome["expires_at"].is_null());
        let name = welcome["guest_name"].as_str().unwrap();
        assert!(name.starts_with("guest-") && name[6..].parse::<u32>().is_ok(), "{name}");
    }
}

#[tokio::test]
async fn login_logout_and_whoami_rebind_the_same_socket() {
    let server = start().await;
    let ann = server.register("ann@x.io", "Ann").await;
    let (mut socket, welcome) = server.socket(None).await;
    let guest_name = welcome["guest_name"].clone();

    let who = socket.request(json!({"type": "whoami"})).await;
    assert_eq!((who["ok"].clone(), who["user"].clone(), who["guest_name"].clone()), (json!(true), Value::Null, guest_name));

    let ack = socket.request(json!({"type": "login", "ticket": ann.ticket})).await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(ack["user"], ann.user);
    let who = socket.request(json!({"type": "whoami"})).await;
    assert_eq!(who["user"], ann.user);
    assert!(who["guest_name"].is_null());
    let admin = &server.state.registry.snapshot()[0];
    assert_eq!(admin.socket_id, welcome["socket_id"].as_str().unwrap(), "the same socket, never reconnected");

    let ack = socket.request(json!({"type": "logout"})).await;
    assert_eq!(ack, json!({"type": "ack", "ref": ack["ref"], "ok": true}));
    let who = socket.request(json!({"type": "whoami"})).await;
    assert!(who["user"].is_null());
    assert!(who["guest_name"].as_str().unwrap().starts_with("guest-"));
    // Only the socket was unbound: the HTTP session lives on.
    assert_eq!(server.call(Method::GET, "/api/auth/me").cookie(&ann.cookie).send().await.status, StatusCode::OK);

    let pong = socket.request(json!({"type": "ping"})).await;
    assert_eq!(pong["ok"], true);
}

#[tokio::test]
async fn bad_reused_and_expired_tickets_leave_the_binding_as_it_was() {
    let server = start().await;
    let ann = server.register("ann@x.io", "Ann").await;
    let bob = server.register("bob@x.io", "Bob").await;
    let (mut socket, _) = server.socket(Some(&bob.cookie)).await;

    let bad = socket.request(json!({"type": "login", "ticket": "nonsense"})).await;
    assert_eq!((bad["ok"].clone(), bad["error"]["code"].clone()), (json!(false), json!("invalid_ticket")));

    let first = socket.request(json!({"type": "login", "ticket": ann.ticket})).await;
    assert_eq!(first["ok"], true);
    let (mut other, _) = server.socket(None).await;
    let reused = other.request(json!({"type": "login", "ticket": ann.ticket})).await;
    assert_eq!(reused["error"]["code"], "invalid_ticket", "a ticket is single-use");
    assert!(other.request(json!({"type": "whoami"})).await["user"].is_null());

    let stale = server.ticket(&bob.cookie).await;
    server::with_pool!(&server.state.db, |pool| {
        sqlx::query("UPDATE socket_tickets SET expires_at = 0").execute(pool).await.unwrap();
    });
    let expired = socket.request(json!({"type": "login", "ticket": stale})).await;
    assert_eq!(expired["error"]["code"], "invalid_ticket");
    assert_eq!(socket.request(json!({"type": "whoami"})).await["user"], ann.user, "binding unchanged");

    // A ticket of a logged-out session binds nothing.
    let orphan = server.ticket(&bob.cookie).await;
    server.call(Method::POST, "/api/auth/logout").cookie(&bob.cookie).send().await;
    let revoked = other.request(json!({"type": "login", "ticket": orphan})).await;
    assert_eq!(revoked["error"]["code"], "invalid_ticket");

    // Without a ref, a failure is an error frame.
    socket.send_json(json!({"type": "login", "ticket": "nonsense"})).await;
    let error = socket.next_of("error").await;
    assert_eq!(error["code"], "invalid_ticket");
}

#[tokio::test]
async fn two_sockets_racing_for_one_ticket_bind_exactly_once() {
    let server = start().await;
    let ann = server.register("ann@x.io", "Ann").await;
    for _ in 0..10 {
        let ticket = server.ticket(&ann.cookie).await;
        let (mut a, _) = server.socket(None).await;
        let (mut b, _) = server.socket(None).await;
        let frame = json!({"type": "login", "ticket": ticket});
        let (ra, rb) = tokio::join!(a.request(frame.clone()), b.request(frame));
        assert_eq!([ra["ok"].as_bool().unwrap(), rb["ok"].as_bool().unwrap()].iter().filter(|ok| **ok).count(), 1);
    }
}

#[tokio::test]
async fn http_logout_unbinds_every_socket_of_that_session_only() {
    let server = start().await;
    let ann = server.register("ann@x.io", "Ann").await;
    let elsewhere = server.login("ann@x.io").await;
    let (mut tab1, _) = server.socket(Some(&ann.cookie)).await;
    let (mut tab2, _) = server.socket(Some(&ann.cookie)).await;
    let (mut phone, _) = server.socket(Some(&elsewhere.cookie)).await;
    // A socket bound by a login frame belongs to the ticket's session as well.
    let (mut tab3, _) = server.socket(None).await;
    let ticket = server.ticket(&ann.cookie).await;
    assert_eq!(tab3.request(json!({"type": "login", "ticket": ticket})).await["ok"], true);

    let reply = server.call(Method::POST, "/api/auth/logout").cookie(&ann.cookie).send().await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    for tab in [&mut tab1, &mut tab2, &mut tab3] {
        assert_eq!(tab.next_of("unbound").await, json!({"type": "unbound", "reason": "logout"}));
        let who = tab.request(json!({"type": "whoami"})).await;
        assert!(who["user"].is_null() && who["guest_name"].is_string(), "a guest now, socket open: {who}");
    }
    phone.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(phone.request(json!({"type": "whoami"})).await["user"], ann.user);
}

#[tokio::test]
async fn a_binding_that_reaches_exp_is_unbound_as_expired() {
    let server = start_with(&[("TETHER_TOKEN_TTL_SECS", "2")]).await;
    let ann = server.register("ann@x.io", "Ann").await;
    let (mut by_cookie, welcome) = server.socket(Some(&ann.cookie)).await;
    let expires_at = welcome["expires_at"].as_i64().unwrap();
    let (mut by_frame, _) = server.socket(None).await;
    let ticket = server.ticket(&ann.cookie).await;
    assert_eq!(by_frame.request(json!({"type": "login", "ticket": ticket})).await["ok"], true);

    for socket in [&mut by_cookie, &mut by_frame] {
        let unbound = socket.next_of("unbound").await;
        assert_eq!(unbound["reason"], "expired");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!(now >= expires_at && now <= expires_at + 3, "unbound within a few seconds of exp");
        assert!(socket.request(json!({"type": "whoami"})).await["user"].is_null());
    }
}

#[tokio::test]
async fn malformed_frames_get_bad_frame_and_the_socket_stays_open() {
    let server = start().await;
    let (mut socket, _) = server.socket(None).await;
    for text in ["not json", "[1,2,3]", "42", r#"{"no":"type"}"#, r#"{"type":"fly"}"#, r#"{"type":"join"}"#, r#"{"type":"send","room":5}"#] {
        socket.send_text(text).await;
        let error = socket.next_frame().await;
        assert_eq!((error["type"].clone(), error["code"].clone()), (json!("error"), json!("bad_frame")), "{text}: {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    socket.stream.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(socket.next_frame().await["code"], "bad_frame");
    // With a usable ref, the answer is an ack.
    let ack = socket.request(json!({"type": "teleport"})).await;
    assert_eq!((ack["ok"].clone(), ack["error"]["code"].clone()), (json!(false), json!("bad_frame")));
    assert_eq!(socket.request(json!({"type": "ping"})).await["ok"], true);
}

use futures_util::SinkExt;

#[tokio::test]
async fn a_message_over_64_kib_closes_with_1009() {
    let server = start().await;
    let (mut socket, _) = server.socket(None).await;
    // Exactly at the limit is still fine.
    let padding = "x".repeat(64 * 1024 - r#"{"type":"ping","ref":1,"p":""}"#.len());
    socket.send_text(&format!(r#"{{"type":"ping","ref":1,"p":"{padding}"}}"#)).await;
    assert_eq!(socket.next_frame().await["ok"], true);
    socket.send_text(&format!(r#"{{"type":"ping","p":"{}"}}"#, "x".repeat(64 * 1024))).await;
    assert_eq!(socket.closed().await, Some(1009));
}

#[tokio::test]
async fn a_flood_is_refused_then_closed_with_1008() {
    let server = start().await;
    let (mut socket, _) = server.socket(None).await;
    for i in 0..100 {
        socket.send_text(&format!(r#"{{"type":"ping","ref":{i}}}"#)).await;
    }
    let (mut acked, mut refused) = (0, 0);
    let close = loop {
        let message = tokio::time::timeout(common::PATIENCE, futures_util::StreamExt::next(&mut socket.stream))
            .await
            .expect("frames or a close")
            .expect("the stream ends with a close")
            .unwrap();
        match message {
            Message::Text(text) => {
                let ack: Value = serde_json::from_str(text.as_str()).unwrap();
                if ack["ok"] == true {
                    acked += 1;
                } else {
                    assert_eq!(ack["error"]["code"], "rate_limited", "{ack}");
                    refused += 1;
                }
            }
            Message::Close(frame) => break frame.map(|f| u16::from(f.code)),
            _ => {}
        }
    };
    assert!((40..=45).contains(&acked), "a burst of 40 passes: {acked}");
    // Each admitted frame pays back one refusal; the 50th unpaid one closes.
    let admitted_between = acked - 40;
    assert!((49..=49 + admitted_between).contains(&refused), "answered rate_limited until the 50th refusal: {refused}");
    assert_eq!(close, Some(1008));

    // Frames at the sustained rate are all served.
    let (mut steady, _) = server.socket(None).await;
    for _ in 0..60 {
        assert_eq!(steady.request(json!({"type": "ping"})).await["ok"], true);
        tokio::time::sleep(Duration::from_millis(55)).await;
    }
}

#[tokio::test]
async fn with_guests_off_only_bound_sockets_stay() {
    let server = start_with(&[("TETHER_ALLOW_GUESTS", "false")]).await;
    let ann = server.register("ann@x.io", "Ann").await;
    let mut guest = server.connect(Some(&server.origin()), None).await.unwrap();
    assert_eq!(guest.closed().await, Some(4401));

    let (mut bound, _) = server.socket(Some(&ann.cookie)).await;
    let ack = bound.request(json!({"type": "logout"})).await;
    assert_eq!(ack["ok"], true);
    assert_eq!(bound.closed().await, Some(4401));

    let (mut revoked, _) = server.socket(Some(&ann.cookie)).await;
    server.call(Method::POST, "/api/auth/logout").cookie(&ann.cookie).send().await;
    assert_eq!(revoked.next_of("unbound").await["reason"], "logout");
    assert_eq!(revoked.closed().await, Some(4401));
}

/// Ann's socket (to be stalled) and Bob's (watching) in one room.
struct StalledRoom {
    ann: common::Account,
    stalled: common::Socket,
    stalled_welcome: Value,
    watcher: common::Socket,
}

async fn stalled_room(server: &TestServer) -> StalledRoom {
    let ann = server.register("ann@x.io", "Ann").await;
    let bob = server.register("bob@x.io", "Bob").await;
    let room = server.call(Method::POST, "/api/rooms").cookie(&bob.cookie).json(json!({"name": "Lobby"})).send().await;
    let code = room.body["room"]["code"].as_str().unwrap().to_string();
    let (mut stalled, stalled_welcome) = server.socket(Some(&ann.cookie)).await;
    let (mut watcher, _) = server.socket(Some(&bob.cookie)).await;
    assert_eq!(stalled.request(json!({"type": "join", "room": code})).await["ok"], true);
    assert_eq!(watcher.request(json!({"type": "join", "room": code})).await["ok"], true);
    StalledRoom { ann, stalled, stalled_welcome, watcher }
}

/// A socket that stops reading is evicted the moment its queue overflows: out
/// of the registry and its room's presence at once, and closed with 4002
/// `too_slow`, which the client finds once it reads again.
#[tokio::test]
async fn a_slow_consumer_is_evicted_at_once_and_closed_with_4002() {
    let server = start().await;
    let StalledRoom { ann, mut stalled, stalled_welcome, watcher: mut healthy } = stalled_room(&server).await;
    let stalled_id = stalled_welcome["socket_id"].as_str().unwrap().to_string();
    let listed = |registry: &server::registry::Registry| registry.snapshot().iter().any(|s| s.socket_id == stalled_id);

    // Frames for Ann only, while her socket reads nothing: first the kernel's
    // buffers fill, then the 256-frame queue, and the push that overflows it evicts.
    let pad = "y".repeat(8 * 1024);
    let mut sent = 0;
    while listed(&server.state.registry) {
        assert!(sent < 100_000, "still registered after {sent} frames");
        let frame = ServerFrame::Event { topic: "load".into(), data: json!({"n": sent, "pad": pad}) };
        server.state.registry.emit(Audience::User(ann.id().as_str()), &frame);
        sent += 1;
        if sent % 256 == 0 {
            // Let the socket task write what the kernel takes.
            tokio::task::yield_now().await;
        }
    }
    // Gone from presence at once: Bob's socket hears Ann leave.
    let left = healthy.next_of("presence_diff").await;
    assert_eq!(left["leaves"], json!([{"key": format!("u:{}", ann.id()), "id": ann.id(), "name": "Ann"}]), "{left}");
    assert_eq!(server.state.registry.len(), 1);
    assert_eq!(healthy.request(json!({"type": "ping"})).await["ok"], true);
    // The stalled client reads again: what the kernel held, then the Close with 4002.
    assert_eq!(stalled.closed().await, Some(4002));
}

/// A client that stops reading with only a few (large) frames queued is not
/// caught by the queue limit; the write timeout catches it: evicted, its room
/// told, closed with 4002.
#[tokio::test]
async fn a_write_blocked_past_the_write_timeout_evicts_the_socket() {
    let server = common::start_with(&[("TETHER_WRITE_TIMEOUT_SECS", "1")]).await;
    let StalledRoom { ann, mut stalled, mut watcher, .. } = stalled_room(&server).await;
    // 32 MiB in 32 frames: more than the kernel's buffers, far fewer frames than the queue holds.
    let pad = "z".repeat(1024 * 1024);
    for n in 0..32 {
        let frame = ServerFrame::Event { topic: "load".into(), data: json!({"n": n, "pad": pad}) };
        server.state.registry.emit(Audience::User(ann.id().as_str()), &frame);
    }
    let left = watcher.next_of("presence_diff").await;
    assert_eq!(left["leaves"][0]["name"], "Ann", "{left}");
    assert_eq!(stalled.closed().await, Some(4002));
}

/// Emits to user A and user B without pause while one socket is rebound
/// between them: after each ack, no frame addressed to the previous binding
/// may arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_acked_rebind_is_never_followed_by_frames_for_the_old_user() {
    let server = start().await;
    let ann = server.register("ann@x.io", "Ann").await;
    let bob = server.register("bob@x.io", "Bob").await;
    let (mut socket, _) = server.socket(Some(&ann.cookie)).await;
    let running = Arc::new(AtomicBool::new(true));

    let emitters: Vec<_> = [ann.id(), bob.id()]
        .into_iter()
        .map(|user_id| {
            let registry = server.state.registry.clone();
            let running = running.clone();
            tokio::spawn(async move {
                let frame = ServerFrame::Event { topic: "race".into(), data: json!({"to": user_id}) };
                let mut sent = 0u64;
                // Bursts with short pauses: as fast as the reader keeps up
                // with, without filling the socket's queue (that would evict it).
                while running.load(Ordering::Relaxed) {
                    for _ in 0..4 {
                        registry.emit(Audience::User(&user_id), &frame);
                        sent += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                sent
            })
        })
        .collect();

    let mut current = Some(ann.id());
    let mut seen_for = std::collections::HashMap::<String, u64>::new();
    let mut reference = 0;
    for round in 0..60 {
        let (next_user, frame) = match round % 3 {
            0 => (Some(bob.id()), json!({"type": "login", "ticket": server.ticket(&bob.cookie).await})),
            1 => (None, json!({"type": "logout"})),
            _ => (Some(ann.id()), json!({"type": "login", "ticket": server.ticket(&ann.cookie).await})),
        };
        reference += 1;
        let mut frame = frame;
        frame["ref"] = json!(reference);
        socket.send_json(frame).await;
        // Until the ack, frames for the current binding may still arrive.
        loop {
            let incoming = socket.next_frame().await;
            match incoming["type"].as_str().unwrap() {
                "event" => {
                    let to = incoming["data"]["to"].as_str().unwrap().to_string();
                    assert_eq!(Some(&to), current.as_ref(), "round {round}: a frame for {to} before the ack");
                    *seen_for.entry(to).or_default() += 1;
                }
                "ack" if incoming["ref"] == reference => {
                    assert_eq!(incoming["ok"], true, "{incoming}");
                    break;
                }
                other => panic!("unexpected {other}: {incoming}"),
            }
        }
        current = next_user;
        // Drain what arrives right after the ack: all of it must be for the new binding.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(20);
        while let Ok(incoming) = tokio::time::timeout_at(deadline, socket.next_frame()).await {
            let to = incoming["data"]["to"].as_str().unwrap().to_string();
            assert_eq!(Some(&to), current.as_ref(), "round {round}: a frame for {to} after the ack");
            *seen_for.entry(to).or_default() += 1;
        }
    }
    running.store(false, Ordering::Relaxed);
    for emitter in emitters {
        assert!(emitter.await.unwrap() > 0);
    }
    // The test saw frames for both users, so the check had something to check.
    assert!(seen_for.get(&ann.id()).copied().unwrap_or(0) > 0 && seen_for.get(&bob.id()).copied().unwrap_or(0) > 0, "{seen_for:?}");
}

#[tokio::test]
async fn emits_reach_exactly_their_audience() {
    let server = start().await;
    let ann = server.register("ann@x.io", "Ann").await;
    let bob = server.register("bob@x.io", "Bob").await;
    let ann_phone = server.login("ann@x.io").await;
    let (mut ann_tab, _) = server.socket(Some(&ann.cookie)).await;
    let (mut ann_other, _) = server.socket(Some(&ann_phone.cookie)).await;
    let (mut bob_tab, _) = server.socket(Some(&bob.cookie)).await;
    let (mut guest, _) = server.socket(None).await;
    let registry = &server.state.registry;
    let event = |topic: &str| ServerFrame::Event { topic: topic.into(), data: json!(null) };

    let session_id = server.state.sessions.live(&server.state.db, &claims_sid(&ann.cookie)).await.unwrap().unwrap().id;
    assert_eq!(registry.emit(Audience::Session(&session_id), &event("session")), 1);
    assert_eq!(registry.emit(Audience::User(&ann.id()), &event("user")), 2);
    assert_eq!(registry.emit(Audience::Role(tether_protocol::Role::User), &event("role")), 3);
    assert_eq!(registry.emit(Audience::User(&bob.id()), &event("bob")), 1);
    assert_eq!(registry.emit(Audience::All, &event("all")), 4);

    assert_eq!(topics(&mut ann_tab, 4).await, ["session", "user", "role", "all"]);
    assert_eq!(topics(&mut ann_other, 3).await, ["user", "role", "all"]);
    assert_eq!(topics(&mut bob_tab, 3).await, ["role", "bob", "all"]);
    assert_eq!(topics(&mut guest, 1).await, ["all"]);
    for socket in [&mut ann_tab, &mut ann_other, &mut bob_tab, &mut guest] {
        socket.expect_silence(Duration::from_millis(100)).await;
    }
}

/// The topics of the next `n` events a socket receives.
async fn topics(socket: &mut common::Socket, n: usize) -> Vec<String> {
    let mut topics = Vec::new();
    for _ in 0..n {
        topics.push(socket.next_of("event").await["topic"].as_str().unwrap().to_string());
    }
    topics
}

/// The session id inside a session cookie's JWT.
fn claims_sid(cookie: &str) -> String {
    use base64::Engine;
    let payload = cookie.trim_start_matches("tether_session=").split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["sid"].as_str().unwrap().to_string()
}
