//! The HTTP version is per hop (RFC 9110 section 6.2): the client gets the version it
//! spoke, and an HTTP/1.0 backend (Content-Length or close-delimited, the way
//! `python3 -m http.server` answers) costs an HTTP/1.1 keep-alive client neither its
//! connection nor a byte of the body.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::Version;
use http_body_util::BodyExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{pattern_byte, proxy_doc, split_doc, Proxy};

fn pattern(n: usize) -> Vec<u8> {
    (0..n as u64).map(pattern_byte).collect()
}

/// A raw TCP backend that reads one request head per connection and answers by path, then
/// closes: `/len/N` HTTP/1.0 with Content-Length (and the `Connection`/`Keep-Alive` a 1.0
/// server may send), `/close/N` HTTP/1.0 without a length, python's http.server style
/// (`Server:` header, body to the close), `/chunked/N` HTTP/1.1 chunked. N pattern bytes.
struct RawBackend {
    addr: SocketAddr,
    conns: Arc<AtomicU64>,
}

impl RawBackend {
    async fn spawn() -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicU64::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(answer_once(tcp));
            }
        });
        RawBackend { addr, conns }
    }
}

async fn answer_once(tcp: TcpStream) {
    let mut tcp = BufReader::new(tcp);
    let mut line = String::new();
    if tcp.read_line(&mut line).await.is_err() {
        return;
    }
    let path = line.split(' ').nth(1).unwrap_or("/").to_string();
    // the rest of the head
    loop {
        let mut h = String::new();
        match tcp.read_line(&mut h).await {
            Ok(0) | Err(_) => return,
            Ok(_) if h == "\r\n" => break,
            Ok(_) => {}
        }
    }
    let (kind, n) = path[1..].split_once('/').unwrap_or(("len", "0"));
    let n: usize = n.parse().unwrap_or(0);
    let body = pattern(n);
    let mut out = Vec::new();
    match kind {
        "len" => out.extend_from_slice(
            format!(
                "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n"
            )
            .as_bytes(),
        ),
        "close" => out.extend_from_slice(
            b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6 Python/3.11.2\r\nDate: Wed, 02 Dec 2026 03:00:00 GMT\r\nContent-type: application/octet-stream\r\n\r\n",
        ),
        _ => out.extend_from_slice(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
    }
    if kind == "chunked" {
        for chunk in body.chunks(7000) {
            out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
    } else {
        out.extend_from_slice(&body);
    }
    let tcp = tcp.get_mut();
    let _ = tcp.write_all(&out).await;
    let _ = tcp.shutdown().await;
}

async fn proxy_to(backend: &RawBackend) -> Proxy {
    let yaml =
        proxy_doc(&[("web-v1", backend.addr)], "") + &split_doc("web", "web", &[("web-v1", 1)]);
    Proxy::start(&yaml).await
}

/// A response read off a raw client connection.
struct Raw {
    status_line: String,
    /// (lower-case name, value)
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Read one response: Content-Length, chunked, or (only when `to_close`) to the end.
async fn read_response(tcp: &mut BufReader<TcpStream>, to_close: bool) -> Raw {
    let mut status_line = String::new();
    tcp.read_line(&mut status_line).await.unwrap();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        tcp.read_line(&mut h).await.unwrap();
        if h == "\r\n" {
            break;
        }
        let (name, value) = h.trim_end().split_once(':').expect("a header line");
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let mut raw = Raw {
        status_line: status_line.trim_end().to_string(),
        headers,
        body: Vec::new(),
    };
    if let Some(len) = raw.header("content-length") {
        let mut body = vec![0; len.parse().unwrap()];
        tcp.read_exact(&mut body).await.unwrap();
        raw.body = body;
    } else if raw.header("transfer-encoding") == Some("chunked") {
        loop {
            let mut size = String::new();
            tcp.read_line(&mut size).await.unwrap();
            let size = usize::from_str_radix(size.trim_end(), 16).unwrap();
            if size == 0 {
                let mut end = String::new();
                tcp.read_line(&mut end).await.unwrap();
                assert_eq!(end, "\r\n", "no trailers expected");
                break;
            }
            let mut chunk = vec![0; size + 2];
            tcp.read_exact(&mut chunk).await.unwrap();
            assert_eq!(&chunk[size..], b"\r\n");
            raw.body.extend_from_slice(&chunk[..size]);
        }
    } else {
        assert!(
            to_close,
            "no framing on a keep-alive response: {:?}",
            raw.headers
        );
        tcp.read_to_end(&mut raw.body).await.unwrap();
    }
    raw
}

#[tokio::test]
async fn an_http10_backend_costs_an_http11_client_neither_its_connection_nor_a_byte() {
    let backend = RawBackend::spawn().await;
    let proxy = proxy_to(&backend).await;
    let mut tcp = BufReader::new(TcpStream::connect(proxy.addr).await.unwrap());
    let paths = [
        "/close/100000",
        "/len/100000",
        "/close/0",
        "/len/5",
        "/close/1",
        "/chunked/30000",
        "/close/65537",
    ];
    for path in paths {
        let n: usize = path.rsplit('/').next().unwrap().parse().unwrap();
        tcp.get_mut()
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: web\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let resp = read_response(&mut tcp, false).await;
        assert_eq!(resp.status_line, "HTTP/1.1 200 OK", "{path}");
        assert_eq!(resp.body.len(), n, "{path}");
        assert!(resp.body == pattern(n), "{path}: the body differs");
        // hop-by-hop from the backend removed; nothing closes the client's connection
        assert_eq!(
            resp.header("connection"),
            None,
            "{path}: {:?}",
            resp.headers
        );
        assert_eq!(resp.header("keep-alive"), None, "{path}");
        if path.starts_with("/close/") {
            assert_eq!(resp.header("transfer-encoding"), Some("chunked"), "{path}");
            assert!(resp.header("server").is_some_and(|s| s.contains("Python")));
        } else if path.starts_with("/len/") {
            assert_eq!(resp.header("content-length"), Some(n.to_string().as_str()));
        }
    }
    // one client connection served them all; the backend saw one connection for each
    assert_eq!(backend.conns.load(Ordering::SeqCst), paths.len() as u64);
    tcp.get_mut()
        .write_all(b"GET /len/3 HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    let last = read_response(&mut tcp, false).await;
    assert_eq!(last.body, pattern(3), "the same connection still serves");
}

#[tokio::test]
async fn an_http10_client_gets_http10_framing_never_chunked() {
    let backend = RawBackend::spawn().await;
    let proxy = proxy_to(&backend).await;
    for path in ["/chunked/30000", "/close/20000", "/len/777"] {
        let n: usize = path.rsplit('/').next().unwrap().parse().unwrap();
        let mut tcp = BufReader::new(TcpStream::connect(proxy.addr).await.unwrap());
        tcp.get_mut()
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: web\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let resp = read_response(&mut tcp, true).await;
        assert_eq!(resp.status_line, "HTTP/1.0 200 OK", "{path}");
        assert_eq!(resp.header("transfer-encoding"), None, "{path}");
        assert!(resp.body == pattern(n), "{path}: {} bytes", resp.body.len());
        // without keep-alive, an HTTP/1.0 response ends with the connection
        let mut rest = Vec::new();
        tcp.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }
}

#[tokio::test]
async fn an_http10_keep_alive_client_keeps_its_connection_when_the_length_is_known() {
    let backend = RawBackend::spawn().await;
    let proxy = proxy_to(&backend).await;
    let mut tcp = BufReader::new(TcpStream::connect(proxy.addr).await.unwrap());
    for _ in 0..3 {
        tcp.get_mut()
            .write_all(b"GET /len/1000 HTTP/1.0\r\nHost: web\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let resp = read_response(&mut tcp, false).await;
        assert_eq!(resp.status_line, "HTTP/1.0 200 OK");
        assert_eq!(resp.header("connection"), Some("keep-alive"));
        assert!(resp.body == pattern(1000));
    }
}

#[tokio::test]
async fn an_h2_client_gets_http2_from_an_http10_backend() {
    let backend = RawBackend::spawn().await;
    let proxy = proxy_to(&backend).await;
    let mut client = h2_prior_knowledge(proxy.addr).await;
    for path in ["/close/70000", "/len/70000", "/close/0"] {
        let n: usize = path.rsplit('/').next().unwrap().parse().unwrap();
        let req = http::Request::get(format!("http://web{path}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let resp = client.send_request(req).await.unwrap();
        assert_eq!(resp.version(), Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().get("connection").is_none());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(body == pattern(n), "{path}: {} bytes", body.len());
    }
}

/// One HTTP/2 (prior knowledge) client connection to `addr`.
pub async fn h2_prior_knowledge(
    addr: SocketAddr,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

/// `python3 -m http.server` (the README's local backends), ended when dropped.
struct PythonServer {
    child: std::process::Child,
    addr: SocketAddr,
}

impl PythonServer {
    fn start(dir: &std::path::Path) -> PythonServer {
        use std::io::BufRead;
        let mut child = std::process::Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 (part of this machine) runs");
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .split(" port ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("python3 said {line:?}"));
        PythonServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn python_http_server_backends_keep_the_clients_connection_and_every_byte() {
    let files = tempfile::tempdir().unwrap();
    let big = pattern(200_000);
    std::fs::write(files.path().join("big.bin"), &big).unwrap();
    std::fs::write(files.path().join("small.txt"), "v1\n").unwrap();
    let python = PythonServer::start(files.path());
    let yaml =
        proxy_doc(&[("web-v1", python.addr)], "") + &split_doc("web", "web", &[("web-v1", 1)]);
    let proxy = Proxy::start(&yaml).await;
    let mut tcp = BufReader::new(TcpStream::connect(proxy.addr).await.unwrap());
    for path in ["/big.bin", "/small.txt", "/big.bin", "/", "/small.txt"] {
        tcp.get_mut()
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: web\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let resp = read_response(&mut tcp, false).await;
        assert_eq!(resp.status_line, "HTTP/1.1 200 OK", "{path}");
        assert!(resp.header("server").is_some_and(|s| s.contains("Python")));
        assert_eq!(resp.header("connection"), None, "{path}");
        match path {
            "/big.bin" => assert!(resp.body == big, "{} bytes", resp.body.len()),
            "/small.txt" => assert_eq!(resp.body, b"v1\n"),
            _ => assert!(String::from_utf8_lossy(&resp.body).contains("big.bin")),
        }
    }
}
