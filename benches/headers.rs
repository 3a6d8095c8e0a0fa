//! The per-request header work, without sockets: rewriting a downstream request for the
//! upstream (`proxy::prepare_request`: origin URI, hop-by-hop removal, x-forwarded-*, XFCC
//! replaced), its parts on their own, and the per-connection XFCC value (made once per
//! mTLS connection, then cloned into every request).
//!
//! `cargo bench --bench headers`

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderMap, HeaderValue, Request};
use splitproxy::cmd::pki::Ca;
use splitproxy::identity::Identity;
use splitproxy::proxy::{self, ConnInfo};

type Header = (&'static str, &'static str);

/// What a browser-ish or service client sends: 8 ordinary headers.
fn request(extra: &[Header]) -> Request<()> {
    let mut b = Request::get("/api/v1/items?page=2")
        .header("host", "my-website.default.svc.cluster.local")
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) splitbench/1.0",
        )
        .header("accept", "application/json")
        .header("accept-encoding", "gzip, deflate, br")
        .header("accept-language", "en-US,en;q=0.9")
        .header("cookie", "session=0123456789abcdef; theme=dark")
        .header("x-request-id", "6f1c3a2e-5b4d-4e8f-9a7b-0c1d2e3f4a5b")
        .header("content-length", "0");
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    b.body(()).expect("valid request")
}

fn conn(xfcc: Option<HeaderValue>) -> ConnInfo {
    let peer: SocketAddr = "10.1.2.3:54321".parse().expect("literal address");
    ConnInfo::new(peer, xfcc.is_some(), None, xfcc)
}

fn prepare(c: &mut Criterion) {
    let mut g = c.benchmark_group("prepare_request");
    let plain = conn(None);
    let xfcc = HeaderValue::from_static(
        "By=spiffe://cluster.local/ns/default/sa/gateway;Hash=3f5d0a7e;Subject=\"CN=client\";URI=spiffe://cluster.local/ns/default/sa/client",
    );
    let mtls = conn(Some(xfcc));
    let cases: [(&str, &ConnInfo, &[Header]); 4] = [
        // the common case: nothing hop-by-hop, no forwarding headers yet
        ("plain_8_headers", &plain, &[]),
        // keep-alive + a header named in Connection + an earlier proxy's x-forwarded-for
        (
            "hop_by_hop_and_xff",
            &plain,
            &[
                ("connection", "keep-alive, x-trace"),
                ("keep-alive", "timeout=5"),
                ("x-trace", "1"),
                ("x-forwarded-for", "203.0.113.9"),
            ],
        ),
        ("mtls_xfcc", &mtls, &[]),
        // a caller trying to choose its own identity: the header is replaced
        (
            "mtls_spoofed_xfcc",
            &mtls,
            &[("x-forwarded-client-cert", "Hash=forged;URI=spiffe://evil")],
        ),
    ];
    for (name, conn, extra) in cases {
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || request(extra),
                |req| black_box(proxy::prepare_request(req, conn)),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn parts(c: &mut Criterion) {
    let mut g = c.benchmark_group("header_parts");
    let response_like = || {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("content-type", "application/json"),
            ("content-length", "512"),
            ("cache-control", "no-store"),
            ("date", "Sat, 28 Nov 2026 17:00:00 GMT"),
            ("x-backend", "v1"),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        h
    };
    // a typical response: nothing to remove, six lookups that miss
    g.bench_function("strip_hop_by_hop_none", |b| {
        b.iter_batched_ref(
            response_like,
            |h| proxy::strip_hop_by_hop(black_box(h)),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("strip_hop_by_hop_connection_named", |b| {
        b.iter_batched_ref(
            || {
                let mut h = response_like();
                h.insert("connection", HeaderValue::from_static("keep-alive, x-a"));
                h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
                h.insert("x-a", HeaderValue::from_static("1"));
                h
            },
            |h| proxy::strip_hop_by_hop(black_box(h)),
            BatchSize::SmallInput,
        )
    });
    let ip = HeaderValue::from_static("10.1.2.3");
    g.bench_function("forwarded_for_append", |b| {
        b.iter_batched_ref(
            || {
                let mut h = response_like();
                h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
                h
            },
            |h| proxy::append_forwarded_for(black_box(h), &ip),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// Per connection, not per request: parse the verified client certificate and render XFCC.
fn xfcc(c: &mut Criterion) {
    let ca = Ca::new("bench CA").expect("CA");
    let client = ca
        .client("client", "spiffe://cluster.local/ns/default/sa/client")
        .expect("client certificate");
    let mut g = c.benchmark_group("xfcc_per_connection");
    g.bench_function("identity_and_value", |b| {
        b.iter(|| {
            let id = Identity::from_der(black_box(&client.der)).expect("parses");
            black_box(HeaderValue::try_from(
                id.xfcc(Some("spiffe://cluster.local/ns/default/sa/gateway")),
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, prepare, parts, xfcc);
criterion_main!(benches);
