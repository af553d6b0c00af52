//! A raw WebSocket client over a plain `TcpStream`, with no WebSocket library:
//! it writes any frame, well-formed or not, and reads the server's frames
//! byte for byte, so tests can see exactly what reaches the wire (RFC 6455 5.2);
//! and [`http`], one plain HTTP/1.1 request, for servers in other processes.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{TestServer, PATIENCE};

pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

#[derive(Debug)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// A Close frame's status code (RFC 6455 5.5.1).
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == CLOSE && self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// How the server ended a connection, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// A Close frame with this code (then, normally, the end of the stream).
    Close(Option<u16>),
    /// The stream ended with no Close frame.
    Eof,
    /// The connection was reset: whatever the server wrote last may be lost.
    Reset,
}

pub struct RawClient {
    pub stream: TcpStream,
    buffer: Vec<u8>,
}

impl RawClient {
    /// Opens `/ws` with the server's own Origin and reads the 101 response.
    pub async fn connect(server: &TestServer, cookie: Option<&str>) -> RawClient {
        RawClient::connect_to(server.addr, cookie).await
    }

    /// Opens `/ws` on a server at `addr` whose public origin is `http://<addr>`.
    pub async fn connect_to(addr: std::net::SocketAddr, cookie: Option<&str>) -> RawClient {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let cookie = cookie.map(|c| format!("Cookie: {c}\r\n")).unwrap_or_default();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Origin: http://{addr}\r\n{cookie}\r\n",
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut client = RawClient { stream, buffer: Vec::new() };
        let head = client.read_until_blank_line().await;
        assert!(head.starts_with("HTTP/1.1 101"), "the upgrade is accepted: {head}");
        client
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk)).await.expect("the server answers in time")?;
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    async fn read_until_blank_line(&mut self) -> String {
        loop {
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buffer.drain(..end + 4).collect();
                return String::from_utf8_lossy(&head).into_owned();
            }
            assert!(self.fill().await.unwrap() > 0, "the connection closed during the handshake");
        }
    }

    /// Writes one frame exactly as given; a client frame is masked unless `masked` is false.
    pub async fn send_frame(&mut self, fin: bool, rsv: u8, opcode: u8, masked: bool, payload: &[u8]) {
        let mut frame = vec![(u8::from(fin) << 7) | ((rsv & 0x7) << 4) | (opcode & 0xF)];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => frame.push(mask_bit | n as u8),
            n if n <= 0xFFFF => {
                frame.push(mask_bit | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(mask_bit | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            let key: [u8; 4] = rand::random();
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            frame.extend_from_slice(payload);
        }
        // The server may already have closed: later frames just go nowhere.
        let _ = self.stream.write_all(&frame).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(true, 0, TEXT, true, text.as_bytes()).await;
    }

    /// The next frame; `Err` when the stream ended or was reset first.
    pub async fn read_frame(&mut self) -> Result<Frame, Ending> {
        loop {
            if let Some((frame, used)) = parse(&self.buffer) {
                self.buffer.drain(..used);
                return Ok(frame);
            }
            match self.fill().await {
                Ok(0) => return Err(Ending::Eof),
                Ok(_) => {}
                Err(_) => return Err(Ending::Reset),
            }
        }
    }

    /// Reads until the server ends the connection; returns how, and the text frames before it.
    pub async fn ending(&mut self) -> (Ending, Vec<String>) {
        let mut texts = Vec::new();
        loop {
            match self.read_frame().await {
                Ok(frame) if frame.opcode == CLOSE => return (Ending::Close(frame.close_code()), texts),
                Ok(frame) if frame.opcode == TEXT => texts.push(frame.text()),
                Ok(_) => {}
                Err(ending) => return (ending, texts),
            }
        }
    }

    /// After the server's Close: answers it, as RFC 6455 5.5.1 asks, and
    /// expects the server to end the TCP connection cleanly.
    pub async fn finish_close(&mut self) {
        self.send_frame(true, 0, CLOSE, true, &1000u16.to_be_bytes()).await;
        loop {
            match self.read_frame().await {
                Ok(_) => continue,
                Err(ending) => {
                    assert_eq!(ending, Ending::Eof, "the server ends the connection cleanly after the handshake");
                    return;
                }
            }
        }
    }

    /// Waits up to `wait` for any byte from the server.
    pub async fn quiet_for(&mut self, wait: Duration) -> bool {
        let mut byte = [0u8; 1];
        !matches!(tokio::time::timeout(wait, self.stream.peek(&mut byte)).await, Ok(Ok(n)) if n > 0)
    }
}

/// One complete server frame at the start of `bytes`, and its length.
fn parse(bytes: &[u8]) -> Option<(Frame, usize)> {
    if bytes.len() < 2 {
        return None;
    }
    let fin = bytes[0] & 0x80 != 0;
    let opcode = bytes[0] & 0x0F;
    assert_eq!(bytes[1] & 0x80, 0, "server frames are never masked (RFC 6455 5.1)");
    let (len, mut at) = match bytes[1] & 0x7F {
        126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
        127 if bytes.len() >= 10 => (u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if bytes.len() < at + len {
        return None;
    }
    let payload = bytes[at..at + len].to_vec();
    at += len;
    Some((Frame { fin, opcode, payload }, at))
}

/// One HTTP/1.1 request over a fresh connection: status, head and body;
/// `None` if it could not be made.
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>, cookie: Option<&str>) -> Option<(u16, String, String)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let cookie = cookie.map(|c| format!("Cookie: {c}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{cookie}\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await.ok()?.ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, head.to_string(), body.to_string()))
}
