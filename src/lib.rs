//! splitproxy: a small L7 reverse proxy that terminates mTLS and splits traffic between
//! backends by weight, following SMI `TrafficSplit` documents that it reloads live.
//!
//! # The life of a request (one worker thread, nothing shared but `live::Live`)
//!
//! ```text
//! server::serve        accept (under limits.connections) -> server::serve_conn: TLS
//!                      handshake (tls::Acceptor), ConnInfo (peer, identity, XFCC),
//!                      h1guard (strict HTTP/1.1 scanner, timeouts), the first bytes
//!                      pick hyper's HTTP/1.1 or HTTP/2 connection
//! proxy::handle        timer starts; live.routes.load_full(); path::normalize_uri;
//!                      RoutingTable::route:
//!                      host -> Route -> Split (matches, access) -> Backend -> endpoint
//!                      (ejected ones left out) = routing::Routed, or routing::Refused
//!                      (404, 403, 503, ...)
//!                      with accessLog: json an accesslog::Entry of cheap clones follows
//!                      the request
//!   Forward::send      headers rewritten, x-request-id settled (accesslog::request_id)
//!                      -> upstream::Upstream::send on the worker's pool (plain or TLS;
//!                      upstream::h1 drives the exchange) -> a retry elsewhere if the request never
//!                      reached a backend -> endpoint health -> response headers
//!   proxy::answer      response::ProxyError -> the proxy's own answer; metrics, once
//!   accesslog::LogBody at the body's end the entry is queued (try_send, bounded) to the
//!                      writer thread, which formats JSON lines onto stdout
//! ```
//!
//! # The life of a configuration
//!
//! ```text
//! reload::ConfigWatch (notify, debounce, SIGHUP) -> load::load: config::load (files ->
//!   raw serde -> validated Config) -> tls::Acceptor -> RoutingTable::build = Loaded
//!   -> reload::Reloader: ArcSwap::store (table, acceptor) -> next request
//! app::Server::start and `validate` run the same load::load
//! ```
//!
//! Modules of the proxy: `app` (wiring, workers, shutdown), `server`, `h1guard` (HTTP/1.1
//! request-stream scanner, head and idle timeouts), `tls`, `identity`, `proxy`, `response`
//! (body type, the proxy's own answers), `path` (request path normalisation, before
//! routing), `routing` (the immutable table; `endpoints`: DNS; `outlier`; `describe`),
//! `split` (weighted random, deterministic schedule, rendezvous hashing), `access` (TrafficTarget
//! policy), `health` (endpoint health for outlier detection, per process), `upstream`
//! (`pool`: per-worker HTTP/1.1 connections, plain and TLS; `body`: the request body
//! sent upstream), `live` (what the request path reads), `load` (the one pipeline),
//! `reload`, `admin`, `metrics`, `accesslog` (access log lines and the request id),
//! `config` (documents and validation). The tool commands live under `cmd`.

#![forbid(unsafe_code)]

pub mod access;
pub mod accesslog;
pub mod admin;
pub mod app;
pub mod cmd;
pub mod config;
pub mod h1guard;
pub mod health;
pub mod identity;
pub mod live;
pub mod load;
pub mod metrics;
pub mod path;
pub mod proxy;
pub mod reload;
pub mod response;
pub mod routing;
pub mod server;
pub mod split;
pub mod timer;
pub mod tls;
pub mod upstream;

pub use app::{Server, StartError};

/// Seconds since the Unix epoch, for timestamps in metrics.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
