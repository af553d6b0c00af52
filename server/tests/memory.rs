//! What a hostile client can make the server hold, measured on the real
//! server binary in its own process (its VmRSS, from /proc): idle sockets,
//! ping floods from clients that never read, sockets that stop reading while
//! their room is busy, and upgrades that never finish. Each must stay within
//! the per-connection bound stated here (README, "Contract notes").

mod common;

use std::net::SocketAddr;

use common::process::ServerProcess;
use common::raw::{http, Ending, RawClient, PING};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Bounds per connection, in KiB of the server's resident memory (measured
/// here in a debug build: 5, 6, 16 and 13 KiB; the bounds leave room for the
/// allocator's rounding).
const IDLE_SOCKET_KIB: u64 = 16;
const PING_FLOOD_KIB: u64 = 32;
const UNREAD_SOCKET_KIB: u64 = 64;
const HALF_OPEN_UPGRADE_KIB: u64 = 32;

/// The server with room for the attacks from one address, the heartbeat out of the way.
async fn start() -> ServerProcess {
    ServerProcess::start(&[
        ("RUST_LOG", "error"),
        ("TETHER_MAX_CONNECTIONS_PER_ADDRESS", "5000"),
        ("TETHER_HEADER_READ_TIMEOUT_SECS", "120"),
        ("TETHER_PING_INTERVAL_SECS", "600"),
        ("TETHER_SOCKET_IDLE_TIMEOUT_SECS", "600"),
    ])
    .await
}

fn rss_kib(server: &ServerProcess) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn per_connection(before: u64, after: u64, connections: u64) -> u64 {
    after.saturating_sub(before) / connections
}

async fn welcomed(addr: SocketAddr, cookie: Option<&str>) -> RawClient {
    let mut client = RawClient::connect_to(addr, cookie).await;
    let welcome = client.read_frame().await.expect("a welcome");
    assert!(welcome.text().contains("welcome"));
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_hostile_clients_make_the_server_hold_is_bounded_per_connection() {
    let server = start().await;
    let addr = server.addr;
    // Warm up: one of everything, so lazily built state is not counted as growth.
    drop(welcomed(addr, None).await);
    let baseline = rss_kib(&server);

    // 1. Idle sockets, held open.
    const IDLE: u64 = 500;
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        idle.push(welcomed(addr, None).await);
    }
    let with_idle = rss_kib(&server);
    let idle_kib = per_connection(baseline, with_idle, IDLE);
    eprintln!("memory: {IDLE} idle sockets: +{} KiB, {idle_kib} KiB each", with_idle - baseline);
    assert!(idle_kib <= IDLE_SOCKET_KIB, "an idle socket holds {idle_kib} KiB");

    // 2. Ping floods from clients that never read: each is closed at the frame limit.
    const FLOODERS: u64 = 100;
    let mut flooders = Vec::new();
    for _ in 0..FLOODERS {
        let mut client = welcomed(addr, None).await;
        for _ in 0..1000 {
            client.send_frame(true, 0, PING, true, &[1u8; 125]).await;
        }
        flooders.push(client);
    }
    let flooded = rss_kib(&server);
    let flood_kib = per_connection(with_idle, flooded, FLOODERS);
    eprintln!("memory: {FLOODERS} ping floods of 1000 pings each: +{} KiB, {flood_kib} KiB each", flooded.saturating_sub(with_idle));
    assert!(flood_kib <= PING_FLOOD_KIB, "a ping flood holds {flood_kib} KiB");
    for client in &mut flooders {
        let (ending, _) = client.ending().await;
        assert_eq!(ending, Ending::Close(Some(1008)));
    }
    drop(flooders);

    // 3. Sockets that stop reading while their room is busy.
    let cookie = server.register("ann@x.io").await;
    let (status, _, room) = http(addr, "POST", "/api/rooms", Some(&json!({"name": "Busy"})), Some(&cookie)).await.unwrap();
    assert_eq!(status, 201);
    let room: Value = serde_json::from_str(&room).unwrap();
    let code = room["room"]["code"].as_str().unwrap().to_string();
    const UNREAD: u64 = 200;
    let mut unread = Vec::new();
    for _ in 0..UNREAD {
        let mut client = welcomed(addr, None).await;
        client.send_text(&json!({"type": "join", "room": code, "ref": 1}).to_string()).await;
        loop {
            let frame = client.read_frame().await.expect("the join's answer");
            if frame.text().contains(r#""type":"ack""#) {
                break;
            }
        }
        unread.push(client);
    }
    let before_unread = rss_kib(&server);
    // 4 senders x a burst of 40 messages of 8 KB: 1.25 MiB for each unread socket.
    let text = "🦀".repeat(2000);
    let mut senders = Vec::new();
    for _ in 0..4 {
        let mut sender = welcomed(addr, Some(&cookie)).await;
        sender.send_text(&json!({"type": "join", "room": code}).to_string()).await;
        for n in 0..39 {
            sender.send_text(&json!({"type": "send", "room": code, "text": text, "ref": n + 2}).to_string()).await;
        }
        senders.push(sender);
    }
    // The senders see their own 156 messages come back, so the fan-out is done.
    for sender in &mut senders {
        let mut acks = 0;
        while acks < 39 {
            let frame = sender.read_frame().await.expect("acks");
            acks += usize::from(frame.text().contains(r#""type":"ack""#));
        }
    }
    let with_unread = rss_kib(&server);
    let unread_kib = per_connection(before_unread, with_unread, UNREAD);
    eprintln!("memory: {UNREAD} unread sockets in a busy room: +{} KiB, {unread_kib} KiB each", with_unread.saturating_sub(before_unread));
    assert!(unread_kib <= UNREAD_SOCKET_KIB, "an unread socket holds {unread_kib} KiB");
    drop(unread);
    drop(senders);

    // 4. Upgrades that never finish: half a request head, then nothing.
    const HALF_OPEN: u64 = 500;
    let before_half_open = rss_kib(&server);
    let mut half_open = Vec::new();
    for _ in 0..HALF_OPEN {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n").await.unwrap();
        half_open.push(stream);
    }
    // /healthz still answers while they are held.
    let (status, _, _) = http(addr, "GET", "/healthz", None, None).await.unwrap();
    assert_eq!(status, 200);
    let with_half_open = rss_kib(&server);
    let half_open_kib = per_connection(before_half_open, with_half_open, HALF_OPEN);
    eprintln!("memory: {HALF_OPEN} unfinished upgrades: +{} KiB, {half_open_kib} KiB each", with_half_open.saturating_sub(before_half_open));
    assert!(half_open_kib <= HALF_OPEN_UPGRADE_KIB, "an unfinished upgrade holds {half_open_kib} KiB");
    drop(idle);
}
