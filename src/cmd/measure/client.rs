//! The client side of one connection: where to connect ([`Target`], worked out once from
//! the arguments), the TLS client configuration (with the `--insecure` verifier), the TCP,
//! TLS and HTTP handshakes, and one request on the connection with its error kind.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;

use super::{MeasureArgs, NO_CLASS};

/// Where and how to connect, worked out once and shared by the connection tasks.
pub(super) struct Target {
    pub(super) addr: SocketAddr,
    pub(super) tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    pub(super) h2: bool,
    /// `Host` for HTTP/1.1.
    pub(super) host: HeaderValue,
    /// Absolute URI for HTTP/2, which carries the authority as `:authority`.
    pub(super) uri_h2: Uri,
    /// Origin-form request target for HTTP/1.1.
    pub(super) path: Uri,
    pub(super) header: HeaderName,
    pub(super) timeout: Duration,
}

/// The request side of one HTTP connection.
pub(super) enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

/// The [`Target`] the arguments name: the URL resolved, the Host and request targets, the
/// TLS connector. `Err` for anything unusable in them.
pub(super) async fn target(args: &MeasureArgs) -> anyhow::Result<Target> {
    let uri: Uri = args
        .url
        .parse()
        .with_context(|| format!("--url: not a URL: {:?}", args.url))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => bail!("--url must start with http:// or https://"),
    };
    let authority = uri.authority().context("--url has no host")?;
    // `[::1]` in a URL, `::1` for the resolver and for an IP server name
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    // the URL's authority without any user:password@
    let url_authority = authority
        .as_str()
        .rsplit_once('@')
        .map_or(authority.as_str(), |(_, a)| a);
    let host_header = args.host.as_deref().unwrap_or(url_authority);
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/");
    // parsing the absolute URI also validates --host for the Host header
    let uri_h2: Uri = format!(
        "{}://{host_header}{path}",
        if https { "https" } else { "http" }
    )
    .parse()
    .with_context(|| format!("--host {host_header:?} is not a valid host[:port]"))?;
    let host_value = HeaderValue::from_str(host_header)
        .with_context(|| format!("--host {host_header:?} is not a valid header value"))?;
    let path: Uri = path.parse().context("--url: bad path")?;
    let tls = if https {
        let sni = args.sni.clone().unwrap_or(host);
        // an IP address becomes an IP server name (no SNI extension is sent for it)
        let name = ServerName::try_from(sni.clone())
            .with_context(|| format!("invalid TLS server name {sni:?}"))?;
        let config = Arc::new(client_config(args)?);
        Some((tokio_rustls::TlsConnector::from(config), name))
    } else {
        None
    };
    let header = HeaderName::from_bytes(args.header.as_bytes())
        .with_context(|| format!("--header: {:?} is not a header name", args.header))?;
    Ok(Target {
        addr,
        tls,
        h2: args.h2,
        host: host_value,
        uri_h2,
        path,
        header,
        timeout: args.timeout,
    })
}

fn client_config(args: &MeasureArgs) -> anyhow::Result<ClientConfig> {
    let provider = crate::tls::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if args.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
    } else {
        let ca = args.cacert.as_ref().context(
            "https needs --cacert FILE (the CA of the proxy's certificate) or --insecure",
        )?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("cannot read {}", ca.display()))?
        {
            roots
                .add(cert.with_context(|| format!("bad PEM in {}", ca.display()))?)
                .with_context(|| format!("bad CA certificate in {}", ca.display()))?;
        }
        if roots.is_empty() {
            bail!("--cacert {}: no certificate in it", ca.display());
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("cannot read {}", cert.display()))?;
            if chain.is_empty() {
                bail!("--cert {}: no certificate in it", cert.display());
            }
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("cannot read a private key from {}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .context("--cert and --key do not make a usable client identity")?
        }
        (None, None) => builder.with_no_client_auth(),
        // clap enforces the pair on the command line; library callers get told too
        _ => bail!("--cert and --key go together"),
    };
    config.alpn_protocols = if args.h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(config)
}

/// `--insecure`: accept any server certificate, but still check the handshake signatures,
/// so the peer must at least hold the key of the certificate it shows.
#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A new connection: TCP, TLS when https, then the HTTP handshake.
async fn connect(t: &Target) -> Result<Sender, &'static str> {
    let tcp = TcpStream::connect(t.addr).await.map_err(|_| "connect")?;
    // requests are small and one at a time: Nagle would only add latency
    let _ = tcp.set_nodelay(true);
    match &t.tls {
        Some((connector, name)) => {
            let tls = connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|_| "tls")?;
            // without this, a server that ignores ALPN h2 would fail later as garbage
            if t.h2 && tls.get_ref().1.alpn_protocol() != Some(b"h2".as_slice()) {
                return Err("alpn");
            }
            handshake(t.h2, TokioIo::new(tls)).await
        }
        None => handshake(t.h2, TokioIo::new(tcp)).await,
    }
}

async fn handshake<I>(h2: bool, io: I) -> Result<Sender, &'static str>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // the connection futures end by themselves when the sender is dropped or the peer
    // closes; their errors surface on the sender, so they need no handling here
    if h2 {
        let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| error_kind(&e))?;
        tokio::spawn(conn);
        Ok(Sender::H2(sender))
    } else {
        let (sender, conn) = http1::handshake(io).await.map_err(|e| error_kind(&e))?;
        tokio::spawn(conn);
        Ok(Sender::H1(sender))
    }
}

/// One request on the connection (made or remade first if needed): status and class.
pub(super) async fn one_request(
    t: &Target,
    sender: &mut Option<Sender>,
) -> Result<(http::StatusCode, String), &'static str> {
    // a connection the server closed (keep-alive timeout, GOAWAY) is replaced before the
    // request, not counted as a failure
    let usable = match sender {
        Some(Sender::H1(s)) => s.ready().await.is_ok(),
        Some(Sender::H2(s)) => s.ready().await.is_ok(),
        None => false,
    };
    let s = match sender {
        Some(s) if usable => s,
        _ => sender.insert(connect(t).await?),
    };
    let resp = match s {
        Sender::H1(s) => {
            let mut req = Request::new(Empty::new());
            *req.uri_mut() = t.path.clone();
            req.headers_mut().insert(http::header::HOST, t.host.clone());
            s.send_request(req).await
        }
        Sender::H2(s) => {
            let mut req = Request::new(Empty::new());
            *req.uri_mut() = t.uri_h2.clone();
            s.send_request(req).await
        }
    }
    .map_err(|e| error_kind(&e))?;
    let status = resp.status();
    let class = match resp.headers().get(&t.header) {
        Some(v) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
        None => NO_CLASS.to_string(),
    };
    // read the body to its end, so the connection can carry the next request, without
    // keeping it: a huge body must not become a huge allocation
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        frame.map_err(|e| error_kind(&e))?;
    }
    Ok((status, class))
}

/// The error kind of a failed exchange: `timeout`, `io` (the connection broke), or
/// `http` (the peer spoke the protocol wrongly).
fn error_kind(e: &hyper::Error) -> &'static str {
    if e.is_timeout() {
        return "timeout";
    }
    if e.is_closed() || e.is_incomplete_message() || e.is_canceled() {
        return "io";
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return "io";
        }
        source = s.source();
    }
    "http"
}
