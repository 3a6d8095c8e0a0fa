//! TLS origination to HTTPS backends: hyper-util's pooled client over hyper-rustls,
//! verifying the backend against its configured CA and presenting the proxy's client
//! certificate when one is configured. A client is built when a table is built and
//! reused by the next table when nothing about it changed, so its pool survives reloads.

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

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

use crate::config::UpstreamTls;

use super::pool::IDLE_TIMEOUT;

/// A pooled client that originates TLS (HTTPS upstream, optionally with a client
/// certificate).
pub type TlsClient = Client<HttpsConnector<TimeoutConnector>, Incoming>;

/// Why a TLS client could not be built; reported as a configuration error of the service.
#[derive(Debug, thiserror::Error)]
pub enum TlsClientError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Pem { path: String, reason: String },
    #[error("client certificate: {0}")]
    ClientCert(rustls::Error),
    #[error("server name {name:?}: {reason}")]
    ServerName { name: String, reason: String },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

/// Everything a client is made of: equal keys make equal clients.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsClientKey {
    tls: UpstreamTls,
    /// Hash of the CA, certificate and key files' contents: a rotated file is a change.
    files: u64,
    connect_timeout: Duration,
}

impl TlsClientKey {
    /// Reads the files the settings name.
    pub fn new(tls: &UpstreamTls, connect_timeout: Duration) -> Result<Self, TlsClientError> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let client = tls.client.iter().flat_map(|(c, k)| [c, k]);
        for f in std::iter::once(&tls.ca).chain(client) {
            std::fs::read(f)
                .map_err(|source| TlsClientError::Read {
                    path: f.display().to_string(),
                    source,
                })?
                .hash(&mut hasher);
        }
        Ok(TlsClientKey {
            tls: tls.clone(),
            files: hasher.finish(),
            connect_timeout,
        })
    }

    /// The client: verifies the server against `tls.ca` as the server name, presents the
    /// client certificate when configured.
    pub fn build(&self) -> Result<TlsClient, TlsClientError> {
        let tls = &self.tls;
        let pem = |path: &std::path::Path, e: &dyn std::fmt::Display| TlsClientError::Pem {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(&tls.ca).map_err(|e| pem(&tls.ca, &e))? {
            let ca = ca.map_err(|e| pem(&tls.ca, &e))?;
            roots.add(ca).map_err(|e| pem(&tls.ca, &e))?;
        }
        let builder = ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let config = match &tls.client {
            Some((cert, key)) => {
                let chain: Vec<_> = CertificateDer::pem_file_iter(cert)
                    .and_then(|i| i.collect::<Result<_, _>>())
                    .map_err(|e| pem(cert, &e))?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, &e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(TlsClientError::ClientCert)?
            }
            None => builder.with_no_client_auth(),
        };
        let server_name = &tls.server_name;
        let name =
            ServerName::try_from(server_name.clone()).map_err(|e| TlsClientError::ServerName {
                name: server_name.clone(),
                reason: e.to_string(),
            })?;
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .with_server_name_resolver(FixedServerNameResolver::new(name))
            .enable_http1()
            .wrap_connector(TimeoutConnector {
                inner: http,
                timeout: self.connect_timeout,
            });
        Ok(Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .build(https))
    }
}

/// `HttpConnector` with a connect timeout.
#[derive(Clone)]
pub struct TimeoutConnector {
    inner: HttpConnector,
    timeout: Duration,
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
        let timeout = self.timeout;
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(Ok(io)) => Ok(io),
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(Box::new(super::UpstreamError::ConnectTimeout(timeout)) as BoxError),
            }
        })
    }
}

/// A built client with the key it was built from, shared by every backend of a table
/// that uses the same settings.
pub struct Tls {
    pub key: TlsClientKey,
    pub client: Arc<TlsClient>,
}
