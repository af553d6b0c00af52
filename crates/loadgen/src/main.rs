//! `loadgen <scenario> [options]`: runs one benchmark scenario against a
//! fresh release server (or `--url`) and prints one markdown table row.
//! See BENCHMARKS.md and `loadgen help`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use loadgen::scenarios::{self, Bench, Layout};
use loadgen::server::ServerProcess;
use loadgen::sys::{self, percentile};
use loadgen::ws::Endpoint;

const USAGE: &str = "\
usage: loadgen <scenario> [options]
scenarios:
  idle       --sockets N (5000) --hold SECS (30) --users U (20)
  handshake  --duration SECS (30) --concurrency C (32) --addresses A (10) --users U (200)
  login      --duration SECS (30) --concurrency C (8) --users U (20)
  fanout     --sizes 2000,5000,10000 --rounds R (50) --gap-ms G (60) --users U (8)
  rebind     --sockets N (10000) --rebinders K (500) --cycles C (2000) --users U (200)
  soak       --sockets N (5000) --duration SECS (600) --ping-every SECS (10) --users U (200)
  room-rate  --rates 500,1000,2000,3000 --rooms K (25) --receivers R per room (4) --step SECS (10)
common:
  --url http://HOST:PORT   use a running server instead of starting target/release/server
  --also-url URL[,URL]     with --url: other nodes of the same cluster; sockets are spread over all
  --nodes N                start N server nodes on one DATABASE_URL (a Postgres) and spread sockets over them
  --server-pid PID         with --url: the server's pid, for RSS and CPU figures
  --server-bin PATH        server binary (default: target/release/server of this workspace)
  --per-process N          sockets per worker process (default 10000; the hard open-files limit is per process)
  --workers                use child worker processes even for one shard
  --connect-concurrency C  upgrades in flight while opening sockets (128)
  --no-pin                 do not pin the server to CPU 0 and the generator to CPU 1
  --out FILE               also append the result rows to FILE
";

