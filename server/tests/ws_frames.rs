//! The wire under hostile clients, seen through a raw client (no WebSocket
//! library): every protocol violation gets the RFC 6455 Close code, every
//! close the server starts arrives as a Close frame even while the client is
//! still sending, and a client's own Close is answered.

mod common;

use common::raw::{Ending, RawClient, BINARY, CLOSE, CONTINUATION, PING, TEXT};
use common::{start, start_with};

/// Reads the `welcome` frame every socket starts with.
async fn welcomed(client: &mut RawClient) {
    let welcome = client.read_frame().await.expect("a welcome frame");
    assert!(welcome.text().contains(r#""type":"welcome""#), "{}", welcome.text());
}

/// Sends bytes that break the protocol; the server answers with `code` as a
/// Close frame, and once the client answers it, ends the connection cleanly.
async fn assert_violation_closes(name: &str, code: u16, send: impl AsyncFnOnce(&mut RawClient)) {
    let server = start().await;
    let mut client = RawClient::connect(&server, None).await;
    welcomed(&mut client).await;
    send(&mut client).await;
    let (ending, _) = client.ending().await;
    assert_eq!(ending, Ending::Close(Some(code)), "{name}");
    client.finish_close().await;
}

#[tokio::test]
async fn protocol_violations_get_their_close_codes() {
    assert_violation_closes("invalid UTF-8 in a text frame", 1007, async |c: &mut RawClient| {
        c.send_frame(true, 0, TEXT, true, &[0x7B, 0xFF, 0xFE, 0x7D]).await;
    })
    .await;
    assert_violation_closes("an unmasked client frame", 1002, async |c: &mut RawClient| {
        c.send_frame(true, 0, TEXT, false, br#"{"type":"ping"}"#).await;
    })
    .await;
    assert_violation_closes("RSV bits without an extension", 1002, async |c: &mut RawClient| {
        c.send_frame(true, 0b100, TEXT, true, br#"{"type":"ping"}"#).await;
    })
    .await;
    assert_violation_closes("a reserved data opcode", 1002, async |c: &mut RawClient| {
        c.send_frame(true, 0, 0x3, true, b"x").await;
    })
    .await;
    assert_violation_closes("a reserved control opcode", 1002, async |c: &mut RawClient| {
        c.send_frame(true, 0, 0xB, true, b"x").await;
    })
    .await;
    assert_violation_closes("a control frame over 125 bytes", 1002, async |c: &mut RawClient| {
        c.send_frame(true, 0, PING, true, &[0u8; 126]).await;
    })
    .await;
    assert_violation_closes("a fragmented control frame", 1002, async |c: &mut RawClient| {
        c.send_frame(false, 0, PING, true, b"x").await;
    })
    .await;
    assert_violation_closes("a continuation with nothing to continue", 1002, async |c: &mut RawClient| {
        c.send_frame(true, 0, CONTINUATION, true, b"x").await;
    })
    .await;
    assert_violation_closes("a new message inside a fragmented one", 1002, async |c: &mut RawClient| {
        c.send_frame(false, 0, TEXT, true, b"{").await;
        c.send_frame(true, 0, BINARY, true, b"}").await;
    })
    .await;
}

#[tokio::test]
async fn a_clients_close_is_answered_with_a_close() {
    let server = start().await;
    let mut client = RawClient::connect(&server, None).await;
    welcomed(&mut client).await;
    client.send_frame(true, 0, CLOSE, true, &1000u16.to_be_bytes()).await;
    assert_eq!(client.ending().await.0, Ending::Close(Some(1000)), "RFC 6455 5.5.1: the close is echoed");
    assert_eq!(client.read_frame().await.err(), Some(Ending::Eof), "then the server ends TCP");
}

/// The contract's own closes reach the client while it still has frames in
/// flight: the server reads and drops them until the closing handshake ends,
/// so the kernel never resets the connection over unread data.
#[tokio::test]
async fn closes_arrive_while_the_client_is_still_sending() {
    // A guest's 100 pings back to back: the burst is served, the rest refused, then 1008.
    let server = start().await;
    let mut client = RawClient::connect(&server, None).await;
    welcomed(&mut client).await;
    for i in 0..100 {
        client.send_text(&format!(r#"{{"type":"ping","ref":{i}}}"#)).await;
    }
    // ...and more frames after the close was decided.
    for i in 100..110 {
        client.send_text(&format!(r#"{{"type":"ping","ref":{i}}}"#)).await;
    }
    let (ending, texts) = client.ending().await;
    assert_eq!(ending, Ending::Close(Some(1008)), "after {} frames", texts.len());
    assert!(texts.iter().filter(|t| t.contains(r#""ok":true"#)).count() >= 40, "the burst was served");
    assert!(texts.iter().any(|t| t.contains("rate_limited")));
    client.finish_close().await;

    // A frame over 64 KiB followed at once by another: 1009, not a reset.
    let mut client = RawClient::connect(&server, None).await;
    welcomed(&mut client).await;
    client.send_text(&format!(r#"{{"type":"ping","p":"{}"}}"#, "x".repeat(70_000))).await;
    client.send_text(r#"{"type":"ping","ref":1}"#).await;
    assert_eq!(client.ending().await.0, Ending::Close(Some(1009)));
    client.finish_close().await;

    // Guests off: a logout followed by three pings gives 4401.
    let server = start_with(&[("TETHER_ALLOW_GUESTS", "false")]).await;
    let ann = server.register("ann@x.io", "Ann").await;
    let mut client = RawClient::connect(&server, Some(&ann.cookie)).await;
    welcomed(&mut client).await;
    client.send_text(r#"{"type":"logout","ref":1}"#).await;
    for i in 2..5 {
        client.send_text(&format!(r#"{{"type":"ping","ref":{i}}}"#)).await;
    }
    assert_eq!(client.ending().await.0, Ending::Close(Some(4401)));
    client.finish_close().await;
}

/// Control frames count against the frame rate: a client that pings as fast
/// as it can and never reads is closed with 1008 after the same budget as
/// text frames, instead of making the server queue a pong for every ping.
#[tokio::test]
async fn a_ping_flood_is_closed_like_any_other_flood() {
    let server = start().await;
    let mut client = RawClient::connect(&server, None).await;
    welcomed(&mut client).await;
    // Far past the burst (40) and the refusals (50), sent without reading anything.
    for _ in 0..2000 {
        client.send_frame(true, 0, PING, true, &[7u8; 125]).await;
    }
    let mut pongs = 0;
    let ending = loop {
        match client.read_frame().await {
            Ok(frame) if frame.opcode == CLOSE => break Ending::Close(frame.close_code()),
            Ok(frame) => pongs += usize::from(frame.opcode == common::raw::PONG),
            Err(ending) => break ending,
        }
    };
    assert_eq!(ending, Ending::Close(Some(1008)));
    assert!(pongs <= 100, "the server stopped answering pings at the limit: {pongs} pongs");
}

/// The heartbeat: the server pings on its interval; a peer that answers
/// stays, a peer that never answers is closed (dead peers and idle cuts are
/// found within a bounded time).
#[tokio::test]
async fn the_server_pings_and_closes_a_peer_that_never_answers() {
    let server = start_with(&[("TETHER_PING_INTERVAL_SECS", "1"), ("TETHER_PONG_TIMEOUT_SECS", "1")]).await;
    // This one answers every ping: still open after several intervals.
    let mut alive = RawClient::connect(&server, None).await;
    welcomed(&mut alive).await;
    for _ in 0..3 {
        let ping = alive.read_frame().await.expect("a ping each interval");
        assert_eq!(ping.opcode, PING);
        alive.send_frame(true, 0, common::raw::PONG, true, &ping.payload).await;
    }
    alive.send_text(r#"{"type":"ping","ref":1}"#).await;
    let ack = alive.read_frame().await.expect("still served");
    assert!(ack.text().contains(r#""ok":true"#), "{}", ack.text());

    // This one reads but never answers: a ping, then the Close.
    let mut silent = RawClient::connect(&server, None).await;
    welcomed(&mut silent).await;
    let ping = silent.read_frame().await.expect("a ping");
    assert_eq!(ping.opcode, PING);
    assert_eq!(silent.ending().await.0, Ending::Close(Some(1001)));
    silent.finish_close().await;
}
