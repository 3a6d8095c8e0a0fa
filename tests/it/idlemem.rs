//! A connection that has not sent anything yet: nothing for HTTP is made until its first
//! bytes (src/server.rs), and those bytes tell HTTP/1.1 from the HTTP/2 preface. These tests
//! hold such connections open and check what the proxy does with them.

use std::time::Duration;

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn one_backend(extra: &str) -> (Backend, Proxy) {
    let v1 = Backend::spawn("v1").await;
    let yaml = proxy_doc(&[("web-v1", v1.addr)], extra) + &split_doc("s", "web", &[("web-v1", 1)]);
    let proxy = Proxy::start(&yaml).await;
    (v1, proxy)
}

/// Everything the proxy sends until it closes, or what came within 10 s.
async fn until_closed(tcp: &mut TcpStream) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_sends_is_closed_quietly_after_client_header() {
    let (v1, proxy) = one_backend("timeouts:\n  clientHeader: 300ms").await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    // 10 s is far beyond the 300 ms: a connection left open until then was never closed
    let got = until_closed(&mut tcp)
        .await
        .expect("a silent connection was still open 10 s after its 300 ms clientHeader");
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert_eq!(v1.hits(), 0);
    // the listener still serves
    assert_eq!(get(&client(), &proxy.url("/"), "web").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_h2c_preface_in_pieces_gets_http2_and_its_look_alike_http1() {
    let (v1, proxy) = one_backend("").await;

    // the preface in three writes, then an empty SETTINGS frame: the server's SETTINGS back
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    for part in [&PREFACE[..3], &PREFACE[3..17], &PREFACE[17..]] {
        tcp.write_all(part).await.unwrap();
        tcp.flush().await.unwrap();
        tokio::task::yield_now().await;
    }
    tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut head = [0u8; 9];
    tcp.read_exact(&mut head).await.unwrap();
    assert_eq!(head[3], 4, "an HTTP/2 SETTINGS frame first: {head:?}");

    // the preface's first bytes, then an HTTP/1.1 request that only starts like it
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(b"P").await.unwrap();
    tcp.flush().await.unwrap();
    tokio::task::yield_now().await;
    tcp.write_all(
        b"OST / HTTP/1.1\r\nHost: web\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi",
    )
    .await
    .unwrap();
    let answer = until_closed(&mut tcp).await.expect("an answer and a close");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(v1.hits(), 1);
}
