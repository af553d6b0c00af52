//! Prometheus metrics (the `metrics` facade and `metrics-exporter-prometheus`),
//! served on their own listener (`metrics-addr`, off by default) so that the
//! public port never shows them.
//!
//! Names and labels (all counters end in `_total`; durations are seconds):
//! - `tether_sockets{binding="user"|"guest"}`: live sockets on this node (gauge).
//! - `tether_rebinds_total{kind="login"|"logout"|"expired"|"revoked"|"role"}`.
//! - `tether_frames_in_total{type}`: client frames processed, by `type`.
//! - `tether_frames_refused_total{reason="rate_limited"|"bad_frame"}`.
//! - `tether_frames_out_total{type}`: frames queued to sockets, by `type`.
//! - `tether_evictions_total{cause="queue"|"write_timeout"}`: slow consumers dropped (4002).
//! - `tether_handshakes_total{outcome="accepted"|"forbidden_origin"|"guests_off"|"bad_request"}`.
//! - `tether_http_requests_total{route,status}` and
//!   `tether_http_request_duration_seconds{route}` (histogram).
//! - `tether_argon2_wait_seconds` (histogram): time a hash or verification waited for a slot.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds, for the histograms.
const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// The process's recorder, installed on first use (tests build many servers in one process).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
            .expect("the buckets are not empty")
            .install_recorder()
            .expect("no other metrics recorder is installed");
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!("tether_sockets", "Live sockets on this node, by binding");
    describe_counter!("tether_rebinds_total", "Sockets bound or unbound in place, by kind");
    describe_counter!("tether_frames_in_total", "Client frames processed, by type");
    describe_counter!("tether_frames_refused_total", "Client frames refused, by reason");
    describe_counter!("tether_frames_out_total", "Frames queued to sockets, by type");
    describe_counter!("tether_evictions_total", "Slow consumers dropped with 4002, by cause");
    describe_counter!("tether_handshakes_total", "WebSocket upgrades, by outcome");
    describe_counter!("tether_http_requests_total", "HTTP requests, by route and status");
    describe_histogram!("tether_http_request_duration_seconds", Unit::Seconds, "HTTP request latency, by route");
    describe_histogram!("tether_argon2_wait_seconds", Unit::Seconds, "Wait for an argon2 slot");
}

/// Middleware: counts each request by its route (the matched pattern, never
/// the raw path, so ids do not make new series) and status, and times it.
pub async fn track_http(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!("tether_http_request_duration_seconds", "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("tether_http_requests_total", "route" => route, "status" => status).increment(1);
    response
}

/// Serves `GET /metrics` (Prometheus text format) on `addr` until the process ends.
pub async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!("metrics on http://{addr}/metrics");
    let app = Router::new().route("/metrics", get(|| async { handle().render() }));
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "metrics listener stopped");
        }
    });
    Ok(())
}
