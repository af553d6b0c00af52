//! Rooms over HTTP and the socket: join, leave, send, history, presence, and
//! the `room.created` / `user.registered` events with their audiences.

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::{start, Account, Socket, TestServer};
use serde_json::{json, Value};
use server::rooms::store::NewMessage;
use tether_protocol::Sender;

async fn create_room(server: &TestServer, owner: &Account, name: &str) -> Value {
    let reply = server.call(Method::POST, "/api/rooms").cookie(&owner.cookie).json(json!({"name": name})).send().await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.body["room"].clone()
}

async fn join(socket: &mut Socket, code: &str) -> Value {
    let ack = socket.request(json!({"type": "join", "room": code})).await;
    assert_eq!(ack["ok"], true, "{ack}");
    ack
}

fn names(presence: &Value) -> Vec<String> {
    presence["members"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn rooms_are_listed_and_created_by_logged_in_users() {
    let server = start().await;
    let empty = server.call(Method::GET, "/api/rooms").send().await;
    assert_eq!((empty.status, empty.body.clone()), (StatusCode::OK, json!({"rooms": []})));

    let anonymous = server.call(Method::POST, "/api/rooms").json(json!({"name": "x"})).send().await;
    assert_eq!((anonymous.status, anonymous.code()), (StatusCode::UNAUTHORIZED, "not_authenticated"));

    let ann = server.register("ann@x.io", "Ann").await;
    for name in [json!(""), json!("   "), json!("x".repeat(81))] {
        let reply = server.call(Method::POST, "/api/rooms").cookie(&ann.cookie).json(json!({"name": name})).send().await;
        assert_eq!((reply.status, reply.code()), (StatusCode::BAD_REQUEST, "invalid_name"), "{name}");
    }
    let missing = server.call(Method::POST, "/api/rooms").cookie(&ann.cookie).json(json!({})).send().await;
    assert_eq!((missing.status, missing.code()), (StatusCode::BAD_REQUEST, "bad_request"));

    let (mut guest, _) = server.socket(None).await;
    let (mut member, _) = server.socket(Some(&ann.cookie)).await;
    let room = create_room(&server, &ann, &"é".repeat(80)).await;
    assert_eq!(room["created_by"], ann.user["id"]);
    assert!(room["code"].as_str().is_some_and(|c| c.len() == 6));
    assert!(room["created_at"].as_str().unwrap().ends_with('Z'));
    for socket in [&mut guest, &mut member] {
        let event = socket.next_of("event").await;
        assert_eq!((event["topic"].clone(), event["data"].clone()), (json!("room.created"), room.clone()));
    }
    let listed = server.call(Method::GET, "/api/rooms").send().await;
    assert_eq!(listed.body["rooms"], json!([room]));
}

#[tokio::test]
async fn join_answers_the_room_and_the_last_50_messages_oldest_first() {
    let server = start().await;
    let ann = server.register("ann@x.io", "Ann").await;
    let room = create_room(&server, &ann, "Lobby").await;
    let code = room["code"].as_str().unwrap();
    let (mut socket, _) = server.socket(None).await;

    let unknown = socket.request(json!({"type": "join", "room": "nope42"})).await;
    assert_eq!((unknown["ok"].clone(), unknown["error"]["code"].clone()), (json!(false), json!("not_found")));

    assert_eq!(join(&mut socket, code).await["history"], json!([]));
    let from = Sender { id: Some(ann.id()), name: "Ann".into() };
    for i in 0..55 {
        let text = format!("m{i}");
        let at = server::db::now_rfc3339();
        let message = NewMessage { room: code, seq: i + 1, from: &from, text: &text, at: &at };
        server::rooms::store::insert_message(&server.state.db, &message).await.unwrap();
    }
    let (mut late, _) = server.socket(None).await;
    let ack = join(&mut late, code).await;
    assert_eq!(ack["room"], room);
    let history = ack["history"].as_array().unwrap();
    assert_eq!(history.len(), 50);
    assert_eq!(history[0]["text"], "m5");
    assert_eq!(history[49]["text"], "m54");
    let first = &history[0];
    assert_eq!(first["room"], code);
    assert_eq!(first["from"], json!({"id": ann.id(), "name": "Ann"}));
    assert_eq!((history[0]["seq"].clone(), history[49]["seq"].clone()), (json!(6), json!(55)));
    assert!(first["id"].is_string() && first["at"].is_string());
}

#[tokio::test]
async fn send_needs_a_user_membership_and_valid_text() {
    let server = start().await;
    let ann = server.register("ann@x.io", "Ann").await;
    let code = create_room(&server, &ann, "Lobby").await["code"].as_str().unwrap().to_string();
    let (mut guest, _) = server.socket(None).await;
    let (mut socket, _) = server.socket(Some(&ann.cookie)).await;

    join(&mut guest, &code).await;
    let refused = guest.request(json!({"type": "send", "room": code, "text": "hi"})).await;
    assert_eq!(refused["error"]["code"], "not_authenticated");

    let outside = socket.request(json!({"type": "send", "room": code, "text": "hi"})).await;
    assert_eq!(outside["error"]["code"], "not_in_room");

    join(&mut socket, &code).await;
    for text in [String::new(), "a".repeat(2001), "é".repeat(2001)] {
        let ack = socket.request(json!({"type": "send", "room": code, "text": text})).await;
        assert_eq!(ack["error"]["code"], "invalid_text", "{} chars", text.chars().count());
    }
    // 2000 characters pass even when they are 4 bytes each.
    let long = "🦀".repeat(2000);
    let ack = socket.request(json!({"type": "send", "room": code, "text": long})).await;
    assert_eq!(ack["ok"], true, "{}", ack["error"]);
    let message = socket.next_of("message").await;
    assert_eq!(message["id"], ack["id"]);
    assert_eq!(message["text"].as_str().unwrap().chars().count(), 2000);

    // After leaving, sending is refused again.
    assert_eq!(socket.request(json!({"type": "leave", "room": code})).await["ok"], true);
    let left = socket.request(json!({"type": "send", "room": code, "text": "hi"})).await;
    assert_eq!(left["error"]["code"], "not_in_room");
}

#[tokio::test]
async fn messages_reach_every_socket_in_the_room_stamped_by_the_server() {
    let server = start().await;
    let ann = server.register("ann@x.io", "Ann").await;
    let bob = server.register("bob@x.io", "Bob").await;
    let code = create_room(&server, &ann, "Lobby").await["code"].as_str().unwrap().to_string();
    let (mut ann_tab, _) = server.socket(Some(&ann.cookie)).await;
    let (mut bob_tab, _) = server.socket(Some(&bob.cookie)).await;
    let (mut guest, _) = server.socket(None).await;
    let (mut outsider, _) = server.socket(Some(&bob.cookie)).await;
    for socket in [&mut ann_tab, &mut bob_tab, &mut guest] {
        join(socket, &code).await;
    }

    // A client-supplied sender is ignored.
    let forged = json!({"type": "send", "room": code, "text": "hello", "from": {"id": bob.id(), "name": "Bob"}});
    let ack = ann_tab.request(forged).await;
    assert_eq!(ack["ok"], true);
    for socket in [&mut ann_tab, &mut bob_tab, &mut guest] {
        let message = socket.next_of("message").await;
        assert_eq!(message["from"], json!({"id": ann.id(), "name": "Ann"}));
        assert_eq!((message["room"].clone(), message["text"].clone(), message["id"].clone()), (json!(code), json!("hello"), ack["id"].clone()));
        assert!(message["at"].as_str().unwrap().ends_with('Z'));
    }
    outsider.expect_silence(Duration::from_millis(200)).await;
    // And it was stored as stamped.
    let (mut later, _) = server.socket(None).await;
    assert_eq!(join(&mut later, &code).await["history"][0]["from"]["name"], "Ann");
}

/// A presence_diff's joins and leaves, as sorted names.
fn diff(frame: &Value) -> (Vec<String>, Vec<String>) {
    let list = |field: &str| {
        let mut names: Vec<String> =
            frame[field].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap().to_string()).collect();
        names.sort();
        names
    };
    (list("joins"), list("leaves"))
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[tokio::test]
async fn presence_is_a_full_list_on_join_then_diffs_for_joins_leaves_disconnects_and_rebinds() {
    let server = start().await;
    let ann = server.register("ann@x.io", "Ann").await;
    let bob = server.register("bob@x.io", "Bob").await;
    let code = create_room(&server, &ann, "Lobby").await["code"].as_str().unwrap().to_string();
    let (mut watcher, _) = server.socket(Some(&bob.cookie)).await;
    let ack = join(&mut watcher, &code).await;
    assert_eq!(ack["members"], json!([{"key": format!("u:{}", bob.id()), "id": bob.id(), "name": "Bob"}]));
    assert_eq!(watcher.next_of("presence").await["members"], ack["members"], "the full list follows the ack");

    // Three tabs of Ann are one member: only the first changes the list.
    let mut tabs = Vec::new();
    for _ in 0..3 {
        let (mut tab, _) = server.socket(Some(&ann.cookie)).await;
        let ack = join(&mut tab, &code).await;
        // The joining socket always learns who is there, in the ack and in `presence`.
        assert_eq!(sorted(names(&ack)), strings(&["Ann", "Bob"]));
        assert_eq!(sorted(names(&tab.next_of("presence").await)), strings(&["Ann", "Bob"]));
        tabs.push(tab);
    }
    let (mut guest, welcome) = server.socket(None).await;
    let guest_name = welcome["guest_name"].as_str().unwrap().to_string();
    let guest_key = format!("g:{}", welcome["socket_id"].as_str().unwrap());
    join(&mut guest, &code).await;
    // The watcher's diffs: Ann once (her second and third tab changed nothing), then the guest.
    assert_eq!(diff(&watcher.next_of("presence_diff").await), (strings(&["Ann"]), vec![]));
    let guest_joined = watcher.next_of("presence_diff").await;
    assert_eq!(guest_joined["room"], code);
    assert_eq!(guest_joined["joins"], json!([{"key": guest_key, "id": null, "name": guest_name}]));
    assert_eq!(guest_joined["leaves"], json!([]));

    // The guest logs in as Ann over its socket: the guest leaves, Ann was there already.
    let ticket = server.ticket(&ann.cookie).await;
    assert_eq!(guest.request(json!({"type": "login", "ticket": ticket})).await["ok"], true);
    assert_eq!(diff(&watcher.next_of("presence_diff").await), (vec![], strings(&[&guest_name])));

    // Ann's tabs close or leave while another of hers stays: no diff. (The next
    // diff the watcher sees is the one the last step causes.)
    tabs.pop().unwrap().hang_up().await;
    assert_eq!(tabs[0].request(json!({"type": "leave", "room": code})).await["ok"], true);
    tabs.pop().unwrap().hang_up().await;
    // Her last socket in the room logs out: it stays as a new guest, and Ann is gone.
    assert_eq!(guest.request(json!({"type": "logout"})).await["ok"], true);
    let logout = watcher.next_of("presence_diff").await;
    assert_eq!(logout["leaves"], json!([{"key": format!("u:{}", ann.id()), "id": ann.id(), "name": "Ann"}]));
    let new_guest = &logout["joins"][0];
    assert!(new_guest["id"].is_null() && new_guest["name"].as_str().unwrap().starts_with("guest-"), "{logout}");
    assert_eq!(new_guest["key"], json!(guest_key), "a guest's key is its socket's");
    // The guest logs in as Bob, who is there already: only the guest leaves.
    let ticket = server.ticket(&bob.cookie).await;
    assert_eq!(guest.request(json!({"type": "login", "ticket": ticket})).await["ok"], true);
    assert_eq!(diff(&watcher.next_of("presence_diff").await), (vec![], strings(&[new_guest["name"].as_str().unwrap()])));
    let rejoin = watcher.request(json!({"type": "join", "room": code})).await;
    assert_eq!(names(&rejoin), ["Bob"]);
}

#[tokio::test]
async fn user_registered_reaches_admin_sockets_only() {
    let server = common::start_with(&[("TETHER_ADMIN_EMAILS", "boss@x.io")]).await;
    let boss = server.register("boss@x.io", "Boss").await;
    let ann = server.register("ann@x.io", "Ann").await;
    let (mut admin, _) = server.socket(Some(&boss.cookie)).await;
    let (mut user, _) = server.socket(Some(&ann.cookie)).await;
    let (mut guest, _) = server.socket(None).await;
    // Connections themselves tell admins that sockets changed; skip those.
    let carol = server.register("carol@x.io", "Carol").await;
    let event = loop {
        let event = admin.next_of("event").await;
        if event["topic"] == "user.registered" {
            break event;
        }
    };
    assert_eq!(event["data"], carol.user);
    for socket in [&mut user, &mut guest] {
        socket.expect_silence(Duration::from_millis(300)).await;
    }
}
