//! The live state the request path reads: the routing table and the TLS acceptor, each
//! behind its own swap, and the metrics. The reload task is the only writer; a worker adds
//! its own upstream client and never shares it.

use std::rc::Rc;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::accesslog::Sink;
use crate::metrics::Metrics;
use crate::routing::RoutingTable;
use crate::tls::Acceptor;
use crate::upstream::Upstream;

pub struct Live {
    /// The live routing table: the one `ArcSwap` load per request.
    pub routes: ArcSwap<RoutingTable>,
    /// The TLS acceptor for new connections; `None` serves plain HTTP.
    pub tls: ArcSwapOption<Acceptor>,
    pub metrics: Metrics,
}

impl Live {
    pub fn new(table: RoutingTable, tls: Option<Arc<Acceptor>>, metrics: Metrics) -> Self {
        Live {
            routes: ArcSwap::from_pointee(table),
            tls: ArcSwapOption::new(tls),
            metrics,
        }
    }
}

/// What one worker's connections share: the live state and the worker's upstream client
/// (its own connection pool). Lives on the worker's thread only.
pub struct Worker {
    pub live: Arc<Live>,
    pub upstream: Upstream,
    /// Where finished access log entries go (used only while `accessLog: json`).
    pub access_log: Rc<Sink>,
}
