//! Opening authenticated sockets: bound to a chosen 127.x source address,
//! with the session cookie and an allowed Origin, up to the `welcome` frame.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tether_protocol::{ClientEnvelope, ClientFrame, ErrorBody, ServerFrame};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::sys;

pub type Ws = WebSocketStream<TcpStream>;

/// At most this many client sockets share one source address.
pub const PER_SOURCE_ADDRESS: usize = 10_000;
/// Linux `IP_BIND_ADDRESS_NO_PORT`: pick the source port at connect time, per destination.
const IP_BIND_ADDRESS_NO_PORT: i32 = 24;
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Where the server is and the Origin it accepts on `/ws`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub origin: String,
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Endpoint {
        Endpoint { addr, origin: format!("http://{addr}") }
    }
}

/// Source address of the socket with this global index: 127.0.0.2, 127.0.0.3, ...
pub fn source_ip(index: usize) -> Ipv4Addr {
    let n = 2 + index / PER_SOURCE_ADDRESS;
    Ipv4Addr::new(127, 0, (n / 256) as u8, (n % 256) as u8)
}

fn client_config() -> WebSocketConfig {
    // Small buffers: tungstenite reserves its read buffer up front (128 KiB by default).
    WebSocketConfig::default().read_buffer_size(8 * 1024).write_buffer_size(0).max_message_size(None).max_frame_size(None)
}

pub struct Welcomed {
    pub ws: Ws,
    pub user_id: Option<String>,
}

/// TCP connect from `source`, upgrade with cookie and Origin, read `welcome`.
pub async fn connect(ep: &Endpoint, source: Ipv4Addr, cookie: Option<&str>, linger_zero: bool) -> Result<Welcomed, String> {
    let work = async {
        let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        let fd = socket.as_raw_fd();
        sys::setsockopt_int(fd, libc::IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1);
        if linger_zero {
            sys::set_linger_zero(fd);
        }
        socket.bind(SocketAddr::new(source.into(), 0)).map_err(|e| format!("bind {source}: {e}"))?;
        let stream = socket.connect(ep.addr).await.map_err(|e| format!("connect from {source}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut request = format!("ws://{}/ws", ep.addr).into_client_request().map_err(|e| e.to_string())?;
        request.headers_mut().insert("origin", ep.origin.parse().map_err(|_| "bad origin".to_string())?);
        if let Some(cookie) = cookie {
            request.headers_mut().insert("cookie", cookie.parse().map_err(|_| "bad cookie".to_string())?);
        }
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(client_config()))
            .await
            .map_err(|e| format!("upgrade: {e}"))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    return match serde_json::from_str::<ServerFrame>(text.as_str()) {
                        Ok(ServerFrame::Welcome { user, .. }) => Ok(Welcomed { ws, user_id: user.map(|u| u.id) }),
                        _ => Err(format!("first frame is not welcome: {}", text.as_str())),
                    };
                }
                Some(Ok(Message::Close(close))) => return Err(format!("closed before welcome: {close:?}")),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("read welcome: {e}")),
                None => return Err("closed before welcome".into()),
            }
        }
    };
    tokio::time::timeout(PATIENCE, work).await.map_err(|_| "timed out before welcome".to_string())?
}

pub async fn send(ws: &mut Ws, frame: &ClientFrame, reference: i64) -> Result<(), String> {
    ws.send(Message::text(ClientEnvelope::encode(frame, reference))).await.map_err(|e| format!("send: {e}"))
}

/// Reads until the `ack` with `reference`, passing over every other frame.
pub async fn ack(ws: &mut Ws, reference: i64) -> Result<Result<Map<String, Value>, ErrorBody>, String> {
    let work = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let text = text.as_str();
                    if !text.starts_with(r#"{"type":"ack""#) {
                        continue;
                    }
                    if let Ok(ServerFrame::Ack { reference: r, ok, error, fields }) = serde_json::from_str::<ServerFrame>(text) {
                        if r == reference {
                            return Ok(if ok { Ok(fields) } else { Err(error.unwrap_or_else(|| ErrorBody::new("?", "?"))) });
                        }
                    }
                }
                Some(Ok(Message::Close(close))) => return Err(format!("closed: {close:?}")),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("read: {e}")),
                None => return Err("closed".into()),
            }
        }
    };
    tokio::time::timeout(PATIENCE, work).await.map_err(|_| format!("no ack for ref {reference}"))?
}

/// Sends a frame and waits for its `ack`.
pub async fn request(ws: &mut Ws, frame: &ClientFrame, reference: i64) -> Result<Result<Map<String, Value>, ErrorBody>, String> {
    send(ws, frame, reference).await?;
    ack(ws, reference).await
}
