//! TLS origination to HTTPS backends: one service's rustls client settings, verifying the
//! backend against its configured CA as its configured server name and presenting the
//! proxy's client certificate when one is configured. The workers' pools open the
//! connections (`Upstream`), so TLS and plain connections share one pool and one send
//! path, keyed apart by `Tls::id`. A `Tls` is built when a table is built and reused by
//! the next table when nothing about it changed, so its id, and with it the pooled
//! connections, survive reloads.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;

use crate::config::UpstreamTls;

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
    /// ALPN `h2` (`protocol: h2`) rather than `http/1.1`.
    h2: bool,
    /// Hash of the CA, certificate and key files' contents: a rotated file is a change.
    files: u64,
}

impl TlsClientKey {
    /// Reads the files the settings name. `h2`: the client offers only `h2` by ALPN.
    pub fn new(tls: &UpstreamTls, h2: bool) -> Result<Self, TlsClientError> {
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
            h2,
            files: hasher.finish(),
        })
    }

    /// The client: verifies the server against `tls.ca` as the server name, presents the
    /// client certificate when configured, offers HTTP/1.1 (or only HTTP/2) by ALPN.
    pub fn build(self) -> Result<Tls, TlsClientError> {
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
        let mut config = match &tls.client {
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
        config.alpn_protocols = vec![if self.h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        Ok(Tls {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            connector: TlsConnector::from(Arc::new(config)),
            server_name: name,
            key: self,
        })
    }
}

/// Ids of TLS clients; 0 is the plain transport.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A built client with the key it was built from, shared by every backend of a table
/// that uses the same settings.
pub struct Tls {
    pub key: TlsClientKey,
    /// Pools key connections by it: connections of other TLS settings (or plain ones,
    /// id 0) are never reused for this client's backends.
    pub id: u64,
    pub connector: TlsConnector,
    pub server_name: ServerName<'static>,
}
