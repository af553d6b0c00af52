//! `/api/admin/*`: live sockets, role changes reaching live sockets, forced logout.

mod common;

use axum::http::{Method, StatusCode};
use common::{start_with, Account, TestServer};
use serde_json::json;

async fn setup() -> (TestServer, Account, Account) {
    let server = start_with(&[("TETHER_ADMIN_EMAILS", "boss@x.io")]).await;
    let boss = server.register("boss@x.io", "Boss").await;
    let ann = server.register("ann@x.io", "Ann").await;
    (server, boss, ann)
}

#[tokio::test]
async fn only_admins_reach_the_admin_rows() {
    let (server, _boss, ann) = setup().await;
    let rows = [
        (Method::GET, "/api/admin/sockets".to_string(), None),
        (Method::DELETE, format!("/api/admin/users/{}/sessions", ann.id()), None),
        (Method::PUT, format!("/api/admin/users/{}/role", ann.id()), Some(json!({"role": "admin"}))),
    ];
    for (method, path, body) in rows {
        let call = |cookie: Option<&str>| {
            let mut call = server.call(method.clone(), &path);
            if let Some(body) = &body {
                call = call.json(body.clone());
            }
            if let Some(cookie) = cookie {
                call = call.cookie(cookie);
            }
            call.send()
        };
        let anonymous = call(None).await;
        assert_eq!((anonymous.status, anonymous.code()), (StatusCode::UNAUTHORIZED, "not_authenticated"), "{path}");
        let user = call(Some(&ann.cookie)).await;
        assert_eq!((user.status, user.code()), (StatusCode::FORBIDDEN, "forbidden"), "{path}");
    }
    assert_eq!(server.call(Method::GET, "/api/auth/me").cookie(&ann.cookie).send().await.body["user"]["role"], "user");
}

#[tokio::test]
async fn the_live_sockets_list_shows_bindings_and_rooms() {
    let (server, boss, ann) = setup().await;
    let room = server.call(Method::POST, "/api/rooms").cookie(&ann.cookie).json(json!({"name": "Lobby"})).send().await;
    let code = room.body["room"]["code"].as_str().unwrap().to_string();
    let (mut ann_socket, ann_welcome) = server.socket(Some(&ann.cookie)).await;
    let (_guest, guest_welcome) = server.socket(None).await;
    assert_eq!(ann_socket.request(json!({"type": "join", "room": code})).await["ok"], true);

    let reply = server.call(Method::GET, "/api/admin/sockets").cookie(&boss.cookie).send().await;
    assert_eq!(reply.status, StatusCode::OK);
    let sockets = reply.body["sockets"].as_array().unwrap();
    assert_eq!(sockets.len(), 2);
    assert_eq!(sockets[0]["socket_id"], ann_welcome["socket_id"]);
    assert_eq!(sockets[0]["user"], ann.user);
    assert!(sockets[0]["guest_name"].is_null());
    assert_eq!(sockets[0]["rooms"], json!([code]));
    assert!(sockets[0]["connected_at"].as_str().unwrap().ends_with('Z'));
    assert!(sockets[1]["user"].is_null());
    assert_eq!(sockets[1]["guest_name"], guest_welcome["guest_name"]);
    assert_eq!(sockets[1]["rooms"], json!([]));
}

