//! The request path's routing work, without sockets: the weighted pick alone, the whole
//! lookup (host -> split -> backend -> endpoint) through the live `ArcSwap`, the same on
//! several threads at once (it must not slow down: no shared mutable cache line), and
//! `RoutingTable::build` for many splits (the reload cost).
//!
//! `cargo bench --bench routing`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use splitproxy::config;
use splitproxy::metrics::Metrics;
use splitproxy::routing::RoutingTable;
use splitproxy::split::WeightedPicker;

/// A configuration with `splits` splits of `backends` backends each (weights 1..=n).
fn config_yaml(splits: usize, backends: usize, annotations: &str) -> String {
    let mut s = String::from("apiVersion: splitproxy.dev/v1alpha1\nkind: Proxy\nmetadata:\n  name: bench\nspec:\n  listen: 127.0.0.1:0\n  services:\n");
    for b in 0..backends {
        s.push_str(&format!("    svc-{b}: [\"127.0.0.1:{}\"]\n", 10000 + b));
    }
    for i in 0..splits {
        s.push_str(&format!(
            "---\napiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata:\n  name: split-{i}\n  namespace: default\n{annotations}spec:\n  service: site-{i}\n  backends:\n"
        ));
        for b in 0..backends {
            s.push_str(&format!("  - service: svc-{b}\n    weight: {}\n", b + 1));
        }
    }
    s
}

fn load(splits: usize, backends: usize) -> Arc<config::Config> {
    load_with(splits, backends, "")
}

fn load_with(splits: usize, backends: usize, annotations: &str) -> Arc<config::Config> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.yaml");
    std::fs::write(&path, config_yaml(splits, backends, annotations)).unwrap();
    Arc::new(config::load(&path).expect("bench config is valid"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn table(splits: usize, backends: usize) -> ArcSwap<RoutingTable> {
    table_with(splits, backends, "")
}

fn table_with(splits: usize, backends: usize, annotations: &str) -> ArcSwap<RoutingTable> {
    let cfg = load_with(splits, backends, annotations);
    let table = runtime().block_on(RoutingTable::build(cfg, 1, &Metrics::new(), None));
    ArcSwap::from_pointee(table.expect("bench table builds"))
}

/// What a request does to route: one load, one lookup, one select, one pick, one endpoint.
#[inline]
fn route(
    live: &ArcSwap<RoutingTable>,
    host: &str,
    headers: &HeaderMap,
) -> Option<std::net::SocketAddr> {
    let table = live.load();
    let route = table.lookup(host)?;
    let split = route.select(&Method::GET, "/", None, headers)?;
    split.pick(headers).0?.endpoints.pick()
}

fn pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick");
    for n in [2usize, 10, 100, 1000] {
        let weights: Vec<u64> = (1..=n as u64).collect();
        let picker = WeightedPicker::new(&weights);
        g.bench_with_input(BenchmarkId::from_parameter(n), &picker, |b, p| {
            b.iter(|| black_box(p.pick()))
        });
    }
    g.finish();
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup_host_to_endpoint");
    let headers = HeaderMap::new();
    for n in [2usize, 10, 100, 1000] {
        let live = table(10, n);
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| black_box(route(&live, black_box("site-7.default:8443"), &headers)))
        });
    }
    // the same host in a non-canonical case: lower-cased on the stack
    let live = table(10, 2);
    g.bench_function("2_mixed_case_fqdn", |b| {
        b.iter(|| {
            black_box(route(
                &live,
                black_box("Site-7.Default.svc.cluster.local"),
                &headers,
            ))
        })
    });
    g.finish();
}

