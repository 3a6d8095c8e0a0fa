//! The pooled client to backends: hyper-util's keep-alive pool over TCP with TCP_NODELAY.
//! The connect timeout can change on reload without dropping the pool.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::body::Incoming;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

use crate::config::UpstreamTls;

/// How long an idle pooled upstream connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

pub struct Upstream {
    client: Client<TimeoutConnector, Incoming>,
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
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(true);
        let connect_timeout_ms = Arc::new(AtomicU64::new(connect_timeout.as_millis() as u64));
        let connector = TimeoutConnector {
            inner: http,
            timeout_ms: connect_timeout_ms.clone(),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(connector);
        Upstream {
            client,
            connect_timeout_ms,
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

    #[inline]
    pub fn request(&self, req: http::Request<Incoming>) -> ResponseFuture {
        self.client.request(req)
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
