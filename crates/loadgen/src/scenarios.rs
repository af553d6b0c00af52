//! The scenarios. Each runs against an [`Endpoint`] through a [`Bench`]
//! (shards of client sockets plus the coordinator's own few sockets) and
//! returns a report that asserts nothing: callers check correctness (tests)
//! or print a markdown row (the binary).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tether_protocol::ClientFrame;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::http::{self, Account};
use crate::shard::{ChurnSpec, Cmd, Event, OpenSpec, Shard, MAX_ROUNDS, ROUND_MARK};
use crate::sys::{self, percentile};
use crate::ws::{self, Endpoint};

pub const PASSWORD: &str = "loadgen-password";
/// Sockets joining a room between two waits for the presence backlog to drain.
pub const ROOM_JOIN_BATCH: usize = 200;

/// How the client side is laid out.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Sockets per shard; a run needing more opens more shards.
    pub per_process: usize,
    /// `Some(exe)`: shards are child `exe worker` processes (always when
    /// more than one shard is needed); `None`: every shard is a local task.
    pub worker_exe: Option<PathBuf>,
    /// Use child processes even for a single shard.
    pub force_workers: bool,
    pub connect_concurrency: usize,
}

impl Default for Layout {
    fn default() -> Self {
        Layout { per_process: 10_000, worker_exe: None, force_workers: false, connect_concurrency: 128 }
    }
}

pub struct Bench {
    pub endpoint: Endpoint,
    /// Other nodes of the same cluster: sockets are spread over `endpoint`
    /// and these, a batch each in turn (`--also-url`).
    pub others: Vec<Endpoint>,
    batches: usize,
    pub server_pid: Option<u32>,
    pub layout: Layout,
    pub shards: Vec<Shard>,
    rounds_tx: mpsc::UnboundedSender<(usize, u32)>,
    rounds_rx: mpsc::UnboundedReceiver<(usize, u32)>,
    next_index: usize,
    run_tag: String,
    registered: usize,
}

/// What opening a batch of sockets gave.
#[derive(Debug, Default, Clone)]
pub struct Opened {
    pub opened: usize,
    pub failed: usize,
    pub unbound: usize,
    pub errors: Vec<String>,
    pub connect_us: Vec<u64>,
    pub elapsed: Duration,
}

#[derive(Debug, Default, Clone)]
pub struct Checked {
    pub alive: usize,
    pub dropped: usize,
    pub close_reasons: Vec<String>,
    pub ping_us: Vec<u64>,
}

impl Bench {
    pub fn new(endpoint: Endpoint, server_pid: Option<u32>, layout: Layout) -> Bench {
        let (rounds_tx, rounds_rx) = mpsc::unbounded_channel();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        Bench {
            endpoint,
            others: Vec::new(),
            batches: 0,
            server_pid,
            layout,
            shards: Vec::new(),
            rounds_tx,
            rounds_rx,
            next_index: 0,
            run_tag: format!("{:x}", nanos % 0xffff_ffff),
            registered: 0,
        }
    }

