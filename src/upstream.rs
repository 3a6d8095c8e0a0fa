//! Clients to backends. Plain HTTP/1.1 upstreams use `Upstream::send`: keep-alive
//! connections kept per thread (one per worker: every worker runs a current-thread runtime), so a request
//! takes an idle connection with no lock, no shared cache line and no task spawned to
//! watch for its return. HTTPS upstreams use hyper-util's pooled client (hyper-rustls).
//! The connect timeout can change on reload without dropping either pool.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use http_body::Body as _;
use hyper::client::conn::http1::SendRequest;
use rustc_hash::FxHashMap;

use http::Uri;
use hyper::body::Incoming;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tower_service::Service as _;

use crate::config::UpstreamTls;

/// How long an idle pooled upstream connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

pub struct Upstream {
    connect_timeout_ms: Arc<AtomicU64>,
    /// One pooled client per distinct upstream TLS setting (and file contents), kept
    /// across reloads so that pools survive them. Touched only when a table is built.
    tls: Mutex<HashMap<TlsKey, Arc<TlsClient>>>,
}

type TlsKey = (UpstreamTls, String, u64);

/// A pooled client that originates TLS (HTTPS upstream, optionally with a client
/// certificate).
pub type TlsClient = Client<HttpsConnector<TimeoutConnector>, Incoming>;

impl Upstream {
    pub fn new(connect_timeout: Duration) -> Self {
        Upstream {
            connect_timeout_ms: Arc::new(AtomicU64::new(connect_timeout.as_millis() as u64)),
            tls: Mutex::new(HashMap::new()),
        }
    }

    fn connector(&self) -> TimeoutConnector {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        TimeoutConnector {
            inner: http,
            timeout_ms: self.connect_timeout_ms.clone(),
        }
    }

    /// The client for a TLS service: verifies the server against `tls.ca` as
    /// `server_name`, presents the client certificate when configured.
    pub fn tls_client(
        &self,
        tls: &UpstreamTls,
        server_name: &str,
    ) -> Result<Arc<TlsClient>, String> {
        let mut files = vec![&tls.ca];
        if let Some((c, k)) = &tls.client {
            files.extend([c, k]);
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for f in &files {
            std::fs::read(f)
                .map_err(|e| format!("cannot read {}: {e}", f.display()))?
                .hash(&mut hasher);
        }
        let key = (tls.clone(), server_name.to_string(), hasher.finish());
        let mut cache = self.tls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let mut roots = RootCertStore::empty();
        let cas = CertificateDer::pem_file_iter(&tls.ca)
            .map_err(|e| format!("{}: {e}", tls.ca.display()))?;
        for ca in cas {
            let ca = ca.map_err(|e| format!("{}: {e}", tls.ca.display()))?;
            roots
                .add(ca)
                .map_err(|e| format!("{}: {e}", tls.ca.display()))?;
        }
        let builder = ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let config = match &tls.client {
            Some((cert, key)) => {
                let chain: Vec<_> = CertificateDer::pem_file_iter(cert)
                    .and_then(|i| i.collect::<Result<_, _>>())
                    .map_err(|e| format!("{}: {e}", cert.display()))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("{}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("client certificate: {e}"))?
            }
            None => builder.with_no_client_auth(),
        };
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| format!("server name {server_name:?}: {e}"))?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .with_server_name_resolver(FixedServerNameResolver::new(name))
            .enable_http1()
            .wrap_connector(self.connector());
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(https);
        let client = Arc::new(client);
        cache.insert(key, client.clone());
        Ok(client)
    }

    pub fn set_connect_timeout(&self, timeout: Duration) {
        self.connect_timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }
}

/// `HttpConnector` with a connect timeout read at each new connection.
#[derive(Clone)]
pub struct TimeoutConnector {
    inner: HttpConnector,
    timeout_ms: Arc<AtomicU64>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for TimeoutConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let timeout = Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed));
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(Ok(io)) => Ok(io),
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(format!(
                    "connect timed out after {}",
                    humantime::format_duration(timeout)
                )
                .into()),
            }
        })
    }
}

// === Pool: plain HTTP/1.1, per thread ===

thread_local! {
    /// Idle connections by endpoint (`ip:port`), most recently used last.
    static IDLE: RefCell<FxHashMap<Box<str>, Vec<Idle>>> = RefCell::new(FxHashMap::default());
}

struct Idle {
    sender: SendRequest<Incoming>,
    since: Instant,
}

