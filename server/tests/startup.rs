//! The server binary: clear one-line failures, and a graceful stop.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

fn server_command(addr: &str, data_dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_server"));
    command
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("LEPTOS_SITE_ADDR", addr)
        .env("TETHER_DATA_DIR", data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

fn assert_one_line_failure(output: std::process::Output, expected: &str) {
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(expected), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.trim().lines().filter(|l| l.starts_with("tether:")).count(), 1, "{stderr}");
}

#[test]
fn a_taken_port_is_one_clear_line_and_exit_code_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = tempfile::tempdir().unwrap();
    let output = server_command(&addr, data.path()).output().unwrap();
    assert_one_line_failure(output, &format!("cannot listen on {addr}"));
}

#[test]
fn an_unwritable_data_directory_is_one_clear_line_and_exit_code_1() {
    // A path under a regular file cannot be created, even by root.
    let file = tempfile::NamedTempFile::new().unwrap();
    let output = server_command("127.0.0.1:0", &file.path().join("data")).output().unwrap();
    assert_one_line_failure(output, "is not writable");
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_exits_cleanly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let data = tempfile::tempdir().unwrap();
    let mut child = server_command(&addr, data.path()).spawn().unwrap();
    let url = format!("ws://{addr}/ws");
    let mut socket = None;
    for _ in 0..100 {
        let mut request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url.as_str()).unwrap();
        request.headers_mut().insert("origin", format!("http://{addr}").parse().unwrap());
        if let Ok((stream, _)) = tokio_tungstenite::connect_async(request).await {
            socket = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut socket = socket.expect("the server came up");
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let close = loop {
        match tokio::time::timeout(common::PATIENCE, futures_util::StreamExt::next(&mut socket)).await.unwrap() {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close, Some(1001));
    let exit = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn help_and_version_print_and_exit_0() {
    let help = Command::new(env!("CARGO_BIN_EXE_server"))
        .arg("--help")
        .env("TETHER_ALLOW_GUESTS", "false")
        .env_remove("DATABASE_URL")
        .env_remove("TETHER_CONFIG")
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    for variable in ["DATABASE_URL", "TETHER_ADMIN_EMAILS", "TETHER_METRICS_ADDR", "TETHER_PING_INTERVAL_SECS"] {
        assert!(text.contains(variable), "--help names {variable}:\n{text}");
    }
    let guests = text.lines().find(|l| l.contains("TETHER_ALLOW_GUESTS")).unwrap();
    assert!(guests.ends_with("[environment]"), "--help says where a value comes from: {guests}");
    let database = text.lines().find(|l| l.contains("DATABASE_URL")).unwrap();
    assert!(database.ends_with("[Leptos.toml]"), "{database}");

    let version = Command::new(env!("CARGO_BIN_EXE_server")).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert_eq!(String::from_utf8(version.stdout).unwrap().trim(), format!("server {}", env!("CARGO_PKG_VERSION")));
    let unknown = Command::new(env!("CARGO_BIN_EXE_server")).arg("--frobnicate").output().unwrap();
    assert_eq!(unknown.status.code(), Some(2));
}

#[test]
fn json_logs_are_one_object_a_line() {
    let data = tempfile::tempdir().unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let mut child = server_command(&addr, data.path())
        .env("TETHER_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let first = lines.next().expect("a log line").unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let line: serde_json::Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert!(line["level"].is_string() && line["fields"]["message"].is_string(), "{line}");
}