struct Args {
    scenario: String,
    values: HashMap<String, String>,
    flags: Vec<String>,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut raw = std::env::args().skip(1);
        let scenario = raw.next().ok_or("missing scenario")?;
        let mut values = HashMap::new();
        let mut flags = Vec::new();
        let rest: Vec<String> = raw.collect();
        let mut i = 0;
        while i < rest.len() {
            let key = rest[i].strip_prefix("--").ok_or_else(|| format!("unexpected argument {}", rest[i]))?.to_string();
            if matches!(key.as_str(), "workers" | "no-pin") {
                flags.push(key);
                i += 1;
            } else {
                let value = rest.get(i + 1).ok_or_else(|| format!("--{key} needs a value"))?.clone();
                values.insert(key, value);
                i += 2;
            }
        }
        Ok(Args { scenario, values, flags })
    }

    fn num(&self, key: &str, default: f64) -> Result<f64, String> {
        match self.values.get(key) {
            Some(v) => v.parse().map_err(|_| format!("--{key}: not a number: {v}")),
            None => Ok(default),
        }
    }

    fn count(&self, key: &str, default: usize) -> Result<usize, String> {
        Ok(self.num(key, default as f64)? as usize)
    }

    fn secs(&self, key: &str, default: f64) -> Result<Duration, String> {
        Ok(Duration::from_secs_f64(self.num(key, default)?))
    }

    fn flag(&self, key: &str) -> bool {
        self.flags.iter().any(|f| f == key)
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).canonicalize().unwrap_or_else(|_| PathBuf::from("."))
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("worker") {
        loadgen::shard::worker_main();
    }
    let args = match Args::parse() {
        Ok(args) if args.scenario != "help" => args,
        Ok(_) => {
            print!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("loadgen: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let nofile = sys::raise_nofile();
    // Server on CPU 0, generator (this process and its workers) on the last CPU.
    let pin = !args.flag("no-pin") && sys::online_cpus() >= 2 && sys::has_taskset();
    let gen_cpu = sys::online_cpus() - 1;
    if pin {
        sys::pin_to_cpu(gen_cpu);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let code = runtime.block_on(async {
        match run(&args, pin, gen_cpu, nofile).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("loadgen: {e}");
                1
            }
        }
    });
    std::process::exit(code);
}

async fn run(args: &Args, pin: bool, gen_cpu: usize, nofile: u64) -> Result<(), String> {
    let root = workspace_root();
    let mut servers: Vec<ServerProcess> = Vec::new();
    let (endpoint, server_pid, server_cmd) = match args.values.get("url") {
        Some(url) => {
            let pid = args.values.get("server-pid").and_then(|p| p.parse().ok());
            (loopback_endpoint(url).await?, pid, format!("(running server at {url})"))
        }
        None => {
            let bin = args.values.get("server-bin").map(PathBuf::from).unwrap_or_else(|| root.join("target/release/server"));
            // Several nodes share DATABASE_URL (a Postgres); all on the server CPU.
            let nodes = args.count("nodes", 1)?.max(1);
            if nodes > 1 && !std::env::var("DATABASE_URL").is_ok_and(|url| url.starts_with("postgres")) {
                return Err("--nodes above 1 needs DATABASE_URL=postgres://... (BENCH_POSTGRES=1 scripts/bench ...)".into());
            }
            for _ in 0..nodes {
                let mut process = ServerProcess::start(&bin, &root, pin.then_some(0)).map_err(|e| e.to_string())?;
                process.wait_ready(Duration::from_secs(30)).await.map_err(|e| e.to_string())?;
                servers.push(process);
            }
            let first = &servers[0];
            (Endpoint::new(first.addr), Some(first.pid), first.command.clone())
        }
    };
    let argv: Vec<String> = std::env::args().collect();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let shown_exe = exe.strip_prefix(&root).map(|p| p.display().to_string()).unwrap_or_else(|_| argv[0].clone());
    let gen_cmd =
        format!("{}{} {}", if pin { format!("taskset -c {gen_cpu} ") } else { String::new() }, shown_exe, argv[1..].join(" "));
    let layout = Layout {
        per_process: args.count("per-process", 10_000)?.min(nofile.saturating_sub(500).max(100) as usize),
        worker_exe: Some(exe),
        force_workers: args.flag("workers"),
        connect_concurrency: args.count("connect-concurrency", 128)?,
    };
    eprintln!("loadgen: server {server_cmd}");
    eprintln!("loadgen: generator {gen_cmd}");
    let mut bench = Bench::new(endpoint, server_pid, layout);
    bench.others.extend(servers.iter().skip(1).map(|s| Endpoint::new(s.addr)));
    if let Some(urls) = args.values.get("also-url") {
        for url in urls.split(',').filter(|u| !u.is_empty()) {
            bench.others.push(loopback_endpoint(url).await?);
        }
    }
    let nodes = bench.endpoints().len();
    let result = scenario(args, &mut bench).await;
    bench.shutdown().await;
    for server in servers {
        let evictions = server.evictions();
        if evictions > 0 {
            eprintln!("loadgen: the server evicted {evictions} slow sockets (outbound queue full)");
        }
        if result.is_err() {
            eprintln!("server log tail:\n{}", server.log_tail(20));
        }
        server.stop();
    }
    let rows = result?;
    let mut out = String::new();
    let backend = match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") && nodes > 1 => format!("Postgres, {nodes} nodes"),
        Ok(url) if url.starts_with("postgres") => "Postgres".to_string(),
        _ => "SQLite".to_string(),
    };
    for (scenario, n, result, yardstick, target, met) in rows {
        let scenario = format!("{scenario} ({backend})");
        out.push_str(&format!(
            "| {scenario} | {n} | {result} | {yardstick} | {target} | {} | `{server_cmd}` | `{gen_cmd}` |\n",
            match met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "-",
            }
        ));
    }
    print!("{out}");
    if let Some(path) = args.values.get("out") {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| e.to_string())?;
        file.write_all(out.as_bytes()).map_err(|e| e.to_string())?;
    }
    Ok(())
}

