//! A shard holds a share of the client sockets. It runs inside the
//! coordinator (small runs, tests) or as a child `loadgen worker` process,
//! driven by JSON lines over stdin/stdout, so no process passes the
//! open-files limit.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tether_protocol::ClientFrame;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::sys;
use crate::ws::{self, Endpoint, Ws};

/// Fan-out rounds a run may have (slots are allocated up front).
pub const MAX_ROUNDS: usize = 10_000;
/// The marker a fan-out message's text starts with, followed by 8 digits.
pub const ROUND_MARK: &str = "fanout-round-";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Cmd {
    Open(OpenSpec),
    /// Pings every socket and waits for the acks.
    Check { timeout_ms: u64 },
    Churn(ChurnSpec),
    Stats,
    Quit,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenSpec {
    pub endpoint: Endpoint,
    pub count: usize,
    /// Global index of the first new socket: picks its source address.
    pub first_index: usize,
    /// Session cookies, used round-robin.
    pub cookies: Vec<String>,
    /// A room every new socket joins.
    pub room: Option<String>,
    /// Each socket pings this often (0: never).
    pub ping_every_ms: u64,
    pub concurrency: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChurnSpec {
    pub endpoint: Endpoint,
    pub cookies: Vec<String>,
    pub duration_ms: u64,
    pub concurrency: usize,
    /// Source addresses to rotate over.
    pub addresses: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoundStat {
    pub round: u32,
    pub count: u32,
    pub first_ns: u64,
    pub last_ns: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Opened { opened: usize, failed: usize, unbound: usize, errors: Vec<String>, connect_us: Vec<u32> },
    RoundDone { round: u32 },
    Checked { alive: usize, dropped: usize, close_reasons: Vec<String>, ping_us: Vec<u32> },
    Churned { ok: usize, failed: usize, errors: Vec<String>, lat_us: Vec<u32>, elapsed_ms: u64 },
    Stats { live: usize, dropped: usize, messages: u64, cpu_ns: u64, rounds: Vec<RoundStat>, ping_us: Vec<u32>, ping_missing: u64 },
    Fatal { error: String },
}

struct RoundSlot {
    count: AtomicU32,
    first: AtomicU64,
    last: AtomicU64,
}

struct Shared {
    live: AtomicUsize,
    dropped: AtomicUsize,
    in_room: AtomicUsize,
    messages: AtomicU64,
    rounds: Vec<RoundSlot>,
    close_reasons: Mutex<Vec<String>>,
    ping_us: Mutex<Vec<u32>>,
    ping_missing: AtomicU64,
    emit: Emit,
}

pub type Emit = Arc<dyn Fn(Event) + Send + Sync>;

enum SockCmd {
    Ping(oneshot::Sender<u32>),
    Quit,
}

impl Shared {
    fn record_round(&self, text: &str) {
        let Some(at) = text.find(ROUND_MARK) else { return };
        let digits = &text[at + ROUND_MARK.len()..];
        let Some(round) = digits.get(..8).and_then(|d| d.parse::<usize>().ok()) else { return };
        let Some(slot) = self.rounds.get(round) else { return };
        let now = sys::mono_ns();
        slot.last.fetch_max(now, Ordering::Relaxed);
        let _ = slot.first.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        let count = slot.count.fetch_add(1, Ordering::AcqRel) + 1;
        if count as usize == self.in_room.load(Ordering::Acquire) {
            (self.emit)(Event::RoundDone { round: round as u32 });
        }
    }

    fn dropped(&self, why: String) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        let mut reasons = self.close_reasons.lock().unwrap();
        if reasons.len() < 20 {
            reasons.push(why);
        }
    }
}

/// One socket's task: counts fan-out receipts, answers pings, notices drops.
async fn run_socket(mut ws: Ws, mut cmds: mpsc::Receiver<SockCmd>, shared: Arc<Shared>, ping_every: Option<Duration>, seed: u64) {
    let mut next_ref: i64 = 1_000;
    // (ref, sent at, who waits)
    let mut pending: Option<(i64, Instant, Option<oneshot::Sender<u32>>)> = None;
    let period = ping_every.unwrap_or(Duration::from_secs(86_400));
    let offset = Duration::from_nanos(seed % period.as_nanos().max(1) as u64);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                Some(SockCmd::Ping(reply)) => {
                    next_ref += 1;
                    if ws::send(&mut ws, &ClientFrame::Ping, next_ref).await.is_err() {
                        shared.dropped("send failed".into());
                        break;
                    }
                    pending = Some((next_ref, Instant::now(), Some(reply)));
                }
                Some(SockCmd::Quit) | None => {
                    let _ = ws.close(None).await;
                    shared.live.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
            },
            _ = ticker.tick(), if ping_every.is_some() => {
                match &pending {
                    // A checker waits on this socket's ping: leave it be.
                    Some((_, _, Some(_))) => continue,
                    Some((_, _, None)) => {
                        shared.ping_missing.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {}
                }
                next_ref += 1;
                if ws::send(&mut ws, &ClientFrame::Ping, next_ref).await.is_err() {
                    shared.dropped("send failed".into());
                    break;
                }
                pending = Some((next_ref, Instant::now(), None));
            }
            incoming = ws.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let text = text.as_str();
                    shared.messages.fetch_add(1, Ordering::Relaxed);
                    if text.starts_with(r#"{"type":"message""#) {
                        shared.record_round(text);
                    } else if text.starts_with(r#"{"type":"ack""#) {
                        if let Some((reference, sent, _)) = &pending {
                            let wanted = format!(r#""ref":{reference},"#);
                            if text.contains(&wanted) {
                                let us = sent.elapsed().as_micros().min(u32::MAX as u128) as u32;
                                let (_, _, waiter) = pending.take().unwrap();
                                match waiter {
                                    Some(reply) => { let _ = reply.send(us); }
                                    None => shared.ping_us.lock().unwrap().push(us),
                                }
                            }
                        }
                    } else if text.starts_with(r#"{"type":"unbound""#) {
                        shared.dropped(format!("unbound: {text}"));
                    }
                }
                Some(Ok(Message::Close(close))) => {
                    shared.dropped(format!("closed by server: {close:?}"));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    shared.dropped(format!("read error: {e}"));
                    break;
                }
                None => {
                    shared.dropped("EOF".into());
                    break;
                }
            },
        }
    }
    shared.live.fetch_sub(1, Ordering::Relaxed);
}

