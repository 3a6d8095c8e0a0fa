//! Access rules on the normalised path, and the trust domain, over real mTLS: every
//! traversal form (literal, percent-encoded in any case, mixed, encoded slashes, above the
//! root) is denied or rejected and never reaches the backend; an allowed path arrives
//! normalised; a caller of another SPIFFE trust domain is no rule's principal.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use splitproxy::cmd::pki::{Ca, Issued, Leaf};
use tokio::net::TcpListener;

use crate::support::*;

/// A backend that records the path and query of every request it gets.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    async fn spawn() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<_>| {
                        let target = req
                            .uri()
                            .path_and_query()
                            .map_or_else(String::new, |p| p.to_string());
                        log.lock().unwrap().push(target.clone());
                        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(target)))) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Recorder { addr, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// A CA, the proxy's server certificate in a temporary folder, client certificates.
struct Pki {
    ca: Ca,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let ca = Ca::new("hygiene CA").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let server = ca
            .server(&["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), &server.cert_pem).unwrap();
        std::fs::write(dir.path().join("server-key.pem"), &server.key_pem).unwrap();
        Pki { ca, dir }
    }

    fn spiffe(&self, id: &str) -> Caller {
        Caller::new(&self.ca, self.ca.client("client", id).unwrap())
    }

    /// OSM's form: no URI SAN, CN `<sa>.<ns>.<trust-domain>`.
    fn osm(&self, cn: &str) -> Caller {
        let leaf = Leaf {
            common_name: cn.into(),
            client: true,
            ..Default::default()
        };
        Caller::new(&self.ca, self.ca.issue(&leaf).unwrap())
    }

    /// `access: enforce` over mTLS; `shop/frontend` may GET paths matching `/api` only.
    fn config(&self, backend: SocketAddr, trust_domain: Option<&str>) -> String {
        let d = self.dir.path().display();
        let mut extra = format!(
            "tls:\n  cert: {d}/server.pem\n  key: {d}/server-key.pem\n  clientCA: {d}/ca.pem\naccess: enforce\n"
        );
        if let Some(t) = trust_domain {
            extra.push_str(&format!("trustDomain: {t}\n"));
        }
        proxy_doc(&[("web-v1", backend)], &extra)
            + &split_doc("web-split", "web", &[("web-v1", 1)])
            + API_ONLY
    }
}

const API_ONLY: &str = r#"---
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
    matches: [api]
  sources:
  - kind: ServiceAccount
    name: frontend
    namespace: shop
"#;

/// A client identity: the TLS client configuration that presents its certificate.
#[derive(Clone)]
struct Caller {
    tls: Arc<rustls::ClientConfig>,
}

impl Caller {
    fn new(ca: &Ca, cert: Issued) -> Caller {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
            .unwrap();
        let mut tls = rustls::ClientConfig::builder_with_provider(splitproxy::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Caller { tls: Arc::new(tls) }
    }

    /// A keep-alive HTTP/1.1 (or, with `h2`, HTTP/2) connection to the proxy.
    async fn connect(&self, addr: SocketAddr, h2: bool) -> Conn {
        let mut tls = (*self.tls).clone();
        tls.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let io = TokioIo::new(stream);
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Conn::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Conn::H1(send)
        }
    }

    /// GET `target` as written, on a new connection: (status, body).
    async fn get(&self, addr: SocketAddr, target: &str, h2: bool) -> (StatusCode, String) {
        self.connect(addr, h2).await.get(target).await
    }
}

enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Conn {
    async fn get(&mut self, target: &str) -> (StatusCode, String) {
        let resp = match self {
            Conn::H1(send) => {
                let req = Request::get(target)
                    .header("host", "web")
                    .body(Empty::new())
                    .unwrap();
                send.ready().await.unwrap();
                send.send_request(req).await
            }
            Conn::H2(send) => {
                let req = Request::get(format!("https://web{target}"))
                    .body(Empty::new())
                    .unwrap();
                send.ready().await.unwrap();
                send.send_request(req).await
            }
        };
        let resp = resp.unwrap_or_else(|e| panic!("{target}: {e}"));
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

/// Traversal forms that a raw-path rule for `/api` would let through to `/admin` (or
/// higher): each must be denied (403) or rejected (400).
const TRAVERSALS: &[&str] = &[
    "/api/../admin",
    "/api/./../admin",
    "/api/%2e%2e/admin",
    "/api/%2E%2E/admin",
    "/api/%2e%2E/admin",
    "/api/.%2e/admin",
    "/api/%2e./admin",
    "/api/.%2E/admin",
    "/api/x/../../admin",
    "/api/%78/%2e%2e/%2E%2E/admin",
    "/api/%2fadmin",
    "/api/%2F..%2Fadmin",
    "/api%2f..%2fadmin",
    "/api/..%2fadmin",
    "/api/%5c..%5cadmin",
    "/api/..%5Cadmin",
    "/api\\..\\admin",
    "/api/..\\admin",
    "/..",
    "/../api",
    "/api/../..",
    "/api/../../x",
    "/api/%2e%2e/%2e%2e/etc/passwd",
    "/api/%%32%65%%32%65/admin",
    "/api/%2/admin",
    "/%61pi/..%2F%61dmin",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_traversal_form_is_denied_or_rejected_never_served() {
    let pki = Pki::new();
    let backend = Recorder::spawn().await;
    let proxy = Proxy::start(&pki.config(backend.addr, None)).await;
    let frontend = pki.spiffe("spiffe://cluster.local/ns/shop/sa/frontend");

    // the rule works: /api is served
    assert_eq!(
        frontend.get(proxy.addr, "/api/items", false).await,
        (StatusCode::OK, "/api/items".into())
    );
    let mut rejected = 0;
    for h2 in [false, true] {
        for target in TRAVERSALS {
            let (status, body) = frontend.get(proxy.addr, target, h2).await;
            assert!(
                status == StatusCode::FORBIDDEN || status == StatusCode::BAD_REQUEST,
                "{target} (h2: {h2}): {status} {body}"
            );
            if status == StatusCode::BAD_REQUEST {
                rejected += 1;
                // the proxy's own short answer, no echo of internals
                assert!(body.starts_with("request path "), "{target}: {body}");
            }
        }
    }
    // nothing but the one allowed request reached the backend
    assert_eq!(backend.seen(), ["/api/items"]);

    // the 400s are counted where the 404s are, under (none)
    let (_, metrics) = admin_get(&proxy, "/metrics").await;
    let line = format!(
        "splitproxy_requests_total{{split=\"(none)\",backend=\"(none)\",code=\"4xx\"}} {rejected}"
    );
    assert!(
        rejected >= 2 * 12 && metrics.contains(&line),
        "{rejected}: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_path_reaches_the_backend_normalised_with_its_query() {
    let pki = Pki::new();
    let backend = Recorder::spawn().await;
    let proxy = Proxy::start(&pki.config(backend.addr, None)).await;
    let frontend = pki.spiffe("spiffe://cluster.local/ns/shop/sa/frontend");
    let cases = [
        ("/api/%61", "/api/a"),
        ("/%61pi/items", "/api/items"),
        ("/api/./items", "/api/items"),
        ("/api/x/../items", "/api/items"),
        ("/api/x/%2E%2e/items", "/api/items"),
        ("/api/%7e%2Duser", "/api/~-user"),
        ("/api/caf%c3%a9", "/api/caf%C3%A9"),
        ("/api\\items", "/api/items"),
        ("/api//items", "/api//items"),
        ("/api/%61?q=%2e%2e/x&r=%2F", "/api/a?q=%2e%2e/x&r=%2F"),
    ];
    for h2 in [false, true] {
        for (sent, arrives) in cases {
            let (status, body) = frontend.get(proxy.addr, sent, h2).await;
            assert_eq!((status, body.as_str()), (StatusCode::OK, arrives), "{sent}");
        }
    }
    let want: Vec<&str> = cases.iter().chain(cases.iter()).map(|c| c.1).collect();
    assert_eq!(backend.seen(), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_route_matches_see_the_normalised_path_too() {
    // no access rules: a split with a path match, and the catch-all
    let (admin, public) = (Recorder::spawn().await, Recorder::spawn().await);
    let yaml = proxy_doc(&[("admin", admin.addr), ("public", public.addr)], "")
        + &split_doc("admin-split", "web", &[("admin", 1)]).replace(
            "  backends:\n",
            "  matches:\n  - kind: HTTPRouteGroup\n    name: admin-routes\n  backends:\n",
        )
        + &split_doc("public-split", "web", &[("public", 1)])
        + "---\napiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata:\n  name: admin-routes\n  namespace: default\nspec:\n  matches:\n  - name: admin\n    pathRegex: \"/admin\"\n";
    let proxy = Proxy::start(&yaml).await;
    let c = client();
    for target in ["/x/../admin", "/%61dmin", "/%2E/admin/"] {
        let a = get(&c, &proxy.url(target), "web").await;
        assert_eq!(a.status, StatusCode::OK, "{target}: {}", a.body);
    }
    assert_eq!(admin.seen(), ["/admin", "/admin", "/admin/"]);
    let a = get(&c, &proxy.url("/x/%2e%2e/%2e%2e/admin"), "web").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.headers["server"], "splitproxy");
    assert_eq!(a.body, "request path climbs above the root\n");
    assert_eq!(
        get(&c, &proxy.url("/public/%2e%2e/public"), "web")
            .await
            .body,
        "/public"
    );
    assert_eq!(public.seen(), ["/public"]);
    assert_eq!(admin.seen().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_of_another_trust_domain_is_no_principal() {
    let pki = Pki::new();
    let backend = Recorder::spawn().await;
    let proxy = Proxy::start(&pki.config(backend.addr, None)).await;
    let ours = [
        pki.spiffe("spiffe://cluster.local/ns/shop/sa/frontend"),
        pki.spiffe("spiffe://CLUSTER.Local/ns/shop/sa/frontend"),
        pki.osm("frontend.shop.cluster.local"),
    ];
    let theirs = [
        pki.spiffe("spiffe://example.org/ns/shop/sa/frontend"),
        pki.spiffe("spiffe://cluster.local.example.org/ns/shop/sa/frontend"),
        pki.osm("frontend.shop.example.org"),
    ];
    for (i, caller) in ours.iter().enumerate() {
        let (status, _) = caller.get(proxy.addr, "/api", false).await;
        assert_eq!(status, StatusCode::OK, "caller {i} of cluster.local");
    }
    for (i, caller) in theirs.iter().enumerate() {
        let (status, body) = caller.get(proxy.addr, "/api", false).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "caller {i}: {body}");
    }
    assert_eq!(backend.seen().len(), ours.len());

    // the proxy's trust domain set to the other one: the roles swap (any case in the file)
    let proxy = Proxy::start(&pki.config(backend.addr, Some("Example.ORG"))).await;
    for (i, caller) in theirs.iter().enumerate().filter(|(i, _)| *i != 1) {
        let (status, _) = caller.get(proxy.addr, "/api", false).await;
        assert_eq!(status, StatusCode::OK, "caller {i} of example.org");
    }
    for (i, caller) in ours.iter().enumerate() {
        let (status, _) = caller.get(proxy.addr, "/api", true).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "caller {i} of cluster.local");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_trust_domain_applies_to_open_connections() {
    let pki = Pki::new();
    let backend = Recorder::spawn().await;
    let proxy = Proxy::start(&pki.config(backend.addr, None)).await;
    let frontend = pki.spiffe("spiffe://cluster.local/ns/shop/sa/frontend");
    let (mut h1, mut h2) = (
        frontend.connect(proxy.addr, false).await,
        frontend.connect(proxy.addr, true).await,
    );
    assert_eq!(h1.get("/api").await.0, StatusCode::OK);
    assert_eq!(h2.get("/api").await.0, StatusCode::OK);
    proxy.rewrite(&pki.config(backend.addr, Some("example.org")));
    proxy.wait_version(2).await;
    // the same connections, the same certificate: no longer in the trust domain
    assert_eq!(h1.get("/api").await.0, StatusCode::FORBIDDEN);
    assert_eq!(h2.get("/api").await.0, StatusCode::FORBIDDEN);
    assert_eq!(backend.seen().len(), 2);
}
