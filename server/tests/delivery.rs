//! A room's messages: one order for ids, `seq`, `at`, live delivery and
//! history, whatever the concurrency; every message reaches a joined socket
//! exactly once (history or live); resume with `since`; older pages with `history`.

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::{start, Account, Socket, TestServer};
use serde_json::{json, Value};

async fn create_room(server: &TestServer, owner: &Account) -> String {
    let reply = server.call(Method::POST, "/api/rooms").cookie(&owner.cookie).json(json!({"name": "Lobby"})).send().await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.body["room"]["code"].as_str().unwrap().to_string()
}

async fn joined(server: &TestServer, cookie: Option<&str>, code: &str) -> Socket {
    let (mut socket, _) = server.socket(cookie).await;
    socket.join(code).await;
    socket
}

fn seqs(messages: &[Value]) -> Vec<i64> {
    messages.iter().map(|m| m["seq"].as_i64().unwrap()).collect()
}

/// ids, seq and at all rise together along the list; seq has no gaps.
fn assert_one_order(messages: &[Value]) {
    for pair in messages.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert_eq!(b["seq"].as_i64().unwrap(), a["seq"].as_i64().unwrap() + 1, "seq has no gaps: {a} then {b}");
        let id = |m: &Value| m["id"].as_str().unwrap().parse::<i64>().unwrap();
        assert!(id(b) > id(a), "ids rise with seq: {a} then {b}");
        assert!(b["at"].as_str().unwrap() >= a["at"].as_str().unwrap(), "at never decreases: {a} then {b}");
    }
}

