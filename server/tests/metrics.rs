//! `GET /metrics` on its own listener (`TETHER_METRICS_ADDR`), never on the
//! public one; its counters move as a scripted client connects, binds,
//! sends and leaves.

mod common;

use axum::http::Method;
use common::raw::http;
use common::start_with;
use serde_json::json;

/// The value of the series whose line starts with `series` (name and labels), or 0.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_connects_binds_sends_and_leaves() {
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let server = start_with(&[("TETHER_METRICS_ADDR", &metrics_addr.to_string())]).await;
    let scrape = || async {
        let mut reply = None;
        for _ in 0..100 {
            reply = http(metrics_addr, "GET", "/metrics", None, None).await;
            if reply.is_some() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let (status, head, body) = reply.expect("the metrics listener answers");
        assert_eq!(status, 200, "{head}");
        body
    };
    let before = scrape().await;

    let ann = server.register("ann@x.io", "Ann").await;
    let room = server.call(Method::POST, "/api/rooms").cookie(&ann.cookie).json(json!({"name": "Lobby"})).send().await;
    let code = room.body["room"]["code"].as_str().unwrap().to_string();
    let (mut socket, _) = server.socket(None).await;
    assert_eq!(socket.request(json!({"type": "login", "ticket": ann.ticket})).await["ok"], true);
    assert_eq!(socket.request(json!({"type": "join", "room": code})).await["ok"], true);
    assert_eq!(socket.request(json!({"type": "send", "room": code, "text": "hi"})).await["ok"], true);
    socket.next_of("message").await;
    socket.send_text("not json").await;
    socket.next_of("error").await;
    let during = scrape().await;
    assert_eq!(assert_moved(&before, &during, r#"tether_sockets{binding="user"}"#), 1.0);
    assert_moved(&before, &during, r#"tether_handshakes_total{outcome="accepted"}"#);
    assert_moved(&before, &during, r#"tether_rebinds_total{kind="login"}"#);
    assert_moved(&before, &during, r#"tether_frames_in_total{type="send"}"#);
    assert_moved(&before, &during, r#"tether_frames_in_total{type="join"}"#);
    assert_moved(&before, &during, r#"tether_frames_out_total{type="message"}"#);
    assert_moved(&before, &during, r#"tether_frames_refused_total{reason="bad_frame"}"#);
    assert!(during.contains("tether_argon2_wait_seconds"), "the argon2 wait histogram is there");
    assert!(during.contains("tether_http_request_duration_seconds"), "the HTTP latency histogram is there");

    assert_eq!(socket.request(json!({"type": "leave", "room": code})).await["ok"], true);
    assert_eq!(socket.request(json!({"type": "logout"})).await["ok"], true);
    socket.hang_up().await;
    let after = scrape().await;
    assert_moved(&during, &after, r#"tether_frames_in_total{type="leave"}"#);
    assert_moved(&during, &after, r#"tether_rebinds_total{kind="logout"}"#);
    assert_eq!(value(&after, r#"tether_sockets{binding="user"}"#), 0.0, "{after}");

    // Not on the public listener.
    let public = server.call(Method::GET, "/metrics").send().await;
    assert_eq!(public.status, axum::http::StatusCode::NOT_FOUND);
}

/// Asserts that a series grew between two scrapes; returns its new value.
fn assert_moved(before: &str, after: &str, series: &str) -> f64 {
    let (was, now) = (value(before, series), value(after, series));
    assert!(now > was, "{series}: {was} -> {now}\n{after}");
    now
}