#[tokio::test]
async fn a_role_change_reaches_the_users_live_sockets_at_once() {
    let (server, boss, ann) = setup().await;
    let (mut tab1, _) = server.socket(Some(&ann.cookie)).await;
    let (mut tab2, _) = server.socket(Some(&ann.cookie)).await;
    let path = format!("/api/admin/users/{}/role", ann.id());

    let missing = server.call(Method::PUT, "/api/admin/users/nobody/role").cookie(&boss.cookie).json(json!({"role": "admin"})).send().await;
    assert_eq!((missing.status, missing.code()), (StatusCode::NOT_FOUND, "not_found"));
    let bad = server.call(Method::PUT, &path).cookie(&boss.cookie).json(json!({"role": "king"})).send().await;
    assert_eq!((bad.status, bad.code()), (StatusCode::BAD_REQUEST, "bad_request"));

    let reply = server.call(Method::PUT, &path).cookie(&boss.cookie).json(json!({"role": "admin"})).send().await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["user"]["role"], "admin");
    for tab in [&mut tab1, &mut tab2] {
        let bound = tab.next_of("bound").await;
        assert_eq!(bound["user"]["role"], "admin");
        assert_eq!(bound["user"]["id"], ann.user["id"]);
        assert!(bound["expires_at"].as_i64().is_some());
    }
    // What the socket may see changed: it now gets admin-only events.
    server.register("carol@x.io", "Carol").await;
    loop {
        let event = tab1.next_of("event").await;
        if event["topic"] == "user.registered" {
            break;
        }
    }
    // The stored role counts on HTTP too, whatever the cookie's claim says.
    let sockets = server.call(Method::GET, "/api/admin/sockets").cookie(&ann.cookie).send().await;
    assert_eq!(sockets.status, StatusCode::OK);
}