/// Two users send 20 messages each, all at once, pipelined without waiting
/// for acks; two receivers must see the same order, the order of seq, ids and
/// at, and a later join's history must be that order too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_senders_make_one_order_for_every_receiver_and_history() {
    let server = start().await;
    let ann = server.register("ann@x.io", "Ann").await;
    let bob = server.register("bob@x.io", "Bob").await;
    let code = create_room(&server, &ann).await;
    let mut first = joined(&server, None, &code).await;
    let mut second = joined(&server, None, &code).await;
    const EACH: usize = 20;
    let mut senders = Vec::new();
    for account in [&ann, &bob] {
        let mut socket = joined(&server, Some(&account.cookie), &code).await;
        let code = code.clone();
        senders.push(tokio::spawn(async move {
            for i in 0..EACH {
                socket.send_json(json!({"type": "send", "room": code, "text": format!("m{i}"), "ref": i + 1})).await;
            }
            let mut acked = 0;
            while acked < EACH {
                let frame = socket.next_frame().await;
                if frame["type"] == "ack" {
                    assert_eq!(frame["ok"], true, "{frame}");
                    acked += 1;
                }
            }
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let seen_first = first.messages(2 * EACH).await;
    let seen_second = second.messages(2 * EACH).await;
    assert_eq!(seqs(&seen_first), (1..=2 * EACH as i64).collect::<Vec<_>>());
    assert_eq!(seen_first, seen_second, "every socket of the room sees one order");
    assert_one_order(&seen_first);

    let (mut late, _) = server.socket(None).await;
    let ack = late.request(json!({"type": "join", "room": code})).await;
    let history = ack["history"].as_array().unwrap().clone();
    assert_eq!(history, seen_first, "history has the live order");
}

/// One user streams messages while another socket joins, takes what comes
/// and leaves, over and over: each join's history and live stream together
/// hold every message once, with nothing missing at the seam.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joins_racing_a_stream_of_sends_get_each_message_exactly_once() {
    let server = start().await;
    let ann = server.register("ann@x.io", "Ann").await;
    let code = create_room(&server, &ann).await;
    // Several sockets of Ann's share the sending, to stay inside each socket's frame rate.
    let mut streams = Vec::new();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    for _ in 0..4 {
        let mut socket = joined(&server, Some(&ann.cookie), &code).await;
        let code = code.clone();
        let stopped = stopped.clone();
        streams.push(tokio::spawn(async move {
            // Paced under the 20 frames a second each socket may send.
            let mut pace = tokio::time::interval(Duration::from_millis(60));
            let mut n = 0;
            while !*stopped.borrow() {
                pace.tick().await;
                n += 1;
                let ack = socket.request(json!({"type": "send", "room": code, "text": format!("m{n}")})).await;
                assert_eq!(ack["ok"], true, "{ack}");
            }
        }));
    }
    // Joiners take turns, each within its own frame rate.
    let mut joiners = Vec::new();
    for _ in 0..6 {
        joiners.push(server.socket(None).await.0);
    }
    let mut reference = 0;
    for round in 0..60 {
        let joiner = &mut joiners[round % 6];
        reference += 1;
        joiner.send_json(json!({"type": "join", "room": code, "ref": reference})).await;
        // Frames in arrival order: nothing of the room may come before the ack.
        let ack = loop {
            let frame = joiner.next_frame().await;
            assert_ne!(frame["type"], "message", "round {round}: a message came before the join's ack: {frame}");
            if frame["type"] == "ack" {
                break frame;
            }
        };
        let history = ack["history"].as_array().unwrap();
        let last_in_history = history.last().map_or(0, |m| m["seq"].as_i64().unwrap());
        let live = joiner.messages(3).await;
        assert_eq!(
            seqs(&live),
            vec![last_in_history + 1, last_in_history + 2, last_in_history + 3],
            "round {round}: live picks up right after history"
        );
        reference += 1;
        joiner.send_json(json!({"type": "leave", "room": code, "ref": reference})).await;
        loop {
            let frame = joiner.next_frame().await;
            if frame["type"] == "ack" && frame["ref"] == reference {
                break;
            }
        }
    }
    stop.send(true).unwrap();
    for stream in streams {
        stream.await.unwrap();
    }
}

/// A client that was away names the last seq it has; it gets exactly what it
/// missed (at most 500, newest kept and `truncated` beyond), then live.
#[tokio::test]
async fn a_join_with_since_returns_what_was_missed_and_history_pages_back() {
    let server = start().await;
    let ann = server.register("ann@x.io", "Ann").await;
    let code = create_room(&server, &ann).await;
    for n in 1..=520 {
        store_message(&server, &code, &ann, n).await;
    }
    let (mut socket, _) = server.socket(None).await;
    let resumed = socket.request(json!({"type": "join", "room": code, "since": 510})).await;
    assert_eq!(seqs(resumed["history"].as_array().unwrap()), (511..=520).collect::<Vec<_>>());
    assert!(resumed.get("truncated").is_none_or(|t| t == false), "{resumed}");
    let far_behind = socket.request(json!({"type": "join", "room": code, "since": 3})).await;
    let missed = far_behind["history"].as_array().unwrap();
    assert_eq!(far_behind["truncated"], true);
    assert_eq!(seqs(missed), (21..=520).collect::<Vec<_>>(), "the newest 500");
    let up_to_date = socket.request(json!({"type": "join", "room": code, "since": 520})).await;
    assert_eq!(up_to_date["history"], json!([]));

    // Older pages, oldest first.
    let page = socket.request(json!({"type": "history", "room": code, "before": 21, "limit": 5})).await;
    assert_eq!(seqs(page["history"].as_array().unwrap()), vec![16, 17, 18, 19, 20]);
    let default = socket.request(json!({"type": "history", "room": code, "before": 100})).await;
    assert_eq!(seqs(default["history"].as_array().unwrap()), (50..=99).collect::<Vec<_>>());
    let start = socket.request(json!({"type": "history", "room": code, "before": 3})).await;
    assert_eq!(seqs(start["history"].as_array().unwrap()), vec![1, 2]);
    for limit in [0, 101] {
        let bad = socket.request(json!({"type": "history", "room": code, "before": 10, "limit": limit})).await;
        assert_eq!(bad["error"]["code"], "bad_frame", "{bad}");
    }
    let unknown = socket.request(json!({"type": "history", "room": "nope42", "before": 10})).await;
    assert_eq!(unknown["error"]["code"], "not_found");
    socket.request(json!({"type": "leave", "room": code})).await;
    let outside = socket.request(json!({"type": "history", "room": code, "before": 10})).await;
    assert_eq!(outside["error"]["code"], "not_in_room");

    // Live sends continue the numbering after stored history.
    let mut sender = joined(&server, Some(&ann.cookie), &code).await;
    assert_eq!(sender.request(json!({"type": "send", "room": code, "text": "next"})).await["ok"], true);
    assert_eq!(sender.next_of("message").await["seq"], 521);
    // The socket stays usable after all of it.
    assert_eq!(socket.request(json!({"type": "ping"})).await["ok"], true);
}

async fn store_message(server: &TestServer, code: &str, author: &Account, seq: i64) {
    let from = tether_protocol::Sender { id: Some(author.id()), name: "Ann".into() };
    let text = format!("m{seq}");
    let at = server::db::now_rfc3339();
    let message = server::rooms::store::NewMessage { room: code, seq, from: &from, text: &text, at: &at };
    server::rooms::store::insert_message(&server.state.db, &message).await.unwrap();
}