/// The worker side of a shard: executes commands, emits events.
pub async fn worker_loop(mut cmds: mpsc::UnboundedReceiver<Cmd>, emit: Emit) {
    let shared = Arc::new(Shared {
        live: AtomicUsize::new(0),
        dropped: AtomicUsize::new(0),
        in_room: AtomicUsize::new(0),
        messages: AtomicU64::new(0),
        rounds: (0..MAX_ROUNDS).map(|_| RoundSlot { count: AtomicU32::new(0), first: AtomicU64::new(0), last: AtomicU64::new(0) }).collect(),
        close_reasons: Mutex::new(Vec::new()),
        ping_us: Mutex::new(Vec::new()),
        ping_missing: AtomicU64::new(0),
        emit: emit.clone(),
    });
    let mut sockets: Vec<mpsc::Sender<SockCmd>> = Vec::new();
    while let Some(cmd) = cmds.recv().await {
        match cmd {
            Cmd::Open(spec) => {
                let event = open(&spec, &shared, &mut sockets).await;
                emit(event);
            }
            Cmd::Check { timeout_ms } => {
                let mut waits = Vec::with_capacity(sockets.len());
                for socket in &sockets {
                    let (tx, rx) = oneshot::channel();
                    if socket.send(SockCmd::Ping(tx)).await.is_ok() {
                        waits.push(rx);
                    }
                }
                let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
                let mut ping_us = Vec::with_capacity(waits.len());
                for rx in waits {
                    if let Ok(Ok(us)) = tokio::time::timeout_at(deadline, rx).await {
                        ping_us.push(us);
                    }
                }
                emit(Event::Checked {
                    alive: ping_us.len(),
                    dropped: shared.dropped.load(Ordering::Relaxed),
                    close_reasons: shared.close_reasons.lock().unwrap().clone(),
                    ping_us,
                });
            }
            Cmd::Churn(spec) => emit(churn(&spec).await),
            Cmd::Stats => {
                let rounds = shared
                    .rounds
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.count.load(Ordering::Relaxed) > 0)
                    .map(|(i, s)| RoundStat {
                        round: i as u32,
                        count: s.count.load(Ordering::Relaxed),
                        first_ns: s.first.load(Ordering::Relaxed),
                        last_ns: s.last.load(Ordering::Relaxed),
                    })
                    .collect();
                emit(Event::Stats {
                    live: shared.live.load(Ordering::Relaxed),
                    dropped: shared.dropped.load(Ordering::Relaxed),
                    messages: shared.messages.load(Ordering::Relaxed),
                    cpu_ns: sys::self_cpu_ns(),
                    rounds,
                    ping_us: std::mem::take(&mut *shared.ping_us.lock().unwrap()),
                    ping_missing: shared.ping_missing.load(Ordering::Relaxed),
                });
            }
            Cmd::Quit => break,
        }
    }
    for socket in &sockets {
        let _ = socket.send(SockCmd::Quit).await;
    }
    // Let the close frames go out.
    for _ in 0..100 {
        if shared.live.load(Ordering::Relaxed) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn open(spec: &OpenSpec, shared: &Arc<Shared>, sockets: &mut Vec<mpsc::Sender<SockCmd>>) -> Event {
    let ping_every = (spec.ping_every_ms > 0).then(|| Duration::from_millis(spec.ping_every_ms));
    let results: Vec<Result<(Ws, u32, bool), String>> = futures_util::stream::iter(0..spec.count)
        .map(|i| {
            let index = spec.first_index + i;
            let cookie = (!spec.cookies.is_empty()).then(|| spec.cookies[index % spec.cookies.len()].as_str());
            async move {
                let started = Instant::now();
                let welcomed = ws::connect(&spec.endpoint, ws::source_ip(index), cookie, false).await?;
                let us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
                let bound = welcomed.user_id.is_some();
                let mut socket = welcomed.ws;
                if let Some(room) = &spec.room {
                    match ws::request(&mut socket, &ClientFrame::Join { room: room.clone(), since: None }, 1).await? {
                        Ok(_) => {}
                        Err(e) => return Err(format!("join: {} {}", e.code, e.message)),
                    }
                }
                Ok((socket, us, bound))
            }
        })
        .buffer_unordered(spec.concurrency.max(1))
        .collect()
        .await;
    let (mut opened, mut failed, mut unbound) = (0, 0, 0);
    let mut errors = Vec::new();
    let mut connect_us = Vec::with_capacity(results.len());
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok((socket, us, bound)) => {
                opened += 1;
                if !bound {
                    unbound += 1;
                }
                connect_us.push(us);
                let (tx, rx) = mpsc::channel(4);
                sockets.push(tx);
                shared.live.fetch_add(1, Ordering::Relaxed);
                if spec.room.is_some() {
                    shared.in_room.fetch_add(1, Ordering::Release);
                }
                let seed = ((spec.first_index + i) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                tokio::spawn(run_socket(socket, rx, shared.clone(), ping_every, seed));
            }
            Err(e) => {
                failed += 1;
                if errors.len() < 10 {
                    errors.push(e);
                }
            }
        }
    }
    Event::Opened { opened, failed, unbound, errors, connect_us }
}