    /// Every node: `endpoint` first.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        std::iter::once(self.endpoint.clone()).chain(self.others.iter().cloned()).collect()
    }

    /// The node the next batch of sockets goes to, in turn.
    fn next_batch_endpoint(&mut self) -> Endpoint {
        let all = self.endpoints();
        self.batches += 1;
        all[(self.batches - 1) % all.len()].clone()
    }

    pub fn rss_kib(&self) -> Option<u64> {
        self.server_pid.and_then(sys::rss_kib)
    }

    pub fn server_cpu_ns(&self) -> Option<u64> {
        self.server_pid.and_then(sys::cpu_ns_of)
    }

    /// Registers `n` users through `POST /api/auth/register` (each gets a session cookie).
    pub async fn register_users(&mut self, n: usize) -> Result<Vec<Account>, String> {
        let base = self.registered;
        self.registered += n;
        let addr = self.endpoint.addr;
        let tag = self.run_tag.clone();
        let results: Vec<Result<Account, String>> = futures_util::stream::iter(base..base + n)
            .map(|i| {
                let tag = tag.clone();
                async move {
                    http::register(addr, &format!("lg-{tag}-{i}@bench.test"), &format!("Bench {i}"), PASSWORD)
                        .await
                        .map_err(|e| e.to_string())
                }
            })
            .buffer_unordered(4)
            .collect()
            .await;
        results.into_iter().collect()
    }

    fn new_shard(&mut self, need_children: bool) -> Result<(), String> {
        let index = self.shards.len();
        let shard = match (&self.layout.worker_exe, need_children || self.layout.force_workers) {
            (Some(exe), true) => Shard::spawn(index, exe, self.rounds_tx.clone()).map_err(|e| format!("spawn worker: {e}"))?,
            _ => Shard::local(index, self.rounds_tx.clone()),
        };
        self.shards.push(shard);
        Ok(())
    }

    /// Opens `count` more sockets over the shards (new shards as needed).
    ///
    /// Sockets that join a room do so in batches of [`ROOM_JOIN_BATCH`],
    /// waiting after each batch until the clients have read every `presence`
    /// frame it caused: the server sends the whole member list to every
    /// member on every join (O(N²) frames to build a room of N) and drops a
    /// socket whose 256-frame queue fills, so unpaced joins evict members.
    pub async fn open(&mut self, count: usize, cookies: &[String], room: Option<&str>, ping_every_ms: u64) -> Result<Opened, String> {
        if room.is_none() {
            return self.open_batch(count, cookies, None, ping_every_ms).await;
        }
        let started = Instant::now();
        let mut out = Opened::default();
        let mut left = count;
        while left > 0 {
            let take = left.min(ROOM_JOIN_BATCH);
            let batch = self.open_batch(take, cookies, room, ping_every_ms).await?;
            out.opened += batch.opened;
            out.failed += batch.failed;
            out.unbound += batch.unbound;
            out.errors.extend(batch.errors);
            out.connect_us.extend(batch.connect_us);
            left -= take;
            self.settle().await?;
        }
        out.elapsed = started.elapsed();
        out.connect_us.sort_unstable();
        Ok(out)
    }

    /// Waits until no shard has received a frame for a while.
    pub async fn settle(&mut self) -> Result<(), String> {
        let mut last = u64::MAX;
        let mut quiet = 0;
        for _ in 0..6000 {
            let total: u64 = self.stats().await?.iter().map(|e| if let Event::Stats { messages, .. } = e { *messages } else { 0 }).sum();
            if total == last {
                quiet += 1;
                if quiet >= 2 {
                    return Ok(());
                }
            } else {
                quiet = 0;
            }
            last = total;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    async fn open_batch(&mut self, count: usize, cookies: &[String], room: Option<&str>, ping_every_ms: u64) -> Result<Opened, String> {
        let per = self.layout.per_process.max(1);
        let total_after: usize = self.shards.iter().map(|s| s.sockets).sum::<usize>() + count;
        let need_children = total_after.div_ceil(per) > 1;
        let mut left = count;
        let mut asked = Vec::new();
        let started = Instant::now();
        let endpoint = self.next_batch_endpoint();
        let mut i = 0;
        while left > 0 {
            if i == self.shards.len() {
                self.new_shard(need_children)?;
            }
            let room_in_shard = per.saturating_sub(self.shards[i].sockets);
            let take = room_in_shard.min(left);
            if take > 0 {
                let spec = OpenSpec {
                    endpoint: endpoint.clone(),
                    count: take,
                    first_index: self.next_index,
                    cookies: cookies.to_vec(),
                    room: room.map(String::from),
                    ping_every_ms,
                    concurrency: self.layout.connect_concurrency,
                };
                self.next_index += take;
                self.shards[i].sockets += take;
                self.shards[i].send(&Cmd::Open(spec))?;
                asked.push(i);
                left -= take;
            }
            i += 1;
        }
        let mut out = Opened::default();
        for i in asked {
            match self.shards[i].reply().await? {
                Event::Opened { opened, failed, unbound, errors, connect_us } => {
                    out.opened += opened;
                    out.failed += failed;
                    out.unbound += unbound;
                    out.errors.extend(errors);
                    out.connect_us.extend(connect_us.into_iter().map(u64::from));
                    // Failed sockets are not held.
                    self.shards[i].sockets -= failed;
                }
                other => return Err(format!("unexpected reply to open: {other:?}")),
            }
        }
        out.elapsed = started.elapsed();
        out.connect_us.sort_unstable();
        Ok(out)
    }

    /// Pings every held socket; counts those that answer.
    pub async fn check(&mut self) -> Result<Checked, String> {
        for shard in &mut self.shards {
            shard.send(&Cmd::Check { timeout_ms: 30_000 })?;
        }
        let mut out = Checked::default();
        for shard in &mut self.shards {
            match shard.reply().await? {
                Event::Checked { alive, dropped, close_reasons, ping_us } => {
                    out.alive += alive;
                    out.dropped += dropped;
                    out.close_reasons.extend(close_reasons);
                    out.ping_us.extend(ping_us.into_iter().map(u64::from));
                }
                other => return Err(format!("unexpected reply to check: {other:?}")),
            }
        }
        out.ping_us.sort_unstable();
        Ok(out)
    }

    pub async fn stats(&mut self) -> Result<Vec<Event>, String> {
        for shard in &mut self.shards {
            shard.send(&Cmd::Stats)?;
        }
        let mut out = Vec::new();
        for shard in &mut self.shards {
            out.push(shard.reply().await?);
        }
        Ok(out)
    }

    pub fn held(&self) -> usize {
        self.shards.iter().map(|s| s.sockets).sum()
    }

    /// A source address for a socket the coordinator itself holds.
    fn next_source(&mut self) -> std::net::Ipv4Addr {
        self.next_index += 1;
        ws::source_ip(self.next_index - 1)
    }

    pub async fn shutdown(mut self) {
        for shard in self.shards.drain(..) {
            shard.quit().await;
        }
    }
}

fn cookies(accounts: &[Account]) -> Vec<String> {
    accounts.iter().map(|a| a.cookie.clone()).collect()
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

// ---------------------------------------------------------------- idle

#[derive(Debug, Clone)]
pub struct IdleReport {
    pub sockets: usize,
    pub opened: Opened,
    pub checked: Checked,
    /// Before any user was registered.
    pub rss_start_kib: Option<u64>,
    pub rss_before_kib: Option<u64>,
    pub rss_connected_kib: Option<u64>,
    pub rss_held_kib: Option<u64>,
    pub hold: Duration,
}

impl IdleReport {
    pub fn kib_per_socket(&self) -> Option<f64> {
        Some((self.rss_held_kib? as f64 - self.rss_before_kib? as f64) / self.sockets.max(1) as f64)
    }

    pub fn dropped(&self) -> usize {
        self.checked.dropped + self.opened.opened.saturating_sub(self.checked.alive)
    }
}

pub async fn idle(bench: &mut Bench, sockets: usize, users: usize, hold: Duration) -> Result<IdleReport, String> {
    let rss_start_kib = bench.rss_kib();
    let accounts = bench.register_users(users).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before_kib = bench.rss_kib();
    let opened = bench.open(sockets, &cookies(&accounts), None, 0).await?;
    let rss_connected_kib = bench.rss_kib();
    tokio::time::sleep(hold).await;
    let rss_held_kib = bench.rss_kib();
    let checked = bench.check().await?;
    Ok(IdleReport { sockets, opened, checked, rss_start_kib, rss_before_kib, rss_connected_kib, rss_held_kib, hold })
}

// ---------------------------------------------------------------- handshake

/// What a rate scenario (handshake, login) gave: operations done over a
/// stretch of time with `concurrency` in flight.
#[derive(Debug, Clone)]
pub struct RateReport {
    pub ok: usize,
    pub failed: usize,
    pub errors: Vec<String>,
    /// Latency of each successful operation, µs, sorted.
    pub lat_us: Vec<u64>,
    pub elapsed: Duration,
    pub server_cpu_ns: Option<u64>,
    pub concurrency: usize,
}

impl RateReport {
    pub fn per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Server CPU per successful operation, µs.
    pub fn server_us_each(&self) -> Option<f64> {
        self.server_cpu_ns.map(|c| c as f64 / 1000.0 / self.ok.max(1) as f64)
    }
}

pub async fn handshake(bench: &mut Bench, users: usize, duration: Duration, concurrency: usize, addresses: usize) -> Result<RateReport, String> {
    let accounts = bench.register_users(users).await?;
    if bench.shards.is_empty() {
        bench.new_shard(false)?;
    }
    let cpu0 = bench.server_cpu_ns();
    let spec = ChurnSpec {
        endpoint: bench.endpoint.clone(),
        cookies: cookies(&accounts),
        duration_ms: duration.as_millis() as u64,
        concurrency,
        addresses,
    };
    let reply = bench.shards[0].call(&Cmd::Churn(spec)).await?;
    let cpu1 = bench.server_cpu_ns();
    match reply {
        Event::Churned { ok, failed, errors, lat_us, elapsed_ms } => {
            let mut lat_us: Vec<u64> = lat_us.into_iter().map(u64::from).collect();
            lat_us.sort_unstable();
            Ok(RateReport {
                ok,
                failed,
                errors,
                lat_us,
                elapsed: Duration::from_millis(elapsed_ms),
                server_cpu_ns: cpu0.zip(cpu1).map(|(a, b)| b - a),
                concurrency,
            })
        }
        other => Err(format!("unexpected reply to churn: {other:?}")),
    }
}

// ---------------------------------------------------------------- login

/// Loopback source addresses the login scenario spreads its requests over:
/// the contract allows 60 attempts a minute from one address, and one core
/// verifies more than that many argon2 hashes a second.
const LOGIN_SOURCES: usize = 250;

/// `concurrency` clients log `users` registered users in (`POST /api/auth/login`,
/// right password) over and over for `duration`, each request from the next of
/// [`LOGIN_SOURCES`] loopback addresses. Each login verifies an argon2 hash and
/// writes a session row: the figure is the database's and argon2's together.
pub async fn login(bench: &mut Bench, users: usize, duration: Duration, concurrency: usize) -> Result<RateReport, String> {
    let accounts = Arc::new(bench.register_users(users.max(1)).await?);
    let addr = bench.endpoint.addr;
    let next = Arc::new(AtomicUsize::new(0));
    let cpu0 = bench.server_cpu_ns();
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (accounts, next) = (accounts.clone(), next.clone());
            tokio::spawn(async move {
                let (mut lat_us, mut errors, mut failed) = (Vec::new(), Vec::new(), 0usize);
                while Instant::now() < deadline {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let source = std::net::Ipv4Addr::new(127, 0, 0, (2 + n % LOGIN_SOURCES) as u8);
                    let account = &accounts[n % accounts.len()];
                    let t = Instant::now();
                    match http::login(Some(source.into()), addr, &account.email, PASSWORD).await {
                        Ok(_) => lat_us.push(t.elapsed().as_micros() as u64),
                        Err(e) => {
                            failed += 1;
                            if errors.len() < 5 {
                                errors.push(e.to_string());
                            }
                        }
                    }
                }
                (lat_us, errors, failed)
            })
        })
        .collect();
    let mut report = RateReport { ok: 0, failed: 0, errors: Vec::new(), lat_us: Vec::new(), elapsed: Duration::ZERO, server_cpu_ns: None, concurrency };
    for worker in workers {
        let (lat_us, errors, failed) = worker.await.map_err(|e| format!("login worker: {e}"))?;
        report.lat_us.extend(lat_us);
        report.errors.extend(errors.into_iter().take(5usize.saturating_sub(report.errors.len())));
        report.failed += failed;
    }
    report.elapsed = started.elapsed();
    report.server_cpu_ns = cpu0.zip(bench.server_cpu_ns()).map(|(a, b)| b - a);
    report.ok = report.lat_us.len();
    report.lat_us.sort_unstable();
    Ok(report)
}

