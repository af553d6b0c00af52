//! Tether's load generator: real users and sessions over the HTTP API,
//! authenticated sockets spread over 127.x source addresses and over worker
//! processes, and the benchmark scenarios of `BENCHMARKS.md`.

pub mod http;
pub mod scenarios;
pub mod server;
pub mod shard;
pub mod sys;
pub mod ws;
