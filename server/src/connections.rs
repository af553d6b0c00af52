//! The HTTP accept loop: hyper-util's auto connection builder with a timer
//! (so the header read timeout works), WebSocket upgrades, the peer address
//! as `ConnectInfo<SocketAddr>`, connection limits and graceful shutdown.
//!
//! Rules (see [`crate::config::Limits`]): every accepted TCP connection holds
//! one permit of `max-connections` and one of `max-connections-per-address`
//! for its whole life, an upgraded WebSocket included (the permit lives in the
//! IO object that the upgrade takes over); a connection over either limit is
//! closed at once, before a byte is read. A connection that has not sent a
//! complete request head within `header-read-timeout-secs` is closed.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::Router;
use hyper::body::Incoming;
use ipnet::IpNet;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use crate::config::{Limits, Settings};
use crate::extract::client_key;

/// How long in-flight HTTP requests get to finish once shutdown began.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Counts open connections, in total and per peer address (an IPv6 peer
/// counts as its /64, see [`client_key`]). Connections from a trusted proxy
/// (`TETHER_TRUSTED_PROXIES`) count only against the total: they carry many
/// clients.
pub struct ConnectionLimits {
    total: Arc<Semaphore>,
    max_total: usize,
    by_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_per_address: usize,
    trusted_proxies: Vec<IpNet>,
}

/// One open connection's share of the limits; released when dropped.
pub struct ConnectionPermit {
    _total: OwnedSemaphorePermit,
    /// `None` for a trusted proxy, which has no per-address count.
    address: Option<IpAddr>,
    by_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let Some(address) = self.address else { return };
        let mut by_address = lock(&self.by_address);
        if let Some(open) = by_address.get_mut(&address) {
            *open -= 1;
            if *open == 0 {
                by_address.remove(&address);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ConnectionLimits {
    pub fn new(settings: &Settings) -> ConnectionLimits {
        let limits = &settings.limits;
        let max_total = limits.max_connections.min(Semaphore::MAX_PERMITS);
        ConnectionLimits {
            total: Arc::new(Semaphore::new(max_total)),
            max_total,
            by_address: Arc::default(),
            max_per_address: limits.max_connections_per_address,
            trusted_proxies: settings.trusted_proxies.clone(),
        }
    }

    /// A permit for one more connection from `peer`, or `None` when that
    /// would pass the total or the per-address limit.
    pub fn admit(&self, peer: IpAddr) -> Option<ConnectionPermit> {
        let total = self.total.clone().try_acquire_owned().ok()?;
        let peer = peer.to_canonical();
        if self.trusted_proxies.iter().any(|net| net.contains(&peer)) {
            return Some(ConnectionPermit { _total: total, address: None, by_address: self.by_address.clone() });
        }
        let address = client_key(peer);
        let mut by_address = lock(&self.by_address);
        let open = by_address.entry(address).or_insert(0);
        if *open >= self.max_per_address {
            return None;
        }
        *open += 1;
        Some(ConnectionPermit { _total: total, address: Some(address), by_address: self.by_address.clone() })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max_total - self.total.available_permits()
    }

    /// Connections open now from `address` (its /64 for IPv6).
    pub fn open_from(&self, address: IpAddr) -> usize {
        lock(&self.by_address).get(&client_key(address)).copied().unwrap_or(0)
    }
}

/// A TCP stream that owns its connection permit: hyper hands this very
/// object to an upgraded WebSocket, so the permit lives as long as the socket.
struct PermittedStream {
    stream: TcpStream,
    _permit: ConnectionPermit,
}

impl AsyncRead for PermittedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PermittedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Accepts connections and serves `router` on each until `shutdown`
/// completes; then stops accepting, runs `before_drain` (closing the
/// WebSockets), and gives in-flight requests [`SHUTDOWN_GRACE`] to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    connections: Arc<ConnectionLimits>,
    limits: &Limits,
    shutdown: impl Future<Output = ()>,
    before_drain: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    // HTTP/2 (prior knowledge) has no header timeout: its connections are
    // pinged like sockets, so a dead peer lets go of its permit in bounded time.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.ping_interval)
        .keep_alive_timeout(limits.pong_timeout);
    let header_read_timeout = limits.header_read_timeout;
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(permit) = connections.admit(peer.ip()) else {
            tracing::debug!(%peer, "connection refused: over the connection limit");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(PermittedStream { stream, _permit: permit });
        let request_seen = Arc::new(Notify::new());
        let service = {
            let router = router.clone();
            let request_seen = request_seen.clone();
            hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                request_seen.notify_one();
                let mut request = request.map(axum::body::Body::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                ServiceExt::<Request>::oneshot(router.clone(), request)
            })
        };
        let connection = graceful.watch(builder.serve_connection_with_upgrades(io, service).into_owned());
        tokio::spawn(async move {
            tokio::select! {
                result = connection => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                }
                () = first_request_deadline(&request_seen, header_read_timeout) => {
                    tracing::debug!(%peer, "closing a connection that sent no request head in time");
                }
            }
        });
    }
    drop(listener);
    before_drain.await;
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("in-flight requests still open after {} s; stopping anyway", SHUTDOWN_GRACE.as_secs());
    }
    Ok(())
}