// ---------------------------------------------------------------- fanout

#[derive(Debug, Clone)]
pub struct FanoutReport {
    /// Member sockets in the room, the sender's included.
    pub room_size: usize,
    pub receivers: usize,
    pub rounds: usize,
    pub complete_rounds: usize,
    pub deliveries: u64,
    pub expected_deliveries: u64,
    /// Send → last receipt, per round, µs, sorted.
    pub latency_us: Vec<u64>,
    /// Send → first receipt, per round, µs, sorted.
    pub first_us: Vec<u64>,
    pub build: Duration,
    pub open_failed: usize,
    pub sender_errors: usize,
    /// Generator CPU per received frame over the rounds, ns.
    pub gen_ns_per_msg: Option<f64>,
    /// Server CPU per delivered message over the rounds, ns.
    pub server_ns_per_delivery: Option<f64>,
    pub dropped: usize,
}

impl FanoutReport {
    pub fn msgs_per_sec(&self) -> f64 {
        let busy: u64 = self.latency_us.iter().sum();
        self.deliveries as f64 / (busy as f64 / 1e6).max(1e-9)
    }

    /// The generator's own receive cost for one round on one core, ms.
    pub fn generator_floor_ms(&self) -> Option<f64> {
        self.gen_ns_per_msg.map(|ns| ns * self.receivers as f64 / 1e6)
    }
}

