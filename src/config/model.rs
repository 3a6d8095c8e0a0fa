//! The validated configuration: what the rest of the proxy reads. Every default is applied
//! and every value checked; nothing here is an `Option` that validation already decided.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;

use super::{Endpoint, Origin};

/// A whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The path given on the command line (file or folder).
    pub path: PathBuf,
    /// The other files the documents name (TLS certificates, keys, CAs), in the order
    /// they name them; a reload watches their folders too.
    pub files: Vec<PathBuf>,
    /// Hash of the YAML files and of `files`: equal fingerprints mean nothing changed.
    pub fingerprint: u64,
    /// What was found worth a warning (plain HTTP, skipped documents), logged once when
    /// this configuration was first read; a reload logs only the ones new to it.
    pub warnings: Vec<String>,
    pub proxy: Proxy,
    pub splits: Vec<TrafficSplit>,
    pub route_groups: Vec<HttpRouteGroup>,
    pub targets: Vec<TrafficTarget>,
    /// Gateway API HTTPRoutes, in the order read.
    pub httproutes: Vec<HttpRoute>,
}

#[derive(Debug, Clone)]
pub struct Proxy {
    pub origin: Origin,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub tls: Option<TlsSettings>,
    pub access: AccessMode,
    pub timeouts: Timeouts,
    pub shutdown: ShutdownSettings,
    pub expose_backend: bool,
    /// SPIFFE trust domain callers must belong to under `access: enforce`.
    pub trust_domain: String,
    pub limits: Limits,
    pub retries: Retries,
    pub outlier_detection: OutlierDetection,
    pub access_log: AccessLog,
    pub services: BTreeMap<String, Service>,
}

/// `spec.accessLog`: one line per request on stdout, or none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AccessLog {
    #[default]
    Off,
    Json,
}

/// A backend service: where it runs, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub endpoints: Vec<Endpoint>,
    /// Connect with TLS (HTTPS upstream) when set.
    pub tls: Option<UpstreamTls>,
    /// The HTTP version spoken to the endpoints (`protocol`).
    pub protocol: Protocol,
}

/// How the proxy talks to a service's endpoints (`spec.services.<name>.protocol`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1 (`http1`, the default), ALPN `http/1.1` with TLS.
    #[default]
    Http1,
    /// HTTP/2 (`h2`): prior knowledge on plain TCP, ALPN `h2` with TLS; gRPC needs it.
    H2,
}

/// TLS origination to a backend: server verification against `ca`, SNI and certificate
/// name `server_name`, optional client certificate (mTLS).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    pub ca: PathBuf,
    /// `serverName`, or else the host of the service's first endpoint.
    pub server_name: String,
    pub client: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_auth: ClientAuth,
}

/// Client certificates (`spec.tls.clientAuth`), with the CA that verifies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client presents a certificate signed by this CA.
    Require(PathBuf),
    /// A certificate, when presented, must be signed by this CA; clients without one are
    /// served without an identity.
    Optional(PathBuf),
    /// No client certificates are asked for.
    None,
}

impl ClientAuth {
    /// As `spec.tls.clientAuth` writes it.
    pub fn name(&self) -> &'static str {
        match self {
            ClientAuth::Require(_) => "require",
            ClientAuth::Optional(_) => "optional",
            ClientAuth::None => "none",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessMode {
    Permissive,
    Enforce,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub upstream: Duration,
    pub client_header: Duration,
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            upstream: Duration::from_secs(30),
            client_header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownSettings {
    pub delay: Duration,
    pub grace: Duration,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        ShutdownSettings {
            delay: Duration::ZERO,
            grace: Duration::from_secs(30),
        }
    }
}

/// `spec.limits`: what one client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The whole request head (request line and headers) -> 431.
    pub request_header_bytes: usize,
    /// Header lines in one request -> 431.
    pub request_headers: usize,
    /// `None`: unlimited; else a larger body -> 413.
    pub request_body_bytes: Option<u64>,
    /// `None`: unlimited; else further connections wait in the accept queue.
    pub connections: Option<usize>,
    pub h2_max_concurrent_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_header_bytes: 32 * 1024,
            request_headers: 100,
            request_body_bytes: None,
            connections: None,
            h2_max_concurrent_streams: 128,
        }
    }
}

/// `spec.retries`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retries {
    /// Extra tries of a request that never reached a backend.
    pub attempts: u32,
}

impl Default for Retries {
    fn default() -> Self {
        Retries { attempts: 1 }
    }
}

/// `spec.outlierDetection`: passive ejection of failing endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Consecutive connect failures or resets before a response head; 0 = off.
    pub consecutive_failures: u32,
    /// Consecutive 5xx responses; 0 = off.
    pub consecutive_5xx: u32,
    /// The first ejection; the n-th ejection of an endpoint lasts n times this.
    pub base_ejection_time: Duration,
    /// At most this percentage (0..=100) of a split's backends, and of a backend's
    /// endpoints, is ejected at once; at least one may always be.
    pub max_ejected_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_failures: 5,
            consecutive_5xx: 0,
            base_ejection_time: Duration::from_secs(30),
            max_ejected_percent: 50,
        }
    }
}