/// Completes when no request head arrived within `timeout` of the accept.
/// hyper's own header timeout covers every request once HTTP/1 is chosen;
/// this covers the bytes before that (the auto builder first reads enough
/// to tell HTTP/1 from HTTP/2, without a timer), such as a silent connection.
async fn first_request_deadline(request_seen: &Notify, timeout: Duration) {
    if tokio::time::timeout(timeout, request_seen.notified()).await.is_ok() {
        std::future::pending::<()>().await;
    }
}

/// Per-connection errors (the peer gave up) are skipped; others, such as
/// running out of file descriptors, pause accepting for a second.
async fn accept_failed(error: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(error.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::error!(%error, "accept failed; pausing for a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(vars: &[(&str, &str)]) -> ConnectionLimits {
        let leptos = leptos::config::LeptosOptions::builder()
            .output_name("tether")
            .site_addr("127.0.0.1:3000".parse::<std::net::SocketAddr>().unwrap())
            .build();
        let settings = Settings::resolve(leptos, include_str!("../../Leptos.toml"), |name| {
            vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        })
        .unwrap();
        ConnectionLimits::new(&settings)
    }

    #[test]
    fn permits_count_per_address_and_in_total_until_dropped() {
        let limits = limits(&[("TETHER_MAX_CONNECTIONS", "3"), ("TETHER_MAX_CONNECTIONS_PER_ADDRESS", "2")]);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let first = limits.admit(a).unwrap();
        let _second = limits.admit("::ffff:10.0.0.1".parse().unwrap()).expect("the same address, IPv4-mapped");
        assert!(limits.admit(a).is_none(), "a third from one address");
        assert_eq!(limits.open_from(a), 2);
        let _other = limits.admit("10.0.0.2".parse().unwrap()).unwrap();
        assert!(limits.admit("10.0.0.3".parse().unwrap()).is_none(), "a fourth in total");
        assert_eq!(limits.open(), 3, "refusals hold nothing");
        drop(first);
        assert_eq!((limits.open(), limits.open_from(a)), (2, 1));
        assert!(limits.admit(a).is_some());
    }

    #[test]
    fn an_ipv6_client_is_its_64_and_a_trusted_proxy_only_counts_in_the_total() {
        let limits = limits(&[("TETHER_MAX_CONNECTIONS_PER_ADDRESS", "1"), ("TETHER_TRUSTED_PROXIES", "10.9.0.0/16")]);
        let _held = limits.admit("2001:db8::1".parse().unwrap()).unwrap();
        assert!(limits.admit("2001:db8::2".parse().unwrap()).is_none(), "the same /64");
        assert!(limits.admit("2001:db8:0:1::2".parse().unwrap()).is_some(), "another /64");
        let proxied: Vec<_> = (0..5).map(|_| limits.admit("10.9.0.1".parse().unwrap()).unwrap()).collect();
        assert_eq!(limits.open(), 1 + proxied.len(), "the other /64's permit was dropped at once");
    }
}