/// Per-thread cost of lookup+pick with 1 and 2 threads running it at once: equal figures
/// mean no contention.
fn threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup_threads");
    let live = Arc::new(table(10, 10));
    for t in [1usize, 2] {
        g.bench_function(BenchmarkId::from_parameter(t), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..t {
                        let live = live.clone();
                        s.spawn(move || {
                            let headers = HeaderMap::new();
                            for _ in 0..iters {
                                black_box(route(&live, black_box("site-3"), &headers));
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
    g.finish();
}

fn build(c: &mut Criterion) {
    let mut g = c.benchmark_group("build");
    g.measurement_time(Duration::from_secs(5)).sample_size(20);
    let rt = runtime();
    for n in [100usize, 1000] {
        let cfg = load(n, 2);
        let metrics = Metrics::new();
        g.bench_function(BenchmarkId::new("splits", n), |b| {
            b.iter(|| black_box(rt.block_on(RoutingTable::build(cfg.clone(), 1, &metrics, None))))
        });
    }
    g.finish();
}

/// The whole lookup under each selection policy (`splitproxy.dev/selection`).
fn policies(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy_lookup");
    let mut headers = HeaderMap::new();
    headers.insert("x-user", http::HeaderValue::from_static("user-12345"));
    headers.insert(
        http::header::COOKIE,
        http::HeaderValue::from_static("theme=dark; canary=00000000deadbeef"),
    );
    let cases = [
        ("random", ""),
        ("deterministic", "  annotations:\n    splitproxy.dev/selection: deterministic\n"),
        ("sticky_header", "  annotations:\n    splitproxy.dev/selection: sticky\n    splitproxy.dev/sticky-header: x-user\n"),
        ("sticky_cookie", "  annotations:\n    splitproxy.dev/selection: sticky\n    splitproxy.dev/sticky-cookie: canary\n"),
    ];
    for (name, annotations) in cases {
        for n in [2usize, 10] {
            let live = table_with(10, n, annotations);
            g.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter(|| black_box(route(&live, black_box("site-7"), &headers)))
            });
        }
    }
    g.finish();
}

/// What the retired string interner saved: cloning and dropping a `'static` `Authority`
/// (a pointer copy) against a shared one (an atomic increment and decrement), next to the
/// `Arc<Backend>` clone every request makes and the address copy it makes now.
fn refcount(c: &mut Criterion) {
    let mut g = c.benchmark_group("clone_drop");
    let fixed = http::uri::Authority::from_static("127.0.0.1:8081");
    let shared = http::uri::Authority::try_from(String::from("127.0.0.1:8081")).unwrap();
    let _warm = shared.clone(); // the first clone of owned bytes makes them shared
    let arc = Arc::new(0u64);
    let addr: std::net::SocketAddr = "127.0.0.1:8081".parse().unwrap();
    g.bench_function("authority_static", |b| {
        b.iter(|| black_box(black_box(&fixed).clone()))
    });
    g.bench_function("authority_shared", |b| {
        b.iter(|| black_box(black_box(&shared).clone()))
    });
    g.bench_function("arc", |b| b.iter(|| black_box(black_box(&arc).clone())));
    g.bench_function("socket_addr", |b| b.iter(|| black_box(*black_box(&addr))));
    g.finish();
}

/// A host of one HTTPRoute with 10 rules, prefix and header matches mixed, in the order
/// precedence gives them: eight `/api/v<i>` prefixes (every other one with a header
/// match too), then `/api` with a header, then a catch-all. The request matches the
/// last-but-one, so it walks nine compiled matches.
fn gateway_yaml() -> String {
    let mut s = String::from("apiVersion: splitproxy.dev/v1alpha1\nkind: Proxy\nmetadata:\n  name: bench\nspec:\n  listen: 127.0.0.1:0\n  services:\n    svc-0: [\"127.0.0.1:10000\"]\n    svc-1: [\"127.0.0.1:10001\"]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: bench\nspec:\n  hostnames: [gw.example.com]\n  rules:\n");
    for i in 0..8 {
        let headers = if i % 2 == 0 {
            format!(", headers: [{{name: x-tenant, value: t{i}}}]")
        } else {
            String::new()
        };
        s.push_str(&format!(
            "  - matches: [{{path: {{value: /api/v{i}}}{headers}}}]\n    backendRefs: [{{name: svc-0}}]\n"
        ));
    }
    s.push_str("  - matches: [{path: {value: /api}, headers: [{name: x-canary, value: \"1\"}]}]\n    backendRefs: [{name: svc-0, weight: 90}, {name: svc-1, weight: 10}]\n");
    s.push_str("  - backendRefs: [{name: svc-1}]\n");
    s
}

/// `RoutingTable::route` end to end (host, rule or split, pick, endpoint) for a plain
/// TrafficSplit host and for the 10-rule HTTPRoute host: the second must stay within 2x.
fn gateway(c: &mut Criterion) {
    let mut g = c.benchmark_group("gateway");
    let split_live = table(100, 2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, gateway_yaml()).unwrap();
    let cfg = Arc::new(config::load(&path).expect("gateway bench config is valid"));
    let built = runtime().block_on(RoutingTable::build(cfg, 1, &Metrics::new(), None));
    let gw_live = ArcSwap::from_pointee(built.expect("gateway bench table builds"));
    let split_req = http::Request::get("/api/items")
        .header("host", "site-7.default:8443")
        .header("x-canary", "1")
        .body(())
        .unwrap();
    let gw_req = http::Request::get("/api/items")
        .header("host", "gw.example.com:8443")
        .header("x-canary", "1")
        .body(())
        .unwrap();
    {
        // the request takes the rule meant (svc-0 or svc-1 by 90/10, never the catch-all alone)
        let t = gw_live.load();
        let routed = t.route(&gw_req, None, "").ok().expect("routed");
        assert_eq!(routed.split.source().name, "bench/rules[8]");
    }
    g.bench_function("trafficsplit", |b| {
        b.iter(|| {
            let t = split_live.load();
            black_box(
                t.route(black_box(&split_req), None, "")
                    .ok()
                    .map(|r| r.endpoint.addr),
            )
        })
    });
    g.bench_function("httproute-10-rules", |b| {
        b.iter(|| {
            let t = gw_live.load();
            black_box(
                t.route(black_box(&gw_req), None, "")
                    .ok()
                    .map(|r| r.endpoint.addr),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, pick, lookup, threads, build, policies, refcount, gateway);
criterion_main!(benches);