/// Why an upstream request got no response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// From `TimeoutConnector`: refused, unreachable, timed out.
    #[error(transparent)]
    Connect(BoxError),
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error(transparent)]
    Client(#[from] hyper_util::client::legacy::Error),
}

impl SendError {
    /// The upstream could not be reached (as opposed to failing mid-request).
    pub fn is_connect(&self) -> bool {
        match self {
            SendError::Connect(_) => true,
            SendError::Http(_) => false,
            SendError::Client(e) => e.is_connect(),
        }
    }
}

impl Upstream {
    /// Send `req` (origin-form URI, `Host` set) to `endpoint` over plain HTTP/1.1 on an
    /// idle pooled connection, or a new one. A request that a reused connection closed
    /// before it was written goes out again on a new connection, as hyper-util's client does.
    pub async fn send(
        &self,
        endpoint: &Authority,
        mut req: Request<Incoming>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let key = endpoint.as_str();
        while let Some(mut sender) = take_idle(key) {
            if !sender.is_ready() && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(pooled(resp, sender, endpoint)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(e.into_error().into()),
                },
            }
        }
        let mut sender = self.connect(endpoint).await?;
        let resp = sender.send_request(req).await?;
        Ok(pooled(resp, sender, endpoint))
    }

    async fn connect(&self, endpoint: &Authority) -> Result<SendRequest<Incoming>, SendError> {
        let uri = Uri::builder()
            .scheme("http")
            .authority(endpoint.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| SendError::Connect(e.into()))?;
        let io = self
            .connector()
            .call(uri)
            .await
            .map_err(SendError::Connect)?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(io)
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("upstream connection ended: {e}");
            }
        });
        Ok(sender)
    }
}

/// The most recently used idle connection to `key`; closed ones are dropped. It may not
/// be ready yet: its task can still be finishing the last response (on another thread,
/// under a multi-thread runtime), which takes microseconds.
fn take_idle(key: &str) -> Option<SendRequest<Incoming>> {
    IDLE.with_borrow_mut(|idle| {
        let list = idle.get_mut(key)?;
        while let Some(i) = list.pop() {
            if !i.sender.is_closed() {
                return Some(i.sender);
            }
        }
        None
    })
}

/// Put a connection back after its response ended; connections idle longer than
/// `POOL_IDLE` at the front of the list are closed here (`sweep_idle` gets the rest).
fn put_idle(key: &str, sender: SendRequest<Incoming>) {
    if sender.is_closed() {
        return;
    }
    let now = Instant::now();
    IDLE.with_borrow_mut(|idle| {
        let list = match idle.get_mut(key) {
            Some(list) => list,
            None => idle.entry(key.into()).or_default(),
        };
        // most recently used last, so the longest idle are first
        let expired = list
            .iter()
            .take_while(|i| now.duration_since(i.since) >= POOL_IDLE)
            .count();
        list.drain(..expired);
        list.push(Idle { sender, since: now });
    });
}

/// Close this thread's pooled connections idle longer than `POOL_IDLE`, every third of
/// it, for as long as the worker serves (endpoints without traffic never call `put_idle`).
pub async fn sweep_idle() {
    let mut tick = tokio::time::interval(POOL_IDLE / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        IDLE.with_borrow_mut(|idle| {
            for list in idle.values_mut() {
                list.retain(|i| !i.sender.is_closed() && now.duration_since(i.since) < POOL_IDLE);
            }
            idle.retain(|_, list| !list.is_empty());
        });
    }
}

fn pooled(
    resp: Response<Incoming>,
    sender: SendRequest<Incoming>,
    endpoint: &Authority,
) -> Response<UpstreamBody> {
    // a 101 hands the connection to the tunnel; it never comes back
    let back = (resp.status() != http::StatusCode::SWITCHING_PROTOCOLS)
        .then(|| (endpoint.clone(), sender));
    resp.map(|inner| UpstreamBody { inner, back })
}

/// A backend's response body. When it ends, the connection it came on goes back to the
/// pool; dropped before its end, the connection closes (HTTP/1.1 cannot skip the rest).
pub struct UpstreamBody {
    inner: Incoming,
    /// Routing-table authorities are `'static`: cloning one copies a pointer.
    back: Option<(Authority, SendRequest<Incoming>)>,
}

impl UpstreamBody {
    pub fn new(inner: Incoming) -> Self {
        UpstreamBody { inner, back: None }
    }

    fn give_back(&mut self) {
        if let Some((endpoint, sender)) = self.back.take() {
            put_idle(endpoint.as_str(), sender);
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.give_back();
        }
    }
}