/// Handshake churn: `concurrency` loops of connect → welcome → reset, for a while.
async fn churn(spec: &ChurnSpec) -> Event {
    let started = Instant::now();
    let until = started + Duration::from_millis(spec.duration_ms);
    let counter = Arc::new(AtomicUsize::new(0));
    let loops = (0..spec.concurrency.max(1)).map(|_| {
        let counter = counter.clone();
        async move {
            let (mut ok, mut failed, mut errors, mut lat) = (0usize, 0usize, Vec::new(), Vec::new());
            while Instant::now() < until {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let cookie = spec.cookies[n % spec.cookies.len()].as_str();
                let source = ws::source_ip((n % spec.addresses.max(1)) * ws::PER_SOURCE_ADDRESS);
                let t0 = Instant::now();
                match ws::connect(&spec.endpoint, source, Some(cookie), true).await {
                    Ok(w) if w.user_id.is_some() => {
                        lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        ok += 1;
                        // Dropped with SO_LINGER 0: a reset, no TIME_WAIT.
                        drop(w);
                    }
                    Ok(_) => {
                        failed += 1;
                        if errors.len() < 5 {
                            errors.push("welcome without a user: cookie not accepted".to_string());
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        if errors.len() < 5 {
                            errors.push(e);
                        }
                    }
                }
            }
            (ok, failed, errors, lat)
        }
    });
    let outcomes = futures_util::future::join_all(loops).await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let (mut ok, mut failed, mut errors, mut lat_us) = (0, 0, Vec::new(), Vec::new());
    for (o, f, e, l) in outcomes {
        ok += o;
        failed += f;
        errors.extend(e.into_iter().take(10usize.saturating_sub(errors.len())));
        lat_us.extend(l);
    }
    Event::Churned { ok, failed, errors, lat_us, elapsed_ms }
}

/// `loadgen worker`: commands on stdin, events on stdout, one JSON object a line.
pub fn worker_main() -> ! {
    sys::raise_nofile();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Cmd>(&line) {
                Ok(cmd) => {
                    if tx.send(cmd).is_err() {
                        break;
                    }
                }
                Err(e) => eprintln!("loadgen worker: bad command: {e}"),
            }
        }
        let _ = tx.send(Cmd::Quit);
    });
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let emit: Emit = Arc::new(move |event: Event| {
        let line = serde_json::to_string(&event).expect("events serialize");
        let mut out = out.lock().unwrap();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    });
    runtime.block_on(worker_loop(rx, emit));
    std::process::exit(0)
}

