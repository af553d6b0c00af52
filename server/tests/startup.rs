//! The server binary: clear one-line failures, and a graceful stop.

mod common;

use std::process::{Command, Stdio};

use common::process::{assert_one_line_failure, server_command, ServerProcess};

#[test]
fn a_taken_port_is_one_clear_line_and_exit_code_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = tempfile::tempdir().unwrap();
    let output = server_command(&addr, data.path()).output().unwrap();
    assert_one_line_failure(&output, &format!("cannot listen on {addr}"));
}

#[test]
fn an_unwritable_data_directory_is_one_clear_line_and_exit_code_1() {
    // A path under a regular file cannot be created, even by root.
    let file = tempfile::NamedTempFile::new().unwrap();
    let output = server_command("127.0.0.1:0", &file.path().join("data")).output().unwrap();
    assert_one_line_failure(&output, "is not writable");
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_exits_cleanly() {
    let server = ServerProcess::start(&[]).await;
    let (mut socket, _) = common::socket_to(server.addr, None).await;
    let close = tokio::spawn(async move { socket.closed().await });
    let mut server = server;
    assert!(tokio::task::spawn_blocking(move || server.terminate()).await.unwrap(), "exit code 0");
    assert_eq!(close.await.unwrap(), Some(1001));
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