#[tokio::test]
async fn revoking_sessions_is_a_forced_logout_everywhere() {
    let (server, boss, ann) = setup().await;
    let phone = server.login("ann@x.io").await;
    let (mut tab, _) = server.socket(Some(&ann.cookie)).await;
    let (mut other, _) = server.socket(Some(&phone.cookie)).await;
    let (mut boss_tab, _) = server.socket(Some(&boss.cookie)).await;

    let missing = server.call(Method::DELETE, "/api/admin/users/nobody/sessions").cookie(&boss.cookie).send().await;
    assert_eq!((missing.status, missing.code()), (StatusCode::NOT_FOUND, "not_found"));

    let reply = server.call(Method::DELETE, &format!("/api/admin/users/{}/sessions", ann.id())).cookie(&boss.cookie).send().await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    for socket in [&mut tab, &mut other] {
        assert_eq!(socket.next_of("unbound").await["reason"], "revoked");
        assert!(socket.request(json!({"type": "whoami"})).await["user"].is_null());
    }
    for cookie in [&ann.cookie, &phone.cookie] {
        assert_eq!(server.call(Method::GET, "/api/auth/me").cookie(cookie).send().await.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(boss_tab.request(json!({"type": "whoami"})).await["user"]["email"], "boss@x.io");
    // A ticket issued before the revocation binds nothing now.
    let fresh = server.login("ann@x.io").await;
    assert_eq!(server.call(Method::GET, "/api/auth/me").cookie(&fresh.cookie).send().await.status, StatusCode::OK);
}

#[tokio::test]
async fn admins_hear_of_sockets_coming_rebinding_and_going() {
    let (server, boss, ann) = setup().await;
    let changed = json!({"type": "event", "topic": "sockets.changed", "data": {}});
    let (mut admin, _) = server.socket(Some(&boss.cookie)).await;
    assert_eq!(admin.next_of("event").await, changed, "its own connection");
    let (mut user, _) = server.socket(Some(&ann.cookie)).await;
    assert_eq!(admin.next_of("event").await, changed, "a user connected");
    let (mut guest, _) = server.socket(None).await;
    assert_eq!(admin.next_of("event").await, changed, "a guest connected");
    let ticket = server.ticket(&ann.cookie).await;
    assert_eq!(guest.request(json!({"type": "login", "ticket": ticket})).await["ok"], true);
    assert_eq!(admin.next_of("event").await, changed, "rebound in place");
    guest.stream.close(None).await.unwrap();
    assert_eq!(admin.next_of("event").await, changed, "it went");
    admin.expect_silence(std::time::Duration::from_millis(200)).await;
    user.expect_silence(std::time::Duration::from_millis(10)).await;
}

/// `TETHER_ADMIN_EMAILS` wins at every login, and the promotion reaches the
/// user's sockets that are already open: `bound`, `whoami`, admin-only events
/// and the admin view all say admin at once.
#[tokio::test]
async fn a_promotion_at_login_reaches_the_users_open_sockets() {
    let server = start_with(&[("TETHER_ADMIN_EMAILS", "boss@x.io,ann@x.io")]).await;
    let boss = server.register("boss@x.io", "Boss").await;
    let ann = server.register("ann@x.io", "Ann").await;
    assert_eq!(ann.user["role"], "admin");
    let (mut open, _) = server.socket(Some(&ann.cookie)).await;
    let path = format!("/api/admin/users/{}/role", ann.id());
    let demoted = server.call(Method::PUT, &path).cookie(&boss.cookie).json(json!({"role": "user"})).send().await;
    assert_eq!(demoted.body["user"]["role"], "user");
    assert_eq!(open.next_of("bound").await["user"]["role"], "user");

    // She logs in again (another browser): the setting wins over the stored demotion.
    let again = server.login("ann@x.io").await;
    assert_eq!(again.user["role"], "admin");
    let bound = open.next_of("bound").await;
    assert_eq!(bound["user"]["role"], "admin", "{bound}");
    assert_eq!(open.request(json!({"type": "whoami"})).await["user"]["role"], "admin");
    let listed = server.call(Method::GET, "/api/admin/sockets").cookie(&boss.cookie).send().await;
    let row = listed.body["sockets"].as_array().unwrap().iter().find(|s| s["user"]["id"] == ann.user["id"]).cloned();
    assert_eq!(row.unwrap()["user"]["role"], "admin");
    // Her open socket is in the admins' audience again.
    let carol = server.register("carol@x.io", "Carol").await;
    let event = loop {
        let event = open.next_of("event").await;
        if event["topic"] == "user.registered" {
            break event;
        }
    };
    assert_eq!(event["data"], carol.user);
}

/// Everything the admin view shows announces itself: joining and leaving a
/// room change a socket's Rooms column, so they send `sockets.changed`.
#[tokio::test]
async fn joins_and_leaves_announce_a_socket_change() {
    let (server, boss, ann) = setup().await;
    let room = server.call(Method::POST, "/api/rooms").cookie(&ann.cookie).json(json!({"name": "Lobby"})).send().await;
    let code = room.body["room"]["code"].as_str().unwrap().to_string();
    let (mut admin, _) = server.socket(Some(&boss.cookie)).await;
    let (mut user, _) = server.socket(Some(&ann.cookie)).await;
    let changed = json!({"type": "event", "topic": "sockets.changed", "data": {}});
    assert_eq!(admin.next_of("event").await, changed, "its own connection");
    assert_eq!(admin.next_of("event").await, changed, "Ann connected");
    let rooms_of_ann = |listed: &serde_json::Value| {
        listed["sockets"].as_array().unwrap().iter().find(|s| s["user"]["id"] == ann.user["id"]).unwrap()["rooms"].clone()
    };

    assert_eq!(user.request(json!({"type": "join", "room": code})).await["ok"], true);
    assert_eq!(admin.next_of("event").await, changed, "Ann joined a room");
    let listed = server.call(Method::GET, "/api/admin/sockets").cookie(&boss.cookie).send().await;
    assert_eq!(rooms_of_ann(&listed.body), json!([code]));
    assert!(listed.body["sockets"][0]["node"].as_str().is_some_and(|n| !n.is_empty()), "{:?}", listed.body);

    assert_eq!(user.request(json!({"type": "leave", "room": code})).await["ok"], true);
    assert_eq!(admin.next_of("event").await, changed, "Ann left the room");
    let listed = server.call(Method::GET, "/api/admin/sockets").cookie(&boss.cookie).send().await;
    assert_eq!(rooms_of_ann(&listed.body), json!([]));
    // Leaving a room one is not in changes nothing and announces nothing: the
    // next event is the one the disconnect causes.
    assert_eq!(user.request(json!({"type": "leave", "room": code})).await["ok"], true);
    user.hang_up().await;
    assert_eq!(admin.next_of("event").await, changed, "Ann went");
    let listed = server.call(Method::GET, "/api/admin/sockets").cookie(&boss.cookie).send().await;
    assert_eq!(listed.body["sockets"].as_array().unwrap().len(), 1);
}
