//! mTLS termination over real handshakes: client authentication modes, caller identity in
//! `x-forwarded-client-cert`, TLS 1.3 and ALPN h2, certificate rotation, `certs init`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use splitproxy::cmd::pki::{Ca, Issued, Leaf};

struct Pki {
    ca: Ca,
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA, a server certificate for localhost written to `dir`, and the CA as `ca.pem`.
    fn new() -> Pki {
        let ca = Ca::new("test CA").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        let pki = Pki { ca, dir };
        pki.write_server(
            &pki.ca
                .server(&["localhost".into(), "127.0.0.1".into()])
                .unwrap(),
        );
        pki
    }

    fn write_server(&self, s: &Issued) {
        // the way a Secret update or `cp` lands: key and cert replaced by rename
        rewrite(&self.dir.path().join("server-key.pem"), &s.key_pem);
        rewrite(&self.dir.path().join("server.pem"), &s.cert_pem);
    }

    fn client(&self, spiffe: &str) -> Issued {
        self.ca.client("client", spiffe).unwrap()
    }

    fn config(&self, backend: &Backend, client_auth: &str) -> String {
        let d = self.dir.path().display();
        let tls = format!("tls:\n  cert: {d}/server.pem\n  key: {d}/server-key.pem\n  clientCA: {d}/ca.pem\n  clientAuth: {client_auth}");
        proxy_doc(&[("web-v1", backend.addr)], &tls)
            + &split_doc("web-split", "web", &[("web-v1", 1)])
    }
}

struct TlsAnswer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
    alpn: Option<Vec<u8>>,
    version: Option<rustls::ProtocolVersion>,
    server_cert: Vec<u8>,
}

/// One request over a fresh TLS connection; `Err` when the handshake or the request fails.
async fn tls_get(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    client: Option<&Issued>,
    h2: bool,
    extra: &[(&str, &str)],
) -> Result<TlsAnswer, String> {
    tls_send(addr, ca_pem, client, h2, "GET", "/", extra).await
}

