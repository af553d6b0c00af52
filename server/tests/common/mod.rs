//! Test harness: a real server on port 0 with its own SQLite file (or, when
//! `scripts/test` runs the suites on Postgres, its own Postgres database: see
//! [`postgres`]), HTTP through `oneshot` on the same state, and real WebSocket clients.
#![allow(dead_code)]

pub mod postgres;
pub mod process;
pub mod raw;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use server::config::Settings;
use server::AppState;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tower::ServiceExt;

pub const PASSWORD: &str = "correct horse";
/// How long a test waits for a frame that must come.
pub const PATIENCE: Duration = Duration::from_secs(5);

pub struct TestServer {
    pub addr: SocketAddr,
    pub state: AppState,
    _data: tempfile::TempDir,
}

pub async fn start() -> TestServer {
    start_with(&[]).await
}

/// Starts a server with extra settings, given as environment variables would be.
pub async fn start_with(vars: &[(&str, &str)]) -> TestServer {
    let data = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let leptos = leptos::config::LeptosOptions::builder().output_name("tether").site_addr(addr).build();
    let data_dir = data.path().to_str().unwrap().to_string();
    let file = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Leptos.toml")).unwrap();
    let database = match vars.iter().any(|(k, _)| *k == "DATABASE_URL") {
        true => None,
        false => postgres::test_database(),
    };
    let settings = Settings::resolve(leptos, &file, |name| {
        match name {
            "TETHER_DATA_DIR" => return Some(data_dir.clone()),
            "DATABASE_URL" if database.is_some() => return database.clone(),
            _ => {}
        }
        vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    })
    .unwrap();
    let state = AppState::new(settings).await.unwrap();
    tokio::spawn(server::serve(listener, state.clone()));
    TestServer { addr, state, _data: data }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// The session cookie as a `Cookie` request header value.
    pub fn cookie(&self) -> String {
        self.set_cookie().split(';').next().unwrap().to_string()
    }

    pub fn set_cookie(&self) -> String {
        self.headers.get(header::SET_COOKIE).expect("a Set-Cookie header").to_str().unwrap().to_string()
    }
}

/// A registered, logged-in user.
pub struct Account {
    pub user: Value,
    pub cookie: String,
    pub ticket: String,
}

impl Account {
    pub fn id(&self) -> String {
        self.user["id"].as_str().unwrap().to_string()
    }
}

pub struct Call<'a> {
    server: &'a TestServer,
    request: axum::http::request::Builder,
    body: Body,
}

impl Call<'_> {
    pub fn json(mut self, body: Value) -> Self {
        self.request = self.request.header(header::CONTENT_TYPE, "application/json");
        self.body = Body::from(body.to_string());
        self
    }

    pub fn raw(mut self, content_type: Option<&str>, body: impl Into<Body>) -> Self {
        if let Some(content_type) = content_type {
            self.request = self.request.header(header::CONTENT_TYPE, content_type);
        }
        self.body = body.into();
        self
    }

    pub fn cookie(mut self, cookie: &str) -> Self {
        self.request = self.request.header(header::COOKIE, cookie);
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.request = self.request.header(name, value);
        self
    }

    pub async fn send(self) -> Reply {
        let response = server::app(self.server.state.clone())
            .oneshot(self.request.body(self.body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        Reply { status, headers, body }
    }
}

impl TestServer {
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn call(&self, method: Method, path: &str) -> Call<'_> {
        Call { server: self, request: Request::builder().method(method).uri(path), body: Body::empty() }
    }

    pub async fn register(&self, email: &str, name: &str) -> Account {
        let reply = self
            .call(Method::POST, "/api/auth/register")
            .json(json!({"email": email, "name": name, "password": PASSWORD}))
            .send()
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        Account { cookie: reply.cookie(), ticket: reply.body["ticket"].as_str().unwrap().into(), user: reply.body["user"].clone() }
    }

    pub async fn login(&self, email: &str) -> Account {
        let reply = self
            .call(Method::POST, "/api/auth/login")
            .json(json!({"email": email, "password": PASSWORD}))
            .send()
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        Account { cookie: reply.cookie(), ticket: reply.body["ticket"].as_str().unwrap().into(), user: reply.body["user"].clone() }
    }

    pub async fn ticket(&self, cookie: &str) -> String {
        let reply = self.call(Method::POST, "/api/auth/ticket").cookie(cookie).send().await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.body["ticket"].as_str().unwrap().to_string()
    }

    /// Opens a socket with an allowed Origin; reads and returns its `welcome`.
    pub async fn socket(&self, cookie: Option<&str>) -> (Socket, Value) {
        socket_to(self.addr, cookie).await
    }

    pub async fn connect(&self, origin: Option<&str>, cookie: Option<&str>) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
        connect_to(self.addr, origin, cookie).await
    }
}

