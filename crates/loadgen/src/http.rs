//! A minimal HTTP/1.1 client over a plain TcpStream (one request per
//! connection, `Connection: close`): enough for the JSON API, no heavy deps.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tether_protocol::{AuthResponse, CreateRoomRequest, LoginRequest, RegisterRequest, RoomResponse, TicketResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The `tether_session` cookie as a `Cookie` request header value.
    pub fn session_cookie(&self) -> Option<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.split(';').next().unwrap_or("").trim().to_string())
            .find(|c| c.starts_with("tether_session=") && c.len() > "tether_session=".len())
    }

    pub fn json<T: DeserializeOwned>(&self) -> io::Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| {
            io::Error::other(format!("HTTP {}: {e}: {}", self.status, String::from_utf8_lossy(&self.body)))
        })
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    json: Option<&str>,
) -> io::Result<Response> {
    request_from(None, addr, method, path, cookie, json).await
}

/// [`request`] from the source address `source` (a loopback address such as
/// 127.0.0.7), so per-address limits see many clients; `None`: the kernel's choice.
pub async fn request_from(
    source: Option<std::net::IpAddr>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    json: Option<&str>,
) -> io::Result<Response> {
    let work = async {
        let mut stream = match source {
            None => TcpStream::connect(addr).await?,
            Some(ip) => {
                let socket = if ip.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(addr).await?
            }
        };
        stream.set_nodelay(true)?;
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\n");
        if let Some(cookie) = cookie {
            head.push_str(&format!("Cookie: {cookie}\r\n"));
        }
        let body = json.unwrap_or("");
        if json.is_some() {
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        head.push_str(body);
        stream.write_all(head.as_bytes()).await?;
        let mut raw = Vec::with_capacity(2048);
        stream.read_to_end(&mut raw).await?;
        parse(&raw)
    };
    tokio::time::timeout(Duration::from_secs(30), work).await.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "HTTP timeout"))?
}

fn parse(raw: &[u8]) -> io::Result<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("headers not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 =
        status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad(format!("status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked { dechunk(rest)? } else { rest.to_vec() };
    Ok(Response { status, headers, body })
}

fn dechunk(mut data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n").ok_or_else(|| bad("chunk size"))?;
        let size_text = std::str::from_utf8(&data[..eol]).map_err(|_| bad("chunk size"))?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).map_err(|_| bad("chunk size"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            return Err(bad("short chunk"));
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or(&[]);
    }
}

/// A registered, logged-in user with the session cookie.
#[derive(Debug, Clone)]
pub struct Account {
    pub user_id: String,
    pub email: String,
    pub cookie: String,
}

pub async fn register(addr: SocketAddr, email: &str, name: &str, password: &str) -> io::Result<Account> {
    let body = serde_json::to_string(&RegisterRequest { email: email.into(), name: name.into(), password: password.into() })?;
    let reply = request(addr, "POST", "/api/auth/register", None, Some(&body)).await?;
    if reply.status != 201 {
        return Err(io::Error::other(format!("register {email}: HTTP {} {}", reply.status, String::from_utf8_lossy(&reply.body))));
    }
    let auth: AuthResponse = reply.json()?;
    let cookie = reply.session_cookie().ok_or_else(|| bad("register: no tether_session cookie"))?;
    Ok(Account { user_id: auth.user.id, email: email.into(), cookie })
}

/// `POST /api/auth/login` from `source`; the new session's cookie.
pub async fn login(source: Option<std::net::IpAddr>, addr: SocketAddr, email: &str, password: &str) -> io::Result<String> {
    let body = serde_json::to_string(&LoginRequest { email: email.into(), password: password.into() })?;
    let reply = request_from(source, addr, "POST", "/api/auth/login", None, Some(&body)).await?;
    if reply.status != 200 {
        return Err(io::Error::other(format!("login {email}: HTTP {} {}", reply.status, String::from_utf8_lossy(&reply.body))));
    }
    reply.session_cookie().ok_or_else(|| bad("login: no tether_session cookie"))
}

pub async fn create_room(addr: SocketAddr, cookie: &str, name: &str) -> io::Result<String> {
    let body = serde_json::to_string(&CreateRoomRequest { name: name.into() })?;
    let reply = request(addr, "POST", "/api/rooms", Some(cookie), Some(&body)).await?;
    if reply.status != 201 {
        return Err(io::Error::other(format!("create room: HTTP {} {}", reply.status, String::from_utf8_lossy(&reply.body))));
    }
    Ok(reply.json::<RoomResponse>()?.room.code)
}

pub async fn ticket(addr: SocketAddr, cookie: &str) -> io::Result<String> {
    let reply = request(addr, "POST", "/api/auth/ticket", Some(cookie), None).await?;
    if reply.status != 200 {
        return Err(io::Error::other(format!("ticket: HTTP {} {}", reply.status, String::from_utf8_lossy(&reply.body))));
    }
    Ok(reply.json::<TicketResponse>()?.ticket)
}

pub async fn healthy(addr: SocketAddr) -> bool {
    matches!(request(addr, "GET", "/healthz", None, None).await, Ok(r) if r.status == 200)
}