type Row = (String, String, String, String, String, Option<bool>);

/// The endpoint of `http://HOST:PORT`, which must be a loopback address.
async fn loopback_endpoint(url: &str) -> Result<Endpoint, String> {
    let hostport = url.trim_start_matches("http://").trim_end_matches('/');
    let addr = tokio::net::lookup_host(hostport).await.map_err(|e| e.to_string())?.next().ok_or("bad --url")?;
    if !addr.ip().is_loopback() {
        return Err("--url must be a loopback address (traffic stays on 127.0.0.0/8)".into());
    }
    Ok(Endpoint { addr, origin: url.trim_end_matches('/').to_string() })
}

/// The result cell of a rate scenario; its errors go to stderr.
fn rate_result(scenario: &str, r: &scenarios::RateReport, plural: &str, singular: &str) -> String {
    if !r.errors.is_empty() {
        eprintln!("{scenario}: errors: {:?}", r.errors);
    }
    format!(
        "**{:.0} {plural}/s** ({} in {:.1} s, {} failed); {singular} latency p50 {:.2} ms, p99 {:.2} ms; server CPU {} µs/{singular}; {} in flight",
        r.per_sec(),
        r.ok,
        r.elapsed.as_secs_f64(),
        r.failed,
        ms(percentile(&r.lat_us, 50.0)),
        ms(percentile(&r.lat_us, 99.0)),
        r.server_us_each().map(|us| format!("{us:.0}")).unwrap_or("?".into()),
        r.concurrency
    )
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

async fn scenario(args: &Args, bench: &mut Bench) -> Result<Vec<Row>, String> {
    let users = |d| args.count("users", d);
    match args.scenario.as_str() {
        "idle" => {
            let n = args.count("sockets", 5000)?;
            let r = scenarios::idle(bench, n, users(20)?, args.secs("hold", 30.0)?).await?;
            let per = r.kib_per_socket();
            let dropped = r.dropped() + r.opened.failed;
            let result = format!(
                "**{} KiB/socket** (server VmRSS {} KiB at start, {} KiB after registering {} users → {} KiB after connect → {} KiB after {:.0} s idle); dropped {dropped}; opened {}/{} in {:.1} s ({:.0}/s), all bound: {}",
                per.map(|p| format!("{p:.2}")).unwrap_or("?".into()),
                r.rss_start_kib.unwrap_or(0),
                r.rss_before_kib.unwrap_or(0),
                users(20)?,
                r.rss_connected_kib.unwrap_or(0),
                r.rss_held_kib.unwrap_or(0),
                r.hold.as_secs_f64(),
                r.opened.opened,
                n,
                r.opened.elapsed.as_secs_f64(),
                r.opened.opened as f64 / r.opened.elapsed.as_secs_f64().max(1e-9),
                r.opened.unbound == 0
            );
            if !r.opened.errors.is_empty() {
                eprintln!("idle: errors: {:?}", r.opened.errors);
            }
            if !r.checked.close_reasons.is_empty() {
                eprintln!("idle: close reasons: {:?}", r.checked.close_reasons);
            }
            let met = per.map(|p| p <= 4.0 && dropped == 0);
            Ok(vec![("idle".into(), n.to_string(), result, "13.6 KiB/socket at 5,000".into(), "≤ 4 KiB/socket, 0 dropped".into(), met)])
        }
        "handshake" => {
            let concurrency = args.count("concurrency", 32)?;
            let r = scenarios::handshake(bench, users(200)?, args.secs("duration", 30.0)?, concurrency, args.count("addresses", 10)?).await?;
            let result = rate_result("handshake", &r, "upgrades", "upgrade");
            let met = Some(r.per_sec() >= 8000.0 && r.failed == 0);
            Ok(vec![("handshake".into(), format!("{} s", r.elapsed.as_secs()), result, "1,063/s".into(), "≥ 8,000/s".into(), met)])
        }
        "login" => {
            let concurrency = args.count("concurrency", 8)?;
            let r = scenarios::login(bench, users(20)?, args.secs("duration", 30.0)?, concurrency).await?;
            let result = rate_result("login", &r, "logins", "login");
            Ok(vec![("login".into(), format!("{} s", r.elapsed.as_secs()), result, "-".into(), "-".into(), None)])
        }
        "fanout" => {
            let sizes: Vec<usize> = args
                .values
                .get("sizes")
                .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
                .unwrap_or_else(|| vec![2000, 5000, 10_000]);
            let reports = scenarios::fanout(
                bench,
                &sizes,
                users(8)?,
                args.count("rounds", 50)?,
                Duration::from_millis(args.count("gap-ms", 60)? as u64),
            )
            .await?;
            let mut rows = Vec::new();
            for r in reports {
                let p99 = ms(percentile(&r.latency_us, 99.0));
                let result = format!(
                    "send → last receipt **p50 {:.2} / p99 {:.2} / max {:.2} ms** over {} rounds (first receipt p50 {:.2} ms); {}/{} delivered; {:.0} msgs/s; generator floor {} ms ({} ns/msg); server {} ns/delivery; room built in {:.1} s; dropped {}",
                    ms(percentile(&r.latency_us, 50.0)),
                    p99,
                    ms(r.latency_us.last().copied().unwrap_or(0)),
                    r.rounds,
                    ms(percentile(&r.first_us, 50.0)),
                    r.deliveries,
                    r.expected_deliveries,
                    r.msgs_per_sec(),
                    r.generator_floor_ms().map(|f| format!("{f:.1}")).unwrap_or("?".into()),
                    r.gen_ns_per_msg.map(|f| format!("{f:.0}")).unwrap_or("?".into()),
                    r.server_ns_per_delivery.map(|f| format!("{f:.0}")).unwrap_or("?".into()),
                    r.build.as_secs_f64(),
                    r.dropped + r.open_failed
                );
                let (yardstick, target, met) = match r.room_size {
                    2000 => ("p99 44 ms at 2,000", "p99 ≤ 10 ms", Some(p99 <= 10.0)),
                    5000 => ("-", "p99 ≤ 40 ms", Some(p99 <= 40.0)),
                    _ => ("-", "(report; floor beside it)", None),
                };
                let complete = r.deliveries == r.expected_deliveries && r.sender_errors == 0;
                rows.push((
                    "fanout 128 B".into(),
                    r.room_size.to_string(),
                    result,
                    yardstick.into(),
                    target.into(),
                    met.map(|m| m && complete),
                ));
            }
            Ok(rows)
        }
        "rebind" => {
            let n = args.count("sockets", 10_000)?;
            let r = scenarios::rebind(bench, n, users(200)?, args.count("rebinders", 500)?, args.count("cycles", 2000)?).await?;
            if !r.failures.is_empty() {
                eprintln!("rebind: failures: {:?}", &r.failures[..r.failures.len().min(10)]);
            }
            let all = r.all_us();
            let p99 = ms(percentile(&all, 99.0));
            let result = format!(
                "ack **p50 {:.3} / p99 {:.3} ms** (login p50 {:.3} p99 {:.3}, logout p50 {:.3} p99 {:.3}, max {:.2} ms); {} cycles, {} failures, {} connected, dropped {}",
                ms(percentile(&all, 50.0)),
                p99,
                ms(percentile(&r.login_us, 50.0)),
                ms(percentile(&r.login_us, 99.0)),
                ms(percentile(&r.logout_us, 50.0)),
                ms(percentile(&r.logout_us, 99.0)),
                ms(all.last().copied().unwrap_or(0)),
                r.cycles,
                r.failures.len(),
                r.connected,
                r.dropped + r.open_failed
            );
            let met = Some(p99 <= 1.0 && r.failures.is_empty());
            Ok(vec![("rebind".into(), n.to_string(), result, "login ack p99 3.9 ms".into(), "p99 ≤ 1 ms at 10,000".into(), met)])
        }
        "soak" => {
            let n = args.count("sockets", 5000)?;
            let r = scenarios::soak(bench, n, users(200)?, args.secs("duration", 600.0)?, args.secs("ping-every", 10.0)?).await?;
            if !r.close_reasons.is_empty() {
                eprintln!("soak: close reasons: {:?}", r.close_reasons);
            }
            let result = format!(
                "dropped **{}**; {} pings, ack p50 {:.2} / p99 {:.2} ms, {} unanswered; server RSS {} → {} KiB (growth {} KiB) over {:.0} s",
                r.dropped + r.opened.failed,
                r.ping_us.len(),
                ms(percentile(&r.ping_us, 50.0)),
                ms(percentile(&r.ping_us, 99.0)),
                r.ping_missing,
                r.rss_samples_kib.first().copied().unwrap_or(0),
                r.rss_samples_kib.last().copied().unwrap_or(0),
                r.rss_growth_kib().map(|g| g.to_string()).unwrap_or("?".into()),
                r.duration.as_secs_f64()
            );
            let met = Some(r.dropped + r.opened.failed == 0 && r.ping_missing == 0);
            Ok(vec![(
                "soak".into(),
                format!("{n} × {:.0} s", r.duration.as_secs_f64()),
                result,
                "-".into(),
                "0 dropped".into(),
                met,
            )])
        }
        "room-rate" => {
            let rates: Vec<usize> = args
                .values
                .get("rates")
                .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
                .unwrap_or_else(|| vec![500, 1000, 2000, 3000]);
            let rooms = args.count("rooms", 25)?;
            let receivers = args.count("receivers", 4)?;
            let steps = scenarios::room_rate(bench, &rates, rooms, receivers, args.secs("step", 10.0)?).await?;
            // Sustained: every acked message delivered, none refused, and the
            // p99 within 10 ms of the gentlest step's.
            let base_p99 = steps.first().map(|s| percentile(&s.lat_us, 99.0)).unwrap_or(0);
            let held = |s: &scenarios::RateStep| {
                s.refused == 0
                    && s.duplicates == 0
                    && s.delivered == s.expected
                    && s.acked_per_sec() >= 0.98 * s.offered as f64
                    && percentile(&s.lat_us, 99.0) <= base_p99 + 10_000
            };
            // The highest offered rate that every gentler step also held.
            let sustained = steps.iter().take_while(|s| held(s)).map(|s| s.offered).max().unwrap_or(0);
            let mut rows = Vec::new();
            for s in &steps {
                let result = format!(
                    "{:.0} msgs/s acked ({} refused) by {} senders; send → receipt p50 {:.2} / p99 {:.2} / max {:.2} ms; {}/{} delivered, {} twice{}",
                    s.acked_per_sec(),
                    s.refused,
                    s.senders,
                    ms(percentile(&s.lat_us, 50.0)),
                    ms(percentile(&s.lat_us, 99.0)),
                    ms(s.lat_us.last().copied().unwrap_or(0)),
                    s.delivered,
                    s.expected,
                    s.duplicates,
                    if held(s) { "" } else { " (**not sustained**)" }
                );
                rows.push((
                    "room-rate".into(),
                    format!("{} msgs/s offered, {rooms} rooms × {receivers} receivers", s.offered),
                    result,
                    format!("sustained: **{sustained} msgs/s**"),
                    "≥ 2,000 msgs/s".into(),
                    Some(sustained >= 2000),
                ));
            }
            Ok(rows)
        }
        other => Err(format!("unknown scenario {other}\n{USAGE}")),
    }
}