/// Opens `/ws` on the server at `addr` (in this process or another).
pub async fn connect_to(addr: SocketAddr, origin: Option<&str>, cookie: Option<&str>) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    if let Some(origin) = origin {
        request.headers_mut().insert("origin", origin.parse().unwrap());
    }
    if let Some(cookie) = cookie {
        request.headers_mut().insert("cookie", cookie.parse().unwrap());
    }
    let config = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
    let (stream, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), false).await?;
    Ok(Socket { stream, next_ref: 0, skipped: VecDeque::new() })
}

/// Opens `/ws` on the server at `addr` with its own Origin; reads and returns its `welcome`.
pub async fn socket_to(addr: SocketAddr, cookie: Option<&str>) -> (Socket, Value) {
    let mut socket = connect_to(addr, Some(&format!("http://{addr}")), cookie).await.expect("the upgrade is accepted");
    let welcome = socket.next_frame().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (socket, welcome)
}

pub struct Socket {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_ref: i64,
    /// Frames passed over while looking for another kind, in arrival order.
    skipped: VecDeque<Value>,
}

impl Socket {
    pub async fn send_text(&mut self, text: &str) {
        self.stream.send(Message::text(text)).await.unwrap();
    }

    pub async fn send_json(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    /// The next JSON frame; panics on a close or after [`PATIENCE`].
    pub async fn next_frame(&mut self) -> Value {
        if let Some(frame) = self.skipped.pop_front() {
            return frame;
        }
        self.read_frame().await
    }

    async fn read_frame(&mut self) -> Value {
        self.read_frame_within(PATIENCE).await
    }

    async fn read_frame_within(&mut self, patience: Duration) -> Value {
        loop {
            let message = tokio::time::timeout(patience, self.stream.next())
                .await
                .expect("a frame within the patience")
                .expect("the socket is open")
                .expect("a readable frame");
            match message {
                Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
                Message::Close(close) => panic!("socket closed: {close:?}"),
                _ => continue,
            }
        }
    }

    /// The next frame of `kind`; frames of other kinds stay for later reads.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        self.next_matching(|frame| frame["type"] == kind).await
    }

    /// Joins `room` and returns the ack, which must be ok.
    pub async fn join(&mut self, room: &str) -> Value {
        let ack = self.request(json!({"type": "join", "room": room})).await;
        assert_eq!(ack["ok"], true, "{ack}");
        ack
    }

    /// Reads frames in arrival order until `n` messages came, dropping the
    /// rest; returns them without their `type`, as history holds them.
    pub async fn messages(&mut self, n: usize) -> Vec<Value> {
        let mut got = Vec::new();
        while got.len() < n {
            let mut frame = self.next_frame().await;
            if frame["type"] == "message" {
                frame.as_object_mut().unwrap().remove("type");
                got.push(frame);
            }
        }
        got
    }

    /// The next `event` frame of `topic`; other frames stay for later reads.
    pub async fn next_event(&mut self, topic: &str) -> Value {
        self.next_matching(|frame| frame["type"] == "event" && frame["topic"] == topic).await
    }

    /// [`Socket::next_of`] for what may take longer than [`PATIENCE`] to come.
    pub async fn next_of_within(&mut self, kind: &str, patience: Duration) -> Value {
        self.next_matching_within(|frame| frame["type"] == kind, patience).await
    }

    async fn next_matching(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
        self.next_matching_within(wanted, PATIENCE).await
    }

    async fn next_matching_within(&mut self, wanted: impl Fn(&Value) -> bool, patience: Duration) -> Value {
        if let Some(at) = self.skipped.iter().position(&wanted) {
            return self.skipped.remove(at).unwrap();
        }
        loop {
            let frame = self.read_frame_within(patience).await;
            if wanted(&frame) {
                return frame;
            }
            self.skipped.push_back(frame);
        }
    }

    /// Sends a frame with a fresh `ref` and returns its `ack`, skipping other frames.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        self.next_ref += 1;
        let reference = self.next_ref;
        frame["ref"] = json!(reference);
        self.send_json(frame).await;
        self.next_matching(|frame| frame["type"] == "ack" && frame["ref"] == reference).await
    }

    /// Waits for the server to close the socket; returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(PATIENCE, self.stream.next()).await.expect("a close within the patience") {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Closes from the client side and waits for the server's Close reply: by
    /// then the server has removed the socket from its registry.
    pub async fn hang_up(mut self) {
        self.stream.close(None).await.unwrap();
        loop {
            match tokio::time::timeout(PATIENCE, self.stream.next()).await.expect("the server answers the close") {
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return,
            }
        }
    }

    /// Asserts that no frame arrives for a short while.
    pub async fn expect_silence(&mut self, wait: Duration) {
        assert!(self.skipped.is_empty(), "expected no frame, got {:?}", self.skipped);
        if let Ok(Some(Ok(message))) = tokio::time::timeout(wait, self.stream.next()).await {
            panic!("expected no frame, got {message:?}");
        }
    }
}
