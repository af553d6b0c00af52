//! Hostile HTTP clients over real TCP (issue 10 item 2): silent and slow
//! connections are closed within the header timeout, slow bodies get 408 in
//! the error shape, connections are capped per address and in total (an
//! upgraded WebSocket keeps its place), and `/healthz` answers while 500
//! half-open connections are held.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{start_with, TestServer};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How long a test waits for something the server must do; generous, since
/// the machine is shared and the build unoptimised.
const DEADLINE: Duration = Duration::from_secs(30);
const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// A TCP connection to the server from `source` (any loopback address).
async fn connect_from(server: &TestServer, source: IpAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    socket.connect(server.addr).await.unwrap()
}

/// Reads until the server closes the connection (EOF or reset); panics
/// after [`DEADLINE`]. Returns what was read.
async fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(DEADLINE, read_all).await.expect("the server closes the connection in time");
    received
}

/// Status and JSON body (if any) of a raw HTTP/1.1 response.
fn parse_response(bytes: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("a whole response head: {text:?}"));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("a status: {head}"));
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// `GET /healthz` on a fresh connection from `source`; its status.
async fn healthz_from(server: &TestServer, source: IpAddr) -> u16 {
    let mut stream = connect_from(server, source).await;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await.unwrap();
    parse_response(&until_closed(&mut stream).await).0
}

/// Polls `condition` until it holds; panics after [`DEADLINE`].
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < DEADLINE, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_silent_connection_is_closed_within_the_header_timeout() {
    let server = start_with(&[("TETHER_HEADER_READ_TIMEOUT_SECS", "1")]).await;
    let mut stream = connect_from(&server, LOCALHOST).await;
    let started = Instant::now();
    assert!(until_closed(&mut stream).await.is_empty(), "nothing is answered to nothing");
    assert!(started.elapsed() >= Duration::from_millis(900), "not before the timeout: {:?}", started.elapsed());
    eventually("the connection's permit is released", || server.state.connections.open() == 0).await;
}

#[tokio::test]
async fn an_upgrade_request_sent_a_byte_a_second_is_closed() {
    let server = start_with(&[("TETHER_HEADER_READ_TIMEOUT_SECS", "2")]).await;
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        addr = server.addr
    );
    let stream = connect_from(&server, LOCALHOST).await;
    let (mut reader, mut writer) = stream.into_split();
    // The attacker's pace, not a synchronisation: one byte a second for as long as the server listens.
    let trickle = tokio::spawn(async move {
        let mut sent = 0;
        let mut pace = tokio::time::interval(Duration::from_secs(1));
        for byte in request.as_bytes() {
            pace.tick().await;
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    let mut buf = [0u8; 1024];
    let answer = tokio::time::timeout(DEADLINE, reader.read(&mut buf)).await.expect("the server closes the slow upgrade");
    assert!(matches!(answer, Ok(0) | Err(_)), "no answer but a close: {answer:?}");
    trickle.abort();
    let sent = trickle.await.unwrap_or(0);
    assert!(sent < 40, "closed long before the request was complete ({sent} bytes)");
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408_in_the_error_shape() {
    let server = start_with(&[("TETHER_REQUEST_TIMEOUT_SECS", "1")]).await;
    let mut stream = connect_from(&server, LOCALHOST).await;
    // Announces a body of 1000 bytes and sends 10 of them.
    stream
        .write_all(b"POST /api/auth/login HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"email\":")
        .await
        .unwrap();
    let (status, body) = parse_response(&until_closed(&mut stream).await);
    assert_eq!(status, 408, "{body}");
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

#[tokio::test]
async fn healthz_answers_while_500_half_open_connections_are_held_and_they_are_closed() {
    const HELD: usize = 500;
    let server = start_with(&[("TETHER_HEADER_READ_TIMEOUT_SECS", "10")]).await;
    let mut held = Vec::with_capacity(HELD);
    for _ in 0..HELD {
        let mut stream = connect_from(&server, LOCALHOST).await;
        // A request head that never ends.
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ").await.unwrap();
        held.push(stream);
    }
    let healthz = tokio::time::timeout(Duration::from_secs(5), healthz_from(&server, "127.0.0.2".parse().unwrap()));
    assert_eq!(healthz.await.expect("healthz answers within 5 s"), 200);
    assert!(server.state.connections.open() >= HELD, "the half-open ones are still held");
    for stream in &mut held {
        until_closed(stream).await;
    }
    eventually("every permit is released", || server.state.connections.open() == 0).await;
}

#[tokio::test]
async fn connections_are_capped_per_address_and_in_total_websockets_included() {
    let server = start_with(&[
        ("TETHER_MAX_CONNECTIONS_PER_ADDRESS", "3"),
        ("TETHER_MAX_CONNECTIONS", "4"),
        ("TETHER_HEADER_READ_TIMEOUT_SECS", "60"),
    ])
    .await;
    let connections = server.state.connections.clone();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from(&server, LOCALHOST).await);
    }
    eventually("3 connections are counted", || connections.open_from(LOCALHOST) == 3).await;
    let mut fourth = connect_from(&server, LOCALHOST).await;
    assert!(until_closed(&mut fourth).await.is_empty(), "a 4th from the same address is closed at once");

    // Another address still gets in, up to the total of 4.
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    let mut from_other = connect_from(&server, other).await;
    from_other.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(DEADLINE, from_other.read(&mut buf)).await.unwrap().unwrap();
    assert_eq!(parse_response(&buf[..n]).0, 200);
    let mut fifth = connect_from(&server, "127.0.0.3".parse().unwrap()).await;
    assert!(until_closed(&mut fifth).await.is_empty(), "a 5th in total is closed at once");
    drop(from_other);

    // Upgraded WebSockets keep their connection's place.
    held.clear();
    eventually("the plain connections are released", || connections.open_from(LOCALHOST) == 0).await;
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(server.socket(None).await.0);
    }
    assert_eq!(connections.open_from(LOCALHOST), 3);
    let mut extra = connect_from(&server, LOCALHOST).await;
    assert!(until_closed(&mut extra).await.is_empty(), "three open sockets fill the address");
    let mut socket = sockets.pop().unwrap();
    socket.stream.close(None).await.unwrap();
    drop(socket);
    eventually("a closed socket frees its place", || connections.open_from(LOCALHOST) == 2).await;
    assert_eq!(healthz_from(&server, LOCALHOST).await, 200);
}
