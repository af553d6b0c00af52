//! Quick variants of every benchmark scenario against an in-process server,
//! so the generator cannot rot. They assert correctness (every socket bound
//! and alive, every message delivered, every rebind acked), never speed.
//!
//! Run with: cargo test --release -p loadgen

use std::path::PathBuf;
use std::time::Duration;

use loadgen::scenarios::{self, Bench, Layout};
use loadgen::sys;
use loadgen::ws::Endpoint;
use server::config::Settings;
use server::AppState;

struct InProcess {
    endpoint: Endpoint,
    _data: tempfile::TempDir,
}

/// A real server on port 0 with its own SQLite file, as server/tests/common does.
async fn start_server() -> InProcess {
    sys::raise_nofile();
    let data = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let leptos = leptos::config::LeptosOptions::builder().output_name("tether").site_addr(addr).build();
    let data_dir = data.path().to_str().unwrap().to_string();
    let file = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Leptos.toml")).unwrap();
    let settings = Settings::resolve(leptos, &file, |name| (name == "TETHER_DATA_DIR").then(|| data_dir.clone())).unwrap();
    let state = AppState::new(settings).await.unwrap();
    tokio::spawn(server::serve(listener, state));
    InProcess { endpoint: Endpoint::new(addr), _data: data }
}

fn bench(server: &InProcess, layout: Layout) -> Bench {
    Bench::new(server.endpoint.clone(), Some(std::process::id()), layout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_are_all_bound_and_none_drop() {
    let server = start_server().await;
    let mut bench = bench(&server, Layout::default());
    let report = scenarios::idle(&mut bench, 50, 5, Duration::from_secs(1)).await.unwrap();
    bench.shutdown().await;
    assert_eq!(report.opened.opened, 50, "{:?}", report.opened.errors);
    assert_eq!(report.opened.failed, 0);
    assert_eq!(report.opened.unbound, 0, "every socket starts bound through its cookie");
    assert_eq!(report.checked.alive, 50);
    assert_eq!(report.dropped(), 0, "{:?}", report.checked.close_reasons);
    assert!(report.kib_per_socket().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_over_worker_processes_and_source_addresses() {
    let server = start_server().await;
    let layout = Layout {
        per_process: 20,
        worker_exe: Some(PathBuf::from(env!("CARGO_BIN_EXE_loadgen"))),
        force_workers: true,
        connect_concurrency: 16,
    };
    let mut bench = bench(&server, layout);
    let report = scenarios::idle(&mut bench, 50, 3, Duration::from_millis(500)).await.unwrap();
    assert_eq!(bench.shards.len(), 3, "50 sockets at 20 a process");
    bench.shutdown().await;
    assert_eq!(report.opened.opened, 50, "{:?}", report.opened.errors);
    assert_eq!(report.opened.unbound, 0);
    assert_eq!(report.checked.alive, 50);
    assert_eq!(report.dropped(), 0, "{:?}", report.checked.close_reasons);
}

#[test]
fn sources_are_spread_at_most_ten_thousand_an_address() {
    use loadgen::ws::source_ip;
    assert_eq!(source_ip(0).to_string(), "127.0.0.2");
    assert_eq!(source_ip(9_999).to_string(), "127.0.0.2");
    assert_eq!(source_ip(10_000).to_string(), "127.0.0.3");
    assert_eq!(source_ip(18_999).to_string(), "127.0.0.3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_verify_the_cookie_every_time() {
    let server = start_server().await;
    let mut bench = bench(&server, Layout::default());
    let report = scenarios::handshake(&mut bench, 3, Duration::from_secs(1), 4, 2).await.unwrap();
    bench.shutdown().await;
    assert!(report.ok > 0);
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(report.lat_us.len(), report.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_every_message_to_every_member() {
    let server = start_server().await;
    let mut bench = bench(&server, Layout::default());
    let reports = scenarios::fanout(&mut bench, &[20, 50], 3, 5, Duration::from_millis(60)).await.unwrap();
    bench.shutdown().await;
    assert_eq!(reports.len(), 2);
    for r in &reports {
        assert_eq!(r.open_failed, 0);
        assert_eq!(r.rounds, 5);
        assert_eq!(r.complete_rounds, 5, "room of {}", r.room_size);
        assert_eq!(r.deliveries, r.expected_deliveries, "room of {}", r.room_size);
        assert_eq!(r.expected_deliveries, (r.room_size as u64 - 1) * 5);
        assert_eq!(r.latency_us.len(), 5);
        assert_eq!(r.sender_errors, 0);
        assert_eq!(r.dropped, 0);
    }
    assert_eq!(reports[0].room_size, 20);
    assert_eq!(reports[1].room_size, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_rounds_complete_across_worker_processes() {
    let server = start_server().await;
    let layout = Layout {
        per_process: 15,
        worker_exe: Some(PathBuf::from(env!("CARGO_BIN_EXE_loadgen"))),
        force_workers: true,
        connect_concurrency: 8,
    };
    let mut bench = bench(&server, layout);
    let reports = scenarios::fanout(&mut bench, &[40], 2, 3, Duration::from_millis(60)).await.unwrap();
    bench.shutdown().await;
    let r = &reports[0];
    assert_eq!(r.complete_rounds, 3);
    assert_eq!(r.deliveries, 39 * 3);
    assert!(r.gen_ns_per_msg.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rebind_frame_is_acked() {
    let server = start_server().await;
    let mut bench = bench(&server, Layout::default());
    let report = scenarios::rebind(&mut bench, 50, 4, 10, 30).await.unwrap();
    bench.shutdown().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.login_us.len(), 30);
    assert_eq!(report.logout_us.len(), 30);
    assert_eq!(report.connected, 50);
    assert_eq!(report.open_failed, 0);
    assert_eq!(report.dropped, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_pings_are_answered_and_nothing_drops() {
    let server = start_server().await;
    let mut bench = bench(&server, Layout::default());
    let report = scenarios::soak(&mut bench, 50, 3, Duration::from_secs(2), Duration::from_millis(500)).await.unwrap();
    bench.shutdown().await;
    assert_eq!(report.opened.opened, 50);
    assert_eq!(report.dropped, 0, "{:?}", report.close_reasons);
    assert_eq!(report.ping_missing, 0);
    assert!(report.ping_us.len() >= 100, "about 4 pings a socket, got {}", report.ping_us.len());
    assert!(report.rss_samples_kib.len() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_rate_delivers_every_acked_message_to_every_receiver_of_its_room() {
    let server = start_server().await;
    let mut bench = bench(&server, Layout::default());
    let steps = scenarios::room_rate(&mut bench, &[40, 80], 3, 2, Duration::from_secs(1)).await.unwrap();
    bench.shutdown().await;
    assert_eq!(steps.len(), 2);
    for s in &steps {
        assert_eq!(s.refused, 0, "{s:?}");
        assert!(s.acked >= s.offered / 2, "a second at {}/s acked {}", s.offered, s.acked);
        // Three rooms of two receivers: each acked message reaches the two of its room.
        assert_eq!(s.expected, s.acked * 2);
        assert_eq!(s.delivered, s.expected, "{} of {}", s.delivered, s.expected);
        assert_eq!(s.duplicates, 0, "every message reaches each receiver once");
        assert_eq!(s.senders, s.offered.div_ceil(scenarios::SENDS_PER_SOCKET));
    }
}