/// The coordinator's handle on a shard, wherever it runs.
pub struct Shard {
    pub index: usize,
    pub sockets: usize,
    cmds: CmdSink,
    replies: mpsc::UnboundedReceiver<Event>,
}

enum CmdSink {
    Local(mpsc::UnboundedSender<Cmd>),
    Child { stdin: std::process::ChildStdin, child: std::process::Child },
}

impl Shard {
    fn route(index: usize, replies: mpsc::UnboundedSender<Event>, rounds: mpsc::UnboundedSender<(usize, u32)>) -> Emit {
        Arc::new(move |event: Event| match event {
            Event::RoundDone { round } => {
                let _ = rounds.send((index, round));
            }
            other => {
                let _ = replies.send(other);
            }
        })
    }

    /// A shard running as a task of this process.
    pub fn local(index: usize, rounds: mpsc::UnboundedSender<(usize, u32)>) -> Shard {
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (reply_tx, replies) = mpsc::unbounded_channel();
        tokio::spawn(worker_loop(cmd_rx, Shard::route(index, reply_tx, rounds)));
        Shard { index, sockets: 0, cmds: CmdSink::Local(cmd_tx), replies }
    }

    /// A shard running as a child `loadgen worker` process.
    pub fn spawn(index: usize, exe: &std::path::Path, rounds: mpsc::UnboundedSender<(usize, u32)>) -> std::io::Result<Shard> {
        let mut child = std::process::Command::new(exe)
            .arg("worker")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (reply_tx, replies) = mpsc::unbounded_channel();
        let route = Shard::route(index, reply_tx, rounds);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Event>(&line) {
                    Ok(event) => route(event),
                    Err(e) => route(Event::Fatal { error: format!("worker {index}: bad event {e}: {line}") }),
                }
            }
            route(Event::Fatal { error: format!("worker {index} exited") });
        });
        Ok(Shard { index, sockets: 0, cmds: CmdSink::Child { stdin, child }, replies })
    }

    pub fn send(&mut self, cmd: &Cmd) -> Result<(), String> {
        match &mut self.cmds {
            CmdSink::Local(tx) => tx.send(cmd.clone()).map_err(|_| "shard stopped".to_string()),
            CmdSink::Child { stdin, .. } => {
                let line = serde_json::to_string(cmd).map_err(|e| e.to_string())?;
                writeln!(stdin, "{line}").and_then(|_| stdin.flush()).map_err(|e| format!("worker stdin: {e}"))
            }
        }
    }

    pub async fn reply(&mut self) -> Result<Event, String> {
        match self.replies.recv().await {
            Some(Event::Fatal { error }) => Err(error),
            Some(event) => Ok(event),
            None => Err("shard stopped".into()),
        }
    }

    pub async fn call(&mut self, cmd: &Cmd) -> Result<Event, String> {
        self.send(cmd)?;
        self.reply().await
    }

    /// Closes the shard's sockets and waits for it to finish.
    pub async fn quit(mut self) {
        let _ = self.send(&Cmd::Quit);
        if let CmdSink::Child { mut child, stdin } = self.cmds {
            drop(stdin);
            for _ in 0..200 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        } else {
            // The local worker closes its sockets in the background; give it a moment.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