/// How a split picks a backend (`splitproxy.dev/selection`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Independent weighted random draw per request (the default).
    Random,
    /// Exact interleaved order: every window of sum(weights) picks holds each weight.
    Deterministic,
    /// The backend is a function of a request key: rendezvous hashing on the key.
    Sticky(StickyKey),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyKey {
    /// `splitproxy.dev/sticky-header` (header names are lower-case).
    Header(http::HeaderName),
    /// `splitproxy.dev/sticky-cookie`: cookie name; set on responses to requests without it.
    Cookie(String),
}

impl Selection {
    pub fn name(&self) -> &'static str {
        match self {
            Selection::Random => "random",
            Selection::Deterministic => "deterministic",
            Selection::Sticky(_) => "sticky",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TrafficSplit {
    pub origin: Origin,
    pub api_version: String,
    pub name: String,
    pub namespace: String,
    /// `spec.service` as written.
    pub service: String,
    /// The lower-case host names this split answers for (every Kubernetes form).
    pub hosts: Vec<String>,
    pub backends: Vec<SplitBackend>,
    /// Names of the HTTPRouteGroups in `spec.matches` (v1alpha3+); empty: all requests.
    pub matches: Vec<String>,
    pub selection: Selection,
    /// The destination ServiceAccount for `access: enforce`.
    pub service_account: String,
    /// Where traffic goes when every weight is 0: the root service, if `spec.services`
    /// defines it (as Linkerd does).
    pub fallback: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitBackend {
    pub service: String,
    /// Relative weight; v1alpha1 quantities are in milli-units.
    pub weight: u64,
}

#[derive(Debug, Clone)]
pub struct HttpRouteGroup {
    pub origin: Origin,
    pub name: String,
    pub namespace: String,
    pub matches: Vec<HttpMatch>,
}

#[derive(Debug, Clone)]
pub struct HttpMatch {
    pub name: String,
    /// Anchored at the start.
    pub path: Option<Regex>,
    /// Upper-case; `None` = any method (`*` or absent).
    pub methods: Option<Vec<http::Method>>,
    /// Header name (lower-case) and a regex that must match the whole value.
    pub headers: Vec<(http::HeaderName, Regex)>,
}

#[derive(Debug, Clone)]
pub struct TrafficTarget {
    pub origin: Origin,
    pub name: String,
    pub namespace: String,
    /// (namespace, ServiceAccount)
    pub destination: (String, String),
    pub sources: Vec<(String, String)>,
    /// (HTTPRouteGroup name, match names; empty = all of the group)
    pub rules: Vec<(String, Vec<String>)>,
}

// === Gateway API ===

/// A validated `HTTPRoute` (gateway.networking.k8s.io v1 or v1beta1).
#[derive(Debug, Clone)]
pub struct HttpRoute {
    pub origin: Origin,
    pub api_version: String,
    pub name: String,
    pub namespace: String,
    /// Lower-case, trailing dot removed; `*.example.com` for a wildcard. Empty: every host
    /// that nothing else routes.
    pub hostnames: Vec<String>,
    /// `metadata.creationTimestamp`: the older of two routes with equal matches wins.
    pub created: Option<std::time::SystemTime>,
    pub rules: Vec<GatewayRule>,
}

/// One rule of an HTTPRoute.
#[derive(Debug, Clone)]
pub struct GatewayRule {
    /// At least one: a rule written without matches has `PathPrefix /`.
    pub matches: Vec<GatewayMatch>,
    pub backends: Vec<GatewayBackend>,
    /// The rule as the rest of the proxy sees a split: named `<route>/rules[<i>]`, its
    /// backends the resolved backendRefs (service names, DNS names, or the unresolvable
    /// refs' names), random selection, no fallback. Metrics, `/routes`, access rules and
    /// the log read it as they read a TrafficSplit.
    pub split: TrafficSplit,
}

/// One `matches[]` entry: every condition must hold.
#[derive(Debug, Clone)]
pub struct GatewayMatch {
    pub path: PathMatch,
    /// Lower-case names; only the first entry of a name is kept (as the specification says).
    pub headers: Vec<(http::HeaderName, ValueMatch)>,
    /// Case-sensitive names.
    pub query: Vec<(String, ValueMatch)>,
    pub method: Option<http::Method>,
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    /// Without its trailing `/` (the specification ignores it): `""` is `/`, every path.
    Prefix(String),
    /// Anchored at both ends.
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub enum ValueMatch {
    Exact(String),
    /// Anchored at both ends.
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub struct GatewayBackend {
    /// `name` as written.
    pub name: String,
    pub namespace: String,
    pub port: Option<u16>,
    pub weight: u64,
    pub target: BackendTarget,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendTarget {
    /// `spec.services[name]` of the Proxy document.
    Service(String),
    /// `<name>.<namespace>.svc.cluster.local:<port>`, resolved and re-resolved as any DNS
    /// endpoint.
    Dns(Endpoint),
    /// Neither: this ref's share of the rule is answered 500.
    Unresolved,
}

impl GatewayBackend {
    /// The backend label in metrics, `/routes` and `x-splitproxy-backend`.
    pub fn label(&self) -> String {
        match &self.target {
            BackendTarget::Service(s) => s.clone(),
            BackendTarget::Dns(e) => e.to_string(),
            BackendTarget::Unresolved => self.name.clone(),
        }
    }
}