/// The 128-byte text of round `round`.
pub fn round_text(round: usize) -> String {
    let mut text = format!("{ROUND_MARK}{round:08}-");
    while text.len() < 128 {
        text.push('x');
    }
    text
}

pub async fn fanout(bench: &mut Bench, sizes: &[usize], users: usize, rounds: usize, gap: Duration) -> Result<Vec<FanoutReport>, String> {
    let accounts = bench.register_users(users.max(1)).await?;
    let cookies = cookies(&accounts);
    let room = http::create_room(bench.endpoint.addr, &accounts[0].cookie, "fanout").await.map_err(|e| e.to_string())?;
    // The sender: one bound socket in the room, driven by its own task.
    let source = bench.next_source();
    let mut sender = ws::connect(&bench.endpoint, source, Some(&accounts[0].cookie), false).await?.ws;
    ws::request(&mut sender, &ClientFrame::Join { room: room.clone(), since: None }, 1).await?.map_err(|e| format!("sender join: {}", e.code))?;
    let (text_tx, mut text_rx) = mpsc::unbounded_channel::<(String, tokio::sync::oneshot::Sender<u64>)>();
    let sender_errors = Arc::new(AtomicUsize::new(0));
    let sender_task = {
        let room = room.clone();
        let errors = sender_errors.clone();
        tokio::spawn(async move {
            let mut reference = 10i64;
            loop {
                tokio::select! {
                    next = text_rx.recv() => {
                        let Some((text, sent_at)) = next else { break };
                        reference += 1;
                        let _ = sent_at.send(sys::mono_ns());
                        if ws::send(&mut sender, &ClientFrame::Send { room: room.clone(), text }, reference).await.is_err() {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    incoming = sender.next() => match incoming {
                        Some(Ok(Message::Text(t))) => {
                            if t.as_str().starts_with(r#"{"type":"ack""#) && t.as_str().contains(r#""ok":false"#) {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => { errors.fetch_add(1, Ordering::Relaxed); break; }
                    }
                }
            }
            let _ = sender.close(None).await;
        })
    };

    let mut sizes = sizes.to_vec();
    sizes.sort_unstable();
    let mut reports = Vec::new();
    let mut next_round = 0usize;
    for &size in &sizes {
        let receivers_now = bench.held();
        let add = size.saturating_sub(1).saturating_sub(receivers_now);
        let t0 = Instant::now();
        let opened = bench.open(add, &cookies, Some(&room), 0).await?;
        // Every socket's presence backlog is written before its ping's ack.
        let flushed = bench.check().await?;
        let build = t0.elapsed();
        let receivers = bench.held();
        eprintln!(
            "fanout: room of {} built in {:.1} s ({} failed, {} alive)",
            receivers + 1,
            build.as_secs_f64(),
            opened.failed,
            flushed.alive
        );
        // Drain stale round notices.
        while bench.rounds_rx.try_recv().is_ok() {}
        let before = bench.stats().await?;
        let server_cpu0 = bench.server_cpu_ns();
        let first_round = next_round;
        let mut sent_ns = Vec::new();
        let mut complete_rounds = 0;
        for _ in 0..rounds {
            if next_round >= MAX_ROUNDS {
                break;
            }
            let round = next_round;
            next_round += 1;
            let (tx, rx) = tokio::sync::oneshot::channel();
            text_tx.send((round_text(round), tx)).map_err(|_| "sender stopped".to_string())?;
            sent_ns.push(rx.await.map_err(|_| "sender stopped".to_string())?);
            let shards_in_room: HashSet<usize> = bench.shards.iter().filter(|s| s.sockets > 0).map(|s| s.index).collect();
            let mut done = HashSet::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while done.len() < shards_in_room.len() {
                match tokio::time::timeout_at(deadline, bench.rounds_rx.recv()).await {
                    Ok(Some((shard, r))) if r as usize == round => {
                        done.insert(shard);
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            if done.len() == shards_in_room.len() {
                complete_rounds += 1;
            }
            tokio::time::sleep(gap).await;
        }
        let server_cpu1 = bench.server_cpu_ns();
        let after = bench.stats().await?;
        let (mut gen_cpu, mut gen_msgs, mut dropped) = (0u64, 0u64, 0usize);
        let mut last = vec![0u64; sent_ns.len()];
        let mut first = vec![u64::MAX; sent_ns.len()];
        let mut deliveries = 0u64;
        let mut seen_pids = HashSet::new();
        for (b, a) in before.iter().zip(after.iter()) {
            if let (Event::Stats { cpu_ns: c0, messages: m0, .. }, Event::Stats { cpu_ns: c1, messages: m1, rounds, dropped: d, .. }) = (b, a) {
                // Local shards share the process CPU clock: count it once.
                if seen_pids.insert((*c0, *c1)) {
                    gen_cpu += c1 - c0;
                }
                gen_msgs += m1 - m0;
                dropped += d;
                for stat in rounds {
                    let r = stat.round as usize;
                    if r >= first_round && r < first_round + sent_ns.len() {
                        let k = r - first_round;
                        deliveries += stat.count as u64;
                        last[k] = last[k].max(stat.last_ns);
                        first[k] = first[k].min(stat.first_ns);
                    }
                }
            }
        }
        let mut latency_us: Vec<u64> =
            sent_ns.iter().zip(&last).filter(|(_, l)| **l > 0).map(|(s, l)| l.saturating_sub(*s) / 1000).collect();
        latency_us.sort_unstable();
        let mut first_us: Vec<u64> =
            sent_ns.iter().zip(&first).filter(|(_, f)| **f < u64::MAX).map(|(s, f)| f.saturating_sub(*s) / 1000).collect();
        first_us.sort_unstable();
        let report = FanoutReport {
            room_size: receivers + 1,
            receivers,
            rounds: sent_ns.len(),
            complete_rounds,
            deliveries,
            expected_deliveries: (receivers * sent_ns.len()) as u64,
            latency_us,
            first_us,
            build,
            open_failed: opened.failed,
            sender_errors: sender_errors.load(Ordering::Relaxed),
            gen_ns_per_msg: (gen_msgs > 0).then(|| gen_cpu as f64 / gen_msgs as f64),
            server_ns_per_delivery: server_cpu0.zip(server_cpu1).filter(|_| deliveries > 0).map(|(a, b)| (b - a) as f64 / deliveries as f64),
            dropped,
        };
        eprintln!(
            "fanout {}: p50 {:.2} ms p99 {:.2} ms max {:.2} ms, {}/{} delivered",
            report.room_size,
            ms(percentile(&report.latency_us, 50.0)),
            ms(percentile(&report.latency_us, 99.0)),
            ms(report.latency_us.last().copied().unwrap_or(0)),
            report.deliveries,
            report.expected_deliveries
        );
        reports.push(report);
    }
    drop(text_tx);
    let _ = sender_task.await;
    Ok(reports)
}

// ---------------------------------------------------------------- rebind

#[derive(Debug, Clone)]
pub struct RebindReport {
    pub connected: usize,
    pub cycles: usize,
    pub login_us: Vec<u64>,
    pub logout_us: Vec<u64>,
    pub failures: Vec<String>,
    pub open_failed: usize,
    pub dropped: usize,
}

impl RebindReport {
    pub fn all_us(&self) -> Vec<u64> {
        let mut all: Vec<u64> = self.login_us.iter().chain(&self.logout_us).copied().collect();
        all.sort_unstable();
        all
    }
}

pub async fn rebind(bench: &mut Bench, sockets: usize, users: usize, rebinders: usize, cycles: usize) -> Result<RebindReport, String> {
    let accounts = bench.register_users(users.max(1)).await?;
    let all_cookies = cookies(&accounts);
    let rebinders = rebinders.clamp(1, sockets.max(1));
    let background = bench.open(sockets - rebinders, &all_cookies, None, 0).await?;
    let mut live = Vec::with_capacity(rebinders);
    let mut failures = Vec::new();
    for i in 0..rebinders {
        let account = &accounts[i % accounts.len()];
        let source = bench.next_source();
        let w = ws::connect(&bench.endpoint, source, Some(&account.cookie), false).await?;
        if w.user_id.as_deref() != Some(account.user_id.as_str()) {
            failures.push(format!("socket {i} did not start bound"));
        }
        live.push((w.ws, account.clone()));
    }
    let (mut login_us, mut logout_us) = (Vec::with_capacity(cycles), Vec::with_capacity(cycles));
    let mut reference = 100i64;
    for c in 0..cycles {
        let (socket, account) = &mut live[c % rebinders];
        reference += 1;
        let t = Instant::now();
        match ws::request(socket, &ClientFrame::Logout, reference).await? {
            Ok(_) => logout_us.push(t.elapsed().as_micros() as u64),
            Err(e) => failures.push(format!("logout: {}", e.code)),
        }
        let ticket = http::ticket(bench.endpoint.addr, &account.cookie).await.map_err(|e| e.to_string())?;
        reference += 1;
        let t = Instant::now();
        match ws::request(socket, &ClientFrame::Login { ticket }, reference).await? {
            Ok(fields) => {
                login_us.push(t.elapsed().as_micros() as u64);
                if fields.get("user").and_then(|u| u.get("id")).and_then(|i| i.as_str()) != Some(account.user_id.as_str()) {
                    failures.push("login ack names another user".into());
                }
            }
            Err(e) => failures.push(format!("login: {}", e.code)),
        }
    }
    login_us.sort_unstable();
    logout_us.sort_unstable();
    let checked = bench.check().await?;
    for (mut socket, _) in live {
        let _ = socket.close(None).await;
    }
    Ok(RebindReport {
        connected: background.opened + rebinders,
        cycles,
        login_us,
        logout_us,
        failures,
        open_failed: background.failed,
        dropped: checked.dropped + background.opened.saturating_sub(checked.alive),
    })
}

// ---------------------------------------------------------------- soak

#[derive(Debug, Clone)]
pub struct SoakReport {
    pub sockets: usize,
    pub duration: Duration,
    pub opened: Opened,
    pub rss_samples_kib: Vec<u64>,
    pub ping_us: Vec<u64>,
    pub ping_missing: u64,
    pub dropped: usize,
    pub close_reasons: Vec<String>,
}

impl SoakReport {
    pub fn rss_growth_kib(&self) -> Option<i64> {
        Some(*self.rss_samples_kib.last()? as i64 - *self.rss_samples_kib.first()? as i64)
    }
}

pub async fn soak(bench: &mut Bench, sockets: usize, users: usize, duration: Duration, ping_every: Duration) -> Result<SoakReport, String> {
    let accounts = bench.register_users(users.max(1)).await?;
    let opened = bench.open(sockets, &cookies(&accounts), None, ping_every.as_millis() as u64).await?;
    let mut rss_samples_kib = Vec::new();
    rss_samples_kib.extend(bench.rss_kib());
    let started = Instant::now();
    let sample_every = (duration / 12).clamp(Duration::from_millis(200), Duration::from_secs(10));
    while started.elapsed() < duration {
        tokio::time::sleep(sample_every.min(duration.saturating_sub(started.elapsed()))).await;
        rss_samples_kib.extend(bench.rss_kib());
        eprintln!("soak: {:>4.0} s, server RSS {:?} KiB", started.elapsed().as_secs_f64(), bench.rss_kib());
    }
    let stats = bench.stats().await?;
    let checked = bench.check().await?;
    let mut ping_us: Vec<u64> = Vec::new();
    let mut ping_missing = 0;
    for event in stats {
        if let Event::Stats { ping_us: p, ping_missing: m, .. } = event {
            ping_us.extend(p.into_iter().map(u64::from));
            ping_missing += m;
        }
    }
    ping_us.sort_unstable();
    Ok(SoakReport {
        sockets,
        duration,
        dropped: checked.dropped + opened.opened.saturating_sub(checked.alive),
        opened,
        rss_samples_kib,
        ping_us,
        ping_missing,
        close_reasons: checked.close_reasons,
    })
}

/// One step of [`room_rate`]: the cluster receiving `offered` room messages a second.
#[derive(Debug, Clone)]
pub struct RateStep {
    pub offered: usize,
    pub senders: usize,
    pub acked: usize,
    pub refused: usize,
    pub delivered: usize,
    pub expected: usize,
    /// Receipts of a message a receiver had already received.
    pub duplicates: usize,
    /// Send → receipt on every receiver, µs, sorted (first receipts only).
    pub lat_us: Vec<u64>,
    pub elapsed: Duration,
}

impl RateStep {
    pub fn acked_per_sec(&self) -> f64 {
        self.acked as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Each sender socket sends at most this many messages a second (PROTOCOL.md
/// allows 20 frames a second per socket).
pub const SENDS_PER_SOCKET: usize = 16;

/// The sustained room-message rate of the cluster: `rooms` rooms, each with
/// `receivers` listening sockets spread over every node; for each rate of
/// `rates`, enough bound sender sockets (at most [`SENDS_PER_SOCKET`] each,
/// paced, spread over the rooms and the nodes) send for `step`, and every
/// receipt's latency from its send is recorded. Rooms, not one room: the
/// per-socket frame rate needs 100+ senders for 2,000 messages a second, and
/// in one room each of them would receive all of them.
pub async fn room_rate(bench: &mut Bench, rates: &[usize], rooms: usize, receivers: usize, step: Duration) -> Result<Vec<RateStep>, String> {
    let accounts = bench.register_users(20).await?;
    let endpoints = bench.endpoints();
    let mut codes = Vec::new();
    for r in 0..rooms.max(1) {
        let owner = &accounts[r % accounts.len()].cookie;
        codes.push(http::create_room(endpoints[r % endpoints.len()].addr, owner, &format!("rate {r}")).await.map_err(|e| e.to_string())?);
    }
    // First receipts by (step, receiver, sender, n) with their latency in µs; repeats counted.
    let receipts: Arc<std::sync::Mutex<(HashMap<(usize, usize, usize, usize), u64>, usize)>> = Arc::default();
    let mut tasks = Vec::new();
    for i in 0..codes.len() * receivers {
        let source = bench.next_source();
        let cookie = &accounts[i % accounts.len()].cookie;
        // Room by `i`, node by `i / rooms`: every room's receivers on every node.
        let mut ws = ws::connect(&endpoints[(i / codes.len()) % endpoints.len()], source, Some(cookie), false).await?.ws;
        let room = codes[i % codes.len()].clone();
        ws::request(&mut ws, &ClientFrame::Join { room, since: None }, 1).await?.map_err(|e| format!("receiver join: {}", e.code))?;
        let receipts = receipts.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(message)) = ws.next().await {
                let Message::Text(text) = message else { continue };
                if !text.as_str().starts_with(r#"{"type":"message""#) {
                    continue;
                }
                let now = sys::mono_ns();
                if let Ok(tether_protocol::ServerFrame::Message(m)) = serde_json::from_str(text.as_str()) {
                    // "<step>:<sent ns>:<sender>:<n>"
                    let parts: Vec<usize> = m.text.split(':').filter_map(|p| p.parse().ok()).collect();
                    if let [step, sent, sender, n] = parts[..] {
                        let mut receipts = receipts.lock().unwrap();
                        let latency = now.saturating_sub(sent as u64) / 1000;
                        if receipts.0.insert((step, i, sender, n), latency).is_some() {
                            receipts.1 += 1;
                        }
                    }
                }
            }
        }));
    }
    let mut senders = Vec::new();
    let mut steps = Vec::new();
    for (index, &rate) in rates.iter().enumerate() {
        let want = rate.div_ceil(SENDS_PER_SOCKET).max(1);
        while senders.len() < want {
            let i = senders.len();
            let source = bench.next_source();
            let cookie = &accounts[i % accounts.len()].cookie;
            // Node and room both by `i`, so each room gets senders on every node.
            let mut ws = ws::connect(&endpoints[i % endpoints.len()], source, Some(cookie), false).await?.ws;
            let room = codes[(i / endpoints.len()) % codes.len()].clone();
            ws::request(&mut ws, &ClientFrame::Join { room: room.clone(), since: None }, 1).await?.map_err(|e| format!("sender join: {}", e.code))?;
            senders.push((ws, room));
        }
        let every = Duration::from_secs_f64(want as f64 / rate as f64);
        let started = Instant::now();
        let mut running = Vec::new();
        for (i, (mut ws, room)) in senders.drain(..).enumerate() {
            running.push(tokio::spawn(async move {
                let (mut acked, mut refused, mut sent, mut broken) = (0usize, 0usize, 0usize, false);
                // Senders start spread over one interval, not all at once.
                let first = tokio::time::Instant::now() + every.mul_f64(i as f64 / want as f64);
                let mut tick = tokio::time::interval_at(first, every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let until = tokio::time::Instant::now() + step;
                let mut reference = 10i64;
                loop {
                    let sending = tokio::time::Instant::now() < until;
                    if !sending && acked + refused >= sent {
                        break;
                    }
                    tokio::select! {
                        _ = tick.tick(), if sending => {
                            reference += 1;
                            let text = format!("{index}:{}:{i}:{sent}", sys::mono_ns());
                            if ws::send(&mut ws, &ClientFrame::Send { room: room.clone(), text }, reference).await.is_err() {
                                broken = true;
                                break;
                            }
                            sent += 1;
                        }
                        _ = tokio::time::sleep_until(until), if sending => {}
                        incoming = ws.next() => match incoming {
                            Some(Ok(Message::Text(t))) if t.as_str().starts_with(r#"{"type":"ack""#) => {
                                if t.as_str().contains(r#""ok":true"#) { acked += 1 } else { refused += 1 }
                            }
                            Some(Ok(_)) => {}
                            _ => {
                                broken = true;
                                break;
                            }
                        },
                        _ = tokio::time::sleep_until(until + ws::PATIENCE) => break,
                    }
                }
                // A broken sender is replaced at the next step, not reused.
                ((!broken).then_some((ws, room)), acked, refused)
            }));
        }
        let (mut acked, mut refused) = (0, 0);
        for task in running {
            let (sender, a, r) = task.await.map_err(|e| e.to_string())?;
            acked += a;
            refused += r;
            senders.extend(sender);
        }
        let elapsed = started.elapsed();
        // Every acked message reaches every receiver of its room.
        let expected = acked * receivers;
        let deadline = Instant::now() + ws::PATIENCE;
        let mut lat_us = loop {
            let got: Vec<u64> =
                receipts.lock().unwrap().0.iter().filter(|((s, ..), _)| *s == index).map(|(_, l)| *l).collect();
            if got.len() >= expected || Instant::now() > deadline {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        lat_us.sort_unstable();
        // Late repeats too: counted after the wait, over the whole run so far.
        let duplicates = std::mem::take(&mut receipts.lock().unwrap().1);
        eprintln!(
            "room rate {rate}/s: {want} senders over {} rooms, {acked} acked ({refused} refused) in {:.1} s, {}/{} delivered, p99 {} µs",
            codes.len(),
            elapsed.as_secs_f64(),
            lat_us.len(),
            expected,
            percentile(&lat_us, 99.0)
        );
        steps.push(RateStep { offered: rate, senders: want, acked, refused, delivered: lat_us.len(), expected, duplicates, lat_us, elapsed });
    }
    for task in tasks {
        task.abort();
    }
    Ok(steps)
}
