//! TLS termination with rustls (ring provider): certificate and key from PEM files, client
//! certificates verified by rustls' WebPKI verifier against `clientCA`, ALPN h2 and
//! http/1.1, session tickets and a session cache for resumption. The verified client
//! identity is turned once per connection into an `x-forwarded-client-cert` value.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::HeaderValue;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::config::{ClientAuth, TlsSettings};
use crate::identity::Identity;

/// Why the TLS material cannot serve; the messages name the field and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{field}: cannot read {}: {source}", .path.display())]
    Pem {
        field: &'static str,
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{field}: cannot read {}: no PEM certificate in the file", .path.display())]
    NoCertificate { field: &'static str, path: PathBuf },
    #[error("spec.tls: clientCA {}: {source}", .path.display())]
    ClientCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("spec.tls: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("spec.tls: certificate and key do not form a usable pair: {0}")]
    Pair(#[source] rustls::Error),
    #[error("spec.tls: {0}")]
    Rustls(#[source] rustls::Error),
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A ready TLS acceptor for one set of certificate, key and client CA.
pub struct Acceptor {
    inner: tokio_rustls::TlsAcceptor,
    /// The server's own SPIFFE ID, for the `By=` element of XFCC.
    by: Option<Arc<str>>,
}

impl Acceptor {
    pub fn new(settings: &TlsSettings) -> Result<Acceptor, TlsError> {
        let chain = load_certs("spec.tls.cert", &settings.cert)?;
        let key = PrivateKeyDer::from_pem_file(&settings.key).map_err(|source| TlsError::Pem {
            field: "spec.tls.key",
            path: settings.key.clone(),
            source,
        })?;
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Rustls)?;
        let builder = match &settings.client_auth {
            ClientAuth::Require(ca) | ClientAuth::Optional(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in load_certs("spec.tls.clientCA", ca)? {
                    roots.add(cert).map_err(|source| TlsError::ClientCa {
                        path: ca.clone(),
                        source,
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                let verifier = if matches!(settings.client_auth, ClientAuth::Optional(_)) {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                builder.with_client_cert_verifier(verifier.build()?)
            }
            ClientAuth::None => builder.with_no_client_auth(),
        };
        let by = chain
            .first()
            .and_then(|c| Identity::from_der(c))
            .and_then(|i| i.spiffe)
            .map(Arc::from);
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(TlsError::Pair)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsError::Rustls)?;
        Ok(Acceptor {
            inner: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            by,
        })
    }

    /// Handshake; returns the stream, and what `Accepted::identify` needs later.
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<Accepted> {
        // boxed: the session is the biggest part of a connection, and passed on by pointer
        // it is never held twice in the connection's task (see server.rs)
        let stream = Box::new(self.inner.accept(tcp).await?);
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok(Accepted {
            stream,
            h2,
            by: self.by.clone(),
        })
    }
}

/// A finished handshake.
pub struct Accepted {
    pub stream: Box<TlsStream<TcpStream>>,
    /// ALPN chose HTTP/2.
    pub h2: bool,
    /// The server's SPIFFE ID, for XFCC.
    pub by: Option<Arc<str>>,
}

/// The verified client identity of a TLS stream, and its XFCC value. Read from the session
/// when the first request comes, not kept from the handshake: rustls keeps the client's
/// certificate anyway, and a connection that is idle meanwhile holds nothing more.
pub fn identify(
    stream: &TlsStream<TcpStream>,
    by: Option<&str>,
) -> (Option<Identity>, Option<HeaderValue>) {
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|leaf| Identity::from_der(leaf));
    let xfcc = identity
        .as_ref()
        // from_str copies: a String's spare capacity would stay with the connection
        .and_then(|id| HeaderValue::from_str(&id.xfcc(by)).ok());
    (identity, xfcc)
}

/// Why a handshake failed, as a metric label: a scanner must not flood the log, so failures
/// are counted by reason and logged at debug level only.
pub fn failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError as C, Error as E};
    match e.get_ref().and_then(|inner| inner.downcast_ref::<E>()) {
        Some(E::NoCertificatesPresented) => "no_client_certificate",
        Some(E::InvalidCertificate(c)) => match c {
            C::UnknownIssuer => "unknown_ca",
            C::Expired | C::ExpiredContext { .. } => "expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "not_yet_valid",
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => "bad_key_usage",
            _ => "bad_certificate",
        },
        Some(E::AlertReceived(_)) => "alert_received",
        Some(E::NoApplicationProtocol) => "no_alpn",
        Some(E::PeerIncompatible(_)) => "incompatible",
        Some(_) => "protocol",
        None => "io",
    }
}

fn load_certs(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |source| TlsError::Pem {
        field,
        path: path.to_path_buf(),
        source,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(err)?
        .collect::<Result<_, _>>()
        .map_err(err)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            field,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}