async fn tls_send(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    client: Option<&Issued>,
    h2: bool,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> Result<TlsAnswer, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(splitproxy::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some(c) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = if h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (_, session) = tls.get_ref();
    let alpn = session.alpn_protocol().map(|p| p.to_vec());
    let version = session.protocol_version();
    let server_cert = session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let io = hyper_util::rt::TokioIo::new(tls);
    let mut req = Request::builder()
        .method(method)
        .uri(format!("https://web{path}"))
        .header("host", "web");
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let req = req.body(empty()).unwrap();
    let resp = if h2 {
        let (mut s, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        s.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut s, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        s.send_request(req).await.map_err(|e| e.to_string())?
    };
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = match resp.into_body().collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    Ok(TlsAnswer {
        status,
        headers,
        body,
        alpn,
        version,
        server_cert,
    })
}

const SPIFFE: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_accepts_only_valid_client_certificates() {
    let pki = Pki::new();
    let v1 = Backend::spawn("v1").await;
    let proxy = Proxy::start(&pki.config(&v1, "require")).await;
    let ca = pki.ca.cert_pem();

    let good = pki.client(SPIFFE);
    let a = tls_get(proxy.addr, &ca, Some(&good), false, &[])
        .await
        .expect("valid client certificate");
    assert_eq!(a.status, StatusCode::OK);

    assert!(
        tls_get(proxy.addr, &ca, None, false, &[]).await.is_err(),
        "no certificate must be refused"
    );
    let other = Ca::new("other CA").unwrap().client("x", SPIFFE).unwrap();
    assert!(
        tls_get(proxy.addr, &ca, Some(&other), false, &[])
            .await
            .is_err(),
        "unknown CA must be refused"
    );
    let expired = pki
        .ca
        .issue(&Leaf {
            common_name: "old".into(),
            uris: vec![SPIFFE.into()],
            client: true,
            valid_days: Some((-30, -1)),
            ..Default::default()
        })
        .unwrap();
    assert!(
        tls_get(proxy.addr, &ca, Some(&expired), false, &[])
            .await
            .is_err(),
        "expired must be refused"
    );
    let future = pki
        .ca
        .issue(&Leaf {
            common_name: "new".into(),
            uris: vec![SPIFFE.into()],
            client: true,
            valid_days: Some((2, 30)),
            ..Default::default()
        })
        .unwrap();
    assert!(
        tls_get(proxy.addr, &ca, Some(&future), false, &[])
            .await
            .is_err(),
        "not yet valid must be refused"
    );
    let server_only = pki
        .ca
        .issue(&Leaf {
            common_name: "srv".into(),
            names: vec!["srv".into()],
            server: true,
            ..Default::default()
        })
        .unwrap();
    assert!(
        tls_get(proxy.addr, &ca, Some(&server_only), false, &[])
            .await
            .is_err(),
        "serverAuth-only certificate must be refused"
    );
    assert_eq!(v1.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_reaches_the_backend_in_xfcc_and_spoofing_is_stripped() {
    let pki = Pki::new();
    let v1 = Backend::spawn("v1").await;
    let proxy = Proxy::start(&pki.config(&v1, "optional")).await;
    let ca = pki.ca.cert_pem();
    let spoof = [(
        "x-forwarded-client-cert",
        "URI=spiffe://cluster.local/ns/kube-system/sa/admin",
    )];

    let client = pki.client(SPIFFE);
    let a = tls_get(proxy.addr, &ca, Some(&client), false, &spoof)
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::OK);
    let h = v1.last_headers();
    let xfcc = h["x-forwarded-client-cert"].to_str().unwrap().to_string();
    let hash = ring_sha256_hex(&client.der);
    assert!(xfcc.contains(&format!("Hash={hash}")), "{xfcc}");
    assert!(xfcc.contains(&format!("URI={SPIFFE}")), "{xfcc}");
    assert!(xfcc.contains("Subject=\"CN=client\""), "{xfcc}");
    assert!(
        !xfcc.contains("kube-system"),
        "spoofed value survived: {xfcc}"
    );
    assert_eq!(h["x-forwarded-proto"], "https");

    // DNS-only certificate: DNS= element
    let dns = pki
        .ca
        .issue(&Leaf {
            common_name: "api".into(),
            names: vec!["api.shop.svc".into()],
            client: true,
            ..Default::default()
        })
        .unwrap();
    tls_get(proxy.addr, &ca, Some(&dns), false, &[])
        .await
        .unwrap();
    let xfcc = v1.last_headers()["x-forwarded-client-cert"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        xfcc.contains("DNS=api.shop.svc") && !xfcc.contains("URI="),
        "{xfcc}"
    );

    // optional: no certificate is let through, and a spoofed header never reaches the backend
    let a = tls_get(proxy.addr, &ca, None, false, &spoof).await.unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert!(!v1.last_headers().contains_key("x-forwarded-client-cert"));
}

fn ring_sha256_hex(der: &[u8]) -> String {
    splitproxy::identity::Identity::from_der(der).unwrap().hash
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_and_alpn_h2_are_negotiated() {
    let pki = Pki::new();
    let v1 = Backend::spawn("v1").await;
    let proxy = Proxy::start(&pki.config(&v1, "require")).await;
    let client = pki.client(SPIFFE);
    let a = tls_get(proxy.addr, &pki.ca.cert_pem(), Some(&client), true, &[])
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(a.version, Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(a.headers["x-splitproxy-backend"], "web-v1");
    let a = tls_get(proxy.addr, &pki.ca.cert_pem(), Some(&client), false, &[])
        .await
        .unwrap();
    assert_eq!(a.alpn.as_deref(), Some(&b"http/1.1"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_auth_none_needs_no_certificate() {
    let pki = Pki::new();
    let v1 = Backend::spawn("v1").await;
    let proxy = Proxy::start(&pki.config(&v1, "none")).await;
    let a = tls_get(proxy.addr, &pki.ca.cert_pem(), None, false, &[])
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificate_serves_new_handshakes_and_a_bad_key_keeps_the_old() {
    let pki = Pki::new();
    let v1 = Backend::spawn("v1").await;
    let proxy = Proxy::start(&pki.config(&v1, "require")).await;
    let (ca, client) = (pki.ca.cert_pem(), pki.client(SPIFFE));
    let first = tls_get(proxy.addr, &ca, Some(&client), false, &[])
        .await
        .unwrap()
        .server_cert;

    let rotated = pki.ca.server(&["localhost".into()]).unwrap();
    pki.write_server(&rotated);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = tls_get(proxy.addr, &ca, Some(&client), false, &[])
            .await
            .unwrap()
            .server_cert;
        if seen == rotated.der {
            break;
        }
        assert_eq!(seen, first, "neither old nor new certificate");
        assert!(Instant::now() < deadline, "rotation not picked up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // a key that does not match the certificate: the old pair keeps serving
    let other = pki.ca.server(&["localhost".into()]).unwrap();
    rewrite(&pki.dir.path().join("server-key.pem"), &other.key_pem);
    // the file watcher (or a SIGHUP) rejects it and counts the failure
    let server = proxy.server.as_ref().unwrap();
    let _ = server.reload().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server
        .last_reload_errors()
        .first()
        .is_some_and(|e| e.contains("do not form a usable pair"))
    {
        assert!(
            Instant::now() < deadline,
            "mismatched key not rejected: {:?}",
            server.last_reload_errors()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seen = tls_get(proxy.addr, &ca, Some(&client), false, &[])
        .await
        .expect("still serving")
        .server_cert;
    assert_eq!(seen, rotated.der);
}

#[test]
fn certs_init_output_is_accepted_by_openssl_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let bin = env!("CARGO_BIN_EXE_splitproxy");
    let run = |args: &[&str]| std::process::Command::new(bin).args(args).output().unwrap();
    let out = run(&[
        "certs",
        "init",
        "--dir",
        d,
        "--client",
        "frontend=spiffe://cluster.local/ns/shop/sa/frontend",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "ca.pem",
        "ca-key.pem",
        "server.pem",
        "server-key.pem",
        "frontend.pem",
        "frontend-key.pem",
    ] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
    use std::os::unix::fs::PermissionsExt;
    for key in ["ca-key.pem", "server-key.pem", "frontend-key.pem"] {
        let mode = std::fs::metadata(dir.path().join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    let again = run(&["certs", "init", "--dir", d]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert!(run(&["certs", "init", "--dir", d, "--force"])
        .status
        .success());
    if Path::new("/usr/bin/openssl").exists() {
        for leaf in ["server.pem", "client.pem"] {
            let v = std::process::Command::new("openssl")
                .args([
                    "verify",
                    "-CAfile",
                    &format!("{d}/ca.pem"),
                    &format!("{d}/{leaf}"),
                ])
                .output()
                .unwrap();
            assert!(
                v.status.success(),
                "openssl verify {leaf}: {}",
                String::from_utf8_lossy(&v.stdout)
            );
        }
    }
}

const POLICY: &str = r#"
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata:
  name: web-routes
  namespace: default
spec:
  matches:
  - name: api
    pathRegex: "/api"
    methods: ["GET"]
  - name: metrics
    pathRegex: "/metrics"
    methods: ["*"]
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata:
  name: frontend-to-web
  namespace: default
spec:
  destination:
    kind: ServiceAccount
    name: web
    namespace: default
  rules:
  - kind: HTTPRouteGroup
    name: web-routes
    matches:
    - api
  sources:
  - kind: ServiceAccount
    name: frontend
    namespace: shop
---
apiVersion: access.smi-spec.io/v1alpha1
kind: TrafficTarget
metadata:
  name: prometheus-to-web
  namespace: default
destination:
  kind: ServiceAccount
  name: web
  namespace: default
specs:
- kind: HTTPRouteGroup
  name: web-routes
  matches:
  - metrics
sources:
- kind: ServiceAccount
  name: prometheus
  namespace: monitoring
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_allows_exactly_the_traffic_target_sources_and_routes() {
    let pki = Pki::new();
    let v1 = Backend::spawn("v1").await;
    let yaml = pki.config(&v1, "require").replace(
        "  exposeBackend: true\n",
        "  exposeBackend: true\n  access: enforce\n",
    ) + POLICY;
    let proxy = Proxy::start(&yaml).await;
    let ca = pki.ca.cert_pem();
    let frontend = pki.client(SPIFFE);
    let prometheus = pki.client("spiffe://cluster.local/ns/monitoring/sa/prometheus");
    let stranger = pki.client("spiffe://cluster.local/ns/shop/sa/stranger");
    // OSM's own certificate form: CN <sa>.<ns>.<trust-domain>, no URI SAN
    let osm = pki
        .ca
        .issue(&Leaf {
            common_name: "frontend.shop.cluster.local".into(),
            client: true,
            ..Default::default()
        })
        .unwrap();

    let call = |who: &Issued, method: &'static str, path: &'static str| {
        let ca = ca.clone();
        let who = Issued {
            cert_pem: who.cert_pem.clone(),
            key_pem: who.key_pem.clone(),
            der: who.der.clone(),
        };
        async move {
            tls_send(proxy.addr, &ca, Some(&who), false, method, path, &[])
                .await
                .unwrap()
        }
    };
    assert_eq!(
        call(&frontend, "GET", "/api/items").await.status,
        StatusCode::OK
    );
    assert_eq!(call(&osm, "GET", "/api/items").await.status, StatusCode::OK);
    assert_eq!(
        call(&frontend, "POST", "/api/items").await.status,
        StatusCode::FORBIDDEN,
        "method not in the rule"
    );
    assert_eq!(
        call(&frontend, "GET", "/metrics").await.status,
        StatusCode::FORBIDDEN,
        "match not granted to frontend"
    );
    assert_eq!(
        call(&prometheus, "GET", "/metrics").await.status,
        StatusCode::OK
    );
    assert_eq!(
        call(&prometheus, "GET", "/api").await.status,
        StatusCode::FORBIDDEN
    );
    let denied = call(&stranger, "GET", "/api").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert!(
        denied
            .body
            .contains("spiffe://cluster.local/ns/shop/sa/stranger")
            && denied.body.contains("web"),
        "{}",
        denied.body
    );
    assert_eq!(denied.headers["server"], "splitproxy");
    assert_eq!(v1.hits(), 3);

    // permissive: every verified caller gets through
    let proxy = Proxy::start(&(pki.config(&v1, "require") + POLICY)).await;
    let a = tls_send(
        proxy.addr,
        &ca,
        Some(&stranger),
        false,
        "POST",
        "/anything",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshakes_are_counted_by_reason() {
    let pki = Pki::new();
    let v1 = Backend::spawn("v1").await;
    let proxy = Proxy::start(&pki.config(&v1, "require")).await;
    let ca = pki.ca.cert_pem();
    let _ = tls_get(proxy.addr, &ca, None, false, &[]).await;
    let other = Ca::new("other CA").unwrap().client("x", SPIFFE).unwrap();
    let _ = tls_get(proxy.addr, &ca, Some(&other), false, &[]).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, metrics) = admin_get(&proxy, "/metrics").await;
        if metrics
            .contains("splitproxy_tls_handshake_failures_total{reason=\"no_client_certificate\"} 1")
            && metrics.contains("splitproxy_tls_handshake_failures_total{reason=\"unknown_ca\"} 1")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A backend that only speaks HTTPS and requires a client certificate from `ca`; answers
/// with the client's CN in `x-peer`.
async fn tls_backend(pki: &Pki) -> std::net::SocketAddr {
    let server = pki.ca.server(&["backend.internal".into()]).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        splitproxy::tls::provider(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(splitproxy::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(server.cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let cn = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| splitproxy::identity::Identity::from_der(c))
                    .and_then(|i| i.cn)
                    .unwrap_or_default();
                let svc = hyper::service::service_fn(move |_req| {
                    let cn = cn.clone();
                    async move {
                        let mut r = http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(b"secure"),
                        ));
                        r.headers_mut().insert("x-peer", cn.parse().unwrap());
                        r.headers_mut()
                            .insert("x-backend", "secure".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_mtls_origination_to_a_tls_backend() {
    let pki = Pki::new();
    let backend = tls_backend(&pki).await;
    let proxy_client = pki
        .ca
        .client(
            "splitproxy-gateway",
            "spiffe://cluster.local/ns/gw/sa/gateway",
        )
        .unwrap();
    let d = pki.dir.path();
    std::fs::write(d.join("up-client.pem"), &proxy_client.cert_pem).unwrap();
    std::fs::write(d.join("up-client-key.pem"), &proxy_client.key_pem).unwrap();
    let service = |ca: &str| {
        format!(
            "apiVersion: splitproxy.dev/v1alpha1\nkind: Proxy\nmetadata:\n  name: t\nspec:\n  listen: 127.0.0.1:0\n  admin: 127.0.0.1:0\n  services:\n    secure:\n      endpoints: [\"{backend}\"]\n      tls:\n        ca: {ca}\n        serverName: backend.internal\n        cert: up-client.pem\n        key: up-client-key.pem\n"
        ) + &split_doc("s", "web", &[("secure", 1)])
    };
    // relative paths: next to the config file, which lives in the PKI folder
    let path = d.join("proxy.yaml");
    std::fs::write(&path, service("ca.pem")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_at(dir, path.clone()).await;
    let a = get(&client(), &proxy.url("/"), "web").await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (StatusCode::OK, "secure"),
        "{}",
        a.body
    );
    assert_eq!(
        a.headers["x-peer"], "splitproxy-gateway",
        "the proxy presented its client certificate"
    );

    // a CA that did not sign the backend: the handshake fails, 502
    let other = Ca::new("other").unwrap();
    std::fs::write(d.join("other-ca.pem"), other.cert_pem()).unwrap();
    std::fs::write(&path, service("other-ca.pem")).unwrap();
    proxy
        .server
        .as_ref()
        .unwrap()
        .reload()
        .await
        .expect("valid config");
    let a = get(&client(), &proxy.url("/"), "web").await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_under_8_concurrent_clients_fails_no_request() {
    let pki = Arc::new(Pki::new());
    let v1 = Backend::spawn("v1").await;
    let proxy = Proxy::start(&pki.config(&v1, "require")).await;
    let addr = proxy.addr;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let client = Arc::new(pki.client(SPIFFE));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (stop, failures, done, client, ca) = (
            stop.clone(),
            failures.clone(),
            done.clone(),
            client.clone(),
            pki.ca.cert_pem(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                // a new connection each time: every request is a new handshake
                match tls_get(addr, &ca, Some(&client), false, &[]).await {
                    Ok(a) if a.status == StatusCode::OK => {
                        done.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                    }
                    _ => failures.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                };
            }
        }));
    }
    let mut serials = Vec::new();
    for _ in 0..3 {
        let rotated = pki.ca.server(&["localhost".into()]).unwrap();
        pki.write_server(&rotated);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tls_get(addr, &pki.ca.cert_pem(), Some(&client), false, &[])
            .await
            .map(|a| a.server_cert)
            .ok()
            != Some(rotated.der.clone())
        {
            assert!(Instant::now() < deadline, "rotation not picked up");
        }
        serials.push(rotated.der);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        failures.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "{} succeeded",
        done.load(std::sync::atomic::Ordering::SeqCst)
    );
    assert!(done.load(std::sync::atomic::Ordering::SeqCst) > 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_init_output_is_served_by_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_splitproxy"))
        .args(["certs", "init", "--dir", &d])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v1 = Backend::spawn("v1").await;
    let tls = "tls:\n  cert: server.pem\n  key: server-key.pem\n  clientCA: ca.pem\n  clientAuth: require";
    let path = dir.path().join("proxy.yaml");
    std::fs::write(
        &path,
        proxy_doc(&[("web-v1", v1.addr)], tls) + &split_doc("s", "web", &[("web-v1", 1)]),
    )
    .unwrap();
    let proxy = Proxy::start_at(tempfile::tempdir().unwrap(), path).await;
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
    let client = Issued {
        cert_pem: read("client.pem"),
        key_pem: read("client-key.pem"),
        der: Vec::new(),
    };
    let a = tls_get(proxy.addr, &read("ca.pem"), Some(&client), false, &[])
        .await
        .expect("certs init client accepted");
    assert_eq!(a.status, StatusCode::OK);
    assert!(v1.last_headers()["x-forwarded-client-cert"]
        .to_str()
        .unwrap()
        .contains("URI=spiffe://cluster.local/ns/default/sa/client"));
}
