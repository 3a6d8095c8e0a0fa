//! splitproxy: a small L7 reverse proxy that terminates mTLS and splits traffic between
//! backends by weight, following SMI `TrafficSplit` documents that it reloads live.
//!
//! # The life of a request
//!
//! ```text
//! server::serve        accept; TLS handshake (tls::Acceptor) -> ConnInfo (peer, XFCC)
//!   hyper-util auto    HTTP/1.1 or HTTP/2
//!   proxy::handle      outer: errors -> the proxy's own responses (error::ProxyError)
//!   proxy::forward     routes.load() -> RoutingTable::lookup(host) -> Route::select
//!                      -> Split::pick (split::WeightedPicker) -> Backend::endpoint
//!                      -> headers rewritten -> upstream::Upstream (pooled) -> response
//! ```
//!
//! # The life of a configuration
//!
//! ```text
//! reload::watch (notify, debounce) -> config::load (raw serde -> validated Config)
//!   -> RoutingTable::build (off the request path) -> ArcSwap::store -> next request
//! ```
//!
//! Modules: `config` (documents and validation), `routing` (the immutable table),
//! `split` (weighted random, deterministic schedule, rendezvous hashing), `access`
//! (TrafficTarget policy), `proxy`, `upstream` (pooled plain and TLS clients), `server`,
//! `h1guard` (HTTP/1.1 head and idle timeouts), `tls`, `identity`, `reload`, `admin`,
//! `metrics`, `app` (wiring and shutdown). Beside the proxy, `cmd` holds the tool
//! commands: `cmd::measure` (load and split verdict), `cmd::demo`, `cmd::pki` (development
//! certificates), `cmd::stats` (chi-square).

#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod app;
pub mod cmd;
pub mod config;
pub mod error;
pub mod h1guard;
pub mod identity;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod server;
pub mod split;
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
